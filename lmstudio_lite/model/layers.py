"""Building blocks: linear layers stored [in, out], norms, rotary embeddings."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., in] @ w [in, out] (+ bias)`` with the fastest CPU kernel for w's storage.

    ``bias`` is anything that broadcasts onto the output: a bias [out], or a residual
    [rows, out] that the matmul accumulates onto (model/decode.py).

    Weights live [in, out] (``w`` contiguous), except that inference in bfloat16
    on the CPU re-lays them [out, in] (``w`` a transposed view, see
    ``inference.InferenceModel``): a single row against that layout
    goes through ``torch.mv``, which streams bf16 weights about twice as fast as
    any matmul entry point (bench/gemv.py). Everything else is one BLAS call.
    """
    if w.stride(0) == 1 and w.stride(1) != 1 and x.numel() == x.shape[-1]:
        vec = x.reshape(-1)
        y = torch.mv(w.t(), vec) if bias is None else torch.addmv(bias.reshape(-1), w.t(), vec)
        return y.view(*x.shape[:-1], w.shape[1])
    if bias is None and x.is_contiguous():
        return x @ w  # one call: matmul folds a contiguous [B, T, in] into one mm itself
    # A strided 3-D input (the last position of a batch) would otherwise send matmul
    # down a bmm path that copies w once per row: make it one 2-D call.
    rows = x.reshape(-1, w.shape[0])
    y = rows @ w if bias is None else torch.addmm(bias, rows, w)
    return y.view(*x.shape[:-1], w.shape[1])


def store_out_in(w: torch.Tensor) -> torch.Tensor:
    """The same [in, out] matrix, stored [out, in] (a transposed view of a contiguous copy)."""
    return w.t().contiguous().t()


class Linear(nn.Module):
    """``y = x @ W + b`` with ``W`` stored ``[in, out]``.

    On the CI CPUs a batch-1 float32 matmul against a weight stored [in, out]
    streams up to 1.8x faster than ``F.linear`` on [out, in] (see DESIGN.md), and
    decode is bound by how fast weights stream. Checkpoint code transposes on
    load/save. bfloat16 inference swaps the storage (``matmul`` above).
    """

    def __init__(self, d_in: int, d_out: int, bias: bool):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.weight = nn.Parameter(torch.empty(d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(d_out)) if bias else None
        if self.weight.device.type != "meta":  # checkpoint loading builds on meta and assigns
            nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return matmul(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.d_in}, out={self.d_out}, bias={self.bias is not None}"


class Embedding(nn.Embedding):
    """``nn.Embedding`` that, like ``Linear``, skips its random init on the meta device, where
    checkpoint loading builds and then assigns: torch's meta ``normal_`` is a Python
    decomposition whose first call imports torch._dynamo, ~2 s of a 4 s GGUF load (torch 2.13)."""

    def reset_parameters(self) -> None:
        if self.weight.device.type != "meta":
            super().reset_parameters()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # One op instead of six; the same arithmetic as the reference below.
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in float32 then cast back, exactly as the Llama reference does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """Inverse frequencies [head_dim/2], with the ``linear`` and ``llama3`` scalings, or per-frequency
    divisors (``freq_factors``: how a GGUF file carries Llama 3's scaling)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if kind == "default":
        return inv
    if kind == "freq_factors":  # GGUF's rope_freqs tensor: llama.cpp divides each frequency by its factor
        return inv / torch.tensor(scaling["factors"], dtype=torch.float32)
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: linear, llama3, freq_factors)")


def rope_tables(head_dim: int, max_len: int, theta: float, scaling: dict | None):
    """cos and signed sin tables ``[max_len, head_dim]`` in float32 (rotate-half layout).

    The sin table has its first half negated, so that the reference's
    ``rotate_half(x) * sin`` becomes ``x.roll(D/2) * sin_signed``: the same
    numbers from one op instead of four (slices, negation, concatenation).
    """
    inv = rope_inv_freq(head_dim, theta, scaling)
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), torch.cat((-freqs.sin(), freqs.sin()), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x: [B, T, heads, D]; cos, sin_signed: [T, 1, D] in x's dtype, as the Llama
    reference computes it (under bf16 autocast this keeps q and k in bf16)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "silu": F.silu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "gelu": F.gelu,
    "relu": F.relu,
}
