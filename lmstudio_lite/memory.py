"""The C allocator's policy for this process: keep freed memory for the next tensor.

A prefill pass allocates tens of MB of activations (a pass of eight SmolLM2 prompts: 585 rows
x every layer's outputs), frees them, and the next pass allocates them again. glibc hands
blocks over its ``mmap`` threshold straight back to the kernel, and trims the top of its heap
past ``M_TRIM_THRESHOLD``; every pass then faults its pages back in, each zeroed by the kernel.
That was a quarter of such a pass: 467 -> 353 ms with the settings below (and the p95 time to
first token of eight clients at once through the scheduler 412-441 -> 353-368 ms), with no
change for one short prompt. Both must be set: a trim threshold alone turns off glibc's
sliding mmap threshold, and the same pass took 707 ms.

The price is memory held after a peak instead of returned: at most ``TRIM_BYTES`` free at the
top of each heap, which a loaded model dwarfs. Only the program's own entry point sets it
(``cli.main``): importing the package leaves a host process's allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_BYTES = 32 << 20  # blocks this large or larger still get their own mapping (glibc's default ceiling)
TRIM_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (see the module's docstring); False where the C library is not glibc
    (macOS, Windows, musl) or refuses them, and nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:  # glibc's own name first: find_library runs ldconfig (6 ms of every start)
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
        except (OSError, TypeError):
            return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1
