"""The allocator policy the program's entry point sets (lmstudio_lite/memory.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Eight prompts side by side through the bundled model, as the scheduler prefills a burst, each
# pass on a worker thread (the scheduler's driver): the page faults of each pass.
PASSES = """
import json, resource, sys, threading, torch
from lmstudio_lite.memory import keep_freed_memory
from lmstudio_lite import load_model
from lmstudio_lite.model import KVCache
from lmstudio_lite.model.kv_cache import Packed
ok = keep_freed_memory()
model = load_model(sys.argv[1]).model
cache = KVCache(model.config, 8, model.config.max_seq_len)
lengths = [40, 75, 120, 40, 75, 120, 40, 75]
ids = torch.randint(5, 1000, (1, sum(lengths)), generator=torch.Generator().manual_seed(0))
packed = Packed(list(range(8)), [26] * 8, lengths)
faults = []
def passes():
    with torch.inference_mode():
        for _ in range(8):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model.forward_hidden(ids, start_pos=packed, cache=cache)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
worker = threading.Thread(target=passes)
worker.start()
worker.join()
print(json.dumps({"ok": ok, "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the policy is glibc's (Linux)")
def test_prefill_passes_reuse_freed_memory_instead_of_faulting_it_back():
    """With glibc's default thresholds each such pass faulted 1,000-13,000 pages back in (tens of MB
    zeroed by the kernel, a quarter of a SmolLM2 pass); with the policy, once the first passes have
    shaped the heap, the next ones reuse it."""
    out = subprocess.run([sys.executable, "-c", PASSES, str(REPO / "models" / "lmstudio-lite-tiny")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is True
    assert sum(result["faults"][3:]) < 300, result["faults"]  # 5 passes of ~48 MB of activations each
