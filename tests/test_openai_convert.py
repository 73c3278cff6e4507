"""The pure OpenAI <-> generate() converters: request validation, bodies, chunks, SSE framing."""
from __future__ import annotations

import json

import pytest

from lmstudio_lite.server import convert
from lmstudio_lite.server.convert import APIError, ChunkMaker

MSGS = [{"role": "user", "content": "hi"}]


def chat(**fields) -> convert.GenerateRequest:
    return convert.parse_chat_request({"model": "m", "messages": MSGS, **fields})


def rejected(parse, body) -> APIError:
    with pytest.raises(APIError) as info:
        parse(body)
    assert info.value.status == 400
    return info.value


# -- chat requests ----------------------------------------------------------------
def test_minimal_chat_request_uses_openai_defaults():
    req = chat()
    assert req.model == "m" and req.prompt == MSGS and not req.stream and not req.include_usage
    assert req.options == {"temperature": 1.0, "top_p": 1.0}  # no max_new_tokens: run to the window's end


def test_chat_request_maps_every_supported_field():
    req = chat(temperature=0, top_p=0.5, max_tokens=7, stop="END", seed=3, n=1, presence_penalty=0,
               frequency_penalty=0.0, stream=True, stream_options={"include_usage": True},
               top_k=5, min_p=0.1, repetition_penalty=1.2, ignore_eos=True, user="x", some_future_field=[1])
    assert req.options == {"temperature": 0.0, "top_p": 0.5, "max_new_tokens": 7, "stop": ["END"], "seed": 3,
                           "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "ignore_eos": True}
    assert req.stream and req.include_usage


def test_max_completion_tokens_wins_and_negative_seed_wraps():
    req = chat(max_tokens=5, max_completion_tokens=9, seed=-1)
    assert req.options["max_new_tokens"] == 9
    assert req.options["seed"] == 2**64 - 1


def test_content_parts_roles_and_include_usage_without_stream():
    messages = [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None}, {"role": "user", "content": "c", "name": "bob"}]
    req = convert.parse_chat_request({"model": "m", "messages": messages, "stream_options": {"include_usage": True}})
    assert req.prompt == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"},
                          {"role": "assistant", "content": ""}, {"role": "user", "content": "c"}]
    assert not req.include_usage  # usage chunks only exist in streams


@pytest.mark.parametrize("fields, words", [
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": "hi"}, "'messages' must be a non-empty list"),
    ({"messages": ["hi"]}, "messages[0] must be an object"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be one of"),
    ({"messages": [{"role": "user"}]}, "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "images"),
    ({"model": ""}, "'model' is required"),
    ({"temperature": 2.5}, "temperature must be in [0, 2], got 2.5"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"top_p": 0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"max_tokens": 0}, "max_tokens must be at least 1"),
    ({"max_completion_tokens": 2.5}, "max_completion_tokens must be a whole number"),
    ({"max_tokens": True}, "max_tokens must be a whole number"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop takes at most 4 strings"),
    ({"stop": [1]}, "stop must be a string or a list of strings"),
    ({"seed": "7"}, "seed must be a whole number"),
    ({"n": 9}, "n must be at most 8"),
    ({"n": 0}, "n must be at least 1"),
    ({"presence_penalty": 0.5}, "presence_penalty is not supported"),
    ({"frequency_penalty": -1}, "frequency_penalty is not supported"),
    ({"presence_penalty": 3}, "presence_penalty must be in [-2, 2]"),
    ({"stream": "yes"}, "stream must be true or false"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format is not supported"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs: true"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be at most 20"),
    ({"logit_bias": {"1": 5}}, "logit_bias is not supported"),
])
def test_bad_chat_requests_name_the_problem(fields, words):
    err = rejected(convert.parse_chat_request, {"model": "m", "messages": MSGS, **fields})
    assert words in err.message
    body = err.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"


def test_body_must_be_an_object():
    assert "JSON object" in rejected(convert.parse_chat_request, [1, 2]).message


def test_stop_accepts_a_list_and_drops_empty_strings():
    assert chat(stop=["a", "", "b"]).options["stop"] == ["a", "b"]
    assert "stop" not in chat(stop=[]).options


# -- completion requests ------------------------------------------------------------
def test_completion_request_defaults_to_16_tokens():
    req = convert.parse_completion_request({"model": "m", "prompt": "Once"})
    assert req.prompt == "Once" and req.options["max_new_tokens"] == 16
    assert convert.parse_completion_request({"model": "m", "prompt": ["Once"], "max_tokens": 3}).options[
        "max_new_tokens"] == 3


@pytest.mark.parametrize("fields, words", [
    ({"prompt": ""}, "'prompt' must be a non-empty string"),
    ({"prompt": [1, 2, 3]}, "'prompt' must be a non-empty string"),
    ({"prompt": ["a", "b"]}, "'prompt' must be a non-empty string"),
    ({"prompt": "x", "echo": True}, "echo is not supported"),
    ({"prompt": "x", "best_of": 3}, "best_of must be 1"),
    ({"prompt": "x", "temperature": -0.1}, "temperature must be in [0, 2]"),
])
def test_bad_completion_requests(fields, words):
    assert words in rejected(convert.parse_completion_request, {"model": "m", **fields}).message


# -- errors -------------------------------------------------------------------------
def test_error_bodies():
    err = convert.model_not_found("ghost", ["a", "b"])
    assert err.status == 404
    assert err.body() == {"error": {"message": "The model 'ghost' does not exist on this server; available: a, b",
                                    "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
    key = convert.invalid_api_key()
    assert key.status == 401 and key.body()["error"]["code"] == "invalid_api_key"


# -- responses ----------------------------------------------------------------------
STATS = {"prompt_tokens": 5, "new_tokens": 3, "finish_reason": "length"}


def test_chat_completion_body():
    body = convert.completion_body("chat", "chatcmpl-1", 100, "m", "abc", STATS)
    assert body == {"id": "chatcmpl-1", "object": "chat.completion", "created": 100, "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "abc"},
                                 "logprobs": None, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                              "prompt_tokens_details": {"cached_tokens": 0}}}


def test_text_completion_body_and_finish_reasons():
    body = convert.completion_body("text", "cmpl-1", 100, "m", "abc", {**STATS, "finish_reason": "stop"})
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "stop"}]
    assert convert.finish_reason({"finish_reason": "cancelled"}) is None
    assert convert.finish_reason({"finish_reason": None}) is None


def test_chat_chunks_role_first_then_content_then_finish_then_usage():
    maker = ChunkMaker("chat", "m", include_usage=True, rid="chatcmpl-x", created=7)
    chunks = maker.start() + maker.delta("Hel") + maker.delta("") + maker.delta("lo") + maker.end(STATS)
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * 5
    assert {c["id"] for c in chunks} == {"chatcmpl-x"} and {c["created"] for c in chunks} == {7}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["Hel", "lo"]
    assert chunks[3]["choices"][0]["delta"] == {} and chunks[3]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:3])
    assert all(c["usage"] is None for c in chunks[:4])
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["total_tokens"] == 8


def test_text_chunks_have_no_role_chunk_and_no_usage_unless_asked():
    maker = ChunkMaker("text", "m")
    chunks = maker.start() + maker.delta("a") + maker.end({**STATS, "finish_reason": "stop"})
    assert [c["object"] for c in chunks] == ["text_completion"] * 2
    assert [c["choices"][0]["text"] for c in chunks] == ["a", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)
    assert maker.id.startswith("cmpl-") and ChunkMaker("chat", "m").id.startswith("chatcmpl-")


@pytest.mark.parametrize("kind", ["chat", "text"])
@pytest.mark.parametrize("usage", [False, True])
def test_a_text_frame_is_the_sse_of_its_delta_chunk(kind, usage):
    maker = ChunkMaker(kind, 'a "model"', include_usage=usage)
    for text in ("Hel", 'é"\\\n\x00<', " "):
        for index in (0, 2):
            assert maker.delta_frame(text, index) == convert.sse(maker.delta(text, index)[0])


def test_sse_framing():
    frame = convert.sse({"a": "é\n"})
    assert frame.startswith("data: ") and frame.endswith("\n\n") and frame.count("\n") == 2
    assert json.loads(frame[len("data: "):]) == {"a": "é\n"}
    assert convert.SSE_DONE == "data: [DONE]\n\n"
