"""GGUF tensors -> our Transformer's parameters, keeping or converting each tensor type.

Float tensors (F32, F16, BF16) load as floats. Q8_0, Q4_0 and Q4_1 are the block layouts
we run (DESIGN.md: byte for byte the same as llama.cpp's); other types are converted once,
at load, to the nearest of those (``_types``): decoded with gguf's reference dequantizer and
quantized again. Which conversion happened is reported per type. Quantized linears become
``model.quant.QuantLinear`` layers over the file's own blocks (no float copy).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.config import ModelConfig
from ..model.quant import QuantLinear, dequantize, quantize
from ..model.transformer import Transformer
from .errors import CheckpointError
from .gguf_file import IGNORED, Entry, entries, unpermute_rows

def _types():
    from gguf import GGMLQuantizationType as Q

    floats = {Q.F32, Q.F16, Q.BF16}
    kept = {Q.Q8_0, Q.Q4_0, Q.Q4_1}
    # More than 4 bits per weight -> Q8_0 (close to lossless, larger); 4 bits or fewer -> Q4_1,
    # whose per-block scale and minimum hold a K-quant's 32-wide affine sub-block closely.
    converted = {Q.Q5_0: Q.Q8_0, Q.Q5_1: Q.Q8_0, Q.Q5_K: Q.Q8_0, Q.Q6_K: Q.Q8_0,
                 Q.Q4_K: Q.Q4_1, Q.Q3_K: Q.Q4_1, Q.Q2_K: Q.Q4_1}
    return floats, kept, converted


def converted_type(name: str) -> str | None:
    """The kept type a GGUF tensor type ("Q6_K") converts to at load ("Q8_0"), or None if kept or float."""
    from gguf import GGMLQuantizationType as Q

    target = _types()[2].get(Q[name])
    return target.name if target is not None else None


@dataclass
class QuantBlocks:
    """A quantized [d_out, d_in] weight as GGUF stores it: rows of raw blocks, uint8 [d_out, d_in/32*bytes]."""
    blocks: torch.Tensor
    qtype: str  # "Q8_0" | "Q4_0" | "Q4_1"
    d_in: int
    d_out: int

    def dequantize(self) -> torch.Tensor:
        """float32 [d_out, d_in]."""
        return dequantize(self.blocks, self.qtype.lower())

    def linear(self, bias: torch.Tensor | None, device) -> QuantLinear:
        return QuantLinear.from_blocks(self.blocks.to(device), self.qtype.lower(), self.d_in, self.d_out, bias)


@dataclass
class LoadReport:
    """What the file held and what we did with it, for ``LoadedModel.info()`` and the README."""
    tensor_types: Counter = field(default_factory=Counter)  # GGUF type name -> tensor count
    conversions: dict = field(default_factory=dict)  # "Q6_K" -> "Q8_0"

    def as_dict(self) -> dict:
        return {"tensor_types": dict(self.tensor_types), "converted": dict(self.conversions)}


def read_tensor(reader, t, entry: Entry, report: LoadReport, as_float: bool = False) -> torch.Tensor | QuantBlocks:
    """One GGUF tensor in HF row order: a float tensor (same shape as the GGUF's numpy view,
    [out, in] for a weight) or, for a quantized type, QuantBlocks. ``as_float`` decodes every
    type to float32 with gguf's reference dequantizer instead (what the file's numbers mean)."""
    floats, kept, converted = _types()
    qtype = t.tensor_type
    if qtype not in floats | kept | set(converted):
        raise CheckpointError(reader.data.filename, f"tensor {t.name!r} has type {qtype.name}, which is not "
                              "supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1; converted at load: "
                              + ", ".join(q.name for q in converted) + ")")
    report.tensor_types[qtype.name] += 1
    rows = np.asarray(t.data)
    if entry.rows is not None:
        rows = rows[entry.rows[0]:entry.rows[1]]
    if entry.permute_heads:
        rows = unpermute_rows(rows, entry.permute_heads)
    if qtype in floats or as_float:  # a copy: the model must not alias the read-only memory map
        return torch.from_numpy(np.array(_float_rows(rows, qtype), dtype=np.float32, order="C"))
    target = converted.get(qtype, qtype)
    blocks = _converted_blocks(rows, qtype, target, report) if target != qtype else torch.from_numpy(np.array(rows))
    return QuantBlocks(blocks, target.name, int(t.shape[0]), blocks.shape[0])


def _float_rows(rows: np.ndarray, qtype) -> np.ndarray:
    from gguf.quants import dequantize

    return rows if rows.dtype == np.float32 else dequantize(rows, qtype).astype(np.float32)


def _converted_blocks(rows: np.ndarray, qtype, target, report: LoadReport) -> torch.Tensor:
    """Decode with gguf's reference dequantizer, encode in ``target`` (our quantizer: gguf's bytes)."""
    from gguf.quants import dequantize as gguf_dequantize

    report.conversions[qtype.name] = target.name
    return quantize(torch.from_numpy(gguf_dequantize(rows, qtype)), target.name.lower())


def load_gguf_weights(reader, cfg: ModelConfig, device="cpu", dtype: torch.dtype = torch.float32,
                      as_float: bool = False) -> tuple[Transformer, LoadReport]:
    """Build a Transformer from the file's tensors. Quantized linears become QuantLinear layers
    over the file's blocks; a quantized tied embedding is also the head's blocks (as in llama.cpp)
    and is dequantized to ``dtype`` for lookups. ``as_float``: every tensor decoded to ``dtype``
    by gguf's reference dequantizer, nothing converted (the float reference of a quantized file)."""
    by_name = {t.name: t for t in reader.tensors}
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = dict(model.state_dict())
    state, quantized, report = {}, {}, LoadReport()
    wanted = entries(cfg)
    for entry in wanted:
        t = by_name.get(entry.theirs)
        if t is None:
            raise CheckpointError(reader.data.filename, f"tensor {entry.theirs!r} is missing")
        value = read_tensor(reader, t, entry, report, as_float)
        if isinstance(value, QuantBlocks):
            if entry.kind == "linear":
                quantized[entry.ours.removesuffix(".weight")] = value
                continue
            if entry.ours == "tok_emb.weight" and cfg.tie_embeddings:
                quantized["head"] = value
            value = value.dequantize()
        if entry.kind == "linear":
            value = value.t()  # [out, in] -> our [in, out]
        state[entry.ours] = _checked(reader, entry.theirs, value, tuple(expected[entry.ours].shape)).to(device, dtype)
    _check_unexpected(reader, by_name, {e.theirs for e in wanted})
    for name, q in quantized.items():
        _install(reader, model, name, q, state, device)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_rope()
    return model, report


def _install(reader, model: Transformer, name: str, q: QuantBlocks, state: dict, device) -> None:
    """Put a QuantLinear over ``q`` where the Linear ``name`` was, and its tensors into ``state``."""
    cfg = model.config
    want = (cfg.d_model, cfg.vocab_size) if name == "head" else tuple(model.get_submodule(name).weight.shape)
    _checked(reader, name, torch.empty(q.d_in, q.d_out, device="meta"), want)
    layer = q.linear(state.pop(f"{name}.bias", None), device)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)
    state[f"{name}.blocks"] = layer.blocks
    if layer.bias is not None:
        state[f"{name}.bias"] = layer.bias


def _checked(reader, name: str, value: torch.Tensor, want: tuple) -> torch.Tensor:
    if tuple(value.shape) != want:
        raise CheckpointError(reader.data.filename, f"tensor {name!r} has shape "
                              f"{tuple(value.shape)} (as ours), the metadata implies {want}")
    return value.contiguous()


def _check_unexpected(reader, by_name: dict, used: set) -> None:
    extra = sorted(n for n in by_name if n not in used and n not in IGNORED)
    if extra:
        raise CheckpointError(reader.data.filename, "tensors this architecture does not use: "
                              + ", ".join(extra[:3]) + (" ..." if len(extra) > 3 else ""))


def is_gguf_file(path) -> bool:
    """A file that starts with GGUF's magic bytes (the suffix alone proves nothing)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


@dataclass
class GGUFModel:
    model: Transformer
    tokenizer: object  # checkpoints.tokenizer.Tokenizer
    report: LoadReport
    description: dict  # what LoadedModel.info() shows: model_type, format, tensor types, conversions


def load_gguf(path, device="cpu", dtype: torch.dtype = torch.float32, as_float: bool = False) -> GGUFModel:
    """Model and tokenizer from one GGUF file, reading its header once (``as_float``: see load_gguf_weights)."""
    from .gguf_file import architecture, config_from_gguf, field_value, open_gguf
    from .gguf_tokenizer import tokenizer_from_gguf

    reader = open_gguf(path)
    cfg = config_from_gguf(reader)
    tokenizer = tokenizer_from_gguf(reader)
    model, report = load_gguf_weights(reader, cfg, device, dtype, as_float)
    description = {"model_type": architecture(reader), "format": "gguf",
                   "gguf_name": field_value(reader, "general.name", None), **report.as_dict()}
    return GGUFModel(model, tokenizer, report, description)
