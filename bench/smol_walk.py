"""SmolLM2-135M-Instruct in the app, walked through as a person would in headless chromium.

    python bench/smol_walk.py                 # chat, summarize, translate with the SmolLM2 GGUF
    python bench/smol_walk.py --starter       # the Chat tab's first-run offer, from an empty home
    python bench/smol_walk.py --out DIR --model FILE.gguf

Not a CI test: it loads a real 135M model and lets it write (minutes on two busy cores).
Each step waits on what the page shows (a reply's stats, a task's progress marker going
away, the starter's message changing), never on a fixed sleep, and saves a screenshot into
the folder it prints. Look at them: the printed checks only say what a person would
check first (Paris in the answer, '- ' bullets, French words), not whether it reads well.

--starter starts the app with an empty LMSTUDIO_LITE_HOME and no --model (so the bundled
toy is loaded and the offer shows), clicks *Get SmolLM2-135M-Instruct*, screenshots every
message the offer shows on the way, chats with the model it loaded, then restarts the
app on the same home to see that SmolLM2 is now the default chat model. Unlike the tests it
does not set HF_HUB_OFFLINE: the Hub's unreachability is met for real, and the time until
the fall-back to the package index is printed.
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

from fixtures_gguf import fetch_smollm2  # noqa: E402
from fixtures_ui import CHROMIUM, CHROMIUM_ARGS, app_env, open_page, start_app  # noqa: E402
from shared_data import SHARED_DATA  # noqa: E402

from lmstudio_lite.services.tasks.translate import detect_language  # noqa: E402

QUESTION = "What is the capital of France?"
REPLY_S = 300  # the longest one reply may take on two cores shared with other work
STARTER_S = 900  # pip download of a 98 MB wheel, then the load


def wiki_paragraph() -> str:
    """A short Wikipedia paragraph: the first AdversarialQA context of 500-800 characters."""
    with open(SHARED_DATA / "qa.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if 500 <= len(row.get("context", "")) <= 800:
                return row["context"]
    raise SystemExit("no short paragraph in qa.jsonl")


def story_paragraph() -> str:
    """A simpler text: the first TinyStories validation paragraph of 400-700 characters."""
    text = (SHARED_DATA / "tinystories_valid_sample.txt").read_text(encoding="utf-8")
    for para in text.split("\n\n"):
        if 400 <= len(para.strip()) <= 700:
            return para.strip()
    raise SystemExit("no short story paragraph in tinystories_valid_sample.txt")


def translation_source() -> str:
    """An ordinary English sentence of 9 words (their longest) from the second half of the Tatoeba pairs (which
    are sorted roughly by length)."""
    lines = (SHARED_DATA / "translation_en_fr.tsv").read_text(encoding="utf-8").splitlines()
    for line in lines[len(lines) // 2:]:
        en = line.split("\t")[0]
        if len(en.split()) >= 9 and en.endswith("."):
            return en
    raise SystemExit("no sentence in translation_en_fr.tsv")


def shot(page, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"  screenshot: {path}")
    return path


def wait_task_done(page, output_id: str, timeout_s: float = REPLY_S) -> str:
    """Until the task's output has text and its progress marker is hidden again; -> the output."""
    page.wait_for_function(
        """id => {
            const box = document.querySelector(`#${id} textarea`);
            const tracker = document.querySelector(`#${id} [data-testid=status-tracker]`);
            return box && box.value.trim().length > 0 && (!tracker || tracker.classList.contains('hide'));
        }""", arg=output_id, timeout=timeout_s * 1000)
    return page.locator(f"#{output_id} textarea").input_value()


def answered(reply: str, stats: str) -> bool:
    """Paris in the first sentence, and the model ended its turn (no ramble up to the token limit)."""
    return re.search(r"\bParis\b", reply.split(".")[0]) is not None and "finished" in stats


def ask_chat(page, question: str) -> tuple[str, str]:
    """Type a question, press Enter, wait until the reply's stats say it ended; -> (reply, stats)."""
    page.click("#tab-chat-button")
    box = page.locator("#chat-input textarea")
    box.fill(question)
    box.press("Enter")
    page.wait_for_function(
        "() => /finished|stopped/.test(document.querySelector('#chat-stats')?.innerText || '')",
        timeout=REPLY_S * 1000)
    return page.locator("#chatbot [data-testid=bot]").last.inner_text(), page.locator("#chat-stats").inner_text()


def chat_step(page, out: Path) -> dict:
    """The question with the Chat tab's defaults (the Balanced preset: temperature 0.7)."""
    t0 = time.monotonic()
    reply, stats = ask_chat(page, QUESTION)
    shot(page, out, "1-chat")
    return {"step": "chat (Balanced preset, the default)", "asked": QUESTION, "reply": reply, "stats": stats,
            "seconds": time.monotonic() - t0, "check": answered(reply, stats)}


def precise_chat_step(page, out: Path) -> dict:
    """The question again in a new chat with the Precise preset (greedy), as a user would retry."""
    page.click("#new-chat-btn")
    page.wait_for_function("() => !document.querySelector('#chatbot [data-testid=bot]')")
    page.click("#chat-settings button")  # the accordion's header opens it
    page.locator("#preset").get_by_label("Precise").check()
    page.wait_for_function("() => document.querySelector('#temperature input[type=number]')?.value === '0'")
    t0 = time.monotonic()
    reply, stats = ask_chat(page, QUESTION)
    shot(page, out, "1b-chat-precise")
    return {"step": "chat (Precise preset, greedy)", "asked": QUESTION, "reply": reply, "stats": stats,
            "seconds": time.monotonic() - t0, "check": answered(reply, stats)}


def summarize_step(page, out: Path, style: str, name: str, text: str) -> dict:
    page.click("#tab-summarize-button")
    page.locator("#sum-input textarea").fill(text)
    page.locator("#sum-style").get_by_label(style).check()
    t0 = time.monotonic()
    page.click("#sum-btn")
    summary = wait_task_done(page, "sum-output")
    shot(page, out, name)
    lines = [ln for ln in summary.splitlines() if ln.strip()]
    check = (all(ln.startswith("- ") for ln in lines) if style == "Bullet points"
             else not summary.lstrip().startswith("- "))
    return {"step": f"summarize ({style})", "source_chars": len(text), "summary": summary,
            "summary_chars": len(summary), "seconds": time.monotonic() - t0, "check": check and len(summary) < len(text)}


def translate_step(page, out: Path) -> dict:
    text = translation_source()
    page.click("#tab-translate-button")
    page.locator("#trans-input textarea").fill(text)
    page.wait_for_function("() => /English/.test(document.querySelector('#trans-detected')?.innerText || '')")
    t0 = time.monotonic()
    page.click("#trans-btn")
    french = wait_task_done(page, "trans-output")
    shot(page, out, "4-translate")
    seen = detect_language(french)
    return {"step": "translate", "english": text, "output": french, "detected": seen,
            "seconds": time.monotonic() - t0, "check": seen == "French"}


def walk(browser, model: Path, out: Path) -> list[dict]:
    home = Path(tempfile.mkdtemp(prefix="smol-walk-home-"))
    t0 = time.monotonic()
    app = start_app(model, home)
    print(f"app up with {model.name} in {time.monotonic() - t0:.1f} s at {app.base} (log {app.log_path})")
    try:
        ctx, page = open_page(browser, app.base, timeout_ms=60000)
        shot(page, out, "0-start")
        try:
            results = [chat_step(page, out), precise_chat_step(page, out),
                       summarize_step(page, out, "Bullet points", "2-summarize-bullets", wiki_paragraph()),
                       summarize_step(page, out, "Short paragraph", "3-summarize-paragraph", wiki_paragraph()),
                       summarize_step(page, out, "One sentence", "3b-summarize-story", story_paragraph()),
                       translate_step(page, out)]
        except Exception:
            shot(page, out, "failed")  # what the page showed when a wait ran out
            raise
        ctx.close()
        return results
    finally:
        app.stop()


def starter_messages(page, out: Path, timeout_s: float) -> list[dict]:
    """Every message the offer shows until it ends (✅ or ⚠), each screenshotted once."""
    seen, t0, last = [], time.monotonic(), ""
    while True:
        left = timeout_s - (time.monotonic() - t0)
        page.wait_for_function(
            "prev => { const t = document.querySelector('#starter-progress')?.innerText.trim() || '';"
            " return t && t !== prev; }", arg=last, timeout=max(left, 1) * 1000)
        last = page.locator("#starter-progress").inner_text().strip()
        kind = re.sub(r"[0-9.]+", "#", last)[:60]  # a progress bar's every percent is one kind
        if not seen or seen[-1]["kind"] != kind:
            path = shot(page, out, f"starter-{len(seen) + 1}")
            seen.append({"at_s": round(time.monotonic() - t0, 1), "text": last, "kind": kind, "png": str(path)})
            print(f"  {seen[-1]['at_s']:7.1f} s  {last[:160]!r}")
        if last.startswith(("✅", "⚠")):
            return seen


def starter(browser, out: Path) -> list[dict]:
    home = Path(tempfile.mkdtemp(prefix="smol-starter-home-"))
    env = app_env(home)
    env.pop("HF_HUB_OFFLINE")  # as a user has it: the Hub is tried, and found unreachable
    results = []
    app = start_app(None, home, env=env)
    print(f"empty home {home}: app at {app.base}, model {app_health(app)['model']}")
    try:
        ctx, page = open_page(browser, app.base, timeout_ms=60000)
        page.wait_for_selector("#starter-get")
        shot(page, out, "starter-0-offer")
        page.click("#starter-get")
        steps = starter_messages(page, out, STARTER_S)
        results.append({"step": "starter", "messages": steps, "check": steps[-1]["text"].startswith("✅")})
        if results[-1]["check"]:
            t0 = time.monotonic()  # the status line and the context meter follow the newly loaded model
            page.wait_for_function("() => /SmolLM2/.test(document.querySelector('#status-line')?.innerText || '')"
                                   " && /8,192/.test(document.querySelector('#context-meter')?.innerText || '')")
            print(f"  status line and meter name SmolLM2 {time.monotonic() - t0:.1f} s after the ✅")
            shot(page, out, "starter-4-followed")
            reply, stats = ask_chat(page, QUESTION)
            shot(page, out, "starter-chat")
            results.append({"step": "starter chat (Balanced preset, the default)", "reply": reply, "stats": stats,
                            "check": answered(reply, stats)})
            results.append(precise_chat_step(page, out))
        ctx.close()
    finally:
        app.stop()
    app = start_app(None, home, env=env)  # the next start: the default chat model is the one fetched
    try:
        ctx, page = open_page(browser, app.base, timeout_ms=60000)
        model = app_health(app)["model"]
        offer = page.locator("#starter-get").is_visible()
        shot(page, out, "starter-restart")
        results.append({"step": "restart", "model": model, "offer_visible": offer,
                        "check": "SmolLM2" in (model or "") and not offer})
        ctx.close()
    finally:
        app.stop()
    return results


def app_health(app) -> dict:
    import httpx

    return httpx.get(app.base + "/healthz", timeout=10).json()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="the SmolLM2 GGUF (default: fetched as the tests do)")
    p.add_argument("--out", type=Path, default=None, help="screenshot folder (default: a new temp folder)")
    p.add_argument("--starter", action="store_true", help="walk the first-run offer from an empty home instead")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="smol-walk-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {out}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            results = starter(browser, out) if args.starter else walk(browser, args.model or fetch_smollm2(), out)
        finally:
            browser.close()
    for r in results:
        print(f"\n[{'ok' if r['check'] else 'CHECK'}] {r['step']}")
        for k, v in r.items():
            if k not in ("step", "check"):
                print(f"  {k}: {v if not isinstance(v, float) else round(v, 1)}")
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print(f"\nscreenshots and results.json in {out}")
    return 0 if all(r["check"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
