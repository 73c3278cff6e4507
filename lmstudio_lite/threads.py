"""How many CPU threads chat and a training job each get: the one thread policy.

Measured on this torch build (OpenMP + MKL): ``torch.set_num_threads`` changes the
OpenMP/MKL thread count of the calling thread only, and also the default that threads
started later adopt on their first op; threads already running keep theirs.

Measured with bench/train.py --contention: spinning OpenMP threads make chat and a job
on the same core collapse (two busy OpenMP threads decode ~2.7x slower when the other
core is taken, DESIGN.md), while passive waiting (OMP_WAIT_POLICY=PASSIVE) cost chat 44%
on a quiet machine. So each side keeps its own cores instead: a CPU job claims its
threads here (``training_threads``), and generation runs on what is left
(``use_inference_threads``), each setting its count in its own thread.

No torch at import: the training form's defaults (training/spec.py) are read while the
page is built, before torch is imported.
"""
from __future__ import annotations

import contextlib
import os
import threading

_process_threads: int | None = None  # torch's count when first asked: the threads this process may use
_claimed = 0
_claim_lock = threading.Lock()


def process_threads() -> int:
    """Torch's thread count as this process started with it (read once, before any job limits its own)."""
    global _process_threads
    if _process_threads is None:
        import torch

        with _claim_lock:
            if _process_threads is None:
                _process_threads = torch.get_num_threads()
    return _process_threads


def cpu_cores() -> int:
    """Cores this process may run on (its affinity where the platform says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)


def default_training_threads() -> int:
    """A training job's default: every core but one, so chat keeps a core (one thread loses little)."""
    return max(1, cpu_cores() - 1)


def inference_threads() -> int:
    """Threads a generation should use now: the process's count minus what jobs hold (at least 1)."""
    return max(1, process_threads() - _claimed)


def use_inference_threads(device="cpu"):
    """Set the calling thread's count to ``inference_threads()`` (CPU only; a job may hold the rest).
    Every chat, scheduler and inspection thread calls this before it runs the model."""
    import torch

    if torch.device(device).type == "cpu" and torch.get_num_threads() != (n := inference_threads()):
        torch.set_num_threads(n)


_gomp = None  # libgomp's handle once looked up (False: not this process's OpenMP runtime)


def release_thread_team():
    """Let the calling thread's OpenMP worker threads go (libgomp's ``omp_pause_resource_all``, which
    frees the caller's team only). Call it when a thread other than the one that generates is done
    with the model (it loaded it, traced a text): libgomp counts every thread's idle team, and once
    it manages more threads than there are cores, every worker sleeps at once after a parallel
    region instead of spinning a while, so each region (a torch op, a native step) waits for a
    wake-up. Measured: once the main thread had loaded the bundled model on 2 threads, the
    scheduler thread's prefill of a 76-token prompt took 9.3 ms instead of 3.8 (a 76 x 192 by
    192 x 576 matmul: 197 us instead of 58). A no-op on other OpenMP runtimes."""
    global _gomp
    if _gomp is None:
        import ctypes

        try:  # the runtime torch loaded (same soname: the loader hands back the loaded library)
            _gomp = ctypes.CDLL("libgomp.so.1").omp_pause_resource_all
            _gomp.argtypes, _gomp.restype = [ctypes.c_int], ctypes.c_int
        except (OSError, AttributeError):
            _gomp = False
    if _gomp:
        _gomp(1)  # omp_pause_soft


def kernel_threads() -> int:
    """The count a native kernel call splits its work over: the calling thread's own setting."""
    import torch

    return torch.get_num_threads()


def limit_threads(n: int):
    """Use ``n`` intra-op threads in the calling thread only: the job thread limits itself, then a
    throwaway thread puts the process default back, so chat threads, old and new, keep theirs."""
    import torch

    process_threads()
    default = torch.get_num_threads()
    torch.set_num_threads(n)
    if threading.current_thread() is not threading.main_thread():
        t = threading.Thread(target=torch.set_num_threads, args=(default,), daemon=True)
        t.start()
        t.join()


@contextlib.contextmanager
def claim_cpu_threads(n: int):
    """Hold ``n`` CPU threads back from generation while the block runs."""
    global _claimed
    with _claim_lock:
        _claimed += n
    try:
        yield
    finally:
        with _claim_lock:
            _claimed -= n


@contextlib.contextmanager
def training_threads(n: int, cpu: bool):
    """A training job's threads while the block runs: ``n`` in the calling thread and, for a CPU
    job, those ``n`` held back from generation (chat in this process decodes on the other cores)."""
    limit_threads(n)
    with claim_cpu_threads(n if cpu else 0):
        yield
