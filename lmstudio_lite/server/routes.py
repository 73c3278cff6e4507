"""The OpenAI-compatible routes: ``create_api(services) -> APIRouter`` with /v1/models,
/v1/chat/completions and /v1/completions, streamed (SSE) or not.

The loaded model's scheduler decodes many requests together (generation/scheduler.py).
Each generation (one per choice, ``n`` of them) is watched (``TextStream.watch``): the
scheduler's driver wakes the event loop once per step for the streams it gave text to, and
the loop takes everything they have (several tokens at once when it fell behind) and writes
one SSE frame per choice. A client that goes away cancels its generations: each stops within
one step and its KV row is free for the next request.

Include the router in any FastAPI app (before mounting Gradio at "/"); it needs no
exception handlers of the app: every error is answered here with an OpenAI-style body.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..checkpoints.errors import CheckpointError
from ..errors import is_user_error, user_message
from . import convert
from .convert import APIError, GenerateRequest

log = logging.getLogger("lmstudio_lite.server")
POLL_S = 0.25  # how often a non-streamed request checks that its client is still there
TIMER_SLACK_S = 0.001  # asyncio may run a timer up to its clock's resolution early: held text is due then


def create_api(services) -> APIRouter:
    """The /v1 routes over ``services.registry``; ``services.api_key`` (when set) guards them all."""
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def list_models(request: Request):
        return await _answer(request, services, lambda: run_in_threadpool(_models_body, services.registry))

    @router.get("/models/{name:path}")
    async def get_model(request: Request, name: str):
        return await _answer(request, services, lambda: run_in_threadpool(_model_body, services.registry, name))

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(request, services, lambda: _generate(request, services, "chat"))

    @router.post("/completions")
    async def completions(request: Request):
        return await _answer(request, services, lambda: _generate(request, services, "text"))

    return router


async def _answer(request: Request, services, handler: Callable[[], Awaitable]):
    """Run the handler and turn every failure into an OpenAI-style error body (credentials
    and body limits were checked before, by ``guard.AccessGuard``)."""
    try:
        result = await handler()
    except APIError as e:
        return JSONResponse(e.body(), status_code=e.status)
    except Exception as e:  # not a request's fault: log a bug's traceback, still answer in JSON
        if not is_user_error(e):
            log.exception("error while answering %s %s", request.method, request.url.path)
        return JSONResponse(convert.error_body(user_message(e), "server_error"), status_code=500)
    return result if isinstance(result, (JSONResponse, StreamingResponse)) else JSONResponse(result)


# -- models -------------------------------------------------------------------------
def _card(name: str, path: str) -> dict:
    try:
        created = int(Path(path).stat().st_mtime)
    except OSError:
        created = 0
    return {"id": name, "object": "model", "created": created, "owned_by": "local"}


def _cards(registry) -> list[dict]:
    """Every usable local model, plus the loaded one when it came from a folder outside the list."""
    cards = [_card(e.name, e.path) for e in registry.list() if e.error is None]
    current = registry.current
    if current is not None and current.name not in {c["id"] for c in cards}:
        cards.insert(0, _card(current.name, str(current.path)))
    return cards


def _models_body(registry) -> dict:
    cards = _cards(registry)
    current = registry.current
    if current is not None and hasattr(current.engine, "info"):
        for card in cards:  # an extension field: the loaded model's KV budget and its use
            if card["id"] == current.name:
                card["scheduler"] = current.engine.info()
    return {"object": "list", "data": cards}


def _model_body(registry, name: str) -> dict:
    cards = _cards(registry)
    for card in cards:
        if card["id"] == name:
            return card
    raise convert.model_not_found(name, [c["id"] for c in cards])


def _load(registry, name: str):
    """The named local model, loaded if needed (runs in a worker thread: loading takes seconds)."""
    try:
        return registry.get_or_load(name)
    except KeyError:
        raise convert.model_not_found(name, [c["id"] for c in _cards(registry)]) from None
    except (CheckpointError, OSError, ValueError) as e:
        raise APIError(400, f"the model {name!r} could not be loaded: {user_message(e)}", param="model",
                       code="model_load_failed") from e


# -- generation -----------------------------------------------------------------------
def _parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise convert.bad_request(f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # thousands of nested [ or {: the parser's stack, not our bug
        raise convert.bad_request("the request body is nested too deeply") from None


def _check_size(model, req: GenerateRequest):
    """Refuse a prompt by its character count before tokenizing it: tokenizing megabytes
    holds the GIL for seconds. No prompt longer than the context window could hold (its
    token count times the longest token's characters) can fit, so nothing valid is refused."""
    chars = convert.prompt_chars(req.prompt)
    limit = model.max_prompt_chars
    if chars > limit:
        raise convert.bad_request(f"the prompt has {chars:,} characters; this model's context of "
                                  f"{model.context_length:,} tokens cannot hold more than {limit:,}",
                                  "messages" if isinstance(req.prompt, list) else "prompt",
                                  "context_length_exceeded")


def _start(model, req: GenerateRequest) -> list:
    """Encode the prompt and check it fits (raises before anything is streamed); the streams
    (one per choice) are lazy. A seeded request seeds choice i with seed + i."""
    from ..generation import ContextOverflowError  # here, not at the top: serving the page needs no torch

    _check_size(model, req)
    options = dict(req.options)
    options.setdefault("max_new_tokens", model.context_length)  # the engine caps it to what is left
    try:
        streams = [model.generate(req.prompt, **options)]
        for i in range(1, req.n):
            seed = options.get("seed")
            more = options if seed is None else {**options, "seed": (seed + i) % 2**64}
            streams.append(model.generate(req.prompt, **more))
        return streams
    except ContextOverflowError as e:
        raise convert.bad_request(user_message(e), "messages" if isinstance(req.prompt, list) else "prompt",
                                  "context_length_exceeded") from e
    except ValueError as e:  # a sampling option out of range, or a template that raised
        raise convert.bad_request(user_message(e)) from e


def _prepare(raw: bytes, kind: str, registry):
    """Parse the body, load the model it names and start its streams: one trip to a worker
    thread per request (parsing a large body, loading or tokenizing never stall the event loop)."""
    body = _parse_json(raw)
    req = convert.parse_chat_request(body) if kind == "chat" else convert.parse_completion_request(body)
    model = _load(registry, req.model)
    return req, model, _start(model, req)


async def _generate(request: Request, services, kind: str):
    req, model, streams = await run_in_threadpool(_prepare, await request.body(), kind, services.registry)
    run = _Run(streams, "logprobs" in req.options, services.stream_interval_s if req.stream else 0.0)
    chunks = convert.ChunkMaker(kind, model.name, req.include_usage)
    token_text = _token_text(model)
    if req.stream:
        return _EventStreamResponse(_sse_frames(run, chunks, token_text), media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    watchers = [asyncio.ensure_future(_cancel_when_gone(request, s)) for s in streams]
    texts = [""] * len(streams)
    try:
        async for i, delta, _ in run.deltas(request.is_disconnected):
            texts[i] += delta
    finally:
        for w in watchers:
            w.cancel()
    logprobs = None
    if "logprobs" in req.options:
        logprobs = [convert.logprobs_body(kind, s.logprobs, token_text) for s in streams]
    return convert.completion_body(kind, chunks.id, chunks.created, model.name, texts,
                                   [s.stats for s in streams], logprobs)


def _token_text(model):
    """id -> that token's readable piece (spaces as spaces), naming logprobs' alternatives."""
    strings = model.tokenizer.token_strings
    return lambda tid: strings([tid])[0]


async def _sse_frames(run: _Run, chunks: convert.ChunkMaker, token_text) -> AsyncIterator[str]:
    n, kind = len(run.streams), chunks.kind
    try:
        started = [False] * n
        offsets = [0] * n
        async for i, delta, entries in run.deltas():  # the first bytes go out with the first text
            head = "" if started[i] else "".join(convert.sse(c) for c in chunks.start(i))
            started[i] = True
            lp = None if entries is None else convert.logprobs_body(kind, entries, token_text, offsets[i])
            offsets[i] += len(delta)
            if lp is None:
                yield head + chunks.delta_frame(delta, i)
                continue
            yield head + "".join(convert.sse(c) for c in chunks.delta(delta, i, lp))
        out = []
        for i, stream in enumerate(run.streams):
            out += ([] if started[i] else chunks.start(i)) + chunks.end(stream.stats, i, with_usage=False)
        out += chunks.usage([s.stats for s in run.streams])
        yield "".join(convert.sse(c) for c in out) + convert.SSE_DONE  # the end in one write
    except Exception as e:  # the headers are gone: report the failure as an error event
        if not is_user_error(e):
            log.exception("generation failed mid-stream")
        yield convert.sse(convert.error_body(f"generation failed: {user_message(e)}", "server_error")) \
            + convert.SSE_DONE


class _EventStreamResponse(StreamingResponse):
    """Closes its body iterator even when cancelled mid-send (client gone), so the
    generation is cancelled and its row freed at once, not when garbage collected."""

    async def stream_response(self, send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


class _LoopWaker:
    """Wake-ups of one event loop from other threads, batched: the scheduler's driver notifies every
    stream of a step one after the other, and each ``call_soon_threadsafe`` writes to the loop's
    self-pipe (a system call: 7% of the driver's time with 8 clients); here the first notification
    of a batch schedules one callback that sets every event pending by then."""

    _by_loop: dict = {}
    _guard = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop, self._lock, self._pending, self._armed = loop, threading.Lock(), [], False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "_LoopWaker":
        with cls._guard:
            waker = cls._by_loop.get(loop)
            if waker is None or waker._loop.is_closed():
                cls._by_loop = {k: v for k, v in cls._by_loop.items() if not k.is_closed()}
                waker = cls._by_loop[loop] = cls(loop)
            return waker

    def wake(self, event: asyncio.Event):
        """Any thread: set ``event`` in the loop soon. RuntimeError when the loop is closed."""
        with self._lock:
            self._pending.append(event)
            if self._armed:
                return
            self._armed = True
        try:
            self._loop.call_soon_threadsafe(self._run)
        except RuntimeError:
            with self._lock:
                self._armed = False
            raise

    def _run(self):
        with self._lock:
            pending, self._pending, self._armed = self._pending, [], False
        for event in pending:
            event.set()


class _Run:
    """A request's generations (``n`` choices), watched from the event loop: a stream's driver
    calls ``_wake`` (from its own thread), the loop takes what every stream has; leaving
    ``deltas()`` early cancels them all. The model's scheduler decides when each one runs."""

    def __init__(self, streams: list, with_logprobs: bool = False, interval: float = 0.0):
        self.streams, self._with_logprobs, self.interval = streams, with_logprobs, interval
        self._ready = asyncio.Event()
        self._armed = False  # a wake-up is on its way to the loop: later ones until it runs are no-ops
        self._waker = _LoopWaker.of(asyncio.get_running_loop())

    def _wake(self):
        """Any thread: new text or an end is waiting in some stream."""
        if self._armed:
            return
        self._armed = True
        try:
            self._waker.wake(self._ready)
        except RuntimeError:  # the event loop is closed (server shutting down): nobody is listening
            for stream in self.streams:
                stream.cancel()

    async def deltas(self, gone: Callable[[], Awaitable[bool]] | None = None
                     ) -> AsyncIterator[tuple[int, str, list | None]]:
        """(choice index, text delta, logprob entries since the last delta or None) as they come;
        raises what a generation raised. A client already gone never starts generating.
        With an ``interval``, a choice's first text and its last go out at once, and the text between
        at most once per ``interval`` seconds, joined (a model slower than that: token by token)."""
        timer = None
        try:
            if gone is not None and await gone():
                for stream in self.streams:
                    stream.close()
                return
            for stream in self.streams:
                stream.watch(self._wake)
            loop, n = asyncio.get_running_loop(), len(self.streams)
            open_ = set(range(n))
            held, covers, seen, sent = [""] * n, [None] * n, [0] * n, [None] * n

            def flush_due():
                nonlocal timer
                timer = None
                self._ready.set()

            while open_:
                await self._ready.wait()
                # Disarmed before taking: text handed over from now on arms a new wake-up.
                self._ready.clear()
                self._armed = False
                now = loop.time()
                for i in sorted(open_):
                    text, covered, ended, error = self.streams[i].take()
                    held[i] += text
                    covers[i] = covered if covered is not None else covers[i]
                    due = (ended or error is not None or sent[i] is None
                           or now - sent[i] >= self.interval - TIMER_SLACK_S)
                    if held[i] and due:
                        entries = None
                        if self._with_logprobs and covers[i] is not None:
                            entries, seen[i] = self.streams[i].logprobs[seen[i]:covers[i]], covers[i]
                        text, held[i], sent[i] = held[i], "", now
                        yield i, text, entries
                    if error is not None:
                        raise error
                    if ended:
                        open_.discard(i)
                due_at = [sent[i] + self.interval for i in open_ if held[i]]
                if due_at and timer is None:  # held text goes out then, even if no token comes by
                    timer = loop.call_at(min(due_at), flush_due)
        finally:
            if timer is not None:
                timer.cancel()
            for stream in self.streams:
                stream.cancel()  # a no-op when finished; else it stops within one step


async def _cancel_when_gone(request: Request, stream):
    """For plain (non-streamed) answers: Starlette does not watch those clients, so poll."""
    while not await request.is_disconnected():
        await asyncio.sleep(POLL_S)
    stream.cancel()  # queued: it ends before its first token; running: within one token
