"""What the Train tab does, without widgets: resolve data, preview it, start runs, compare models.

Every function takes ``services`` and plain values and returns plain values or raises ``UserError``
(a message worded for the person at the keyboard), so the tab, the API endpoints and the tests share
one path. Torch-backed work is reached through services (registry, job runner, ``api.load_model``)
and the training package's data preparation; this module never imports torch itself.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..paths import bundled_assets_dir
from . import train_view as view
from .common import friendly

DATA_TYPES = (".txt", ".jsonl", ".csv", ".tsv")
CHAT_FORMATS = ("messages", "prompt_completion", "instruction", "pairs")


class UserError(Exception):
    """A problem the user can fix; the message is shown as is."""


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


def _upload_root() -> Path:
    from gradio.utils import get_upload_folder  # where gr.File puts uploads (GRADIO_TEMP_DIR or tmp/gradio)

    return Path(get_upload_folder()).resolve()


def is_uploaded(path: str) -> bool:
    return Path(path).resolve().is_relative_to(_upload_root())


def resolve_data(services, data: str | None) -> str:
    """A sample name, an uploaded file, or (when not shared) a file path -> an existing file path."""
    data = (data or "").strip()
    if not data:
        raise UserError("Choose training data: upload a file or pick a sample.")
    samples = list_samples()
    if data in samples:
        return samples[data]
    if not is_uploaded(data):
        _allowed(services, data, "data file", f" Samples: {', '.join(samples) or 'none'}.")
    path = Path(data).expanduser()
    if not path.is_file():
        raise UserError(f"No data file at {data!r}; samples: {', '.join(samples) or 'none'}.")
    if path.suffix.lower() not in DATA_TYPES:
        raise UserError(f"{path.name}: unsupported file type; use {', '.join(DATA_TYPES)}.")
    limit = services.max_upload_bytes
    if limit and is_uploaded(str(path)) and path.stat().st_size > limit:
        raise UserError(f"{path.name} is {view.human_bytes(path.stat().st_size)}; the limit is "
                        f"{view.human_bytes(limit)}.")
    return str(path)


def _allowed(services, path: str, what: str, hint: str = ""):
    """UserError when the access policy refuses this typed path (the app is reachable from
    other machines and the path is outside the app's folders)."""
    from ..services.access import AccessError

    try:
        services.access.check_path(path, what)
    except AccessError as e:
        raise UserError(f"{e}{hint}") from None
    except (OSError, RuntimeError, ValueError):  # unresolvable ("~nosuchuser", NUL): it names nothing
        raise UserError(f"No {what} at {path!r}.{hint}") from None


# ---- models ------------------------------------------------------------------------------------
def all_models(services) -> list:
    """registry.list(), plus the loaded model when it came from a folder outside the models folders."""
    from ..registry import describe_folder

    entries = services.registry.list()
    cur = services.registry.current
    if cur is not None and not any(Path(e.path).resolve() == Path(cur.path).resolve() for e in entries):
        entries.append(describe_folder(Path(cur.path), cur.name, "loaded"))
    return entries


def model_choices(services) -> list[str]:
    return [e.name for e in all_models(services) if e.error is None]


def find_model(services, name: str | None):
    """A listed (or the loaded) model by name, or by folder path when the app is not shared."""
    if not name:
        raise UserError("Choose a base model.")
    entry = next((e for e in all_models(services) if e.name == name), None)
    if entry is None and services.access.path_allowed(name):
        entry = next((e for e in all_models(services) if e.path == name), None)
    if entry is None:
        names = ", ".join(e.name for e in all_models(services)) or "none"
        raise UserError(f"No local model named {name!r}; available: {names}.")
    if entry.error:
        raise UserError(f"{entry.name} cannot be used: {entry.error}")
    return entry


def device_type(services) -> str:
    cur = services.registry.current
    if cur is not None:
        return cur.device.type
    if "torch" not in sys.modules:  # the page is being built, before torch: no need to wait for it here
        from ..device_hint import likely_device_type

        return likely_device_type(services.registry.device)
    from ..device import choose_device

    try:
        return choose_device(services.registry.device, services.registry.dtype).device.type
    except ValueError:
        return "cpu"


def defaults_for(services, name: str | None) -> dict:
    try:
        entry = find_model(services, name)
    except UserError:
        return view.default_hparams(0, 256, device_type(services))
    return view.default_hparams(entry.parameters, entry.context_length, device_type(services))


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
        preview["warnings"] = list(preview.get("warnings") or []) + [
            f"batch size lowered from {int(batch_size)} to {fits}: this data gives {len(prepared.train)} "
            f"training example{'s' if len(prepared.train) != 1 else ''} at sequence length {int(seq_len)} "
            "(more data, or a shorter sequence length, gives more)"]
    preview["batch_size"] = fits
    return preview


def _prepare(path: str, tokenizer, seq_len: int, batch_size: int, **options):
    from ..checkpoints.errors import CheckpointError
    from ..training.data import DataError, prepare_data

    try:
        return prepare_data(path, tokenizer, seq_len, batch_size, **options)
    except (DataError, CheckpointError, ValueError) as e:
        raise UserError(str(e)) from None


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
        raise UserError(f"This data cannot be used: {e}") from None


# ---- runs --------------------------------------------------------------------------------------
def make_spec(services, base: str, data: str, out_name: str | None = None, **settings):
    """A validated TrainSpec (UserError with the spec's own message when a value is wrong)."""
    from ..training.spec import TrainSpec

    entry = find_model(services, base)
    path = resolve_data(services, data)
    seq_len = int(settings.pop("seq_len", 256))
    if entry.context_length and seq_len > entry.context_length:
        raise UserError(f"Sequence length {seq_len} is longer than {entry.name}'s context ({entry.context_length}).")
    known = set(TrainSpec.__dataclass_fields__)
    kwargs = {k: v for k, v in settings.items() if k in known and v is not None}
    try:
        return TrainSpec(data=path, base_model=entry.path, out_name=(out_name or "").strip() or None,
                         seq_len=seq_len, device=services.registry.device, **kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"Invalid setting: {e}") from None


def start_run(services, spec) -> str:
    if services.jobs is None:
        raise UserError("Training is not available in this app.")
    if not spec.from_scratch:
        check_data(services, spec)
    try:
        run_id = services.jobs.start(spec)
    except Exception as e:  # JobBusyError, or a start-time failure from the runner
        if type(e).__name__ == "JobBusyError":
            raise UserError(f"A training run is already in progress ({e}); cancel it first.") from None
        if isinstance(e, (ValueError, OSError, RuntimeError)):
            raise UserError(f"Could not start training: {e}") from None
        raise
    return f"Started run `{run_id}`: {spec.steps or spec.epochs} {'steps' if spec.steps else 'epochs'}."


def cancel_run(services) -> str:
    if services.jobs is None:
        return "Training is not available in this app."
    if not view.is_active(services.jobs.status()):
        return "No training run is in progress."
    services.jobs.cancel()
    return "Cancel requested: the run stops after the current step and keeps its last checkpoint."


def job_status(services) -> dict:
    return services.jobs.status() if services.jobs is not None else {"state": "unavailable"}


def _spec_base(services, run_id: str | None) -> str | None:
    try:
        return json.loads((Path(services.paths.runs) / str(run_id) / "spec.json").read_text()).get("base_model")
    except (OSError, ValueError, TypeError):
        return None


def finished_model(services) -> dict | None:
    """{run_id, model_path, base_model} of the newest finished run: the current job's when it finished,
    else (after a restart, while idle) the newest run on disk with a model; None while a run is active."""
    status = job_status(services)
    state = status.get("state")
    if state == "finished" and status.get("model_path"):
        run = {"run_id": status.get("run_id"), "model_path": status["model_path"]}
    elif state in view.ACTIVE_STATES or services.jobs is None or not hasattr(services.jobs, "list_runs"):
        return None
    else:
        run = next((r for r in services.jobs.list_runs() if r.get("model_path")), None)
        if run is None:
            return None
    if not Path(run["model_path"]).is_dir():
        return None  # deleted in the Models tab since
    base = run.get("base_model") or _spec_base(services, run.get("run_id"))
    return {"run_id": run.get("run_id"), "model_path": str(run["model_path"]), "base_model": base}


def use_in_chat(services) -> str:
    done = finished_model(services)
    if done is None:
        return "No finished model yet: train one first."
    try:
        model = services.registry.load(done["model_path"])
    except Exception as e:  # a broken output folder must not take the app down
        return f"⚠ Could not load {done['model_path']}: {friendly(e)}"
    return f"Loaded **{model.name}** into Chat."


# ---- comparison --------------------------------------------------------------------------------
def _load_for_compare(services, path: str):
    cur = services.registry.current
    if cur is not None and Path(cur.path) == Path(path).resolve():
        return cur
    from ..api import load_model

    return load_model(path, device=services.registry.device, dtype=services.registry.dtype)


def compare_stream(services, prompt: str, as_chat: bool, max_new_tokens: int = 64):
    """Yield (base answer, tuned answer) while both generate greedily, base first.

    Each model is a separate LoadedModel (the serving model is reused only when it is the same folder,
    never replaced)."""
    done = finished_model(services)
    if done is None:
        raise UserError("Compare needs a finished run: train a model first.")
    tuned, base = done["model_path"], done["base_model"]
    if not base:
        raise UserError("The base model of this run is unknown.")
    if not (prompt or "").strip():
        raise UserError("Type a prompt to compare.")
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
            answers[i] += f"\n[error: {friendly(e)}]"
        yield tuple(answers)
