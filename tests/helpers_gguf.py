"""Tiny but real GGUF files for tests, written with gguf's own writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_gguf(path: Path, arch: str = "llama", ctx: int = 128, extra_floats: int = 0) -> Path:
    """A header-true GGUF: architecture, context, file type and two small tensors (40 parameters),
    plus ``extra_floats`` more in a third tensor when a test needs a bigger file."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(ctx)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    if extra_floats:
        w.add_tensor("output.weight", np.random.default_rng(0).random(extra_floats, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
