"""The device type models will likely run on, known without importing torch.

The app serves its page before torch is imported (importing it takes seconds), yet forms want
device-dependent defaults when they are built. Once torch is imported (the start-up model loads
right after the page answers) ``device.choose_device`` gives the real answer, and this defers to it.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path


def likely_device_type(override: str | None = None) -> str:
    """"cuda", "mps" or "cpu": ``override``'s type when given, torch's answer once imported, else a
    guess from the machine (an NVIDIA driver loaded; Apple silicon)."""
    if override and override != "auto":
        return override.split(":", 1)[0]
    if "torch" in sys.modules:
        from .device import choose_device

        try:
            return choose_device().device.type
        except ValueError:
            return "cpu"
    if Path("/proc/driver/nvidia/version").exists():
        return "cuda"
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mps"
    return "cpu"
