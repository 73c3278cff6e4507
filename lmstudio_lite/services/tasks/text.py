"""Splitting long text into pieces that fit a token budget, and a small generation driver.

``split_text`` cuts at the largest natural boundary that works — paragraphs, then
sentences, then lines, then words, then halves — and packs consecutive pieces back
together up to the budget, so chunks keep whole paragraphs whenever they can.
Token counts come from the caller (the model's tokenizer), never from a guess.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...messages import Message

PARAGRAPH_RE = re.compile(r"\n\s*\n")
SENTENCE_RE = re.compile(r"(?<=[.!?;:。！？；])\s+|(?<=[。！？])")


@dataclass
class Step:
    """One update from a long-running task: progress and the text to show so far."""
    done: int
    total: int
    desc: str
    text: str
    final: bool = False


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in PARAGRAPH_RE.split(text.strip()) if p.strip()]


def _pieces(text: str, level: int) -> tuple[list[str], str]:
    """Split at boundary ``level``: -> (pieces, the separator to join them back)."""
    if level == 0:
        return paragraphs(text), "\n\n"
    if level == 1:
        return [s for s in SENTENCE_RE.split(text) if s.strip()], " "
    if level == 2:
        return [s for s in text.split("\n") if s.strip()], "\n"
    if level == 3:
        return text.split(), " "
    mid = len(text) // 2  # no boundary left (e.g. a run of CJK text): halve it
    return [text[:mid], text[mid:]], ""


def _fit(text: str, count: Callable[[str], int], budget: int, level: int = 0) -> list[str]:
    """``text`` cut into pieces each within ``budget`` tokens (a single character may exceed it)."""
    if count(text) <= budget or len(text) <= 1:
        return [text]
    while level < 4:
        pieces, sep = _pieces(text, level)
        if len(pieces) > 1:
            break
        level += 1
    else:
        pieces, sep = _pieces(text, 4)
    out: list[str] = []
    for piece in pieces:
        out += _fit(piece, count, budget, level + 1)
    return _pack(out, sep, count, budget)


def _pack(pieces: list[str], sep: str, count: Callable[[str], int], budget: int) -> list[str]:
    """Greedily join consecutive pieces while the joined text stays within the budget."""
    out: list[str] = []
    for piece in pieces:
        if out and count(out[-1] + sep + piece) <= budget:
            out[-1] = out[-1] + sep + piece
        else:
            out.append(piece)
    return out


def split_text(text: str, count: Callable[[str], int], budget: int) -> list[str]:
    """Chunks of ``text`` of at most ``budget`` tokens each, in order, split at natural boundaries."""
    if budget < 1:
        raise ValueError(Message("sum.err_budget"))
    text = text.strip()
    if not text:
        return []
    return [c.strip() for c in _fit(text, count, budget) if c.strip()]


def token_counter(tokenizer) -> Callable[[str], int]:
    """Count tokens as they would appear inside a prompt (no BOS/EOS added)."""
    return lambda s: len(tokenizer.encode(s, add_special_tokens=False))


def run_messages(model, messages: list[dict], settings, max_new_tokens: int | None = None,
                 cancel=None) -> Iterator[str]:
    """Stream text deltas for one chat-formatted request; the stream is closed however it ends."""
    kwargs = settings.generate_kwargs()
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max(1, int(max_new_tokens))
    stream = model.generate(messages, cancel=cancel, **kwargs)
    try:
        yield from stream
    finally:
        close = getattr(stream, "close", None)
        if close:
            close()


def prompt_overhead(model, messages_for: Callable[[str], list[dict]]) -> int:
    """Tokens a task's prompt costs around an empty text (template, instructions)."""
    return len(model.tokenizer.encode_chat(messages_for(""), add_generation_prompt=True))
