"""Shared timing for the micro-benchmarks (gemv, attention, sampling)."""
from __future__ import annotations

import time


def seconds_per_call(fn, n: int, warmup: int = 3) -> float:
    """Mean wall time of ``fn()`` over ``n`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n
