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
MAX_N = 8  # choices per request (they share the prompt's K/V in the scheduler)
MAX_TOP_LOGPROBS = {"chat": 20, "text": 5}  # OpenAI's limits per endpoint
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
    n: int = 1


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
    wanted = _bool(body, "logprobs", False)
    top = _int(body, "top_logprobs", 0)
    if top is not None and not wanted:  # as OpenAI: alternatives only with logprobs: true
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    req = _request(body, messages)
    if wanted:
        req.options["logprobs"] = _top_logprobs(top or 0, "top_logprobs", "chat")
    return req


def parse_completion_request(body) -> GenerateRequest:
    """A ``/v1/completions`` body (``prompt`` a string) -> GenerateRequest (legacy default: 16 tokens)."""
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string", "prompt")
    _unicode(prompt, "prompt")
    for name in ("echo", "suffix"):
        if body.get(name):
            raise bad_request(f"{name} is not supported by this server", name)
    if body.get("best_of") not in (None, 1):
        raise bad_request("best_of must be 1: this server makes one completion per request", "best_of")
    top = _int(body, "logprobs", 0)
    req = _request(body, prompt)
    if top is not None:  # the legacy endpoint: logprobs is the number of alternatives
        req.options["logprobs"] = _top_logprobs(top, "logprobs", "text")
    req.options.setdefault("max_new_tokens", 16)  # the OpenAI default for this endpoint
    return req


def _top_logprobs(top: int, name: str, kind: str) -> int:
    if top > MAX_TOP_LOGPROBS[kind]:
        raise bad_request(f"{name} must be at most {MAX_TOP_LOGPROBS[kind]}, got {top}", name)
    return top


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
    n = _int(body, "n", 1)
    n = 1 if n is None else n
    if n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N}, got {n}", "n")
    return GenerateRequest(model, prompt, _sampling_options(body), stream, include_usage, n)


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


def usage(stats: dict | list[dict]) -> dict:
    """Token counts; with ``n`` choices the prompt counts once and every choice's tokens add up.
    ``prompt_tokens_details.cached_tokens``: prompt tokens whose K/V came from the prompt cache."""
    all_stats = stats if isinstance(stats, list) else [stats]
    first = all_stats[0]
    prompt = int(first.get("prompt_tokens", 0))
    completion = sum(int(s.get("new_tokens", 0)) for s in all_stats)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(first.get("cached_tokens", 0))}}


def logprobs_body(kind: str, entries: list[dict] | None, token_text, offset: int = 0) -> dict | None:
    """OpenAI's ``logprobs`` of a choice (or of one streamed chunk) from the scheduler's
    entries ``{"id", "text", "logprob", "top": [(id, logprob)]}``; ``token_text(id) -> str`` names
    the alternatives (a chosen token is named by its share of the reply, so they add up to it).
    Chat: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}``;
    completions: ``{tokens, token_logprobs, top_logprobs, text_offset}`` (offsets from ``offset``)."""
    if entries is None:
        return None
    if kind == "chat":
        def item(text, lp):
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
        return {"content": [{**item(e["text"], e["logprob"]),
                             "top_logprobs": [item(token_text(t), lp) for t, lp in e["top"]]}
                            for e in entries], "refusal": None}
    tokens = [e["text"] for e in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{token_text(t): lp for t, lp in e["top"]} for e in entries], "text_offset": offsets}


def _choice(kind: str, index: int, text: str, stats: dict, logprobs: dict | None) -> dict:
    if kind == "chat":
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": finish_reason(stats)}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(stats)}


def completion_body(kind: str, rid: str, created: int, model: str, text: str | list[str],
                    stats: dict | list[dict], logprobs: list[dict | None] | None = None) -> dict:
    """A whole non-streamed answer: ``chat.completion`` (kind "chat") or ``text_completion``;
    ``text``/``stats`` (and ``logprobs``, one per choice) are lists when ``n`` > 1."""
    texts = text if isinstance(text, list) else [text]
    all_stats = stats if isinstance(stats, list) else [stats]
    lps = logprobs or [None] * len(texts)
    choices = [_choice(kind, i, t, s, lp) for i, (t, s, lp) in enumerate(zip(texts, all_stats, lps))]
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices,
            "usage": usage(all_stats)}


class ChunkMaker:
    """Streamed chunks for one request: ``start(i)``, ``delta(text, i)`` per text delta, ``end(stats, i)``
    per choice, then ``usage(all_stats)``.

    Chat: a first chunk whose delta has the role, content deltas, then an empty delta with
    the finish_reason; with include_usage a last chunk with no choices and the usage.
    Completions: text chunks, then an empty text with the finish_reason."""

    def __init__(self, kind: str, model: str, include_usage: bool = False,
                 rid: str | None = None, created: int | None = None):
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = rid or new_id(kind)
        self.created = int(time.time()) if created is None else created
        self._frames: dict[int, tuple[str, str]] = {}  # index -> a text chunk's SSE frame around its text

    def _chunk(self, payload: dict, finish: str | None, index: int = 0, logprobs: dict | None = None) -> dict:
        choice = {"index": index, **payload, "logprobs": logprobs, "finish_reason": finish}
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        chunk = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _text(self, text: str) -> dict:
        return {"delta": {"content": text}} if self.kind == "chat" else {"text": text}

    def start(self, index: int = 0) -> list[dict]:
        if self.kind != "chat":
            return []
        return [self._chunk({"delta": {"role": "assistant", "content": ""}}, None, index)]

    def delta(self, text: str, index: int = 0, logprobs: dict | None = None) -> list[dict]:
        return [self._chunk(self._text(text), None, index, logprobs)] if text else []

    def delta_frame(self, text: str, index: int = 0) -> str:
        """``sse`` of ``delta(text, index)``'s chunk (non-empty text, no logprobs), built around the
        text's JSON only: everything else in the frame is the same for every chunk of a choice."""
        frame = self._frames.get(index)
        if frame is None:
            mark = "\x00text\x00"  # cannot occur in the rest of the frame: JSON escapes a NUL
            head, tail = sse(self._chunk(self._text(mark), None, index)).split(_json(mark))
            frame = self._frames[index] = (head, tail)
        return frame[0] + _json(text) + frame[1]

    def end(self, stats: dict, index: int = 0, with_usage: bool = True) -> list[dict]:
        empty = {"delta": {}} if self.kind == "chat" else {"text": ""}
        chunks = [self._chunk(empty, finish_reason(stats), index)]
        if with_usage:
            chunks += self.usage([stats])
        return chunks

    def usage(self, all_stats: list[dict]) -> list[dict]:
        if not self.include_usage:
            return []
        return [{**self._chunk({}, None), "choices": [], "usage": usage(all_stats)}]


def _json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj: dict) -> str:
    """One server-sent event frame."""
    return f"data: {_json(obj)}\n\n"
