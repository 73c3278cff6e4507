"""One decode step (one new token per row) in as few Python calls into torch as possible.

At batch-1 decode the general forward makes about 45 Python-level torch calls per
layer, each a few microseconds, a sizeable share of a step on the CI CPUs (all of
it for a small model). This path works on 2-D ``[B, C]`` rows, folds every
residual add into its matmul (``addmm``/``addmv`` accumulate onto their input),
writes the cache in place and calls no ``nn.Module``. ``Transformer.forward_hidden``
takes it when one token per row is decoded against a cache, without gradients,
after ``prepare_for_inference``; the parity tests run it against transformers.
Shapes: B rows, C d_model, H query heads, KV key/value heads, D head_dim.

In float32 on the CPU a single row goes further: ``NativeDecoder`` hands the
whole step through every block to one C call (lmstudio_lite/native), which
removes the per-op dispatch entirely; this file's PyTorch step is the path for
everything else, and what the kernel is tested against.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..native import decode_library
from .layers import matmul, run_fused
from .quant import QuantLinear

_NATIVE_ACTS = {"silu": 0, "gelu_new": 1, "gelu_pytorch_tanh": 1, "gelu_fast": 1, "gelu": 2, "relu": 3}


class NativeDecoder:
    """A prepared float32 CPU model's one-row decode step, as one call into decode_f32.c.

    Holds a reference to every tensor whose address it passes, so no pointer can
    outlive its memory; ``Transformer._apply`` (``.to()``, ``.float()``...) drops it.
    """

    def __init__(self, model, lib):
        cfg = model.config
        self._lib = lib
        self._keep: list[torch.Tensor] = []
        rows = []  # per layer, in the order of decode_f32.c's P_* slots
        for b in model.blocks:
            attn, mlp = b.attn, b.mlp
            up = mlp.fused if mlp.gated else (mlp.up.weight, mlp.up.bias)
            rows += [self._addr(b.norm1.weight), self._addr(getattr(b.norm1, "bias", None)),
                     self._addr(attn.fused[0]), self._addr(attn.fused[1]),
                     self._addr(attn.o.weight), self._addr(attn.o.bias),
                     self._addr(b.norm2.weight), self._addr(getattr(b.norm2, "bias", None)),
                     self._addr(up[0]), self._addr(up[1]), self._addr(mlp.down.weight), self._addr(mlp.down.bias)]
        self._ptrs = torch.tensor(rows, dtype=torch.int64)
        rope = model.pos_emb is None
        self._dims = torch.tensor([cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_ff,
                                   int(model.blocks[0].mlp.gated), int(rope), int(not rope),
                                   _NATIVE_ACTS[cfg.act]], dtype=torch.int64)
        self._eps = model.blocks[0].norm1.eps
        self._emb = self._addr(model.tok_emb.weight)
        self._pos_emb = 0 if rope else self._addr(model.pos_emb.weight)
        self._cos = self._addr(model.rope_cos) if rope else 0
        self._sin = self._addr(model.rope_sin) if rope else 0
        self._vocab = cfg.vocab_size
        self._x = torch.empty(cfg.d_model)
        self._scratch = torch.empty(0)
        self._scratch_for = None

    def _addr(self, t: torch.Tensor | None) -> int:
        if t is None:
            return 0
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("the native step needs contiguous float32 CPU tensors")
        self._keep.append(t)
        return t.data_ptr()

    @classmethod
    def build(cls, model) -> "NativeDecoder | None":
        """The native step for this prepared model, or None when it does not apply or cannot be built."""
        cfg = model.config
        norms = [n for b in model.blocks for n in (b.norm1, b.norm2)]
        if (model.tok_emb.weight.device.type != "cpu" or model.tok_emb.weight.dtype != torch.float32
                or cfg.act not in _NATIVE_ACTS or cfg.n_head % cfg.n_kv_head
                or any(getattr(n, "eps", None) != norms[0].eps for n in norms)
                or any(isinstance(n, nn.LayerNorm) and n.bias is None for n in norms)
                or any(isinstance(m, QuantLinear) for m in model.modules())):  # decode_f32.c is float32 only
            return None
        lib = decode_library()
        if lib is None:
            return None
        try:
            return cls(model, lib)
        except ValueError:
            return None

    def usable(self, ids: torch.Tensor, cache) -> bool:
        k = cache.k
        return (ids.shape[0] == 1 and cache.batch == 1 and k.dtype == torch.float32 and k.device.type == "cpu"
                and k.is_contiguous() and cache.v.is_contiguous())

    def __call__(self, token: int, pos: int, cache) -> torch.Tensor:
        """The residual stream [1, C] after the last block, with the cache written at ``pos``."""
        if not 0 <= token < self._vocab:
            raise IndexError(f"token id {token} is outside the vocabulary of {self._vocab}")
        threads = torch.get_num_threads()
        if self._scratch_for != (cache.max_len, threads):
            n = self._lib.lml_scratch_floats(self._dims.data_ptr(), cache.max_len, threads)
            self._scratch, self._scratch_for = torch.empty(n), (cache.max_len, threads)
        self._lib.lml_decode_f32(self._ptrs.data_ptr(), self._dims.data_ptr(), self._eps, token, self._emb,
                                 self._pos_emb, pos, self._cos, self._sin, cache.k.data_ptr(), cache.v.data_ptr(),
                                 cache.batch, cache.max_len, self._x.data_ptr(), self._scratch.data_ptr(), threads)
        return self._x.view(1, -1)


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
        return model.norm_f.forward(native(int(ids[0, 0]), pos, cache)).unsqueeze(1)
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
