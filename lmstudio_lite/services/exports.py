"""Export a listed model, or the model a training run just made, as a GGUF file.

The file lands in ``<models>/exports/`` so it lists (and loads, and deletes) like any other model,
and the UI offers it for download: that is how a fine-tune travels to LM Studio or Ollama.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import user_message

EXPORT_DIR = "exports"
HOW_TO_USE = ("LM Studio: put it in `~/.lmstudio/models/<you>/<model>/`. Ollama: write a `Modelfile` with "
              "`FROM ./{file}`, then `ollama create <name> -f Modelfile`. llama.cpp: `llama-cli -m {file}`.")


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
        return ExportResult(False, "Choose a model to export.")
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
        return ExportResult(False, f"Could not export {name}: {user_message(e)}")
    size = out.stat().st_size / 1e6
    return ExportResult(True, f"Exported **{label}** as `{out.name}` ({size:.1f} MB, {quant}) in {out.parent}. "
                        + HOW_TO_USE.format(file=out.name), out)


def export_run_model(services, run: dict | None, quant: str = "f32") -> ExportResult:
    """Export the model a finished training run wrote (``run``: {"model_path": ...} or None).
    Its folder is the app's own output, so the path is trusted even when the app is shared."""
    if not run or not run.get("model_path"):
        return ExportResult(False, "No finished training run with a model to export yet.")
    return export_model(services, str(run["model_path"]), quant, allow_path=True)
