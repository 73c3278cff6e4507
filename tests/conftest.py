"""Fixtures every test module shares.

The chromium fixture is registered here once: imported into two test modules
it would become two session fixtures, and a second Playwright sync session
cannot start inside the first one's event loop.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures_ui import browser, quiet_toasts, ui_models  # noqa: E402,F401


def _our_descendants() -> list[tuple[int, str]]:
    """Live processes started (directly or not) by this pytest process that run lmstudio_lite."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            cmd[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    me, found = os.getpid(), []
    for pid, line in cmd.items():
        p, seen = parent.get(pid), 0
        while p not in (None, 0, 1, me) and seen < 64:
            p, seen = parent.get(p), seen + 1
        if p == me and "lmstudio_lite" in line and " zombie" not in line:
            found.append((pid, line.strip()[:160]))
    return found


@pytest.fixture(autouse=True, scope="module")
def no_process_outlives_its_module():
    """An app, server or training process left running steals the CPU from every later test (a Start
    that took over 30 s in the full suite): each module must stop what it started."""
    yield
    if not Path("/proc").is_dir():
        return
    end = time.monotonic() + 10  # a SIGINT-ed app may still be shutting down
    while (left := _our_descendants()) and time.monotonic() < end:
        time.sleep(0.2)
    for pid, _ in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived their test module: {left}"


@pytest.fixture(autouse=True, scope="session")
def one_native_build(tmp_path_factory):
    """Every app, server and CLI the tests start has a home of its own, and each built the kernel
    into it again: 6 s on 2 cores, some thirty times a run. They share one build instead (the
    build itself, its errors and its other flavours are tested with folders of their own)."""
    from lmstudio_lite.native import DIR_ENV

    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get(DIR_ENV):
            mp.setenv(DIR_ENV, str(tmp_path_factory.mktemp("native-build")))
        yield
