"""Start-up housekeeping and a home that cannot be written."""
from __future__ import annotations

import os
import time

import pytest

from lmstudio_lite.paths import app_paths
from lmstudio_lite.services.housekeeping import ORPHAN_AGE_S, clean_orphaned_tmp


def age(path, seconds: float):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_orphaned_tmp_files_and_folders_are_removed_at_start(tmp_path, monkeypatch):
    from lmstudio_lite.services import build_services

    paths = app_paths(tmp_path / "home").ensure()
    run = paths.runs / "r1"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "model.safetensors").write_bytes(b"live")
    (run / "checkpoint.tmp").mkdir()
    (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"half")
    (paths.models / "m").mkdir()
    (paths.models / "m" / "config.json.tmp").write_text("{")
    (paths.chats / ".c1.json.abc.tmp").write_text("{")
    fresh = paths.chats / ".c2.json.def.tmp"  # a save happening right now elsewhere
    fresh.write_text("{")
    for p in (run / "checkpoint.tmp", paths.models / "m" / "config.json.tmp", paths.chats / ".c1.json.abc.tmp"):
        age(p, ORPHAN_AGE_S + 60)
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(paths.home))
    build_services(load_default=False, with_jobs=False, with_chats=False)
    assert not (run / "checkpoint.tmp").exists() and not (paths.models / "m" / "config.json.tmp").exists()
    assert not (paths.chats / ".c1.json.abc.tmp").exists()
    assert fresh.exists() and (run / "checkpoint" / "model.safetensors").read_bytes() == b"live"
    assert clean_orphaned_tmp([paths.home]) == []  # nothing left that is old enough


@pytest.mark.parametrize("argv", [["models"], ["--no-browser"]])
def test_unwritable_home_is_a_one_line_error(tmp_path, monkeypatch, capsys, argv):
    from lmstudio_lite import cli

    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a folder cannot be made under a file (root ignores read-only modes)
    monkeypatch.setenv("LMSTUDIO_LITE_HOME", str(blocker / "home"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot create the app's folder") and "LMSTUDIO_LITE_HOME" in err
    assert "\n" not in err and "Traceback" not in err
