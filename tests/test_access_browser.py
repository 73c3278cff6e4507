"""The access guard with a real browser and gradio_client: the login page still works, and
after logging in the page runs a chat (queue, heartbeat and streaming all carry the session)."""
from __future__ import annotations

import httpx
from fixtures_ui import start_app
from gradio_client import Client
from playwright.sync_api import expect

KEY = "sk-browser-test"


def log_in(browser, base: str, user: str, password: str):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    page.set_default_timeout(30000)
    page.goto(base + "/")
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#chat-input textarea")
    return ctx, page


def test_login_page_then_chat_under_auth_and_key(browser, ui_models, tmp_path):
    app = start_app(ui_models["tiny-chat"], tmp_path / "home", "--auth", "ann:pw-ann", "--api-key", KEY,
                    wait_page=False)
    try:
        assert httpx.get(app.base + "/config").status_code == 401
        for user, password in (("ann", "pw-ann"), ("anyone", KEY)):  # the login, or the key as password
            ctx, page = log_in(browser, app.base, user, password)
            box = page.locator("#chat-input textarea")
            box.fill("Hi")
            box.press("Enter")
            expect(page.locator("#chatbot [data-testid=bot]").last).not_to_be_empty(timeout=30000)
            ctx.close()
        client = Client(app.base + "/", auth=("ann", "pw-ann"), verbose=False)
        assert isinstance(client.predict(api_name="/models_list"), list)
        keyed = Client(app.base + "/", headers={"Authorization": f"Bearer {KEY}"}, verbose=False)
        assert isinstance(keyed.predict(api_name="/models_list"), list)
    finally:
        app.stop()
