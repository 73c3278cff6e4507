"""Messages for people, written once in ``ui/locales/<lang>.json`` and said in the reader's language.

A layer that words a message for the person at the keyboard (services, training's data checks) but
must not know the page's language builds a ``Message(key, **params)``: a ``str`` whose value is the
English text, so the CLI, the API, logs and ``str(e)`` read English as before, and which also keeps
its key and parameters, so the page can say it again in its own language (``say(lang, value)``).
The English text lives only in en.json; a parameter may itself be a Message (said in the same language).

The strings live beside the page that shows most of them (``ui/locales``); this module only reads
them (no import from ui), so it sits at the bottom layer with ``errors``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .errors import user_message

DEFAULT = "en"
LOCALES = Path(__file__).parent / "ui" / "locales"


@lru_cache(maxsize=None)
def strings(lang: str) -> dict[str, str]:
    """The key -> text table of one language (read once); {} for a language we do not have."""
    path = LOCALES / f"{lang}.json"
    if lang != DEFAULT and not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def render(lang: str | None, key: str, /, **params) -> str:
    """The text of ``key`` in ``lang`` (English where that language lacks it, or for None), its
    ``{fields}`` filled; Message parameters are said in ``lang`` too. (Positional-only, so a string
    may have a ``{lang}`` or ``{key}`` field.)"""
    text = strings(lang).get(key) if lang else None
    filled = {name: say(lang, value) if isinstance(value, Message) else value for name, value in params.items()}
    return (text or strings(DEFAULT)[key]).format(**filled)


class Message(str):
    """English text that remembers its key and parameters. An unknown key fails at once."""

    key: str
    params: dict

    def __new__(cls, key: str, /, **params):
        self = super().__new__(cls, render(DEFAULT, key, **params))
        self.key, self.params = key, params
        return self

    def __reduce__(self):  # copy, deepcopy and pickle keep the key (str's own would keep only the text)
        return _remake, (self.key, self.params)


def _remake(key: str, params: dict) -> Message:
    return Message(key, **params)


def message_of(e: BaseException):
    """The Message an error was raised with, else ``user_message(e)`` (worded in English)."""
    return e.args[0] if len(e.args) == 1 and isinstance(e.args[0], Message) else user_message(e)


def say(lang: str | None, value) -> str:
    """``value`` for a reader of ``lang``: a Message in that language; an exception raised with a
    Message, the same; anything else as its ``str`` (already worded, in English)."""
    if isinstance(value, BaseException) and len(value.args) == 1 and isinstance(value.args[0], Message):
        value = value.args[0]
    if isinstance(value, Message):
        return render(lang, value.key, **value.params)
    return str(value)
