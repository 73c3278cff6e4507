"""Block-to-block conversions that keep a GGUF type's numbers instead of re-quantizing them.

Decoding Q5_0 and encoding Q8_0 again picks a new scale (max/127) on which the 5-bit values
no longer fall: measured +0.47% perplexity on SmolLM2 (bench/gguf_conversion_cost.py). But a
Q5_0 value is d * (q - 16) with |q - 16| <= 16, which Q8_0 holds exactly with the same d.
Likewise a Q4_K super-block is eight 32-value sub-blocks, each d*sc * q - dmin*m with q in
0..15: a Q4_1 block (scale, minimum, 4-bit q) apiece, exact but for rounding the two
products to float16. Block layouts as in ggml-common.h (and gguf.quants).
"""
from __future__ import annotations

import numpy as np

Q5_0_BYTES, Q4_K_BYTES = 22, 144


def q5_0_to_q8_0(rows: np.ndarray) -> np.ndarray:
    """uint8 [R, N*22] Q5_0 -> [R, N*34] Q8_0 with the same values."""
    R = rows.shape[0]
    b = rows.reshape(-1, Q5_0_BYTES)
    d, qh, qs = b[:, :2], b[:, 2:6].copy().view("<u4"), b[:, 6:]
    low = np.concatenate([qs & 0x0F, qs >> 4], axis=1)  # elements 0..15 in low nibbles, 16..31 in high
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
    q = (low | (high << 4)).astype(np.int16) - 16
    return np.concatenate([d, q.astype(np.int8).view(np.uint8)], axis=1).reshape(R, -1)


def _q4_k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 packed bytes -> 6-bit scale and min of each of the 8 sub-blocks (ggml's get_scale_min_k4)."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc, mn


def q4_k_to_q4_1(rows: np.ndarray) -> np.ndarray:
    """uint8 [R, N*144] Q4_K -> [R, N*8*20] Q4_1: one Q4_1 block per 32-value sub-block."""
    R = rows.shape[0]
    b = rows.reshape(-1, Q4_K_BYTES)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)  # [B, 1]
    dmin = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    sc, mn = _q4_k_scales(b[:, 4:16])
    scale = (d * sc).astype(np.float16).reshape(-1, 1)  # [B*8, 1]
    minimum = (-(dmin * mn)).astype(np.float16).reshape(-1, 1)
    qs = b[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (qs & 0x0F).reshape(-1, 32)  # [B*8, 32]: sub-block 2j from the low nibbles of chunk j, 2j+1 the high
    packed = q[:, :16] | (q[:, 16:] << 4)  # Q4_1: element i low nibble, i + 16 high
    blocks = np.concatenate([scale.view(np.uint8), minimum.view(np.uint8), packed], axis=1)
    return blocks.reshape(R, -1)


# GGUF type name -> (kept type name, transcoder)
TRANSCODERS = {"Q5_0": ("Q8_0", q5_0_to_q8_0), "Q4_K": ("Q4_1", q4_k_to_q4_1)}
