"""Atomic writes, written once (atomic.py): a failed save leaves the old file and no temp, two
writers of one file never tear it, and every saver of model files goes through it."""
from __future__ import annotations

import json
import os
import threading

import pytest
from fixtures_models import STORIES

from lmstudio_lite.atomic import write_atomic, write_json
from lmstudio_lite.checkpoints.tokenizer import Tokenizer


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_json(tmp_path / "settings.json", {"v": 1})

    def half_then_crash(tmp):
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomic(path, half_then_crash)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]


def test_concurrent_writers_of_one_file_never_tear_it(tmp_path):
    path = tmp_path / "chat.json"
    errors = []

    def writer(n):
        try:
            for i in range(30):
                write_json(path, {"writer": n, "i": i, "pad": "x" * 5000})
        except Exception as e:  # a shared temp name would make a rename fail or a file tear
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads(path.read_text())["i"] == 29
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]


def test_tokenizer_save_is_atomic(tmp_path, monkeypatch):
    tok = Tokenizer.from_folder(STORIES)
    tok.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(before)
    tok.chat_template = "{{ messages[0]['content'] }}"

    def power_cut(src, dst):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="power cut"):
        tok.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files, no temps
