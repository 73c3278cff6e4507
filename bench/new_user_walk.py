"""A new user's walk through every tab on the bundled default model, in headless chromium (issue 15, D1-D12).

    python bench/new_user_walk.py [--out DIR]

Not a CI test: it starts the real app (``python -m lmstudio_lite --no-browser --port P``, no --model,
LMSTUDIO_LITE_HOME a fresh temp folder, so the bundled lmstudio-lite-tiny is loaded), chats, summarizes,
translates, inspects, imports models and starts training runs: a few minutes on two busy cores. Each
step waits on what the page shows, never on a fixed sleep, checks the issue's defect it is about, and
saves a screenshot into the folder it prints. A failed check does not stop the walk: the screenshot
of that moment is named after the check. Look at the screenshots: the printed checks are what a
person would check first, not everything a person would see.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures_ui import BROKEN_WORDS_JS, CHROMIUM, CHROMIUM_ARGS, open_page, start_app  # noqa: E402
from shared_data import SHARED_DATA  # noqa: E402

USER = "#chatbot [data-testid=user]"
BOT = "#chatbot [data-testid=bot]"
REPLY_S = 120  # the bundled model is tiny: a reply is seconds even on busy cores
STORY_PROMPT = "Tell me a long story."


class Walk:
    def __init__(self, page, out: Path, app):
        self.page, self.out, self.app = page, out, app
        self.results: list[dict] = []
        self.n = 0

    def shot(self, name: str, full_page: bool = False) -> str:
        self.n += 1
        path = self.out / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        print(f"  screenshot: {path}")
        return str(path)

    def check(self, defect: str, what: str, fn) -> bool:
        """Run ``fn`` (it returns a detail string, or raises on failure); record it with a screenshot."""
        try:
            detail = fn() or ""
            ok = True
        except Exception as e:  # a check that fails is a finding, not the end of the walk
            detail, ok = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", False
        png = self.shot(re.sub(r"\W+", "-", f"{defect}-{what}").strip("-")[:60].lower())
        self.results.append({"defect": defect, "what": what, "ok": ok, "detail": detail, "png": png})
        print(f"[{'ok' if ok else 'SEEN'}] {defect} {what}: {detail}")
        return ok


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def send(page, text: str, n_bots: int) -> str:
    """Type ``text``, click Send, wait until the ``n_bots``-th reply has ended (its stats, new ones); -> the stats."""
    before = page.locator("#chat-stats").inner_text()
    page.locator("#chat-input textarea").fill(text)
    page.click("#send-btn")
    page.wait_for_function(
        "([n, prev]) => { const t = document.querySelector('#chat-stats')?.innerText || '';"
        " return document.querySelectorAll('#chatbot [data-testid=bot]').length >= n"
        " && t !== prev && /finished|stopped/.test(t); }",
        arg=[n_bots, before], timeout=REPLY_S * 1000)
    # the chat list is redrawn after the reply (no progress marker): until it counts this turn too
    page.wait_for_function("n => (document.querySelector('#chat-list')?.innerText || '').includes(`${n} msgs`)",
                           arg=2 * n_bots, timeout=30000)
    return page.locator("#chat-stats").inner_text()


def wait_idle(page):
    """Until no event of the page is pending (Gradio's progress markers are all hidden)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
        ".every(t => t.classList.contains('hide') || !t.offsetParent)", timeout=REPLY_S * 1000)


def in_view(page, selector: str) -> str:
    box = page.locator(selector).bounding_box()
    vh = page.viewport_size["height"]
    assert box and box["y"] >= 0 and box["y"] + box["height"] <= vh, f"{selector} at {box}, viewport height {vh}"
    return f"{selector} at y={box['y']:.0f}..{box['y'] + box['height']:.0f} of {vh}"


def roles_of_saved_chats(home: Path) -> list[list[str]]:
    out = []
    for f in sorted((home / "chats").glob("*.json")):
        out.append([m["role"] for m in json.loads(f.read_text()).get("messages", [])])
    return out


def alternating(roles: list[str]) -> bool:
    roles = [r for r in roles if r != "system"]
    return all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))


# -- Chat ------------------------------------------------------------------------------------------

def chat(w: Walk):
    page = w.page
    page.click("#tab-chat-button")
    expect(page.locator("#context-meter")).to_contain_text("Context 256 tokens", timeout=60000)
    w.shot("chat-start")
    stats = []
    for i in range(1, 4):
        stats.append(send(page, STORY_PROMPT, i))
    wait_idle(page)

    def meter():
        text = page.locator("#context-meter").inner_text()
        assert page.locator("#chat-input textarea").input_value() == ""
        assert "cannot be sent" not in text, text
        assert re.search(r"prompt \d+.*reply up to \d+.*free \d+", text), text
        assert page.locator("#context-meter .meter-prompt").count() == 1
        assert page.locator("#context-meter .meter-reply").count() == 1
        return f"{text!r}; the three replies' stats: {stats}"
    w.check("D1", "meter after three long-story turns, box empty", meter)

    def stats_words():
        # D12: "stopped at the token limit" only when max new tokens ended it, not a full context
        for text in stats:
            n = int(re.search(r"(\d+) tokens", text).group(1))
            prompt = int(re.search(r"prompt (\d+) tokens", text).group(1))
            if "token limit" in text:
                assert prompt + n < 256, f"says token limit, but prompt {prompt} + reply {n} filled the context: {text}"
        return repr(stats)
    w.check("D12", "reply stats name what stopped it", stats_words)

    def regenerate():
        page.click("#new-chat-btn")
        page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=user]')")
        before = page.locator("#chat-stats").inner_text()
        page.locator("#chat-input textarea").fill("Tell me about a cat.")
        page.evaluate("() => { document.querySelector('#send-btn').click();"
                      " document.querySelector('#regen-btn')?.click(); }")  # the same tick: the worst case
        page.wait_for_function("() => document.querySelectorAll('#chatbot [data-testid=bot]').length >= 1",
                               timeout=REPLY_S * 1000)
        page.wait_for_function("prev => { const t = document.querySelector('#chat-stats')?.innerText || '';"
                               " return t !== prev && /finished|stopped/.test(t); }", arg=before,
                               timeout=REPLY_S * 1000)
        wait_idle(page)
        shown = page.evaluate("() => [...document.querySelectorAll('#chatbot [data-testid=user], "
                              "#chatbot [data-testid=bot]')].map(e => e.dataset.testid)")
        shown = ["user" if r == "user" else "assistant" for r in shown]
        assert alternating(shown), f"page shows {shown}"
        saved = roles_of_saved_chats(w.app.home)
        bad = [r for r in saved if not alternating(r)]
        assert not bad, f"saved chats not alternating: {bad}"
        return f"page {shown}; saved chats {saved}"
    w.check("D2", "Regenerate clicked in the same tick as Send", regenerate)

    def stop():
        page.click("#new-chat-btn")
        page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=user]')")
        before = page.locator("#chat-stats").inner_text()
        page.locator("#chat-input textarea").fill(STORY_PROMPT)
        # the bundled model writes ~500 tokens/s: a round trip from here would land after the reply, so
        # the page itself clicks Stop as soon as the reply shows its first words
        page.evaluate("""() => { const obs = new MutationObserver(() => {
            const bot = document.querySelector('#chatbot [data-testid=bot]');
            if (bot && bot.innerText.trim().length > 0) { obs.disconnect(); document.querySelector('#stop-btn').click(); }
        }); obs.observe(document.querySelector('#chatbot'), {childList: true, subtree: true, characterData: true}); }""")
        page.click("#send-btn")
        page.wait_for_function("prev => { const t = document.querySelector('#chat-stats')?.innerText || '';"
                               " return t !== prev && /finished|stopped/.test(t); }", arg=before,
                               timeout=REPLY_S * 1000)
        wait_idle(page)
        text = page.locator("#chat-stats").inner_text()
        assert page.locator("#send-btn").is_enabled()
        reply = page.locator(BOT).last.inner_text()
        assert "stopped by you" in text, text
        return f"stats {text!r}; the reply kept: {reply[:80]!r}"
    w.check("Stop", "Stop mid-reply", stop)

    def show_prompt():
        page.evaluate("window.scrollTo(0, 0)")
        page.click("#show-prompt-btn")
        page.wait_for_function("() => (document.querySelector('#prompt-view textarea')?.value || '').length > 0")
        value = page.locator("#prompt-view textarea").input_value()
        where = in_view(page, "#prompt-view textarea")
        return f"{where}; prompt starts {value[:60]!r}"
    w.check("D8", "Show prompt in view", show_prompt)

    def max_new():
        acc = page.locator("#chat-settings button").first
        if not page.locator("#max-new-tokens input[type=range]").is_visible():
            acc.click()
        rng = page.locator("#max-new-tokens input[type=range]")
        expect(rng).to_be_visible()
        top = int(float(rng.get_attribute("max")))
        assert top <= 256, f"max new tokens slider goes to {top} on a 256-token model"
        return f"slider max {top}"
    w.check("D12", "max new tokens bounded by the context", max_new)

    def empty_actions():
        page.evaluate("window.scrollTo(0, 0)")
        page.click("#new-chat-btn")
        page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=user]')")
        notice = page.locator("#chat-side-notice")
        page.click("#chat-export-btn")
        expect(notice).to_contain_text("nothing to export")
        said_export = notice.inner_text()
        page.click("#chat-delete-btn")
        expect(notice).to_contain_text("nothing to delete")
        expect(page.locator("#chat-delete-confirm-row")).to_be_hidden()
        return f"export: {said_export!r}; delete: {notice.inner_text()!r}"
    w.check("D7", "export / delete an empty chat", empty_actions)

    def list_buttons():
        page.evaluate("window.scrollTo(0, 0)")
        return "; ".join(in_view(page, b) for b in ("#new-chat-btn", "#chat-delete-btn", "#chat-export-btn",
                                                      "#chat-import-btn"))
    w.check("D12", "chat list buttons on screen", list_buttons)


# -- Summarize ---------------------------------------------------------------------------------------

def story_of_267_words() -> str:
    """267 words of TinyStories validation text (the issue's example length): the first run of paragraphs
    from one 'Once upon' / 'One day' paragraph to the next with exactly that many words."""
    paras = [p.strip() for p in (SHARED_DATA / "tinystories_valid_sample.txt").read_text().split("\n\n") if p.strip()]
    stories, cur = [], []
    for p in paras:
        if p.startswith(("Once upon", "One day")) and cur:
            stories.append(cur)
            cur = []
        cur.append(p)
    for s in stories[1:]:  # the file's first story is cut at its start
        if sum(len(p.split()) for p in s) == 267:
            return "\n\n".join(s)
    raise SystemExit("no 267-word story in tinystories_valid_sample.txt")


def summarize(w: Walk):
    page = w.page
    page.click("#tab-summarize-button")
    page.locator("#sum-input textarea").fill(story_of_267_words())
    page.locator("#sum-style").get_by_label("Bullet points").check()
    page.click("#sum-btn")

    def bullets():
        page.wait_for_function(
            """() => { const box = document.querySelector('#sum-output textarea');
                const tr = document.querySelector('#sum-output [data-testid=status-tracker]');
                return box && box.value.trim().length > 0 && (!tr || tr.classList.contains('hide')); }""",
            timeout=REPLY_S * 1000)
        wait_idle(page)
        summary = page.locator("#sum-output textarea").input_value()
        info = page.locator("#sum-info").inner_text()
        lines = [ln for ln in summary.splitlines() if ln.strip()]
        assert lines and all(ln.startswith("- ") and ln[2:].strip() for ln in lines), summary
        m = re.search(r"in (\d+) parts", info)
        parts = int(m.group(1)) if m else 1
        assert parts < 5, info
        page.evaluate("window.scrollTo(0, 0)")  # the screenshot shows the summary, not the style buttons
        return f"{parts} part(s); info {info!r}; summary {summary!r}"
    w.check("D9", "267-word story in bullet points", bullets)


# -- Translate ---------------------------------------------------------------------------------------

def translate(w: Walk):
    page = w.page
    page.click("#tab-translate-button")

    def languages():
        page.click("#trans-tgt input")
        options = page.locator("ul[role=listbox] li[role=option]")
        expect(options.first).to_be_visible()
        names = [t.replace("✓", "").strip() for t in options.all_inner_texts()]
        w.shot("translate-language-list")
        page.keyboard.press("Escape")
        marked = [("may not work" in n) for n in names]
        assert any(marked) and not all(marked), names
        first_marked = marked.index(True)
        assert all(marked[first_marked:]), f"known and untried languages interleave: {names}"
        return f"known first: {names[:first_marked]}; then: {names[first_marked:]}"
    w.check("D10", "target language list", languages)

    def english_to_french():
        page.locator("#trans-input textarea").fill("The little dog is happy.")
        page.wait_for_function("() => /English/.test(document.querySelector('#trans-detected')?.innerText || '')")
        page.click("#trans-btn")
        page.wait_for_function(
            """() => { const box = document.querySelector('#trans-output textarea');
                const tr = document.querySelector('#trans-output [data-testid=status-tracker]');
                return box && box.value.trim().length > 0 && (!tr || tr.classList.contains('hide')); }""",
            timeout=REPLY_S * 1000)
        return repr(page.locator("#trans-output textarea").input_value())
    w.check("Translate", "en -> default target", english_to_french)


# -- Inspect -----------------------------------------------------------------------------------------

def inspect(w: Walk):
    page = w.page
    page.click("#tab-inspect-button")

    def tokens_and_top10():
        page.locator("#inspect-text textarea").fill("Once upon a time there was a little dog.")
        page.click("#inspect-btn")
        page.wait_for_function("() => document.querySelectorAll('#inspect-candidates label').length >= 10",
                               timeout=REPLY_S * 1000)
        wait_idle(page)
        tokens = page.locator("#inspect-tokens").inner_text()
        assert "dog" in tokens, tokens
        n = page.locator("#inspect-candidates label").count()
        return f"{n} candidates; tokens {tokens[:80]!r}"
    w.check("Inspect", "tokens and top-10 shown", tokens_and_top10)


# -- Models ------------------------------------------------------------------------------------------


def models(w: Walk, scratch: Path):
    page = w.page
    page.click("#tab-models-button")
    expect(page.locator("#models-table")).to_contain_text("lmstudio-lite-tiny", timeout=30000)

    def headers():
        page.set_viewport_size({"width": 760, "height": 1000})
        try:
            broken = page.evaluate(BROKEN_WORDS_JS)
            w.shot("models-narrow")
        finally:
            page.set_viewport_size({"width": 1280, "height": 1000})
        assert broken == [], f"header words split across lines: {broken}"
        broken = page.evaluate(BROKEN_WORDS_JS)
        assert broken == [], f"header words split across lines at 1280: {broken}"
        return "no header word split at 760 or 1280 px"
    w.check("D12", "models table headers", headers)

    bundled = ROOT / "models" / "lmstudio-lite-tiny"
    no_config = scratch / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"\0" * 16)
    msg = page.locator("#models-msg")

    def import_path(path: str) -> str:
        before = msg.inner_text()
        page.locator("#import-path textarea, #import-path input").first.fill(path)
        page.click("#import-btn")
        page.wait_for_function("prev => (document.querySelector('#models-msg')?.innerText || '') !== prev",
                               arg=before, timeout=60000)
        wait_idle(page)
        return msg.inner_text()

    def clear(path: str):
        def run():
            text = import_path(path)
            assert "Something went wrong" not in text and "Error(" not in text and "Traceback" not in text, text
            assert "Traceback" not in w.app.log(), "the app printed a traceback"
            return repr(text)
        return run

    first = import_path(str(bundled))
    print(f"  first import of the bundled model: {first!r}")
    w.check("D6", "duplicate import", clear(str(bundled)))
    w.check("D6", "missing folder", clear(str(scratch / "no-such-folder")))
    w.check("D6", "folder without config.json", clear(str(no_config)))


# -- Train -------------------------------------------------------------------------------------------

def pick_sample(page, name: str) -> str:
    """Choose a bundled sample and wait for its preview to replace what the preview showed; -> the preview."""
    before = page.locator("#data-preview").inner_text()
    page.click("#sample-pick input")
    page.locator("ul[role=listbox] li[role=option]", has_text=name).first.click()
    page.wait_for_function("prev => { const t = document.querySelector('#data-preview')?.innerText.trim() || '';"
                           " return t && t !== prev.trim() && !/Upload data or pick/.test(t); }",
                           arg=before, timeout=60000)
    wait_idle(page)
    return page.locator("#data-preview").inner_text()


def train(w: Walk, scratch: Path):
    page = w.page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.click("#tab-train-button")
    page.wait_for_selector("#train-start")

    def fold_and_fields():
        page.evaluate("window.scrollTo(0, 0)")
        where = in_view(page, "#train-start")
        hidden = {s: page.locator(s).is_hidden() for s in ("#train-epochs", "#train-seed")}
        method = page.locator("#train-method input:checked").get_attribute("value")
        rank_hidden = page.locator("#train-lora-rank").is_hidden()
        assert all(hidden.values()), f"shown though not chosen: {hidden}"
        assert rank_hidden == (method != "LoRA"), f"method {method}, LoRA rank hidden {rank_hidden}"
        return f"{where}; method {method}; hidden {hidden}, LoRA rank hidden {rank_hidden}"
    w.check("D12", "Start above the fold, only chosen fields", fold_and_fields)
    page.set_viewport_size({"width": 1280, "height": 1000})

    train_msg = page.locator("#train-msg")
    status = page.locator("#train-status")

    def cancel_run():
        page.click("#train-cancel")
        expect(status).to_contain_text(re.compile("cancelled|finished|failed"), timeout=REPLY_S * 1000)
        wait_idle(page)

    def bundled_sample():
        preview = pick_sample(page, "sample_stories.txt")
        assert "cannot be used" not in preview, preview
        page.click("#train-start")
        expect(train_msg).to_contain_text("Started run", timeout=60000)
        # it trains: a step past 0 (or the end) shows, not a failure
        expect(status).to_contain_text(re.compile(r"step [1-9]|finished|failed"), timeout=REPLY_S * 1000)
        said = train_msg.inner_text()
        assert "failed" not in status.inner_text(), status.inner_text()
        w.shot("train-sample-running", full_page=True)
        cancel_run()
        return f"{said!r}; preview {preview[:120]!r}"
    w.check("D5", "bundled sample with default settings", bundled_sample)

    def bad_data():
        bad = scratch / "bad.jsonl"
        bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n')
        page.set_input_files("#dataset input[type=file]", str(bad))
        expect(page.locator("#data-preview")).to_contain_text("malformed JSON", timeout=60000)
        wait_idle(page)
        page.click("#train-start")
        page.wait_for_function("() => /cannot be used|Started run/.test(document.querySelector('#train-msg')?.innerText || '')",
                               timeout=60000)
        said = train_msg.inner_text()
        assert "Started run" not in said and "cannot be used" in said, said
        assert "running" not in status.inner_text(), status.inner_text()
        return repr(said)
    w.check("D4", "Start on data the preview rejects", bad_data)

    def reload_shows_settings():
        preview = pick_sample(page, "sample_stories.txt")
        assert "cannot be used" not in preview, preview
        steps = page.locator("#train-steps input")
        steps.fill("4321")
        steps.press("Tab")
        lr = page.locator("#train-lr input")
        lr.fill("0.001")
        lr.press("Tab")
        wait_idle(page)
        page.click("#train-start")
        expect(train_msg).to_contain_text("4321 steps", timeout=60000)
        expect(status).to_contain_text("running", timeout=REPLY_S * 1000)
        page.reload()
        page.wait_for_selector("#chat-input textarea")
        page.click("#tab-train-button")
        expect(status).to_contain_text("running", timeout=60000)
        expect(page.locator("#train-steps input")).to_have_value("4321")
        expect(page.locator("#train-lr input")).to_have_value("0.001")
        assert "already" not in train_msg.inner_text(), f"stale warning: {train_msg.inner_text()!r}"
        return f"after reload: steps {steps.input_value()}, lr {lr.input_value()}; status {status.inner_text()[:100]!r}"
    w.check("D11", "the form after a reload", reload_shows_settings)

    def cancel_then_use():
        if page.locator("#train-cancel").is_enabled():
            cancel_run()
        use = page.locator("#use-in-chat")
        page.locator("#train-runs-section").scroll_into_view_if_needed()
        if use.is_disabled():
            info = page.locator("#train-run-info").inner_text()
            return f"Use in Chat is off after Cancel; run info {info[:160]!r}"
        use.click()
        page.wait_for_function("() => (document.querySelector('#train-run-msg')?.innerText || '').trim().length > 0")
        said = page.locator("#train-run-msg").inner_text()
        assert re.search(r"\S+", said) and ("model" in said.lower() or "loaded" in said.lower()), said
        return f"Use in Chat says {said!r}"
    w.check("D3", "Cancel, then Use in Chat", cancel_then_use)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="screenshot folder (default: a new temp folder)")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="new-user-walk-"))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="new-user-walk-files-"))
    home = Path(tempfile.mkdtemp(prefix="new-user-walk-home-"))
    print(f"screenshots: {out}")
    from playwright.sync_api import expect as pw_expect
    from playwright.sync_api import sync_playwright

    pw_expect.set_options(timeout=30000)
    t0 = time.monotonic()
    app = start_app(None, home)  # no --model: the bundled default, as a new user gets it
    print(f"app up in {time.monotonic() - t0:.1f} s at {app.base} (home {home}, log {app.log_path})")
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                ctx, page = open_page(browser, app.base, timeout_ms=60000)
                w = Walk(page, out, app)
                for step in (chat, summarize, translate, inspect):
                    step(w)
                models(w, scratch)
                train(w, scratch)
                ctx.close()
            finally:
                browser.close()
    finally:
        app.stop()
    print("\nsummary:")
    for r in w.results:
        print(f"  [{'ok' if r['ok'] else 'SEEN'}] {r['defect']:9} {r['what']}  ({r['png']})")
    (out / "results.json").write_text(json.dumps(w.results, indent=2, ensure_ascii=False))
    print(f"\nscreenshots and results.json in {out} ({time.monotonic() - t0:.0f} s)")
    return 0 if all(r["ok"] for r in w.results) else 1


if __name__ == "__main__":
    sys.exit(main())
