"""Every unusable model folder gives one clear CheckpointError naming the file."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from hf_models import build
from lmstudio_lite.checkpoints.errors import CheckpointError
from lmstudio_lite.checkpoints.folder import load_weights, read_config

from shared_data import STORIES  # noqa: E402


@pytest.fixture()
def good(tmp_path):
    folder = tmp_path / "m"
    build("llama-gqa-untied").save_pretrained(folder)
    return folder


def expect_error(folder, *fragments):
    with pytest.raises(CheckpointError) as info:
        read_config(folder)
        load_weights(folder)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_missing_folder(tmp_path):
    expect_error(tmp_path / "nope", "does not exist")


def test_missing_config(good):
    (good / "config.json").unlink()
    expect_error(good, "config.json", "missing")


def test_malformed_config(good):
    (good / "config.json").write_text("{not json")
    expect_error(good, "config.json", "not valid JSON")


def test_unknown_model_type(good):
    cfg = json.loads((good / "config.json").read_text())
    cfg["model_type"] = "bert"
    (good / "config.json").write_text(json.dumps(cfg))
    expect_error(good, "config.json", "'bert' is not supported")


def test_missing_weights(good):
    (good / "model.safetensors").unlink()
    expect_error(good, "model.safetensors", "missing")


def test_corrupt_safetensors(good):
    (good / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    expect_error(good, "model.safetensors", "not a valid safetensors")


def test_truncated_safetensors(good):
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_error(good, "model.safetensors")


def test_shape_mismatch(good):
    cfg = json.loads((good / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (good / "config.json").write_text(json.dumps(cfg))
    expect_error(good, "model.safetensors", "has shape", "config.json implies")


def test_missing_tensor(good):
    from safetensors.torch import load_file, save_file

    state = load_file(good / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, good / "model.safetensors")
    expect_error(good, "model.layers.1.mlp.up_proj.weight", "missing")


def test_only_pickle_weights_is_refused_without_unpickling(tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    shutil.copytree(STORIES, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never be called"))
    expect_error(folder, "pytorch_model.bin", "pickle")


def test_missing_shard(tmp_path):
    folder = tmp_path / "sharded"
    build("qwen2").save_pretrained(folder, max_shard_size="60KB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    expect_error(folder, shard.name, "missing")


def test_cli_reports_one_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    r = subprocess.run([sys.executable, "-m", "lmstudio_lite", "generate", "--model", str(folder), "--prompt", "hi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "config.json" in r.stderr and "not supported" in r.stderr
