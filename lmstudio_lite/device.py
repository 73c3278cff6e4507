"""Pick the device and dtype together, with a reason a person can read."""
from __future__ import annotations

import contextlib
import threading
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


# -- sharing the CPU between chat and a training job ------------------------------
# Measured with bench/train.py --contention: spinning OpenMP threads make chat
# and a job on the same core collapse, while passive waiting (OMP_WAIT_POLICY)
# cost chat 44% on a quiet machine. So each side keeps its own cores instead:
# a CPU job claims its threads here, and generation runs on what is left.
_PROCESS_THREADS = torch.get_num_threads()
_claimed = 0
_claim_lock = threading.Lock()


@contextlib.contextmanager
def claim_cpu_threads(n: int):
    """Hold ``n`` CPU threads for a background job while the block runs."""
    global _claimed
    with _claim_lock:
        _claimed += n
    try:
        yield
    finally:
        with _claim_lock:
            _claimed -= n


def inference_threads() -> int:
    """Threads a generation should use now: the process's count minus what jobs hold (at least 1)."""
    return max(1, _PROCESS_THREADS - _claimed)
