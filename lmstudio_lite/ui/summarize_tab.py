"""The Summarize tab: paste or upload text, pick a style, get a streamed summary.

Text longer than the model's context is summarized in parts and combined (map-reduce,
see ``tasks/summarize.py``) with a progress bar. Public API: ``/summarize``
(text, style, max_new_tokens, temperature -> the streamed summary string).
"""
from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from ..services.tasks.chat import Settings
from ..services.tasks.summarize import STYLES, budgets, summarize
from ..services.tasks.text import token_counter
from .common import LLM, PRIVATE, Throttle, current_model, friendly, notice_md, read_text_file, warn
from .i18n import lang_of, say, t, tr

DEFAULT_STYLE = "Short paragraph"
STYLE_KEYS = {"One sentence": "sum.style_sentence", "Short paragraph": "sum.style_paragraph",
              "Bullet points": "sum.style_bullets"}  # the names stay the values: the API takes them


def task_settings(max_new_tokens, temperature) -> Settings:
    """Near-greedy settings: summaries should stick to the text (a mild penalty stops loops)."""
    t = float(temperature)
    return Settings(temperature=t, top_p=1.0 if t == 0 else 0.9, top_k=0, min_p=0.0, repetition_penalty=1.1,
                    max_new_tokens=int(max_new_tokens), seed=0 if t == 0 else None)


class SummarizeHandlers:
    def __init__(self, services):
        self.services = services

    def upload(self, path, request: gr.Request = None):
        """-> text box, notice: the file's text, or a clear reason it cannot be used."""
        if not path:
            return gr.skip(), ""
        lang = lang_of(request)
        try:
            return read_text_file(path, self.services.max_upload_bytes, lang), ""
        except (ValueError, OSError) as e:
            return gr.skip(), notice_md(warn(friendly(e, lang)))

    def run(self, text, style, max_new, temperature, progress=gr.Progress(), request: gr.Request = None):
        """Stream the summary. Yields output, info, notice."""
        lang = lang_of(request)
        if not (text or "").strip():
            yield "", "", notice_md(warn(tr(lang, "sum.empty")))
            return
        try:
            model = current_model(self.services, lang)
            n_tokens = token_counter(model.tokenizer)(text)
            reply = budgets(model, int(max_new), style)[1]  # what the context leaves, at most what was asked
            info = tr(lang, "sum.info", tokens=f"{n_tokens:,}", context=f"{model.context_length:,}",
                      reply=f"{reply:,}")
            throttle, parts = Throttle(), 0
            for step in summarize(model, text, style, task_settings(max_new, temperature)):
                progress((step.done, step.total), desc=say(lang, step.desc))
                if step.total > 2 and not parts:  # the first round tells how the text was cut
                    parts = step.total - 1
                    info = tr(lang, "sum.info_parts", tokens=f"{n_tokens:,}", parts=parts, reply=f"{reply:,}")
                if step.final or throttle.ready():
                    yield step.text, info, ""
        except Exception as e:
            yield gr.skip(), gr.skip(), notice_md(warn(friendly(e, lang)))


def build(services) -> None:
    """Lay out the Summarize tab (call inside a ``gr.Tab``)."""
    h = SummarizeHandlers(services)
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(label=t("sum.text"), lines=14, max_lines=30, elem_id="sum-input",
                              placeholder=t("sum.text_placeholder"))
            upload = gr.File(label=t("sum.upload"), file_types=[".txt", ".md"], elem_id="sum-file")
            style = gr.Radio([(t(STYLE_KEYS[s]), s) for s in STYLES], value=DEFAULT_STYLE, label=t("sum.style"),
                             elem_id="sum-style")
            with gr.Accordion(t("common.settings"), open=False):
                max_new = gr.Slider(16, 1024, 200, step=1, label=t("sum.max_new"),
                                    elem_id="sum-max-new")
                temperature = gr.Slider(0, 1.5, 0.0, step=0.05, label=t("common.temperature"),
                                        elem_id="sum-temperature")
            with gr.Row():
                run = gr.Button(t("sum.run"), variant="primary", elem_id="sum-btn")
                stop = gr.Button(t("common.stop"), variant="stop", elem_id="sum-stop")
        with gr.Column():
            output = gr.Textbox(label=t("sum.output"), lines=14, max_lines=30, interactive=False, elem_id="sum-output",
                                buttons=["copy"])
            info = gr.Markdown("", elem_id="sum-info")
            notice = gr.Markdown("", elem_id="sum-notice")
    upload.upload(h.upload, upload, [text, notice], queue=False, **PRIVATE)
    events = [trigger(h.run, [text, style, max_new, temperature], [output, info, notice], show_progress_on=[output],
                      **LLM, **PRIVATE)
              for trigger in (run.click, text.submit)]
    stop.click(None, None, None, cancels=events, **PRIVATE)
    _register_api(services)


def _register_api(services) -> None:
    def summarize_api(text: str, style: str = DEFAULT_STYLE, max_new_tokens: int = 200,
                      temperature: float = 0.0) -> Iterator[str]:
        """Summarize ``text`` (any length) in ``style``: the summary, streamed as the growing string."""
        if not (text or "").strip():
            raise gr.Error("There is no text to summarize.")
        if style not in STYLES:
            raise gr.Error(f"Unknown style {style!r}; use one of: {', '.join(STYLES)}")
        try:
            model = current_model(services)
            for step in summarize(model, text, style, task_settings(max_new_tokens, temperature)):
                yield step.text
        except Exception as e:
            raise gr.Error(friendly(e)) from None

    gr.api(summarize_api, api_name="summarize", **LLM)
