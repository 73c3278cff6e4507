"""The page in Simplified Chinese and English in a real headless chromium.

A browser whose language is zh-CN gets Chinese labels and Chinese notices from the server; the
switch at the top turns both to English at once, and a reload keeps the choice. The app runs
in-process with no model (so the notices are the no-model and empty-input ones).
Screenshots go to ``$UI_SHOTS_DIR`` when set, else to the test's tmp folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures_models import make_services, serve_in_thread
from fixtures_ui import CHROMIUM  # noqa: F401  (the browser fixture comes from conftest)

pytestmark = pytest.mark.browser
from playwright.sync_api import expect  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from lmstudio_lite.ui.launch import create_web_app

    services = make_services(tmp_path_factory.mktemp("home-i18n"))
    with serve_in_thread(create_web_app(services)) as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("UI_SHOTS_DIR") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_chinese_browser_gets_chinese_and_the_switch_turns_it_to_english(browser, base, shots):
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(20000)
    try:
        page.goto(base + "/")
        page.wait_for_selector("#chat-input textarea")  # expect() waits 5 s only: a busy machine needs more
        expect(page.locator("#tab-summarize-button")).to_have_text("摘要")
        expect(page.locator("#lang-switch input[value='zh-CN']")).to_be_checked()
        expect(page.locator("#status-line")).to_contain_text("尚未加载模型")  # worded by the server
        page.click("#tab-summarize-button")
        expect(page.locator("#sum-btn")).to_have_text("生成摘要")
        expect(page.locator("#sum-input textarea")).to_have_attribute(
            "placeholder", "在此粘贴文本（Shift+Enter 运行），或在下方上传文件。")
        expect(page.locator("#sum-style")).to_contain_text("要点列表")
        page.click("#sum-btn")
        expect(page.locator("#sum-notice")).to_contain_text("请先粘贴文本")  # Accept-Language: zh-CN
        page.screenshot(path=str(shots / "i18n-01-summarize-zh.png"), full_page=True)
        page.click("#tab-translate-button")
        expect(page.locator("#trans-src")).to_contain_text("源语言")
        expect(page.locator("#trans-tgt input")).to_have_value("法语")

        page.locator("#lang-switch label", has_text="English").click()
        expect(page.locator("#tab-models-button")).to_have_text("Models")  # a tab never opened
        expect(page.locator("#status-line")).to_contain_text("no model yet")
        page.click("#tab-summarize-button")
        page.click("#tab-translate-button")  # the server words the language lists anew when the tab opens
        expect(page.locator("#trans-tgt input")).to_have_value("French")
        page.click("#tab-summarize-button")
        page.click("#sum-btn")  # the server follows the switch, not the browser
        expect(page.locator("#sum-notice")).to_contain_text("Paste some text")
        page.screenshot(path=str(shots / "i18n-02-summarize-en.png"), full_page=True)

        page.reload()  # the choice is remembered over the browser's own language
        expect(page.locator("#tab-summarize-button")).to_have_text("Summarize")
        expect(page.locator("#lang-switch input[value='en']")).to_be_checked()
        page.locator("#lang-switch label", has_text="简体中文").click()
        expect(page.locator("#tab-models-button")).to_have_text("模型")
        page.click("#tab-models-button")
        expect(page.locator("#model-load")).to_have_text("加载")
        page.screenshot(path=str(shots / "i18n-03-models-zh.png"), full_page=True)
    finally:
        ctx.close()
