"""The native decode step (native/decode.c) in every weight format and for 1..8 rows, against PyTorch.

Reference: the same model through the Transformer's forward (one cached token a step), whose quantized layers dequantize
exactly (checked against gguf.quants below) and multiply in float32. Tolerances:

- float32 and bf16 weights are exact in both; only the order of float32 summation
  differs: 1e-4 on values of order 1.
- Q8_0, and Q4_0/Q4_1 in the plain C build (and on AVX-512 without VNNI): the kernel dequantizes
  each block exactly in registers and accumulates in float32, like the reference, so the same
  tolerance holds.
- Q4_0/Q4_1 on AVX-512 with VNNI and on AVX2: the kernel rounds the activation to int8 per block,
  as llama.cpp does (native/gemv.h: rows_int8); the reference then rounds each Q4 layer's
  input the same way (helpers_int8), and the same tolerance holds.
  ``test_quantized_gemv_equals_the_dequantized_matrix`` checks one GEMV against float64, with the
  error bound that rounding implies.
"""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch

from helpers_int8 import assert_close_after_rounding, kernel_arithmetic, kernel_rounds_activations, round_like_kernel
from hf_models import VOCAB, build
from lmstudio_lite import native
from lmstudio_lite.checkpoints.folder import load_weights
from lmstudio_lite.model import KVCache
from lmstudio_lite.model.kv_cache import Packed
from lmstudio_lite.model.decode import NativeDecoder
from lmstudio_lite.model.inference import InferenceModel
from lmstudio_lite.model.quant import QuantLinear, quantize_model, weight_bytes

FORMATS = ["f32", "bf16", "q8_0", "q4_0", "q4_1"]
QTYPES = {"q8_0": 2, "q4_0": 3, "q4_1": 4}
GGML = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for kind in ("llama-gqa-untied", "gpt2", "qwen2"):
        out[kind] = tmp_path_factory.mktemp(kind)
        build(kind).save_pretrained(out[kind])
    return out


@pytest.fixture(scope="module")
def plain_lib(tmp_path_factory):
    """The kernel with every intrinsic off: the path ARM and CPUs without AVX2 take."""
    lib = native.load(native.build(native.SOURCE, tmp_path_factory.mktemp("plain"), defines=(native.PLAIN_C,)))
    assert lib.lml_simd_level() == 0
    return lib


@pytest.fixture(scope="module")
def avx2_lib(tmp_path_factory):
    """On an AVX-512 machine, the AVX2+FMA path (8-wide instead of 16-wide bf16 rows) built and checked too."""
    if native.decode_library().lml_simd_level() < 2:
        pytest.skip("this CPU has no AVX-512: the default build already is the AVX2 or plain path")
    lib = native.load(native.build(native.SOURCE, tmp_path_factory.mktemp("avx2"), defines=("-mno-avx512f",)))
    assert lib.lml_simd_level() == 1
    return lib


@pytest.mark.parametrize("build", ["default", "avx2", "plain"])
def test_float16_cache_values_round_and_widen_as_torch(build, plain_lib, request):
    """A float32 model's float16 KV cache: the kernel's rounding of K and V (F16C, or plain C) is
    torch's .to(torch.float16) bit for bit (ties to even, subnormals, overflow to infinity, NaN),
    and reading them back widens exactly, so the native step and the PyTorch path keep one cache."""
    lib = {"default": native.decode_library(), "plain": plain_lib}.get(build) or request.getfixturevalue("avx2_lib")
    g = torch.Generator().manual_seed(0)
    edges = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 1e30, 2.0 ** -24, 2.0 ** -25,
                          1.5 * 2.0 ** -25, 3 * 2.0 ** -25, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -30, 1 + 2.0 ** -11,
                          1 + 3 * 2.0 ** -11, float("inf"), float("-inf"), float("nan")])
    x = torch.cat([edges, torch.randint(-2 ** 31, 2 ** 31 - 1, (200_000,), dtype=torch.int32, generator=g)
                   .view(torch.float32), torch.randn(100_000, generator=g) * 1e-5, torch.randn(100_000, generator=g)])
    h, back = torch.empty(x.numel(), dtype=torch.int16), torch.empty(x.numel())
    lib.lml_round_fp16(x.data_ptr(), h.data_ptr(), back.data_ptr(), x.numel())
    ref = x.to(torch.float16)
    nan = torch.isnan(x)
    assert torch.equal(h[~nan], ref.view(torch.int16)[~nan])
    assert torch.isnan(h[nan].view(torch.float16)).all()
    assert torch.equal(back[~nan], ref.float()[~nan]) and torch.isnan(back[nan]).all()


def model_in(folder, fmt: str):
    """(InferenceModel under test, reference Transformer) for one weight format. For bf16 the
    reference is float32 with every weight rounded to bf16, so both hold the very same weights."""
    if fmt == "bf16":
        model = InferenceModel(load_weights(folder, dtype=torch.bfloat16))
        ref = load_weights(folder)
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        return model, ref.eval()
    net = load_weights(folder)
    if fmt != "f32":
        quantize_model(net, fmt, head=None)
    return InferenceModel(net), net


def reference_rows(ref, prompts, steps, int8: bool = False):
    """Per row, its own 1-row cache through the reference forward: hidden states [n_steps, rows, C], caches.
    With ``int8``, the steps' Q4 layers round their input as the kernel's int8 path does (prefill,
    which the native rows copy, stays exact)."""
    caches, hidden = [], []
    with torch.inference_mode():
        for p in prompts:
            caches.append(KVCache(ref.config, 1, 32))
            ref(torch.tensor([p]), 0, caches[-1])
    with torch.inference_mode(), kernel_arithmetic(int8):
        for s, toks in enumerate(steps):
            hidden.append(torch.cat([ref.forward_hidden(torch.tensor([[t]]), len(p) + s, c)[0]
                                     for t, p, c in zip(toks, prompts, caches)]))
    return (torch.stack(hidden) if hidden else None), caches


def native_rows(model, decoder, ref, prompts, steps, slots, cache_dtype=torch.float32):
    """The same rows through one native step per token, row b in cache row slots[b]."""
    cache = KVCache(model.config, max(slots) + 1, 32, dtype=cache_dtype)
    _, prefilled = reference_rows(ref, prompts, [])
    for c, s in zip(prefilled, slots):
        cache.k[:, s] = c.k[:, 0]
        cache.v[:, s] = c.v[:, 0]
    hidden = []
    with torch.inference_mode():
        for s, toks in enumerate(steps):
            pos = torch.tensor([len(p) + s for p in prompts])
            x = decoder.step(torch.tensor(toks), pos, torch.tensor(slots), cache)
            hidden.append(ref.norm_f(x.clone()))
    return torch.stack(hidden), cache


def check(fmt, got, ref, got_cache, ref_caches, slots, int8: bool = False):
    """Every format: exact weights, float32 sums (module docstring); ``int8``: against the rounded reference."""
    pairs = [(got, ref)] + [(got_cache.k[:, s].float(), c.k[:, 0]) for c, s in zip(ref_caches, slots)] \
        + [(got_cache.v[:, s].float(), c.v[:, 0]) for c, s in zip(ref_caches, slots)]
    for a, b in pairs:
        if int8:
            assert_close_after_rounding(a, b)
        else:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


PROMPTS = [[1, 5, 17, 42, 8], [3, 9], [7, 7, 60, 2, 11, 13, 4, 30], [50], [4, 4, 4], [12, 90, 33, 1], [8, 6], [2, 3, 5, 7]]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["llama-gqa-untied", "gpt2", "qwen2"])
def test_native_step_matches_pytorch_in_every_format(folders, kind, fmt):
    model, ref = model_in(folders[kind], fmt)
    assert model.native is not None, native.status()
    steps = torch.randint(0, VOCAB, (4, 3), generator=torch.Generator().manual_seed(1)).tolist()
    prompts, slots = PROMPTS[:3], [2, 0, 1]  # rows at different positions, cache rows permuted
    int8 = kernel_rounds_activations() and fmt in ("q4_0", "q4_1")
    want, want_caches = reference_rows(ref, prompts, steps, int8=int8)
    for rows in (1, 3):
        got, cache = native_rows(model, model.native, ref, prompts[:rows], [s[:rows] for s in steps],
                                 slots[:rows] if rows > 1 else [0])
        check(fmt, got, want[:, :rows], cache, want_caches[:rows], slots[:rows] if rows > 1 else [0], int8)


def test_packing_keeps_one_copy_of_each_4_bit_matrix(folders):
    """The kernel repacks a 4-bit model's matrices in place (no second copy: the net's weights take the
    same bytes, and ``gguf_blocks()`` gives the GGUF rows back exactly), its Q8_0 head too where the
    kernel rounds activations to int8. The step gives the reference's numbers."""
    net = quantize_model(load_weights(folders["llama-gqa-untied"]), "q4_1")
    gguf_rows = {n: m.blocks.clone() for n, m in net.named_modules() if isinstance(m, QuantLinear)}
    own = weight_bytes(net)
    model = InferenceModel(net)
    layers = {n: m for n, m in net.named_modules() if isinstance(m, QuantLinear)}
    x16 = bool(native.decode_library().lml_x16())
    assert any(m.packed for m in layers.values()) == x16
    for n, m in layers.items():
        assert torch.equal(m.gguf_blocks(), gguf_rows[n])
        want = x16 and (m.qtype == "q4_1" or (n == "head" and kernel_rounds_activations()))
        assert m.packed == want and torch.equal(m.blocks, gguf_rows[n]) == (not m.packed)
    assert weight_bytes(net) == own  # packed in place, the fused q|k|v and gate|up and the head included
    assert model.extra_weights() == []
    ref = quantize_model(load_weights(folders["llama-gqa-untied"]), "q4_1")  # never packed
    steps = torch.randint(0, VOCAB, (3, 3), generator=torch.Generator().manual_seed(5)).tolist()
    int8 = kernel_rounds_activations()
    want, want_caches = reference_rows(ref, PROMPTS[:3], steps, int8=int8)
    got, cache = native_rows(model, model.native, ref, PROMPTS[:3], steps, [2, 0, 1])
    check("q4_1", got, want, cache, want_caches, [2, 0, 1], int8)


@pytest.mark.parametrize("build_kind", ["plain", "avx2"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_other_builds_match_pytorch_with_eight_rows(folders, request, build_kind, fmt):
    model, ref = model_in(folders["llama-gqa-untied"], fmt)
    lib = request.getfixturevalue(f"{build_kind}_lib")
    assert kernel_rounds_activations(lib) == (build_kind == "avx2")  # plain C is exact in every format
    int8 = kernel_rounds_activations(lib) and fmt in ("q4_0", "q4_1")
    decoder = NativeDecoder(model, lib)
    steps = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(2)).tolist()
    slots = [5, 3, 0, 7, 1, 2, 6, 4]
    want, want_caches = reference_rows(ref, PROMPTS, steps, int8=int8)
    got, cache = native_rows(model, decoder, ref, PROMPTS, steps, slots)
    check(fmt, got, want, cache, want_caches, slots, int8)


def test_projections_mixing_formats_run_in_the_kernel(folders):
    """A GGUF file may hold v in another format than q and k (after a Q4_K_M conversion, say), or
    one projection float: the fused q|k|v and gate|up are then matrices side by side
    (quant.SideBySide), and the kernel takes each in its own format, biases included (qwen2)."""
    model, floats = load_weights(folders["qwen2"]), load_weights(folders["qwen2"])
    quantize_model(model, "q4_0", head=None)
    for b, f in zip(model.blocks, floats.blocks):
        b.attn.v = QuantLinear.from_linear(f.attn.v, "q8_0")
        b.mlp.up = QuantLinear.from_linear(f.mlp.up, "q4_1")
    model.blocks[0].attn.k = floats.blocks[0].attn.k
    inference = InferenceModel(model)
    decoder = NativeDecoder.build(inference)
    assert decoder is not None, native.status()  # a refused part made it None before (PyTorch step)
    steps = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(5)).tolist()
    slots = [2, 0, 1]
    int8 = kernel_rounds_activations()
    want, want_caches = reference_rows(model, PROMPTS[:3], steps, int8=int8)
    got, cache = native_rows(inference, decoder, model, PROMPTS[:3], steps, slots)
    check("mixed", got, want, cache, want_caches, slots, int8)


@pytest.mark.parametrize("lib_kind", ["native", "plain", "avx2"])
def test_a_row_gets_the_same_logits_alone_or_with_seven_others(folders, request, lib_kind):
    """Bit for bit, in every format and build: reading each weight once for all rows must not change
    any row's numbers, or a seeded request would sample other tokens alone than in a batch (the
    scheduler's promise). Each format's own default head (Q8_0 beside a 4-bit model) runs too."""
    lib = native.decode_library() if lib_kind == "native" else request.getfixturevalue(f"{lib_kind}_lib")
    toks = torch.tensor([5, 9, 11, 40, 3, 2, 8, 1])
    pos = torch.tensor([len(p) for p in PROMPTS])
    for fmt in FORMATS:
        if fmt == "bf16":
            model = InferenceModel(load_weights(folders["llama-gqa-untied"], dtype=torch.bfloat16))
        else:
            net = load_weights(folders["llama-gqa-untied"])
            if fmt != "f32":
                quantize_model(net, fmt)
            model = InferenceModel(net)
        model.native = NativeDecoder(model, lib)
        cache = KVCache(model.config, 8, 32, dtype=model.dtype)
        with torch.inference_mode():
            for b, p in enumerate(PROMPTS):
                model.forward(torch.tensor([p]), Packed([b], [0], [len(p)]), cache)
            together = model.decode_rows(toks, pos, torch.arange(8), cache)
            for b in range(8):
                alone = model.decode_rows(toks[b:b + 1], pos[b:b + 1], torch.tensor([b]), cache)
                assert torch.equal(together[b], alone[0]), (fmt, b, (together[b] - alone[0]).abs().max())


def test_bf16_cache_is_written_rounded_to_nearest_even(folders):
    model, ref = model_in(folders["llama-gqa-untied"], "f32")
    steps = [[4, 9], [2, 60]]
    want, _ = native_rows(model, model.native, ref, PROMPTS[:2], steps, [0, 1])
    got, cache = native_rows(model, model.native, ref, PROMPTS[:2], steps, [0, 1], cache_dtype=torch.bfloat16)
    f32_cache = native_rows(model, model.native, ref, PROMPTS[:2], steps[:1], [0, 1])[1]
    # layer 0's first new keys come from the same float32 values in both runs (later layers
    # attend over the rounded cache): bf16 must hold them as torch rounds them
    pos = [len(p) for p in PROMPTS[:2]]
    for b in range(2):
        assert torch.equal(cache.k[0, b, :, pos[b]], f32_cache.k[0, b, :, pos[b]].to(torch.bfloat16))
        assert torch.equal(cache.v[0, b, :, pos[b]], f32_cache.v[0, b, :, pos[b]].to(torch.bfloat16))
    torch.testing.assert_close(got, want, atol=0.03 * want.abs().max().item(), rtol=0)


@pytest.mark.parametrize("lib_kind", ["native", "plain", "avx2"])
@pytest.mark.parametrize("qtype", [*QTYPES, "q8_0r"])
def test_quantized_gemv_equals_the_dequantized_matrix(request, lib_kind, qtype):
    """q8_0r: Q8_0 blocks on int8 activations (a 4-bit model's head; exact in the other builds)."""
    lib = native.decode_library() if lib_kind == "native" else request.getfixturevalue(f"{lib_kind}_lib")
    code = native.Q8_0_ROUNDED if qtype == "q8_0r" else QTYPES[qtype]
    qtype = qtype.removesuffix("r")
    rounded = kernel_rounds_activations(lib) and code != QTYPES["q8_0"]
    # more rows than one group of 8: lml_linear takes them 8 at a time, the 9th alone (one-row kernels);
    # 18 blocks a row: one group of 16 whose scales AVX-512 converts together, then 2 one by one; 54 outputs
    # in chunks of 16, 16, 16 and 6: the one-row kernels' 4 streams of 4 rows, of 1 row and 2 rows left over
    K, N, B = 576, 54, 9
    g = torch.Generator().manual_seed(7)
    w = torch.randn(N, K, generator=g)
    x = torch.randn(B, K, generator=g) * torch.linspace(0.1, 3, K)  # blocks of different ranges
    blocks = gguf.quants.quantize(w.numpy(), GGML[qtype])
    wd = torch.from_numpy(gguf.quants.dequantize(blocks, GGML[qtype]).astype(np.float32))  # [N, K]
    bias = torch.randn(N, generator=g)
    out = torch.empty(B, N)
    scratch = torch.empty(lib.lml_linear_scratch_floats(K, N, B, 2))
    blocks_t = torch.from_numpy(blocks)
    lib.lml_linear(code, blocks_t.data_ptr(), bias.data_ptr(), K, N, B, x.data_ptr(), out.data_ptr(),
                   scratch.data_ptr(), 2)
    exact = x.double() @ wd.double().t() + bias.double()
    # float32 accumulation of K products: a few ulps of the sum of their magnitudes
    slack = 4 * K * 2.0 ** -24 * (x.abs().double() @ wd.abs().double().t() + bias.abs().double())
    err = (out.double() - exact).abs()
    if not rounded:
        assert (err <= slack).all(), (err / slack).max()
        return
    # int8 activations: exactly x rounded per block (dx = max|x| / 127) times the weights ...
    rounded = round_like_kernel(x).double()
    err_rounded = (out.double() - (rounded @ wd.double().t() + bias.double())).abs()
    assert (err_rounded <= slack).all(), (err_rounded / slack).max()
    # ... so off the exact product by at most sum over blocks of dx / 2 * sum |w|: the bound to expect
    dx = x.double().reshape(B, K // 32, 32).abs().amax(-1) / 127
    bound = (dx / 2) @ wd.double().abs().reshape(N, K // 32, 32).sum(-1).t()
    assert (err <= bound + slack).all(), (err / (bound + slack)).max()
    assert err.max() > 10 * err_rounded.max()  # it is the rounding that errs, not the sums


@pytest.mark.parametrize("qtype", ["q4_0", "q4_1", "q8_0r"])
def test_rows_packed_16_outputs_wide_give_what_the_gguf_rows_give(qtype):
    """Where the kernel packs a matrix 16 outputs side by side for its int8 rows (rows_x16: AVX-512
    with VNNI; 4-bit matrices and a 4-bit model's Q8_0 head), the packed matrix gives the GGUF rows'
    numbers up to float32 summation order: the same activation rounding, the same weights. 1 to 9
    rows, two threads, through lml_linear (the head's path) and lml_linear_x16 (prefill's)."""
    lib = native.decode_library()
    if not lib.lml_x16():
        pytest.skip("this CPU has no AVX-512 VNNI: no packed rows to check")
    gguf_code = native.Q8_0_ROUNDED if qtype == "q8_0r" else QTYPES[qtype]
    qtype = qtype.removesuffix("r")
    K, N = 576, 80
    g = torch.Generator().manual_seed(9)
    w = torch.randn(N, K, generator=g)
    blocks = torch.from_numpy(gguf.quants.quantize(w.numpy(), GGML[qtype]))
    wd = torch.from_numpy(gguf.quants.dequantize(blocks.numpy(), GGML[qtype]).astype(np.float32))
    bias = torch.randn(N, generator=g)
    packed = torch.empty_like(blocks)
    code = lib.lml_pack_x16(gguf_code, blocks.data_ptr(), N, K, packed.data_ptr())
    assert code != gguf_code and not torch.equal(packed, blocks)
    for B in (1, 3, 8, 9):
        x = torch.randn(B, K, generator=g) * torch.linspace(0.1, 3, K)
        outs = []
        for fmt, data, entry in ((gguf_code, blocks, "linear"), (code, packed, "linear"), (code, packed, "x16")):
            out = torch.empty(B, N)
            if entry == "linear":
                scratch = torch.empty(lib.lml_linear_scratch_floats(K, N, B, 2))
                lib.lml_linear(fmt, data.data_ptr(), bias.data_ptr(), K, N, B, x.data_ptr(), out.data_ptr(),
                               scratch.data_ptr(), 2)
            else:
                scratch = torch.empty(lib.lml_linear_x16_scratch_floats(K, B))
                lib.lml_linear_x16(fmt, data.data_ptr(), bias.data_ptr(), K, N, B, x.data_ptr(), out.data_ptr(),
                                   scratch.data_ptr(), 2)
            outs.append(out.double())
        want = round_like_kernel(x).double() @ wd.double().t() + bias.double()
        slack = 4 * K * 2.0 ** -24 * (round_like_kernel(x).abs().double() @ wd.abs().double().t() + bias.abs().double())
        for got in outs:
            assert ((got - want).abs() <= slack).all(), B
        assert torch.equal(outs[1], outs[2])  # the decode step's rows and prefill's: the same numbers


def test_int8_path_is_built_where_the_cpu_has_it():
    """The faster Q4 kernel must not fall away unnoticed on a CPU that has the instructions."""
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    lib = native.decode_library()
    level = lib.lml_simd_level()
    want = "f16c" in flags and (level == 1 or (level == 2 and {"avx512_vnni", "avx512vbmi"} <= flags))
    assert kernel_rounds_activations(lib) == want


def test_quantize_model_dequantizes_like_gguf(folders):
    model = quantize_model(load_weights(folders["llama-gqa-untied"]), "q4_1", head=None)
    layer = model.blocks[0].mlp.down
    want = gguf.quants.dequantize(layer.blocks.numpy(), GGML["q4_1"])
    torch.testing.assert_close(layer.dequantized(), torch.from_numpy(want.astype(np.float32)), atol=0, rtol=0)


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_prefill_dequantizes_to_the_same_weights(qtype):
    """Prefill's GEMMs take the weights from the kernel's one-pass dequantization: the very
    values of the reference (checked against gguf above), so the very same products."""
    g = torch.Generator().manual_seed(6)
    layer = QuantLinear.from_weight(torch.randn(80, 96, generator=g), qtype, torch.randn(80, generator=g)).eval()
    x = torch.randn(5, 96, generator=g)
    with torch.inference_mode():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.dequantized(), layer.bias))
        assert torch.equal(layer(x.bfloat16()), torch.nn.functional.linear(
            x.bfloat16(), layer.dequantized(torch.bfloat16), layer.bias.bfloat16()))


def test_quantized_head_runs_in_the_kernel(folders):
    model = InferenceModel(quantize_model(load_weights(folders["llama-gqa-untied"]), "q8_0", head="q8_0"))
    assert model.native.head is not None
    h = torch.randn(3, 1, model.config.d_model)
    with torch.inference_mode():
        got = model.project(h)
        want = model.net.head.forward(h)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_bad_inputs_raise_clearly(folders):
    model, _ = model_in(folders["llama-gqa-untied"], "q8_0")
    step, cache = model.native.step, KVCache(model.config, 2, 8)
    one = torch.tensor([0])
    with pytest.raises(ValueError, match="1 to 8 rows"):
        step(torch.zeros(9, dtype=torch.int64), torch.zeros(9, dtype=torch.int64), torch.zeros(9, dtype=torch.int64),
             KVCache(model.config, 9, 8))
    with pytest.raises(IndexError, match="holds 8 positions"):
        step(one, torch.tensor([8]), one, cache)
    with pytest.raises(IndexError, match="2 rows"):
        step(one, one, torch.tensor([2]), cache)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        step(torch.tensor([VOCAB]), one, one, cache)
    with pytest.raises(ValueError, match="float32, bf16 or float16"):
        step(one, one, one, KVCache(model.config, 2, 8, dtype=torch.float64))
    layer = model.net.blocks[0].attn.o
    layer.blocks = layer.blocks[:, :-2]  # a truncated row: the kernel would read past it
    with pytest.raises(ValueError, match="must be contiguous uint8"):
        NativeDecoder(model, native.decode_library())
