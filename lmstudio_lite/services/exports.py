"""Export a listed model, or the model a training run just made, as a GGUF file.

The file lands in ``<models>/exports/`` so it lists (and loads, and deletes) like any other model,
and the UI offers it for download: that is how a fine-tune travels to LM Studio or Ollama.
An ExportResult's message is a ``messages.Message`` (English as a string; the page says it in its language).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..messages import Message, message_of

EXPORT_DIR = "exports"


@dataclass
class ExportResult:
    ok: bool
    message: str
    path: Path | None = None


def quant_choices() -> tuple[str, ...]:
    """The weight types an export offers (imported late: the UI builds without loading torch first)."""
    from ..checkpoints.gguf_file import EXPORT_QUANTS

    return EXPORT_QUANTS


def export_path(models_dir: Path, name: str, quant: str) -> Path:
    """``<models>/exports/<name>-<quant>.gguf``; a repo name's slash becomes ``--`` as in the HF cache."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-.") or "model"
    return Path(models_dir) / EXPORT_DIR / f"{safe}-{quant}.gguf"


def export_model(services, name: str | None, quant: str = "f32", allow_path: bool | None = None) -> ExportResult:
    """Export the listed model ``name``; a folder path too when ``allow_path`` (default: when the
    access policy allows that path: anywhere locally, inside the app's folders when remote)."""
    from ..checkpoints.errors import CheckpointError
    from ..checkpoints.gguf_export import export_gguf

    if not name:
        return ExportResult(False, Message("export.choose"))
    allow = services.access.path_allowed(name) if allow_path is None else allow_path
    cur = services.registry.current
    try:
        if cur is not None and name == cur.name and Path(cur.path).is_dir():
            folder = Path(cur.path)  # the loaded model, which may come from a folder outside the lists
        else:
            folder = services.registry.resolve_folder(name, allow_path=allow)
        label = folder.name if Path(name).is_absolute() else name
        out = export_gguf(folder, export_path(services.paths.models, label, quant), quant)
    except (CheckpointError, ValueError, KeyError, OSError) as e:
        return ExportResult(False, Message("export.failed", name=name, error=message_of(e)))
    return ExportResult(True, Message("export.done", name=label, file=out.name, mb=f"{out.stat().st_size / 1e6:.1f}",
                                      quant=quant, folder=out.parent), out)


def export_run_model(services, run: dict | None, quant: str = "f32") -> ExportResult:
    """Export the model a finished training run wrote (``run``: {"model_path": ...} or None).
    Its folder is the app's own output, so the path is trusted even when the app is shared."""
    if not run or not run.get("model_path"):
        return ExportResult(False, Message("export.no_run"))
    return export_model(services, str(run["model_path"]), quant, allow_path=True)
