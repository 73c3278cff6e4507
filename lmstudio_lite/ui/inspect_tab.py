"""The Inspect tab: a text's tokens, each position's top next tokens with the actual one marked,
"what if" branches, an attention heatmap and the logit lens, on the loaded model.

The analysis is ``tasks/inspect.py``; drawing is ``inspect_view.py``. Model work runs in the
shared ``llm`` slot. The Chat tab's Inspect button lands here through ``wire_from_chat``.
"""
from __future__ import annotations

import gradio as gr

from ..tasks.chat import build_messages
from . import inspect_view as view
from .common import LLM, PRIVATE, current_model, friendly, notice_md, warn

SAMPLES = {
    "English: a story opening": "Once upon a time, there was a little dog named Max. He liked to play in the park.",
    "Chinese: a sentence (中文)": "我喜欢在公园里散步，因为那里很安静。",
    "English: a translation prompt": "Translate English to French: I like cats. => J'aime les chats.",
}
INTRO = ("Type a text, pick a sample, or press **Inspect reply** in the Chat tab. Click a token to see what the "
         "model expected after it; click a candidate to continue the text from it.")


def _analysis():
    """tasks.inspect, imported on first use: it imports torch, which building the page must not wait for."""
    from ..tasks import inspect

    return inspect


class InspectHandlers:
    def __init__(self, services):
        self.services = services

    def run(self, text: str):
        """-> state, notice, summary, tokens, position, position info, candidates, branch, lens, layer, head, map."""
        try:
            model = current_model(self.services)
            result = _analysis().analyze(model, text)
        except Exception as e:
            return (None, notice_md(warn(friendly(e))), "", None, gr.update(value=0, maximum=1), "",
                    gr.update(choices=[], value=None), "", "", gr.skip(), gr.skip(), "")
        index = max(0, len(result.ids) - 2)  # the last prediction the text can check
        cfg = model.config
        return ({"text": text, "analysis": result}, "", view.summary_md(result), view.chips(result),
                gr.update(value=index, maximum=max(1, len(result.ids) - 1)), view.position_md(result, index),
                gr.update(choices=view.candidate_choices(result, index), value=None), "", "",
                gr.update(choices=[(f"layer {i}", i) for i in range(cfg.n_layer)], value=cfg.n_layer - 1),
                gr.update(choices=[view.AVERAGE] + [(f"head {h}", h) for h in range(cfg.n_head)],
                          value=view.AVERAGE), "")

    def pick(self, state, index):
        """A position chosen (slider or a token chip). -> position, info, candidates, branch."""
        if not state:
            return gr.skip(), "", gr.update(choices=[], value=None), ""
        result = state["analysis"]
        index = min(max(0, int(index or 0)), len(result.ids) - 1)
        return (index, view.position_md(result, index),
                gr.update(choices=view.candidate_choices(result, index), value=None), "")

    def pick_chip(self, state, evt: gr.SelectData):
        return self.pick(state, evt.index if isinstance(evt.index, int) else evt.index[0])

    def branch(self, state, index, token_id):
        """A candidate clicked: continue the text from it. -> branch HTML."""
        if not state or token_id in (None, ""):
            return ""
        try:
            prefix, cont = _analysis().branch(current_model(self.services), state["text"], int(index), int(token_id))
        except Exception as e:
            return notice_md(warn(friendly(e)))
        return view.branch_md(prefix, cont)

    def heatmap(self, state, layer, head):
        if not state:
            return notice_md(warn("Inspect a text first."))
        head = None if head in (None, view.AVERAGE) else int(head)
        try:
            weights = _analysis().attention(current_model(self.services), state["text"], int(layer), head)
        except Exception as e:
            return notice_md(warn(friendly(e)))
        who = "average of all heads" if head is None else f"head {head}"
        pieces = [p.text for p in state["analysis"].positions]
        return view.heatmap_html(weights, pieces, f"Attention, layer {int(layer)}, {who}")

    def lens(self, state):
        if not state:
            return notice_md(warn("Inspect a text first."))
        try:
            rows = _analysis().logit_lens(current_model(self.services), state["text"])
        except Exception as e:
            return notice_md(warn(friendly(e)))
        return view.lens_html(state["analysis"], rows)


def build(services) -> dict:
    """Lay out the Inspect tab and wire its events; -> the components ``wire_from_chat`` needs."""
    h = InspectHandlers(services)
    c = {"state": gr.State(None)}
    gr.Markdown(INTRO)
    with gr.Row():
        c["text"] = gr.Textbox(label="Text to inspect", lines=3, max_lines=10, scale=4, elem_id="inspect-text")
        with gr.Column(scale=1, min_width=200):
            c["sample"] = gr.Dropdown(list(SAMPLES), value=None, label="Samples", elem_id="inspect-sample")
            c["go"] = gr.Button("Inspect", variant="primary", elem_id="inspect-btn")
    c["notice"] = gr.Markdown("", elem_id="inspect-notice")
    c["summary"] = gr.Markdown("", elem_id="inspect-summary")
    c["tokens"] = gr.HighlightedText(label="Tokens (id · bytes): click one to see the model's guesses after it",
                                     elem_id="inspect-tokens", show_legend=False, combine_adjacent=False,
                                     show_inline_category=True, interactive=False)
    with gr.Row():
        with gr.Column(scale=2):
            c["position"] = gr.Slider(0, 1, 0, step=1, label="Position", elem_id="inspect-position")
            c["info"] = gr.Markdown("", elem_id="inspect-position-info")
            c["candidates"] = gr.Radio([], label="Top 10 next tokens: click one to continue the text from it",
                                       elem_id="inspect-candidates")
        with gr.Column(scale=3):
            c["branch"] = gr.HTML("", elem_id="inspect-branch")
    with gr.Accordion("Attention", open=True):
        with gr.Row():
            c["layer"] = gr.Dropdown([], label="Layer", elem_id="inspect-layer")
            c["head"] = gr.Dropdown([], label="Head", elem_id="inspect-head")
            c["attn"] = gr.Button("Show attention", elem_id="inspect-attn-btn")
        c["heatmap"] = gr.HTML("", elem_id="inspect-heatmap")
    with gr.Accordion("Logit lens: each layer's top next token", open=True):
        c["lens_btn"] = gr.Button("Show the logit lens", elem_id="inspect-lens-btn")
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
    def to_inspect(conversation):
        conversation = conversation or {}
        messages = build_messages(conversation.get("system"), conversation.get("messages") or [])
        try:
            text = _analysis().chat_text(current_model(services), messages)
        except Exception as e:
            warn(friendly(e))
            return gr.skip(), gr.skip()
        return text, gr.Tabs(selected="inspect")

    button.click(to_inspect, conv, [c["text"], tabs], queue=False, **PRIVATE).then(
        c["run"], c["text"], c["run_out"], **LLM, **PRIVATE)
