"""The Translate tab: source and target language, swap, streamed paragraph-by-paragraph output.

Prompts and the language guess live in ``tasks/translate.py``. Public API: ``/translate``
(text, source, target, max_new_tokens, temperature -> the streamed translation string).
"""
from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from ..services.tasks.translate import (AUTO, LANGUAGES, card_languages, detect_language, language_choices, resolve_source,
                               translate)
from .common import LLM, PRIVATE, Throttle, current_model, friendly, notice_md, warn
from .i18n import lang_of, say, t, tr
from .models_tab import enclosing_tab
from .summarize_tab import task_settings

DEFAULT_TARGET = "French"


def detected(text: str, src: str, request: gr.Request = None) -> str:
    if src != AUTO or not (text or "").strip():
        return ""
    lang, ui = detect_language(text), lang_of(request)
    return tr(ui, "trans.detected", lang=tr(ui, f"lang.{lang}")) if lang else tr(ui, "trans.not_detected")


def labelled(choices: list[tuple[str, str]], ui: str | None) -> list[tuple[str, str]]:
    """Language choices with their names in the page's language ('French (may not work...)' marks kept)."""
    names = [(label, value, tr(ui, f"lang.{value}")) for label, value in choices]
    return [(tr(ui, "trans.untried_choice", name=name) if label != value else name, value)
            for label, value, name in names]


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

    def language_lists(self, request: gr.Request = None):
        """-> (From, To) dropdown updates: the loaded model's languages first, the rest marked."""
        ui = lang_of(request)
        choices = labelled(language_choices(self.known_languages()), ui)
        return gr.update(choices=[(tr(ui, "trans.auto"), AUTO)] + choices), gr.update(choices=choices)

    def run(self, text, src, tgt, max_new, temperature, progress=gr.Progress(), request: gr.Request = None):
        """Stream the translation. Yields output, notice."""
        ui = lang_of(request)
        if not (text or "").strip():
            yield "", notice_md(warn(tr(ui, "trans.empty")))
            return
        if resolve_source(text, src) == tgt:
            yield text.strip(), notice_md(warn(tr(ui, "trans.same_language", lang=tr(ui, f"lang.{tgt}"))))
            return
        try:
            model = current_model(self.services, ui)
            known = self.known_languages()
            off = [tr(ui, f"lang.{x}") for x in dict.fromkeys((resolve_source(text, src), tgt))
                   if known and x not in known]  # as tasks.translate.untried, worded in the page's language
            note = notice_md(warn(tr(ui, "trans.untried", langs=tr(ui, "trans.and").join(off),
                                     known=", ".join(tr(ui, f"lang.{x}") for x in known)))) if off else ""
            throttle = Throttle()
            for step in translate(model, text, src, tgt, task_settings(max_new, temperature)):
                progress((step.done, step.total), desc=say(ui, step.desc))
                if step.final or throttle.ready():
                    yield step.text, note
        except Exception as e:
            yield gr.skip(), notice_md(warn(friendly(e, ui)))


def build(services) -> None:
    """Lay out the Translate tab (call inside a ``gr.Tab``)."""
    h = TranslateHandlers(services)
    tab = enclosing_tab()
    choices = language_choices(h.known_languages())
    with gr.Row(equal_height=True):
        # Names only until the tab is opened, when language_lists words the lists in the page's language.
        choices = [(t(f"lang.{value}"), value) for _, value in choices]
        src = gr.Dropdown([(t("trans.auto"), AUTO)] + choices, value=AUTO, label=t("trans.from"), elem_id="trans-src",
                          scale=4)
        swap_btn = gr.Button(t("trans.swap"), elem_id="trans-swap", scale=1, min_width=80)
        tgt = gr.Dropdown(choices, value=DEFAULT_TARGET, label=t("trans.to"), elem_id="trans-tgt", scale=4)
    if tab is not None:  # another model may be loaded since: list what it knows first
        tab.select(h.language_lists, None, [src, tgt], queue=False, **PRIVATE)
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label=t("trans.text"), lines=12, max_lines=30, elem_id="trans-input",
                              placeholder=t("trans.text_placeholder"))
            found = gr.Markdown("", elem_id="trans-detected")
        with gr.Column():
            output = gr.Textbox(label=t("trans.output"), lines=12, max_lines=30, interactive=False,
                                elem_id="trans-output", buttons=["copy"])
            notice = gr.Markdown("", elem_id="trans-notice")
    with gr.Accordion(t("common.settings"), open=False):
        with gr.Row():
            max_new = gr.Slider(16, 2048, 256, step=1, label=t("trans.max_new"), elem_id="trans-max-new")
            temperature = gr.Slider(0, 1.5, 0.0, step=0.05, label=t("common.temperature"),
                                    elem_id="trans-temperature")
    with gr.Row():
        run = gr.Button(t("trans.run"), variant="primary", elem_id="trans-btn")
        stop = gr.Button(t("common.stop"), variant="stop", elem_id="trans-stop")
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
