"""Fixtures for the app's UI tests: model folders, the real app in a subprocess, headless chromium.

Import what a test module needs (``from fixtures_ui import ui_models, browser, ...``).

Models (all with stories260K's tokenizer and a ChatML-like chat template):
- ``tiny-chat``: the real stories260K weights (fast, ~500 tok/s on one core; stops on its own).
- ``tiny-256``: the same with a 256-token context, so long texts must be chunked.
- ``slow-chat``: random weights, 6 x 384, ~35 tok/s on one core, never stops early: long
  replies that Stop can interrupt mid-stream.
- ``broken``: a folder whose config.json is not JSON.

``start_app`` runs the real entry point (``python -m lmstudio_lite --no-browser --port P --model M``)
with its own LMSTUDIO_LITE_HOME and waits for /healthz and the page, never a fixed sleep.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fixtures_models import STORIES, build_random_llama, copy_with_template

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions"]
START_TIMEOUT_S = 120.0  # two busy cores: importing torch + gradio alone can take 10 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(home: Path, **extra) -> dict:
    env = dict(os.environ, LMSTUDIO_LITE_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


@dataclass
class AppProcess:
    proc: subprocess.Popen
    base: str
    home: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        """Ctrl-C, then kill the app's whole process group: nothing it started outlives its test."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # like Ctrl-C: uvicorn shuts down cleanly
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = START_TIMEOUT_S,
              ok=(200,), log: Path | None = None) -> httpx.Response:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text() if log else ''}")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code in ok:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def wait_model_loaded(app: "AppProcess", timeout: float = START_TIMEOUT_S) -> dict:
    """Until /healthz no longer says the start-up model is loading; -> that answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if app.proc.poll() is not None:
            raise RuntimeError(f"the app exited with {app.proc.returncode}:\n{app.log()}")
        try:
            health = httpx.get(app.base + "/healthz", timeout=5.0).json()
        except httpx.TimeoutException:
            continue  # the model's import (torch) can hold the interpreter for seconds on a busy machine
        if not health.get("loading"):
            return health
        time.sleep(0.1)
    raise TimeoutError(f"the model did not load in {timeout:.0f} s")


def start_app(model: Path | None, home: Path, *extra: str, port: int | None = None, wait_page: bool = True,
              env: dict | None = None, wait_model: bool = True) -> AppProcess:
    """The real app in a subprocess on a free port, ready when this returns (with ``wait_model``: the
    model it starts with has loaded, or failed to; the page answers before that)."""
    port = port or free_port()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / f"app-{port}.log"
    cmd = [sys.executable, "-m", "lmstudio_lite", "--no-browser", "--port", str(port)]
    cmd += ["--model", str(model)] if model else []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd + list(extra), cwd=REPO, env=env or app_env(home), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    app = AppProcess(proc, f"http://127.0.0.1:{port}", home, log_path)
    try:
        wait_http(app.base + "/healthz", proc, log=log_path)
        if wait_page:
            wait_http(app.base + "/config", proc, log=log_path)
        if wait_model:
            wait_model_loaded(app)
    except BaseException:
        app.stop()
        raise
    return app


@pytest.fixture(scope="session")
def ui_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ui-models")
    chat = copy_with_template(STORIES, root / "tiny-chat")
    small = copy_with_template(STORIES, root / "tiny-256")
    cfg = json.loads((small / "config.json").read_text())
    cfg["max_position_embeddings"] = 256
    (small / "config.json").write_text(json.dumps(cfg, indent=2))
    slow = build_random_llama(root / "slow-chat", chat, context=2048)
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{this is not json")
    return {"tiny-chat": chat, "tiny-256": small, "slow-chat": Path(slow), "broken": broken}


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (README's test command does)")
    from playwright.sync_api import expect, sync_playwright

    # expect() has its own 5 s default, apart from the page's: on a busy 2-core CI machine a poll
    # tick or a queued event can take longer than that, so assertions wait as long as actions do.
    expect.set_options(timeout=20000)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser, base: str, timeout_ms: int = 20000, locale: str | None = None):
    """A fresh browser context (a fresh Gradio session) on the app, its language ``locale`` (e.g.
    "zh-CN") when given; -> (context, page)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000}, locale=locale)
    page = ctx.new_page()
    page.set_default_timeout(timeout_ms)
    page.goto(base + "/")
    page.wait_for_selector("#chat-input textarea")
    return ctx, page


def chat_handlers_for(ui_models, tmp_path_factory):
    """ChatHandlers over real services on the 256-token stories model, with its own home and chat store."""
    from fixtures_models import make_services

    from lmstudio_lite.chats import ChatStore
    from lmstudio_lite.ui.chat_handlers import ChatHandlers

    svc = make_services(tmp_path_factory.mktemp("home"), load=str(ui_models["tiny-256"]))
    svc.chats = ChatStore(svc.paths.chats)
    return ChatHandlers(svc)


@pytest.fixture
def quiet_toasts():
    """gr.Warning outside a request only warns: keep the handler tests' output clean."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# The words of the Models table's headers that wrap inside themselves (D12: headers broke mid-word).
BROKEN_WORDS_JS = """() => {
    const out = [];
    for (const th of document.querySelectorAll('#models-table th')) {
        const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            for (const m of node.textContent.matchAll(/\\S+/g)) {
                const r = document.createRange();
                r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
                const tops = new Set([...r.getClientRects()].map(x => Math.round(x.top)));
                if (tops.size > 1) out.push(m[0]);
            }
        }
    }
    return out; }"""
