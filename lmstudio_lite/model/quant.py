"""Quantized weights in GGUF's block formats Q8_0, Q4_0 and Q4_1, byte for byte.

A block holds 32 consecutive inputs of one output row (ggml's row layout, so a
GGUF tensor of these types is used as it is):

- q8_0, 34 bytes: fp16 scale ``d``, then 32 int8 ``q``; value = q * d.
- q4_0, 18 bytes: fp16 ``d``, then 16 bytes whose low nibbles are elements
  0..15 and high nibbles 16..31; value = (q - 8) * d.
- q4_1, 20 bytes: fp16 ``d``, fp16 min ``m``, then the nibbles as in q4_0;
  value = q * d + m.

``quantize`` reproduces ``gguf.quants.quantize`` exactly (every rounding step in
the same float32 order), so a folder quantized here and the same weights
quantized by llama.cpp's converter give the same bytes. Shapes: R rows
(outputs), K inputs per row, N = K / 32 blocks per row.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..native import FORMATS, Q8_0_ROUNDED, decode_library
from ..threads import kernel_threads
from .layers import Linear

QTYPES = ("q8_0", "q4_0", "q4_1")
BLOCK = 32
BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
FORMAT_VERSION = 1  # bump when the bytes quantize_model produces change (cache keys include it)


def check_qtype(qtype: str) -> str:
    if qtype not in QTYPES:
        raise ValueError(f"unknown quantization {qtype!r}: choose one of {', '.join(QTYPES)}")
    return qtype


def _fp16_bytes(x: torch.Tensor) -> torch.Tensor:
    """[R, N, 1] float32 -> [R, N, 2] uint8: round to fp16 (nearest even, as numpy) and split little-endian."""
    return x.to(torch.float16).view(torch.uint8)


def _div(x: torch.Tensor, k: float) -> torch.Tensor:
    """``x / k`` rounded as one IEEE division on every device. CUDA turns division by a
    Python scalar into multiplication by its reciprocal, which rounds differently: on an
    H200, q4_1 scales came out one fp16 step off in 6 of 65,536 blocks until this."""
    return x / torch.full_like(x, k)


def _reciprocal(d: torch.Tensor) -> torch.Tensor:
    """1/d with 0 where d is 0, as gguf's ``np.where(d == 0, 0, 1 / d)``."""
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _round_away(x: torch.Tensor) -> torch.Tensor:
    """ggml's roundf (halves away from zero), built from the same float32 steps as gguf's
    ``np_roundf``; ``floor(|x| + 0.5)`` would differ when that sum itself rounds up."""
    a = x.abs()
    floored = a.floor()
    return x.sign() * (floored + (2 * (a - floored)).floor())


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """[R, N, 32] uint8 in 0..15 -> [R, N, 16]: element i low nibble, element i + 16 high."""
    return q[..., :16] | (q[..., 16:] << 4)


def _quantize_blocks(b: torch.Tensor, qtype: str) -> torch.Tensor:
    """b [R, N, 32] float32 -> [R, N, BLOCK_BYTES] uint8."""
    if qtype == "q8_0":
        d = _div(b.abs().amax(-1, keepdim=True), 127)
        q = _round_away(b * _reciprocal(d)).to(torch.int8).view(torch.uint8)
        return torch.cat([_fp16_bytes(d), q], dim=-1)
    if qtype == "q4_0":
        # The signed value of largest magnitude maps to -8: its sign sets d's sign.
        imax = b.abs().argmax(-1, keepdim=True)
        d = _div(b.gather(-1, imax), -8)
        q = (b * _reciprocal(d) + 8.5).trunc().to(torch.uint8).clamp(0, 15)
        return torch.cat([_fp16_bytes(d), _pack_nibbles(q)], dim=-1)
    lo, hi = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
    d = _div(hi - lo, 15)
    q = ((b - lo) * _reciprocal(d) + 0.5).trunc().to(torch.uint8).clamp(0, 15)
    return torch.cat([_fp16_bytes(d), _fp16_bytes(lo), _pack_nibbles(q)], dim=-1)


def quantize(w: torch.Tensor, qtype: str, rows_per_chunk: int = 4096) -> torch.Tensor:
    """w [R, K] float -> uint8 [R, K / 32 * BLOCK_BYTES[qtype]], row by row in ggml's layout.

    Rows go in chunks so the float32 temporaries stay small for a large embedding.
    """
    check_qtype(qtype)
    if w.dim() != 2 or w.shape[1] % BLOCK:
        raise ValueError(f"quantize needs a 2-D weight whose rows are a multiple of {BLOCK} wide, got {tuple(w.shape)}")
    R, K = w.shape
    out = torch.empty(R, K // BLOCK * BLOCK_BYTES[qtype], dtype=torch.uint8, device=w.device)
    for s in range(0, R, rows_per_chunk):
        chunk = w[s:s + rows_per_chunk].detach().float().reshape(-1, K // BLOCK, BLOCK)
        out[s:s + rows_per_chunk] = _quantize_blocks(chunk, qtype).reshape(chunk.shape[0], -1)
    return out


def _fp16(raw: torch.Tensor) -> torch.Tensor:
    """[R, N, 2] uint8 -> [R, N, 1] float32."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(raw: torch.Tensor) -> torch.Tensor:
    """[R, N, 16] uint8 -> [R, N, 32] float32 in 0..15 (low nibbles first), written in place
    into one buffer: the dequantization streams memory, so fewer temporaries is what speeds it."""
    out = torch.empty(*raw.shape[:-1], 2 * raw.shape[-1], dtype=torch.float32, device=raw.device)
    out[..., :16] = raw & 0x0F
    out[..., 16:] = raw >> 4
    return out


def dequantize(blocks: torch.Tensor, qtype: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [R, N * BLOCK_BYTES[qtype]] -> [R, N * 32], computed in float32 (as gguf) and cast to ``dtype``."""
    nbytes = BLOCK_BYTES[check_qtype(qtype)]
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] % nbytes:
        raise ValueError(f"{qtype} blocks must be 2-D uint8 with rows a multiple of {nbytes} bytes")
    R = blocks.shape[0]
    b = blocks.reshape(R, -1, nbytes)
    d = _fp16(b[..., 0:2])
    if qtype == "q8_0":
        w = b[..., 2:].view(torch.int8).float().mul_(d)  # a same-size view needs no copy
    elif qtype == "q4_0":
        w = _nibbles(b[..., 2:]).sub_(8).mul_(d)
    else:
        w = _nibbles(b[..., 4:]).mul_(d).add_(_fp16(b[..., 2:4]))
    return w.reshape(R, -1).to(dtype)


_scratch = threading.local()  # QuantLinear._weight_for's buffer, one per thread; kernel_rows' flag


@contextlib.contextmanager
def kernel_rows():
    """Within (in this thread), a CPU ``QuantLinear`` the kernel packed (``pack_for_kernel``)
    multiplies through the native kernel on int8 activations, as the decode step does and as
    llama.cpp prefills: an ``InferenceModel``'s prefill. Outside, every layer dequantizes exactly
    (the reference the kernel is tested against)."""
    before = getattr(_scratch, "kernel", False)
    _scratch.kernel = True
    try:
        yield
    finally:
        _scratch.kernel = before


def in_kernel_rows() -> bool:
    """Whether this thread is within ``kernel_rows()``: an ``InferenceModel``'s prefill, whose other
    parts (attention: ``native_attention``) take the kernel too."""
    return getattr(_scratch, "kernel", False)


class QuantLinear(nn.Module):
    """``y = x @ W + b`` (logical W [in, out], as ``layers.Linear``) with W held as ggml blocks.

    ``blocks`` is uint8 [d_out, d_in / 32 * BLOCK_BYTES]: each output row's inputs
    in blocks of 32, GGUF's tensor layout. ``forward`` dequantizes to x's dtype and
    runs one GEMM: the reference for the native kernels and the path for prefill,
    where the GEMM dominates the dequantization. Inference only: the blocks have
    no gradient, so a training step refuses to run rather than silently train the
    rest of the model around frozen, rounded weights.
    """

    def __init__(self, blocks: torch.Tensor, qtype: str, d_in: int, d_out: int, bias: torch.Tensor | None = None):
        super().__init__()
        check_qtype(qtype)
        if d_in % BLOCK:
            raise ValueError(f"{qtype} needs an input width that is a multiple of {BLOCK}, got {d_in}")
        want = (d_out, d_in // BLOCK * BLOCK_BYTES[qtype])
        if blocks.dtype != torch.uint8 or tuple(blocks.shape) != want:
            raise ValueError(f"{qtype} blocks for a {d_in} -> {d_out} layer must be uint8 {want}, "
                             f"got {blocks.dtype} {tuple(blocks.shape)}")
        if bias is not None and tuple(bias.shape) != (d_out,):
            raise ValueError(f"bias must have shape ({d_out},), got {tuple(bias.shape)}")
        self.qtype, self.d_in, self.d_out = qtype, d_in, d_out
        self.register_buffer("blocks", blocks)
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.kernel_fmt: int | None = None  # set when ``blocks`` holds the kernel's packed layout (pack_for_kernel)
        self._parts: list[tuple[int, "QuantLinear"]] = []  # a fused layer's layers and their first rows
        self._fused = False  # a row view of a fused layer's blocks: packed only with it

    @classmethod
    def from_blocks(cls, blocks, qtype, d_in, d_out, bias=None) -> "QuantLinear":
        return cls(blocks, qtype, d_in, d_out, bias)

    @classmethod
    def from_weight(cls, w_out_in: torch.Tensor, qtype: str, bias: torch.Tensor | None = None) -> "QuantLinear":
        """From a float weight stored [out, in] (a tied embedding is already the head in that layout)."""
        d_out, d_in = w_out_in.shape
        return cls(quantize(w_out_in, qtype), qtype, d_in, d_out, bias)

    @classmethod
    def from_linear(cls, linear: Linear, qtype: str) -> "QuantLinear":
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_weight(linear.weight.detach().t(), qtype, bias)

    @classmethod
    def fuse(cls, *layers: "QuantLinear") -> "QuantLinear":
        """One layer for several projections of the same input (q|k|v, gate|up).

        Block rows are output rows, so the fused blocks are the layers' blocks stacked
        and each layer keeps a contiguous row view of them: no second copy.
        """
        qtype, d_in = layers[0].qtype, layers[0].d_in
        if any(l.qtype != qtype or l.d_in != d_in for l in layers):
            raise ValueError("fused layers must share their format and input width")
        # Packed layers (a net prepared before) stack as they are: each holds whole groups of 16 rows.
        fmt = layers[0].kernel_fmt if all(l.kernel_fmt == layers[0].kernel_fmt for l in layers) else None
        blocks = torch.cat([l.blocks if fmt is not None else l.gguf_blocks() for l in layers])
        has_bias = layers[0].bias is not None
        bias = torch.cat([l.bias for l in layers]) if has_bias else None
        fused = cls(blocks, qtype, d_in, blocks.shape[0], bias)
        fused.kernel_fmt = fmt
        start = 0
        for l in layers:
            l.blocks, l.kernel_fmt = blocks[start:start + l.d_out], fmt
            if has_bias:
                l.bias = bias[start:start + l.d_out]
            fused._parts.append((start, l))
            l._fused = True
            start += l.d_out
        return fused

    @property
    def packed(self) -> bool:
        """Whether ``blocks`` holds the kernel's packed layout (``pack_for_kernel``): then prefill
        through an ``InferenceModel`` takes a 4-bit layer's input rounded to int8, as the step does
        (a packed Q8_0 head's many rows keep the exact GEMM: ``InferenceModel.project``)."""
        return self.kernel_fmt is not None

    def pack_for_kernel(self, lib, rounded_q8: bool = False) -> tuple[int, torch.Tensor] | None:
        """Repack this Q4 matrix in place, 16 outputs side by side (native/gemv.h: rows_x16; the same
        bytes in another order, so no second copy), once: -> (the kernel's format, the bytes), or None
        where the kernel takes the GGUF rows as they are (Q8_0, a width not a multiple of 16, a CPU
        without AVX-512 VNNI, one of a fused layer's layers, which its fused layer packs). A fused layer
        repacks its layers' rows with it (each keeps its row view). ``gguf_blocks()`` gives the GGUF
        rows back (the reference forward, ``dequantized``, the quant cache). ``rounded_q8``: a Q8_0
        matrix too, for int8-rounded activations (a 4-bit model's head: decode.c's T_Q8_0RX)."""
        if not lib.lml_x16():
            return None
        if self.kernel_fmt is None and (self.qtype != "q8_0" or rounded_q8) and self.d_out % 16 == 0 \
                and self.blocks.device.type == "cpu" and self.blocks.is_contiguous() and not self._fused \
                and all(start % 16 == 0 and layer.d_out % 16 == 0 for start, layer in self._parts):
            packed = torch.empty_like(self.blocks)
            code = Q8_0_ROUNDED if self.qtype == "q8_0" else FORMATS[self.qtype]
            fmt = lib.lml_pack_x16(code, self.blocks.data_ptr(), self.d_out, self.d_in, packed.data_ptr())
            self.blocks, self.kernel_fmt = packed, fmt
            for start, layer in self._parts:
                layer.blocks, layer.kernel_fmt = packed[start:start + layer.d_out], fmt
        return None if self.kernel_fmt is None else (self.kernel_fmt, self.blocks)

    def gguf_blocks(self) -> torch.Tensor:
        """The blocks in GGUF's row layout: ``blocks`` itself, or unpacked from the kernel's layout (a copy)."""
        if self.kernel_fmt is None:
            return self.blocks
        rows = self.blocks.detach().cpu().contiguous()
        out = torch.empty_like(rows)
        decode_library().lml_unpack_x16(self.kernel_fmt, rows.data_ptr(), self.d_out, self.d_in, out.data_ptr())
        return out.to(self.blocks.device)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as float, [d_out, d_in]."""
        return dequantize(self.gguf_blocks(), self.qtype, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [.., d_in] -> [.., d_out]."""
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("a quantized model is for inference only: load it without quantization to train "
                               "or fine-tune it")
        if self.kernel_fmt is not None and in_kernel_rows() and x.device.type == "cpu" \
                and not torch.is_grad_enabled():
            return self._kernel_rows(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self._weight_for(x), bias)

    def _kernel_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x [.., d_in] through the packed rows (``kernel_rows``), in x's dtype."""
        lib, fmt, packed = decode_library(), self.kernel_fmt, self.blocks
        rows = x.reshape(-1, self.d_in).to(torch.float32).contiguous()
        out = torch.empty(rows.shape[0], self.d_out)
        threads = kernel_threads()
        n = lib.lml_linear_x16_scratch_floats(self.d_in, rows.shape[0])
        buf = getattr(_scratch, "rows", None)
        if buf is None or buf.numel() < n:
            buf = _scratch.rows = torch.empty(n)
        bias = None if self.bias is None else self.bias.to(torch.float32).contiguous()
        lib.lml_linear_x16(fmt, packed.data_ptr(), None if bias is None else bias.data_ptr(), self.d_in, self.d_out,
                           rows.shape[0], rows.data_ptr(), out.data_ptr(), buf.data_ptr(), threads)
        return out.view(*x.shape[:-1], self.d_out).to(x.dtype)

    def _weight_for(self, x: torch.Tensor) -> torch.Tensor:
        """The dequantized weight in x's dtype; on the CPU through the native kernel (one pass,
        into a buffer this thread reuses: prefill dequantized each layer in several torch passes
        into fresh memory), the same values as ``dequantized``."""
        lib = decode_library() if x.device.type == "cpu" and self.blocks.is_contiguous() else None
        if lib is None or x.dtype not in (torch.float32, torch.bfloat16):
            return self.dequantized(x.dtype)
        # packed: its GGUF rows first (a 4-bit model's head for many rows at once, e.g. a reply's
        # probabilities; 4-bit layers here only in the reference forward: prefill takes kernel_rows)
        blocks = self.gguf_blocks()
        n = self.d_out * self.d_in
        buf = getattr(_scratch, "buf", None)
        if torch.is_grad_enabled():  # autograd may keep the weight for x's gradient: its own memory
            buf = torch.empty(n)
        elif buf is None or buf.numel() < n:
            buf = _scratch.buf = torch.empty(n)
        out = buf[:n].view(self.d_out, self.d_in)
        lib.lml_dequantize(FORMATS[self.qtype], blocks.data_ptr(), self.d_out, self.d_in, out.data_ptr(),
                           kernel_threads())
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.qtype}, in={self.d_in}, out={self.d_out}, bias={self.bias is not None}"


class QuantEmbedding(nn.Module):
    """Token lookups from ggml blocks: uint8 [vocab, dim / 32 * BLOCK_BYTES], one row per token.

    A quantized GGUF embedding tied to the head shares the head's blocks, so the
    vocabulary is held once; a lookup dequantizes only the rows it reads (float32,
    ``dequantize``'s exact values; the model casts them to its dtype) instead of
    keeping a float copy of the table (SmolLM2: 113 MB beside its 31 MB of blocks).
    No weight to train: fine-tuning refuses a quantized model (model/lora.py).
    """

    def __init__(self, blocks: torch.Tensor, qtype: str, num_embeddings: int, embedding_dim: int):
        super().__init__()
        check_qtype(qtype)
        want = (num_embeddings, embedding_dim // BLOCK * BLOCK_BYTES[qtype])
        if embedding_dim % BLOCK or blocks.dtype != torch.uint8 or tuple(blocks.shape) != want:
            raise ValueError(f"{qtype} blocks for a {num_embeddings} x {embedding_dim} embedding must be uint8 "
                             f"{want}, got {blocks.dtype} {tuple(blocks.shape)}")
        self.qtype, self.num_embeddings, self.embedding_dim = qtype, num_embeddings, embedding_dim
        self.register_buffer("blocks", blocks)
        self.kernel_fmt: int | None = None  # set when ``blocks`` is the tied head's packed layout (share_packed)

    def share_packed(self, head: QuantLinear):
        """Read the tied head's blocks after the kernel packed them in place (``pack_for_kernel``): the
        vocabulary stays held once (SmolLM2 Q4_1: its Q8_0 head had a packed copy, weights 96.6 -> 126.7 MB)."""
        if head.kernel_fmt is None or head.qtype != self.qtype or tuple(head.blocks.shape) != tuple(self.blocks.shape):
            raise ValueError("only a packed head of this embedding's own blocks can be shared")
        self.blocks, self.kernel_fmt = head.blocks, head.kernel_fmt

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The GGUF blocks of rows ``ids`` (1-D int64), from either layout."""
        if self.kernel_fmt is None:
            return self.blocks.index_select(0, ids)  # raises IndexError on an id outside the table
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise IndexError(f"index out of range: ids must be in [0, {self.num_embeddings})")
        ids = ids.to(device="cpu", dtype=torch.int64).contiguous()
        src = self.blocks.detach().cpu().contiguous()  # itself on the CPU, where the kernel packed it
        out = torch.empty(ids.numel(), self.blocks.shape[1], dtype=torch.uint8)
        decode_library().lml_unpack_x16_rows(self.kernel_fmt, src.data_ptr(), self.num_embeddings,
                                             self.embedding_dim, ids.data_ptr(), ids.numel(), out.data_ptr())
        return out.to(self.blocks.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> float32 [..., embedding_dim]."""
        return dequantize(self._rows(ids.reshape(-1)), self.qtype).view(*ids.shape, self.embedding_dim)

    def gguf_blocks(self) -> torch.Tensor:
        """The table's blocks in GGUF's row layout (unpacked, a copy, when shared with a packed head)."""
        return self._rows(torch.arange(self.num_embeddings)) if self.kernel_fmt is not None else self.blocks

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole table as float [num_embeddings, embedding_dim] (a new tensor, on demand)."""
        return dequantize(self.gguf_blocks(), self.qtype, dtype)

    def extra_repr(self) -> str:
        return f"{self.qtype}, {self.num_embeddings}, {self.embedding_dim}"


class SideBySide(nn.Module):
    """Projections of one input held in different formats (a GGUF file may mix them, e.g. a
    q8_0 v beside q4_1 q and k): their outputs side by side, as one fused layer gives them."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([l.forward(x) for l in self.layers], dim=-1)


def fuse_quantized(*layers: nn.Module) -> nn.Module:
    """The fused form of q|k|v or gate|up when any of them is quantized: stacked blocks when
    they share one format, else the layers side by side."""
    first = layers[0]
    if all(isinstance(l, QuantLinear) and l.qtype == first.qtype and l.d_in == first.d_in for l in layers):
        return QuantLinear.fuse(*layers)
    return SideBySide(*layers)


BLOCK_LAYERS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
HEAD = "head"
HEAD_QTYPE = "q8_0"


def quantize_model(model: nn.Module, qtype: str, head: str | None = HEAD_QTYPE,
                   blocks: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Swap every ``Linear`` of the transformer blocks for a ``QuantLinear`` in place.

    The embedding and the norms stay float. ``head`` is the head's format (None:
    float), q8_0 by default as llama.cpp keeps a tied output: SmolLM2's float32 head
    would be 113 of the 173 MB a q4_0 decode step reads (90 MB with it in Q8_0), for
    0.02% perplexity on stories260K (README). A tied head becomes its own Q8_0 copy
    of the embedding, leaving the embedding float for lookups.
    A layer whose input width is not a multiple of 32 stays float (stories260K's
    172-wide MLP). ``blocks`` maps ``"<module name>.blocks"`` to cached blocks
    (see ``quantized_blocks``) to use instead of quantizing again. Call
    ``InferenceModel(model)`` after (an earlier one keeps the float weights it was built from).
    A head already quantized (a GGUF file's) stays as it is.
    """
    check_qtype(qtype)
    if head is not None:
        check_qtype(head)
    for i in range(len(model.blocks)):
        for path in BLOCK_LAYERS:
            name = f"blocks.{i}.{path}"
            layer = model.get_submodule(name) if _has(model, name) else None
            if isinstance(layer, Linear) and layer.d_in % BLOCK == 0:
                _swap(model, name, _quantized(layer.weight.t(), layer.bias, qtype, name, blocks))
    if head is not None and model.config.d_model % BLOCK == 0 and not isinstance(model.head, QuantLinear):
        w = model.tok_emb.weight if model.head is None else model.head.weight.t()
        bias = None if model.head is None else model.head.bias
        model.head = _quantized(w, bias, head, HEAD, blocks)
    return model


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _quantized(w_out_in, bias, qtype, name, blocks) -> QuantLinear:
    bias = None if bias is None else bias.detach().clone()
    cached = (blocks or {}).get(f"{name}.blocks")
    if cached is None:
        return QuantLinear.from_weight(w_out_in.detach(), qtype, bias)
    d_out, d_in = w_out_in.shape
    return QuantLinear.from_blocks(cached.to(w_out_in.device), qtype, d_in, d_out, bias)


def _swap(model: nn.Module, name: str, module: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def quantized_blocks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module name>.blocks": uint8 blocks}`` of every quantized layer, each its own
    contiguous tensor (after fusing, layers hold row views), ready for a safetensors file."""
    names = [f"blocks.{i}.{path}" for i in range(len(model.blocks)) for path in BLOCK_LAYERS] + [HEAD]
    layers = {n: model.get_submodule(n) for n in names if _has(model, n)}
    return {f"{n}.blocks": m.gguf_blocks().contiguous().clone() for n, m in layers.items()
            if isinstance(m, QuantLinear)}


def weight_format(model: nn.Module) -> str:
    """"q4_0", "q8_0"... when the blocks are quantized, else the float dtype ("f32", "bf16", "f16")."""
    for m in model.modules():
        if isinstance(m, QuantLinear) and m is not getattr(model, "head", None):
            return m.qtype
    return {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}.get(
        model.dtype, str(model.dtype).removeprefix("torch."))


def weight_bytes(model: nn.Module, extra=()) -> int:
    """Memory the weights take: each storage once (fused layers are views of one tensor),
    plus ``extra`` tensors (an inference model's copy of a tied head)."""
    tensors = list(model.state_dict(keep_vars=True).values()) + list(extra)
    storages = {}
    for t in tensors:
        if t is not None:
            s = t.untyped_storage()
            storages[(s.device.type, s.data_ptr())] = s.nbytes()
    return sum(storages.values())
