"""Translate offers the languages the loaded model's card names first and marks the rest "may not
work with this model" (D10); choosing one of the rest says so beside the translation."""
from __future__ import annotations

import warnings

import pytest
from fixtures_models import make_services

from lmstudio_lite.paths import bundled_models_dir
from lmstudio_lite.services.tasks.translate import LANGUAGES, MAY_NOT_WORK, card_languages, language_choices

BUNDLED = bundled_models_dir() / "lmstudio-lite-tiny"


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    from lmstudio_lite.ui.translate_tab import TranslateHandlers

    return TranslateHandlers(make_services(tmp_path_factory.mktemp("home"), load=str(BUNDLED)))


@pytest.fixture(autouse=True)
def quiet_toasts():
    with warnings.catch_warnings():  # gr.Warning outside a request only warns
        warnings.simplefilter("ignore")
        yield


def test_the_card_names_the_languages(tmp_path):
    assert card_languages(BUNDLED) == ["English", "French", "German"]
    (tmp_path / "README.md").write_text("---\nlanguage: [en, zh]\n---\n# m\n")
    assert card_languages(tmp_path) == ["English", "Chinese"]
    (tmp_path / "README.md").write_text("# a card with no metadata\n")
    assert card_languages(tmp_path) is None
    assert card_languages(tmp_path / "missing") is None


def test_the_rest_are_marked():
    choices = language_choices(["English", "French", "German"])
    assert [v for _, v in choices][:3] == ["English", "French", "German"]
    assert sorted(v for _, v in choices) == sorted(LANGUAGES)
    marked = [label for label, v in choices if v not in ("English", "French", "German")]
    assert marked and all(MAY_NOT_WORK in label for label in marked)
    assert all(label == v for label, v in language_choices(None))  # a silent card: all offered plainly


def test_the_tab_lists_the_loaded_models_languages(h):
    src, tgt = h.language_lists()
    assert [v for _, v in tgt["choices"]][:3] == ["English", "French", "German"]
    assert "Chinese" in dict((v, label) for label, v in tgt["choices"])["Chinese"]
    assert MAY_NOT_WORK in dict((v, label) for label, v in tgt["choices"])["Chinese"]
    assert src["choices"][0][1] == "Auto-detect"


def test_an_unknown_target_is_flagged_a_known_one_is_not(h):
    *_, (out, notice) = h.run("The cat is small.", "English", "Chinese", 8, 0.0)
    assert MAY_NOT_WORK in notice and "Chinese" in notice
    *_, (out, notice) = h.run("The cat is small.", "English", "French", 8, 0.0)
    assert notice == "" and out.strip()
