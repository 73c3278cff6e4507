"""Downloads from the Hub, against a local server that answers the Hub's file API (HF_ENDPOINT)."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from fake_hub import COMMIT, FakeHub
from helpers_gguf import tiny_gguf
from lmstudio_lite.services import download as dl

REPO = "acme/tiny-GGUF"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("src")
    big = tiny_gguf(tmp / "big.gguf", extra_floats=400_000).read_bytes()  # ~1.6 MB: many 64 KB pieces
    small = tiny_gguf(tmp / "small.gguf").read_bytes()
    return {"tiny.Q8_0.gguf": big, "tiny-Q4_K_M.gguf": small, "mmproj-tiny-f16.gguf": small, "README.md": b"# tiny"}


@pytest.fixture
def hub(files, monkeypatch):
    folder_repo = {"config.json": b"{}", "model.safetensors": b"x" * 100, "tokenizer.json": b"{}", "x.bin": b"no"}
    with FakeHub({REPO: files, "acme/one-GGUF": {"m.Q8_0.gguf": files["tiny-Q4_K_M.gguf"]},
                  "acme/folder": folder_repo}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_listing_shows_quant_size_and_whether_it_fits(hub, files):
    listed, commit = dl.list_files(REPO, memory_bytes=1_000_000)
    by_name = {f.name: f for f in listed}
    assert commit == COMMIT
    assert by_name["tiny.Q8_0.gguf"].size == len(files["tiny.Q8_0.gguf"])
    assert (by_name["tiny.Q8_0.gguf"].quant, by_name["tiny.Q8_0.gguf"].fits) == ("Q8_0", False)  # 1.6 MB > 1 MB
    assert (by_name["tiny-Q4_K_M.gguf"].quant, by_name["tiny-Q4_K_M.gguf"].fits) == ("Q4_K_M", True)
    assert by_name["README.md"].quant is None and by_name["README.md"].fits is None
    assert [f.name for f in dl.gguf_files(listed)] == ["tiny.Q8_0.gguf", "tiny-Q4_K_M.gguf"]


def test_download_lands_in_the_models_folder_with_its_source_and_lists(hub, files, tmp_path):
    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.services.registry import Registry
    from lmstudio_lite.services.libraries import LibraryRoots

    models = tmp_path / "models"
    seen = []
    path = dl.fetch(REPO, "tiny.Q8_0.gguf", models, progress=lambda d, t: seen.append((d, t)))
    assert path == models / "acme" / "tiny-GGUF" / "tiny.Q8_0.gguf"
    assert path.read_bytes() == files["tiny.Q8_0.gguf"]
    assert seen[-1] == (len(files["tiny.Q8_0.gguf"]),) * 2 and len(seen) > 1
    source = json.loads(path.with_name(path.name + ".source.json").read_text())
    assert (source["repo"], source["file"], source["revision"]) == (REPO, "tiny.Q8_0.gguf", COMMIT)
    reg = Registry(app_paths(tmp_path), bundled=tmp_path / "none", hf_dirs=[], libraries=LibraryRoots())
    entry = reg.find("acme/tiny-GGUF/tiny.Q8_0")
    assert (entry.source, entry.format, entry.error) == ("user", "gguf", None)
    reg.delete("acme/tiny-GGUF/tiny.Q8_0")  # a user model: deleting takes its source record too
    assert list(path.parent.iterdir()) == []


def test_an_interrupted_download_resumes_with_a_range_request(hub, files, tmp_path):
    hub.cut_after = 10 * 64 * 1024
    with pytest.raises(dl.DownloadError, match="interrupted.*resume"):
        dl.download_file(REPO, "tiny.Q8_0.gguf", tmp_path)
    part = tmp_path / REPO / "tiny.Q8_0.gguf.part"
    assert part.stat().st_size == 10 * 64 * 1024
    path = dl.download_file(REPO, "tiny.Q8_0.gguf", tmp_path)
    assert path.read_bytes() == files["tiny.Q8_0.gguf"] and not part.exists()
    assert ("GET", f"/{REPO}/resolve/main/tiny.Q8_0.gguf", f"bytes={10 * 64 * 1024}-") in hub.requests


def test_cancel_keeps_the_part_and_a_second_start_finishes(hub, files, tmp_path):
    hub.throttle_s = 0.02
    jobs = dl.Downloads(tmp_path)
    jobs.start(REPO, "tiny.Q8_0.gguf")
    version, status = jobs.wait(10)
    while status["state"] == "running" and status.get("done", 0) == 0:
        version, status = jobs.wait(10, version)
    assert jobs.cancel()
    while status["state"] == "running":
        version, status = jobs.wait(10, version)
    assert status["state"] == "cancelled" and "resume" in status["message"]
    part = tmp_path / REPO / "tiny.Q8_0.gguf.part"
    assert 0 < part.stat().st_size < len(files["tiny.Q8_0.gguf"])
    assert not (tmp_path / REPO / "tiny.Q8_0.gguf").exists()
    hub.throttle_s = 0.0
    jobs.start(REPO, "tiny.Q8_0.gguf")
    while status["state"] != "done":
        version, status = jobs.wait(10, version)
        assert status["state"] in ("running", "done"), status
    assert Path(status["path"]).read_bytes() == files["tiny.Q8_0.gguf"]


def test_not_enough_disk_is_refused_before_any_byte(hub, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 1000))
    with pytest.raises(dl.DownloadError, match="Not enough disk space"):
        dl.download_file(REPO, "tiny.Q8_0.gguf", tmp_path)
    assert not any(m == "GET" and "/resolve/" in p for m, p, _ in hub.requests)


def test_clear_messages_for_bad_names_missing_repos_and_files(hub, tmp_path):
    with pytest.raises(dl.DownloadError, match="owner/name"):
        dl.list_files("just-a-name")
    with pytest.raises(dl.DownloadError, match="No repository 'acme/nothing'"):
        dl.list_files("acme/nothing")
    with pytest.raises(dl.DownloadError, match="has no file 'nope.gguf'.*tiny.Q8_0.gguf"):
        dl.fetch(REPO, "nope.gguf", tmp_path)
    with pytest.raises(dl.DownloadError, match="2 GGUF files; choose one"):
        dl.fetch(REPO, None, tmp_path)
    with pytest.raises(dl.DownloadError, match="leaves the models folder"):
        dl.download_file(REPO, "../../../escape.gguf", tmp_path)
    assert dl.fetch("acme/one-GGUF", None, tmp_path).name == "m.Q8_0.gguf"  # the only GGUF: no choice needed


def test_a_repo_without_gguf_downloads_as_a_model_folder(hub, tmp_path):
    folder = dl.fetch("acme/folder", None, tmp_path)
    assert folder == tmp_path / "folder"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "source.json",
                                                        "tokenizer.json"]  # never the pickle


def test_offline_fails_fast_with_a_clear_message(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(dl.DownloadError, match="Cannot reach the Hugging Face Hub"):
        dl.list_files(REPO)
    assert time.monotonic() - t0 < dl.CONNECT_TIMEOUT_S + 1


def test_cli_get_downloads_and_lists_choices(hub, tmp_path, monkeypatch, capsys):
    from lmstudio_lite.cli import main

    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(tmp_path))
    assert main(["get", REPO]) == 2
    err = capsys.readouterr().err
    assert "tiny-Q4_K_M.gguf" in err and "Q4_K_M" in err
    assert main(["get", REPO, "--file", "tiny-Q4_K_M.gguf"]) == 0
    assert (tmp_path / "models" / REPO / "tiny-Q4_K_M.gguf").is_file()
    assert "saved" in capsys.readouterr().out.lower()


def test_models_tab_download_box_lists_streams_progress_and_refreshes_the_table(hub, tmp_path):
    import gradio as gr

    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.services.registry import Registry
    from lmstudio_lite.services import Services
    from lmstudio_lite.services.libraries import LibraryRoots
    from lmstudio_lite.ui import models_download, models_tab

    paths = app_paths(tmp_path).ensure()
    services = Services(paths, Registry(paths, bundled=tmp_path / "none", hf_dirs=[], libraries=LibraryRoots()),
                        downloads=dl.Downloads(paths.models, memory_bytes=1_000_000))
    update, msg = models_download.list_choices(services, REPO)
    assert update["value"] == "tiny-Q4_K_M.gguf"  # the first one that fits
    assert ("tiny.Q8_0.gguf · Q8_0 · 1.6 MB · too big for memory", "tiny.Q8_0.gguf") in update["choices"]
    assert "⚠" in models_download.list_choices(services, "acme/none")[1]
    with gr.Blocks() as demo:
        models_tab.build(services)
    start = next(f.fn for f in demo.fns.values()
                 if f.fn.__name__ == "start" and f.fn.__module__.endswith("models_download"))
    steps = list(start(REPO, "tiny.Q8_0.gguf"))
    final = steps[-1]
    assert final[0].startswith("✅") and "acme/tiny-GGUF/tiny.Q8_0" in final[2]["name"].tolist()
    assert "already" not in final[0]
    again = list(start("not a repo", None))
    assert again[-1][0].startswith("⚠") and "owner/name" in again[-1][0]
