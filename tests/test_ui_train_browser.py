"""The Train tab in headless chromium against the real app: upload data, see the preview, start a
run on stories260K, watch the loss plot grow, reload the page and find the same run still going
(re-attached by the always-on poll timer), use another tab meanwhile, then Cancel.

Screenshots go to the test's tmp folder (train-*.png) for a person to look at."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import time

import pytest
from fixtures_models import STORIES
from fixtures_ui import open_page, start_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    home = tmp_path_factory.mktemp("train-ui-home")
    (home / "models").mkdir()
    shutil.copytree(STORIES, home / "models" / "stories260K")
    proc = start_app(home / "models" / "stories260K", home)
    try:
        yield proc
    finally:
        proc.stop()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def step_of(page) -> int:
    m = re.search(r"step (\d+)/", page.locator("#train-status").inner_text())
    return int(m.group(1)) if m else 0


def run_id_of(page) -> str:
    m = re.search(r"run (\S+) ·", page.locator("#train-status").inner_text())
    return m.group(1) if m else ""


def wait_step(page, at_least: int, timeout_s: float = 90.0) -> int:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        step = step_of(page)
        if step >= at_least:
            return step
        time.sleep(0.25)
    raise TimeoutError(f"step {at_least} not reached: {page.locator('#train-status').inner_text()}")


def open_train_tab(browser, base: str):  # noqa: F811
    ctx, page = open_page(browser, base)
    page.click("#tab-train-button")
    page.wait_for_selector("#train-start")
    return ctx, page


def fill_number(page, selector: str, value):
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Tab")  # commit the value (change/blur)


def preview_and_start(page, data, shots):
    """Upload, check the preview (format, highlighted loss tokens), set a long run going."""
    from playwright.sync_api import expect

    page.set_input_files("#dataset input[type=file]", str(data))
    expect(page.locator("#data-preview")).to_contain_text("prompt_completion", timeout=30000)
    expect(page.locator("#data-tokens")).to_contain_text("Once upon a time")
    page.screenshot(path=str(shots / "train-1-preview.png"), full_page=True)
    fill_number(page, "#train-steps input", 5000)  # far more than we wait for: Cancel ends it
    fill_number(page, "#train-batch input", 4)
    fill_number(page, "#train-eval-every input", 25)
    fill_number(page, "#train-seq-len input[type=number]", 64)
    page.click("#train-start")
    expect(page.locator("#train-msg")).to_contain_text("Started run", timeout=30000)
    expect(page.locator("#train-status")).to_contain_text("running", timeout=60000)


def plot_grows(page, blank: bytes, shots) -> int:
    """Two plot screenshots some steps apart differ (and differ from the empty plot); -> the step."""
    from playwright.sync_api import expect

    wait_step(page, 30)
    time.sleep(1.5)  # let the plot draw the polled points
    first = page.locator("#loss-plot").screenshot()
    step = wait_step(page, step_of(page) + 60)
    time.sleep(1.5)
    second = page.locator("#loss-plot").screenshot()
    (shots / "train-2-plot-a.png").write_bytes(first)
    (shots / "train-3-plot-b.png").write_bytes(second)
    assert md5(first) != md5(blank) and md5(second) != md5(first)
    expect(page.locator("#train-progress")).to_contain_text("ETA")
    expect(page.locator("#train-log textarea")).to_have_value(re.compile("data: prompt_completion"))
    return step


def reattached_after_reload(page, run_id: str, step: int, blank: bytes, shots):
    """A reloaded page shows the same run, still progressing, with its plot and data."""
    from playwright.sync_api import expect

    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.click("#tab-train-button")
    expect(page.locator("#train-status")).to_contain_text(run_id, timeout=20000)
    expect(page.locator("#data-preview")).to_contain_text(f"Data of run {run_id}")  # the run's own data
    after = wait_step(page, step + 1)
    wait_step(page, after + 20)
    expect(page.locator("#train-status")).to_contain_text("running")
    time.sleep(1.5)
    assert md5(page.locator("#loss-plot").screenshot()) != md5(blank)
    page.screenshot(path=str(shots / "train-4-reattached.png"), full_page=True)


def test_train_live_plot_reload_reattach_cancel(browser, app, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    data = tmp_path / "stories.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tell me a story {i}",
                                        "completion": f"Once upon a time there was a cat named {i}."}) + "\n"
                            for i in range(40)))
    ctx, page = open_train_tab(browser, app.base)
    blank = page.locator("#loss-plot").screenshot()
    preview_and_start(page, data, tmp_path)
    step = plot_grows(page, blank, tmp_path)
    run_id = run_id_of(page)

    # another tab works meanwhile
    page.click("#tab-models-button")
    page.click("#models-refresh")
    expect(page.locator("#models-table")).to_contain_text("stories260K")
    page.click("#tab-train-button")

    reattached_after_reload(page, run_id, step, blank, tmp_path)
    page.click("#train-cancel")
    expect(page.locator("#train-status")).to_contain_text("cancelled", timeout=30000)
    expect(page.locator("#train-start")).to_be_enabled()
    page.screenshot(path=str(tmp_path / "train-5-cancelled.png"), full_page=True)
    ctx.close()


def test_bad_data_shows_a_clear_message(browser, app, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n')
    ctx, page = open_train_tab(browser, app.base)
    page.set_input_files("#dataset input[type=file]", str(bad))
    expect(page.locator("#data-preview")).to_contain_text("bad.jsonl line 2: malformed JSON", timeout=30000)
    page.screenshot(path=str(tmp_path / "train-bad-data.png"), full_page=True)
    ctx.close()
