"""Helpers shared by the tabs: readable errors, the loaded model, uploads, throttled streaming.

Nothing here imports torch: the UI talks to the engine only through services.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr

from ..errors import BUG_TEXT_MAX, LiteError, is_out_of_memory, is_user_error
from ..messages import message_of
from .i18n import say, tr

log = logging.getLogger("lmstudio_lite.ui")

STREAM_EVERY_S = 0.05  # at most ~20 UI updates a second, however fast tokens come
LLM = {"concurrency_id": "llm", "concurrency_limit": 1}  # one loaded model: never driven twice at once
PRIVATE = {"api_visibility": "private"}

CSS = """
#status-line { font-size: 0.85em; opacity: 0.85; }
#chat-stats, #context-meter { font-size: 0.85em; }
#chat-notice:empty, #sum-notice:empty, #trans-notice:empty { display: none; }
#chat-side-notice:empty { display: none; }
#chat-side-notice { font-size: 0.85em; }
/* A long list of saved chats scrolls inside itself instead of pushing the sidebar's buttons away. */
#chat-list { max-height: 42vh; overflow-y: auto; }
/* Column names wrap between words only ("Context" never becomes "Contex / t"). */
#models-table th, #models-table th * { word-break: normal; overflow-wrap: normal; hyphens: none; }
"""


class NoModelError(LiteError, RuntimeError):
    """Raised when a task needs a model and none is loaded."""


def current_model(services, lang: str | None = None):
    """The loaded model, or NoModelError with the reason (including a failed load), worded in ``lang``.
    While the start-up model is still loading this waits for it: a message sent early is answered, not refused."""
    services.wait_for_model()
    model = services.registry.current
    if model is None:
        err = services.registry.last_error
        no_model = tr(lang, "err.no_model")
        raise NoModelError(f"{no_model} {tr(lang, 'err.last_load_failed', error=err)}" if err else no_model)
    return model


def friendly(e: BaseException, lang: str | None = None) -> str:
    """``user_message(e)`` for the UI, in ``lang``: out of memory and a bug are worded here; the user's
    own mistakes are worded where they are raised, and said in ``lang`` when raised with a Message
    (a checkpoint's problem, the access policy's refusal), else as they are. An unexpected error (a
    bug) also goes to the terminal log with its traceback."""
    if is_out_of_memory(e):
        return tr(lang, "err.out_of_memory")
    if not is_user_error(e):
        log.error("unexpected error in the UI", exc_info=e)
        return tr(lang, "err.unexpected", error=f"{type(e).__name__}: {str(e)[:BUG_TEXT_MAX]}")
    return say(lang, message_of(e))


def warn(message: str) -> str:
    """Show a toast and return the message (for an inline notice too)."""
    gr.Warning(message)
    return message


def notice_md(message: str | None) -> str:
    return f"⚠ {message}" if message else ""


class Throttle:
    """True at most every ``STREAM_EVERY_S`` seconds: bounds how often a stream pushes to the browser."""

    def __init__(self, every: float = STREAM_EVERY_S):
        self.every, self.last = every, 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            return True
        return False


def read_text_file(path: str | Path | None, max_bytes: int, lang: str | None = None) -> str:
    """The UTF-8 text of an uploaded file, or ValueError saying (in ``lang``) why it cannot be used."""
    if not path:
        raise ValueError(tr(lang, "file.none"))
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(tr(lang, "file.too_big", name=p.name, mb=f"{size / 1e6:.1f}", limit=f"{max_bytes / 1e6:.0f}"))
    data = p.read_bytes()
    if b"\x00" in data[:8192]:
        raise ValueError(tr(lang, "file.binary", name=p.name))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(tr(lang, "file.not_utf8", name=p.name, pos=e.start)) from None
    if not text.strip():
        raise ValueError(tr(lang, "file.empty", name=p.name))
    return text


FINISH_KEYS = {"length": "chat.stats_length", "cancelled": "chat.stats_cancelled", "stop": "chat.stats_stop"}


def stats_md(stats: dict | None, lang: str | None = None) -> str:
    """'42 tokens · 31.5 tok/s · first token 120 ms · finished: stop' for a reply's stats."""
    if not stats:
        return ""
    parts = [tr(lang, "chat.stats_tokens", n=stats.get("new_tokens", 0)),
             f"{stats.get('decode_tok_s', 0.0):.1f} tok/s",
             tr(lang, "chat.stats_first", ms=f"{stats.get('ttft_s', 0.0) * 1000:.0f}"),
             tr(lang, "chat.stats_prompt", n=stats.get("prompt_tokens", 0))]
    reason = stats.get("finish_reason")
    if reason == "length" and stats.get("context_full"):
        parts.append(tr(lang, "chat.stats_context_full"))
    elif reason:
        parts.append(tr(lang, FINISH_KEYS[reason]) if reason in FINISH_KEYS else reason)
    return " · ".join(parts)
