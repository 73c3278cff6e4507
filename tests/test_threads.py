"""The thread policy (lmstudio_lite/threads.py) as a process sees it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "lmstudio-lite-tiny"

SCRIPT = f"""
import os, torch
from lmstudio_lite import load_model
tasks = lambda: len(os.listdir("/proc/self/task"))
torch.set_num_threads(2)
before = tasks()
torch.randn(256, 256) @ torch.randn(256, 256)  # a parallel region: this thread's OpenMP team
with_team = tasks()
m = load_model({str(BUNDLED)!r}, device="cpu")
after_load = tasks()
text = "".join(m.generate("Once upon a time", max_new_tokens=4, temperature=0))
print(before, with_team, after_load, len(text) > 0)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_a_thread_that_loaded_a_model_keeps_no_openmp_workers():
    """libgomp counts every thread's idle team against the cores; once it manages more threads than
    there are cores, each worker sleeps right after a parallel region and every later region waits
    for a wake-up: the scheduler's own thread ran prefill 2.4x slower while the thread that loaded the
    model kept its team. Loading lets the loading thread's workers go, and generation still runs."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    before, with_team, after_load, generated = out.stdout.split()
    assert int(with_team) == int(before) + 1  # the matmul started one worker for this thread
    assert int(after_load) == int(before)  # and loading let it go
    assert generated == "True"
