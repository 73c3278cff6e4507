"""Pick the device and dtype together, with a reason a person can read."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .messages import Message

# Measured with bench/decode.py on the 2-core Zen 4 CI machines: see README.md.
CPU_DEFAULT_DTYPE = torch.float32

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return {"mps": "Apple GPU (MPS)", "cpu": "CPU"}.get(self.device.type, str(self.device))


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16") from None


def _gpu_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def choose_device(override: str | None = None, dtype: str | torch.dtype | None = None) -> DeviceChoice:
    """cuda, then mps, then cpu; ``override`` ("cpu", "cuda", "cuda:1", "mps") wins when available."""
    want = parse_dtype(dtype)
    if override and override != "auto":
        dev = torch.device(override)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps was asked for, but Apple MPS is not available")
        base = CPU_DEFAULT_DTYPE if dev.type == "cpu" else _gpu_dtype(dev)
        return DeviceChoice(dev, want or base, Message("device.chosen", device=dev.type))
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        return DeviceChoice(dev, want or _gpu_dtype(dev), Message("device.cuda"))
    if torch.backends.mps.is_available():
        return DeviceChoice(torch.device("mps"), want or torch.float16, Message("device.mps"))
    return DeviceChoice(torch.device("cpu"), want or CPU_DEFAULT_DTYPE, Message("device.cpu"))

