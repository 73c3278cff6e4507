"""Pure converters between OpenAI's wire format and our ``LoadedModel.generate`` calls.

Requests go in as parsed JSON and come out as a ``GenerateRequest`` (the generate()
keyword arguments) or an ``APIError``; a generation's text deltas and final ``stats``
go out as ``chat.completion`` / ``text_completion`` bodies or as streamed chunks in
SSE frames. Nothing here touches a model, a thread or a socket (routes.py does).
"""
from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field

ROLES = ("system", "user", "assistant", "developer")  # developer: OpenAI's newer name for system
MAX_STOP_STRINGS = 4
SSE_DONE = "data: [DONE]\n\n"


# -- errors -----------------------------------------------------------------------
class APIError(Exception):
    """An error answered with an OpenAI-style body; the openai client maps the status
    to its exception (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(name: str, available: list[str]) -> APIError:
    listed = ", ".join(available) or "none"
    return APIError(404, f"The model {name!r} does not exist on this server; available: {listed}",
                    param="model", code="model_not_found")


def invalid_api_key() -> APIError:
    return APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer YOUR_KEY' "
                         "(the key given to lmstudio-lite with --api-key)", code="invalid_api_key")


# -- requests ---------------------------------------------------------------------
@dataclass
class GenerateRequest:
    """A validated request: which model, what to feed it, and generate() keyword arguments.

    ``options`` has no ``max_new_tokens`` when the client gave no limit: the route then
    lets the reply run to the end of the context window (what OpenAI does for chat)."""

    model: str
    prompt: str | list[dict]
    options: dict = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body) -> GenerateRequest:
    """A ``/v1/chat/completions`` body -> GenerateRequest; raises APIError (400) naming the bad field."""
    body = _object(body)
    messages = _messages(body.get("messages"))
    for name in ("tools", "functions"):  # functions: the legacy name of tools
        if body.get(name):
            raise bad_request(f"{name} (function calling) are not supported by this server", name)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad_request("response_format is not supported: only plain text replies", "response_format")
    if body.get("logprobs"):
        raise bad_request("logprobs are not supported by this server", "logprobs")
    if body.get("top_logprobs") is not None:  # OpenAI too refuses it without logprobs: true
        raise bad_request("top_logprobs needs logprobs: true, and logprobs are not supported by this server",
                          "top_logprobs")
    return _request(body, messages)


def parse_completion_request(body) -> GenerateRequest:
    """A ``/v1/completions`` body (``prompt`` a string) -> GenerateRequest (legacy default: 16 tokens)."""
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", "prompt")
    _unicode(prompt, "prompt")
    for name in ("echo", "suffix", "logprobs"):
        if body.get(name):
            raise bad_request(f"{name} is not supported by this server", name)
    if body.get("best_of") not in (None, 1):
        raise bad_request("best_of must be 1: this server makes one completion per request", "best_of")
    req = _request(body, prompt)
    req.options.setdefault("max_new_tokens", 16)  # the OpenAI default for this endpoint
    return req


def prompt_chars(prompt: str | list[dict]) -> int:
    """Characters of a prompt or of every message's content (what the template wraps)."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m["content"]) for m in prompt)


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _request(body: dict, prompt) -> GenerateRequest:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required: the name of a local model (see GET /v1/models)", "model")
    stream = _bool(body, "stream", False)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = stream and bool(stream_options.get("include_usage"))
    return GenerateRequest(model, prompt, _sampling_options(body), stream, include_usage)


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", where)
        role = msg.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of system, user, assistant; got {role!r}", f"{where}.role")
        content = _content(msg.get("content"), role, where)
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _unicode(text: str, where: str) -> str:
    """``text`` if it is valid Unicode: JSON's \\ud800 escapes parse into lone surrogates,
    which no tokenizer or UTF-8 encoder accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{where} holds an invalid character (a lone UTF-16 surrogate at position {e.start})",
                          where) from None
    return text


def _content(content, role: str, where: str) -> str:
    if isinstance(content, str):
        return _unicode(content, f"{where}.content")
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad_request(f"{where}.content[{j}] must be a text part {{'type': 'text', 'text': ...}}; "
                                  "images and audio are not supported", f"{where}.content")
            texts.append(_unicode(part["text"], f"{where}.content[{j}]"))
        return "\n".join(texts)
    raise bad_request(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _sampling_options(body: dict) -> dict:
    """The OpenAI sampling fields (and a few vLLM-style extensions) -> generate() kwargs."""
    opts = {"temperature": _number(body, "temperature", 1.0, 0.0, 2.0),  # OpenAI's default is 1
            "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)}
    limit = body.get("max_completion_tokens")
    limit = _int(body, "max_completion_tokens" if limit is not None else "max_tokens", 1)
    if limit is not None:
        opts["max_new_tokens"] = limit
    stop = _stop(body.get("stop"))
    if stop:
        opts["stop"] = stop
    seed = _int(body, "seed", None)
    if seed is not None:
        opts["seed"] = seed % 2**64  # OpenAI allows negative seeds; ours are unsigned
    if body.get("n") not in (None, 1):
        raise bad_request("n must be 1: this server generates one choice per request", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise bad_request(f"{name} is not supported (use repetition_penalty instead)", name)
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported by this server", "logit_bias")
    # Extensions with vLLM's names; generate() checks their ranges.
    if body.get("top_k") is not None:
        opts["top_k"] = _int(body, "top_k", 0)
    for name in ("min_p", "repetition_penalty"):
        if body.get(name) is not None:
            opts[name] = _number(body, name, 0.0, -math.inf, math.inf)
    if body.get("ignore_eos") is not None:
        opts["ignore_eos"] = _bool(body, "ignore_eos", False)
    return opts


def _stop(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop")
    return [_unicode(s, "stop") for s in stops if s]


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {value!r}", name)
    return value


def _int(body: dict, name: str, minimum: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be a whole number, got {value!r}", name)
    if minimum is not None and value < minimum:
        raise bad_request(f"{name} must be at least {minimum}, got {value}", name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{name} must be a number, got {value!r}", name)
    if value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise bad_request(f"{name} must be in {interval}, got {value}", name)
    return float(value)


# -- responses --------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)


def finish_reason(stats: dict) -> str | None:
    """OpenAI's finish_reason: "stop" (EOS or a stop string) or "length"; None otherwise
    (a cancelled generation has nobody left to tell)."""
    reason = stats.get("finish_reason")
    return reason if reason in ("stop", "length") else None


def usage(stats: dict) -> dict:
    prompt, completion = int(stats.get("prompt_tokens", 0)), int(stats.get("new_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(kind: str, rid: str, created: int, model: str, text: str, stats: dict) -> dict:
    """A whole non-streamed answer: ``chat.completion`` (kind "chat") or ``text_completion``."""
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": finish_reason(stats)}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(stats)}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": usage(stats)}


class ChunkMaker:
    """Streamed chunks for one generation: ``start()``, ``delta(text)`` per text delta, ``end(stats)``.

    Chat: a first chunk whose delta has the role, content deltas, then an empty delta with
    the finish_reason, then (with include_usage) a chunk with no choices and the usage.
    Completions: text chunks, then an empty text with the finish_reason."""

    def __init__(self, kind: str, model: str, include_usage: bool = False,
                 rid: str | None = None, created: int | None = None):
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = rid or new_id(kind)
        self.created = int(time.time()) if created is None else created

    def _chunk(self, payload: dict, finish: str | None) -> dict:
        choice = {"index": 0, **payload, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        chunk = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _text(self, text: str) -> dict:
        return {"delta": {"content": text}} if self.kind == "chat" else {"text": text}

    def start(self) -> list[dict]:
        return [self._chunk({"delta": {"role": "assistant", "content": ""}}, None)] if self.kind == "chat" else []

    def delta(self, text: str) -> list[dict]:
        return [self._chunk(self._text(text), None)] if text else []

    def end(self, stats: dict) -> list[dict]:
        empty = {"delta": {}} if self.kind == "chat" else {"text": ""}
        chunks = [self._chunk(empty, finish_reason(stats))]
        if self.include_usage:
            chunks.append({**self._chunk({}, None), "choices": [], "usage": usage(stats)})
        return chunks


def sse(obj: dict) -> str:
    """One server-sent event frame."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"
