"""GGUF export: read the written file back with gguf's own reader and hold every tensor and key
against the model folder it came from (llama.cpp's own check is bench/gguf_export_check.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from lmstudio_lite.checkpoints.errors import CheckpointError  # noqa: E402
from lmstudio_lite.checkpoints.gguf_export import export_gguf, permute, unpermute  # noqa: E402
from lmstudio_lite.cli import main  # noqa: E402
from lmstudio_lite.paths import bundled_models_dir  # noqa: E402
from shared_data import STORIES  # noqa: E402

TINY = bundled_models_dir() / "lmstudio-lite-tiny"


def read(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> (type, float32 array [out, in]))."""
    r = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {}
    for t in r.tensors:
        data = np.array(t.data) if t.tensor_type == T.F32 else dequantize(np.array(t.data), t.tensor_type)
        tensors[t.name] = (t.tensor_type, data.reshape([int(n) for n in reversed(t.shape)]), np.array(t.data))
    return meta, tensors


def hf_view(name: str, arr: np.ndarray, meta: dict) -> torch.Tensor:
    """A GGUF llama tensor back in Hugging Face's layout (q and k un-permuted)."""
    t = torch.from_numpy(arr.copy())
    if ".attn_q." in name:
        return unpermute(t, meta["llama.attention.head_count"])
    if ".attn_k." in name:
        return unpermute(t, meta["llama.attention.head_count_kv"])
    return t


LLAMA_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
               "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
               "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_name(gname: str) -> str:
    if gname.startswith("blk."):
        _, i, part, suffix = gname.split(".")
        return f"model.layers.{i}.{LLAMA_NAMES[part]}.{suffix}"
    return {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}[gname]


def test_permute_round_trips_and_pairs_rotate_half_halves():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)  # 2 heads of 8 rows
    p = permute(w, 2)
    assert torch.equal(unpermute(p, 2), w)
    # llama.cpp's pairs: row 2j of a head is rotate-half row j, row 2j+1 is row j + head_dim/2.
    assert torch.equal(p[0], w[0]) and torch.equal(p[1], w[4]) and torch.equal(p[2], w[1])
    assert torch.equal(p[8 + 1], w[8 + 4])


def test_f32_export_of_the_bundled_model_holds_its_weights_tokenizer_and_template(tmp_path):
    out = export_gguf(TINY, tmp_path / "tiny.gguf", "f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]  # no temp file left behind
    meta, tensors = read(out)
    cfg = json.loads((TINY / "config.json").read_text())
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == cfg["num_hidden_layers"]
    assert meta["llama.context_length"] == cfg["max_position_embeddings"]
    assert meta["llama.embedding_length"] == cfg["hidden_size"]
    assert meta["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert meta["llama.rope.freq_base"] == cfg["rope_theta"]
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(cfg["rms_norm_eps"])
    tok = json.loads((TINY / "tokenizer.json").read_text())
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"][300] == next(k for k, v in tok["model"]["vocab"].items() if v == 300)
    assert meta["tokenizer.ggml.merges"][:2] == [" ".join(m) for m in tok["model"]["merges"][:2]]
    assert meta["tokenizer.ggml.token_type"][0] == int(gguf.TokenType.CONTROL)  # <|endoftext|>
    assert meta["tokenizer.ggml.eos_token_id"] == 0 and meta["tokenizer.ggml.eot_token_id"] == 2
    assert meta["tokenizer.ggml.add_bos_token"] is False
    template = json.loads((TINY / "tokenizer_config.json").read_text())["chat_template"]
    assert meta["tokenizer.chat_template"] == template
    state = load_file(TINY / "model.safetensors")
    assert "output.weight" not in tensors  # tied head: llama.cpp reuses token_embd
    assert len(tensors) == len(state)
    for name, (qtype, arr, _) in tensors.items():
        assert qtype == T.F32
        torch.testing.assert_close(hf_view(name, arr, meta), state[hf_name(name)], rtol=0, atol=0)


def test_sentencepiece_vocab_scores_replay_the_merge_order_and_bos_is_added(tmp_path):
    meta, tensors = read(export_gguf(STORIES, tmp_path / "s.gguf"))
    tok = json.loads((STORIES / "tokenizer.json").read_text())
    vocab, merges = tok["model"]["vocab"], tok["model"]["merges"]
    assert meta["tokenizer.ggml.model"] == "llama"
    scores = meta["tokenizer.ggml.scores"]
    ranked = [vocab["".join(m) if isinstance(m, list) else m.replace(" ", "")] for m in merges]
    assert all(scores[a] > scores[b] for a, b in zip(ranked, ranked[1:]) if a != b)
    types = meta["tokenizer.ggml.token_type"]
    assert types[vocab["<0x41>"]] == int(gguf.TokenType.BYTE)
    assert types[0] == int(gguf.TokenType.UNKNOWN) and types[1] == int(gguf.TokenType.CONTROL)
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    state = load_file(STORIES / "model.safetensors")
    for name, (_, arr, _) in tensors.items():  # GQA: k un-permutes with its 4 KV heads
        torch.testing.assert_close(hf_view(name, arr, meta), state[hf_name(name)], rtol=0, atol=0)


@pytest.mark.parametrize("quant", ["q8_0", "q4_0", "bf16"])
def test_quantized_bytes_equal_gguf_quantize_with_llama_cpp_type_policy(tmp_path, quant):
    f32 = read(export_gguf(STORIES, tmp_path / "f.gguf"))[1]
    meta, tensors = read(export_gguf(STORIES, tmp_path / "q.gguf", quant))
    assert meta["general.file_type"] == {"q8_0": 7, "q4_0": 2, "bf16": 32}[quant]
    for name, (qtype, _, raw) in tensors.items():
        ref = f32[name][1]
        if ref.ndim == 1 or ref.shape[-1] % 32:  # norms, and ffn_down's 172-wide rows
            want = T.F32 if quant != "bf16" or ref.ndim == 1 else T.BF16
        elif quant == "q4_0" and name == "token_embd.weight":
            want = T.Q8_0
        else:
            want = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "bf16": T.BF16}[quant]
        assert qtype == want, name
        if qtype != T.F32:
            expected = quantize(ref, qtype)
            assert raw.tobytes() == expected.tobytes(), name


def test_gpt2_export_fuses_qkv_and_keeps_positions(tmp_path):
    from lmstudio_lite.checkpoints.folder import save_folder
    from lmstudio_lite.checkpoints.tokenizer import Tokenizer
    from lmstudio_lite.model.config import ModelConfig
    from lmstudio_lite.model.transformer import Transformer

    tok = Tokenizer.from_folder(TINY)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(family="gpt2", vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=64,
                                    d_ff=128, max_seq_len=64, act="gelu_new"))
    model.init_weights(std=0.2)
    folder = save_folder(model, tmp_path / "g", tokenizer=tok)
    meta, tensors = read(export_gguf(folder, tmp_path / "g.gguf"))
    state = load_file(folder / "model.safetensors")
    assert meta["general.architecture"] == "gpt2" and meta["gpt2.context_length"] == 64
    np.testing.assert_array_equal(tensors["blk.1.attn_qkv.weight"][1], state["transformer.h.1.attn.c_attn.weight"].T)
    np.testing.assert_array_equal(tensors["blk.0.attn_qkv.bias"][1], state["transformer.h.0.attn.c_attn.bias"])
    np.testing.assert_array_equal(tensors["blk.0.ffn_up.weight"][1], state["transformer.h.0.mlp.c_fc.weight"].T)
    np.testing.assert_array_equal(tensors["position_embd.weight"][1], state["transformer.wpe.weight"])
    assert tensors["blk.0.attn_norm.bias"][1].shape == (64,)


def test_bad_requests_get_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="q4_0"):
        export_gguf(TINY, tmp_path / "x.gguf", "q3")
    with pytest.raises(ValueError, match=r"\.gguf"):
        export_gguf(TINY, tmp_path / "x.bin")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="config.json"):
        export_gguf(broken, tmp_path / "x.gguf")

def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    import errno

    from lmstudio_lite.checkpoints import gguf_export

    def half_write(writer, path):
        Path(path).write_bytes(b"GGUF partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "keep.gguf"
    target.write_bytes(b"old")
    monkeypatch.setattr(gguf_export, "_write_file", half_write)
    with pytest.raises(CheckpointError, match=r"no space left on device: \d+\.\d MB needed"):
        export_gguf(STORIES, target, "f32")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.gguf"]


def test_cli_export_and_its_errors(tmp_path, capsys):
    assert main(["export", str(STORIES), "--gguf", str(tmp_path / "s.gguf"), "--quant", "q8_0"]) == 0
    assert "q8_0" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "s.gguf"), "--gguf", str(tmp_path / "t.gguf")]) == 2
    assert "not a model folder" in capsys.readouterr().err


def services_in(home: Path, shared: bool = False):
    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.services.registry import Registry
    from lmstudio_lite.services import Services
    from lmstudio_lite.services.libraries import LibraryRoots

    paths = app_paths(home).ensure()
    return Services(paths, Registry(paths, hf_dirs=[], libraries=LibraryRoots()), shared=shared)


def test_export_service_writes_into_the_models_folder_where_the_file_lists(tmp_path):
    from lmstudio_lite.services.exports import export_model, export_run_model

    services = services_in(tmp_path / "app")
    result = export_model(services, "lmstudio-lite-tiny", "q8_0")
    assert result.ok, result.message
    assert result.path == services.paths.models / "exports" / "lmstudio-lite-tiny-q8_0.gguf"
    entry = services.registry.find("exports/lmstudio-lite-tiny-q8_0")
    assert (entry.source, entry.format, entry.family, entry.dtype) == ("user", "gguf", "llama", "Q8_0")
    assert "Ollama" in result.message
    missing = export_model(services, "no-such-model")
    assert not missing.ok and "no local model named 'no-such-model'" in missing.message
    assert not export_run_model(services, None).ok
    loaded = services.registry.load(str(STORIES))  # a folder outside the lists, shown in the tab as loaded
    assert export_model(services, loaded.name).ok
    assert export_run_model(services, {"model_path": str(STORIES)}).path.name == "stories260K-f32.gguf"


def test_a_shared_app_refuses_typed_paths_but_exports_listed_models(tmp_path):
    from lmstudio_lite.services.exports import export_model

    services = services_in(tmp_path / "app", shared=True)
    refused = export_model(services, str(STORIES))
    assert not refused.ok and "no local model named" in refused.message
    assert export_model(services, "lmstudio-lite-tiny").ok


def test_the_training_tab_exports_the_finished_run(tmp_path):
    import shutil

    import gradio as gr

    from lmstudio_lite.ui import train_tab

    services = services_in(tmp_path / "app")
    run_model = shutil.copytree(STORIES, services.paths.models / "my-run")

    class FinishedJobs:  # the job runner's public surface the tab reads
        def status(self):
            return {"state": "finished", "run_id": "r1", "model_path": str(run_model), "history": [], "log": []}

        def list_runs(self):
            return [{"run_id": "r1", "outcome": "finished", "model_path": str(run_model), "spec": {}}]

    services.jobs = FinishedJobs()
    with gr.Blocks() as demo:
        with gr.Tab("Train"):
            train_tab.build(services)
    export = next(f.fn for f in demo.fns.values() if f.fn.__name__ == "export" and "train_tab" in f.fn.__module__)
    message, path = export("q8_0", "r1")  # the run chosen in the tab's runs list
    assert path == str(services.paths.models / "exports" / "my-run-q8_0.gguf"), message
    assert gguf.GGUFReader(path).fields["general.file_type"].contents() == 7


def random_folder(tmp_path: Path, model_type: str, **cfg) -> Path:
    from lmstudio_lite.checkpoints.folder import save_folder
    from lmstudio_lite.checkpoints.tokenizer import Tokenizer
    from lmstudio_lite.model.config import ModelConfig
    from lmstudio_lite.model.transformer import Transformer

    tok = Tokenizer.from_folder(TINY)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(family="llama", vocab_size=tok.vocab_size, n_layer=1, n_head=4, n_kv_head=2,
                                    d_model=64, d_ff=96, max_seq_len=64, extra={"model_type": model_type}, **cfg))
    model.init_weights(std=0.2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()  # biases start at zero: make the permutation visible
    return save_folder(model, tmp_path / model_type, tokenizer=tok, model_type=model_type)


def test_qwen2_is_not_permuted_and_llama_biases_are(tmp_path):
    qwen = random_folder(tmp_path, "qwen2", qkv_bias=True)
    meta, tensors = read(export_gguf(qwen, tmp_path / "q.gguf"))
    state = load_file(qwen / "model.safetensors")
    assert meta["general.architecture"] == "qwen2" and meta["qwen2.attention.head_count_kv"] == 2
    np.testing.assert_array_equal(tensors["blk.0.attn_q.bias"][1], state["model.layers.0.self_attn.q_proj.bias"])
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight"][1], state["model.layers.0.self_attn.k_proj.weight"])
    llama = random_folder(tmp_path / "l", "llama", qkv_bias=True, o_bias=True,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    meta, tensors = read(export_gguf(llama, tmp_path / "l.gguf"))
    state = load_file(llama / "model.safetensors")
    for p, heads in (("q", 4), ("k", 2)):
        ours = torch.from_numpy(tensors[f"blk.0.attn_{p}.bias"][1].copy())
        assert torch.equal(unpermute(ours, heads), state[f"model.layers.0.self_attn.{p}_proj.bias"])
        assert not torch.equal(ours, state[f"model.layers.0.self_attn.{p}_proj.bias"])
    from lmstudio_lite.model.layers import rope_inv_freq

    # llama.cpp divides each frequency by its factor: that must be our scaled RoPE exactly
    scaling = json.loads((llama / "config.json").read_text())["rope_scaling"]
    want = rope_inv_freq(16, 10000.0, None) / rope_inv_freq(16, 10000.0, scaling)
    torch.testing.assert_close(torch.from_numpy(tensors["rope_freqs.weight"][1].copy()), want)
    assert want.max() == 8.0 and 1.0 < want.min() < 8.0  # full-factor and smoothed dims both covered
