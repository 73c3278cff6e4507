"""Summarize's "Bullet points" style gives bullets whatever the model writes (D9), and the summary's
token budget shrinks to fit a small context instead of crowding out the text."""
from __future__ import annotations

from lmstudio_lite.services.api import load_model
from lmstudio_lite.paths import bundled_assets_dir, bundled_models_dir
from lmstudio_lite.services.tasks.summarize import as_bullets, budgets, shaped, summarize
from lmstudio_lite.ui.summarize_tab import task_settings


def test_prose_and_lists_become_bullets():
    assert as_bullets("Mila had a kite. It flew away! A fisherman found it") == \
        "- Mila had a kite.\n- It flew away!\n- A fisherman found it"
    assert as_bullets("1. one\n2) two\n* three\n\n• four") == "- one\n- two\n- three\n- four"


def test_a_summary_cut_by_its_budget_ends_at_its_last_finished_sentence():
    cut = 'She saw a big, red ball.\nThe ball was happy. Lily\'s mom said, "Let'
    assert shaped("Bullet points", cut, final=True) == "- She saw a big, red ball.\n- The ball was happy."
    assert shaped("One sentence", 'He said "Go!" and ran. Then he', final=True) == 'He said "Go!" and ran.'
    assert shaped("One sentence", "no sentence ends here", final=True) == "no sentence ends here"
    assert shaped("One sentence", "Still streaming. Half", final=False) == "Still streaming. Half"


def test_the_bundled_model_summarizes_in_bullets():
    model = load_model(bundled_models_dir() / "lmstudio-lite-tiny", device="cpu", dtype="float32")
    story = (bundled_assets_dir() / "sample_stories.txt").read_text().split("\n\n")[0]
    final = [s for s in summarize(model, story, "Bullet points", task_settings(200, 0.0)) if s.final][-1]
    lines = final.text.splitlines()
    assert lines and all(line.startswith("- ") and line[2:].strip() for line in lines), final.text
    chunk, reply, _ = budgets(model, 200, "Bullet points")
    assert reply < 200 and chunk > reply  # 200 asked, but a 256-token context keeps most of it for the text


def test_the_tab_says_how_long_the_summary_may_be(tmp_path):
    import warnings

    from fixtures_models import make_services

    from lmstudio_lite.ui.summarize_tab import SummarizeHandlers

    h = SummarizeHandlers(make_services(tmp_path / "home", load=str(bundled_models_dir() / "lmstudio-lite-tiny")))
    story = (bundled_assets_dir() / "sample_stories.txt").read_text().split("\n\n")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        *_, (summary, info, notice) = h.run(story, "One sentence", 1024, 0.0)
    model = h.services.registry.current
    reply = budgets(model, 1024, "One sentence")[1]
    assert f"summary up to {reply} tokens" in info and reply < model.context_length // 2 and summary and not notice
