"""The Models tab in a real headless chromium: another app's library listed, a Hub download with
progress (against the local fake Hub), and Export GGUF of the loaded model.

Screenshots go to ``$UI_SHOTS_DIR`` when set, else to the test's tmp folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_hub import FakeHub
from fixtures_ui import app_env, open_page, start_app
from helpers_gguf import tiny_gguf
from test_libraries import ollama_model

pytestmark = [pytest.mark.browser, pytest.mark.slow]
from playwright.sync_api import expect  # noqa: E402


@pytest.mark.heavy  # ~17 s; the listing, download and export logic is tested in test_libraries, test_download, test_gguf_export
def test_models_tab_lists_libraries_downloads_and_exports(browser, ui_models, tmp_path):
    shots = Path(os.environ.get("UI_SHOTS_DIR") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "user-home"
    ollama_model(home / ".ollama" / "models", "smollm2", "135m")
    gguf = tiny_gguf(tmp_path / "src.gguf", extra_floats=200_000).read_bytes()
    with FakeHub({"acme/tiny-GGUF": {"tiny.Q8_0.gguf": gguf, "README.md": b"#"}}) as hub:
        env = app_env(tmp_path / "app", HOME=str(home), HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        app = start_app(ui_models["tiny-chat"], tmp_path / "app", env=env)
        try:
            ctx, page = open_page(browser, app.base)
            page.get_by_role("tab", name="Models").click()
            expect(page.locator("#models-table")).to_contain_text("smollm2:135m")
            page.get_by_text("Download from Hugging Face").click()
            page.locator("#dl-repo input, #dl-repo textarea").first.fill("acme/tiny-GGUF")
            page.locator("#dl-list").click()
            expect(page.locator("#dl-progress")).to_contain_text("1 GGUF file in")
            page.locator("#dl-start").click()
            expect(page.locator("#dl-progress")).to_contain_text("✅", timeout=30000)
            expect(page.locator("#models-table")).to_contain_text("acme/tiny-GGUF/tiny.Q8_0")
            page.locator("#export-btn").click()
            expect(page.locator("#models-msg")).to_contain_text("Exported", timeout=60000)
            expect(page.locator("#export-file")).to_contain_text("tiny-chat-f32")
            page.screenshot(path=str(shots / "models-library-download-export.png"), full_page=True)
            ctx.close()
        finally:
            app.stop()
    assert (tmp_path / "app" / "models" / "exports" / "tiny-chat-f32.gguf").is_file()
    assert (tmp_path / "app" / "models" / "acme" / "tiny-GGUF" / "tiny.Q8_0.gguf").read_bytes() == gguf
