"""Quantized weights: bytes identical to gguf.quants, QuantLinear against its dequantized
weight, quantized models against float, the load cache, the CLI flag."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from lmstudio_lite.checkpoints.folder import load_weights, read_config
from lmstudio_lite.model.config import ModelConfig
from lmstudio_lite.model.kv_cache import KVCache
from lmstudio_lite.model.layers import Linear
from lmstudio_lite.model.lora import apply_lora
from lmstudio_lite.model.quant import (BLOCK_BYTES, QTYPES, QuantLinear, dequantize, quantize, quantize_model,
                                       quantized_blocks, weight_format)
from lmstudio_lite.model.transformer import Transformer

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
    w[6, :32] = torch.arange(32) * (127 / 31)
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
        if isinstance(m, QuantLinear) and not name.endswith("fused"):
            w = m.dequantized().t()
            if name == "head" and ref.head is None:
                ref.head = Linear(m.d_in, m.d_out, bias=False)
            ref.get_submodule(name).weight.data.copy_(w)
    return ref.eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("qtype", QTYPES)
def test_quantized_model_equals_float_model_of_dequantized_weights(family, qtype):
    model = _tiny(family)
    q = quantize_model(_tiny(family), qtype).prepare_for_inference()
    assert weight_format(q) == qtype
    assert isinstance(q.head, QuantLinear) and q.head.qtype == "q8_0"
    ref = _dequantized_copy(model, q).prepare_for_inference()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    cache = KVCache(q.config, 2, 16, "cpu", torch.float32)
    with torch.no_grad():
        full = q(ids)
        # Exact dequantization, float32 accumulation either side: only summation order differs.
        torch.testing.assert_close(full, ref(ids), rtol=1e-5, atol=1e-5)
        q(ids[:, :11], 0, cache)
        step = q(ids[:, 11:], 11, cache)  # the lean decode step (model/decode.py)
    torch.testing.assert_close(step[:, 0], full[:, 11], rtol=1e-5, atol=1e-5)


def test_cached_blocks_rebuild_the_same_model_and_a_float_head_stays_float():
    q = quantize_model(_tiny("llama"), "q4_1").prepare_for_inference()
    blocks = quantized_blocks(q)
    assert set(blocks) == {f"blocks.{i}.{p}.blocks" for i in range(2)
                           for p in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")} | {
                               "head.blocks"}
    poisoned = _tiny("llama")
    for b in poisoned.blocks:  # proves the rebuilt layers come from the given blocks, not these weights
        b.attn.q.weight.data.zero_()
    again = quantize_model(poisoned, "q4_1", blocks=blocks).prepare_for_inference()
    ids = torch.arange(10).view(1, 10)
    with torch.no_grad():
        assert again(ids).equal(q(ids))
    float_head = quantize_model(_tiny("llama"), "q8_0", head=None).prepare_for_inference()
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
    return cfg, load_weights(STORIES, cfg, device="cpu", dtype=torch.float32).prepare_for_inference()


# Relative RMS error of the logits over 2 x 48 random tokens, measured 0.0043 (q8_0, 0.0029 of it
# with a float head), 0.052 (q4_1) and 0.056 (q4_0) on stories260K (its 172-wide down projection
# stays float). Each weight moves by up to d/2 with d = amax/127 (q8_0) or about amax/8 (4-bit),
# so 4-bit error is ~10-16x q8_0's; the bounds are about twice the measurements.
LOGIT_RMS_BOUND = {"q8_0": 0.01, "q4_1": 0.11, "q4_0": 0.12}


@pytest.mark.parametrize("qtype", QTYPES)
def test_stories260k_quantized_logits_stay_close_to_float(stories, qtype):
    cfg, ref = stories
    q = quantize_model(load_weights(STORIES, cfg, device="cpu", dtype=torch.float32), qtype)
    q.prepare_for_inference()
    ids = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = ref(ids), q(ids)
    rel = ((got - want).pow(2).mean() / want.pow(2).mean()).sqrt().item()
    assert 0 < rel < LOGIT_RMS_BOUND[qtype]
