"""Learning-rate schedule: linear warm-up, then cosine or linear decay to a floor, or constant.

A pure function of the step, so resuming a run needs nothing but the step number.
"""
from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1,
          kind: str = "cosine") -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up ramps (step+1)/warmup so the very first step already moves; then
    "cosine" and "linear" run from ``base_lr`` at the end of warm-up to
    ``base_lr * min_lr_ratio`` at the last step, and "constant" stays at ``base_lr``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    floor = base_lr * min_lr_ratio
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        return base_lr - (base_lr - floor) * progress
    return floor + 0.5 * (base_lr - floor) * (1.0 + math.cos(math.pi * progress))
