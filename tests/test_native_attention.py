"""Prefill's attention through the native kernel (decode.c's lml_attend, model/native_attention.py)
against torch's SDPA: the kernel alone at several head shapes and cache types, and an
InferenceModel's prefill passes, which take it where it is measured faster."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmstudio_lite import load_model, native
from lmstudio_lite.model import KVCache, native_attention
from lmstudio_lite.model.kv_cache import Packed

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "lmstudio-lite-tiny"


def sdpa_segment(q, k, v, start):
    """q [T, H, D] at positions start.., k, v [KV, L, D] float32 -> [T, H * D], each query over
    positions 0..its own."""
    T, H, D = q.shape
    n = start + T
    mask = torch.ones(T, n, dtype=torch.bool).tril(start)
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None, :, :n], v[None, :, :n], attn_mask=mask,
                                         enable_gqa=True)
    return out[0].transpose(0, 1).reshape(T, H * D)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (6, 6, 32), (8, 2, 128), (8, 4, 8)])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("start", [0, 13])
def test_the_kernel_attends_a_segment_as_sdpa(heads, kv_heads, head_dim, kv_dtype, start):
    """Grouped heads, head sizes on the vector path (multiples of 16) and off it (8), every cache
    type read as stored, a segment at the start of its row and one after a cached prefix."""
    lib = native.decode_library()
    g = torch.Generator().manual_seed(heads * head_dim + start)
    T, room = 21, 48  # the row holds more positions than the segment reaches: they must not be read
    q = torch.randn(T, heads, head_dim, generator=g)
    k = torch.randn(kv_heads, room, head_dim, generator=g).to(kv_dtype)
    v = torch.randn(kv_heads, room, head_dim, generator=g).to(kv_dtype)
    k[:, start + T:] = float("nan")
    v[:, start + T:] = float("nan")
    out = torch.full((T, heads * head_dim), float("nan"))
    scratch = torch.empty(lib.lml_attend_scratch_floats(heads, kv_heads, head_dim, start + T, 2))
    lib.lml_attend(q.data_ptr(), T, heads, kv_heads, head_dim, start, k.data_ptr(), v.data_ptr(),
                   native_attention.CACHE_TYPES[kv_dtype], room * head_dim, out.data_ptr(), scratch.data_ptr(), 2)
    want = sdpa_segment(q, k.float(), v.float(), start)
    assert (out - want).abs().max().item() < 2e-6


class Counting:
    """The library with its lml_attend calls counted."""

    def __init__(self, lib):
        self.lib, self.calls = lib, 0

    def __getattr__(self, name):
        return getattr(self.lib, name)

    def lml_attend(self, *args):
        self.calls += 1
        return self.lib.lml_attend(*args)


@pytest.fixture(scope="module")
def bundled():
    return load_model(BUNDLED, device="cpu").model


def prefill(model, ids, start_pos, rows, length):
    cache = KVCache(model.config, rows, length, dtype=torch.float16)
    g = torch.Generator().manual_seed(5)  # a cached prefix before the segments that start later
    cache.k.copy_(torch.randn(cache.k.shape, generator=g))
    cache.v.copy_(torch.randn(cache.v.shape, generator=g))
    with torch.inference_mode():
        return model.forward_hidden(ids, start_pos=start_pos, cache=cache)


def test_an_inference_prefill_attends_through_the_kernel_as_through_sdpa(bundled, monkeypatch):
    """A packed pass (three prompts, two after a cached prefix) and a plain one (two rows at one
    start) give SDPA's hidden states up to float32 summation order, and take the kernel where this build
    is AVX-512 (the CPUs CI runs on); a span past SPAN stays SDPA's."""
    lib = native.decode_library()
    counting = Counting(lib)
    monkeypatch.setattr(native_attention, "_library", lambda: counting if lib.lml_simd_level() >= 2 else None)
    ids = torch.randint(5, 4000, (1, 60), generator=torch.Generator().manual_seed(1))
    cases = [(ids, lambda: Packed([0, 1, 2], [0, 9, 30], [25, 30, 5]), 3, 64),
             (ids[:, :30].reshape(2, 15), lambda: 40, 2, 64)]
    for x, start_pos, rows, length in cases:
        counting.calls = 0
        got = prefill(bundled, x, start_pos(), rows, length)
        assert counting.calls == (bundled.config.n_layer * rows if lib.lml_simd_level() >= 2 else 0)
        monkeypatch.setattr(native_attention, "SPAN", 0)
        want = prefill(bundled, x, start_pos(), rows, length)
        monkeypatch.setattr(native_attention, "SPAN", 3072)
        assert counting.calls == (bundled.config.n_layer * rows if lib.lml_simd_level() >= 2 else 0)
        # hidden states up to 9; torch's own one pass against two chunks differ by 3.4e-4 here
        assert (got - want).abs().max().item() < 1e-3
    counting.calls = 0
    monkeypatch.setattr(native_attention, "SPAN", 32)  # the packed case's second prompt reaches 39
    prefill(bundled, ids, Packed([0, 1, 2], [0, 9, 30], [25, 30, 5]), 3, 64)
    assert counting.calls == 0
