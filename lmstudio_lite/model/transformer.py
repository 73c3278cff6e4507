"""One decoder-only transformer for the GPT-2 and Llama families.

Read top to bottom: attention, MLP, block, model. Shapes: B batch, T new tokens,
L cached length (start_pos + T), C d_model, H query heads, KV key/value heads,
D head_dim, V vocabulary. The model is a pure function of (ids, start_pos,
cache): the generation engine owns the cache.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .decode import MAX_ROWS, NativeDecoder, decode_step
from .kv_cache import KVCache
from .layers import ACTIVATIONS, Embedding, Linear, RMSNorm, apply_rope, matmul, rope_tables, run_fused, store_out_in
from .quant import QuantLinear, fuse_quantized


def fuse_linears(*layers: Linear, out_in: bool = False):
    """One [in, sum(out)] weight for several projections of the same input.

    The layers' own parameters become column views of the fused tensor, so the
    model holds no second copy; a decode step then streams one matrix instead
    of two or three small ones. ``out_in`` stores it [sum(out), in] (see
    ``layers.matmul``).
    """
    if out_in:
        weight = torch.cat([l.weight.data.t() for l in layers], dim=0).t()
    else:
        weight = torch.cat([l.weight.data for l in layers], dim=1)
    bias = torch.cat([l.bias.data for l in layers]) if layers[0].bias is not None else None
    start = 0
    for l in layers:
        end = start + l.d_out
        l.weight.data = weight[:, start:end]
        if bias is not None:
            l.bias.data = bias[start:end]
        start = end
    return weight, bias


def _causal_mask(T: int, L: int, device) -> torch.Tensor:
    """[T, L] bool, True where query i (absolute position L-T+i) may see key j."""
    q_pos = torch.arange(L - T, L, device=device).unsqueeze(1)
    return torch.arange(L, device=device).unsqueeze(0) <= q_pos


def attention_reference(q, k, v, causal: bool, return_probs: bool = False):
    """Plain matmul + softmax with grouped queries (same contract as ``attention``).

    Older torch builds ran bfloat16 SDPA on the CPU 1.3-4.4x slower than this;
    on torch 2.13 SDPA wins in every case bench/attention.py measures (decode,
    prefill, training; float32 and bfloat16), so the model no longer calls it.
    It stays as the benchmark's comparison, the tests' second opinion, and the
    one path that can show the attention weights (SDPA never materializes
    them): ``return_probs`` -> (out, probs [B, H, T, L] float32).
    """
    B, H, T, D = q.shape
    KV, L = k.shape[1], k.shape[2]
    rep = H // KV
    qg = q.reshape(B, KV, rep * T, D)  # queries of one KV group side by side
    scores = (qg @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))  # [B, KV, rep*T, L]
    if causal and T > 1:
        scores = scores.masked_fill(~_causal_mask(T, L, q.device).repeat(rep, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = (probs.to(q.dtype) @ v).view(B, H, T, D)
    if not return_probs:
        return out
    # Row r*T + t of group g is query head g*rep + r at position t (the reshape above).
    return out, probs.view(B, KV, rep, T, L).reshape(B, H, T, L)


def attention(q, k, v, causal: bool) -> torch.Tensor:
    """q: [B, H, T, D]; k, v: [B, KV, L, D] -> [B, H, T, D], through SDPA.

    GQA decode groups the queries onto their KV head instead of repeating K/V.
    """
    B, H, T, D = q.shape
    KV, L = k.shape[1], k.shape[2]
    rep = H // KV
    need_mask = causal and T > 1
    if rep > 1 and T == 1:
        # One query per head: grouping turns GQA decode into plain attention.
        out = F.scaled_dot_product_attention(q.reshape(B, KV, rep, D), k, v)
        return out.view(B, H, 1, D)
    if need_mask and L == T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)
    mask = _causal_mask(T, L, q.device) if need_mask else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=rep > 1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, KV, D, C = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_model
        self.q = Linear(C, H * D, cfg.qkv_bias)
        self.k = Linear(C, KV * D, cfg.qkv_bias)
        self.v = Linear(C, KV * D, cfg.qkv_bias)
        self.o = Linear(H * D, C, cfg.o_bias)
        self.fused = None  # (weight [C, (H+2KV)D], bias) or a QuantLinear after fuse(); inference only

    def fuse(self, out_in: bool = False):
        if any(isinstance(l, QuantLinear) for l in (self.q, self.k, self.v)):
            self.fused = fuse_quantized(self.q, self.k, self.v)
            return
        self.fused = fuse_linears(self.q, self.k, self.v, out_in=out_in)
        if out_in and isinstance(self.o, Linear):
            self.o.weight.data = store_out_in(self.o.weight.data)

    def forward(self, x, rope, layer: int, start_pos: int, cache: KVCache | None, weights: list | None = None):
        """``weights``, when given, receives this layer's attention probabilities [B, H, T, L]
        (through the reference path: slower, only for inspection)."""
        B, T, _ = x.shape
        H, KV, D = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        if self.fused is not None and not torch.is_grad_enabled():
            # q and k sit side by side in the fused output: rotate them in one go.
            qk, v = run_fused(self.fused, x).split([(H + KV) * D, KV * D], dim=-1)
            qk = qk.view(B, T, H + KV, D)
            if rope is not None:
                qk = apply_rope(qk, *rope)
            q, k = qk.split([H, KV], dim=2)
        else:
            q, k, v = self.q(x).view(B, T, H, D), self.k(x).view(B, T, KV, D), self.v(x)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, D], [B, KV, T, D]
        v = v.view(B, T, KV, D).transpose(1, 2)
        if cache is not None:
            k, v = cache.write(layer, start_pos, k, v)  # [B, KV, L, D]
        if weights is None:
            y = attention(q, k, v, causal=True)
        else:
            y, probs = attention_reference(q, k, v, causal=True, return_probs=True)
            weights.append(probs)
        return self.o(y.transpose(1, 2).reshape(B, T, H * D))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.family == "llama"
        self.act = ACTIVATIONS[cfg.act]
        if self.gated:  # SwiGLU
            self.gate = Linear(cfg.d_model, cfg.d_ff, cfg.mlp_bias)
        self.up = Linear(cfg.d_model, cfg.d_ff, cfg.mlp_bias)
        self.down = Linear(cfg.d_ff, cfg.d_model, cfg.mlp_bias)

        self.fused = None  # gate and up side by side after fuse(); inference only

    def fuse(self, out_in: bool = False):
        if self.gated and any(isinstance(l, QuantLinear) for l in (self.gate, self.up)):
            self.fused = fuse_quantized(self.gate, self.up)
        elif self.gated:
            self.fused = fuse_linears(self.gate, self.up, out_in=out_in)
        elif out_in and isinstance(self.up, Linear):
            self.up.weight.data = store_out_in(self.up.weight.data)
        if out_in and isinstance(self.down, Linear):
            self.down.weight.data = store_out_in(self.down.weight.data)

    def forward(self, x):
        if not self.gated:
            return self.down(self.act(self.up(x)))
        if self.fused is not None and not torch.is_grad_enabled():
            gate, up = run_fused(self.fused, x).chunk(2, dim=-1)
        else:
            gate, up = self.gate(x), self.up(x)
        return self.down(self.act(gate) * up)


def _norm(cfg: ModelConfig) -> nn.Module:
    if cfg.family == "gpt2":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return RMSNorm(cfg.d_model, cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.attn = _norm(cfg), Attention(cfg)
        self.norm2, self.mlp = _norm(cfg), MLP(cfg)

    def forward(self, x, rope, layer, start_pos, cache, weights: list | None = None):
        x = x + self.attn(self.norm1(x), rope, layer, start_pos, cache, weights)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = Embedding(cfg.max_seq_len, cfg.d_model) if cfg.family == "gpt2" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = _norm(cfg)
        self.head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, False)
        self._head_t: torch.Tensor | None = None  # inference copy of a tied head, stored [C, V]
        self._decode_ready = False  # set by prepare_for_inference
        self._native: NativeDecoder | None = None  # CPU step of 1..8 rows in C, when it builds
        if cfg.family == "llama":
            self.register_buffer("rope_cos", None, persistent=False)
            self.register_buffer("rope_sin", None, persistent=False)
            self.reset_rope()

    # -- setup ---------------------------------------------------------------
    def init_weights(self, std: float = 0.02):
        """Random init for training from scratch (GPT-2 style, scaled residual projections)."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if "norm" in name and name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith(("attn.o.weight", "mlp.down.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, std=std)
        self.reset_rope()

    def reset_rope(self):
        """Recompute the rotary tables (after meta-device construction or a dtype change)."""
        if self.config.family == "llama":
            cfg = self.config
            with torch.device("cpu"):  # real numbers even in a meta-device build (on meta these ops
                # are Python decompositions whose first call imports torch._dynamo: ~1 s)
                cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
            dev = self.tok_emb.weight.device
            self.rope_cos, self.rope_sin = cos.to(dev), sin.to(dev)

    def prepare_for_inference(self):
        """Inference layout, chosen by measurement (bench/gemv.py): fused q/k/v and
        gate/up weights, so a decode step streams one matrix instead of two or
        three; in float32 a contiguous [C, V] copy of a tied head (batch-1 x @ W
        streams fastest that way); in bfloat16 on the CPU every weight stored
        [out, in], where ``torch.mv`` streams about twice as fast as any bf16
        matmul (the tied embedding already is [V, C], so no copy at all).
        Training never calls this, so tied weights stay tied."""
        self.eval()
        emb = self.tok_emb.weight
        out_in = emb.device.type == "cpu" and emb.dtype != torch.float32
        if self.head is None:
            self._head_t = emb.detach().t() if out_in else emb.detach().t().contiguous()
        elif out_in and isinstance(self.head, Linear):
            self.head.weight.data = store_out_in(self.head.weight.data)
        if not any(b.attn.fused is not None for b in self.blocks):
            for b in self.blocks:
                b.attn.fuse(out_in)
                b.mlp.fuse(out_in)
        self._decode_ready = True  # model/decode.py: the lean one-token step
        self._native = NativeDecoder.build(self)
        return self

    def reset_inference(self):
        """Drop the inference layout (fused weights, head copy, native step): prepare again after."""
        self._native, self._decode_ready, self._head_t = None, False, None
        for b in self.blocks:
            for layer in (b.attn, b.mlp):
                # a fused QuantLinear registered ``fused`` as a child module, which would then refuse
                # the (weight, bias) tuple a float layout fuses into: unregister it first
                layer._modules.pop("fused", None)
                layer.fused = None

    def _apply(self, fn, *args, **kwargs):
        # .to(), .float(), .cuda()... make new parameter tensors: the fused copies and the
        # native step's addresses would be stale, so inference must be prepared again.
        self.reset_inference()
        return super()._apply(fn, *args, **kwargs)

    # -- forward -------------------------------------------------------------
    def forward_hidden(self, ids: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None):
        """ids [B, T] -> final normed hidden state [B, T, C]."""
        B, T = ids.shape
        if start_pos + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds the context of {self.config.max_seq_len}")
        if T == 1 and cache is not None and self._decode_ready and not torch.is_grad_enabled():
            return decode_step(self, ids, start_pos, cache)
        x, rope = self._embed(ids, start_pos)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, i, start_pos, cache)
        return self.norm_f(x)

    def _embed(self, ids: torch.Tensor, start_pos: int):
        """ids [B, T] -> (token (+ position) embeddings [B, T, C], rope tables [T, 1, D] pair or None)."""
        T = ids.shape[1]
        x = self.tok_emb(ids)
        if self.pos_emb is not None:
            return x + self.pos_emb.weight[start_pos:start_pos + T], None
        dtype = x.dtype
        return x, (self.rope_cos[start_pos:start_pos + T, None].to(dtype),
                   self.rope_sin[start_pos:start_pos + T, None].to(dtype))

    def trace(self, ids: torch.Tensor, attention_layers=()) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """A whole-sequence forward (no cache) that keeps what inspection shows:
        -> (residual stream after each block: n_layer tensors [B, T, C], not normed;
            {layer: attention probabilities [B, H, T, T] float32} for ``attention_layers``).
        ``project(norm_f(hidden[-1]))`` is ``forward(ids)``; on earlier layers it is the logit lens."""
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds the context of {self.config.max_seq_len}")
        x, rope = self._embed(ids, 0)
        hidden, attn = [], {}
        for i, block in enumerate(self.blocks):
            weights = [] if i in attention_layers else None
            x = block(x, rope, i, 0, None, weights)
            hidden.append(x)
            if weights:
                attn[i] = weights[0]
        return hidden, attn

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden [.., C] -> logits [.., V]."""
        if (self._native is not None and self._native.head is not None and not torch.is_grad_enabled()
                and h[..., 0].numel() <= MAX_ROWS):
            # A quantized head at decode: the kernel's GEMV reads the blocks once. Prefill's many
            # rows keep the exact dequantized GEMM, which beats re-reading the blocks per 8 rows.
            return self._native.project(h)
        if self.head is not None:
            return self.head(h)
        if self._head_t is not None and not torch.is_grad_enabled():
            return matmul(h, self._head_t)
        return F.linear(h, self.tok_emb.weight)

    def forward(self, ids: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with ``last_only``)."""
        h = self.forward_hidden(ids, start_pos, cache)
        if last_only:
            h = h[:, -1:]
        return self.project(h)
