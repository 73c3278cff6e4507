"""Write one of our model folders as a GGUF file, the format of llama.cpp, LM Studio and Ollama.

Names, layouts and metadata follow llama.cpp's own converter (convert_hf_to_gguf.py), so
llama.cpp loads what we write as if it had converted the folder itself:
- every tensor is written as numpy [out, in] (ggml's ne = [in, out]); ours are [in, out], so
  linear weights are transposed;
- for the ``llama`` architecture, q and k rows are permuted per head from Hugging Face's
  rotate-half order into the interleaved pairs llama.cpp's RoPE expects (``permute``);
  ``qwen2`` uses NEOX RoPE, which is rotate-half already, so it is not permuted;
- GPT-2's q, k and v are fused again into ``attn_qkv``.

Quantized files keep 1-D tensors (norms, biases) in F32, as llama.cpp does. In q4_0 the token
embedding (which is also the head when tied) and the output are Q8_0: llama.cpp would pick Q6_K
there, which our runtime does not keep, and Q8_0 is llama.cpp's own fallback for that slot.
A weight whose rows are not a whole number of quant blocks stays F32.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..atomic import write_atomic
from ..model.config import ModelConfig
from .errors import CheckpointError
from ..messages import Message
from .folder import load_weights, read_config
from .gguf_export_vocab import write_vocab
from .gguf_file import EXPORT_QUANTS as QUANT_CHOICES
from .gguf_file import HPARAMS, entries, gguf_arch, permute
from .gguf_file import unpermute  # noqa: F401  (the inverse, beside permute for callers and tests)
from .tokenizer import Tokenizer

# The tensors llama.cpp keeps at a higher precision than the rest of a 4-bit file.
_WIDE = ("token_embd.weight", "output.weight", "position_embd.weight")
# llama.cpp's order of a block's tensors (each weight before its bias); the file keeps it.
_BLOCK_ORDER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_norm", "ffn_gate",
                "ffn_up", "ffn_down")
_TOP_BEFORE, _TOP_AFTER = ("token_embd", "position_embd"), ("output_norm", "output", "rope_freqs")


# -- tensors -----------------------------------------------------------------------
def gguf_tensors(model, arch: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor laid out [out, in]) for every weight, in llama.cpp's order:
    ``gguf_file.entries`` (the names the loader reads) run backwards."""
    cfg, state = model.config, {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    fused: dict[str, list[torch.Tensor]] = {}
    for e in entries(cfg):
        t = state[e.ours].t() if e.kind == "linear" else state[e.ours]  # ours [in, out] -> [out, in]
        if e.permute_heads:
            t = permute(t, e.permute_heads)
        fused.setdefault(e.theirs, []).append(t)  # GPT-2's attn_qkv: q, k, v rows in entry order
    tensors = {name: torch.cat(parts).contiguous() for name, parts in fused.items()}
    if arch == "llama" and (cfg.rope_scaling or {}).get("rope_type") == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_factors(cfg)
    for name in sorted(tensors, key=_order):
        yield name, tensors[name]


def _order(name: str) -> tuple:
    base, suffix = name.rsplit(".", 1)
    if base.startswith("blk."):
        _, i, part = base.split(".")
        return 1, int(i), _BLOCK_ORDER.index(part), suffix == "bias"
    if base in _TOP_BEFORE:
        return 0, 0, _TOP_BEFORE.index(base), suffix == "bias"
    return 2, 0, _TOP_AFTER.index(base), suffix == "bias"


def llama3_rope_factors(cfg: ModelConfig) -> torch.Tensor:
    """The per-frequency divisors llama.cpp reads from ``rope_freqs.weight`` for Llama 3 scaling."""
    s, dim = cfg.rope_scaling, cfg.head_dim
    factor, low, high = s.get("factor", 8.0), s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old = s.get("original_max_position_embeddings", 8192)
    out = []
    for freq in 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)):
        wavelen = 2 * math.pi / float(freq)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def tensor_type(name: str, shape: tuple, quant: str):
    """The GGML type one tensor gets in a file of ``quant`` (see the module docstring)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

    if len(shape) == 1 or quant == "f32":
        return T.F32
    if quant == "bf16":
        return T.BF16
    qtype = T.Q8_0 if quant == "q8_0" or name in _WIDE else T.Q4_0
    return qtype if shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0 else T.F32


def encode_tensor(name: str, t: torch.Tensor, quant: str) -> tuple[np.ndarray, object]:
    """(bytes or floats to write, GGML type)."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    arr = t.numpy().astype(np.float32)
    qtype = tensor_type(name, arr.shape, quant)
    return (arr if qtype == T.F32 else quantize(arr, qtype)), qtype


# -- metadata ------------------------------------------------------------------------
def write_hparams(writer, cfg: ModelConfig, arch: str, name: str, quant: str):
    import gguf

    ftypes = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}
    writer.add_name(name)
    writer.add_file_type(ftypes[quant])
    if quant != "f32":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for h in HPARAMS:  # the keys config_from_gguf reads back, as llama.cpp's converter writes them
        if arch in h.archs:
            add = writer.add_uint32 if h.type is int else writer.add_float32
            add(f"{arch}.{h.key}", h.type(getattr(cfg, h.field)))
    if arch == "gpt2":
        return
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.head_dim * cfg.n_head != cfg.d_model:  # llama.cpp derives head size from these when present
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    scaling = cfg.rope_scaling or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


# -- the whole file ---------------------------------------------------------------------
def export_gguf(folder: str | Path, out: str | Path, quant: str = "f32",
                progress: Callable[[str], None] | None = None) -> Path:
    """Write ``out`` (a .gguf file) from a model folder; the file appears only when complete."""
    import gguf

    folder, out = Path(folder), Path(out)
    if quant not in QUANT_CHOICES:
        raise ValueError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_CHOICES)}")
    if out.suffix.lower() != ".gguf":
        raise ValueError(f"the output file must end in .gguf, got {out.name!r}")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give a file name ending in .gguf")
    cfg, _ = read_config(folder)
    model = load_weights(folder, cfg, dtype=torch.float32)
    tok = Tokenizer.from_folder(folder)
    arch = gguf_arch(cfg)
    writer = gguf.GGUFWriter(None, arch)
    write_hparams(writer, cfg, arch, folder.name, quant)
    write_vocab(writer, folder, tok, cfg)
    needed = 0  # tensor bytes: what a full disk's message says the file needs
    for name, t in gguf_tensors(model, arch):
        data, qtype = encode_tensor(name, t, quant)
        needed += data.nbytes
        writer.add_tensor(name, data, raw_dtype=qtype)
        if progress:
            progress(f"{name} {qtype.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(out, lambda tmp: _write_file(writer, tmp), needed)
    except OSError as e:
        raise CheckpointError(out, Message("ckpt.not_written", error=str(e.strerror or e))) from None
    return out


def _write_file(writer, path: str):
    writer.write_header_to_file(Path(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
