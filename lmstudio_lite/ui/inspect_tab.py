"""The Inspect tab: a text's tokens, each position's top next tokens with the actual one marked,
"what if" branches, an attention heatmap and the logit lens, on the loaded model.

The analysis is ``tasks/inspect.py``; drawing is ``inspect_view.py``. Model work runs in the
shared ``llm`` slot. The Chat tab's Inspect button lands here through ``wire_from_chat``.
"""
from __future__ import annotations

import gradio as gr

from ..services.tasks.chat import build_messages
from . import inspect_view as view
from .common import LLM, PRIVATE, current_model, friendly, notice_md, warn
from .i18n import lang_of, t, tr

SAMPLES = {  # the label's key -> the text
    "inspect.sample_story": "Once upon a time, there was a little dog named Max. He liked to play in the park.",
    "inspect.sample_chinese": "我喜欢在公园里散步，因为那里很安静。",
    "inspect.sample_translate": "Translate English to French: I like cats. => J'aime les chats.",
}


def _analysis():
    """tasks.inspect, imported on first use: it imports torch, which building the page must not wait for."""
    from ..services.tasks import inspect

    return inspect


class InspectHandlers:
    def __init__(self, services):
        self.services = services

    def run(self, text: str, request: gr.Request = None):
        """-> state, notice, summary, tokens, position, position info, candidates, branch, lens, layer, head, map."""
        try:
            model = current_model(self.services, lang_of(request))
            result = _analysis().analyze(model, text)
        except Exception as e:
            return (None, notice_md(warn(friendly(e, lang_of(request)))), "", None, gr.update(value=0, maximum=1), "",
                    gr.update(choices=[], value=None), "", "", gr.skip(), gr.skip(), "")
        index = max(0, len(result.ids) - 2)  # the last prediction the text can check
        cfg, lang = model.config, lang_of(request)
        return ({"text": text, "analysis": result}, "", view.summary_md(result, lang), view.chips(result),
                gr.update(value=index, maximum=max(1, len(result.ids) - 1)), view.position_md(result, index, lang),
                gr.update(choices=view.candidate_choices(result, index, lang), value=None), "", "",
                gr.update(choices=[(tr(lang, "inspect.layer_n", n=i), i) for i in range(cfg.n_layer)],
                          value=cfg.n_layer - 1),
                gr.update(choices=[(tr(lang, "inspect.average"), view.AVERAGE)]
                          + [(tr(lang, "inspect.head_n", n=h), h) for h in range(cfg.n_head)],
                          value=view.AVERAGE), "")

    def pick(self, state, index, request: gr.Request = None):
        """A position chosen (slider or a token chip). -> position, info, candidates, branch."""
        if not state:
            return gr.skip(), "", gr.update(choices=[], value=None), ""
        result = state["analysis"]
        index = min(max(0, int(index or 0)), len(result.ids) - 1)
        lang = lang_of(request)
        return (index, view.position_md(result, index, lang),
                gr.update(choices=view.candidate_choices(result, index, lang), value=None), "")

    def pick_chip(self, state, evt: gr.SelectData, request: gr.Request = None):
        return self.pick(state, evt.index if isinstance(evt.index, int) else evt.index[0], request)

    def branch(self, state, index, token_id, request: gr.Request = None):
        """A candidate clicked: continue the text from it. -> branch HTML."""
        if not state or token_id in (None, ""):
            return ""
        try:
            prefix, cont = _analysis().branch(current_model(self.services, lang_of(request)), state["text"],
                                              int(index), int(token_id))
        except Exception as e:
            return notice_md(warn(friendly(e, lang_of(request))))
        return view.branch_md(prefix, cont, lang_of(request))

    def heatmap(self, state, layer, head, request: gr.Request = None):
        if not state:
            return notice_md(warn(tr(lang_of(request), "inspect.first")))
        head = None if head in (None, view.AVERAGE) else int(head)
        try:
            weights = _analysis().attention(current_model(self.services, lang_of(request)), state["text"],
                                            int(layer), head)
        except Exception as e:
            return notice_md(warn(friendly(e, lang_of(request))))
        lang = lang_of(request)
        who = tr(lang, "inspect.average") if head is None else tr(lang, "inspect.head_n", n=head)
        pieces = [p.text for p in state["analysis"].positions]
        return view.heatmap_html(weights, pieces, tr(lang, "inspect.heatmap_title", layer=int(layer), who=who), lang)

    def lens(self, state, request: gr.Request = None):
        if not state:
            return notice_md(warn(tr(lang_of(request), "inspect.first")))
        try:
            rows = _analysis().logit_lens(current_model(self.services, lang_of(request)), state["text"])
        except Exception as e:
            return notice_md(warn(friendly(e, lang_of(request))))
        return view.lens_html(state["analysis"], rows, lang_of(request))


def build(services) -> dict:
    """Lay out the Inspect tab and wire its events; -> the components ``wire_from_chat`` needs."""
    h = InspectHandlers(services)
    c = {"state": gr.State(None)}
    gr.Markdown(t("inspect.intro"))
    with gr.Row():
        c["text"] = gr.Textbox(label=t("inspect.text"), lines=3, max_lines=10, scale=4, elem_id="inspect-text")
        with gr.Column(scale=1, min_width=200):
            c["sample"] = gr.Dropdown([(t(key), key) for key in SAMPLES], value=None, label=t("inspect.samples"),
                                      elem_id="inspect-sample")
            c["go"] = gr.Button(t("inspect.go"), variant="primary", elem_id="inspect-btn")
    c["notice"] = gr.Markdown("", elem_id="inspect-notice")
    c["summary"] = gr.Markdown("", elem_id="inspect-summary")
    c["tokens"] = gr.HighlightedText(label=t("inspect.tokens"),
                                     elem_id="inspect-tokens", show_legend=False, combine_adjacent=False,
                                     show_inline_category=True, interactive=False)
    with gr.Row():
        with gr.Column(scale=2):
            c["position"] = gr.Slider(0, 1, 0, step=1, label=t("inspect.position"), elem_id="inspect-position")
            c["info"] = gr.Markdown("", elem_id="inspect-position-info")
            c["candidates"] = gr.Radio([], label=t("inspect.candidates"),
                                       elem_id="inspect-candidates")
        with gr.Column(scale=3):
            c["branch"] = gr.HTML("", elem_id="inspect-branch")
    with gr.Accordion(t("inspect.attention"), open=True):
        with gr.Row():
            c["layer"] = gr.Dropdown([], label=t("inspect.layer"), elem_id="inspect-layer")
            c["head"] = gr.Dropdown([], label=t("inspect.head"), elem_id="inspect-head")
            c["attn"] = gr.Button(t("inspect.show_attention"), elem_id="inspect-attn-btn")
        c["heatmap"] = gr.HTML("", elem_id="inspect-heatmap")
    with gr.Accordion(t("inspect.lens"), open=True):
        c["lens_btn"] = gr.Button(t("inspect.show_lens"), elem_id="inspect-lens-btn")
        c["lens"] = gr.HTML("", elem_id="inspect-lens")
    _wire(h, c)
    return c


def _wire(h: InspectHandlers, c: dict) -> None:
    c["run_out"] = [c["state"], c["notice"], c["summary"], c["tokens"], c["position"], c["info"], c["candidates"],
                    c["branch"], c["lens"], c["layer"], c["head"], c["heatmap"]]
    c["run"] = h.run
    c["sample"].input(lambda name: SAMPLES.get(name, gr.skip()), c["sample"], c["text"], queue=False, **PRIVATE)
    for trigger in (c["go"].click, c["text"].submit):
        trigger(h.run, c["text"], c["run_out"], **LLM, **PRIVATE)
    picked = [c["position"], c["info"], c["candidates"], c["branch"]]
    c["tokens"].select(h.pick_chip, c["state"], picked, queue=False, **PRIVATE)
    c["position"].release(h.pick, [c["state"], c["position"]], picked, queue=False, **PRIVATE)
    c["candidates"].input(h.branch, [c["state"], c["position"], c["candidates"]], c["branch"], **LLM, **PRIVATE)
    c["attn"].click(h.heatmap, [c["state"], c["layer"], c["head"]], c["heatmap"], **LLM, **PRIVATE)
    c["lens_btn"].click(h.lens, c["state"], c["lens"], **LLM, **PRIVATE)


def wire_from_chat(services, button: gr.Button, conv: gr.State, tabs: gr.Tabs, c: dict) -> None:
    """The Chat tab's Inspect button: the conversation (as the model reads it) goes into the
    text box, the Inspect tab opens and analyzes it."""
    def to_inspect(conversation, request: gr.Request = None):
        conversation = conversation or {}
        messages = build_messages(conversation.get("system"), conversation.get("messages") or [])
        try:
            text = _analysis().chat_text(current_model(services, lang_of(request)), messages)
        except Exception as e:
            warn(friendly(e, lang_of(request)))
            return gr.skip(), gr.skip()
        return text, gr.Tabs(selected="inspect")

    button.click(to_inspect, conv, [c["text"], tabs], queue=False, **PRIVATE).then(
        c["run"], c["text"], c["run_out"], **LLM, **PRIVATE)
