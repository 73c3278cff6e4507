"""The typed architecture description every other layer agrees on."""
from __future__ import annotations

from dataclasses import dataclass, field

FAMILIES = ("gpt2", "llama")


@dataclass
class ModelConfig:
    """One decoder-only transformer, GPT-2 or Llama flavoured.

    gpt2: learned positions, LayerNorm, GELU MLP, biases everywhere, tied head.
    llama: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, optional q/k/v bias
    (Qwen2), tied or untied head.
    """

    family: str
    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    d_ff: int
    max_seq_len: int
    n_kv_head: int = 0  # 0 means "same as n_head" (plain multi-head attention)
    head_dim: int = 0  # 0 means d_model // n_head
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear"|"llama3", ...} as in config.json
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = True
    act: str = "silu"  # llama: silu (SwiGLU); gpt2: gelu_new / gelu
    extra: dict = field(default_factory=dict)  # fields we carry through but do not use

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; supported: {', '.join(FAMILIES)}")
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.head_dim == 0:
            if self.d_model % self.n_head:
                raise ValueError(f"hidden size {self.d_model} is not divisible by {self.n_head} heads")
            self.head_dim = self.d_model // self.n_head
        if self.n_head % self.n_kv_head:
            raise ValueError(f"{self.n_head} attention heads cannot be grouped over {self.n_kv_head} KV heads")
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.family == "gpt2":
            # GPT-2 has biases on every projection by construction.
            self.qkv_bias = self.o_bias = self.mlp_bias = True

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (1 for plain multi-head attention)."""
        return self.n_head // self.n_kv_head

    def num_parameters(self) -> int:
        """Parameter count without building the model (used for memory estimates)."""
        C, H, KV, D, F, V = self.d_model, self.n_head, self.n_kv_head, self.head_dim, self.d_ff, self.vocab_size
        attn = C * H * D + 2 * C * KV * D + H * D * C
        if self.qkv_bias:
            attn += H * D + 2 * KV * D
        if self.o_bias:
            attn += C
        if self.family == "gpt2":
            mlp = 2 * C * F + F + C
            norms = 4 * C
        else:
            mlp = 3 * C * F + (2 * F + C if self.mlp_bias else 0)
            norms = 2 * C
        total = self.n_layer * (attn + mlp + norms) + V * C + (C if self.family == "llama" else 2 * C)
        if self.family == "gpt2":
            total += self.max_seq_len * C
        if not self.tie_embeddings:
            total += V * C
        return total
