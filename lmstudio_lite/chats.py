"""Saved conversations: one JSON file per conversation in ``paths.chats``.

A conversation is a plain dict, saved as it happens and reloaded after a restart::

    {"id": "20250101-120000-ab12cd", "title": "Hello there", "created": 1735732800.0,
     "updated": 1735732812.5, "system": "You are a helpful assistant.",
     "messages": [{"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Hi!", "model": "SmolLM2-135M-Instruct"}]}

An assistant message names the model that wrote it (``model``; older files may lack it).

Writes are atomic (``atomic.write_text``), so a crash never leaves half a file. The store is shared by every browser session; which
conversation a session shows lives in that session's ``gr.State``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from pathlib import Path

from .atomic import write_text
from .errors import LiteError
from .messages import Message

ROLES = ("system", "user", "assistant")
TITLE_CHARS = 48
MAX_IMPORT_BYTES = 5 * 1024 * 1024
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ChatFormatError(LiteError, ValueError):
    """An imported or stored conversation is not in the expected shape."""


def new_conversation(system: str = "", title: str = "New chat") -> dict:
    """A fresh, unsaved conversation (it gets a file on its first save)."""
    now = time.time()
    cid = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3)
    return {"id": cid, "title": title, "created": now, "updated": now, "system": system, "messages": []}


def title_from(text: str) -> str:
    """A short title from the first user message: its first line, cut at a word."""
    line = " ".join(text.strip().split())
    if len(line) <= TITLE_CHARS:
        return line or "New chat"
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0]
    return (cut or line[:TITLE_CHARS]) + "…"


def validate(data) -> dict:
    """Check a conversation's shape; returns a clean copy or raises ChatFormatError."""
    if not isinstance(data, dict):
        raise ChatFormatError(Message("chat.err_not_object"))
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ChatFormatError(Message("chat.err_no_messages"))
    clean = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatFormatError(Message("chat.err_bad_message", i=i, roles=", ".join(ROLES)))
        clean.append({"role": m["role"], "content": m["content"]})
        if m["role"] == "assistant" and isinstance(m.get("model"), str) and m["model"]:
            clean[-1]["model"] = m["model"][:200]
    system = data.get("system") or ""
    if clean and clean[0]["role"] == "system":  # OpenAI-style exports keep the system prompt in messages
        system = system or clean.pop(0)["content"]
    conv = new_conversation(system=str(system))
    conv["messages"] = clean
    conv["title"] = str(data.get("title") or title_from(_first_user(clean)))[:200]
    for key in ("created", "updated"):
        if isinstance(data.get(key), (int, float)):
            conv[key] = float(data[key])
    if isinstance(data.get("id"), str) and _ID_RE.match(data["id"]):
        conv["id"] = data["id"]
    return conv


def _first_user(messages: list[dict]) -> str:
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def to_markdown(conv: dict) -> str:
    """A readable export: title, system prompt, then each turn under a heading."""
    lines = [f"# {conv.get('title') or 'Conversation'}", ""]
    if conv.get("system"):
        lines += ["**System:**", "", conv["system"], ""]
    for m in conv.get("messages", []):
        by = f" ({m['model']})" if m.get("model") else ""
        lines += [f"## {m['role'].capitalize()}{by}", "", m["content"], ""]
    return "\n".join(lines).rstrip() + "\n"


def to_json(conv: dict) -> str:
    return json.dumps(conv, ensure_ascii=False, indent=2)


class ChatStore:
    """Conversations on disk, one ``<id>.json`` each."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, cid: str) -> Path:
        if not isinstance(cid, str) or not _ID_RE.match(cid):
            raise KeyError(Message("chat.err_bad_id", id=repr(cid)))
        return self.root / f"{cid}.json"

    def save(self, conv: dict) -> dict:
        """Write the conversation (stamping ``updated``); returns it."""
        conv["updated"] = time.time()
        with self._lock:
            write_text(self._path(conv["id"]), to_json(conv))
        return conv

    def load(self, cid: str) -> dict:
        path = self._path(cid)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyError(Message("chat.err_no_saved", id=repr(cid))) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ChatFormatError(Message("chat.err_file_not_json", name=path.name, error=str(e))) from None
        conv = validate(data)
        conv["id"] = cid
        return conv

    def list(self) -> list[dict]:
        """Summaries ``{id, title, updated, turns}``, newest first; unreadable files are skipped."""
        out = []
        for path in self.root.glob("*.json"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                out.append({"id": path.stem, "title": str(data.get("title") or path.stem),
                            "updated": float(data.get("updated") or path.stat().st_mtime),
                            "turns": len(data.get("messages") or [])})
            except (OSError, ValueError, TypeError, AttributeError):
                continue
        return sorted(out, key=lambda s: s["updated"], reverse=True)

    def rename(self, cid: str, title: str) -> dict:
        title = " ".join(title.split())[:200]
        if not title:
            raise ValueError(Message("chat.err_empty_title"))
        conv = self.load(cid)
        conv["title"] = title
        return self.save(conv)

    def delete(self, cid: str) -> None:
        with self._lock:
            self._path(cid).unlink(missing_ok=True)

    def import_json(self, text: str) -> dict:
        """Save an exported conversation as a new one (a fresh id, so nothing is overwritten)."""
        if len(text.encode("utf-8", errors="ignore")) > MAX_IMPORT_BYTES:
            raise ChatFormatError(Message("chat.err_import_too_large"))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ChatFormatError(Message("chat.err_import_not_json", error=e.msg, line=e.lineno)) from None
        conv = validate(data)
        fresh = new_conversation()
        conv["id"], conv["created"] = fresh["id"], fresh["created"]
        return self.save(conv)
