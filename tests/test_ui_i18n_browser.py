"""The page in Simplified Chinese and English in a real headless chromium.

A browser whose language is zh-CN gets Chinese labels and Chinese notices from the server; the
switch at the top turns both to English at once, and a reload keeps the choice. After switches,
Stop still stops a streaming reply, the Inspect tab analyses a Chinese and an English sentence
in Chinese, and the Train tab refuses a start without data, then trains on the sample stories with
its preview, messages, log and plot in Chinese until Cancel ends it. One app, in a subprocess as a
person runs it, on the slow random model (its replies never end by themselves, so Stop is what ends one).
Screenshots go to ``$UI_SHOTS_DIR`` when set, else to the test's tmp folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fixtures_ui import CHROMIUM, open_page, start_app  # noqa: F401  (the browser fixture comes from conftest)

pytestmark = pytest.mark.browser
from playwright.sync_api import expect  # noqa: E402


BOT = "#chatbot [data-testid=bot]"
STORIES = Path(__file__).resolve().parents[1] / "assets" / "sample_stories.txt"


@pytest.fixture(scope="module")
def base(tmp_path_factory, ui_models):
    app = start_app(ui_models["slow-chat"], tmp_path_factory.mktemp("home-i18n"))  # never stops by itself
    yield app.base
    app.stop()


@pytest.fixture
def zh_page(browser, base):
    """A fresh session on the app from a browser whose language is Simplified Chinese."""
    ctx, page = open_page(browser, base, locale="zh-CN")
    yield page
    ctx.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("UI_SHOTS_DIR") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_chinese_browser_gets_chinese_and_the_switch_turns_it_to_english(zh_page, shots):
    page = zh_page
    expect(page.locator("#tab-summarize-button")).to_have_text("摘要")
    expect(page.locator("#lang-switch input[value='zh-CN']")).to_be_checked()
    expect(page.locator("#context-meter")).to_contain_text("上下文")  # worded by the server
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


def test_after_switches_stop_stops_a_reply_and_inspect_reads_chinese(zh_page, shots):
    page = zh_page
    for tab, name in [("chat", "对话"), ("inspect", "检查"), ("train", "训练")]:
        expect(page.locator(f"#tab-{tab}-button")).to_have_text(name)
    page.locator("#lang-switch label", has_text="English").click()  # the tab names are re-sent twice
    expect(page.locator("#send-btn")).to_have_text("Send")
    page.locator("#lang-switch label", has_text="简体中文").click()
    expect(page.locator("#tab-inspect-button")).to_have_text("检查")
    expect(page.locator("#send-btn")).to_have_text("发送")
    page.get_by_text("系统提示词与采样").click()
    max_new = page.locator("#max-new-tokens input[type=number]")
    max_new.fill("2000")  # far more than streams before Stop, however busy the machine
    max_new.press("Enter")
    box = page.locator("#chat-input textarea")
    box.fill("你好")
    box.press("Enter")
    grows = ("n => { const b = document.querySelectorAll('%s');"
             " return b.length && b[b.length - 1].innerText.length > n; }" % BOT)
    page.wait_for_function(grows, arg=5, timeout=60000)
    page.wait_for_function(grows, arg=len(page.locator(BOT).last.inner_text()) + 5, timeout=60000)  # streaming
    page.click("#stop-btn")
    expect(page.locator("#chat-stats")).to_contain_text("已由你停止", timeout=15000)
    frozen = page.locator(BOT).last.text_content()
    page.screenshot(path=str(shots / "i18n-04-chat-stopped-zh.png"), full_page=True)

    page.click("#tab-inspect-button")
    expect(page.locator("#inspect-btn")).to_have_text("检查")
    for text in ("我喜欢在公园里散步，因为那里很安静。", "Once upon a time there was a dog."):
        page.locator("#inspect-text textarea").fill(text)
        page.click("#inspect-btn")
        expect(page.locator("#inspect-summary")).to_contain_text(f"对应 {len(text)} 个字符", timeout=30000)
        expect(page.locator("#inspect-summary")).to_contain_text("困惑度")
        expect(page.locator("#inspect-position-info")).to_contain_text("位置")
        if text.startswith("我"):
            page.screenshot(path=str(shots / "i18n-05-inspect-chinese-zh.png"), full_page=True)
    # Several seconds of model work later, the stopped reply has not grown.
    assert page.locator(BOT).last.text_content() == frozen
    trains_in_chinese(page, shots)


def fill_number(page, selector: str, value):
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Tab")  # commit the value


def trains_in_chinese(page, shots):
    """Start without data is refused in Chinese; the sample stories' preview warns in Chinese (the data
    check's words); a run on the bundled tiny model says it started, logs, plots and is cancelled in
    Chinese."""
    page.click("#tab-train-button")
    page.click("#train-start")
    expect(page.locator("#train-msg")).to_contain_text("⚠ 请选择训练数据：上传一个文件，或选一个示例。")
    page.screenshot(path=str(shots / "i18n-06-train-refused-zh.png"))
    fill_number(page, "#train-steps input", 5000)  # far more than runs before Cancel
    fill_number(page, "#train-batch input", 1)
    fill_number(page, "#train-seq-len input[type=number]", 32)
    page.set_input_files("#dataset input[type=file]", str(STORIES))
    expect(page.locator("#data-preview")).to_contain_text("5 篇文档被拼接成 15 个块", timeout=30000)
    page.click("#train-start")
    expect(page.locator("#train-msg")).to_contain_text(re.compile(r"已开始运行 \S+：共 5000 步。"),
                                                       timeout=30000)
    status = page.locator("#train-status")
    expect(status).to_contain_text(re.compile(r"第 [1-9]\d*/5000 步"), timeout=60000)  # a step done: plotted
    page.click("#train-cancel")  # its note ("已请求取消") is cleared once the run ends: not waited for
    expect(status).to_contain_text("状态：已取消", timeout=60000)
    log = page.locator("#train-log textarea")
    expect(log).to_have_value(re.compile(r"已在第 \d+ 步取消"))
    said = log.input_value()
    assert "数据：raw_text" in said and "个 CPU 线程" in said, said
    assert re.search(r"[A-Za-z]{2,} [A-Za-z]{2,} [A-Za-z]{2,}", said) is None, said  # no English sentence
    expect(page.locator("#loss-plot")).to_contain_text("损失")  # its title and axis
    page.screenshot(path=str(shots / "i18n-07-train-run-zh.png"), full_page=True)
