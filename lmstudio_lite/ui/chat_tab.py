"""The Chat tab: a sidebar of saved conversations, the chat with streaming replies, and settings.

Layout and event wiring only; what each event does is in ``chat_handlers.py``. Every
generation step runs in the shared ``llm`` concurrency slot. Public API: ``/chat``
(one turn: message, system prompt and sampling settings -> the streamed reply string).
"""
from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from ..services.tasks.chat import DEFAULT_SYSTEM, PRESETS, build_messages, make_settings
from ..services.tasks.text import run_messages
from . import chat_probs, starter_box
from .chat_handlers import ChatHandlers, preset_values
from .common import LLM, PRIVATE, current_model, friendly
from .i18n import t
from .models_tab import enclosing_tab

PRESET_KEYS = {"Balanced": "chat.preset_balanced", "Creative": "chat.preset_creative",
               "Precise": "chat.preset_precise"}  # tasks.chat.PRESETS name -> its label's key
MODEL_POLL_S = 2.0  # how soon the meter and the Max new tokens slider follow a model loaded elsewhere
# After "Show prompt" opens its section: scroll it into view once it has been drawn.
SCROLL_TO_PROMPT = """async () => {
  for (let i = 0; i < 40; i++) {
    const el = document.getElementById('prompt-view');
    if (el && el.offsetHeight > 0) { el.scrollIntoView({block: 'nearest'}); return; }
    await new Promise(r => setTimeout(r, 50));
  }
}"""


def _sidebar(h: ChatHandlers) -> dict:
    c = {}
    c["new"] = gr.Button(t("chat.new"), elem_id="new-chat-btn", size="sm")
    c["list"] = gr.Radio(choices=[], label=t("chat.saved"), elem_id="chat-list")
    with gr.Row():
        c["title"] = gr.Textbox(placeholder=t("chat.new_title"), show_label=False, elem_id="rename-box", scale=3,
                                min_width=80)
        c["rename"] = gr.Button(t("chat.rename"), elem_id="rename-btn", size="sm", scale=1, min_width=60)
    c["delete"] = gr.Button(t("chat.delete"), elem_id="chat-delete-btn", size="sm", variant="stop")
    with gr.Row(visible=False, elem_id="chat-delete-confirm-row") as c["confirm_row"]:
        gr.Markdown(t("chat.delete_ask"))
        c["confirm"] = gr.Button(t("chat.delete_yes"), elem_id="chat-delete-confirm-btn", size="sm", variant="stop")
        c["cancel_del"] = gr.Button(t("chat.cancel"), elem_id="chat-delete-cancel-btn", size="sm")
    with gr.Row():
        c["export"] = gr.Button(t("chat.export"), elem_id="chat-export-btn", size="sm")
        c["import"] = gr.UploadButton(t("chat.import"), file_types=[".json"], elem_id="chat-import-btn", size="sm")
    c["notice"] = gr.Markdown("", elem_id="chat-side-notice")
    c["files"] = gr.File(label=t("chat.exported"), file_count="multiple", interactive=False,
                         visible=False, elem_id="chat-export-files")
    return c


def _settings() -> dict:
    c = {}
    with gr.Accordion(t("chat.settings"), open=False, elem_id="chat-settings"):
        c["system"] = gr.Textbox(DEFAULT_SYSTEM, label=t("chat.system"), lines=2, elem_id="system-prompt")
        c["preset"] = gr.Radio([(t(PRESET_KEYS[name]), name) for name in PRESETS], value="Balanced",
                               label=t("chat.preset"), elem_id="preset")
        p = PRESETS["Balanced"]
        with gr.Row():
            c["temperature"] = gr.Slider(0, 2, p.temperature, step=0.05, label=t("chat.temperature"),
                                         elem_id="temperature")
            c["top_p"] = gr.Slider(0.05, 1, p.top_p, step=0.05, label="Top-p", elem_id="top-p")
            c["top_k"] = gr.Slider(0, 200, p.top_k, step=1, label=t("chat.top_k"), elem_id="top-k")
        with gr.Row():
            c["min_p"] = gr.Slider(0, 0.5, p.min_p, step=0.01, label="Min-p", elem_id="min-p")
            c["rep"] = gr.Slider(1, 2, p.repetition_penalty, step=0.05, label=t("chat.rep"),
                                 elem_id="rep-penalty")
            c["max_new"] = gr.Slider(1, 4096, p.max_new_tokens, step=1, label=t("chat.max_new"),
                                     elem_id="max-new-tokens")
        with gr.Row():
            c["seed"] = gr.Number(-1, precision=0, label=t("chat.seed"), elem_id="seed")
            c["stops"] = gr.Textbox(label=t("chat.stops"), lines=2,
                                   elem_id="stop-strings")
    return c


def _chat_area() -> dict:
    c = {}
    c["chatbot"] = gr.Chatbot(elem_id="chatbot", height=440, editable="user", show_label=False,
                              buttons=["copy", "copy_all"],
                              placeholder=t("chat.placeholder"))
    c["probs"] = chat_probs.build_view()
    c["meter"] = gr.HTML("", elem_id="context-meter")
    with gr.Row():
        c["input"] = gr.Textbox(placeholder=t("chat.input"), lines=1,
                                max_lines=8, show_label=False, elem_id="chat-input", scale=6, autofocus=True)
        c["send"] = gr.Button(t("chat.send"), variant="primary", elem_id="send-btn", scale=1, min_width=70)
        c["stop"] = gr.Button(t("chat.stop"), variant="stop", elem_id="stop-btn", scale=1, min_width=70)
    with gr.Row():
        c["regen"] = gr.Button(t("chat.regen"), elem_id="regen-btn", size="sm")
        c["continue"] = gr.Button(t("chat.continue"), elem_id="continue-btn", size="sm")
        c["clear"] = gr.Button(t("chat.clear"), elem_id="clear-btn", size="sm")
        c["show"] = gr.Button(t("chat.show_prompt"), elem_id="show-prompt-btn", size="sm")
        c["inspect"] = gr.Button(t("chat.inspect"), elem_id="chat-inspect-btn", size="sm")
    c["probs_toggle"] = chat_probs.build_toggle()
    c["stats"] = gr.Markdown("", elem_id="chat-stats")
    c["notice"] = gr.Markdown("", elem_id="chat-notice")
    return c


def build(services, demo: gr.Blocks) -> dict:
    """Lay out the Chat tab and wire its events (call inside a ``gr.Tab`` of ``demo``);
    -> the Inspect button and the conversation state, for the Inspect tab to wire."""
    h = ChatHandlers(services)
    tab = enclosing_tab()
    conv, job, owned = gr.State(None), gr.State(None), gr.State([])
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            side = _sidebar(h)
        with gr.Column(scale=4):
            starter_box.build(services)
            c = _chat_area()
            # Right under the buttons, so "Show prompt" opens it where the user is looking.
            with gr.Accordion(t("chat.prompt_sent"), open=False, elem_id="prompt-accordion") as c["prompt_box"]:
                c["prompt"] = gr.Textbox(lines=12, max_lines=30, interactive=False, show_label=False,
                                         elem_id="prompt-view", buttons=["copy"])
            c |= _settings()
    runs = _wire_generation(h, c, conv, job, owned, side)
    chat_probs.wire(services, c["probs_toggle"], c["probs"], conv, runs, side["list"])
    _wire_conversations(h, c, conv, owned, side)
    _register_api(services)
    meter_in = [c["input"], conv, c["system"], c["max_new"]]
    seen = gr.State(None)  # the model this page last fitted the slider and drew the meter for
    demo.load(h.refresh_list, [owned, conv], side["list"], queue=False, **PRIVATE).then(
        h.max_new_limit, c["max_new"], c["max_new"], queue=False, **PRIVATE).then(
        h.meter, meter_in, c["meter"], queue=False, **PRIVATE).then(
        h.model_seen, None, seen, queue=False, **PRIVATE)
    if tab is not None:  # the model may have changed in the Models tab since: fit the slider, redraw the meter
        tab.select(h.max_new_limit, c["max_new"], c["max_new"], queue=False, **PRIVATE).then(
            h.meter, meter_in, c["meter"], queue=False, show_progress="hidden", **PRIVATE)
    # ... or elsewhere (the starter button, another window, /v1, the start-up load finishing): a cheap
    # poll notices and does the same.
    gr.Timer(MODEL_POLL_S).tick(h.model_changed, [seen, *meter_in], [seen, c["max_new"], c["meter"]], queue=False,
                                show_progress="hidden", **PRIVATE)
    return {"inspect": c["inspect"], "conv": conv}


def _wire_generation(h, c, conv, job, owned, side):
    sampling = [c["temperature"], c["top_p"], c["top_k"], c["min_p"], c["rep"], c["max_new"], c["seed"], c["stops"]]
    gen_out = [conv, c["chatbot"], c["stats"], c["notice"]]
    meter_in = [c["input"], conv, c["system"], c["max_new"]]

    def after(step):  # the reply (returned: Stop cancels it), then the meter and the list
        run = step.then(h.run, [job, conv, c["system"], *sampling], gen_out, **LLM, **PRIVATE)
        run.then(h.meter, meter_in, c["meter"], queue=False, show_progress="hidden", **PRIVATE).then(
            h.refresh_list, [owned, conv], side["list"], queue=False, show_progress="hidden", **PRIVATE)
        return run

    submit_out = [c["input"], conv, c["chatbot"], c["notice"], job, owned]
    runs = [after(c["input"].submit(h.submit, [c["input"], conv, c["system"], owned], submit_out, queue=False,
                                    **PRIVATE)),
            after(c["send"].click(h.submit, [c["input"], conv, c["system"], owned], submit_out, queue=False,
                                  **PRIVATE)),
            after(c["regen"].click(h.regenerate, [conv], [conv, c["chatbot"], c["notice"], job], queue=False,
                                   **PRIVATE)),
            after(c["continue"].click(h.cont, [conv], [conv, c["chatbot"], c["notice"], job], queue=False,
                                      **PRIVATE)),
            after(c["chatbot"].edit(h.edit, [conv], [conv, c["chatbot"], c["notice"], job], queue=False,
                                    **PRIVATE))]
    c["stop"].click(h.stop, [job], None, cancels=runs, concurrency_limit=None, **PRIVATE).then(
        h.stopped, [job, conv], [c["chatbot"], c["stats"]], queue=False, **PRIVATE)
    for trigger in (c["input"].change, c["system"].change, c["max_new"].release):
        trigger(h.meter, meter_in, c["meter"], queue=False, show_progress="hidden", trigger_mode="always_last",
                **PRIVATE)
    c["show"].click(h.show_prompt, meter_in, c["prompt"], queue=False, **PRIVATE).then(
        lambda: gr.update(open=True), None, c["prompt_box"], queue=False, **PRIVATE).then(
        None, js=SCROLL_TO_PROMPT, **PRIVATE)
    c["preset"].input(preset_values, c["preset"], [c["temperature"], c["top_p"], c["top_k"], c["min_p"],
                                                   c["rep"], c["seed"]], queue=False, **PRIVATE)
    return runs


def _wire_conversations(h, c, conv, owned, side):
    cleared = [conv, c["chatbot"], c["stats"], c["notice"], side["list"], side["notice"]]
    for trigger in (side["new"].click, c["clear"].click, c["chatbot"].clear):  # the Chatbot's own trash icon too
        trigger(h.new_chat, [c["system"], owned], cleared, queue=False, **PRIVATE).then(
            h.meter, [c["input"], conv, c["system"], c["max_new"]], c["meter"], queue=False, **PRIVATE)
    side["list"].input(h.select, [side["list"], conv, owned], [conv, c["chatbot"], c["system"], c["notice"],
                                                                c["stats"]], queue=False, **PRIVATE)
    side["rename"].click(h.rename, [side["title"], conv, owned], [side["title"], side["notice"], side["list"]],
                         queue=False, **PRIVATE)
    side["delete"].click(h.ask_delete, conv, [side["confirm_row"], side["notice"]], queue=False, **PRIVATE)
    side["cancel_del"].click(lambda: gr.update(visible=False), None, side["confirm_row"], queue=False, **PRIVATE)
    side["confirm"].click(h.delete, [conv, owned], [conv, c["chatbot"], side["notice"], side["list"],
                                                    side["confirm_row"]], queue=False, **PRIVATE)
    side["export"].click(h.export, [conv], [side["files"], side["notice"]], queue=False, **PRIVATE)
    side["import"].upload(h.import_file, [side["import"], owned],
                          [conv, c["chatbot"], c["system"], side["notice"], side["list"], owned], queue=False,
                          **PRIVATE)


def _register_api(services) -> None:
    def chat(message: str, system: str = DEFAULT_SYSTEM, temperature: float = 0.7, top_p: float = 0.9,
             top_k: int = 40, min_p: float = 0.05, repetition_penalty: float = 1.1, max_new_tokens: int = 256,
             seed: int = -1, stop: str = "") -> Iterator[str]:
        """One chat turn: the reply to ``message`` under ``system``, streamed as the growing string."""
        if not (message or "").strip():
            raise gr.Error("The message is empty: nothing was sent.")
        try:
            model = current_model(services)
            settings = make_settings(temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens, seed,
                                     stop)
            messages = build_messages(system, [{"role": "user", "content": message}])
            out = ""
            for delta in run_messages(model, messages, settings):
                out += delta
                yield out
        except gr.Error:
            raise
        except Exception as e:
            raise gr.Error(friendly(e)) from None

    gr.api(chat, api_name="chat", **LLM)
