"""The Train tab: pick a base model and data, preview it, fine-tune in the background, watch it live.

Training runs in the JobRunner's thread, never in a Gradio handler: the page only polls
``jobs.status()`` with a gr.Timer. The timer is active from page load and a poll whose status has
not changed since the last one sends nothing (``gr.skip()``), so it costs one status snapshot per
second. This is also how a reloaded or reopened page re-attaches to a run in progress: its first
tick draws whatever the runner is doing, with no hook needed in app.py.
"""
from __future__ import annotations

import gradio as gr

from ..services import exports
from ..services import train_actions as act
from ..services.train_actions import UserError
from . import train_view as view
from .models_tab import enclosing_tab

POLL_S = 1.0
COLOR_MAP = {"train": "#4a90e2", "validation": "#e67e22"}


def build(services) -> dict:
    """Build the tab inside the caller's ``with gr.Tab(...)``; returns the components by name."""
    if services.jobs is None:
        gr.Markdown("Training is not available in this app.", elem_id="train-status")
        return {}
    tab = enclosing_tab()
    c = _layout(services)
    if tab is not None:  # a model imported or trained since shows up in the base list when the tab opens
        tab.select(lambda: gr.update(choices=act.model_choices(services)), None, c["base"],
                   api_visibility="private", queue=False)
    _wire_data(services, c)
    _wire_run(services, c)
    _wire_compare(services, c)
    _wire_api(services)
    return c


# ---- layout -------------------------------------------------------------------------------------
def _layout(services) -> dict:
    c: dict = {}
    choices = act.model_choices(services)
    base = _initial_base(services, choices)
    d = act.defaults_for(services, base)
    with gr.Row():
        with gr.Column(scale=1):
            c["base"] = gr.Dropdown(choices, value=base, label="Base model", elem_id="train-base")
            c["dataset"] = gr.File(label="Training data (.txt .jsonl .csv .tsv)", file_types=list(act.DATA_TYPES),
                                   elem_id="dataset", height=120)
            c["sample"] = gr.Dropdown(list(act.list_samples()), value=None, label="…or a bundled sample",
                                      elem_id="sample-pick")
            _layout_hparams(c, d)
        with gr.Column(scale=2):
            c["preview_md"] = gr.Markdown("_Upload data or pick a sample to see how it will be trained._",
                                          elem_id="data-preview")
            c["preview_hl"] = gr.HighlightedText(label="Examples (highlighted text carries the loss)",
                                                 color_map={"loss": "#fde68a"}, show_legend=True,
                                                 show_inline_category=False,
                                                 combine_adjacent=True, elem_id="data-tokens")
    _layout_progress(c)
    _layout_compare(c)
    c["data_path"] = gr.State(None)  # the resolved file of this session's current choice
    c["sig"] = gr.State(None)  # last drawn status signature
    c["timer"] = gr.Timer(POLL_S, active=True)
    return c


def _initial_base(services, choices: list[str]) -> str | None:
    cur = services.registry.current
    for name in choices:
        if cur is not None and name == cur.name:
            return name
    return choices[0] if choices else None


def _layout_hparams(c: dict, d: dict):
    with gr.Accordion("Hyperparameters", open=True):
        with gr.Row():
            c["length_by"] = gr.Radio(["steps", "epochs"], value="steps", label="Train for", elem_id="train-length-by")
            c["steps"] = gr.Number(d["steps"], label="Steps", precision=0, minimum=1, elem_id="train-steps")
            c["epochs"] = gr.Number(d["epochs"], label="Epochs", minimum=0.01, elem_id="train-epochs")
        with gr.Row():
            c["lr"] = gr.Number(d["lr"], label="Learning rate", elem_id="train-lr")
            c["batch"] = gr.Number(d["batch_size"], label="Batch size", precision=0, minimum=1, elem_id="train-batch")
            c["eval_every"] = gr.Number(d["eval_every"], label="Eval every (steps)", precision=0, minimum=0,
                                        elem_id="train-eval-every")
        c["seq_len"] = gr.Slider(8, d["max_seq_len"], value=d["seq_len"], step=8, label="Sequence length",
                                 elem_id="train-seq-len")
        with gr.Row():
            c["method"] = gr.Radio(["Full", "LoRA"], value=d["method"], label="Fine-tune", elem_id="train-method")
            c["rank"] = gr.Slider(1, 128, value=d["lora_rank"] or 8, step=1, label="LoRA rank",
                                  elem_id="train-lora-rank")
        c["out_name"] = gr.Textbox(label="Name of the new model (optional)", elem_id="train-out-name",
                                   placeholder="default: derived from the run id")


def _layout_progress(c: dict):
    with gr.Row():
        c["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
        c["cancel"] = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
    c["msg"] = gr.Markdown("", elem_id="train-msg")
    c["status"] = gr.Markdown(view.status_markdown(None), elem_id="train-status")
    c["progress"] = gr.HTML(view.progress_html(None), elem_id="train-progress")
    with gr.Row():
        c["plot"] = gr.LinePlot(None, x="step", y="loss", color="series", color_map=COLOR_MAP,
                                title="Loss", x_title="step", y_title="loss", elem_id="loss-plot", height=300,
                                scale=2)
        c["probes"] = gr.Markdown(view.probes_markdown(None), elem_id="train-probes", label="Latest probes")
    c["log"] = gr.Textbox(label="Log (newest first)", lines=8, max_lines=8, interactive=False,
                          elem_id="train-log")


def _layout_compare(c: dict):
    with gr.Accordion("Use the new model", open=True):
        c["use"] = gr.Button("Use in Chat", elem_id="use-in-chat", interactive=False)
        with gr.Row():
            c["export_quant"] = gr.Dropdown(list(exports.quant_choices()), value="f32", label="GGUF weights",
                                            elem_id="run-export-quant", scale=1)
            c["export_btn"] = gr.Button("Export GGUF (for LM Studio, Ollama, llama.cpp)", elem_id="run-export",
                                        scale=2)
            c["export_file"] = gr.File(label="Exported GGUF", interactive=False, elem_id="run-export-file", scale=2)
        c["export_msg"] = gr.Markdown("", elem_id="run-export-msg")
        with gr.Row():
            c["compare_prompt"] = gr.Textbox(label="Prompt for both models", elem_id="compare-prompt", scale=4)
            c["as_chat"] = gr.Checkbox(True, label="Send as a chat message", elem_id="compare-chat", scale=1)
            c["compare_btn"] = gr.Button("Compare", elem_id="compare-btn", scale=1, interactive=False)
        with gr.Row():
            c["base_out"] = gr.Textbox(label="Base model", lines=6, interactive=False, elem_id="compare-base")
            c["tuned_out"] = gr.Textbox(label="Fine-tuned model", lines=6, interactive=False, elem_id="compare-tuned")


# ---- data: choose and preview --------------------------------------------------------------------
def _wire_data(services, c: dict):
    def on_upload(file):
        return (str(file) if file else None), gr.update(value=None)

    def on_sample(name):
        if not name:
            return gr.skip(), gr.skip()
        return name, gr.update(value=None)

    def on_base(name):
        d = act.defaults_for(services, name)
        return (d["steps"], d["lr"], d["batch_size"], gr.update(value=d["seq_len"], maximum=d["max_seq_len"]),
                d["method"], d["lora_rank"] or 8, d["eval_every"])

    def preview(base, data, seq_len, batch):
        if not data:
            return "_Upload data or pick a sample to see how it will be trained._", None, gr.skip(), gr.skip()
        try:
            p = act.preview_data(services, base, data, seq_len, batch)
        except UserError as e:
            return view.data_error_markdown(str(e)), None, gr.skip(), gr.skip()
        fitted = p["batch_size"] if p["batch_size"] != batch else gr.skip()  # lowered to what the data fills
        return view.preview_markdown(p), view.preview_highlight(p), p.get("format") in act.CHAT_FORMATS, fitted

    pv = dict(fn=preview, inputs=[c["base"], c["data_path"], c["seq_len"], c["batch"]],
              outputs=[c["preview_md"], c["preview_hl"], c["as_chat"], c["batch"]], api_visibility="private")
    c["dataset"].upload(on_upload, c["dataset"], [c["data_path"], c["sample"]],
                        api_visibility="private").then(**pv)
    c["dataset"].clear(lambda: None, None, c["data_path"], api_visibility="private").then(**pv)
    c["sample"].input(on_sample, c["sample"], [c["data_path"], c["dataset"]],
                      api_visibility="private").then(**pv)
    c["base"].input(on_base, c["base"], [c["steps"], c["lr"], c["batch"], c["seq_len"], c["method"], c["rank"],
                                         c["eval_every"]], api_visibility="private").then(**pv)
    c["seq_len"].release(**pv)


# ---- run: start, cancel, poll --------------------------------------------------------------------
def _wire_run(services, c: dict):
    def start(base, data, length_by, steps, epochs, lr, batch, seq_len, eval_every, method, rank, out_name):
        by_steps = length_by == "steps"
        try:
            spec = act.make_spec(services, base, data, out_name, steps=int(steps or 0) if by_steps else 0,
                                 epochs=0.0 if by_steps else float(epochs or 0), lr=float(lr or 0),
                                 batch_size=int(batch or 0), seq_len=int(seq_len), eval_every=int(eval_every or 0),
                                 lora_rank=int(rank) if method == "LoRA" else 0)
            return act.start_run(services, spec)
        except UserError as e:
            return f"⚠ {e}"

    inputs = [c[k] for k in ("base", "data_path", "length_by", "steps", "epochs", "lr", "batch", "seq_len",
                             "eval_every", "method", "rank", "out_name")]
    c["start"].click(start, inputs, c["msg"], api_visibility="private")
    c["cancel"].click(lambda: act.cancel_run(services), None, c["msg"], api_visibility="private")
    c["use"].click(lambda: act.use_in_chat(services), None, c["msg"], api_visibility="private")
    outputs = [c[k] for k in ("status", "progress", "plot", "probes", "log", "start", "cancel", "use",
                              "compare_btn", "base", "preview_md", "preview_hl", "sig")]
    c["timer"].tick(lambda sig: _poll(services, sig), c["sig"], outputs, show_progress="hidden",
                    api_visibility="private", concurrency_limit=None, queue=False)


def _poll(services, sig):
    """Redraw only when the run moved on; refresh the model list when a run ends (its model appears).

    A page's first tick (``sig`` None) attaches it: it draws everything, and while a run is active it
    also shows that run's data preview, since this new session has no data of its own chosen yet."""
    status = act.job_status(services)
    new = view.signature(status)
    if sig is not None and tuple(sig) == new:
        return [gr.skip()] * 13
    active, state = view.is_active(status), status.get("state")
    done_now = state in view.DONE_STATES and (sig is None or tuple(sig)[1] != state)
    has_model = not active and act.finished_model(services) is not None
    base = gr.update(choices=act.model_choices(services)) if done_now else gr.skip()
    preview = status.get("preview") if sig is None and active else None
    shown = ((f"**Data of run `{status.get('run_id')}`:** " + view.preview_markdown(preview),
              view.preview_highlight(preview)) if isinstance(preview, dict) else (gr.skip(), gr.skip()))
    return [view.status_markdown(status), view.progress_html(status), view.plot_value(status.get("history")),
            view.probes_markdown(status.get("probes")), view.log_text(status),
            gr.update(interactive=not active), gr.update(interactive=active),
            gr.update(interactive=has_model), gr.update(interactive=has_model),
            base, *shown, list(new)]


# ---- compare ------------------------------------------------------------------------------------
def _wire_compare(services, c: dict):
    def compare(prompt, as_chat):
        try:
            yield from act.compare_stream(services, prompt, as_chat)
        except UserError as e:
            gr.Warning(str(e))
            yield gr.skip(), gr.skip()

    def export(quant):
        result = exports.export_run_model(services, act.finished_model(services), quant)
        return ("" if result.ok else "⚠ ") + result.message, str(result.path) if result.ok else None

    c["export_btn"].click(export, c["export_quant"], [c["export_msg"], c["export_file"]],
                          api_visibility="private")
    c["compare_btn"].click(compare, [c["compare_prompt"], c["as_chat"]], [c["base_out"], c["tuned_out"]],
                           api_visibility="private", concurrency_limit=1, concurrency_id="compare")


# ---- public API (for tests and automation) -------------------------------------------------------
def _wire_api(services):
    def train_start(base_model: str, data: str, steps: int = 50, lr: float = 5e-4, batch_size: int = 8,
                    seq_len: int = 128, lora_rank: int = 0) -> str:
        """Start a fine-tuning run; data is a bundled sample name or a file path (not when shared)."""
        try:
            spec = act.make_spec(services, base_model, data, steps=int(steps), lr=float(lr),
                                 batch_size=int(batch_size), seq_len=int(seq_len), lora_rank=int(lora_rank),
                                 eval_every=max(1, int(steps) // 5))
            return act.start_run(services, spec)
        except UserError as e:
            return f"error: {e}"

    def train_status() -> str:
        """The runner's status as JSON (history summarised)."""
        return view.status_json(act.job_status(services))

    def train_cancel() -> str:
        """Ask the running job to stop after its current step."""
        return act.cancel_run(services)

    gr.api(train_start, api_name="train_start", concurrency_limit=None)
    gr.api(train_status, api_name="train_status", concurrency_limit=None, queue=False)
    gr.api(train_cancel, api_name="train_cancel", concurrency_limit=None)
