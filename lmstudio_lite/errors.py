"""The one error base, and the one way any error becomes a message for a person.

The UI, the CLI, the API server and training jobs all show ``user_message(e)``. An error the
user can act on (a wrong path, a folder that is not a model, bad training data, a prompt too
long for the context, a download that failed) is a ``LiteError``: its text is the message,
worded for the person at the keyboard, and no traceback is shown. The standard library's
``ValueError``, ``KeyError`` and ``OSError`` read the same way (``OSError``s name the file and
the OS's reason). Anything else is a bug: it is named as such, and each surface logs its
traceback (the UI's log, the server's log, a run's ``log.txt``; the CLI lets it propagate).

Bottom layer: imports nothing of ours, and never torch (it is looked up only if already loaded).
"""
from __future__ import annotations

import sys

MESSAGE_MAX = 2000  # a whole config.json quoted in a ValueError must not flood a toast
BUG_TEXT_MAX = 300
OUT_OF_MEMORY = "The device ran out of memory. Try a shorter text, fewer new tokens, or a smaller model."


class LiteError(Exception):
    """A problem the user can fix or must know about; ``str(e)`` is the whole message."""


def is_out_of_memory(e: BaseException) -> bool:
    """torch's CUDA/XPU OutOfMemoryError, Python's MemoryError, or a backend's "out of memory"
    RuntimeError (MPS raises a plain one)."""
    if isinstance(e, LiteError):  # already worded, perhaps about memory
        return False
    if isinstance(e, MemoryError):
        return True
    torch = sys.modules.get("torch")  # only an error torch raised can be torch's: never import it here
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(e, oom):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def is_user_error(e: BaseException) -> bool:
    """True when ``user_message(e)`` is the whole story (no traceback is worth showing)."""
    return isinstance(e, (LiteError, ValueError, KeyError, OSError)) or is_out_of_memory(e)


def user_message(e: BaseException) -> str:
    """One paragraph for a person: what went wrong and, where known, what to do about it."""
    if is_out_of_memory(e):
        return OUT_OF_MEMORY
    if isinstance(e, OSError) and not isinstance(e, LiteError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"  # the OS's own str() ('[Errno 2] ...') reads as a crash
    if isinstance(e, KeyError) and e.args:  # str(KeyError('x')) is "'x'", quoted
        return str(e.args[0])[:MESSAGE_MAX]
    if is_user_error(e):
        return str(e)[:MESSAGE_MAX] or type(e).__name__
    return f"Something went wrong ({type(e).__name__}: {str(e)[:BUG_TEXT_MAX]})."
