"""Prefill's attention through the native kernel (decode.c's ``lml_attend``), where it is measured
faster than torch's SDPA: an ``InferenceModel``'s prefill (``quant.kernel_rows``) on the CPU in
float32, with the AVX-512 build, over spans of at most ``SPAN`` positions. Each segment of a packed
pass reads its cache row as stored (float16, bf16 or float32, widened exactly), so no widened copy
of the row is made in torch, and its output lands in the [T, H * D] layout the output projection
reads.

Measured (``python bench/attention.py --prefill FILE`` and ``--kernel``), 2 threads: SmolLM2-135M
Q4_1 prefill passes, torch's time over ours, one 40-token prompt 1.02x, one of 128 1.15x, eight of
40-120 1.10x, one of 512 1.11x, 1,024 1.23x, 3,000 1.04x; the attention alone (9 heads, 3 KV heads of
64) 91-180 GFLOP/s from 128 to 3,000 positions against SDPA's 63-143, but 173 against 193 at 6,000
(and 126 against 164 at 8,000): the kernel widens a KV head's whole span first, which then no longer
fits in L2, while torch's flash attention walks blocks of keys. Past ``SPAN`` the pass stays torch's."""
from __future__ import annotations

import threading

import torch

from ..native import decode_library
from ..threads import kernel_threads
from .decode import CACHE_TYPES
from .quant import in_kernel_rows

AVX512 = 2  # lml_simd_level(): elsewhere the kernel's attention is scalar loops, and torch's stays
SPAN = 3072  # positions a segment's last query attends over, at most
_scratch = threading.local()


def _library():
    lib = decode_library()
    if lib is None or not hasattr(lib, "lml_attend") or lib.lml_simd_level() < AVX512:
        return None
    return lib


def attend_segments(q: torch.Tensor, segments: list) -> torch.Tensor | None:
    """q [1, N, H, D] (RoPE applied), segments: (k, v, offset, length, start) each, its queries
    q[0, offset:offset + length] at positions start.., its cache row's k, v [1, KV, L, D] as
    ``KVCache.write``/``write_packed`` return them (its own tokens already written) -> attention's
    output [1, N, H * D]; None where the kernel does not take it (not in ``kernel_rows``, not float32
    on the CPU, no AVX-512 build, a span past ``SPAN``), and torch's SDPA runs."""
    k0 = segments[0][0]
    longest = max(start + n for _, _, _, n, start in segments)
    if not in_kernel_rows() or q.dtype != torch.float32 or q.device.type != "cpu" or torch.is_grad_enabled() \
            or longest > SPAN or k0.dtype not in CACHE_TYPES or k0.stride(3) != 1 or k0.stride(2) != k0.shape[3]:
        return None
    lib = _library()
    if lib is None:
        return None
    _, N, H, D = q.shape
    KV = k0.shape[1]
    q = q.contiguous()
    out = torch.empty(1, N, H * D)
    threads = kernel_threads()
    need = lib.lml_attend_scratch_floats(H, KV, D, longest, threads)
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < need:
        buf = _scratch.buf = torch.empty(need)
    code = CACHE_TYPES[k0.dtype]
    for k, v, o, n, start in segments:
        lib.lml_attend(q[0, o].data_ptr(), n, H, KV, D, start, k.data_ptr(), v.data_ptr(), code, k.stride(1),
                       out[0, o].data_ptr(), buf.data_ptr(), threads)
    return out
