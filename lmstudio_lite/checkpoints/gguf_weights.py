"""GGUF tensors -> our Transformer's parameters, keeping or converting each tensor type.

Float tensors (F32, F16, BF16) load as floats. Q8_0, Q4_0 and Q4_1 are the block layouts
we run (DESIGN.md: byte for byte the same as llama.cpp's); other types are converted once,
at load, to the nearest of those (``_types``): block by block where the values survive
(Q5_0 -> Q8_0 exactly, Q4_K -> Q4_1 up to float16 rounding: gguf_transcode.py), else decoded
with gguf's reference dequantizer and quantized again. Which conversion happened is reported
per type. Quantized linears become ``model.quant.QuantLinear`` layers over the file's own
blocks, and a quantized token embedding a ``QuantEmbedding`` over its blocks (the head's when
tied): no float copy of either.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.config import ModelConfig
from ..model.quant import QuantEmbedding, QuantLinear, dequantize, quantize
from ..model.transformer import Transformer
from .errors import CheckpointError
from ..messages import Message
from .gguf_file import IGNORED, Entry, entries, unpermute
from .gguf_transcode import TRANSCODERS


def _types():
    from gguf import GGMLQuantizationType as Q

    floats = {Q.F32, Q.F16, Q.BF16}
    kept = {Q.Q8_0, Q.Q4_0, Q.Q4_1}
    # Q4_K is a Q4_1 block per 32 values (transcoded, gguf_transcode.py). The others go to Q8_0:
    # Q3_K and Q2_K scale each 16 values on their own, so a 32-value Q4_1 block cannot follow
    # them (measured: Q3_K -> Q4_1 cost SmolLM2 +12.9% perplexity, -> Q8_0 +0.0x%).
    converted = {Q.Q5_0: Q.Q8_0, Q.Q5_1: Q.Q8_0, Q.Q5_K: Q.Q8_0, Q.Q6_K: Q.Q8_0,
                 Q.Q4_K: Q.Q4_1, Q.Q3_K: Q.Q8_0, Q.Q2_K: Q.Q8_0}
    return floats, kept, converted


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
    from gguf import GGMLQuantizationType

    floats, kept, converted = _types()
    qtype = GGMLQuantizationType(t.type)  # open_gguf checked that the gguf package knows it
    if qtype not in floats | kept | set(converted):
        raise CheckpointError(reader.path, Message("ckpt.gguf_qtype", name=repr(t.name), qtype=qtype.name,
                                                      converted=", ".join(q.name for q in converted)))
    report.tensor_types[qtype.name] += 1
    rows = reader.array(t)
    if entry.rows is not None:
        rows = rows[entry.rows[0]:entry.rows[1]]
    if entry.permute_heads:
        rows = unpermute(rows, entry.permute_heads)
    if qtype in floats or as_float:  # a copy: the model must not alias the read-only memory map
        return torch.from_numpy(np.array(_float_rows(rows, qtype), dtype=np.float32, order="C"))
    target = converted.get(qtype, qtype)
    blocks = _converted_blocks(rows, qtype, target, report) if target != qtype else torch.from_numpy(np.array(rows))
    return QuantBlocks(blocks, target.name, int(t.shape[0]), blocks.shape[0])


def _float_rows(rows: np.ndarray, qtype) -> np.ndarray:
    from gguf.quants import dequantize

    return rows if rows.dtype == np.float32 else dequantize(rows, qtype).astype(np.float32)


def _converted_blocks(rows: np.ndarray, qtype, target, report: LoadReport) -> torch.Tensor:
    """Transcode block by block where the target holds the same values (gguf_transcode.py), else
    decode with gguf's reference dequantizer and encode in ``target`` (our quantizer: gguf's bytes)."""
    from gguf.quants import dequantize as gguf_dequantize

    report.conversions[qtype.name] = target.name
    if qtype.name in TRANSCODERS:
        return torch.from_numpy(np.ascontiguousarray(TRANSCODERS[qtype.name][1](rows)))
    return quantize(torch.from_numpy(gguf_dequantize(rows, qtype)), target.name.lower())


def load_gguf_weights(reader, cfg: ModelConfig, device="cpu", dtype: torch.dtype = torch.float32,
                      as_float: bool = False) -> tuple[Transformer, LoadReport]:
    """Build a Transformer from the file's tensors. Quantized linears become QuantLinear layers
    over the file's blocks; a quantized embedding a QuantEmbedding whose lookups dequantize the
    rows they read, over the head's blocks when tied (held once, as in llama.cpp). ``as_float``: every tensor decoded to ``dtype``
    by gguf's reference dequantizer, nothing converted (the float reference of a quantized file)."""
    by_name = {t.name: t for t in reader.tensors}
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = dict(model.state_dict())
    state, quantized, report, embedding = {}, {}, LoadReport(), None
    wanted = entries(cfg)
    for entry in wanted:
        t = by_name.get(entry.theirs)
        if t is None:
            raise CheckpointError(reader.path, Message("ckpt.tensor_missing", name=repr(entry.theirs)))
        value = read_tensor(reader, t, entry, report, as_float)
        if isinstance(value, QuantBlocks):
            if entry.kind == "linear":
                quantized[entry.ours.removesuffix(".weight")] = value
                continue
            if entry.ours == "tok_emb.weight":
                embedding = value
                if cfg.tie_embeddings:
                    quantized["head"] = value
                continue
            value = value.dequantize()
        if entry.kind == "linear":
            value = value.t()  # [out, in] -> our [in, out]
        state[entry.ours] = _checked(reader, entry.theirs, value, tuple(expected[entry.ours].shape)).to(device, dtype)
    _check_unexpected(reader, by_name, {e.theirs for e in wanted})
    for name, q in quantized.items():
        _install(reader, model, name, q, state, device)
    if embedding is not None:
        _install_embedding(reader, model, embedding, state, device)
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


def _install_embedding(reader, model: Transformer, q: QuantBlocks, state: dict, device) -> None:
    """Put a QuantEmbedding over ``q`` (the head's blocks when tied: one copy) where the float one was."""
    cfg = model.config
    _checked(reader, "token_embd.weight", torch.empty(q.d_out, q.d_in, device="meta"), (cfg.vocab_size, cfg.d_model))
    blocks = model.head.blocks if cfg.tie_embeddings else q.blocks.to(device)
    model.tok_emb = QuantEmbedding(blocks, q.qtype.lower(), q.d_out, q.d_in)
    state["tok_emb.blocks"] = blocks


def _checked(reader, name: str, value: torch.Tensor, want: tuple) -> torch.Tensor:
    if tuple(value.shape) != want:
        raise CheckpointError(reader.path, Message("ckpt.shape_metadata", name=repr(name), shape=str(tuple(value.shape)),
                                                      want=str(want)))
    return value.contiguous()


def _check_unexpected(reader, by_name: dict, used: set) -> None:
    extra = sorted(n for n in by_name if n not in used and n not in IGNORED)
    if extra:
        raise CheckpointError(reader.path, Message("ckpt.gguf_unused_tensors",
                                                      names=", ".join(extra[:3]) + (" ..." if len(extra) > 3 else "")))


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
