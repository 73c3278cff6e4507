"""The typed architecture description every other layer agrees on."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field

FAMILIES = ("gpt2", "llama")
ACTS = ("silu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu")  # model/layers.ACTIVATIONS
ROPE_TYPES = ("linear", "llama3", "freq_factors")  # freq_factors: GGUF's rope_freqs tensor
# Whole-number fields and the range each may take. The upper bounds sit far above any real
# model (Llama 3 405B: 126 layers, 16,384 wide, 128,256 tokens) yet keep a hostile
# config.json from asking for terabytes before a single weight is read.
INT_RANGES = {"vocab_size": (1, 2**24), "n_layer": (1, 1024), "n_head": (1, 1024), "d_model": (1, 2**17),
              "d_ff": (1, 2**20), "max_seq_len": (1, 2**24), "n_kv_head": (0, 1024), "head_dim": (0, 2**12)}
FLOAT_RANGES = {"norm_eps": (0.0, 1.0), "rope_theta": (0.0, 1e12)}  # both ends open
BOOLS = ("qkv_bias", "o_bias", "mlp_bias", "tie_embeddings")


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
        self._check_types_and_ranges()
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
        _check_rope_scaling(self.rope_scaling, self.head_dim)
        if self.family == "gpt2":
            # GPT-2 has biases on every projection by construction.
            self.qkv_bias = self.o_bias = self.mlp_bias = True

    def _check_types_and_ranges(self):
        """Every field's type and range, so a bad value fails here with its name, never later
        as a TypeError deep in torch (or as a multi-terabyte allocation)."""
        for name, (low, high) in INT_RANGES.items():
            value = getattr(self, name)  # numbers.Integral: numpy's integers (GGUF metadata) count too
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high:,}, got {value:,}")
            setattr(self, name, int(value))
        for name, (low, high) in FLOAT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < high:
                raise ValueError(f"{name} must be a number above {low:g} and below {high:g}, got {value!r}")
            setattr(self, name, float(value))
        for name in BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.act not in ACTS:
            raise ValueError(f"activation {self.act!r} is not supported (supported: {', '.join(ACTS)})")

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


def _check_rope_scaling(scaling, head_dim: int):
    """None, or a dict naming a supported rope_type with positive numeric factors."""
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be an object like {{\"rope_type\": \"linear\", \"factor\": 2.0}}, "
                         f"got {scaling!r}")
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind == "freq_factors":
        factors = scaling.get("factors")
        if (not isinstance(factors, list) or len(factors) != head_dim // 2
                or not all(isinstance(f, numbers.Real) and 0 < f < 1e9 for f in factors)):
            raise ValueError(f"rope_scaling.factors must be {head_dim // 2} positive numbers")
        return
    needed = ("factor",) + (("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                            if kind == "llama3" else ())
    for key in needed:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1e9:
            raise ValueError(f"rope_scaling.{key} must be a positive number, got {value!r}")
    if kind == "llama3" and scaling["low_freq_factor"] == scaling["high_freq_factor"]:
        raise ValueError("rope_scaling low_freq_factor and high_freq_factor must differ")
