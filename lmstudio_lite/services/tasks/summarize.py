"""Summaries of any length of text, map-reduce style, as chat prompts.

The prompts (``{style}`` is one of ``STYLES``' instructions)::

    system: You summarize text faithfully. Use only facts from the text; add nothing.
    user:   Summarize the following text {style}.

            {text}

Text longer than the context is split into chunks at paragraph and sentence
boundaries, counted with the model's own tokenizer; each chunk is summarized as a
short paragraph (the *map* step), then the partial summaries are combined with::

    user:   Combine these summaries of the parts of one text into one summary {style}.

            Part 1: ...

            Part 2: ...

When the partial summaries themselves do not fit, they are summarized again in chunks
(at most ``MAX_LEVELS`` rounds).
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from ...messages import Message
from .text import Step, prompt_overhead, run_messages, split_text, token_counter

SYSTEM = "You summarize text faithfully. Use only facts from the text; add nothing."
STYLES = {
    "One sentence": "in one sentence",
    "Short paragraph": "in a short paragraph",
    "Bullet points": "as a few bullet points, one line each starting with '- '",
}
BULLETS = "Bullet points"
MAP_STYLE = "Short paragraph"
MAX_LEVELS = 8  # a safety net: each round is at most a third of the previous one
SAFETY_TOKENS = 8  # joining chunks back into a prompt may add a token or two per boundary


_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")  # a line the model already wrote as a list item
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def as_bullets(text: str) -> str:
    """The summary as '- ' lines, whatever the model wrote: its own list items are kept (their marker
    made '- '), and running prose becomes one bullet per sentence. Small models rarely follow the
    'bullet points' instruction, and the style asked for should not depend on that."""
    items = []
    for line in (raw.strip() for raw in text.splitlines()):
        if _MARKER.match(line):
            items.append(_MARKER.sub("", line))
        elif line:
            items += [piece.strip() for piece in _SENTENCE_END.split(line) if piece.strip()]
    return "\n".join(f"- {item}" for item in items)


_LAST_END = re.compile(r"[.!?。！？][\"'”’)]*(?=\s|$)")


def without_cut_tail(text: str) -> str:
    """The text up to its last finished sentence: a summary cut by its token budget ends mid-sentence
    ('Lily's mom said, "Let'), and a half sentence reads as a fault. Kept whole when no sentence ends."""
    ends = list(_LAST_END.finditer(text.rstrip()))
    return text.rstrip()[:ends[-1].end()] if ends else text


def shaped(style: str, text: str, final: bool = False) -> str:
    text = without_cut_tail(text) if final else text
    return as_bullets(text) if style == BULLETS else text.strip()


def summary_messages(text: str, style: str) -> list[dict]:
    how = STYLES.get(style, STYLES["Short paragraph"])
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Summarize the following text {how}.\n\n{text}"}]


def label_parts(parts: list[str]) -> str:
    return "\n\n".join(f"Part {i}: {p.strip()}" for i, p in enumerate(parts, 1))


def combine_messages(parts: list[str], style: str) -> list[dict]:
    how = STYLES.get(style, STYLES["Short paragraph"])
    joined = label_parts(parts)
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Combine these summaries of the parts of one text into one summary {how}."
                                        f"\n\n{joined}"}]


def budgets(model, max_new_tokens: int, style: str = "Short paragraph") -> tuple[int, int, int]:
    """-> (chunk, reply, map_reply) token budgets for this model's context.

    chunk: source tokens one prompt carries; reply: the final summary's length (what was asked,
    at most a third of the free room); map_reply: a part's summary, at most a third of its chunk,
    so every round of partial summaries is much shorter than its input and the rounds end.
    """
    overhead = max(prompt_overhead(model, lambda t: summary_messages(t, MAP_STYLE)),
                   prompt_overhead(model, lambda t: summary_messages(t, style)),
                   prompt_overhead(model, lambda t: combine_messages([], style)))  # part labels count as text
    free = model.context_length - overhead - SAFETY_TOKENS
    reply = max(8, min(int(max_new_tokens), free // 3))
    chunk = free - reply
    if chunk < 24:
        raise ValueError(Message("sum.err_small_context", n=model.context_length))
    return chunk, reply, max(8, min(reply, chunk // 3))


def chunk_budget(model, max_new_tokens: int, style: str = "Short paragraph") -> int:
    """Tokens of source text one prompt can carry."""
    return budgets(model, max_new_tokens, style)[0]


def plan(model, text: str, max_new_tokens: int, style: str = "Short paragraph") -> list[str]:
    """The chunks the text will be summarized in (one chunk: no map-reduce needed)."""
    return split_text(text, token_counter(model.tokenizer), chunk_budget(model, max_new_tokens, style))


def summarize(model, text: str, style: str, settings, cancel=None) -> Iterator[Step]:
    """Stream a summary of ``text``: ``Step``s with progress and the text to show so far."""
    if not text or not text.strip():
        raise ValueError(Message("sum.err_no_text"))
    count = token_counter(model.tokenizer)
    budget, reply, map_reply = budgets(model, settings.max_new_tokens, style)
    chunks = split_text(text, count, budget)
    level = 0
    while len(chunks) > 1:
        level += 1
        if level > MAX_LEVELS:
            raise ValueError(Message("sum.err_too_long"))
        parts = []
        for i, chunk in enumerate(chunks):
            shown = _parts_text(parts, level)
            desc = (Message("sum.step_part_round", i=i + 1, n=len(chunks), level=level) if level > 1
                    else Message("sum.step_part", i=i + 1, n=len(chunks)))
            yield Step(i, len(chunks) + 1, desc, shown)
            partial = ""
            for delta in run_messages(model, summary_messages(chunk, MAP_STYLE), settings, map_reply, cancel):
                partial += delta
                yield Step(i, len(chunks) + 1, desc, _parts_text(parts + [partial], level))
            parts.append(partial.strip())
            if cancel is not None and cancel.is_set():
                return
        if count(label_parts(parts)) <= budget:
            yield from _final(model, combine_messages(parts, style), settings, reply, cancel, len(chunks), style)
            return
        chunks = split_text("\n\n".join(parts), count, budget)
    yield from _final(model, summary_messages(chunks[0] if chunks else text, style), settings, reply, cancel, 0,
                      style)


def _final(model, messages, settings, reply, cancel, n_parts, style) -> Iterator[Step]:
    desc = Message("sum.step_combining" if n_parts else "sum.step_summarizing")
    total = n_parts + 1
    yield Step(n_parts, total, desc, "")
    out = ""
    for delta in run_messages(model, messages, settings, reply, cancel):
        out += delta
        yield Step(n_parts, total, desc, shaped(style, out))
    yield Step(total, total, Message("sum.step_done"), shaped(style, out, final=True), final=True)


def _parts_text(parts: list[str], level: int) -> str:
    head = "Partial summaries" + (f" (round {level})" if level > 1 else "") + " — combining them next:\n\n"
    return head + "\n\n".join(f"[Part {i}] {p.strip()}" for i, p in enumerate(parts, 1))
