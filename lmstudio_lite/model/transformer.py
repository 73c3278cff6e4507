"""One decoder-only transformer for the GPT-2 and Llama families.

Read top to bottom: attention, MLP, block, model. Shapes: B batch, T new tokens,
L cached length (start_pos + T), C d_model, H query heads, KV key/value heads,
D head_dim, V vocabulary. The model is a pure function of (ids, start_pos,
cache): the generation engine owns the cache.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .kv_cache import KVCache, Packed, Rows
from .layers import ACTIVATIONS, Embedding, Linear, RMSNorm, apply_rope, rope_tables
from .native_attention import attend_segments


@functools.lru_cache(maxsize=256)
def _causal_mask(T: int, L: int, device) -> torch.Tensor:
    """[T, L] bool, True where query i (absolute position L-T+i) may see key j. Kept (never written):
    a prefill pass of eight prompts asks every layer for the same eight, and making them was 2% of it.
    Made outside inference mode, so that a training step may still save one for its backward."""
    with torch.inference_mode(False):
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


def widened(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v read back from a cache kept narrower than the queries (a float32 model's float16 KV
    cache): in q's dtype, exactly as the native step widens them."""
    if k.dtype == q.dtype:
        return k, v
    return k.to(q.dtype), v.to(q.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, KV, D, C = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_model
        self.q = Linear(C, H * D, cfg.qkv_bias)
        self.k = Linear(C, KV * D, cfg.qkv_bias)
        self.v = Linear(C, KV * D, cfg.qkv_bias)
        self.o = Linear(H * D, C, cfg.o_bias)

    def forward(self, x, rope, layer: int, start_pos: int | Rows | Packed, cache: KVCache | None,
                weights: list | None = None):
        """``weights``, when given, receives this layer's attention probabilities [B, H, T, L]
        (through the reference path: slower, only for inspection). ``start_pos`` as ``Rows``:
        one token per row, each row attending over its own cache row's prefix; as ``Packed``:
        segments of one row, each attending over its own cache row's prefix and itself."""
        B, T, _ = x.shape
        H, KV, D = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q, k, v = self.q(x).view(B, T, H, D), self.k(x).view(B, T, KV, D), self.v(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, H, T, D], [B, KV, T, D]
        v = v.view(B, T, KV, D).transpose(1, 2)
        if isinstance(start_pos, Rows):  # rows at different lengths: each over its own prefix
            y = torch.cat([attention(q[b:b + 1], *widened(q, k_row, v_row), causal=True)
                           for b, (k_row, v_row) in enumerate(cache.write_rows(layer, start_pos, k, v))])
        elif isinstance(start_pos, Packed):  # sequences side by side: each segment over its own row
            views = cache.write_packed(layer, start_pos, k, v)
            y = attend_segments(q.transpose(1, 2), [(k_row, v_row, o, n, at) for (k_row, v_row), o, n, at in zip(
                views, start_pos.offsets, start_pos.lengths, start_pos.starts)])  # an InferenceModel's, natively
            if y is not None:
                return self.o(y)
            parts = [attention(q[:, :, o:o + n], *widened(q, k_row, v_row), causal=True) for (k_row, v_row), o, n
                     in zip(views, start_pos.offsets, start_pos.lengths)]
            y = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        else:
            if cache is not None:
                k, v = cache.write(layer, start_pos, k, v)  # [B, KV, L, D]
                if weights is None:  # the same arithmetic as a packed pass: cached or not, chunked or not
                    y = attend_segments(q.transpose(1, 2).reshape(1, B * T, H, D),
                                        [(k[b:b + 1], v[b:b + 1], b * T, T, start_pos) for b in range(B)])
                    if y is not None:
                        return self.o(y.view(B, T, H * D))
                k, v = widened(q, k, v)
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

    def forward(self, x):
        if not self.gated:
            return self.down(self.act(self.up(x)))
        return self.down(self.act(self.gate(x)) * self.up(x))


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
        if cfg.family == "llama":
            self.register_buffer("rope_cos", None, persistent=False)
            self.register_buffer("rope_sin", None, persistent=False)
            self.reset_rope()

    # -- setup ---------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The float dtype the model computes in (its norms': the embedding may be quantized)."""
        return self.norm_f.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm_f.weight.device

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
            dev = self.device
            self.rope_cos, self.rope_sin = cos.to(dev), sin.to(dev)

    # -- forward -------------------------------------------------------------
    def forward_hidden(self, ids: torch.Tensor, start_pos: int | Rows | Packed = 0, cache: KVCache | None = None):
        """ids [B, T] -> final normed hidden state [B, T, C]. ``start_pos`` as ``Rows`` (T = 1, with
        a cache): each row's token at its own position of its own cache row; as ``Packed`` (B = 1,
        with a cache): several sequences' tokens side by side, each segment in its own cache row."""
        B, T = ids.shape
        self.check_length(start_pos, T)
        x, rope = self._embed(ids, start_pos)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, i, start_pos, cache)
        return self.norm_f(x)

    def check_length(self, start_pos: int | Rows | Packed, T: int):
        """Raises ValueError when tokens at ``start_pos``.. would pass the model's context."""
        end = max(start_pos.ends) if isinstance(start_pos, (Rows, Packed)) else start_pos + T
        if end > self.config.max_seq_len:
            raise ValueError(f"sequence of {end} tokens exceeds the context of {self.config.max_seq_len}")

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [...] -> token embeddings [..., C] in the model's dtype. A quantized embedding
        (model/quant.py's QuantEmbedding) dequantizes just these rows, to the values a float
        copy of its table in this dtype would hold."""
        return self.tok_emb(ids).to(self.dtype)

    def _embed(self, ids: torch.Tensor, start_pos: int | Rows | Packed):
        """ids [B, T] -> (token (+ position) embeddings [B, T, C], rope tables [T, 1, D] pair or None;
        with ``Rows`` (T = 1), each row at its own position: rope tables [B, 1, 1, D])."""
        B, T = ids.shape
        x = self.embed_tokens(ids)
        if isinstance(start_pos, Rows):
            at, lead = start_pos.positions, (B, 1)  # [B] positions -> a leading [B, 1]
        elif isinstance(start_pos, Packed):  # B = 1: token t at its own position
            one = len(start_pos.starts) == 1  # a slice of the tables, as for an int start_pos
            at, lead = slice(start_pos.starts[0], start_pos.ends[0]) if one else start_pos.positions, (T,)
        else:
            at, lead = slice(start_pos, start_pos + T), (T,)
        if self.pos_emb is not None:
            return x + self.pos_emb.weight[at].view(*lead, -1), None
        dtype = x.dtype
        cos, sin = self.rope_cos[at], self.rope_sin[at]  # [T or B, D]
        return x, (cos.view(*lead, 1, -1).to(dtype), sin.view(*lead, 1, -1).to(dtype))

    def trace(self, ids: torch.Tensor, attention_layers=()) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
        """A whole-sequence forward (no cache) that keeps what inspection shows:
        -> (residual stream after each block: n_layer tensors [B, T, C], not normed;
            {layer: attention probabilities [B, H, T, T] float32} for ``attention_layers``).
        ``project(norm_f(hidden[-1]))`` is ``forward(ids)``; on earlier layers it is the logit lens."""
        self.check_length(0, ids.shape[1])
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
        if self.head is not None:
            return self.head(h)
        return F.linear(h, self.tok_emb.weight)

    def decode_rows(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                    cache: KVCache) -> torch.Tensor:
        """A batched decode step -> logits [B, V]: row b feeds ``tokens[b]`` at ``positions[b]`` of
        cache row ``slots[b]`` (see ``Rows``; the scheduler's step). Every matrix runs once for all rows."""
        return self.project(self.forward_hidden(tokens[:, None], Rows(positions, slots), cache)[:, 0])

    def forward(self, ids: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] (or [B, 1, V] with ``last_only``)."""
        h = self.forward_hidden(ids, start_pos, cache)
        if last_only:
            h = h[:, -1:]
        return self.project(h)
