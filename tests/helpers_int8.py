"""The reference for the kernel's int8 activations (native/gemv.h: quantize_act, rows_int8).

Where the CPU has AVX-512 VNNI, the native decode step multiplies a 4-bit model's blocks (its
Q4_0/Q4_1 layers and any Q8_0 ones, the head) by the activation rounded to int8 per block of 32, as
llama.cpp does: dx = max|x| / 127, q = round(x / dx)
(half to even, of x * (127 / max|x|) in float32). The product is then exact: the kernel's result
equals x rounded that way times the dequantized weights, up to float32 summation order. So the
reference is the float forward with each quantized layer's input rounded first: the same tolerance as the
exact formats holds, and any slip (a wrong block, scale or offset) shows at full size.
"""
from __future__ import annotations

import contextlib

import torch

from lmstudio_lite import native
from lmstudio_lite.model.quant import QuantLinear

def kernel_rounds_activations(lib=None) -> bool:
    """Whether this build (default: the one the app uses) takes Q4 rows on int8 activations."""
    return bool((lib or native.decode_library()).lml_int8())


def round_like_kernel(x: torch.Tensor) -> torch.Tensor:
    """x [.., K] (K a multiple of 32) with each block of 32 rounded to dx * int8, as quantize_act does."""
    blocks = x.float().reshape(*x.shape[:-1], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    return (torch.round(blocks * inv) * (amax / torch.tensor(127.0))).reshape(x.shape).to(x.dtype)


@contextlib.contextmanager
def kernel_arithmetic(active: bool = True, prefill: bool = False):
    """Within: every QuantLinear rounds its input as the kernel's step does for a 4-bit model, whose
    Q8_0 matrices (the head, a mixed file's v) round too (model/decode.py); with ``prefill``, only
    the 4-bit layers the kernel packed round (an InferenceModel's prefill: model/quant.py,
    kernel_rows; a packed Q8_0 head's many rows stay exact: InferenceModel.project); nothing when
    not active."""
    if not active:
        yield
        return
    forward = QuantLinear.forward

    def rounded(self, x):
        return forward(self, round_like_kernel(x) if (self.packed and self.qtype != "q8_0") or not prefill else x)

    QuantLinear.forward = rounded
    try:
        yield
    finally:
        QuantLinear.forward = forward


def assert_close_after_rounding(got: torch.Tensor, want: torch.Tensor):
    """A whole step against the rounded reference. Where an input lies within float32 noise of a
    rounding boundary, kernel and reference can round it apart (their sums differ in order),
    moving one value by dx (its block's max / 127) and the outputs after it by about dx |w|: up to
    5e-2 on the tests' models. So most values must agree to 1e-4 (the same arithmetic), and all
    to 0.1 (a wrong block, scale or offset moves them by O(1))."""
    torch.testing.assert_close(got, want, atol=0.1, rtol=0)
    assert (got - want).abs().median() < 1e-4
