"""The Chat tab's probability colours: a toggle, and under the chat the last reply with each token
coloured by the probability the model gave it (hover for the alternatives).

Computed after a reply, from one teacher-forced forward over the prompt and the reply
(``tasks.inspect.reply_probabilities``): the generation itself is untouched.
"""
from __future__ import annotations

import gradio as gr

from ..services.tasks.chat import build_messages
from .common import LLM, PRIVATE, current_model, friendly
from .i18n import lang_of, t
from .inspect_view import reply_html


def build_toggle() -> gr.Checkbox:
    return gr.Checkbox(False, label=t("chat.probs_toggle"),
                       elem_id="chat-probs-toggle", container=False)


def build_view() -> gr.HTML:
    return gr.HTML("", visible=False, elem_id="chat-probs")


def colours(services, on: bool, conv, lang: str | None = None):
    """-> the HTML view update: hidden when off, else the last reply coloured."""
    if not on:
        return gr.update(value="", visible=False)
    msgs = (conv or {}).get("messages") or []
    if not msgs or msgs[-1]["role"] != "assistant":
        return gr.update(value=reply_html([], lang), visible=True)
    from ..services.tasks import inspect as analysis  # here: it imports torch, which building the page must not wait for

    try:
        model = current_model(services, lang)
        messages = build_messages(conv.get("system"), msgs[:-1])
        tokens = analysis.reply_probabilities(model, messages, msgs[-1]["content"])
    except Exception as e:
        return gr.update(value=f"<div class='reply-probs'>⚠ {friendly(e, lang)}</div>", visible=True)
    return gr.update(value=reply_html(tokens, lang), visible=True)


def wire(services, toggle: gr.Checkbox, html: gr.HTML, conv: gr.State, events, opened: gr.Radio) -> None:
    """Redraw when the toggle flips, after each reply step in ``events``, and when another
    conversation is opened (the saved-conversations list ``opened`` follows the open one)."""
    def fn(on, conversation, request: gr.Request):
        return colours(services, on, conversation, lang_of(request))

    for trigger in (toggle.change, opened.change):
        trigger(fn, [toggle, conv], html, **LLM, **PRIVATE)
    for event in events:
        event.then(fn, [toggle, conv], html, show_progress="hidden", **LLM, **PRIVATE)
