"""The app's public Gradio endpoints through gradio_client, against the real app in a subprocess.

Covers: /chat streaming and cancel, /summarize with a text that needs chunking, /translate,
readable errors, private internals, a busy --port, a broken model folder, and --share offline.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fixtures_ui import REPO, app_env, free_port, start_app, wait_http
from gradio_client import Client

pytestmark = pytest.mark.slow

STORY = ("Lily had a small red ball. She played with it in the park every day after school. "
         "Her dog Max liked to run after the ball and bring it back to her.")


@pytest.fixture(scope="module")
def slow_app(ui_models, tmp_path_factory):
    app = start_app(ui_models["slow-chat"], tmp_path_factory.mktemp("home-slow"))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def small_app(ui_models, tmp_path_factory):
    app = start_app(ui_models["tiny-256"], tmp_path_factory.mktemp("home-small"))
    yield app
    app.stop()


def chat_args(message, max_new_tokens=40, seed=1):
    # message, system, temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed, stop
    return (message, "You are a helpful assistant.", 0.7, 0.9, 40, 0.05, 1.1, max_new_tokens, seed, "")


def test_chat_streams_the_reply(slow_app):
    client = Client(slow_app.base + "/", verbose=False)
    job = client.submit(*chat_args("Hello there", max_new_tokens=30), api_name="/chat")
    outs = list(job)
    assert len(outs) >= 5, outs
    assert all(b.startswith(a) for a, b in zip(outs, outs[1:])), "each update extends the last"
    assert job.result() == outs[-1] and len(outs[-1]) > 10


def test_chat_cancel_frees_the_model(slow_app):
    client = Client(slow_app.base + "/", verbose=False)
    job = client.submit(*chat_args("Tell me a long story", max_new_tokens=2000), api_name="/chat")
    end = time.monotonic() + 60
    while len(job.outputs()) < 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert len(job.outputs()) >= 3
    job.cancel()
    t0 = time.monotonic()
    again = client.predict(*chat_args("Hi", max_new_tokens=5), api_name="/chat")
    assert again and time.monotonic() - t0 < 20, "a cancelled reply must release the model at once"
    assert len(job.outputs()[-1]) < 2000 * 2  # it did not run to the end


def test_summarize_short_and_chunked(small_app):
    client = Client(small_app.base + "/", verbose=False)
    short = client.predict(STORY, "One sentence", 24, 0.0, api_name="/summarize")
    assert isinstance(short, str) and short.strip()
    long_text = "\n\n".join(f"Part {i}. {STORY}" for i in range(8))  # ~8x the 256-token context
    job = client.submit(long_text, "Bullet points", 24, 0.0, api_name="/summarize")
    outs = list(job)
    assert any(o.startswith("Partial summaries") and "[Part 2]" in o for o in outs), "map step shown"
    assert outs[-1].strip() and not outs[-1].startswith("Partial summaries"), "combined at the end"


def test_translate_keeps_paragraphs(small_app):
    client = Client(small_app.base + "/", verbose=False)
    job = client.submit("Hello my friend.\n\nThe dog is happy.", "English", "French", 12, 0.0,
                        api_name="/translate")
    outs = list(job)
    assert len(outs) >= 2 and outs[-1].strip()
    assert "\n\n" in outs[-1], "two paragraphs in, two out"
    auto = client.predict("Le chien est très content et il joue dans le jardin.", "Auto-detect", "English", 8,
                          0.0, api_name="/translate")
    assert auto.strip()


def test_errors_are_readable_and_the_app_keeps_answering(small_app):
    client = Client(small_app.base + "/", verbose=False)
    for args, api, words in [(chat_args("   "), "/chat", "empty"),
                             (chat_args("x " * 600_000), "/chat", "context"),
                             (("", "One sentence", 24, 0.0), "/summarize", "no text"),
                             (("Hi", "English", "Klingon", 8, 0.0), "/translate", "Unknown language")]:
        with pytest.raises(Exception, match=words) as err:
            client.predict(*args, api_name=api)
        assert "Traceback" not in str(err.value)
    assert client.predict(*chat_args("Hello", max_new_tokens=8), api_name="/chat")


def test_only_deliberate_endpoints_are_public(small_app):
    info = Client(small_app.base + "/", verbose=False).view_api(print_info=False, return_format="dict")
    names = set(info["named_endpoints"])
    assert {"/chat", "/summarize", "/translate"} <= names
    internal = {n for n in names if re.match(r"^/(lambda|run|submit|meter|select|upload|edit|stop|new_chat)", n)}
    assert not internal, internal
    assert not info["unnamed_endpoints"]


def test_broken_model_folder_starts_and_says_so(ui_models, tmp_path):
    app = start_app(ui_models["broken"], tmp_path / "home")
    try:
        health = httpx.get(app.base + "/healthz").json()
        assert health["model"] is None and "config.json" in health["error"]
        assert "no model loaded" in app.log()
        client = Client(app.base + "/", verbose=False)
        with pytest.raises(Exception, match="No model is loaded"):
            client.predict(*chat_args("Hello"), api_name="/chat")
        assert httpx.get(app.base + "/config").status_code == 200  # still serving
    finally:
        app.stop()


def test_busy_explicit_port_fails_clearly(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "lmstudio_lite", "--no-browser", "--port", str(port)],
                              cwd=REPO, env=app_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"port {port}" in done.stderr and "not available" in done.stderr and "Traceback" not in done.stderr


def test_default_port_skips_a_busy_one():
    from lmstudio_lite.ui.launch import DEFAULT_PORT, bind_socket

    held = []
    try:
        sock, port = bind_socket("127.0.0.1", None)
        held.append(sock)
        sock.listen()
        assert DEFAULT_PORT <= port < DEFAULT_PORT + 100
        second, port2 = bind_socket("127.0.0.1", None)
        held.append(second)
        assert port2 > port
    finally:
        for s in held:
            s.close()


def test_share_offline_requires_login_and_key(ui_models, tmp_path):
    # An unreachable proxy makes the tunnel fail fast even on a machine with internet: no public link from tests.
    env = app_env(tmp_path / "home", HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
                  NO_PROXY="127.0.0.1,localhost")
    app = start_app(ui_models["tiny-chat"], tmp_path / "home", "--share", wait_page=False, env=env)
    try:
        end = time.monotonic() + 60
        while "share link" not in app.log() and time.monotonic() < end:
            time.sleep(0.2)
        log = app.log()
        assert "could not create a share link" in log and "keeps serving locally" in log
        login = re.search(r"user '([^']+)', password '([^']+)'", log)
        key = re.search(r"API key for /v1 .*: (\S+)", log)
        assert login and key, log
        assert httpx.get(app.base + "/config").status_code == 401
        assert httpx.get(app.base + "/v1/models").status_code == 401
        ok = httpx.get(app.base + "/v1/models", headers={"Authorization": f"Bearer {key.group(1)}"})
        assert ok.status_code == 200
        client = Client(app.base + "/", auth=(login.group(1), login.group(2)), verbose=False)
        assert client.predict(*chat_args("Hi", max_new_tokens=5), api_name="/chat") is not None
    finally:
        app.stop()
