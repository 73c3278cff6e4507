"""The OpenAI-compatible API against a real uvicorn server, driven by the official openai client."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from fixtures_models import make_services, model_home, own_logprobs, serve_in_thread, slow_chat, wait_ready  # noqa: F401

from lmstudio_lite.generation import SamplingParams
from lmstudio_lite.generation.stream import RunState, TextStream
from lmstudio_lite.server.serve import create_app

KEY = "sk-test-key"
HI = [{"role": "user", "content": "Tell me about a cat"}]


@pytest.fixture(scope="module")
def services(model_home):  # noqa: F811
    from lmstudio_lite.services.access import LoginThrottle

    svc = make_services(model_home, api_key=KEY, load="tiny-chat")
    svc.extra["login_throttle"] = LoginThrottle(base_s=0.0)  # wrong keys on purpose: no lockout here
    return svc


@pytest.fixture(scope="module")
def base(services):
    with serve_in_thread(create_app(services)) as url:
        yield url


@pytest.fixture
def client(base):
    with openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


def chat(client, messages=HI, model="tiny-chat", **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=messages, **kw)


def stream_text(client, **kw) -> tuple[str, list]:
    chunks = list(chat(client, stream=True, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# -- models -------------------------------------------------------------------------
def test_list_models(client):
    models = {m.id: m for m in client.models.list()}
    assert {"tiny-chat", "stories260K"} <= set(models)
    assert models["tiny-chat"].object == "model" and models["tiny-chat"].owned_by == "local"
    loaded = [m.model_extra["scheduler"] for m in models.values() if "scheduler" in (m.model_extra or {})]
    assert len(loaded) == 1 and loaded[0]["kv_budget_bytes"] > 0 and loaded[0]["max_batch"] == 8
    assert client.models.retrieve("stories260K").id == "stories260K"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ghost")


def test_logprobs_n_choices_and_cached_tokens_through_the_client(client, services):
    model = services.registry.get_or_load("tiny-chat")
    kw = dict(max_tokens=6, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    first = chat(client, **kw)
    out = chat(client, n=2, temperature=1.0, seed=5, **kw)  # the same prompt again: read from the cache
    assert out.usage.prompt_tokens_details.cached_tokens == out.usage.prompt_tokens - 1
    assert len(out.choices) == 2 and out.usage.completion_tokens == 12
    ids = model.prompt_ids(HI)
    for choice in [first.choices[0], *out.choices]:
        content = choice.logprobs.content
        assert "".join(t.token for t in content) == choice.message.content and len(content) == 6
        assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob for t in content)
    # OpenAI's meaning: the model's own log-softmax at each position (its K/V kept as the scheduler
    # keeps them), whatever the temperature
    direct = model.generate(HI, max_new_tokens=6, ignore_eos=True)
    assert "".join(direct) == first.choices[0].message.content
    reply = list(direct.new_ids)
    ref = own_logprobs(model.model, ids + reply, model.engine.dtype)[len(ids) - 1:-1]
    got = [t.logprob for t in first.choices[0].logprobs.content]
    # within a float16 K/V's rounding: the reply's own K/V came from decode steps, the reference's
    # from one prefill (float32 sums 1e-6 apart can round to float16 values one unit apart)
    assert got == pytest.approx([float(ref[i, r]) for i, r in enumerate(reply)], abs=1e-3)
    texts, ends = {0: "", 1: ""}, {}
    for c in chat(client, n=2, stream=True, temperature=1.0, seed=5, max_tokens=6, extra_body={"ignore_eos": True}):
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            ends[ch.index] = ch.finish_reason or ends.get(ch.index)
    assert texts == {i: out.choices[i].message.content for i in (0, 1)} and ends == {0: "length", 1: "length"}
    chunks = list(client.completions.create(model="tiny-chat", prompt="Once upon", max_tokens=5, logprobs=2,
                                            stream=True, temperature=0, extra_body={"ignore_eos": True}))
    parts = [c.choices[0] for c in chunks if c.choices and c.choices[0].logprobs]
    assert "".join(t for p in parts for t in p.logprobs.tokens) == "".join(c.choices[0].text for c in chunks)
    assert all(len(d) == 2 for p in parts for d in p.logprobs.top_logprobs)


# -- chat -----------------------------------------------------------------------------
def test_chat_answers_like_the_engine_streamed_or_not(client, services):
    direct = services.registry.get_or_load("tiny-chat").generate(HI, max_new_tokens=24, temperature=0)
    expected = "".join(direct)
    out = chat(client, max_tokens=24)
    assert out.object == "chat.completion" and out.model == "tiny-chat"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (direct.stats["prompt_tokens"], 24)
    assert out.usage.total_tokens == out.usage.prompt_tokens + 24
    text, chunks = stream_text(client, max_tokens=24, stream_options={"include_usage": True})
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert len({c.id for c in chunks}) == 1


def test_streamed_text_is_joined_between_its_first_and_last(client, services, slow_chat, monkeypatch):  # noqa: F811
    """The first text goes out at once, the rest at most once per interval, the last when it comes
    (not an interval later); the text and its logprob entries are those of the unjoined stream."""
    def content(interval: float) -> tuple[list[str], list]:
        monkeypatch.setattr(services, "stream_interval_s", interval)
        chunks = list(chat(client, model="slow-chat", max_tokens=40, logprobs=True, stream=True,
                           extra_body={"ignore_eos": True}))
        return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content], chunks

    each, _ = content(0.0)  # as the tokens come (the slow model: a few ms each)
    t0 = time.monotonic()
    joined, chunks = content(30.0)
    assert time.monotonic() - t0 < 15  # the end went out when it came, not 30 s after the first text
    assert len(joined) == 2 < len(each) and "".join(joined) == "".join(each)  # the first text, then the rest
    entries = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert len(entries) == 40 and "".join(t.token for t in entries) == "".join(joined)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_stream_interval_is_a_command_line_option():
    from lmstudio_lite.cli import STREAM_INTERVAL_MS, build_parser
    from lmstudio_lite.services import STREAM_INTERVAL_S

    assert STREAM_INTERVAL_MS == STREAM_INTERVAL_S * 1000  # --help's default is the one used
    assert build_parser("serve").parse_args(["--stream-interval-ms", "0"]).stream_interval_ms == 0.0
    assert build_parser("app").parse_args(["--stream-interval-ms", "50"]).stream_interval_ms == 50.0
    assert build_parser("serve").parse_args([]).stream_interval_ms is None  # None: Services' default stays
    for bad in ("-1", "nan", "soon", "20000"):
        with pytest.raises(SystemExit):
            build_parser("serve").parse_args(["--stream-interval-ms", bad])


def test_chat_ends_with_stop_on_eos_or_stop_string(client):
    full = chat(client, max_tokens=40).choices[0].message.content
    word = full.split()[3]
    out = chat(client, max_tokens=40, stop=[word, "zzz"])
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].message.content == full[:full.index(word)]
    text, chunks = stream_text(client, max_tokens=40, stop=word)
    assert text == full[:full.index(word)]
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"


# -- completions ------------------------------------------------------------------------
def test_completions_plain_and_streamed(client):
    out = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=12, temperature=0)
    assert out.object == "text_completion"
    assert out.choices[0].text.startswith(", there was a little girl named Lily")
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 12
    parts = list(client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=12,
                                           temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in parts) == out.choices[0].text
    assert parts[-1].choices[0].finish_reason == "length"
    stopped = client.completions.create(model="stories260K", prompt="Once upon a time", max_tokens=30,
                                        temperature=0, stop=["Lily"])
    assert stopped.choices[0].text == ", there was a little girl named "
    assert stopped.choices[0].finish_reason == "stop"


def test_default_completion_length_is_16_and_seeded_sampling_repeats(client):
    out = client.completions.create(model="stories260K", prompt="Lily wanted to", temperature=0)
    assert out.usage.completion_tokens == 16 or out.choices[0].finish_reason == "stop"
    a = chat(client, max_tokens=16, seed=7, temperature=1.0).choices[0].message.content
    b = chat(client, max_tokens=16, seed=7, temperature=1.0).choices[0].message.content
    assert a == b


# -- errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw, words", [
    ({"temperature": 3}, "temperature must be in [0, 2]"),
    ({"n": 9}, "n must be at most 8"),
    ({"presence_penalty": 0.5}, "presence_penalty is not supported"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user", "content": "word " * 600}]}, "context window holds 512"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop takes at most 4 strings"),
    ({"extra_body": {"top_k": -1}}, "top_k must be at least 0"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty must be > 0"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_are_400_with_our_message(client, kw, words, stream):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, stream=stream, **kw)
    assert words in info.value.message
    assert info.value.body["type"] == "invalid_request_error"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        chat(client, model="ghost")
    assert info.value.code == "model_not_found" and "ghost" in info.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="ghost", prompt="x")


def test_malformed_json_is_400(base):
    r = httpx.post(base + "/v1/chat/completions", content=b"{nope",
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


# -- auth -----------------------------------------------------------------------------
def test_a_wrong_or_missing_key_is_401(base):
    with openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="tiny-chat", messages=HI, stream=True)
    for headers in ({}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        r = httpx.post(base + "/v1/completions", json={"model": "stories260K", "prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(base + "/healthz").json()["status"] == "ok"  # readiness needs no key


def test_no_key_configured_means_open(model_home):  # noqa: F811
    from starlette.testclient import TestClient

    with TestClient(create_app(make_services(model_home))) as tc:
        assert tc.get("/v1/models").status_code == 200


# -- concurrency and cancellation ---------------------------------------------------------
PROMPTS = ["Tell me about a cat", "Tell me about a dog", "What is the sun?", "Who is Tom?",
           "Sing a song", "Where is the ball?", "Lily had a red hat", "The bird flew away"]


def test_eight_concurrent_streams_each_get_their_own_answer(client):
    alone = [chat(client, [{"role": "user", "content": p}], max_tokens=20).choices[0].message.content
             for p in PROMPTS]
    assert len(set(alone)) > 1
    got: dict[int, str] = {}

    def run(i):
        got[i], _ = stream_text(client, messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=20)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(len(PROMPTS))] == alone


def test_client_disconnect_stops_the_generation(client, services, slow_chat):  # noqa: F811
    model = services.registry.get_or_load("slow-chat")
    stream = chat(client, model="slow-chat", max_tokens=3000, stream=True)
    seen = 0
    for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen >= 3:
            break
    stream.close()  # the client hangs up with ~3,000 tokens (over 10 s) still to go
    t0 = time.monotonic()
    while model.engine.info()["running"] and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    assert not model.engine.info()["running"], "the engine is still generating for a gone client"
    out = chat(client, model="slow-chat", max_tokens=2)
    assert out.usage.completion_tokens == 2
    assert time.monotonic() - t0 < 5


def test_waiting_client_that_leaves_never_runs(base, services, slow_chat):  # noqa: F811
    """A queued non-streamed request whose client gives up ends without generating a token."""
    model = services.registry.get_or_load("slow-chat")
    started = []
    real_stream = model.engine.stream

    def spy(*args, **kw):  # records each generation's stats as the engine hands it out
        stream = real_stream(*args, **kw)
        started.append(stream.stats)
        return stream

    model.engine.stream = spy
    model.engine.max_batch = 1  # one row: the second request queues behind the first
    try:
        with openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0) as c:
            first = chat(c, model="slow-chat", max_tokens=3000, stream=True)
            next(iter(first))
            with pytest.raises(openai.APITimeoutError):
                chat(c.with_options(timeout=0.5), model="slow-chat", max_tokens=3000)
            t0 = time.monotonic()  # the server notices the gone client within a poll, while it still waits
            # on a loaded machine the server may hand out the second stream after the client's 0.5 s
            while (len(started) < 2 or started[1]["finish_reason"] is None) and time.monotonic() - t0 < 5:
                time.sleep(0.01)
            first.close()
            assert chat(c, model="slow-chat", max_tokens=2).usage.completion_tokens == 2  # queued behind both
    finally:
        model.engine.stream = real_stream
        model.engine.max_batch = 8
    assert [s["finish_reason"] for s in started] == ["cancelled", "cancelled", "length"]
    assert started[1]["new_tokens"] == 0


# -- the command ---------------------------------------------------------------------------
def test_serve_command_runs_the_api(model_home):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, LMSTUDIO_LITE_HOME=str(model_home), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lmstudio_lite", "serve", "--model", "tiny-chat", "--port",
                             str(port), "--device", "cpu", "--api-key", "k"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert f"http://127.0.0.1:{port}/v1" in proc.stdout.readline() + proc.stdout.readline()
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0) as c:
            assert chat(c, max_tokens=3).usage.completion_tokens == 3
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down, then the CLI exits 130
        out = proc.communicate(timeout=15)[0]
    assert proc.returncode == 130 and "Traceback" not in out


class _FailingStream(TextStream):
    """A generation that raises after its first delta (a tokenizer or model bug)."""

    def __init__(self):
        super().__init__(RunState([1], SamplingParams(), 1, None))
        self._deltas = self._generate()

    def _generate(self):
        yield "partial"
        raise RuntimeError("the model broke")

    def __next__(self):
        return next(self._deltas)

    def _let_go(self):
        self._deltas.close()


def test_a_generation_that_fails_is_reported_not_hung(client, services, monkeypatch):
    model = services.registry.get_or_load("tiny-chat")
    monkeypatch.setattr(model, "generate", lambda *a, **kw: _FailingStream())
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert "the model broke" in info.value.message
    with pytest.raises(openai.APIError) as info:
        list(chat(client, stream=True))
    assert "the model broke" in info.value.message
    monkeypatch.undo()
    assert chat(client, max_tokens=2).usage.completion_tokens == 2  # the server and the slot are fine
