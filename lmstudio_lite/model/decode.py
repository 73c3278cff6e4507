"""One decode step (one new token per row) in as few Python calls into torch as possible.

At batch-1 decode the general forward makes about 45 Python-level torch calls per
layer, each a few microseconds, a sizeable share of a step on the CI CPUs (all of
it for a small model). This path works on 2-D ``[B, C]`` rows, folds every
residual add into its matmul (``addmm``/``addmv`` accumulate onto their input),
writes the cache in place and calls no ``nn.Module``. ``Transformer.forward_hidden``
takes it when one token per row is decoded against a cache, without gradients,
after ``prepare_for_inference``; the parity tests run it against transformers.
Shapes: B rows, C d_model, H query heads, KV key/value heads, D head_dim.

On the CPU, 1..8 rows go further: ``NativeDecoder`` hands the whole step through
every block to one C call (lmstudio_lite/native/decode.c), in float32, bf16 or a
GGUF block format, which removes the per-op dispatch entirely and reads each
weight once for all rows; this file's PyTorch step is the path for everything
else, and what the kernel is tested against.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..native import decode_library
from .layers import matmul, run_fused
from .quant import QuantLinear

_NATIVE_ACTS = {"silu": 0, "gelu_new": 1, "gelu_pytorch_tanh": 1, "gelu_fast": 1, "gelu": 2, "relu": 3}
# decode.c's matrix formats (T_*) and the GGUF block size of each quantized one.
_FORMATS = {"f32": 0, "bf16": 1, "q8_0": 2, "q4_0": 3, "q4_1": 4}
_BLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q4_1": 20}
MAX_ROWS = 8  # decode.c's MAX_ROWS: the rows one step serves


class NativeDecoder:
    """A prepared CPU model's decode step (1..8 rows), as one call into native/decode.c.

    Each matrix may be float32 [in, out], bf16 [out, in] (``layers.store_out_in``) or a
    quantized layer (anything with ``qtype`` in q8_0/q4_0/q4_1 and uint8 ``blocks``
    [out, in/32 * bytes], model/quant.py's ``QuantLinear``). The embedding, the final norm
    and a float head stay in torch; a quantized head runs through the kernel's ``lml_linear``.
    Holds a reference to every tensor whose address it passes, so no pointer can
    outlive its memory; ``Transformer._apply`` (``.to()``, ``.float()``...) drops it.
    """

    def __init__(self, model, lib):
        cfg = model.config
        self._lib = lib
        self._keep: list[torch.Tensor] = []
        C, Q, HD, FF = cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, cfg.n_head * cfg.head_dim, cfg.d_ff
        rows = []  # per layer, in the order of decode.c's P_* slots
        for b in model.blocks:
            attn, mlp = b.attn, b.mlp
            up_w = 2 * FF if mlp.gated else FF
            rows += [self._addr(b.norm1.weight), self._addr(getattr(b.norm1, "bias", None)),
                     *self._matrix(attn.fused, C, Q), *self._matrix(attn.o, HD, C),
                     self._addr(b.norm2.weight), self._addr(getattr(b.norm2, "bias", None)),
                     *self._matrix(mlp.fused if mlp.gated else mlp.up, C, up_w), *self._matrix(mlp.down, FF, C)]
        self._ptrs = torch.tensor(rows, dtype=torch.int64)
        rope = model.pos_emb is None
        dims = [cfg.n_layer, C, cfg.n_head, cfg.n_kv_head, cfg.head_dim, FF, int(model.blocks[0].mlp.gated),
                int(rope), int(not rope), _NATIVE_ACTS[cfg.act]]
        # the last entry says whether the KV cache is bf16 (decode.c's D_CACHE_BF16)
        self._dims = {torch.float32: torch.tensor(dims + [0]), torch.bfloat16: torch.tensor(dims + [1])}
        self._eps = model.blocks[0].norm1.eps
        self._emb = model.tok_emb.weight
        self._pos_emb = None if rope else model.pos_emb.weight
        self._cos = self._addr(model.rope_cos) if rope else 0
        self._sin = self._addr(model.rope_sin) if rope else 0
        self._vocab, self._C = cfg.vocab_size, C
        self._x = torch.empty(MAX_ROWS, C)
        self._scratch, self._scratch_for = torch.empty(0), None
        head = getattr(model, "head", None)
        self.head = self._matrix(head, C, cfg.vocab_size) + (cfg.vocab_size,) if hasattr(head, "qtype") else None

    def __deepcopy__(self, memo):
        # Its addresses point into the original model's tensors: a copied model prepares its own step.
        return None

    def _addr(self, t: torch.Tensor | None) -> int:
        """The address of a float vector (norm weight, bias, RoPE table), as float32."""
        if t is None:
            return 0
        if t.device.type != "cpu":
            raise ValueError("the native step runs on the CPU")
        t = t.detach().to(torch.float32).contiguous()  # a copy only for bf16 norms and biases: small
        self._keep.append(t)
        return t.data_ptr()

    def _matrix(self, layer, d_in: int, d_out: int) -> tuple[int, int, int]:
        """(format, weight address, bias address) of a projection: a fused ``(weight [in, out], bias)``
        pair, a ``Linear`` or a quantized layer."""
        if isinstance(layer, tuple):
            w, bias = layer
        elif hasattr(layer, "blocks") or hasattr(layer, "weight"):
            w, bias = getattr(layer, "blocks", None), layer.bias
        else:  # e.g. quant.SideBySide: q, k, v in different formats have no one matrix to hand over
            raise ValueError(f"the native step takes one matrix per projection, not a {type(layer).__name__}")
        qtype = getattr(layer, "qtype", None)
        if qtype is not None:
            want = (d_out, d_in // 32 * _BLOCK_BYTES.get(qtype, 0))
            if qtype not in _BLOCK_BYTES or d_in % 32 or w.dtype != torch.uint8 or tuple(w.shape) != want \
                    or not w.is_contiguous():
                raise ValueError(f"quantized {qtype} blocks of a {d_in} -> {d_out} layer must be contiguous "
                                 f"uint8 {want}, got {w.dtype} {tuple(w.shape)}")
            fmt, data = _FORMATS[qtype], w
        else:
            w = layer.weight if w is None else w
            if tuple(w.shape) != (d_in, d_out):
                raise ValueError(f"a {d_in} -> {d_out} layer has a weight of shape {tuple(w.shape)}")
            if w.dtype == torch.float32 and w.is_contiguous():
                fmt, data = _FORMATS["f32"], w
            elif w.dtype == torch.bfloat16 and w.t().is_contiguous():
                fmt, data = _FORMATS["bf16"], w.t()
            else:
                raise ValueError(f"the native step takes float32 [in, out] or bf16 [out, in] weights, "
                                 f"got {w.dtype} with strides {w.stride()}")
        if data.device.type != "cpu":
            raise ValueError("the native step runs on the CPU")
        self._keep.append(data)
        return fmt, data.data_ptr(), self._addr(bias)

    @classmethod
    def build(cls, model) -> "NativeDecoder | None":
        """The native step for this prepared model, or None when it does not apply or cannot be built."""
        cfg = model.config
        norms = [n for b in model.blocks for n in (b.norm1, b.norm2)]
        if (model.tok_emb.weight.device.type != "cpu" or cfg.act not in _NATIVE_ACTS or cfg.n_head % cfg.n_kv_head
                or any(getattr(n, "eps", None) != norms[0].eps for n in norms)
                or any(isinstance(n, nn.LayerNorm) and n.bias is None for n in norms)):
            return None
        lib = decode_library()
        if lib is None:
            return None
        try:
            return cls(model, lib)
        except ValueError:
            return None

    def usable(self, ids: torch.Tensor, cache) -> bool:
        """Whether ``ids`` [B, 1] against ``cache`` (rows 0..B-1) can take the native step."""
        return 1 <= ids.shape[0] <= MAX_ROWS and cache.batch == ids.shape[0] and self._takes(cache)

    def _takes(self, cache) -> bool:
        k, v = cache.k, cache.v
        return k.dtype in self._dims and v.dtype == k.dtype and k.device.type == "cpu" and k.is_contiguous() \
            and v.is_contiguous()

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache) -> torch.Tensor:
        """Rows b < B (B <= 8): token ``tokens[b]`` at position ``positions[b]`` of cache row ``slots[b]``.

        Returns the residual stream [B, C] after the last block (float32; a view of a buffer
        the next call overwrites) and writes each row's K and V into the cache."""
        B = tokens.shape[0]
        if not 1 <= B <= MAX_ROWS or positions.shape != (B,) or slots.shape != (B,):
            raise ValueError(f"the native step takes 1 to {MAX_ROWS} rows, each with a position and a cache "
                             f"row; got {B} tokens, positions {tuple(positions.shape)}, slots {tuple(slots.shape)}")
        if not self._takes(cache):
            raise ValueError("the native step needs a contiguous float32 or bf16 CPU cache")
        tokens, positions, slots = (t.to(torch.int64).contiguous() for t in (tokens, positions, slots))
        if int(tokens.min()) < 0 or int(tokens.max()) >= self._vocab:
            raise IndexError(f"tokens {tokens.tolist()} has ids outside the vocabulary of {self._vocab}")
        if int(positions.min()) < 0 or int(positions.max()) >= cache.max_len:
            raise IndexError(f"KV cache holds {cache.max_len} positions, asked to write at {positions.tolist()}")
        if int(slots.min()) < 0 or int(slots.max()) >= cache.batch:
            raise IndexError(f"the KV cache has {cache.batch} rows, asked for rows {slots.tolist()}")
        x = self._x[:B]
        x.copy_(self._emb.index_select(0, tokens))  # converts a bf16 embedding to float32 on the way
        if self._pos_emb is not None:
            x += self._pos_emb.index_select(0, positions)
        threads = torch.get_num_threads()
        dims = self._dims[cache.k.dtype]
        if self._scratch_for is None or self._scratch_for[0] < B or self._scratch_for[1:] != (cache.max_len, threads):
            n = self._lib.lml_scratch_floats(dims.data_ptr(), MAX_ROWS, cache.max_len, threads)
            self._scratch, self._scratch_for = torch.empty(n + 16), (MAX_ROWS, cache.max_len, threads)
        scratch = self._scratch.data_ptr()
        scratch += -scratch % 64  # 64-byte aligned: every private part then starts on a cache line
        self._lib.lml_decode(self._ptrs.data_ptr(), dims.data_ptr(), self._eps, B, positions.data_ptr(),
                             slots.data_ptr(), self._cos, self._sin, cache.k.data_ptr(), cache.v.data_ptr(),
                             cache.batch, cache.max_len, x.data_ptr(), scratch, threads)
        return x

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """h [.., C] -> logits [.., V] through the quantized head (``self.head`` is not None)."""
        fmt, w, bias, V = self.head
        rows = h.reshape(-1, self._C).to(torch.float32).contiguous()
        out = torch.empty(rows.shape[0], V)
        threads = torch.get_num_threads()
        scratch = torch.empty(self._lib.lml_linear_scratch_floats(self._C, V, rows.shape[0], threads))
        self._lib.lml_linear(fmt, w, bias, self._C, V, rows.shape[0], rows.data_ptr(), out.data_ptr(),
                             scratch.data_ptr(), threads)
        return out.view(*h.shape[:-1], V)


def _add_linear(layer, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x + layer(a)``; a float weight takes the residual inside its matmul call."""
    if isinstance(layer, QuantLinear):
        return x + layer.forward(a)
    x = matmul(a, layer.weight, x)
    return x if layer.bias is None else x + layer.bias


@torch.no_grad()
def decode_step(model, ids: torch.Tensor, pos: int, cache) -> torch.Tensor:
    """ids [B, 1] at absolute position ``pos`` -> final normed hidden state [B, 1, C]."""
    cfg = model.config
    B = ids.shape[0]
    H, KV, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    if pos >= cache.max_len:
        raise IndexError(f"KV cache holds {cache.max_len} positions, asked to write up to {pos + 1}")
    native = model._native
    if native is not None and native.usable(ids, cache):
        rows = torch.arange(B)
        x = native.step(ids[:, 0], torch.full((B,), pos), rows, cache)
        return model.norm_f.forward(x.to(model.tok_emb.weight.dtype)).unsqueeze(1)
    x = F.embedding(ids[:, 0], model.tok_emb.weight)  # [B, C]
    rope = None
    if model.pos_emb is not None:
        x = x + model.pos_emb.weight[pos]
    else:
        rope = model.rope_cos[pos].to(x.dtype), model.rope_sin[pos].to(x.dtype)  # [D] each
    qk_width = (H + KV) * D
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        qkv = run_fused(attn.fused, block.norm1.forward(x))  # [B, (H + 2KV) D]
        qk = qkv[:, :qk_width].view(B, H + KV, D)
        if rope is not None:
            qk = torch.addcmul(qk * rope[0], qk.roll(D // 2, -1), rope[1])
        k_all, v_all = cache._k[i], cache._v[i]  # [B, KV, max_len, D]
        k_all[:, :, pos] = qk[:, H:]
        v_all[:, :, pos] = qkv[:, qk_width:].view(B, KV, D)
        # One query per head: grouped onto its KV head, GQA decode is plain attention.
        y = F.scaled_dot_product_attention(qk[:, :H].reshape(B, KV, H // KV, D),
                                           k_all[:, :, :pos + 1], v_all[:, :, :pos + 1])
        x = _add_linear(attn.o, y.reshape(B, H * D), x)
        h = block.norm2.forward(x)
        if mlp.gated:
            gate, up = run_fused(mlp.fused, h).chunk(2, dim=-1)
            a = mlp.act(gate) * up
        else:
            a = mlp.act(mlp.up.forward(h))
        x = _add_linear(mlp.down, a, x)
    return model.norm_f.forward(x).unsqueeze(1)


@torch.no_grad()
def decode_rows(model, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache) -> torch.Tensor:
    """A batched decode step with a position and a cache row per row -> final normed hidden [B, C].

    Row b feeds ``tokens[b]`` at ``positions[b]`` of cache row ``slots[b]`` (a scheduler's
    sequences sit at different lengths). On the CPU the native step takes up to 8 rows per
    call; otherwise every matrix runs once for all rows and attention runs per row over that
    row's own prefix (positions past it are never read, so rows need no masks).
    """
    native = model._native
    B = tokens.shape[0]
    if native is not None and native._takes(cache):
        parts = []
        for i in range(0, B, MAX_ROWS):
            x = native.step(tokens[i:i + MAX_ROWS], positions[i:i + MAX_ROWS], slots[i:i + MAX_ROWS], cache)
            parts.append(x.clone() if B > MAX_ROWS else x)
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        return model.norm_f.forward(x.to(model.tok_emb.weight.dtype))
    cfg = model.config
    H, KV, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    if int(positions.max()) >= cache.max_len:
        raise IndexError(f"KV cache holds {cache.max_len} positions, asked to write at {positions.tolist()}")
    x = F.embedding(tokens, model.tok_emb.weight)  # [B, C]
    rope = None
    if model.pos_emb is not None:
        x = x + model.pos_emb.weight[positions]
    else:
        rope = model.rope_cos[positions].to(x.dtype).unsqueeze(1), model.rope_sin[positions].to(x.dtype).unsqueeze(1)
    ends = (positions + 1).tolist()
    rows = slots.tolist()
    qk_width = (H + KV) * D
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        h = block.norm1.forward(x)
        if attn.fused is not None:
            qkv = run_fused(attn.fused, h)
        else:
            qkv = torch.cat([attn.q.forward(h), attn.k.forward(h), attn.v.forward(h)], dim=-1)
        qk = qkv[:, :qk_width].view(B, H + KV, D)
        if rope is not None:
            qk = torch.addcmul(qk * rope[0], qk.roll(D // 2, -1), rope[1])
        k_all, v_all = cache._k[i], cache._v[i]  # [R, KV, max_len, D]
        k_all[slots, :, positions] = qk[:, H:]
        v_all[slots, :, positions] = qkv[:, qk_width:].view(B, KV, D)
        q = qk[:, :H].reshape(B, KV, H // KV, D)
        y = torch.cat([F.scaled_dot_product_attention(q[b:b + 1], k_all[r:r + 1, :, :e], v_all[r:r + 1, :, :e])
                       for b, (r, e) in enumerate(zip(rows, ends))])
        x = _add_linear(attn.o, y.reshape(B, H * D), x)
        h = block.norm2.forward(x)
        if mlp.gated:
            if mlp.fused is not None:
                gate, up = run_fused(mlp.fused, h).chunk(2, dim=-1)
            else:
                gate, up = mlp.gate.forward(h), mlp.up.forward(h)
            a = mlp.act(gate) * up
        else:
            a = mlp.act(mlp.up.forward(h))
        x = _add_linear(mlp.down, a, x)
    return model.norm_f.forward(x)
