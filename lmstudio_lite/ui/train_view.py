"""Pure view helpers for the Train and Models tabs: status dicts and previews -> frames, markdown, HTML.

No torch here and no components, so every rendering rule is unit-tested without a browser. Text
a person reads takes ``lang`` (None is English) and is worded by ``i18n.tr``, or said by ``i18n.say``
when the runner or the data check worded it (a ``messages.Message``: log lines, warnings, errors). The status
dict is ``JobRunner.status()``; missing keys are tolerated (a runner that has never run returns
little more than ``{"state": "idle"}``).
"""
from __future__ import annotations

import html
import json
import re

import pandas as pd

from .i18n import say, tr

# Job states and sizes are the service's: its messages and these views say them alike.
from ..services.train_actions import (ACTIVE_STATES, FORM_KEYS, form_from_spec, history_of,  # noqa: F401
                                      human_bytes, is_active, state_word)

DONE_STATES = ("finished", "failed", "cancelled")
MAX_PLOT_POINTS = 400  # per series: a long run is thinned so the plot stays cheap to send each second
LOG_LINES = 200
SERIES = ("train", "validation")
PROBE_PROMPT_CHARS = 120
_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


# ---- small formatters ---------------------------------------------------------------------------
def fmt_duration(seconds) -> str:
    """3725 -> '1:02:05', 65 -> '1:05', None -> '?'."""
    if seconds is None or seconds != seconds or seconds < 0:  # None, NaN, negative
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def human_count(n) -> str:
    """260_000 -> '260K', 124_000_000 -> '124M', 0 -> '?'."""
    if not n:
        return "?"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            value = n / div
            return f"{value:.0f}{suffix}" if value >= 100 else f"{value:.3g}{suffix}"
    return str(int(n))


def _num(value, fmt: str = "{:.4f}") -> str:
    return "–" if value is None else fmt.format(value)


# ---- status -------------------------------------------------------------------------------------
def signature(status: dict | None) -> tuple:
    """What changes when there is something new to draw; equal signatures mean 'skip this poll'."""
    s = status or {}
    return (s.get("run_id"), s.get("state"), s.get("step"), len(s.get("history") or ()),
            len(s.get("log") or ()), s.get("val_loss"), s.get("error"), len(s.get("probes") or ()))


def percent(status: dict | None) -> float:
    s = status or {}
    total, step = s.get("total_steps") or 0, s.get("step") or 0
    if s.get("state") == "finished":
        return 100.0
    return max(0.0, min(100.0, 100.0 * step / total)) if total else 0.0


def status_markdown(status: dict | None, lang: str | None = None) -> str:
    """One or two lines: state, run, step, losses; the error in full when the run failed."""
    s = status or {}
    state = s.get("state") or "idle"
    if state == "idle" or not s.get("run_id"):
        return tr(lang, "train.status_idle")
    head = tr(lang, "train.status_head", state=state_name(state, lang), run_id=s.get("run_id"))
    if s.get("total_steps"):
        head += " · " + tr(lang, "train.step_of", step=s.get("step") or 0, total=s["total_steps"])
    if s.get("epoch") is not None:
        head += " · " + tr(lang, "train.epoch", epoch=f"{s['epoch']:.2f}")
    head += " · " + tr(lang, "train.losses", loss=_num(s.get("loss")), val_loss=_num(s.get("val_loss")))
    if s.get("lr") is not None:
        head += f" · lr {s['lr']:.2e}"
    lines = [head]
    if state == "failed" and s.get("error"):
        lines.append(tr(lang, "train.error_line", error=say(lang, s["error"])))
    if s.get("warning"):
        lines.append(tr(lang, "train.overfitting", warning=say(lang, s["warning"])))
    if state == "finished" and s.get("model_path"):
        lines.append(tr(lang, "train.new_model", path=s["model_path"]))
    if state == "cancelled":
        lines.append(tr(lang, "train.cancelled_note"))
    return "\n\n".join(lines)


def state_name(state: str, lang: str | None = None) -> str:
    """A job state in words; one this view does not know is shown as the service names it."""
    return say(lang, state_word(state))


def progress_html(status: dict | None, lang: str | None = None) -> str:
    """A progress bar with step count, ETA and tokens/s (HTML, escaped)."""
    s = status or {}
    pct = percent(s)
    state = s.get("state") or "idle"
    bits = [f"{pct:.0f}%"]
    if s.get("total_steps"):
        bits.append(tr(lang, "train.step_of", step=s.get("step") or 0, total=s["total_steps"]))
    if state in ACTIVE_STATES:
        bits.append(tr(lang, "train.eta", eta=fmt_duration(s.get("eta_s"))))
    if state != "idle":  # idle: no words, so the bar the page is built with reads alike in every language
        bits.append(tr(lang, "train.elapsed", elapsed=fmt_duration(s.get("elapsed_s") or 0)))
    if s.get("tokens_per_s"):
        bits.append(tr(lang, "train.tokens_per_s", rate=f"{s['tokens_per_s']:,.0f}"))
    color = {"failed": "#d9534f", "cancelled": "#999", "cancelling": "#f0ad4e"}.get(state, "#4a90e2")
    text = html.escape(" · ".join(bits))
    return (f'<div class="train-progress-bar" data-percent="{pct:.1f}" data-state="{html.escape(state)}">'
            f'<div style="background:#e5e7eb;border-radius:6px;height:14px;overflow:hidden">'
            f'<div style="width:{pct:.1f}%;height:100%;background:{color}"></div></div>'
            f'<div style="font-size:0.9em;margin-top:4px">{text}</div></div>')


def loss_frame(history) -> pd.DataFrame:
    """[(step, loss, val_loss)] -> long-form frame (step, loss, series) for gr.LinePlot(color="series")."""
    rows = []
    for item in history or ():
        step, loss, val = (list(item) + [None, None, None])[:3]
        if loss is not None:
            rows.append((int(step), float(loss), "train"))
        if val is not None:
            rows.append((int(step), float(val), "validation"))
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"]).astype(
        {"step": "int64", "loss": "float64", "series": "object"})  # typed even when empty: the plot's axes
    parts = [_thin(frame[frame.series == name]) for name in SERIES]
    return pd.concat(parts, ignore_index=True) if rows else frame


def plot_value(history) -> pd.DataFrame | None:
    """loss_frame shaped for Gradio 6.31's LinePlot, which fixes its colour series on the first frame
    it draws (seen in the browser): None before the first point (an empty frame breaks the plot for
    good), and a NaN placeholder row (not drawn) for a series that has no point yet."""
    frame = loss_frame(history)
    if not len(frame):
        return None
    missing = [name for name in SERIES if not (frame.series == name).any()]
    if missing:
        first = int(frame.step.iloc[0])
        holes = pd.DataFrame({"step": [first] * len(missing), "loss": [float("nan")] * len(missing),
                              "series": missing}).astype(frame.dtypes.to_dict())
        frame = pd.concat([frame, holes], ignore_index=True)
    return frame


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    if len(frame) <= MAX_PLOT_POINTS:
        return frame
    stride = -(-len(frame) // MAX_PLOT_POINTS)
    keep = list(range(0, len(frame), stride))
    if keep[-1] != len(frame) - 1:
        keep.append(len(frame) - 1)  # always show the newest point
    return frame.iloc[keep]


def probes_markdown(probes, lang: str | None = None) -> str:
    """Latest probe generations; accepts [{prompt, output[, step]}], [(prompt, output)] or {prompt: output}."""
    if not probes:
        return tr(lang, "train.probes_hint")
    if isinstance(probes, dict):
        probes = list(probes.items())
    lines = []
    for p in probes:
        if isinstance(p, dict):
            prompt, output = p.get("prompt", ""), p.get("output", p.get("text", ""))
            step = " " + tr(lang, "train.probe_step", step=p["step"]) if p.get("step") is not None else ""
        elif isinstance(p, (list, tuple)) and len(p) >= 2:
            prompt, output, step = p[0], p[1], ""
        else:
            prompt, output, step = "", str(p), ""
        prompt = str(prompt).strip()
        prompt = prompt if len(prompt) <= PROBE_PROMPT_CHARS else "…" + prompt[-PROBE_PROMPT_CHARS:]
        # stripped: '**' closing after a space is not bold in CommonMark
        output = _md_escape(str(output).strip()) or tr(lang, "train.probe_nothing")
        lines.append(f"**{_md_escape(prompt)}**{step} → {output}")
    return "\n\n".join(lines)


def _md_escape(text: str) -> str:
    return html.escape(text).replace("*", "\\*").replace("_", "\\_").replace("\n", " ⏎ ")


def log_text(status: dict | None, limit: int = LOG_LINES, lang: str | None = None) -> str:
    """The newest ``limit`` log lines, newest first (a timer-updated Textbox does not autoscroll), in
    ``lang`` (the runner keeps its lines as Messages; the run's log.txt has them in English)."""
    return "\n".join(say(lang, line) for line in reversed(((status or {}).get("log") or [])[-limit:]))


def status_json(status: dict | None) -> str:
    """The status for API callers: everything but the full history (its last point is kept) and the
    data preview (its format is kept)."""
    s = dict(status or {"state": "idle"})
    preview = s.pop("preview", None)
    if isinstance(preview, dict):
        s["data_format"] = preview.get("format")
    history = s.pop("history", None) or []
    s["history_points"] = len(history)
    s["last_point"] = list(history[-1]) if history else None
    s["log"] = list(s.get("log") or [])[-20:]
    return json.dumps(s, default=str, indent=1)


# ---- data preview -------------------------------------------------------------------------------
def preview_markdown(preview: dict, lang: str | None = None) -> str:
    """Format, counts, a length histogram and the warnings, as markdown."""
    p = preview
    loss_on = (tr(lang, "train.pv_loss_on", n=f"{p['loss_tokens']:,}") if p.get("loss_tokens") is not None else "")
    lines = [tr(lang, "train.pv_head", format=p.get("format", "?"), rows=f"{p.get('rows', 0):,}",
                examples=f"{p.get('examples_count', p.get('rows', 0)):,}", tokens=f"{p.get('tokens', 0):,}",
                loss_on=loss_on, truncated=f"{p.get('truncated_rows', 0):,}")]
    if p.get("train_examples") is not None:
        lines.append(tr(lang, "train.pv_split", train=f"{p['train_examples']:,}", val=f"{p.get('val_examples', 0):,}"))
    if p.get("task_prompt"):
        lines.append(tr(lang, "train.pv_task_prompt", prompt=p["task_prompt"]))
    if p.get("histogram"):
        lines.append(tr(lang, "train.pv_histogram") + "\n\n" + histogram_text(p["histogram"]))
    for w in p.get("warnings") or []:
        lines.append(f"⚠️ {say(lang, w)}")
    lines.append(tr(lang, "train.pv_below"))
    return "\n\n".join(lines)


def histogram_text(hist, width: int = 30) -> str:
    """[(label, count)] -> a fenced block of text bars, one line per bucket."""
    top = max((count for _, count in hist), default=0) or 1
    pad = max(len(str(label)) for label, _ in hist)
    lines = [f"{str(label):>{pad}} │{'█' * max(1 if count else 0, round(width * count / top)):<{width}} {count:,}"
             for label, count in hist]
    return "```\n" + "\n".join(lines) + "\n```"


def data_error_markdown(message: str, lang: str | None = None) -> str:
    return f"### ⚠ {tr(lang, 'train.data_unusable')}\n\n{html.escape(str(message))}"


def preview_highlight(preview: dict, limit_chars: int = 4000, lang: str | None = None) -> list[tuple[str, str | None]]:
    """Examples as HighlightedText segments: ("text", "loss") where the loss applies, else (text, None)."""
    segments: list[tuple[str, str | None]] = []
    rendered = preview.get("rendered") or []
    marked = preview.get("examples") or []
    for i in range(max(len(rendered), len(marked))):
        if segments:
            segments.append((f"\n──── {tr(lang, 'train.example_n', n=i + 1)} ────\n", None))
        from_tokens = _runs_from_tokens(marked[i]) if i < len(marked) else None
        runs = _runs_from_rendered(rendered[i]) if i < len(rendered) else None
        # Guillemets in the data itself make the «» marks ambiguous: trust the rendered text only
        # when its loss/no-loss runs match the token flags.
        if runs is None or (from_tokens is not None and [lb for _, lb in runs] != [lb for _, lb in from_tokens]):
            runs = from_tokens
        segments += runs or []
    return _clip(segments, limit_chars)


def _runs_from_rendered(text: str) -> list[tuple[str, str | None]] | None:
    """Split '«...»' marks; None when the text itself holds stray marks (then tokens are used)."""
    out, pos = [], 0
    for m in re.finditer(r"«(.*?)»", text, flags=re.S):
        if m.start() > pos:
            out.append((text[pos:m.start()], None))
        out.append((m.group(1), "loss"))
        pos = m.end()
    rest = text[pos:]
    if "«" in rest or "»" in rest or any("«" in t for t, _ in out):
        return None
    return out + ([(rest, None)] if rest else [])


def _runs_from_tokens(tokens) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for piece, loss in tokens:
        piece = _BYTE.sub(lambda m: _byte_char(m.group(1)), str(piece))
        label = "loss" if loss else None
        if out and out[-1][1] == label:
            out[-1] = (out[-1][0] + piece, label)
        else:
            out.append((piece, label))
    return out


def _byte_char(hex_digits: str) -> str:
    value = int(hex_digits, 16)
    return chr(value) if value < 128 else f"<0x{hex_digits.upper()}>"


def _clip(segments, limit: int):
    out, used = [], 0
    for text, label in segments:
        if used + len(text) > limit:
            out.append((text[: max(0, limit - used)] + " …", label))
            break
        out.append((text, label))
        used += len(text)
    return out


# ---- past runs ----------------------------------------------------------------------------------
OUTCOME_KEYS = {"finished": "train.outcome_finished", "cancelled": "train.outcome_cancelled",
                "failed": "train.outcome_failed", "running": "train.outcome_running",
                "stopped": "train.outcome_stopped"}
# run_markdown's settings line: its names, in order
SETTING_KEYS = {"base_model": "train.set_base_model", "data": "train.set_data", "length": "train.set_length",
                "method": "train.set_method", "lr": "train.set_lr", "batch_size": "train.set_batch_size",
                "grad_accum": "train.set_grad_accum", "seq_len": "train.set_seq_len", "warmup": "train.set_warmup",
                "scheduler": "train.set_scheduler", "eval_every": "train.set_eval_every",
                "keep_best": "train.set_keep_best", "early_stop": "train.set_early_stop", "seed": "train.set_seed"}


def outcome_name(outcome, lang: str | None = None) -> str:
    return tr(lang, OUTCOME_KEYS[outcome]) if outcome in OUTCOME_KEYS else str(outcome)


def run_label(run: dict, lang: str | None = None) -> str:
    """One line for the runs list: id, model, outcome, progress."""
    spec = run.get("spec") or {}
    model = tr(lang, "train.from_scratch") if spec.get("from_scratch") else _tail(spec.get("base_model"))
    kind = f"LoRA r{spec['lora_rank']}" if spec.get("lora_rank") else tr(lang, "train.kind_full")
    steps = (tr(lang, "train.step_of", step=run.get("step") or 0, total=run["total_steps"]) if run.get("total_steps")
             else tr(lang, "train.step", step=run.get("step") or 0))
    return tr(lang, "train.run_label", run_id=run["run_id"], model=model, kind=kind, data=_tail(spec.get("data")),
              outcome=outcome_name(run.get("outcome"), lang), steps=steps)


def _tail(path) -> str:
    return re.split(r"[\\/]", str(path or "?").rstrip("/\\"))[-1]


def run_markdown(run: dict | None, lang: str | None = None) -> str:
    """A past run: its outcome, results and settings."""
    if not run:
        return tr(lang, "train.no_runs")
    spec = run.get("spec") or {}
    at = (tr(lang, "train.at_step_of", step=run.get("step") or 0, total=run["total_steps"]) if run.get("total_steps")
          else tr(lang, "train.at_step", step=run.get("step") or 0))
    lines = [tr(lang, "train.run_head", run_id=run["run_id"], outcome=outcome_name(run.get("outcome"), lang), at=at,
                loss=_num(run.get("loss")), val_loss=_num(run.get("val_loss")))]
    best = run.get("best")
    if best:
        lines.append(tr(lang, "train.best_exported" if run.get("model_path") else "train.best",
                        val_loss=f"{best['val_loss']:.4f}", step=best["step"]))
    if run.get("error"):
        lines.append(tr(lang, "train.error_line", error=html.escape(str(run["error"]))))
    if run.get("model_path"):
        lines.append(tr(lang, "train.run_model", path=run["model_path"]))
    elif run.get("resumable"):
        lines.append(tr(lang, "train.run_resumable"))
    yes, no = tr(lang, "train.yes"), tr(lang, "train.no")
    settings = [("base_model", _tail(spec.get("base_model")) if not spec.get("from_scratch")
                 else tr(lang, "train.from_scratch")),
                ("data", _tail(spec.get("data"))),
                ("length", tr(lang, "train.n_steps", n=spec["steps"]) if spec.get("steps")
                 else tr(lang, "train.n_epochs", n=spec.get("epochs"))),
                ("method", tr(lang, "train.lora_rank_n", n=spec["lora_rank"]) if spec.get("lora_rank")
                 else tr(lang, "train.full_finetune")),
                ("lr", spec.get("lr")), ("batch_size", spec.get("batch_size")),
                ("grad_accum", spec.get("grad_accum")), ("seq_len", spec.get("seq_len")),
                ("warmup", tr(lang, "train.auto") if spec.get("warmup_steps", -1) < 0 else spec.get("warmup_steps")),
                ("scheduler", spec.get("scheduler", "cosine")), ("eval_every", spec.get("eval_every")),
                ("keep_best", yes if spec.get("keep_best", True) else no),
                ("early_stop", tr(lang, "train.after_n_evals", n=spec["early_stop_patience"])
                 if spec.get("early_stop_patience") else tr(lang, "train.off")), ("seed", spec.get("seed"))]
    lines.append(" · ".join(f"{tr(lang, SETTING_KEYS[k])}: {html.escape(str(v))}" for k, v in settings))
    return "\n\n".join(lines)


# ---- models table -------------------------------------------------------------------------------
# The Models table's columns (English) -> their header's key, worded when the table is drawn.
MODEL_COLUMN_KEYS = {"name": "train.col_name", "source": "train.col_source", "family": "train.col_family",
                     "parameters": "train.col_parameters", "context": "train.col_context",
                     "dtype": "train.col_dtype", "size on disk": "train.col_size",
                     "memory needed": "train.col_memory", "fits": "train.col_fits", "loaded": "train.col_loaded",
                     "problem": "train.col_problem"}
MODEL_COLUMNS = list(MODEL_COLUMN_KEYS)
SOURCE_KEYS = {"bundled": "train.source_bundled", "user": "train.source_user", "folder": "train.source_folder"}


def model_rows(entries, loaded_path: str | None, need_fn, device_total: int, device_label: str,
               lang: str | None = None) -> list[list]:
    """One row per ModelEntry; ``need_fn(entry) -> bytes`` estimates the memory to run it."""
    rows = []
    for e in entries:
        need = need_fn(e) if e.parameters else 0
        if not need or not device_total:
            fits = "?"
        else:
            verdict = ("train.fits_yes" if need < 0.8 * device_total else "train.fits_tight" if need < device_total
                       else "train.fits_no")
            fits = tr(lang, "train.fits_of", verdict=tr(lang, verdict), pct=f"{100 * need / device_total:.1f}",
                      total=human_bytes(device_total), device=device_label)
        loaded = "●" if loaded_path and str(e.path) == str(loaded_path) else ""
        source = tr(lang, SOURCE_KEYS[e.source]) if e.source in SOURCE_KEYS else e.source  # the rest are names
        rows.append([e.name, source, e.family, human_count(e.parameters), e.context_length or "?", e.dtype,
                     human_bytes(e.size_bytes), human_bytes(need) if need else "?", fits, loaded, e.error or ""])
    return rows
