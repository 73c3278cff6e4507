"""Other apps' model libraries, listed read-only: folder trees that mimic LM Studio's and Ollama's
layouts, with tiny GGUF files written by gguf's own writer."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")

from helpers_gguf import tiny_gguf  # noqa: E402
from lmstudio_lite.cli import main  # noqa: E402
from lmstudio_lite.paths import app_paths  # noqa: E402
from lmstudio_lite.services.registry import Registry  # noqa: E402
from lmstudio_lite.services.libraries import LibraryRoots, add_model_dir, extra_dirs, scan  # noqa: E402


def ollama_model(root: Path, name: str, tag: str, host: str = "registry.ollama.ai", namespace: str = "library"):
    """Ollama's store: the blob is content-addressed, the manifest points at it by digest."""
    blob = tiny_gguf(root / "blobs" / "tmp.gguf")
    digest = hashlib.sha256(blob.read_bytes()).hexdigest() + name  # unique per model in this tree
    final = root / "blobs" / f"sha256-{digest}"
    blob.rename(final)
    manifest = root / "manifests" / host / namespace / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": final.stat().st_size},
    ]}))
    return final


@pytest.fixture
def home(tmp_path):
    """A fake user home with LM Studio's two folders and an Ollama store."""
    h = tmp_path / "home"
    tiny_gguf(h / ".lmstudio/models/lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf")
    tiny_gguf(h / ".lmstudio/models/lmstudio-community/SmolLM2-135M-Instruct-GGUF/mmproj-model-f16.gguf")
    tiny_gguf(h / ".cache/lm-studio/models/TheBloke/tiny-GGUF/tiny.Q8_0.gguf", arch="gpt2", ctx=64)
    ollama_model(h / ".ollama/models", "smollm2", "135m")
    ollama_model(h / ".ollama/models", "mymodel", "latest", namespace="someone")
    (h / ".ollama/models/manifests/registry.ollama.ai/library/broken").mkdir(parents=True)
    (h / ".ollama/models/manifests/registry.ollama.ai/library/broken/latest").write_text("{not json")
    return h


def roots_for(home: Path, extra: list[Path] = ()) -> LibraryRoots:
    return LibraryRoots(lmstudio=[home / ".lmstudio/models", home / ".cache/lm-studio/models"],
                        ollama=[home / ".ollama/models"], extra=list(extra))


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_lm_studio_and_ollama_layouts_are_listed_by_their_names(home):
    found = {m.name: m for m in scan(roots_for(home))}
    assert set(found) == {"lmstudio-community/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M",
                          "TheBloke/tiny-GGUF/tiny.Q8_0", "smollm2:135m", "someone/mymodel:latest"}
    assert found["smollm2:135m"].source == "ollama"
    assert found["smollm2:135m"].path.name.startswith("sha256-")  # the blob, not the manifest
    assert found["TheBloke/tiny-GGUF/tiny.Q8_0"].source == "lm-studio"


def test_registry_describes_library_models_from_their_headers_and_changes_nothing(home, tmp_path):
    before = snapshot(home)
    reg = Registry(app_paths(tmp_path / "app"), bundled=tmp_path / "none", hf_dirs=[], libraries=roots_for(home))
    entries = {e.name: e for e in reg.list()}
    gpt2 = entries["TheBloke/tiny-GGUF/tiny.Q8_0"]
    assert (gpt2.family, gpt2.context_length, gpt2.parameters, gpt2.format, gpt2.dtype) == ("gpt2", 64, 40, "gguf", "F32")
    assert entries["smollm2:135m"].error is None
    with pytest.raises(PermissionError, match="ollama"):
        reg.delete("smollm2:135m")
    assert reg.resolve("smollm2:135m") == Path(entries["smollm2:135m"].path)
    assert snapshot(home) == before  # read-only: nothing written, moved or touched


def test_a_truncated_gguf_lists_with_its_error(home, tmp_path):
    bad = home / ".lmstudio/models/x/y/cut.gguf"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    reg = Registry(app_paths(tmp_path / "app"), bundled=tmp_path / "none", hf_dirs=[], libraries=roots_for(home))
    entry = reg.find("x/y/cut")
    assert entry.error and "not a readable GGUF" in entry.error


def test_added_folders_come_from_settings_and_the_environment(tmp_path, monkeypatch):
    app = tmp_path / "app"
    app.mkdir()
    mine, env_dir = tmp_path / "mine", tmp_path / "env"
    tiny_gguf(mine / "sub" / "a.gguf")
    tiny_gguf(env_dir / "b.gguf")
    with pytest.raises(ValueError, match="not a folder"):
        add_model_dir(app, str(tmp_path / "missing"))
    assert add_model_dir(app, str(mine)) == [mine]
    assert add_model_dir(app, str(mine)) == [mine]  # idempotent
    monkeypatch.setenv("LMSTUDIO_LITE_MODEL_DIRS", str(env_dir))
    assert extra_dirs(app) == [env_dir, mine]
    names = {m.name for m in scan(LibraryRoots(extra=extra_dirs(app)))}
    assert names == {"sub/a", "b"}
    (app / "settings.json").write_text("[broken")
    assert extra_dirs(app) == [env_dir]  # a broken settings file is ignored, not fatal


def test_cli_models_lists_libraries(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path / "app"))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.delenv("LMSTUDIO_LITE_MODEL_DIRS", raising=False)
    assert main(["models", "--json"]) == 0
    listed = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert listed["smollm2:135m"]["source"] == "ollama"
    assert listed["TheBloke/tiny-GGUF/tiny.Q8_0"]["family"] == "gpt2"
    assert os.path.isfile(listed["smollm2:135m"]["path"])


def test_gguf_files_in_the_hugging_face_cache_list_by_repo(tmp_path):
    hub = tmp_path / "hub"
    tiny_gguf(hub / "models--bartowski--SmolLM2-GGUF" / "snapshots" / "abc123" / "SmolLM2-Q8_0.gguf")
    reg = Registry(app_paths(tmp_path / "app"), bundled=tmp_path / "none", hf_dirs=[hub], libraries=LibraryRoots())
    entry = reg.find("bartowski/SmolLM2-GGUF/SmolLM2-Q8_0")
    assert (entry.source, entry.format, entry.family) == ("hf-cache", "gguf", "llama")


def test_the_fast_header_reader_agrees_with_gguf_reader_on_an_export(tmp_path):
    from lmstudio_lite.checkpoints.gguf_export import export_gguf
    from lmstudio_lite.services.libraries import read_gguf_header
    from shared_data import STORIES

    path = export_gguf(STORIES, tmp_path / "s.gguf", "q8_0")
    meta, params = read_gguf_header(path)
    r = gguf.GGUFReader(path)
    assert params == sum(int(t.n_elements) for t in r.tensors)
    for key in ("general.architecture", "llama.context_length", "llama.rope.freq_base", "tokenizer.ggml.model",
                "tokenizer.ggml.bos_token_id", "general.file_type"):
        assert meta[key] == r.fields[key].contents(), key
    assert meta["tokenizer.ggml.tokens"] is None  # arrays are skipped, not parsed
