"""LoRA: low-rank adapters swapped in for our ``Linear`` layers (pure torch).

``y = base(x) + dropout(x) @ A @ B * (alpha / rank)`` with ``A [in, r]``
(Kaiming-uniform, as PEFT does) and ``B [r, out]`` (zeros, so an adapted model
starts exactly equal to its base). The base weight stays frozen; only A and B
train. ``merge_lora`` folds ``A @ B * scale`` into the base weight, giving back a
plain ``Linear`` model that saves and loads like any other.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .layers import Linear
from .quant import QuantEmbedding, QuantLinear

# Short target names -> module paths inside a Block (see transformer.py).
TARGETS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
           "gate": "mlp.gate", "up": "mlp.up", "down": "mlp.down"}
DEFAULT_TARGETS = ("q", "k", "v", "o")


class LoRALinear(nn.Module):
    """A frozen ``Linear`` plus a trainable low-rank update. Shapes as ``Linear``: x [.., in] -> [.., out]."""

    def __init__(self, base: Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base, self.rank, self.alpha = base, rank, float(alpha)
        self.scale = self.alpha / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(base.d_in, rank, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(rank, base.d_out, device=w.device, dtype=w.dtype))
        # Kaiming-uniform over fan_in = d_in (PEFT initialises its [r, in] matrix the same way).
        nn.init.kaiming_uniform_(self.lora_a.T, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def d_in(self) -> int:
        return self.base.d_in

    @property
    def d_out(self) -> int:
        return self.base.d_out

    def delta(self) -> torch.Tensor:
        """The update the adapter adds to the base weight, [in, out]."""
        return (self.lora_a @ self.lora_b) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_a @ self.lora_b) * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def _resolve_targets(targets) -> list[str]:
    out = []
    for t in targets:
        path = TARGETS.get(t, t)
        if path not in TARGETS.values():
            raise ValueError(f"unknown LoRA target {t!r}; choose from {', '.join(TARGETS)}")
        out.append(path)
    return out


def _set_child(model: nn.Module, name: str, module: nn.Module):
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets=DEFAULT_TARGETS) -> list[str]:
    """Freeze every parameter, then swap the targeted ``Linear`` layers for ``LoRALinear``.

    ``targets`` are short names (q, k, v, o, gate, up, down). Returns the swapped
    module names; raises ValueError when a target matches no layer of this model
    (e.g. ``gate`` on a GPT-2 model, whose MLP has no gate).
    """
    paths = _resolve_targets(targets)
    if any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules()):
        raise ValueError("a quantized model cannot be fine-tuned: load it without quantization to train LoRA")
    for p in model.parameters():
        p.requires_grad_(False)
    found = {p: [] for p in paths}
    for name, module in list(model.named_modules()):
        for path in paths:
            if (name == path or name.endswith("." + path)) and isinstance(module, Linear):
                found[path].append(name)
    missing = [p for p, names in found.items() if not names]
    if missing:
        raise ValueError(f"LoRA target(s) {', '.join(missing)} match no layer of this model")
    swapped = []
    for names in found.values():
        for name in names:
            _set_child(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
            swapped.append(name)
    return sorted(swapped)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain ``Linear`` back."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            base = module.base
            base.weight.add_(module.delta().to(base.weight.dtype))
            _set_child(model, name, base)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: ``{module_name.lora_a: [in, r], module_name.lora_b: [r, out]}``."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_a", ".lora_b"))}


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
