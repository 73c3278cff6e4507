"""The Train tab in headless chromium against the real app: Start in view at 1280x800 and only the
fields of the chosen mode shown, upload data, see the preview, start a run on stories260K, watch the
loss plot grow, reload the page and find the same run still going with its own settings in the form
(re-attached by the always-on poll timer), use another tab meanwhile, Cancel, find the run in the
runs list without a model (Use in Chat off, D3), Resume it and cancel again.

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


def job(app) -> dict:
    """The app's own job state, read through its train_status endpoint (not the page)."""
    from gradio_client import Client

    if getattr(app, "client", None) is None:
        app.client = Client(app.base, verbose=False)
    return json.loads(app.client.predict(api_name="/train_status"))


def wait_job(app, ok, what: str, cap_s: float = 300.0) -> dict:
    """Wait until the app's job state satisfies ``ok``. Fails at once when the app exits or the run
    ends some other way; ``cap_s`` is only a safety net for a hung app, not a guess at its speed."""
    end = time.monotonic() + cap_s
    while True:
        if app.proc.poll() is not None:
            raise RuntimeError(f"the app exited while waiting for {what}:\n{app.log()[-3000:]}")
        state = job(app)
        if ok(state):
            return state
        if state["state"] in ("failed", "cancelled", "finished"):
            raise AssertionError(f"the run ended ({state['state']}: {state.get('error')}) before {what}")
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: still {state['state']} at step {state['step']} after {cap_s:.0f} s")
        time.sleep(0.25)


def step_of(page) -> int:
    m = re.search(r"step (\d+)/", page.locator("#train-status").inner_text())
    return int(m.group(1)) if m else 0


def run_id_of(page) -> str:
    m = re.search(r"run (\S+) ·", page.locator("#train-status").inner_text())
    return m.group(1) if m else ""


def wait_step(app, page, at_least: int) -> int:
    """The job reaches the step, then the page shows it (the poll timer redraws within a tick)."""
    from playwright.sync_api import expect

    wait_job(app, lambda s: s["step"] >= at_least, f"step {at_least}")
    expect(page.locator("#train-status")).to_contain_text(re.compile(r"step \d+/"))
    end = time.monotonic() + 30
    while step_of(page) < at_least and time.monotonic() < end:
        time.sleep(0.1)
    assert step_of(page) >= at_least, page.locator("#train-status").inner_text()
    return step_of(page)


def open_train_tab(browser, base: str):  # noqa: F811
    ctx, page = open_page(browser, base)
    page.click("#tab-train-button")
    page.wait_for_selector("#train-start")
    return ctx, page


def fill_number(page, selector: str, value):
    box = page.locator(selector)
    box.fill(str(value))
    box.press("Tab")  # commit the value (change/blur)


def form_fits_and_shows_only_what_applies(page, shots):
    """D12: Start is in view at 1280x800 without scrolling; epochs, LoRA rank and the Advanced settings
    show only when chosen."""
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1280, "height": 800})
    page.evaluate("window.scrollTo(0, 0)")  # as the tab opens: nothing scrolled yet
    box = page.locator("#train-start").bounding_box()
    assert page.evaluate("window.scrollY") == 0 and 0 <= box["y"] and box["y"] + box["height"] <= 800, box
    page.screenshot(path=str(shots / "train-0-fold.png"))
    expect(page.locator("#train-epochs")).to_be_hidden()
    expect(page.locator("#train-lora-rank")).to_be_hidden()  # stories260K trains fully by default
    expect(page.locator("#train-seed")).to_be_hidden()  # in the closed Advanced section
    page.click("#train-method label:has-text('LoRA')")
    expect(page.locator("#train-lora-rank")).to_be_visible()
    page.click("#train-length-by label:has-text('epochs')")
    expect(page.locator("#train-epochs")).to_be_visible()
    expect(page.locator("#train-steps")).to_be_hidden()
    page.click("#train-method label:has-text('Full')")
    page.click("#train-length-by label:has-text('steps')")
    expect(page.locator("#train-lora-rank")).to_be_hidden()
    expect(page.locator("#train-steps")).to_be_visible()
    page.click("#train-advanced button")
    expect(page.locator("#train-seed")).to_be_visible()
    page.set_viewport_size({"width": 1280, "height": 1000})


def preview_and_start(app, page, data, shots):
    """Upload, check the preview (format, highlighted loss tokens), set a long run going."""
    from playwright.sync_api import expect

    page.set_input_files("#dataset input[type=file]", str(data))
    expect(page.locator("#data-preview")).to_contain_text("prompt_completion", timeout=30000)
    expect(page.locator("#data-tokens")).to_contain_text("Once upon a time")
    page.screenshot(path=str(shots / "train-1-preview.png"), full_page=True)
    fill_number(page, "#train-steps input", 5000)  # far more than we wait for: Cancel ends it
    fill_number(page, "#train-batch input", 4)
    fill_number(page, "#train-eval-every input", 25)
    fill_number(page, "#train-seed input", 7)
    fill_number(page, "#train-seq-len input[type=number]", 64)
    assert job(app)["state"] == "idle"  # nothing else is training in this app
    page.click("#train-start")
    wait_job(app, lambda s: s["state"] in ("queued", "running"), "the run to start")
    expect(page.locator("#train-msg")).to_contain_text("Started run")
    wait_job(app, lambda s: s["state"] == "running", "the run to be running")
    expect(page.locator("#train-status")).to_contain_text("running")


def plot_grows(app, page, blank: bytes, shots) -> int:
    """Two plot screenshots some steps apart differ (and differ from the empty plot); -> the step."""
    from playwright.sync_api import expect

    wait_step(app, page, 30)
    time.sleep(1.5)  # let the plot draw the polled points
    first = page.locator("#loss-plot").screenshot()
    step = wait_step(app, page, step_of(page) + 60)
    time.sleep(1.5)
    second = page.locator("#loss-plot").screenshot()
    (shots / "train-2-plot-a.png").write_bytes(first)
    (shots / "train-3-plot-b.png").write_bytes(second)
    assert md5(first) != md5(blank) and md5(second) != md5(first)
    expect(page.locator("#train-progress")).to_contain_text("ETA")
    expect(page.locator("#train-log textarea")).to_have_value(re.compile("data: prompt_completion"))
    return step


def reattached_after_reload(app, page, run_id: str, step: int, blank: bytes, shots):
    """A reloaded page shows the same run, still progressing, with its plot and data."""
    from playwright.sync_api import expect

    page.reload()
    page.wait_for_selector("#chat-input textarea")
    page.click("#tab-train-button")
    expect(page.locator("#train-status")).to_contain_text(run_id, timeout=20000)
    expect(page.locator("#data-preview")).to_contain_text(f"Data of run {run_id}")  # the run's own data
    # D11: the form shows the run's own settings, not the defaults
    expect(page.locator("#train-steps input")).to_have_value("5000")
    expect(page.locator("#train-batch input")).to_have_value("4")
    expect(page.locator("#train-seq-len input[type=number]")).to_have_value("64")
    page.click("#train-advanced button")
    expect(page.locator("#train-seed input")).to_have_value("7")
    expect(page.locator("#train-eval-every input")).to_have_value("25")
    after = wait_step(app, page, step + 1)
    wait_step(app, page, after + 20)
    expect(page.locator("#train-status")).to_contain_text("running")
    time.sleep(1.5)
    assert md5(page.locator("#loss-plot").screenshot()) != md5(blank)
    page.screenshot(path=str(shots / "train-4-reattached.png"), full_page=True)


@pytest.mark.heavy  # ~31 s of training in the page; bench/new_user_walk.py also checks the reload (D11) and Cancel (D3) in chromium
def test_train_live_plot_reload_reattach_cancel(browser, app, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    data = tmp_path / "stories.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tell me a story {i}",
                                        "completion": f"Once upon a time there was a cat named {i}."}) + "\n"
                            for i in range(40)))
    ctx, page = open_train_tab(browser, app.base)
    form_fits_and_shows_only_what_applies(page, tmp_path)
    blank = page.locator("#loss-plot").screenshot()
    preview_and_start(app, page, data, tmp_path)
    step = plot_grows(app, page, blank, tmp_path)
    run_id = run_id_of(page)

    # another tab works meanwhile
    page.click("#tab-models-button")
    page.click("#models-refresh")
    expect(page.locator("#models-table")).to_contain_text("stories260K")
    page.click("#tab-train-button")

    reattached_after_reload(app, page, run_id, step, blank, tmp_path)
    cancel_and_wait(app, page)
    expect(page.locator("#train-status")).to_contain_text("cancelled")
    expect(page.locator("#train-start")).to_be_enabled()
    expect(page.locator("#train-msg")).to_have_text("")  # "Cancel requested" is stale once it is done
    cancelled_run_has_no_model_and_resumes(app, page, run_id, tmp_path)
    ctx.close()


def cancelled_run_has_no_model_and_resumes(app, page, run_id: str, shots):
    """D3: the cancelled run is the chosen one; it says it has no model, Use in Chat and Compare are
    off (no earlier model is used quietly), and Resume continues it."""
    from playwright.sync_api import expect

    expect(page.locator("#train-runs input")).to_have_value(re.compile(f"{run_id} .* cancelled · step"))
    expect(page.locator("#train-run-info")).to_contain_text(f"Run {run_id}: cancelled")
    expect(page.locator("#train-run-info")).to_contain_text("Resume continues this run")
    expect(page.locator("#use-in-chat")).to_be_disabled()
    expect(page.locator("#compare-btn")).to_be_disabled()
    page.locator("#train-runs-section").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "train-5-cancelled.png"), full_page=True)
    step = job(app)["step"]
    page.click("#train-resume")
    expect(page.locator("#train-run-msg")).to_contain_text(f"Resumed run {run_id}")
    wait_job(app, lambda s: s["run_id"] == run_id and s["state"] == "running" and s["step"] > step,
             "the resumed run to train on")
    expect(page.locator("#train-run-info")).to_contain_text("running")
    cancel_and_wait(app, page)


def cancel_and_wait(app, page):
    page.click("#train-cancel")
    end = time.monotonic() + 120  # cancel lands at the next optimizer step
    while job(app)["state"] != "cancelled" and time.monotonic() < end and app.proc.poll() is None:
        time.sleep(0.25)
    assert job(app)["state"] == "cancelled"


def test_bad_data_shows_a_clear_message(browser, app, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n')
    ctx, page = open_train_tab(browser, app.base)
    page.set_input_files("#dataset input[type=file]", str(bad))
    expect(page.locator("#data-preview")).to_contain_text("bad.jsonl line 2: malformed JSON", timeout=30000)
    page.screenshot(path=str(tmp_path / "train-bad-data.png"), full_page=True)
    ctx.close()
