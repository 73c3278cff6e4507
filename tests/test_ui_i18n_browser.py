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
        expect(page.locator("#tab-summarize-button")).to_have_text("摘要")
        expect(page.locator("#tab-models-button")).to_have_text("模型")
        expect(page.locator("#lang-switch input[value='zh-CN']")).to_be_checked()
        expect(page.locator("#status-line")).to_contain_text("尚未加载模型")  # built by the server
        page.click("#tab-summarize-button")
        expect(page.locator("#sum-btn")).to_have_text("生成摘要")
        expect(page.locator("#sum-input textarea")).to_have_attribute("placeholder", "在此粘贴文本（Shift+Enter 运行），或在下方上传文件。")
        expect(page.locator("#sum-style")).to_contain_text("要点列表")
        page.click("#sum-btn")
        expect(page.locator("#sum-notice")).to_contain_text("请先粘贴文本")
        page.locator("#sum-input textarea").fill("一段文字。")
        page.click("#sum-btn")
        expect(page.locator("#sum-notice")).to_contain_text("没有加载模型")
        page.screenshot(path=str(shots / "i18n-01-summarize-zh.png"), full_page=True)
        page.click("#tab-translate-button")
        expect(page.locator("#trans-src")).to_contain_text("源语言")
        expect(page.locator("#trans-tgt input")).to_have_value("法语")
        page.click("#tab-models-button")
        expect(page.locator("#model-load")).to_have_text("加载")
        page.click("#model-load")
        expect(page.locator("#models-msg")).to_contain_text("请选择要加载的模型")
        page.screenshot(path=str(shots / "i18n-02-models-zh.png"), full_page=True)

        page.locator("#lang-switch label", has_text="English").click()
        expect(page.locator("#tab-models-button")).to_have_text("Models")
        expect(page.locator("#model-load")).to_have_text("Load")
        page.click("#model-load")  # the server follows the switch too
        expect(page.locator("#models-msg")).to_have_text("Choose a model to load.")
        page.screenshot(path=str(shots / "i18n-03-models-en.png"), full_page=True)

        page.reload()  # the choice is remembered over the browser's own language
        expect(page.locator("#tab-summarize-button")).to_have_text("Summarize")
        expect(page.locator("#lang-switch input[value='en']")).to_be_checked()
        expect(page.locator("#status-line")).to_contain_text("no model yet")
        page.locator("#lang-switch label", has_text="简体中文").click()
        expect(page.locator("#tab-summarize-button")).to_have_text("摘要")
        page.screenshot(path=str(shots / "i18n-04-chat-zh.png"), full_page=True)
    finally:
        ctx.close()
