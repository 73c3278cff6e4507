"""LoRA layers: an adapted model starts equal to its base, merging changes no logits,
only adapter parameters learn, and the PEFT-layout export has the right names and shapes."""
from __future__ import annotations

import json

import pytest
import torch

from lmstudio_lite.model.config import ModelConfig
from lmstudio_lite.model.layers import Linear
from lmstudio_lite.model.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora
from lmstudio_lite.model.transformer import Transformer


def tiny(family="llama") -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else 0,
                      d_model=32, d_ff=64, max_seq_len=32, tie_embeddings=family == "gpt2",
                      act="silu" if family == "llama" else "gelu_new")
    model = Transformer(cfg)
    model.init_weights(std=0.2)
    return model


def randomize_b(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.normal_(std=0.1)


IDS = torch.tensor([[1, 5, 9, 3, 7, 2, 8, 4]])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fresh_adapter_changes_nothing_and_merge_equals_applied(family):
    model = tiny(family)
    with torch.no_grad():
        base = model(IDS)
    targets = ("q", "k", "v", "o", "up", "down") + (("gate",) if family == "llama" else ())
    swapped = apply_lora(model, rank=4, alpha=8, targets=targets)
    assert len(swapped) == 2 * len(targets)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), base, rtol=0, atol=0)  # B starts at zero
        randomize_b(model)
        applied = model(IDS)
    assert (applied - base).abs().max() > 1e-3  # the adapter now does something
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(isinstance(m, Linear) for n, m in model.named_modules() if n.endswith(("attn.q", "mlp.down")))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), applied, rtol=1e-5, atol=1e-5)


def test_only_lora_parameters_get_gradients():
    model = tiny()
    apply_lora(model, rank=2, alpha=4, dropout=0.1)
    randomize_b(model)
    model(IDS).logsumexp(-1).sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert len(trainable) == 2 * 4 * 2  # a and b, q/k/v/o, two layers
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_lora_math_and_state_dict():
    torch.manual_seed(1)
    base = Linear(6, 5, bias=True)
    torch.nn.init.normal_(base.weight)
    layer = LoRALinear(base, rank=3, alpha=6)
    torch.nn.init.normal_(layer.lora_b)
    x = torch.randn(2, 4, 6)
    want = x @ base.weight + base.bias + (x @ layer.lora_a @ layer.lora_b) * 2.0
    torch.testing.assert_close(layer(x), want)
    assert layer.lora_a.shape == (6, 3) and layer.lora_b.shape == (3, 5)
    # Kaiming-uniform over fan_in = 6 (PEFT's init): |a| <= 1/sqrt(6)
    assert layer.lora_a.abs().max() <= 6 ** -0.5 + 1e-6
    model = tiny()
    apply_lora(model, 2, 4, targets=("v",))
    want = [f"blocks.{i}.attn.v.{ab}" for i in range(2) for ab in ("lora_a", "lora_b")]
    assert sorted(lora_state_dict(model)) == want


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="gate"):
        apply_lora(tiny("gpt2"), 2, 4, targets=("gate",))  # GPT-2's MLP has no gate
    with pytest.raises(ValueError, match="unknown LoRA target"):
        apply_lora(tiny(), 2, 4, targets=("qkv",))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(Linear(4, 4, False), rank=0, alpha=1)


def test_adapter_export_uses_peft_names_and_layout(tmp_path):
    from safetensors.torch import load_file

    from lmstudio_lite.training.checkpointing import save_adapter

    model = tiny()
    apply_lora(model, rank=2, alpha=4, targets=("q", "down"))
    randomize_b(model)
    out = save_adapter(model, tmp_path / "adapter", "base-model", rank=2, alpha=4, dropout=0.0)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    a = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"]
    assert a.shape == (2, 32) and b.shape == (32, 2)  # PEFT: A [r, in], B [out, r]
    torch.testing.assert_close(a, model.blocks[1].attn.q.lora_a.detach().t())
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4 and sorted(cfg["target_modules"]) == ["down_proj", "q_proj"]
    assert len(tensors) == 2 * 2 * 2


@pytest.mark.parametrize("family,targets", [("llama", ("q", "k", "v", "o", "gate", "up", "down")),
                                            ("gpt2", ("o", "up", "down"))])
def test_exported_adapter_on_the_base_in_peft_equals_the_merged_model(tmp_path, monkeypatch, family, targets):
    """Runs only where PEFT is installed: the adapter/ folder is a real PEFT adapter."""
    import peft
    import transformers as tf

    from helpers_training import make_base, write_text
    from lmstudio_lite.training.run import run_training
    from lmstudio_lite.training.spec import TrainSpec

    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path / "home"))
    base = make_base(tmp_path / "base", family=family)
    spec = TrainSpec(data=str(write_text(tmp_path / "d.txt")), base_model=str(base), steps=3, lr=1e-2,
                     batch_size=4, seq_len=32, lora_rank=4, lora_alpha=8, lora_targets=targets, eval_every=0,
                     threads=1)
    folder = run_training(spec).model_path
    ids = torch.tensor([[5, 9, 30, 41, 7, 100, 3]])
    merged = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    adapted = peft.PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(base), folder / "adapter").eval()
    plain = tf.AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-4)
        assert (plain(ids).logits - merged(ids).logits).abs().max() > 1e-3
