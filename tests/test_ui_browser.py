"""The app in a real headless chromium: streaming and Stop, every tab, two sessions at once,
saved conversations across a restart, and bad inputs that get clear messages.

Screenshots go to ``$UI_SHOTS_DIR`` when set, else to the test's tmp folder.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from fixtures_ui import open_page, start_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]
from playwright.sync_api import expect  # noqa: E402

BOT = "#chatbot [data-testid=bot]"
USER = "#chatbot [data-testid=user]"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("UI_SHOTS_DIR") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def slow_app(ui_models, tmp_path_factory):
    app = start_app(ui_models["slow-chat"], tmp_path_factory.mktemp("home-browser"))
    yield app
    app.stop()


def send(page, text: str):
    box = page.locator("#chat-input textarea")
    box.fill(text)
    box.press("Enter")


def text_len(page, selector: str) -> int:
    loc = page.locator(selector)
    return len(loc.last.inner_text()) if loc.count() else 0


def wait_growth(page, selector: str, beyond: int, timeout_ms: int = 60000):
    page.wait_for_function("([sel, n]) => { const all = document.querySelectorAll(sel);"
                           " return all.length && all[all.length - 1].innerText.length > n; }",
                           arg=[selector, beyond], timeout=timeout_ms)


def test_streaming_stop_and_every_tab(browser, slow_app, shots):
    ctx, page = open_page(browser, slow_app.base)
    try:
        expect(page.locator("#status-line")).to_contain_text("Device:")
        page.screenshot(path=str(shots / "01-chat-empty.png"), full_page=True)
        send(page, "Hello there")
        expect(page.locator(USER).last).to_contain_text("Hello there")
        wait_growth(page, BOT, 5)
        first = text_len(page, BOT)
        wait_growth(page, BOT, first + 5)  # still growing: the reply streams
        page.screenshot(path=str(shots / "02-chat-streaming.png"), full_page=True)
        page.click("#stop-btn")
        expect(page.locator("#chat-stats")).to_contain_text("stopped by you", timeout=15000)
        frozen = page.locator(BOT).last.inner_text()
        time.sleep(1.5)  # nothing may arrive after Stop (checking an absence needs a wait)
        assert page.locator(BOT).last.inner_text() == frozen
        expect(page.locator("#chat-list")).to_contain_text("Hello there")
        send(page, "Are you still there?")  # the app answers after a Stop
        expect(page.locator(BOT)).to_have_count(2, timeout=30000)
        wait_growth(page, BOT, 3)
        page.click("#stop-btn")
        for tab, probe in [("summarize", "#sum-input"), ("translate", "#trans-input"),
                           ("models", "#models-table"), ("train", "#tab-train"), ("chat", "#chatbot")]:
            page.click(f"#tab-{tab}-button")
            expect(page.locator(probe)).to_be_visible()
            page.screenshot(path=str(shots / f"03-tab-{tab}.png"), full_page=True)
    finally:
        ctx.close()


def test_two_sessions_see_only_their_own_chat(browser, slow_app, shots):
    ctx_a, a = open_page(browser, slow_app.base)
    ctx_b, b = open_page(browser, slow_app.base)
    try:
        send(a, "alpha apples")
        send(b, "bravo bananas")
        wait_growth(a, BOT, 3)
        a.click("#stop-btn")
        wait_growth(b, BOT, 3)  # b was queued behind a (one model slot) and runs now
        b.click("#stop-btn")
        for page, mine, theirs in [(a, "alpha apples", "bravo"), (b, "bravo bananas", "alpha")]:
            users = page.locator(USER)
            expect(users).to_have_count(1)
            expect(users.first).to_contain_text(mine)
            assert theirs not in page.locator("#chatbot").inner_text()
        b.screenshot(path=str(shots / "04-session-b.png"), full_page=True)
    finally:
        ctx_a.close()
        ctx_b.close()


def test_bad_inputs_get_clear_messages(browser, slow_app, shots):
    ctx, page = open_page(browser, slow_app.base)
    try:
        page.click("#send-btn")  # empty
        expect(page.locator("#chat-notice")).to_contain_text("Type a message first")
        page.locator("#chat-input textarea").fill("lorem ipsum " * 90_000)  # ~1 MB
        expect(page.locator("#context-meter")).to_contain_text("cannot be sent", timeout=30000)
        page.click("#send-btn")
        expect(page.locator("#chat-notice")).to_contain_text("more than the model's context window")
        expect(page.locator(USER)).to_have_count(0)
        page.screenshot(path=str(shots / "05-too-long.png"))
        send(page, "A short one")
        wait_growth(page, BOT, 3)
        page.click("#stop-btn")
        page.click("#tab-summarize-button")
        page.set_input_files("#sum-file input[type=file]", files=[
            {"name": "notes.txt", "mimeType": "text/plain", "buffer": bytes(range(256)) * 8}])
        expect(page.locator("#sum-notice")).to_contain_text("binary")
        page.screenshot(path=str(shots / "06-binary-upload.png"))
        page.locator("#sum-input textarea").fill("The cat sat on the mat. It was warm.")
        page.click("#sum-btn")
        page.wait_for_function("() => document.querySelector('#sum-output textarea').value.length > 3",
                               timeout=60000)
        page.click("#sum-stop")
    finally:
        ctx.close()


def test_saved_conversations_survive_a_restart(browser, ui_models, tmp_path, shots):
    home = tmp_path / "home"
    app = start_app(ui_models["tiny-chat"], home)
    try:
        ctx, page = open_page(browser, app.base)
        send(page, "Remember the red kite")
        expect(page.locator("#chat-list")).to_contain_text("Remember the red kite", timeout=30000)
        _continue_regenerate_edit_and_show_prompt(page)
        page.locator("#rename-box textarea").fill("Kite chat")
        page.click("#rename-btn")
        expect(page.locator("#chat-list")).to_contain_text("Kite chat")
        page.click("#chat-export-btn")
        expect(page.locator("#chat-export-files")).to_contain_text(".json")
        expect(page.locator("#chat-export-files")).to_contain_text(".md")
        ctx.close()
    finally:
        app.stop()
    app = start_app(ui_models["tiny-chat"], home)
    try:
        ctx, page = open_page(browser, app.base)
        page.locator("#chat-list label", has_text="Kite chat").click()
        expect(page.locator(USER).first).to_contain_text("Remember the blue kite")
        page.screenshot(path=str(shots / "07-after-restart.png"), full_page=True)
        page.click("#chat-delete-btn")
        expect(page.locator("#chat-delete-confirm-row")).to_be_visible()
        page.click("#chat-delete-confirm-btn")
        expect(page.locator("#chat-list")).not_to_contain_text("Kite chat")
        assert not list((home / "chats").glob("*.json"))
        ctx.close()
    finally:
        app.stop()


def _wait_stream_done(page, quiet_s: float = 1.5, timeout_s: float = 60.0):
    """Until the newest reply has stopped growing for ``quiet_s``."""
    end, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < end:
        text = page.locator(BOT).last.inner_text()
        if text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)
    raise TimeoutError("the reply kept streaming")


def _continue_regenerate_edit_and_show_prompt(page):
    expect(page.locator("#chat-stats")).to_contain_text("tokens")
    before = page.locator(BOT).last.inner_text()
    page.click("#continue-btn")
    wait_growth(page, BOT, len(before))
    assert page.locator(BOT).last.inner_text().startswith(before[:40])
    old = page.locator(BOT).last.inner_text()
    page.click("#regen-btn")
    page.wait_for_function("(old) => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');"
                           " return b.length === 1 && b[0].innerText.length > 0 && b[0].innerText !== old; }",
                           arg=old, timeout=30000)
    _wait_stream_done(page)  # editing is refused while a reply still streams
    page.locator(USER).last.hover()
    page.locator("#chatbot button[aria-label='Edit']").first.click()
    page.locator("#chatbot textarea").first.fill("Remember the blue kite")
    page.locator("#chatbot button[aria-label='Submit']").click()
    expect(page.locator(USER).last).to_contain_text("Remember the blue kite")
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(BOT)).to_have_count(1, timeout=30000)
    page.click("#prompt-accordion")
    page.click("#show-prompt-btn")
    prompt = re.compile(r"<\|im_start\|>user\nRemember the blue kite")
    expect(page.locator("#prompt-view textarea")).to_have_value(prompt)


def test_broken_model_folder_is_reported_and_the_app_answers(browser, ui_models, tmp_path, shots):
    app = start_app(ui_models["broken"], tmp_path / "home")
    try:
        ctx, page = open_page(browser, app.base)
        expect(page.locator("#status-line")).to_contain_text("failed to load")
        send(page, "Hello?")
        expect(page.locator("#chat-notice")).to_contain_text("No model is loaded")
        time.sleep(1.0)  # the (skipped) generation step that follows must not wipe the notice
        expect(page.locator("#chat-notice")).to_contain_text("No model is loaded")
        page.screenshot(path=str(shots / "08-broken-model.png"), full_page=True)
        page.click("#tab-translate-button")
        page.locator("#trans-input textarea").fill("Der Hund ist nicht groß und die Katze auch nicht.")
        expect(page.locator("#trans-detected")).to_contain_text("German")
        ctx.close()
    finally:
        app.stop()
