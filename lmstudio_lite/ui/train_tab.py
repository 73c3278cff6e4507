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
from .i18n import lang_of, say, t, tr
from .models_tab import enclosing_tab

POLL_S = 1.0
COLOR_MAP = {"train": "#4a90e2", "validation": "#e67e22"}


def build(services) -> dict:
    """Build the tab inside the caller's ``with gr.Tab(...)``; returns the components by name."""
    if services.jobs is None:
        gr.Markdown(t("train.unavailable"), elem_id="train-status")
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
# Form keys (train_view.FORM_KEYS) -> component names in the dict build() returns.
FORM = {"base": "base", "data": "data_path", "length_by": "length_by", "steps": "steps", "epochs": "epochs",
        "lr": "lr", "batch_size": "batch", "seq_len": "seq_len", "method": "method", "lora_rank": "rank",
        "out_name": "out_name", "warmup_steps": "warmup", "scheduler": "scheduler", "grad_accum": "grad_accum",
        "eval_every": "eval_every", "seed": "seed", "keep_best": "keep_best", "early_stop_patience": "patience"}
RUN_PANEL = ("run_info", "run_plot", "resume", "use", "compare_btn", "export_btn")


def _layout(services) -> dict:
    c: dict = {}
    choices = act.model_choices(services)
    base = act.initial_base(services, choices)
    d = act.defaults_for(services, base)
    with gr.Row():
        with gr.Column(scale=1):
            c["base"] = gr.Dropdown(choices, value=base, label=t("train.base"), elem_id="train-base")
            c["dataset"] = gr.File(label=t("train.data"), file_types=list(act.DATA_TYPES),
                                   elem_id="dataset", height=110)
            c["sample"] = gr.Dropdown(list(act.list_samples()), value=None, label=t("train.sample"),
                                      elem_id="sample-pick")
            _layout_hparams(c, d)
            _layout_advanced(c, d)
        with gr.Column(scale=2):
            with gr.Row():  # at the top, so Start is in view without scrolling
                c["start"] = gr.Button(t("train.start"), variant="primary", elem_id="train-start")
                c["cancel"] = gr.Button(t("train.cancel"), variant="stop", elem_id="train-cancel")
            c["msg"] = gr.Markdown("", elem_id="train-msg")
            c["status"] = gr.Markdown(t("train.status_idle"), elem_id="train-status")
            c["progress"] = gr.HTML(view.progress_html(None), elem_id="train-progress")
            c["preview_md"] = gr.Markdown(t("train.preview_hint"),
                                          elem_id="data-preview")
            # no legend: the label says what the highlight means (a legend would name it "loss", in English)
            c["preview_hl"] = gr.HighlightedText(label=t("train.examples"),
                                                 color_map={"loss": "#fde68a"}, show_legend=False,
                                                 show_inline_category=False,
                                                 combine_adjacent=True, elem_id="data-tokens")
    _layout_progress(c)
    _layout_runs(c)
    _layout_compare(c)
    c["data_path"] = gr.State(None)  # the resolved file of this session's current choice
    c["sig"] = gr.State(None)  # last drawn status signature
    c["timer"] = gr.Timer(POLL_S, active=True)
    return c


def _layout_hparams(c: dict, d: dict):
    """The settings every run needs; a field shows only when it applies (steps or epochs, LoRA rank)."""
    with gr.Row():
        c["length_by"] = gr.Radio([(t("train.by_steps"), "steps"), (t("train.by_epochs"), "epochs")], value="steps",
                                  label=t("train.length_by"), elem_id="train-length-by")
        c["steps"] = gr.Number(d["steps"], label=t("train.steps"), precision=0, minimum=1, elem_id="train-steps")
        c["epochs"] = gr.Number(d["epochs"], label=t("train.epochs"), minimum=0.01, elem_id="train-epochs",
                                visible=False)
    with gr.Row():
        c["lr"] = gr.Number(d["lr"], label=t("train.lr"), elem_id="train-lr")
        c["batch"] = gr.Number(d["batch_size"], label=t("train.batch"), precision=0, minimum=1, elem_id="train-batch")
    c["seq_len"] = gr.Slider(8, d["max_seq_len"], value=d["seq_len"], step=8, label=t("train.seq_len"),
                             elem_id="train-seq-len")
    with gr.Row():
        c["method"] = gr.Radio([(t("train.full"), "Full"), (t("train.lora"), "LoRA")], value=d["method"],
                               label=t("train.method"), elem_id="train-method")
        c["rank"] = gr.Slider(1, 128, value=d["lora_rank"] or 8, step=1, label=t("train.rank"),
                              elem_id="train-lora-rank", visible=d["method"] == "LoRA")
    c["out_name"] = gr.Textbox(label=t("train.out_name"), elem_id="train-out-name",
                               placeholder=t("train.out_name_hint"))


def _layout_advanced(c: dict, d: dict):
    a = act.advanced_defaults()
    with gr.Accordion(t("train.advanced"), open=False, elem_id="train-advanced"):
        with gr.Row():
            c["warmup"] = gr.Number(a["warmup_steps"], label=t("train.warmup"), precision=0,
                                    minimum=-1, elem_id="train-warmup")
            c["scheduler"] = gr.Dropdown(list(a["schedulers"]), value=a["scheduler"], label=t("train.scheduler"),
                                         elem_id="train-scheduler")
        with gr.Row():
            c["grad_accum"] = gr.Number(a["grad_accum"], label=t("train.grad_accum"), precision=0, minimum=1,
                                        elem_id="train-grad-accum")
            c["eval_every"] = gr.Number(d["eval_every"], label=t("train.eval_every"), precision=0, minimum=0,
                                        elem_id="train-eval-every")
            c["seed"] = gr.Number(a["seed"], label=t("train.seed"), precision=0, minimum=0, elem_id="train-seed")
        with gr.Row():
            c["keep_best"] = gr.Checkbox(a["keep_best"], label=t("train.keep_best"),
                                         elem_id="train-keep-best")
            c["patience"] = gr.Number(a["early_stop_patience"], precision=0, minimum=0, elem_id="train-patience",
                                      label=t("train.patience"))


def _layout_progress(c: dict):
    with gr.Row():
        c["plot"] = gr.LinePlot(None, x="step", y="loss", color="series", color_map=COLOR_MAP,
                                **plot_titles("train.plot_live"), elem_id="loss-plot", height=300, scale=2)
        c["probes"] = gr.Markdown(t("train.probes_hint"), elem_id="train-probes", label=t("train.probes"))
    c["log"] = gr.Textbox(label=t("train.log"), lines=8, max_lines=8, interactive=False,
                          elem_id="train-log")


def _layout_runs(c: dict):
    with gr.Accordion(t("train.runs"), open=True, elem_id="train-runs-section"):
        with gr.Row():
            # allow_custom_value: a run id the list does not hold yet must not fail the poll that reads it
            c["runs"] = gr.Dropdown([], value=None, label=t("train.run"), elem_id="train-runs", scale=4,
                                    allow_custom_value=True)
            c["resume"] = gr.Button(t("train.resume"), elem_id="train-resume", interactive=False, scale=1)
            c["use"] = gr.Button(t("train.use"), elem_id="use-in-chat", interactive=False, scale=1)
        c["run_msg"] = gr.Markdown("", elem_id="train-run-msg")
        with gr.Row():
            c["run_info"] = gr.Markdown(t("train.no_runs"), elem_id="train-run-info")
            c["run_plot"] = gr.LinePlot(None, x="step", y="loss", color="series", color_map=COLOR_MAP,
                                        **plot_titles("train.plot_run"), elem_id="train-run-plot", height=220)


def _layout_compare(c: dict):
    with gr.Accordion(t("train.compare_export"), open=True):
        with gr.Row():
            c["export_quant"] = gr.Dropdown(list(exports.quant_choices()), value="f32", label=t("models.gguf_weights"),
                                            elem_id="run-export-quant", scale=1)
            c["export_btn"] = gr.Button(t("train.export"), elem_id="run-export",
                                        scale=2, interactive=False)
            c["export_file"] = gr.File(label=t("train.exported"), interactive=False, elem_id="run-export-file", scale=2)
        c["export_msg"] = gr.Markdown("", elem_id="run-export-msg")
        with gr.Row():
            c["compare_prompt"] = gr.Textbox(label=t("train.compare_prompt"), elem_id="compare-prompt", scale=4)
            c["as_chat"] = gr.Checkbox(True, label=t("train.as_chat"), elem_id="compare-chat", scale=1)
            c["compare_btn"] = gr.Button(t("train.compare"), elem_id="compare-btn", scale=1, interactive=False)
        with gr.Row():
            c["base_out"] = gr.Textbox(label=t("train.base"), lines=6, interactive=False, elem_id="compare-base")
            c["tuned_out"] = gr.Textbox(label=t("train.tuned"), lines=6, interactive=False, elem_id="compare-tuned")


def plot_titles(key: str, lang: str | None = None) -> dict:
    """A loss plot's title and axis names in ``lang``: the plot draws them as they come (no gr.I18n
    there), so the server words them, like the rest of what the timer redraws."""
    return {"title": tr(lang, key), "x_title": tr(lang, "train.plot_step"), "y_title": tr(lang, "train.plot_loss"),
            "color_title": tr(lang, "train.plot_series")}


def plot_update(history, key: str, lang: str | None) -> dict:
    return gr.update(value=view.plot_value(history), **plot_titles(key, lang))


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
                d["method"], gr.update(value=d["lora_rank"] or 8, visible=d["method"] == "LoRA"), d["eval_every"])

    def preview(base, data, seq_len, batch, request: gr.Request = None):
        lang = lang_of(request)
        if not data:
            return tr(lang, "train.preview_hint"), None, gr.skip(), gr.skip()
        try:
            p = act.preview_data(services, base, data, seq_len, batch)
        except UserError as e:
            return view.data_error_markdown(say(lang, e), lang), None, gr.skip(), gr.skip()
        fitted = p["batch_size"] if p["batch_size"] != batch else gr.skip()  # lowered to what the data fills
        return (view.preview_markdown(p, lang), view.preview_highlight(p, lang=lang),
                p.get("format") in act.CHAT_FORMATS, fitted)

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
    c["length_by"].change(lambda by: (gr.update(visible=by == "steps"), gr.update(visible=by == "epochs")),
                          c["length_by"], [c["steps"], c["epochs"]], api_visibility="private", queue=False)
    c["method"].change(lambda m: gr.update(visible=m == "LoRA"), c["method"], c["rank"],
                       api_visibility="private", queue=False)


# ---- run: start, cancel, resume, poll -------------------------------------------------------------
def _wire_run(services, c: dict):
    def start(request: gr.Request, *values):  # first: Gradio fills only the parameters before *values
        return say(lang_of(request), start_message(*values))

    def start_message(*values) -> str:
        f = dict(zip(FORM, values))
        by_steps = f["length_by"] == "steps"
        try:
            spec = act.make_spec(services, f["base"], f["data"], f["out_name"],
                                 steps=int(f["steps"] or 0) if by_steps else 0,
                                 epochs=0.0 if by_steps else float(f["epochs"] or 0), lr=float(f["lr"] or 0),
                                 batch_size=int(f["batch_size"] or 0), seq_len=int(f["seq_len"]),
                                 eval_every=int(f["eval_every"] or 0),
                                 lora_rank=int(f["lora_rank"]) if f["method"] == "LoRA" else 0,
                                 warmup_steps=int(f["warmup_steps"] if f["warmup_steps"] is not None else -1),
                                 scheduler=f["scheduler"], grad_accum=int(f["grad_accum"] or 1),
                                 seed=int(f["seed"] or 0), keep_best=bool(f["keep_best"]),
                                 early_stop_patience=int(f["early_stop_patience"] or 0))
            return act.start_run(services, spec)
        except UserError as e:
            return act.warned(act.message_of(e))

    def resume(run_id, request: gr.Request = None):
        try:
            said = act.resume_run(services, run_id)
        except UserError as e:
            said = act.warned(act.message_of(e))
        return say(lang_of(request), said)

    def cancel(request: gr.Request = None):
        return say(lang_of(request), act.cancel_run(services))

    def use(run_id, request: gr.Request = None):
        return say(lang_of(request), act.use_in_chat(services, run_id))

    c["start"].click(start, [c[name] for name in FORM.values()], c["msg"], api_visibility="private")
    # "Cancel requested" is cleared once the run has ended: chained after the click, so it can never
    # land after the poll tick that saw the run end (that race left it on screen)
    c["cancel"].click(cancel, None, c["msg"], api_visibility="private").then(
        lambda: "" if act.wait_until_ended(services) else gr.skip(), None, c["msg"], api_visibility="private")
    c["resume"].click(resume, c["runs"], c["run_msg"], api_visibility="private")
    c["use"].click(use, c["runs"], c["run_msg"], api_visibility="private")
    def choose_run(run_id, request: gr.Request = None):
        return ["", *_run_panel(services, run_id, lang_of(request))]

    c["runs"].input(choose_run, c["runs"],
                    [c["run_msg"], *(c[k] for k in RUN_PANEL)], api_visibility="private")
    outputs = [c[k] for k in ("status", "progress", "plot", "probes", "log", "start", "cancel", "base", "msg",
                              "preview_md", "preview_hl", "runs", *RUN_PANEL, *FORM.values(), "sig")]
    def tick(sig, run_id, request: gr.Request = None):
        return _poll(services, sig, run_id, lang_of(request))

    c["timer"].tick(tick, [c["sig"], c["runs"]], outputs,
                    show_progress="hidden", api_visibility="private", concurrency_limit=None, queue=False)


def _run_panel(services, run_id: str | None, lang: str | None = None) -> list:
    """The chosen run: its outcome and settings, its curve, and which of its actions apply."""
    run = next((r for r in act.list_runs(services) if r["run_id"] == run_id), None)
    has_model = run is not None and act.finished_model(services, run_id) is not None
    return [view.run_markdown(run, lang), plot_update(act.run_history(services, run_id), "train.plot_run", lang),
            gr.update(interactive=bool(run and run.get("resumable"))), gr.update(interactive=has_model),
            gr.update(interactive=has_model), gr.update(interactive=has_model)]


def _poll(services, sig, chosen, lang: str | None = None):
    """Redraw only when the run moved on; refresh the model and run lists when a run starts or ends.

    A page's first tick (``sig`` None) attaches it: it draws everything, fills the form with the
    runner's run's own settings and, while that run is active, shows its data preview, since this
    new session has no data of its own chosen yet."""
    status = act.job_status(services)
    new = view.signature(status)
    n_out = 13 + len(RUN_PANEL) + len(FORM)  # every output of the tick, sig included
    active, state, run_id = view.is_active(status), status.get("state"), status.get("run_id")
    # sig: the last drawn signature, then whether the live run was in the runs list (its folder is
    # made a moment after it starts, so an active run missing from the list is looked for again)
    listed = bool(sig[-1]) if sig is not None and len(sig) > len(new) else False
    if sig is not None and tuple(sig[:len(new)]) == new and (listed or not active):
        return [gr.skip()] * n_out
    old = tuple(sig[:len(new)]) if sig is not None else (None, None)
    done_now = state in view.DONE_STATES and old[1] != state
    base = gr.update(choices=act.model_choices(services)) if done_now else gr.skip()
    msg = "" if done_now and sig is not None else gr.skip()  # a message about the ended run is stale now
    preview = status.get("preview") if sig is None and active else None
    shown = ((tr(lang, "train.pv_of_run", run_id=run_id) + view.preview_markdown(preview, lang),
              view.preview_highlight(preview, lang=lang)) if isinstance(preview, dict) else (gr.skip(), gr.skip()))
    runs = [gr.skip()] * (1 + len(RUN_PANEL))
    if sig is None or old[0] != run_id or old[1] != state or (active and not listed):  # list anew
        runs_now = act.list_runs(services)
        ids = [r["run_id"] for r in runs_now]
        newly, listed = not listed, run_id in ids  # a run that just appeared is shown; later, the choice stays
        pick = run_id if sig is None or old[0] != run_id or newly or not chosen else chosen
        pick = pick if pick in ids else (ids[0] if ids else None)
        runs = [gr.update(choices=[(view.run_label(r, lang), r["run_id"]) for r in runs_now], value=pick),
                *_run_panel(services, pick, lang)]
    elif chosen == run_id and old[5:6] != new[5:6]:  # the chosen live run was evaluated: its best moved
        runs = [gr.skip(), *_run_panel(services, chosen, lang)]
    form = [gr.skip()] * len(FORM)
    attach = act.run_form(services, run_id) if sig is None and state not in (None, "idle") else None
    if attach:
        form = _form_updates(attach)
    return [view.status_markdown(status, lang), view.progress_html(status, lang),
            plot_update(status.get("history"), "train.plot_live", lang),
            view.probes_markdown(status.get("probes"), lang),
            view.log_text(status, lang=lang),
            gr.update(interactive=not active), gr.update(interactive=active), base, msg, *shown, *runs,
            *form, [*new, listed]]


def _form_updates(values: dict) -> list:
    """The form set to a run's settings; the fields that do not apply to it hidden."""
    out = []
    for key in FORM:
        value = values.get(key)
        if key == "steps":
            out.append(gr.update(value=value or None, visible=values["length_by"] == "steps"))
        elif key == "epochs":
            out.append(gr.update(value=value or None, visible=values["length_by"] == "epochs"))
        elif key == "lora_rank":
            out.append(gr.update(value=value, visible=values["method"] == "LoRA"))
        elif key == "base" and value is None:
            out.append(gr.skip())
        else:
            out.append(value)
    return out


# ---- compare ------------------------------------------------------------------------------------
def _wire_compare(services, c: dict):
    def compare(prompt, as_chat, run_id, request: gr.Request = None):
        lang = lang_of(request)
        try:
            for answers in act.compare_stream(services, prompt, as_chat, run_id=run_id):
                yield tuple(say(lang, a) for a in answers)  # a column that failed says why
        except UserError as e:
            gr.Warning(say(lang, e))
            yield gr.skip(), gr.skip()

    def export(quant, run_id, request: gr.Request = None):
        lang = lang_of(request)
        try:
            run = act.run_model(services, run_id)
        except UserError as e:
            return say(lang, act.warned(act.message_of(e))), None
        result = exports.export_run_model(services, run, quant)
        return ("" if result.ok else "⚠ ") + say(lang, result.message), str(result.path) if result.ok else None

    c["export_btn"].click(export, [c["export_quant"], c["runs"]], [c["export_msg"], c["export_file"]],
                          api_visibility="private")
    c["compare_btn"].click(compare, [c["compare_prompt"], c["as_chat"], c["runs"]], [c["base_out"], c["tuned_out"]],
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
