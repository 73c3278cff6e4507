"""One decode step (one new token per row) in as few Python calls into torch as possible.

At batch-1 decode the general forward makes about 45 Python-level torch calls per
layer, each a few microseconds, a sizeable share of a step on the CI CPUs (all of
it for a small model). This path works on 2-D ``[B, C]`` rows, folds every
residual add into its matmul (``addmm``/``addmv`` accumulate onto their input),
writes the cache in place and calls no ``nn.Module``. ``Transformer.forward_hidden``
takes it when one token per row is decoded against a cache, without gradients,
after ``prepare_for_inference``; the parity tests run it against transformers.
Shapes: B rows, C d_model, H query heads, KV key/value heads, D head_dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import matmul


@torch.no_grad()
def decode_step(model, ids: torch.Tensor, pos: int, cache) -> torch.Tensor:
    """ids [B, 1] at absolute position ``pos`` -> final normed hidden state [B, 1, C]."""
    cfg = model.config
    B = ids.shape[0]
    H, KV, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    if pos >= cache.max_len:
        raise IndexError(f"KV cache holds {cache.max_len} positions, asked to write up to {pos + 1}")
    x = F.embedding(ids[:, 0], model.tok_emb.weight)  # [B, C]
    rope = None
    if model.pos_emb is not None:
        x = x + model.pos_emb.weight[pos]
    else:
        rope = model.rope_cos[pos].to(x.dtype), model.rope_sin[pos].to(x.dtype)  # [D] each
    qk_width = (H + KV) * D
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        qkv = matmul(block.norm1.forward(x), *attn.fused)  # [B, (H + 2KV) D]
        qk = qkv[:, :qk_width].view(B, H + KV, D)
        if rope is not None:
            qk = torch.addcmul(qk * rope[0], qk.roll(D // 2, -1), rope[1])
        k_all, v_all = cache._k[i], cache._v[i]  # [B, KV, max_len, D]
        k_all[:, :, pos] = qk[:, H:]
        v_all[:, :, pos] = qkv[:, qk_width:].view(B, KV, D)
        # One query per head: grouped onto its KV head, GQA decode is plain attention.
        y = F.scaled_dot_product_attention(qk[:, :H].reshape(B, KV, H // KV, D),
                                           k_all[:, :, :pos + 1], v_all[:, :, :pos + 1])
        x = matmul(y.reshape(B, H * D), attn.o.weight, x)  # + the residual, in the same call
        if attn.o.bias is not None:
            x = x + attn.o.bias
        h = block.norm2.forward(x)
        if mlp.gated:
            gate, up = matmul(h, *mlp.fused).chunk(2, dim=-1)
            a = mlp.act(gate) * up
        else:
            a = mlp.act(matmul(h, mlp.up.weight, mlp.up.bias))
        x = matmul(a, mlp.down.weight, x)
        if mlp.down.bias is not None:
            x = x + mlp.down.bias
    return model.norm_f.forward(x).unsqueeze(1)
