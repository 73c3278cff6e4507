"""User mistakes in the Models tab read as such (D6): one clear line naming the problem, never
"Something went wrong" and never a traceback in the log."""
from __future__ import annotations

import logging
import shutil

import pytest
from fixtures_models import STORIES, make_services

from lmstudio_lite.ui.models_tab import import_folder


@pytest.fixture
def services(tmp_path):
    return make_services(tmp_path / "home")


def assert_worded(message: str, caplog, *expected: str):
    assert message.startswith("⚠") and "\n" not in message, message
    assert "Something went wrong" not in message and "Error" not in message, message
    for word in expected:
        assert word in message, message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], "a traceback was logged"


def test_duplicate_import(services, tmp_path, caplog):
    src = shutil.copytree(STORIES, tmp_path / "stories")
    assert import_folder(services, str(src)).startswith("Imported")
    assert_worded(import_folder(services, str(src)), caplog, "already exists", "'stories'")


def test_missing_folder(services, tmp_path, caplog):
    assert_worded(import_folder(services, str(tmp_path / "nowhere")), caplog, "no folder", "nowhere")


def test_folder_without_config(services, tmp_path, caplog):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    assert_worded(import_folder(services, str(tmp_path / "notes")), caplog, "not a model folder", "config.json")
