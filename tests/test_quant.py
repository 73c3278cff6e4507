"""Quantized weights: bytes identical to gguf.quants, QuantLinear against its dequantized
weight, quantized models against float, the load cache, the CLI flag."""
from __future__ import annotations

import json
import os
import shutil

import gguf
import numpy as np
import pytest
import torch

from lmstudio_lite import native
from lmstudio_lite.checkpoints.folder import load_weights, read_config
from lmstudio_lite.model.config import ModelConfig
from lmstudio_lite.model.kv_cache import KVCache
from lmstudio_lite.model.layers import Linear
from lmstudio_lite.model.lora import apply_lora
from lmstudio_lite.model.inference import InferenceModel
from lmstudio_lite.model.quant import (BLOCK_BYTES, QTYPES, QuantLinear, dequantize, quantize, quantize_model,
                                       quantized_blocks, weight_format)
from lmstudio_lite.model.transformer import Transformer

from helpers_int8 import assert_close_after_rounding, kernel_arithmetic, kernel_rounds_activations
from shared_data import STORIES

GGML = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1}


def edge_matrix(rows: int = 67, cols: int = 256, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Random rows plus the blocks where rounding and sign choices differ between implementations."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * scale
    w[0] = 0.0  # all-zero blocks: d = 0, the reciprocal guarded
    w[1, 5] = 1e3 * scale  # one huge outlier crushes the rest of its block to 0
    w[2] = -w[2].abs()  # negative maximum: q4_0's d is positive, values map to 0..8
    w[3, :32] = torch.tensor([1.0, -1.0] * 16)  # +max and -max tie: the first one sets q4_0's sign
    w[3, 32:64] = -w[3, 32:64].abs().flip(0)
    w[4, :32] = 0.5 * scale  # a constant block: q4_1's d = 0
    w[5, :32] = (torch.arange(32) - 15.5) * scale  # exact halves after scaling: round-away vs round-even
    w[6, :32] = torch.tensor([127.0] + [k + 0.5 for k in range(-15, 16)])  # d = 1: exact halves for q8_0
    return w


@pytest.mark.parametrize("qtype", QTYPES)
@pytest.mark.parametrize("scale", [1e-3, 0.02, 1.0, 50.0])
def test_quantize_bytes_equal_gguf(qtype, scale):
    w = edge_matrix(scale=scale)
    ours = quantize(w, qtype, rows_per_chunk=16)  # several chunks, one ragged
    assert ours.dtype == torch.uint8 and ours.shape == (67, 256 // 32 * BLOCK_BYTES[qtype])
    assert np.array_equal(ours.numpy(), gguf.quants.quantize(w.numpy(), GGML[qtype]))


@pytest.mark.parametrize("qtype", QTYPES)
def test_quantize_bfloat16_weights_as_their_float32_values(qtype):
    w = edge_matrix(seed=1).bfloat16()
    assert np.array_equal(quantize(w, qtype).numpy(), gguf.quants.quantize(w.float().numpy(), GGML[qtype]))


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_equals_gguf(qtype):
    ref = gguf.quants.quantize(edge_matrix(seed=2).numpy(), GGML[qtype])
    ours = dequantize(torch.from_numpy(ref), qtype)
    assert ours.dtype == torch.float32
    assert np.array_equal(ours.numpy(), gguf.quants.dequantize(ref, GGML[qtype]))
    assert dequantize(torch.from_numpy(ref), qtype, torch.bfloat16).equal(ours.bfloat16())


def test_bad_shapes_and_names_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize(torch.zeros(4, 48), "q8_0")
    with pytest.raises(ValueError, match="q8_0, q4_0, q4_1"):
        quantize(torch.zeros(4, 64), "q5_0")
    with pytest.raises(ValueError, match="multiple of 34"):
        dequantize(torch.zeros(4, 35, dtype=torch.uint8), "q8_0")
    with pytest.raises(ValueError, match="must be uint8"):
        QuantLinear.from_blocks(torch.zeros(4, 34, dtype=torch.uint8), "q8_0", d_in=64, d_out=4)


@pytest.mark.parametrize("qtype", QTYPES)
def test_quant_linear_is_x_times_its_dequantized_weight(qtype):
    torch.manual_seed(0)
    lin_w, bias = torch.randn(96, 40), torch.randn(40)  # logical [in, out], as layers.Linear
    blocks = quantize(lin_w.t(), qtype)
    layer = QuantLinear.from_blocks(blocks, qtype, d_in=96, d_out=40, bias=bias)
    x = torch.randn(3, 5, 96)
    w_deq = torch.from_numpy(gguf.quants.dequantize(blocks.numpy(), GGML[qtype]))  # [out, in]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ w_deq.t() + bias, rtol=1e-5, atol=1e-5)
        assert layer(x.bfloat16()).dtype == torch.bfloat16


def _tiny(family: str) -> Transformer:
    """Random weights with GQA (llama) or every bias and an untied head (gpt2)."""
    torch.manual_seed(1)
    if family == "llama":
        cfg = ModelConfig(family="llama", vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                          d_ff=96, max_seq_len=64, qkv_bias=True)
    else:
        cfg = ModelConfig(family="gpt2", vocab_size=96, n_layer=2, n_head=4, d_model=64, d_ff=128,
                          max_seq_len=64, qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=False,
                          act="gelu_new")
    model = Transformer(cfg)
    model.init_weights(std=0.1)
    return model.eval()


def _dequantized_copy(model: Transformer, quantized: Transformer) -> Transformer:
    """A float model whose weights are exactly the quantized model's dequantized blocks."""
    ref = Transformer(model.config)
    ref.load_state_dict(model.state_dict())
    for name, m in quantized.named_modules():
        if isinstance(m, QuantLinear):
            w = m.dequantized().t()
            if name == "head" and ref.head is None:
                ref.head = Linear(m.d_in, m.d_out, bias=False)
            ref.get_submodule(name).weight.data.copy_(w)
    return ref.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_quantized_model_equals_float_model_of_dequantized_weights(family, qtype):
    model = _tiny(family)
    net = quantize_model(_tiny(family), qtype)
    q = InferenceModel(net)
    assert weight_format(net) == qtype
    assert isinstance(net.head, QuantLinear) and net.head.qtype == "q8_0"
    ref = InferenceModel(_dequantized_copy(model, net))
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    caches = [KVCache(q.config, 2, 16, "cpu", torch.float32) for _ in range(2)]
    int8 = kernel_rounds_activations() and qtype != "q8_0"
    with torch.no_grad():
        full = q(ids)
        # Exact dequantization, float32 accumulation either side: only summation order differs.
        torch.testing.assert_close(net(ids), ref(ids), rtol=1e-5, atol=1e-5)
        with kernel_arithmetic(int8, prefill=True):  # prefill through the kernel's packed 4-bit rows
            want = net(ids)
        if int8:
            assert any(isinstance(m, QuantLinear) and m.packed for m in net.modules())
            assert_close_after_rounding(full, want)
        else:
            torch.testing.assert_close(full, want, rtol=1e-5, atol=1e-5)
        steps = []
        for runner, cache in zip((net, q), caches):  # the reference forward's cached step, then the native one
            with kernel_arithmetic(int8 and runner is net, prefill=True):
                runner(ids[:, :11], 0, cache)
            with kernel_arithmetic(int8 and runner is net):  # the kernel's int8 rounding, where it has it
                steps.append(runner(ids[:, 11:], 11, cache))
    reference, native = steps
    if int8:  # the Q4 rows on int8 activations (helpers_int8; each format in tests/test_native_quant.py)
        assert_close_after_rounding(native, reference)
        return
    for step in steps:  # exact weights either way (the kernel in every format: tests/test_native_quant.py)
        torch.testing.assert_close(step[:, 0], full[:, 11], rtol=1e-5, atol=1e-5)


def test_mixed_formats_in_one_fused_projection():
    """A GGUF file may hold v in another format than q and k, or one projection float."""
    model = _tiny("llama")
    net = quantize_model(_tiny("llama"), "q4_0")
    net.blocks[0].attn.v = QuantLinear.from_linear(model.blocks[0].attn.v, "q8_0")
    net.blocks[1].mlp.up = model.blocks[1].mlp.up  # float
    q = InferenceModel(net)
    ref = InferenceModel(_dequantized_copy(model, net))
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(4))
    cache = KVCache(q.config, 2, 16, "cpu", torch.float32)
    with torch.no_grad():
        full = q(ids)
        torch.testing.assert_close(net(ids), ref(ids), rtol=1e-5, atol=1e-5)
        q(ids[:, :11], 0, cache)
        step = q(ids[:, 11:], 11, cache)[:, 0]
        if not kernel_rounds_activations():
            torch.testing.assert_close(full, ref(ids), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(step, full[:, 11], rtol=1e-5, atol=1e-5)
            return
        with kernel_arithmetic(prefill=True):  # prefill through the kernel's packed 4-bit rows
            assert_close_after_rounding(full, net(ids))
        ref_cache = KVCache(q.config, 2, 16, "cpu", torch.float32)  # the Q4 rows round x (helpers_int8)
        with kernel_arithmetic(prefill=True):
            net(ids[:, :11], 0, ref_cache)
        with kernel_arithmetic():
            assert_close_after_rounding(step, net(ids[:, 11:], 11, ref_cache)[:, 0])


def test_cached_blocks_rebuild_the_same_model_and_a_float_head_stays_float():
    net = quantize_model(_tiny("llama"), "q4_1")
    q = InferenceModel(net)
    blocks = quantized_blocks(net)
    assert set(blocks) == {f"blocks.{i}.{p}.blocks" for i in range(2)
                           for p in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")} | {
                               "head.blocks"}
    poisoned = _tiny("llama")
    for b in poisoned.blocks:  # proves the rebuilt layers come from the given blocks, not these weights
        b.attn.q.weight.data.zero_()
    again = InferenceModel(quantize_model(poisoned, "q4_1", blocks=blocks))
    ids = torch.arange(10).view(1, 10)
    with torch.no_grad():
        assert again(ids).equal(q(ids))
    float_head = quantize_model(_tiny("llama"), "q8_0", head=None)
    assert float_head.head is None and weight_format(float_head) == "q8_0"


def test_quantized_models_refuse_training_and_lora():
    model = quantize_model(_tiny("llama"), "q8_0")
    model.train()
    with pytest.raises(RuntimeError, match="inference only"):
        model(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        apply_lora(model, rank=4, alpha=8)


@pytest.fixture(scope="module")
def stories():
    cfg, _ = read_config(STORIES)
    return cfg, InferenceModel(load_weights(STORIES, cfg, device="cpu", dtype=torch.float32))


# Relative RMS error of the logits over 2 x 48 random tokens, measured 0.0043 (q8_0, 0.0029 of it
# with a float head), 0.052 (q4_1) and 0.056 (q4_0) on stories260K (its 172-wide down projection
# stays float). Each weight moves by up to d/2 with d = amax/127 (q8_0) or about amax/8 (4-bit),
# so 4-bit error is ~10-16x q8_0's; the bounds are about twice the measurements.
LOGIT_RMS_BOUND = {"q8_0": 0.01, "q4_1": 0.11, "q4_0": 0.12}


@pytest.mark.parametrize("qtype", QTYPES)
def test_stories260k_quantized_logits_stay_close_to_float(stories, qtype):
    cfg, ref = stories
    q = InferenceModel(quantize_model(load_weights(STORIES, cfg, device="cpu", dtype=torch.float32), qtype))
    ids = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref(ids), q(ids)
    rel = ((got - want).pow(2).mean() / want.pow(2).mean()).sqrt().item()
    assert 0 < rel < LOGIT_RMS_BOUND[qtype]


# ---- loading quantized: api, cache, registry, UI handler, CLI ----------------------------------------
@pytest.fixture
def home(tmp_path, monkeypatch):
    """A throwaway LMSTUDIO_LITE_HOME (the quant cache goes under it) with a writable stories260K copy."""
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "models").mkdir(parents=True)
    shutil.copytree(STORIES, tmp_path / "home" / "models" / "stories260K")
    for f in (tmp_path / "home" / "models" / "stories260K").iterdir():
        f.chmod(0o644)  # the shared copy is read-only
    return tmp_path / "home"


def test_load_model_quantizes_once_then_reads_the_cache(home, monkeypatch):
    from lmstudio_lite import load_model
    from lmstudio_lite.model import quant
    from lmstudio_lite.paths import cache_dir

    folder = home / "models" / "stories260K"
    first = load_model(folder, device="cpu", dtype="float32", quant="q4_0")
    info = first.info()
    assert (info["quant"], info["quant_cache"]) == ("q4_0", "written")
    files = list((cache_dir() / "quant").glob("stories260K-*-q4_0-*.safetensors"))
    assert len(files) == 1
    float_info = load_model(folder, device="cpu", dtype="float32").info()
    assert (float_info["quant"], float_info["quant_cache"]) == ("f32", "none")
    assert info["weights_bytes"] < 0.6 * float_info["weights_bytes"]
    # the kernel packs 4-bit matrices (and the Q8_0 head) in place on AVX-512 VNNI: nothing held twice
    own = quant.weight_bytes(first.model.net)
    packed = [m for m in first.model.net.modules() if isinstance(m, quant.QuantLinear) and m.packed]
    assert bool(packed) == bool(native.decode_library().lml_x16())
    assert info["weights_bytes"] == own

    def no_quantizing(*a, **k):
        raise AssertionError("quantized again despite the cache")

    with monkeypatch.context() as patch:
        patch.setattr(quant, "quantize", no_quantizing)
        second = load_model(folder, device="cpu", dtype="float32", quant="q4_0")
    assert second.info()["quant_cache"] == "hit"
    ids = torch.tensor([[1, 403, 407, 261]])
    assert second.logits(ids).equal(first.logits(ids))
    os.utime(folder / "model.safetensors", ns=(1, 1))  # a changed source: a new key, quantized afresh
    assert load_model(folder, device="cpu", dtype="float32", quant="q4_0").info()["quant_cache"] == "written"
    now = list((cache_dir() / "quant").glob("stories260K-*-q4_0-*.safetensors"))
    assert len(now) == 1 and now != files  # the stale file went, so re-saved models do not pile up


def test_bad_quant_is_a_clear_error():
    from lmstudio_lite import load_model

    with pytest.raises(ValueError, match="unknown quantization 'q4_k'.*q8_0, q4_0, q4_1"):
        load_model(STORIES, device="cpu", dtype="float32", quant="q4_k")


def test_q8_0_greedy_equals_float32_on_stories260k(home):
    from lmstudio_lite import load_model

    refs = json.loads((STORIES.parent / "stories260K-reference.json").read_text())
    q8 = load_model(STORIES, device="cpu", dtype="float32", quant="q8_0")
    for prompt in [k for k in refs if not k.startswith("_")]:
        stream = q8.generate(prompt, max_new_tokens=32, temperature=0, ignore_eos=True)
        "".join(stream)
        assert stream.new_ids == refs[prompt]["new_ids"][:32]  # the float32 model's greedy tokens


def test_registry_ui_handler_and_status_line_carry_the_format(home):
    from fixtures_models import make_services
    from lmstudio_lite.ui import models_tab as mt

    svc = make_services(home)
    assert mt.quant_value(svc) == "float"
    msg = mt.load_model(svc, "stories260K", "q8_0")
    assert "Loaded **stories260K** (q8_0 on" in msg and "MB of weights" in msg
    assert svc.registry.current.info()["quant"] == "q8_0" and mt.quant_value(svc) == "q8_0"
    assert "stories260K (q8_0, " in svc.registry.status_line()
    assert "(f32 on" in mt.load_model(svc, "stories260K", "float")  # same folder, other format: reloaded
    assert "stories260K (f32, " in svc.registry.status_line()
    assert "unknown quantization" in mt.load_model(svc, "stories260K", "q2_k")
    assert svc.registry.current.info()["quant"] == "f32"  # a failed load keeps the model


@pytest.mark.parametrize("command", ["app", "serve", "chat", "generate"])
def test_quant_flag_parses_on_every_model_command(command, capsys):
    from lmstudio_lite.cli import QUANT_CHOICES, build_parser

    assert QUANT_CHOICES == QTYPES
    base = ["--model", "m", "--prompt", "p"] if command == "generate" else []
    parser = build_parser(command)
    assert parser.parse_args(base + ["--quant", "q4_1"]).quant == "q4_1"
    assert parser.parse_args(base).quant is None
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--quant", "q3"])
    assert "invalid choice: 'q3'" in capsys.readouterr().err


def test_one_cache_file_serves_float32_and_bfloat16_loads(home):
    from lmstudio_lite import load_model

    folder = home / "models" / "stories260K"
    f32 = load_model(folder, device="cpu", dtype="float32", quant="q8_0")
    bf16 = load_model(folder, device="cpu", dtype="bfloat16", quant="q8_0")
    assert (f32.info()["quant_cache"], bf16.info()["quant_cache"]) == ("written", "hit")
    assert bf16.model.net.tok_emb.weight.dtype == torch.bfloat16 and bf16.info()["quant"] == "q8_0"
    ids = torch.tensor([[1, 403, 407, 261, 300]])
    want, got = f32.logits(ids), bf16.logits(ids)
    # bf16 keeps 8 bits of mantissa: activations round by up to 2^-9 relative at every op; measured 0.0073.
    assert ((got - want).pow(2).mean() / want.pow(2).mean()).sqrt() < 0.02
    stream = bf16.generate("Once upon a time", max_new_tokens=8, temperature=0)
    assert len("".join(stream)) > 0 and stream.stats["new_tokens"] == 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("qtype", QTYPES)
def test_cuda_quantize_makes_the_same_bytes(qtype):
    w = torch.randn(1024, 2048, generator=torch.Generator().manual_seed(0))  # 65,536 blocks
    assert quantize(w.cuda(), qtype).cpu().equal(quantize(w, qtype))
