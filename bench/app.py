"""App start-up and first-token latency: lmstudio_lite against a bare one-Textbox Gradio app.

    python bench/app.py                # 3 runs each, stories260K with a chat template
    python bench/app.py --runs 1 --model /path/to/model

For each run a fresh process is started and timed from spawn:
- page: until ``GET /config`` answers 200 (the page can be drawn);
- first token: until the first streamed token of a chat reply is visible in headless
  chromium (the browser is started beforehand, so its own launch is not counted);
- Ctrl-C: from SIGINT (the page still open) until the process has exited;
- page CPU: the CPU seconds the process used until the page answered (Linux), which a
  machine busy with other work inflates far less than the wall-clock times.
The floor is a bare ``gr.Blocks`` with one Textbox streaming a canned reply: what any
Gradio app costs here. Prints medians and our/floor ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
STORIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "models" / "stories260K"
if not STORIES.is_dir():
    STORIES = REPO.parent / "shared" / "data" / "models" / "stories260K"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions"]

FLOOR_APP = textwrap.dedent("""
    import sys, time
    import gradio as gr

    def reply(message):
        out = ""
        for word in ("a bare app streams this reply word by word").split():
            out += word + " "
            time.sleep(0.01)
            yield out

    with gr.Blocks() as demo:
        box = gr.Textbox(elem_id="chat-input", lines=1)
        out = gr.Textbox(elem_id="floor-out")
        box.submit(reply, box, out)
    demo.launch(server_port=int(sys.argv[1]), prevent_thread_lock=False, quiet=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_model(tmp: Path, source: Path) -> Path:
    """A copy of ``source`` whose tokenizer has a ChatML-like template (stories260K has none)."""
    dest = tmp / source.name
    shutil.copytree(source, dest)
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("chat_template", CHATML)
    cfg_path.write_text(json.dumps(cfg))
    return dest


def wait_page(base: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the process exited with {proc.returncode}")
        try:
            if httpx.get(base + "/config", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise TimeoutError(base)


def first_token(ctx, base: str, output_js: str) -> None:
    """Open the page, send a message, wait until reply text appears."""
    page = ctx.new_page()
    page.set_default_timeout(120000)
    page.goto(base + "/")
    box = page.locator("#chat-input textarea")
    box.fill("Hello")
    box.press("Enter")
    page.wait_for_function(output_js, timeout=120000)


OURS_JS = ("() => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');"
           " return b.length && b[b.length - 1].innerText.trim().length > 0; }")
FLOOR_JS = "() => { const t = document.querySelector('#floor-out textarea'); return t && t.value.length > 0; }"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0.0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def one_run(browser, cmd: list[str], port: int, env: dict, output_js: str) -> tuple[float, float, float, float]:
    """-> (page answers, first token, Ctrl-C to exit, CPU until the page answered) in seconds."""
    base = f"http://127.0.0.1:{port}"
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_page(base, proc)
        t_page = time.monotonic() - t0
        cpu_page = cpu_seconds(proc.pid)
        first_token(ctx, base, output_js)
        t_token = time.monotonic() - t0
        t1 = time.monotonic()
        proc.send_signal(signal.SIGINT)  # like Ctrl-C, with the page still open
        proc.wait(60)
        return t_page, t_token, time.monotonic() - t1, cpu_page
    finally:
        ctx.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def measure(browser, runs: int, model: Path, home: Path) -> dict[str, list[tuple[float, float]]]:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", LMSTUDIO_LITE_HOME=str(home), PYTHONUNBUFFERED="1")
    floor_py = home / "floor_app.py"
    floor_py.write_text(FLOOR_APP)
    results: dict[str, list[tuple[float, ...]]] = {"floor": [], "lmstudio_lite": []}
    for i in range(runs):  # interleaved, so a busy moment on the machine hits both alike
        port = free_port()
        results["floor"].append(one_run(browser, [sys.executable, str(floor_py), str(port)], port, env, FLOOR_JS))
        port = free_port()
        cmd = [sys.executable, "-m", "lmstudio_lite", "--no-browser", "--port", str(port), "--model", str(model)]
        results["lmstudio_lite"].append(one_run(browser, cmd, port, env, OURS_JS))
        (fp, ft, fx, fc), (op, ot, ox, oc) = results["floor"][-1], results["lmstudio_lite"][-1]
        print(f"run {i + 1}: floor page {fp:.2f} s ({fc:.2f} s CPU), token {ft:.2f} s, Ctrl-C {fx:.2f} s;"
              f" ours page {op:.2f} s ({oc:.2f} s CPU), token {ot:.2f} s, Ctrl-C {ox:.2f} s;"
              f" page ratio {op / fp:.2f}x", flush=True)
    return results


def report(results: dict[str, list[tuple[float, ...]]]) -> None:
    med = {k: tuple(statistics.median(r[i] for r in v) for i in range(4)) for k, v in results.items()}
    print(f"\n{'app':16} {'page answers':>14} {'first token':>13} {'Ctrl-C':>9} {'page CPU':>10}")
    for name, (page, token, stop, cpu) in med.items():
        print(f"{name:16} {page:12.2f} s {token:11.2f} s {stop:7.2f} s {cpu:8.2f} s")
    fp, ft, _, fc = med["floor"]
    op, ot, _, oc = med["lmstudio_lite"]
    paired = statistics.median(o[0] / f[0] for f, o in zip(results["floor"], results["lmstudio_lite"]))
    print(f"{'ratio ours/floor':16} {op / fp:13.2f}x {ot / ft:12.2f}x {'':9} {oc / fc:9.2f}x")
    print(f"page ratio, median of the paired runs: {paired:.2f}x")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", type=Path, default=STORIES, help="model folder (a chat template is added if missing)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp, sync_playwright() as p:
        model = chat_model(Path(tmp), args.model)
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            report(measure(browser, args.runs, model, Path(tmp)))
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
