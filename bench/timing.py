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


def machine() -> str:
    """The CPU the figures come from, as /proc/cpuinfo names it, and its cores: this project's
    machines change between sessions (Intel Xeon one day, AMD EPYC the next), and so do the ratios."""
    import os

    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"
