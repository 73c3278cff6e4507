"""A bad model folder never stops the app: every config.json field is checked for type and
range, shard paths stay inside the folder, and NaN/inf weights are refused at load. Such a
folder lists with its error and loading it raises CheckpointError (never a TypeError)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from fixtures_models import STORIES

from lmstudio_lite.services.api import load_model
from lmstudio_lite.checkpoints.errors import CheckpointError
from lmstudio_lite.checkpoints.folder import read_config
from lmstudio_lite.model.config import ModelConfig

BAD_FIELDS = [  # (field, raw JSON value, words in the error)
    ("rope_scaling", '"linear"', "rope_scaling"),
    ("rope_parameters", '[1, 2]', "rope_parameters"),
    ("rope_parameters", '{"rope_type": "yarn", "factor": 4}', "'yarn' is not supported"),
    ("rope_scaling", '{"rope_type": "linear"}', "rope_scaling.factor"),
    ("rope_scaling", '{"rope_type": "linear", "factor": "2"}', "rope_scaling.factor"),
    ("vocab_size", "1e400", "vocab_size"),
    ("vocab_size", '"512"', "vocab_size"),
    ("vocab_size", "1000000000000", "vocab_size"),
    ("hidden_size", "192.0", "hidden_size"),
    ("num_hidden_layers", "-1", "n_layer"),
    ("num_attention_heads", "0", "n_head"),
    ("num_key_value_heads", "[4]", "num_key_value_heads"),
    ("intermediate_size", "true", "intermediate_size"),
    ("max_position_embeddings", "1e9", "max_position_embeddings"),
    ("rms_norm_eps", "0", "norm_eps"),
    ("rms_norm_eps", "NaN", "rms_norm_eps"),
    ("rope_theta", '"big"', "rope_theta"),
    ("tie_word_embeddings", '"yes"', "tie_word_embeddings"),
    ("attention_bias", "1", "attention_bias"),
    ("hidden_act", "null", "hidden_act"),
    ("model_type", '["llama"]', "model_type"),
    ("head_dim", "7.5", "head_dim"),
]


def bad_copy(tmp_path, field: str, raw: str, name: str = "bad"):
    """A copy of stories260K whose config.json sets ``field`` to the raw JSON text ``raw``."""
    folder = shutil.copytree(STORIES, tmp_path / name)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[field] = "__RAW__"
    (folder / "config.json").write_text(json.dumps(cfg).replace('"__RAW__"', raw))
    return folder


@pytest.mark.parametrize("field,raw,words", BAD_FIELDS)
def test_bad_field_is_a_checkpoint_error_naming_it(tmp_path, field, raw, words):
    folder = bad_copy(tmp_path, field, raw)
    with pytest.raises(CheckpointError) as info:
        read_config(folder)
    assert "config.json" in str(info.value) and words in str(info.value)
    with pytest.raises(CheckpointError):
        load_model(folder, device="cpu", dtype="float32")


def test_model_config_checks_types_when_built_directly():
    base = dict(family="llama", vocab_size=512, n_layer=2, n_head=4, d_model=64, d_ff=128, max_seq_len=64)
    ModelConfig(**base)
    for field, value in [("d_model", 64.0), ("vocab_size", float("inf")), ("n_layer", True),
                         ("qkv_bias", "no"), ("rope_scaling", "linear"), ("act", "swish"), ("norm_eps", -1.0)]:
        with pytest.raises(ValueError, match=field):
            ModelConfig(**{**base, field: value})


def test_bad_folders_list_with_their_error_and_the_app_still_starts(tmp_path, capsys, monkeypatch):
    from lmstudio_lite import cli
    from lmstudio_lite.services import build_services

    home = tmp_path / "home"
    models = home / "models"
    models.mkdir(parents=True)
    for i, (field, raw, _) in enumerate(BAD_FIELDS[:10]):
        bad_copy(models.parent / "staging", field, raw, f"bad{i}")
        shutil.move(str(models.parent / "staging" / f"bad{i}"), models / f"bad{i}")
    shutil.copytree(STORIES, models / "good")
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(home))
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.count("[") >= 10 and "good" in out  # each bad folder listed with [its error]
    services = build_services(model=str(models / "bad0"), device="cpu", dtype="float32",
                              with_jobs=False, with_chats=False)
    assert services.registry.current is None and "rope_scaling" in services.registry.last_error
    entries = {e.name: e for e in services.registry.list()}
    assert entries["good"].error is None and all(entries[f"bad{i}"].error for i in range(10))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", 7])
def test_index_shards_must_stay_inside_the_folder(tmp_path, shard):
    folder = shutil.copytree(STORIES, tmp_path / "m")
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": shard}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as info:
        load_model(folder, device="cpu", dtype="float32")
    assert "index.json" in str(info.value)
    assert "outside the model folder" in str(info.value) or "file names" in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weights_are_refused_at_load(tmp_path, value):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(STORIES, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    name = next(n for n in state if "layers.1.mlp" in n)
    state[name] = torch.full_like(state[name], value)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="NaN or infinite") as info:
        load_model(folder, device="cpu", dtype="float32")
    assert name in str(info.value)
