"""The bundled default model: golden greedy outputs, transformers parity, the app
starting on it with no arguments, and a short fine-tune that lowers the loss."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
import torch
from fixtures_ui import open_page, start_app
from gradio_client import Client

from lmstudio_lite import load_model

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "models" / "lmstudio-lite-tiny"
ENGLISH = "Once upon a time, there was a little dog named Max."
CHINESE = "我喜欢在公园里散步。"
GOLDEN = json.loads((Path(__file__).parent / "golden_default_model.json").read_text(encoding="utf-8"))


def load_tokenizer():
    from lmstudio_lite.checkpoints.tokenizer import Tokenizer

    return Tokenizer.from_folder(BUNDLED)


def test_golden_greedy_outputs():
    m = load_model(BUNDLED, device="cpu", dtype="float32")
    for case in GOLDEN["cases"]:
        prompt = case["prompt"]
        stream = m.generate(prompt, max_new_tokens=GOLDEN["max_new_tokens"], temperature=0)
        assert "".join(stream) == case["text"], prompt
        assert stream.new_ids == case["new_ids"], prompt


def test_loads_in_transformers_with_equal_logits():
    import transformers as tf

    ours = load_model(BUNDLED, device="cpu", dtype="float32")
    ref = tf.AutoModelForCausalLM.from_pretrained(BUNDLED).eval()
    hf_tok = tf.AutoTokenizer.from_pretrained(BUNDLED)
    text = "Once upon a time, there was a little dog named Max."
    ids = ours.tokenizer.encode(text)
    assert ids == hf_tok(text)["input_ids"]
    msgs = [{"role": "user", "content": "Translate English to French:\nI like cats."}]
    assert ours.tokenizer.render_chat(msgs) == hf_tok.apply_chat_template(msgs, tokenize=False,
                                                                          add_generation_prompt=True)
    with torch.no_grad():
        a = ref(torch.tensor([ids])).logits
    assert (ours.logits(torch.tensor([ids])) - a).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def bundled_app(tmp_path_factory):
    """The app started with no arguments: it serves the bundled model."""
    app = start_app(None, tmp_path_factory.mktemp("home"))
    yield app
    app.stop()


def test_app_starts_on_it_with_no_arguments(bundled_app):
    app = bundled_app
    assert httpx.get(app.base + "/healthz").json()["model"] == BUNDLED.name
    client = Client(app.base + "/", verbose=False)
    reply = client.predict("Tell me a story.", "", 0.0, 1.0, 0, 0.0, 1.0, 24, 1, "", api_name="/chat")
    assert isinstance(reply, str) and len(reply.strip()) > 10


# heavy: flaky, and the flake is the app's with Gradio's, not yet fixed: about 1 run in 4-10. Seen in
# the browser's own event log (2026-12-01): a reply's end queues two colour redraws (the reply's .then
# and the saved list's change); the toggle, flipped while one of them is still on its way, joins the
# queue a few ms before that one's result arrives; Gradio 6 then sends close_stream right after that
# result (its server closes a session's stream when it finds no other event of it pending), and the
# toggle's result, computed afterwards, never reaches the page. queue=False did not help (Gradio 6
# still joins the queue: 1 failure in 32 probe runs with it, 1 in 10 without). Kept out of CI's run
# until that is fixed; the Inspect tab's own checks stay in it (tests/test_inspect.py, the Chinese
# Inspect walk in test_ui_i18n_browser).
@pytest.mark.heavy
@pytest.mark.browser
def test_inspect_tab_in_a_browser(bundled_app, browser, tmp_path_factory):
    """A chat reply coloured by probability and sent to the Inspect tab; then an English and a
    Chinese sentence inspected, a candidate clicked (a what-if branch), the heatmap shown."""
    from playwright.sync_api import expect

    shots = Path(os.environ.get("UI_SHOTS_DIR") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    ctx, page = open_page(browser, bundled_app.base)
    try:
        page.get_by_text("System prompt and sampling").click()
        max_new = page.locator("#max-new-tokens input[type=number]")
        max_new.fill("24")  # a short reply: the inspected conversation stays small
        max_new.press("Enter")
        box = page.locator("#chat-input textarea")
        box.fill("Tell me a story.")
        box.press("Enter")
        expect(page.locator("#chat-stats")).to_contain_text("24 tokens", timeout=60000)
        page.locator("#chat-probs-toggle input").check()
        tok = page.locator("#chat-probs span.tok")
        # once in a fresh full run the colours came after more than 30 s (the reply's event had not
        # completed: the list and meter were not redrawn either); the cap is a safety net, not a pace
        expect(tok.first).to_be_visible(timeout=90000)
        assert "alternatives:" in tok.first.get_attribute("title")
        page.screenshot(path=str(shots / "inspect-01-chat-colours.png"), full_page=True)

        page.click("#chat-inspect-btn")  # the conversation goes to the Inspect tab, which opens
        expect(page.locator("#tab-inspect-button")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#inspect-text textarea")).to_have_value(re.compile("Tell me a story"))
        expect(page.locator("#inspect-summary")).to_contain_text("perplexity", timeout=30000)

        chips = page.locator("#inspect-tokens .token")
        for text, n_tokens in ((ENGLISH, len(load_tokenizer().encode(ENGLISH))),
                               (CHINESE, len(CHINESE.encode()))):  # no Chinese merges: a token per byte
            page.locator("#inspect-text textarea").fill(text)
            page.click("#inspect-btn")
            expect(page.locator("#inspect-summary")).to_contain_text(f"{n_tokens} tokens", timeout=30000)
            expect(chips).to_have_count(n_tokens)
        chips.nth(2).click()  # a chip picks the position whose guesses are listed
        expect(page.locator("#inspect-position-info")).to_contain_text("Position 2:")
        page.locator("#inspect-candidates label").nth(1).click()
        expect(page.locator("#inspect-branch")).to_contain_text("What if", timeout=30000)
        page.click("#inspect-attn-btn")
        expect(page.locator("#inspect-heatmap img")).to_be_visible(timeout=30000)
        assert page.locator("#inspect-heatmap .hm-row").count() == len(CHINESE.encode())
        page.click("#inspect-lens-btn")
        expect(page.locator("#inspect-lens tr")).to_have_count(len(CHINESE.encode()) + 1)  # and a header row
        page.screenshot(path=str(shots / "inspect-02-chinese.png"), full_page=True)
        page.click("#tab-chat-button")
        page.click("#new-chat-btn")  # another conversation: the colours follow it
        expect(page.locator("#chat-probs")).to_contain_text("No reply to colour yet")
    finally:
        ctx.close()


def test_short_fine_tune_from_the_job_runner_lowers_the_loss(tmp_path):
    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.training.jobs import JobRunner
    from lmstudio_lite.training.spec import TrainSpec

    runner = JobRunner(app_paths(tmp_path / "home").ensure())
    spec = TrainSpec(data=str(REPO / "assets" / "sample_chat.jsonl"), base_model=str(BUNDLED), steps=16,
                     lr=1e-3, batch_size=4, seq_len=128, eval_every=0, save_every=0, warmup_steps=0,
                     val_fraction=0.1, threads=1, out_name="tiny-tuned")
    run_id = runner.start(spec)
    status = runner.wait(timeout=300)
    assert status["state"] == "finished", status.get("error")
    losses = [m["loss"] for m in runner.read_metrics(run_id) if m.get("loss") is not None]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.1, losses
    assert Path(status["model_path"]).is_dir()
    tuned = load_model(status["model_path"], device="cpu", dtype="float32")
    assert "".join(tuned.generate("Once upon a time", max_new_tokens=8, temperature=0))
