"""The CPU decode step in C: ``NativeDecoder``, one call into lmstudio_lite/native/decode.c.

At batch-1 decode the general forward makes about 45 Python-level torch calls per layer,
each a few microseconds, a sizeable share of a step on the CI CPUs (all of it for a small
model). On the CPU, 1..8 rows go through one C call instead: the whole step through every
block, in float32, bf16 or a GGUF block format, which removes the per-op dispatch entirely
and reads each weight once for all rows. ``inference.InferenceModel`` builds it and calls
it; everything else runs the ``Transformer``'s forward, which the kernel is tested against.
Shapes: B rows, C d_model, V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..native import FORMATS as _FORMATS, Q8_0_ROUNDED, decode_library
from ..threads import kernel_threads
from .quant import QuantEmbedding, weight_format

_NATIVE_ACTS = {"silu": 0, "gelu_new": 1, "gelu_pytorch_tanh": 1, "gelu_fast": 1, "gelu": 2, "relu": 3}
# the GGUF block size of each quantized format
_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
MAX_ROWS = 8  # decode.c's MAX_ROWS: the rows one step serves
_MAX_PARTS = 3  # decode.c's MAX_PARTS: matrices side by side in one projection
CACHE_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # decode.c's CACHE_* (dims[D_CACHE])


class NativeDecoder:
    """An ``InferenceModel``'s CPU decode step (1..8 rows), as one call into native/decode.c.

    Each matrix may be float32 [in, out], bf16 [out, in] (``layers.store_out_in``) or a
    quantized layer (anything with ``qtype`` in q8_0/q4_0/q4_1 and uint8 ``blocks``
    [out, in/32 * bytes], model/quant.py's ``QuantLinear``); fused q|k|v and gate|up whose
    parts differ in format (``quant.SideBySide``) go over as up to three matrices side by side.
    The embedding stays in torch. ``step(..., logits=True)`` also runs the final norm and the
    head in the same call (one parallel region per token); ``project`` runs a quantized head
    alone (prefill's last rows).
    Where the kernel has packed rows (``lml_x16``: AVX-512 VNNI), 4-bit matrices are repacked 16
    outputs side by side in place (``QuantLinear.pack_for_kernel``; native/gemv.h: rows_x16), a 4-bit
    model's Q8_0 head too, and a quantized embedding tied to the head then reads the packed rows
    (``QuantEmbedding.share_packed``): every matrix is held once.
    Holds a reference to every tensor whose address it passes, so no pointer can
    outlive its memory (a later ``.to()`` of the net leaves these tensors alive).
    """

    def __init__(self, inference, lib):
        model, cfg = inference.net, inference.config
        self._lib = lib
        self._keep: list[torch.Tensor] = []
        # Where the kernel rounds a 4-bit model's activations to int8 (as llama.cpp does), its Q8_0
        # matrices (the head, a mixed file's v) round them too, so its answers follow llama.cpp's;
        # a Q8_0 model stays exact (native/gemv.h: T_Q8_0R).
        self._q8_0 = Q8_0_ROUNDED if lib.lml_int8() and weight_format(model) in ("q4_0", "q4_1") \
            else _FORMATS["q8_0"]
        head, emb = getattr(model, "head", None), model.tok_emb
        tied = isinstance(emb, QuantEmbedding) and hasattr(head, "qtype") and emb.kernel_fmt is None \
            and emb.blocks.data_ptr() == head.blocks.data_ptr()
        if self._q8_0 == Q8_0_ROUNDED and getattr(head, "qtype", None) == "q8_0":
            # its Q8_0 head packed in place like its 4-bit layers (decode.c's T_Q8_0RX): 8 rows 2.95 -> 1.9
            # ms on SmolLM2 (once a copy beside the blocks its embedding read: 28.7 MB more)
            head.pack_for_kernel(lib, rounded_q8=True)
        C, HD, FF = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.d_ff
        KVD = cfg.n_kv_head * cfg.head_dim
        rows = []  # per layer, in the order of decode.c's P_* slots
        for b, qkv, gate_up in zip(model.blocks, inference.qkv, inference.gate_up):
            attn, mlp = b.attn, b.mlp
            up = self._parts(gate_up, C, [FF, FF]) if mlp.gated else self._parts(mlp.up, C, [FF])
            rows += [self._addr(b.norm1.weight), self._addr(getattr(b.norm1, "bias", None)),
                     *self._parts(qkv, C, [HD, KVD, KVD]), *self._matrix(attn.o, HD, C), C,
                     self._addr(b.norm2.weight), self._addr(getattr(b.norm2, "bias", None)),
                     *up, *self._matrix(mlp.down, FF, C), C]
        step_head, norm_f = (head if head is not None else (inference.head_t, None)), model.norm_f
        try:  # decode.c's HEAD_* slots: the final norm, then the head as one part
            eps = model.blocks[0].norm1.eps
            if getattr(norm_f, "eps", None) != eps or (isinstance(norm_f, nn.LayerNorm) and norm_f.bias is None):
                raise ValueError("the final norm differs from the blocks' norms")
            rows += [self._addr(norm_f.weight), self._addr(getattr(norm_f, "bias", None)),
                     *self._matrix(step_head, C, cfg.vocab_size), cfg.vocab_size]
            self.fused_head = True
        except ValueError:  # e.g. a float16 head: the step still runs, the head in torch
            rows += [0] * 6
            self.fused_head = False
        self._ptrs = torch.tensor(rows, dtype=torch.int64)
        rope = model.pos_emb is None
        dims = [cfg.n_layer, C, cfg.n_head, cfg.n_kv_head, cfg.head_dim, FF, int(model.blocks[0].mlp.gated),
                int(rope), int(not rope), _NATIVE_ACTS[cfg.act]]
        # then the KV cache's element type (decode.c's D_CACHE), and the vocabulary
        self._dims = {dtype: torch.tensor(dims + [code, cfg.vocab_size]) for dtype, code in CACHE_TYPES.items()}
        self._eps = model.blocks[0].norm1.eps
        # a float table (its tensor, like every other weight here) or a quantized embedding's module
        self._emb = emb if hasattr(emb, "blocks") else emb.weight.detach()
        self._emb_dtype = model.dtype
        self._pos_emb = None if rope else model.pos_emb.weight.detach()
        self._cos = self._addr(model.rope_cos) if rope else 0
        self._sin = self._addr(model.rope_sin) if rope else 0
        self._vocab, self._C = cfg.vocab_size, C
        self._x = torch.empty(MAX_ROWS, C)
        self._scratch, self._scratch_for = torch.empty(0), None
        self._linear_scratch, self._linear_for = torch.empty(0), None
        self.head = self._matrix(head, C, cfg.vocab_size) + (cfg.vocab_size,) if hasattr(head, "qtype") else None
        if tied and head.packed:  # the embedding reads the packed rows now: the GGUF ones can go
            emb.share_packed(head)

    def _addr(self, t: torch.Tensor | None) -> int:
        """The address of a float vector (norm weight, bias, RoPE table), as float32."""
        if t is None:
            return 0
        if t.device.type != "cpu":
            raise ValueError("the native step runs on the CPU")
        t = t.detach().to(torch.float32).contiguous()  # a copy only for bf16 norms and biases: small
        self._keep.append(t)
        return t.data_ptr()

    def _parts(self, layer, d_in: int, widths: list[int]) -> list[int]:
        """decode.c's MAX_PARTS parts of a fused projection, (format, weights, bias, outputs) each:
        one matrix when the layer is one, else each layer of a ``SideBySide`` in its own format."""
        parts = getattr(layer, "layers", None)
        if parts is None:
            slots = [*self._matrix(layer, d_in, sum(widths)), sum(widths)]
        elif len(parts) == len(widths):
            slots = [v for l, w in zip(parts, widths) for v in (*self._matrix(l, d_in, w), w)]
        else:
            raise ValueError(f"a fused projection of {len(widths)} matrices has {len(parts)} parts")
        return slots + [0] * (_MAX_PARTS * 4 - len(slots))

    def _matrix(self, layer, d_in: int, d_out: int) -> tuple[int, int, int]:
        """(format, weight address, bias address) of a projection: a fused ``(weight [in, out], bias)``
        pair, a ``Linear`` or a quantized layer."""
        if isinstance(layer, tuple):
            w, bias = layer
        elif hasattr(layer, "blocks") or hasattr(layer, "weight"):
            w, bias = getattr(layer, "blocks", None), layer.bias
        else:
            raise ValueError(f"the native step takes one matrix per projection, not a {type(layer).__name__}")
        qtype = getattr(layer, "qtype", None)
        if qtype is not None:
            want = (d_out, d_in // 32 * _BLOCK_BYTES.get(qtype, 0))
            if qtype not in _BLOCK_BYTES or d_in % 32 or w.dtype != torch.uint8 or tuple(w.shape) != want \
                    or not w.is_contiguous():
                raise ValueError(f"quantized {qtype} blocks of a {d_in} -> {d_out} layer must be contiguous "
                                 f"uint8 {want}, got {w.dtype} {tuple(w.shape)}")
            fmt, data = (self._q8_0 if qtype == "q8_0" else _FORMATS[qtype]), w
            packed = layer.pack_for_kernel(self._lib) if hasattr(layer, "pack_for_kernel") else None
            if packed is not None:  # 16 outputs side by side, in place (native/gemv.h: rows_x16)
                fmt, data = packed
            elif getattr(layer, "packed", False):  # packed for another build (the tests'): GGUF rows, a copy
                data = layer.gguf_blocks()
        else:
            w = layer.weight if w is None else w
            if w is None or tuple(w.shape) != (d_in, d_out):
                raise ValueError(f"a {d_in} -> {d_out} layer has a weight of shape {getattr(w, 'shape', None)}")
            if w.dtype == torch.float32 and w.is_contiguous():
                fmt, data = _FORMATS["f32"], w
            elif w.dtype == torch.bfloat16 and w.t().is_contiguous():
                fmt, data = _FORMATS["bf16"], w.t()
            else:
                raise ValueError(f"the native step takes float32 [in, out] or bf16 [out, in] weights, "
                                 f"got {w.dtype} with strides {w.stride()}")
        if data.device.type != "cpu":
            raise ValueError("the native step runs on the CPU")
        data = data.detach()  # the storage itself: a later .to() swaps a Parameter's data, not this tensor
        self._keep.append(data)
        return fmt, data.data_ptr(), self._addr(bias)

    @classmethod
    def build(cls, inference) -> "NativeDecoder | None":
        """The native step for an ``InferenceModel``, or None when it does not apply or cannot be built."""
        model, cfg = inference.net, inference.config
        norms = [n for b in model.blocks for n in (b.norm1, b.norm2)]
        if (model.device.type != "cpu" or cfg.act not in _NATIVE_ACTS or cfg.n_head % cfg.n_kv_head
                or any(getattr(n, "eps", None) != norms[0].eps for n in norms)
                or any(isinstance(n, nn.LayerNorm) and n.bias is None for n in norms)):
            return None
        lib = decode_library()
        if lib is None:
            return None
        try:
            return cls(inference, lib)
        except ValueError:
            return None

    def usable(self, ids: torch.Tensor, cache) -> bool:
        """Whether ``ids`` [B, 1] against ``cache`` (rows 0..B-1) can take the native step."""
        return 1 <= ids.shape[0] <= MAX_ROWS and cache.batch == ids.shape[0] and self.takes(cache)

    def takes(self, cache) -> bool:
        """Whether the kernel reads and writes this cache (contiguous float32, bf16 or float16 on the CPU)."""
        k, v = cache.k, cache.v
        return k.dtype in self._dims and v.dtype == k.dtype and k.device.type == "cpu" and k.is_contiguous() \
            and v.is_contiguous()

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache,
             logits: bool = False):
        """Rows b < B (B <= 8): token ``tokens[b]`` at position ``positions[b]`` of cache row ``slots[b]``.

        Returns the residual stream [B, C] after the last block (float32; a view of a buffer
        the next call overwrites) and writes each row's K and V into the cache. With ``logits``
        (when ``fused_head``), returns the logits [B, V] of the final norm instead, a new tensor."""
        B = tokens.shape[0]
        if not 1 <= B <= MAX_ROWS or positions.shape != (B,) or slots.shape != (B,):
            raise ValueError(f"the native step takes 1 to {MAX_ROWS} rows, each with a position and a cache "
                             f"row; got {B} tokens, positions {tuple(positions.shape)}, slots {tuple(slots.shape)}")
        if not self.takes(cache):
            raise ValueError("the native step needs a contiguous float32, bf16 or float16 CPU cache")
        if logits and not self.fused_head:
            raise ValueError("this model's head does not run in the native step")
        tokens, positions, slots = (t.to(torch.int64).contiguous() for t in (tokens, positions, slots))
        # checked as Python lists: at most 8 values each, and six tensor reductions cost more
        tl, pl, sl = tokens.tolist(), positions.tolist(), slots.tolist()
        if min(tl) < 0 or max(tl) >= self._vocab:
            raise IndexError(f"tokens {tl} has ids outside the vocabulary of {self._vocab}")
        if min(pl) < 0 or max(pl) >= cache.max_len:
            raise IndexError(f"KV cache holds {cache.max_len} positions, asked to write at {pl}")
        if min(sl) < 0 or max(sl) >= cache.batch:
            raise IndexError(f"the KV cache has {cache.batch} rows, asked for rows {sl}")
        x = self._x[:B]
        # through the model's dtype, as Transformer.embed_tokens: a bf16 model's rows are bf16 values
        rows = self._emb(tokens) if callable(self._emb) else self._emb.index_select(0, tokens)
        x.copy_(rows.to(self._emb_dtype))
        if self._pos_emb is not None:
            x += self._pos_emb.index_select(0, positions)
        threads = kernel_threads()
        dims = self._dims[cache.k.dtype]
        if self._scratch_for is None or self._scratch_for[0] < B or self._scratch_for[1:] != (cache.max_len, threads):
            n = self._lib.lml_scratch_floats(dims.data_ptr(), MAX_ROWS, cache.max_len, threads)
            self._scratch, self._scratch_for = torch.empty(n + 16), (MAX_ROWS, cache.max_len, threads)
        scratch = self._scratch.data_ptr()
        scratch += -scratch % 64  # 64-byte aligned: every private part then starts on a cache line
        out = torch.empty(B, self._vocab) if logits else None
        self._lib.lml_decode(self._ptrs.data_ptr(), dims.data_ptr(), self._eps, B, positions.data_ptr(),
                             slots.data_ptr(), self._cos, self._sin, cache.k.data_ptr(), cache.v.data_ptr(),
                             cache.batch, cache.max_len, x.data_ptr(), None if out is None else out.data_ptr(),
                             scratch, threads)
        return x if out is None else out

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """h [.., C] -> logits [.., V] through the quantized head (``self.head`` is not None)."""
        fmt, w, bias, V = self.head
        rows = h.reshape(-1, self._C).to(torch.float32).contiguous()
        out = torch.empty(rows.shape[0], V)
        threads = kernel_threads()
        if self._linear_for != (rows.shape[0], threads):
            n = self._lib.lml_linear_scratch_floats(self._C, V, rows.shape[0], threads)
            self._linear_scratch, self._linear_for = torch.empty(n), (rows.shape[0], threads)
        self._lib.lml_linear(fmt, w, bias, self._C, V, rows.shape[0], rows.data_ptr(), out.data_ptr(),
                             self._linear_scratch.data_ptr(), threads)
        return out.view(*h.shape[:-1], V)
