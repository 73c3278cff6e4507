"""What every generation stream is, written once: text deltas, stats, cancel, close, wait_ended.

Two drivers produce streams: the engine (``GenerationStream``: the generation runs in the
consumer's thread as it iterates) and the scheduler (``ScheduledStream``: its driver thread
generates and hands deltas over). Callers (the UI, the server, the CLI) see one surface.

Two ways to consume one: iterate it (a blocking ``next()`` per delta, in the consumer's own
thread), or ``watch(notify)`` then ``take()`` whenever ``notify`` fires (an event loop serving
many streams: the scheduler calls ``notify`` from its driver, once per step, so no thread per
stream sits between the model and the socket).
"""
from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterator

from .sampling import SamplingParams


class RunState:
    """One request's state as a stream shows it: what was asked, what came out, the stats, the cancel
    flag and the ``ended`` event. The driver changes it; the stream only reads it (and sets cancel)."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, max_new_tokens: int,
                 cancel: threading.Event | None):
        self.prompt_ids, self.params, self.max_new_tokens = prompt_ids, params, max_new_tokens
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.new_ids: list[int] = []
        self.text = ""
        self.stats = {"prompt_tokens": len(prompt_ids), "new_tokens": 0, "finish_reason": None,
                      "ttft_s": 0.0, "decode_tok_s": 0.0, "prefill_ms": 0.0, "total_s": 0.0}
        self.cancel_event, self.outside_cancel = threading.Event(), cancel
        # Set once the generation has let go of the model (finished, failed, cancelled, or closed
        # before it started): nothing is added to the text after it.
        self.ended = threading.Event()

    def cancelled(self) -> bool:
        outside = self.outside_cancel
        return self.cancel_event.is_set() or (outside is not None and outside.is_set())


class TextStream:
    """An iterator of non-empty text deltas.

    ``.stats`` (updated while running, complete at the end): prompt_tokens, new_tokens,
    finish_reason (None while running, then "stop" | "length" | "cancelled", or "error" when the
    model raised), ttft_s (from the first ``next()`` to the first token, waiting included),
    decode_tok_s ((new_tokens - 1) / seconds after the first token; 0.0 with fewer than 2),
    prefill_ms, total_s (timings are 0.0 until measured), context_full (at the end: a "length" that the
    context window, not max_new_tokens, set).
    ``.new_ids`` holds every sampled id (an EOS or the tokens of a stop string included); ``.text``
    is everything generated so far (it may run ahead of what this consumer has taken);
    ``.seed`` is the seed used.

    ``cancel()`` (any thread) asks it to stop; ``close()`` (any thread) stops it and returns once it
    has ended; ``wait_ended(timeout)`` waits for the end without asking for it. Leaving a ``with``
    block closes it.
    """

    def __init__(self, run: RunState):
        self._run = run
        self.stats, self.new_ids = run.stats, run.new_ids  # shared, updated live
        self.prompt_ids, self.params, self.max_new_tokens = run.prompt_ids, run.params, run.max_new_tokens
        self.seed = run.seed

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def text(self) -> str:
        return self._run.text

    @property
    def finish_reason(self) -> str | None:
        return self.stats["finish_reason"]

    def cancel(self):
        """Ask the generation to stop (safe from any thread); it ends within one token."""
        self._run.cancel_event.set()

    def wait_ended(self, timeout: float | None = None) -> bool:
        """Block until the generation has ended and let go of the model; -> False if it had not
        after ``timeout`` seconds. Its ``text`` and ``stats`` are final once this is True."""
        return self._run.ended.wait(timeout)

    def close(self):
        """Stop now (any thread); returns once the generation has ended (counts as cancelled if it
        had not finished)."""
        self.cancel()
        self._let_go()
        if self.stats["finish_reason"] is None:
            self.stats["finish_reason"] = "cancelled"

    def _let_go(self):
        """After ``cancel()``: return once the driver has let the generation go."""
        raise NotImplementedError

    def watch(self, notify: Callable[[], None]):
        """Start generating without a consumer thread: ``notify()`` is called (from the generating
        thread: it must be short and never block) each time ``take()`` has something new. Iterate
        the stream or watch it, never both. Here a helper thread iterates it (the engine generates
        only while iterated); the scheduler's stream hands its driver's events over directly."""
        self._inbox = queue.SimpleQueue()
        threading.Thread(target=_pump, args=(self, self._inbox, notify), name="lmstudio-stream-pump",
                         daemon=True).start()

    def take(self) -> tuple[str, int | None, bool, BaseException | None]:
        """After ``watch``, without blocking: (the text handed over since the last call, how many
        ``logprobs`` entries that text covers (None without logprobs), whether the stream has ended,
        the error it ended with or None)."""
        parts, covered, ended, error = [], None, False, None
        inbox = self._inbox
        while not inbox.empty():
            what, value, n = inbox.get_nowait()
            if what == "delta":
                parts.append(value)
                covered = n if n is not None else covered
            else:
                ended, error = True, value
        return "".join(parts), covered, ended, error


def _pump(stream: TextStream, inbox: queue.SimpleQueue, notify: Callable[[], None]):
    """``watch`` for a stream that generates only while iterated."""
    try:
        for delta in stream:
            inbox.put(("delta", delta, None))
            notify()
        inbox.put(("end", None, None))
    except BaseException as e:  # handed to the consumer, which reports it
        inbox.put(("error", e, None))
    finally:
        stream.close()  # lets go of the model whatever happened
    notify()
