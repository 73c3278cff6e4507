"""The Translate tab: source and target language, swap, streamed paragraph-by-paragraph output.

Prompts and the language guess live in ``tasks/translate.py``. Public API: ``/translate``
(text, source, target, max_new_tokens, temperature -> the streamed translation string).
"""
from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from ..tasks.translate import (AUTO, LANGUAGES, card_languages, detect_language, language_choices, resolve_source,
                               translate, untried)
from .common import LLM, PRIVATE, Throttle, current_model, friendly, notice_md, warn
from .models_tab import enclosing_tab
from .summarize_tab import task_settings

DEFAULT_TARGET = "French"


def detected(text: str, src: str) -> str:
    if src != AUTO or not (text or "").strip():
        return ""
    lang = detect_language(text)
    return f"Detected source language: **{lang}**" if lang else "Could not detect the language; assuming English."


def swap(src: str, tgt: str, text: str, output: str):
    """Swap the languages (an auto-detected source becomes concrete) and move the translation over."""
    if src == AUTO:
        src = detect_language(text or "") or "English"
    if output and output.strip():
        return tgt, src, output, text
    return tgt, src, gr.skip(), gr.skip()


class TranslateHandlers:
    def __init__(self, services):
        self.services = services

    def known_languages(self) -> list[str] | None:
        """What the loaded model's card says it knows (None: no model, or the card is silent)."""
        model = self.services.registry.current
        return card_languages(model.path) if model is not None else None

    def language_lists(self):
        """-> (From, To) dropdown updates: the loaded model's languages first, the rest marked."""
        choices = language_choices(self.known_languages())
        return gr.update(choices=[(AUTO, AUTO)] + choices), gr.update(choices=choices)

    def run(self, text, src, tgt, max_new, temperature, progress=gr.Progress()):
        """Stream the translation. Yields output, notice."""
        if not (text or "").strip():
            yield "", notice_md(warn("Type or paste some text to translate first."))
            return
        if resolve_source(text, src) == tgt:
            yield text.strip(), notice_md(warn(f"The text is already in {tgt}: pick another target language."))
            return
        try:
            model = current_model(self.services)
            note = untried(self.known_languages(), resolve_source(text, src), tgt)
            note = notice_md(warn(note)) if note else ""
            throttle = Throttle()
            for step in translate(model, text, src, tgt, task_settings(max_new, temperature)):
                progress((step.done, step.total), desc=step.desc)
                if step.final or throttle.ready():
                    yield step.text, note
        except Exception as e:
            yield gr.skip(), notice_md(warn(friendly(e)))


def build(services) -> None:
    """Lay out the Translate tab (call inside a ``gr.Tab``)."""
    h = TranslateHandlers(services)
    tab = enclosing_tab()
    choices = language_choices(h.known_languages())
    with gr.Row(equal_height=True):
        src = gr.Dropdown([(AUTO, AUTO)] + choices, value=AUTO, label="From", elem_id="trans-src", scale=4)
        swap_btn = gr.Button("⇄ Swap", elem_id="trans-swap", scale=1, min_width=80)
        tgt = gr.Dropdown(choices, value=DEFAULT_TARGET, label="To", elem_id="trans-tgt", scale=4)
    if tab is not None:  # another model may be loaded since: list what it knows first
        tab.select(h.language_lists, None, [src, tgt], queue=False, **PRIVATE)
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label="Text", lines=12, max_lines=30, elem_id="trans-input",
                              placeholder="Text to translate (Shift+Enter runs). Paragraphs are kept.")
            found = gr.Markdown("", elem_id="trans-detected")
        with gr.Column():
            output = gr.Textbox(label="Translation", lines=12, max_lines=30, interactive=False,
                                elem_id="trans-output", buttons=["copy"])
            notice = gr.Markdown("", elem_id="trans-notice")
    with gr.Accordion("Settings", open=False):
        with gr.Row():
            max_new = gr.Slider(16, 2048, 256, step=1, label="Max new tokens per paragraph", elem_id="trans-max-new")
            temperature = gr.Slider(0, 1.5, 0.0, step=0.05, label="Temperature (0 = deterministic)",
                                    elem_id="trans-temperature")
    with gr.Row():
        run = gr.Button("Translate", variant="primary", elem_id="trans-btn")
        stop = gr.Button("Stop", variant="stop", elem_id="trans-stop")
    for trigger in (text.change, src.change):
        trigger(detected, [text, src], found, queue=False, show_progress="hidden", trigger_mode="always_last",
                **PRIVATE)
    swap_btn.click(swap, [src, tgt, text, output], [src, tgt, text, output], queue=False, **PRIVATE)
    events = [trigger(h.run, [text, src, tgt, max_new, temperature], [output, notice], show_progress_on=[output],
                      **LLM, **PRIVATE)
              for trigger in (run.click, text.submit)]
    stop.click(None, None, None, cancels=events, **PRIVATE)
    _register_api(services)


def _register_api(services) -> None:
    def translate_api(text: str, source: str = AUTO, target: str = DEFAULT_TARGET, max_new_tokens: int = 256,
                      temperature: float = 0.0) -> Iterator[str]:
        """Translate ``text`` from ``source`` (or Auto-detect) to ``target``, streamed as the growing string."""
        if not (text or "").strip():
            raise gr.Error("There is no text to translate.")
        for lang in (source, target):
            if lang not in LANGUAGES and lang != AUTO:
                raise gr.Error(f"Unknown language {lang!r}; use one of: {', '.join(LANGUAGES)}")
        try:
            model = current_model(services)
            for step in translate(model, text, source, target, task_settings(max_new_tokens, temperature)):
                yield step.text
        except Exception as e:
            raise gr.Error(friendly(e)) from None

    gr.api(translate_api, api_name="translate", **LLM)
