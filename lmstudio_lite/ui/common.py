"""Helpers shared by the tabs: readable errors, the loaded model, uploads, throttled streaming.

Nothing here imports torch: the UI talks to the engine only through services.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr

from ..errors import LiteError, is_user_error, user_message

log = logging.getLogger("lmstudio_lite.ui")

NO_MODEL = ("No model is loaded. Load one in the Models tab, or start the app with "
            "`lmstudio-lite --model FOLDER`.")
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


def current_model(services):
    """The loaded model, or NoModelError with the reason (including a failed load). While the
    start-up model is still loading this waits for it: a message sent early is answered, not refused."""
    services.wait_for_model()
    model = services.registry.current
    if model is None:
        err = services.registry.last_error
        raise NoModelError(f"{NO_MODEL} The last load failed: {err}" if err else NO_MODEL)
    return model


def friendly(e: BaseException) -> str:
    """``user_message(e)`` for the UI; an unexpected error (a bug) also goes to the terminal log with
    its traceback. Mistakes the user can fix are logged nowhere: the message says it all."""
    if not is_user_error(e):
        log.error("unexpected error in the UI", exc_info=e)
    return user_message(e)


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


def read_text_file(path: str | Path | None, max_bytes: int) -> str:
    """The UTF-8 text of an uploaded file, or ValueError saying why it cannot be used."""
    if not path:
        raise ValueError("no file was uploaded")
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{p.name} is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    data = p.read_bytes()
    if b"\x00" in data[:8192]:
        raise ValueError(f"{p.name} looks like a binary file, not text. Upload a .txt or .md file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p.name} is not UTF-8 text (bad byte at position {e.start}). "
                         "Save it as UTF-8 and try again.") from None
    if not text.strip():
        raise ValueError(f"{p.name} is empty")
    return text


def stats_md(stats: dict | None) -> str:
    """'42 tokens · 31.5 tok/s · first token 120 ms · finished: stop' for a reply's stats."""
    if not stats:
        return ""
    parts = [f"{stats.get('new_tokens', 0)} tokens",
             f"{stats.get('decode_tok_s', 0.0):.1f} tok/s",
             f"first token {stats.get('ttft_s', 0.0) * 1000:.0f} ms",
             f"prompt {stats.get('prompt_tokens', 0)} tokens"]
    reason = stats.get("finish_reason")
    if reason == "length" and stats.get("context_full"):
        parts.append("stopped: the context window is full")
    elif reason:
        parts.append({"length": "stopped at the token limit", "cancelled": "stopped by you",
                      "stop": "finished"}.get(reason, reason))
    return " · ".join(parts)
