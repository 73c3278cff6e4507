"""What the Train tab does, without widgets: resolve data, preview it, start runs, compare models.

Every function takes ``services`` and plain values and returns plain values or raises ``UserError``
(a message worded for the person at the keyboard), so the tab (ui/train_tab.py), its API endpoints
and the tests share one path. Torch-backed work is reached through services (registry, job runner,
``api.load_model``) and the training package's data preparation; this module never imports torch
itself, nor gradio (the UI says where its uploads land: ``services.upload_dir``).

What a person reads is a ``messages.Message``: English wherever it is used as a string (the API, the
CLI, tests), said again in the page's language by the tab (``i18n.say``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import LiteError
from ..messages import Message, message_of
from ..paths import bundled_assets_dir
from .models import all_models, device_type  # noqa: F401  (act.all_models: the tabs' one listing)

DATA_TYPES = (".txt", ".jsonl", ".csv", ".tsv")
CHAT_FORMATS = ("messages", "prompt_completion", "instruction", "pairs")
ACTIVE_STATES = ("queued", "running", "cancelling")  # a job in these states holds the runner
FORM_KEYS = ("base", "data", "length_by", "steps", "epochs", "lr", "batch_size", "seq_len", "method", "lora_rank",
             "out_name", "warmup_steps", "scheduler", "grad_accum", "eval_every", "seed", "keep_best",
             "early_stop_patience")


# Job states in words (the runner's states; the status line and the refusals say them alike).
STATE_KEYS = {"idle": "train.state_idle", "queued": "train.state_queued", "running": "train.state_running",
              "cancelling": "train.state_cancelling", "finished": "train.state_finished",
              "failed": "train.state_failed", "cancelled": "train.state_cancelled"}


class UserError(LiteError):
    """A problem the user can fix; raised with a Message (or text already worded), shown as is."""


def warned(message) -> Message:
    """A message shown as a warning (the tab's notices start with ⚠)."""
    return Message("train.warn", text=message)


def state_word(state: str | None) -> Message | str:
    return Message(STATE_KEYS[state]) if state in STATE_KEYS else str(state)


# ---- data sources -----------------------------------------------------------------------------
def assets_dir() -> Path:
    return bundled_assets_dir()


def list_samples(root: Path | None = None) -> dict[str, str]:
    """Bundled sample data files: {name relative to assets/: absolute path}."""
    root = root or assets_dir()
    if not root.is_dir():
        return {}
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_TYPES)
    return {p.relative_to(root).as_posix(): str(p) for p in files}


def is_uploaded(services, path: str) -> bool:
    """A file the UI received as an upload (not a path someone typed)."""
    root = services.upload_dir
    return root is not None and Path(path).resolve().is_relative_to(Path(root).resolve())


def is_active(status: dict | None) -> bool:
    return bool(status) and status.get("state") in ACTIVE_STATES


def human_bytes(n) -> str:
    if not n:
        return "0 B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def resolve_data(services, data: str | None) -> str:
    """A sample name, an uploaded file, or (when not shared) a file path -> an existing file path."""
    data = (data or "").strip()
    if not data:
        raise UserError(Message("train.need_data"))
    samples = list_samples()
    if data in samples:
        return samples[data]
    named = ", ".join(samples) or Message("train.none")
    if not is_uploaded(services, data):
        _allowed(services, data, named)
    path = Path(data).expanduser()
    if not path.is_file():
        raise UserError(Message("train.no_data_file", path=repr(data), samples=named))
    if path.suffix.lower() not in DATA_TYPES:
        raise UserError(Message("train.data_type", name=path.name, types=", ".join(DATA_TYPES)))
    limit = services.max_upload_bytes
    if limit and is_uploaded(services, str(path)) and path.stat().st_size > limit:
        raise UserError(Message("train.data_too_big", name=path.name, size=human_bytes(path.stat().st_size),
                                limit=human_bytes(limit)))
    return str(path)


def _allowed(services, path: str, samples):
    """UserError when the access policy refuses this typed data path (the app is reachable from
    other machines and the path is outside the app's folders)."""
    from .access import AccessError

    try:
        services.access.check_path(path, "data file")
    except AccessError as e:
        raise UserError(Message("train.data_path_refused", reason=message_of(e), samples=samples)) from None
    except (OSError, RuntimeError, ValueError):  # unresolvable ("~nosuchuser", NUL): it names nothing
        raise UserError(Message("train.no_data_file", path=repr(path), samples=samples)) from None


# ---- models ------------------------------------------------------------------------------------
def model_choices(services) -> list[str]:
    return [e.name for e in all_models(services) if e.error is None]


def initial_base(services, choices: list[str]) -> str | None:
    """The Train tab's first base model: the loaded one; while the start-up model still loads in the
    background (the tab is built before it), that one; else the first listed."""
    cur, pending = services.registry.current, services.pending
    if cur is not None:
        if cur.name in choices:
            return cur.name
    elif pending is not None:
        target = Path(pending.target).expanduser().resolve()
        for e in all_models(services):
            if e.name in choices and (e.name == pending.target or Path(e.path).resolve() == target):
                return e.name
    return choices[0] if choices else None


def find_model(services, name: str | None):
    """A listed (or the loaded) model by name, or by folder path when the app is not shared."""
    if not name:
        raise UserError(Message("train.need_base"))
    entry = next((e for e in all_models(services) if e.name == name), None)
    if entry is None and services.access.path_allowed(name):
        entry = next((e for e in all_models(services) if e.path == name), None)
    if entry is None:
        names = ", ".join(e.name for e in all_models(services)) or Message("train.none")
        raise UserError(Message("train.no_model", name=repr(name), names=names))
    if entry.error:
        raise UserError(Message("train.model_unusable", name=entry.name, error=entry.error))
    return entry


def advanced_defaults() -> dict:
    """The Advanced settings' starting values: TrainSpec's own defaults, defined there once."""
    from ..training.spec import SCHEDULERS, defaults

    spec = defaults()
    out = {k: spec[k] for k in ("warmup_steps", "scheduler", "grad_accum", "seed", "keep_best", "early_stop_patience")}
    return {**out, "schedulers": SCHEDULERS}


def defaults_for(services, name: str | None) -> dict:
    try:
        entry = find_model(services, name)
    except UserError:
        return default_hparams(0, 256, device_type(services))
    return default_hparams(entry.parameters, entry.context_length, device_type(services))


# ---- defaults for a model -----------------------------------------------------------------------------------
def default_hparams(parameters: int, context_length: int, device_type: str = "cpu") -> dict:
    """Starting hyperparameters for a model of this size on this device (all editable in the form).

    Small models train fully; from ~50M parameters LoRA is the default, since a full fine-tune needs
    ~16 bytes per parameter for weights, gradients and AdamW state. Learning rates follow common
    practice: ~5e-4 for tiny models, 5e-5 for a full fine-tune of bigger ones, 2e-4 for LoRA.
    """
    gpu = device_type in ("cuda", "mps")
    lora = parameters >= 50_000_000
    if lora:
        lr = 2e-4
    elif parameters and parameters < 10_000_000:
        lr = 5e-4
    else:
        lr = 5e-5
    from ..training.spec import defaults

    spec = defaults()
    batch, seq_len = spec["batch_size"], spec["seq_len"]  # TrainSpec's own: a small model on a CPU
    if gpu:  # room for twice as much
        batch, seq_len = 2 * batch, 2 * seq_len
    if lora:  # a big model: activations fill the memory sooner
        batch = max(1, batch // (2 if gpu else 4))
    ctx = context_length or spec["seq_len"]
    seq_len = min(ctx, seq_len)
    steps = 200
    return {"steps": steps, "epochs": 1.0, "lr": lr, "batch_size": batch, "seq_len": seq_len,
            "max_seq_len": ctx, "method": "LoRA" if lora else "Full", "lora_rank": 8 if lora else 0,
            "eval_every": max(10, steps // 10)}


# ---- preview -----------------------------------------------------------------------------------
def _tokenizer(services, entry):
    cur = services.registry.current
    if cur is not None and Path(cur.path) == Path(entry.path).resolve():
        return cur.tokenizer
    from ..checkpoints.tokenizer import Tokenizer

    return Tokenizer.from_folder(entry.path)


def preview_data(services, base: str, data: str, seq_len: int, batch_size: int) -> dict:
    """prepare_data's preview for this model and file; UserError with the DataError's text on bad data.

    ``preview["batch_size"]`` is a batch size the data can fill: ``batch_size``, or, when the file gives
    fewer training examples than that, their number (with a warning saying so), so that the
    defaults work on any usable file, the small bundled samples included."""
    entry = find_model(services, base)
    path = resolve_data(services, data)
    prepared = _prepare(path, _tokenizer(services, entry), int(seq_len), 1)
    preview = prepared.preview
    fits = min(int(batch_size), len(prepared.train))
    if fits < int(batch_size):
        n = len(prepared.train)
        preview["warnings"] = list(preview.get("warnings") or []) + [Message(
            "train.batch_lowered", asked=int(batch_size), fits=fits, seq_len=int(seq_len),
            examples=Message("train.n_examples" if n != 1 else "train.one_example", n=n))]
    preview["batch_size"] = fits
    return preview


def _prepare(path: str, tokenizer, seq_len: int, batch_size: int, **options):
    from ..checkpoints.errors import CheckpointError
    from ..training.data import DataError, prepare_data

    try:
        return prepare_data(path, tokenizer, seq_len, batch_size, **options)
    except (DataError, CheckpointError, ValueError) as e:
        raise UserError(message_of(e)) from None


def check_data(services, spec) -> None:
    """Read the spec's data exactly as its run will (UserError if the run would fail on it), so that a
    run is never started on data the preview rejects."""
    from ..checkpoints.tokenizer import Tokenizer

    cur = services.registry.current
    same = cur is not None and Path(cur.path) == Path(spec.base_model).resolve()
    tokenizer = cur.tokenizer if same else Tokenizer.from_folder(spec.base_model)
    try:
        _prepare(spec.data, tokenizer, spec.seq_len, spec.batch_size, val_fraction=spec.val_fraction,
                 seed=spec.seed, task_prompt=spec.task_prompt)
    except UserError as e:
        raise UserError(Message("train.data_refused", error=message_of(e))) from None


# ---- runs --------------------------------------------------------------------------------------
def make_spec(services, base: str, data: str, out_name: str | None = None, **settings):
    """A validated TrainSpec (UserError with the spec's own message when a value is wrong)."""
    from ..training.spec import TrainSpec, defaults

    entry = find_model(services, base)
    path = resolve_data(services, data)
    seq_len = int(settings.pop("seq_len", None) or defaults()["seq_len"])
    if entry.context_length and seq_len > entry.context_length:
        raise UserError(Message("train.seq_too_long", seq_len=seq_len, name=entry.name, context=entry.context_length))
    known = set(TrainSpec.__dataclass_fields__)
    kwargs = {k: v for k, v in settings.items() if k in known and v is not None}
    try:
        return TrainSpec(data=path, base_model=entry.path, out_name=(out_name or "").strip() or None,
                         seq_len=seq_len, device=services.registry.device, **kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(Message("train.bad_setting", error=message_of(e))) from None


def start_run(services, spec) -> str:
    if services.jobs is None:
        raise UserError(Message("train.no_training"))
    if not spec.from_scratch:
        check_data(services, spec)
    try:
        run_id = services.jobs.start(spec)
    except Exception as e:  # JobBusyError, or a start-time failure from the runner
        raise _start_error(e) from None
    if spec.steps:
        return Message("train.started_steps", run_id=run_id, n=spec.steps)
    return Message("train.started_epochs", run_id=run_id, n=spec.epochs)


def _start_error(e: Exception) -> Exception:
    if type(e).__name__ == "JobBusyError":  # it names the run in the way and its state
        return UserError(Message("train.busy", run_id=e.run_id, state=state_word(e.state)))
    if isinstance(e, (ValueError, OSError, RuntimeError)):
        return UserError(Message("train.start_failed", error=message_of(e)))
    return e


def resume_run(services, run_id: str | None) -> str:
    """Continue a cancelled (or interrupted) run from its last checkpoint, with its own settings."""
    run = find_run(services, run_id)
    if not run.get("resumable"):
        raise UserError(Message("train.not_resumable", run_id=run["run_id"], reason=_no_model_reason(run)))
    try:
        services.jobs.start(resume=run["run_id"])
    except Exception as e:
        raise _start_error(e) from None
    return Message("train.resumed", run_id=run["run_id"], step=run.get("step") or 0)


def cancel_run(services) -> str:
    if services.jobs is None:
        return Message("train.no_training")
    if not is_active(services.jobs.status()):
        return Message("train.nothing_to_cancel")
    services.jobs.cancel()
    return Message("train.cancel_requested")


def wait_until_ended(services, timeout_s: float = 300.0) -> bool:
    """Block until no run holds the runner (True), or ``timeout_s`` passed (False)."""
    end = time.monotonic() + timeout_s
    while services.jobs is not None and is_active(services.jobs.status()):
        if time.monotonic() > end:
            return False
        time.sleep(0.2)
    return True


def job_status(services) -> dict:
    return services.jobs.status() if services.jobs is not None else {"state": "unavailable"}


def list_runs(services) -> list[dict]:
    """Past runs, newest first, as JobRunner.list_runs() gives them (see there)."""
    if services.jobs is None or not hasattr(services.jobs, "list_runs"):
        return []
    return services.jobs.list_runs()


def find_run(services, run_id: str | None) -> dict:
    """One run of list_runs(); None = the current run: the runner's, or after a restart the newest."""
    runs = list_runs(services)
    if not run_id:
        run_id = job_status(services).get("run_id") or (runs[0]["run_id"] if runs else None)
    if not run_id:
        raise UserError(Message("train.no_runs_yet"))
    run = next((r for r in runs if r["run_id"] == run_id), None)
    if run is None:
        raise UserError(Message("train.no_run_named", run_id=run_id))
    return run


# Why a run has no model, by its outcome: the end of "Run `x` ..." (and of "... cannot be resumed: it ...")
WHY_KEYS = {"running": "train.why_running", "cancelled": "train.why_cancelled", "stopped": "train.why_stopped",
            "failed": "train.why_failed", "finished": "train.why_finished"}


def _no_model_reason(run: dict) -> Message:
    n = run.get("step") or 0
    step = (Message("train.step_n_of", step=n, total=run["total_steps"]) if run.get("total_steps")
            else Message("train.step", step=n))
    error = run.get("error") or Message("train.see_log")
    return Message(WHY_KEYS.get(run.get("outcome"), "train.why_none"), step=step, error=error)


def run_model(services, run_id: str | None = None) -> dict:
    """{run_id, model_path, base_model} of a run (None = the current run); UserError saying why not
    when that run has no model (still training, cancelled, failed, or its model deleted since)."""
    run = find_run(services, run_id)
    path = run.get("model_path")
    if not path:
        raise UserError(Message("train.run_without_model", run_id=run["run_id"], reason=_no_model_reason(run)))
    if not Path(path).is_dir():
        raise UserError(Message("train.model_deleted", run_id=run["run_id"], name=Path(path).name))
    base = run.get("base_model") or (_run_spec(services, run["run_id"]) or {}).get("base_model")
    return {"run_id": run["run_id"], "model_path": str(path), "base_model": base}


def _run_spec(services, run_id: str | None) -> dict | None:
    """A run's spec.json as a dict, or None when it cannot be read."""
    try:
        spec = json.loads((Path(services.paths.runs) / str(run_id) / "spec.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    return spec if isinstance(spec, dict) else None


def finished_model(services, run_id: str | None = None) -> dict | None:
    """run_model(), or None when that run has no model."""
    try:
        return run_model(services, run_id)
    except UserError:
        return None


def use_in_chat(services, run_id: str | None = None) -> str:
    try:
        done = run_model(services, run_id)
    except UserError as e:
        return warned(message_of(e))
    try:
        model = services.registry.load(done["model_path"])
    except Exception as e:  # a broken output folder must not take the app down
        return warned(Message("train.load_failed", path=done["model_path"], error=message_of(e)))
    return Message("train.loaded", name=model.name, run_id=done["run_id"])


def history_of(metrics: list[dict]) -> list[tuple]:
    """metrics.jsonl records -> [(step, loss, val_loss)] for plot_value."""
    return [(m["step"], m.get("loss"), m.get("val_loss")) for m in metrics if "step" in m]


def form_from_spec(spec: dict, base_name: str | None) -> dict:
    """A run's spec.json -> the Train form's values (keys: FORM_KEYS)."""
    by_steps = bool(spec.get("steps"))
    lora = int(spec.get("lora_rank") or 0)
    values = {"base": base_name, "data": spec.get("data"), "length_by": "steps" if by_steps else "epochs",
              "method": "LoRA" if lora else "Full", "lora_rank": lora or 8, "out_name": spec.get("out_name") or "",
              "batch_size": spec.get("batch_size"), "seq_len": spec.get("seq_len"), "lr": spec.get("lr")}
    for key in ("steps", "epochs", "warmup_steps", "scheduler", "grad_accum", "eval_every", "seed", "keep_best",
                "early_stop_patience"):
        values[key] = spec.get(key)
    return values


def run_history(services, run_id: str | None) -> list[tuple]:
    """[(step, loss, val_loss)] of a run, from its metrics.jsonl."""
    if not run_id or services.jobs is None or not hasattr(services.jobs, "read_metrics"):
        return []
    return history_of(services.jobs.read_metrics(run_id))


def run_form(services, run_id: str | None) -> dict | None:
    """The form's values for a run's own settings (re-attach after a page reload), or None."""
    spec = _run_spec(services, run_id)
    return None if spec is None else form_from_spec(spec, _model_name(services, spec.get("base_model")))


def _model_name(services, path: str | None) -> str | None:
    """The listed model at ``path`` (the form's base dropdown offers only those), else None."""
    if not path:
        return None
    entry = next((e for e in all_models(services) if str(e.path) == str(path) and e.error is None), None)
    return entry.name if entry is not None else None


# ---- comparison --------------------------------------------------------------------------------
def _load_for_compare(services, path: str):
    cur = services.registry.current
    if cur is not None and Path(cur.path) == Path(path).resolve():
        return cur
    from .api import load_model

    return load_model(path, device=services.registry.device, dtype=services.registry.dtype)


def compare_stream(services, prompt: str, as_chat: bool, max_new_tokens: int = 64, run_id: str | None = None):
    """Yield (base answer, tuned answer) while both generate greedily, base first, for a run's model
    (None = the current run; UserError saying why when it has none).

    Each model is a separate LoadedModel (the serving model is reused only when it is the same folder,
    never replaced)."""
    done = run_model(services, run_id)
    tuned, base = done["model_path"], done["base_model"]
    if not base:
        raise UserError(Message("train.base_unknown"))
    if not (prompt or "").strip():
        raise UserError(Message("train.need_prompt"))
    query = [{"role": "user", "content": prompt}] if as_chat else prompt
    answers = ["", ""]
    for i, path in enumerate((base, tuned)):
        try:
            model = _load_for_compare(services, path)
            stream = model.generate(query, max_new_tokens=int(max_new_tokens), temperature=0.0,
                                    on_overflow="truncate")
            for delta in stream:
                answers[i] += delta
                yield tuple(answers)
        except Exception as e:  # show the problem in that column; the other still runs
            answers[i] = Message("train.answer_error", text=answers[i], error=message_of(e))
        yield tuple(answers)
