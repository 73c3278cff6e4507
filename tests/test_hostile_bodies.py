"""Hostile and malformed request bodies on /v1: each gets a clean 4xx, quickly, and leaves
the server answering others and its memory where it was."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from fixtures_models import make_services, model_home, serve_in_thread  # noqa: F401

from lmstudio_lite.server.serve import create_app

JSON = {"content-type": "application/json"}
HI = [{"role": "user", "content": "hi"}]
BIG = 3_500_000  # characters: under the 4 MB body limit, far over what a 512-token context holds


@pytest.fixture(scope="module")
def services(model_home):  # noqa: F811
    return make_services(model_home, load="tiny-chat")


@pytest.fixture(scope="module")
def client(services):
    return TestClient(create_app(services))


def chat(client, body=None, raw: bytes | None = None, headers=JSON):
    content = raw if raw is not None else json.dumps(body)
    return client.post("/v1/chat/completions", content=content, headers=headers)


def big_body() -> dict:
    return {"model": "tiny-chat", "messages": [{"role": "user", "content": "x" * BIG}], "max_tokens": 1}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def test_body_over_the_limit_is_413_declared_or_not(client):
    r = chat(client, raw=b" " * (4 * 2**20 + 1))
    assert r.status_code == 413 and "4.0 MB" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the guard counts what arrives
        for _ in range(5):
            yield b" " * 2**20

    r = client.post("/v1/chat/completions", content=chunks(), headers=JSON)
    assert r.status_code == 413


def test_body_limit_is_settable(model_home):  # noqa: F811
    services = make_services(model_home)
    services.max_body_bytes = 1000
    r = chat(TestClient(create_app(services)), raw=b" " * 1001)
    assert r.status_code == 413


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""])
def test_v1_takes_json_only(client, ctype):
    """text/plain is what a web page may POST cross-site without asking: never accepted."""
    body = json.dumps({"model": "tiny-chat", "messages": HI, "max_tokens": 1})
    r = client.post("/v1/chat/completions", content=body, headers={"content-type": ctype} if ctype else {})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_long_prompt_is_refused_by_characters_before_tokenizing(client, services, monkeypatch):
    model = services.registry.current
    calls = []
    real = model.tokenizer.encode_chat
    monkeypatch.setattr(model.tokenizer, "encode_chat", lambda *a, **k: calls.append(1) or real(*a, **k))
    start = time.perf_counter()
    r = chat(client, big_body())
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in r.json()["error"]["message"] and calls == []
    assert time.perf_counter() - start < 2.0
    ok = chat(client, {"model": "tiny-chat", "messages": HI, "max_tokens": 1})
    assert ok.status_code == 200 and calls == [1]  # short prompts still tokenize as before


def test_character_bound_never_refuses_a_prompt_that_fits(services):
    """The bound is an upper limit: the longest prompt that tokenizes to the context fits under it."""
    model = services.registry.current
    vocab = model.tokenizer.backend.get_vocab()
    longest = max(vocab, key=len)
    fitting = longest.replace("▁", " ") * (model.context_length - 8)
    assert len(fitting) <= model.max_prompt_chars


def test_a_large_request_does_not_stall_the_others(services):
    with serve_in_thread(create_app(services)) as base:
        done = threading.Event()
        worst = []

        def post_big():
            try:
                httpx.post(base + "/v1/chat/completions", json=big_body(), timeout=60)
            finally:
                done.set()

        threading.Thread(target=post_big, daemon=True).start()
        while not done.is_set():
            start = time.perf_counter()
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200
            worst.append(time.perf_counter() - start)
        assert max(worst) < 1.0, worst


def test_memory_returns_to_baseline_after_20_large_requests(client):
    chat(client, big_body())  # the first one warms up allocator pools and lazy caches
    before = rss_mb()
    for _ in range(20):
        assert chat(client, big_body()).status_code == 400
    assert rss_mb() - before < 100, f"RSS grew from {before:.0f} MB to {rss_mb():.0f} MB"


@pytest.mark.parametrize("raw,words", [
    (b"[" * 200_000, "nested too deeply"),
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "stop": "\\udfff"}', "surrogate"),
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}',
     "surrogate"),
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', "top_logprobs"),
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "functions": [{"name": "f"}]}',
     "functions"),
])
def test_malformed_bodies_are_clean_400s(client, raw, words):
    r = chat(client, raw=raw)
    assert r.status_code == 400 and words in r.json()["error"]["message"]


def test_completion_prompt_with_a_lone_surrogate_is_400(client):
    r = client.post("/v1/completions", content=b'{"model": "tiny-chat", "prompt": "a\\ud800"}', headers=JSON)
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", ["~nosuchuser", "~nosuchuser/models/x", "\x00", "../../etc"])
def test_odd_model_names_are_404(client, name):
    r = chat(client, {"model": name, "messages": HI, "max_tokens": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
