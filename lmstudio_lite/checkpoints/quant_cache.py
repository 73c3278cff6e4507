"""A float folder loaded quantized, with its blocks cached between loads.

Quantizing a model at load takes seconds (a 135M model: ~2 s per format on
these CPUs) and gives the same bytes every time, so the blocks are kept in one
safetensors file under ``paths.cache_dir()/quant``. The file's name is a hash of
what the bytes depend on: the source weight files (name, size, modification
time), the formats (body and head) and ``quant.FORMAT_VERSION``. A changed
source gets a new name, and writing it deletes the folder's older file in that
format, so re-saving a model many times does not pile up copies; any file here is
rebuildable and may be deleted at any time.
"""
from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..atomic import write_atomic
from ..model.quant import FORMAT_VERSION, HEAD_QTYPE, check_qtype, quantize_model, quantized_blocks
from ..paths import cache_dir
from .folder import load_weights, weight_files


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _prefix(folder: Path, qtype: str) -> str:
    """Names the folder (its path hashed: two folders of one name never share files) and the format."""
    return f"{folder.name}-{_digest(str(folder.resolve()))}-{qtype}-"


def cache_path(folder: Path, qtype: str, head: str | None = HEAD_QTYPE) -> Path:
    """Where ``folder``'s blocks in ``qtype`` are cached (the file may not exist yet)."""
    sources = sorted(set(weight_files(folder).values()) | {folder / "config.json"})
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sources]
    return cache_dir() / "quant" / (_prefix(folder, qtype) + _digest([stats, head, FORMAT_VERSION]) + ".safetensors")


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    """The cached blocks, or None when the file is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError):
        return None


def _cast(model, dtype):
    """The float parts in ``dtype`` (blocks are uint8 and stay); rotary tables stay float32, as load_weights makes them."""
    model.to(dtype)
    model.reset_rope()
    return model


def load_quantized(folder: Path, cfg, device, dtype, qtype: str, head: str | None = HEAD_QTYPE):
    """(model with quantized block linears, cache_hit): a ``Transformer``, not yet an ``InferenceModel``.

    The float model is read first either way: the embedding, norms and biases stay
    float and come from the folder; on a hit only the quantizing is skipped. It is
    read in float32 and cast to ``dtype`` after quantizing, so the blocks are those
    of the stored weights whatever dtype the rest runs in (one cache file serves all).
    """
    check_qtype(qtype)
    model = load_weights(folder, cfg, device=device, dtype=torch.float32)
    path = cache_path(folder, qtype, head)
    cached = _read(path)
    if cached is not None:
        try:
            return _cast(quantize_model(model, qtype, head=head, blocks=cached), dtype), True
        except ValueError:  # blocks of another shape: a stale or foreign file, quantize afresh
            model = load_weights(folder, cfg, device=device, dtype=torch.float32)
    _cast(quantize_model(model, qtype, head=head), dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    blocks = {k: v.cpu() for k, v in quantized_blocks(model).items()}
    meta = {"qtype": qtype, "head": str(head), "format_version": str(FORMAT_VERSION), "source": str(folder)}
    write_atomic(path, lambda p: save_file(blocks, str(p), metadata=meta))
    for old in path.parent.glob(glob.escape(_prefix(folder, qtype)) + "*.safetensors"):
        if old != path:
            old.unlink(missing_ok=True)  # the same folder in the same format, from older source files
    return model, False
