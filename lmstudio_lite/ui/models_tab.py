"""The Models tab: every local model with its size and memory estimate; load, unload, import, delete,
export as GGUF.

All work goes through ``services.models`` (listing, loading, importing, records) and the registry; a
folder that fails to load leaves the loaded model as it was and says why. When the app is reachable
from other machines, typed folder paths must lie inside the app's folders (``services.access``).
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ..services import exports
from ..services import models
from . import models_download
from . import train_view as view
from .common import LLM, PRIVATE, friendly


# Weight formats offered beside Load: (label, value); "float" keeps the folder's own weights.
QUANT_CHOICES = [("float (as saved)", "float"), ("q8_0 (8-bit)", "q8_0"), ("q4_1 (4-bit with min)", "q4_1"),
                 ("q4_0 (4-bit)", "q4_0")]


# ---- messages around services.models (plain values in, message out) -------------------------------------------------------
def models_frame(services) -> pd.DataFrame:
    from ..registry import memory_needed

    total, label, dtype = models.device_memory_info(services)
    cur = services.registry.current
    loaded = str(Path(cur.path).resolve()) if cur is not None else None
    entries = models.all_models(services)
    for e in entries:
        e.path = str(Path(e.path).resolve())
    rows = view.model_rows(entries, loaded, lambda e: memory_needed(e, dtype), total, label)
    return pd.DataFrame(rows, columns=view.MODEL_COLUMNS)


def load_model(services, name: str | None, quant: str | None = None) -> str:
    """Load a listed model by name; on failure the previously loaded model stays and the message says so.

    ``quant`` is a QUANT_CHOICES value; None loads in the registry's format (``--quant``)."""
    if not name:
        return "Choose a model to load."
    try:
        model = models.load(services, name, quant)
    except models.UnknownModel:
        return f"⚠ No local model named {name!r}. Refresh the list, or import the folder first."
    except Exception as e:  # CheckpointError, OSError, bad weights: report, keep the old model
        cur = services.registry.current
        kept = f" {cur.name} is still loaded." if cur is not None else " No model is loaded."
        return f"⚠ Could not load {name}: {friendly(e).rstrip('.')}.{kept}"
    info = model.info()
    return (f"Loaded **{model.name}** ({info['quant']} on {info['device']}, "
            f"{info['weights_bytes'] / 2**20:.1f} MB of weights).")


def unload_model(services) -> str:
    cur = services.registry.current
    if cur is None:
        return "No model is loaded."
    services.registry.unload()
    return f"Unloaded {cur.name}."


def import_folder(services, path: str | None) -> str:
    from ..services.access import AccessError

    if not (path or "").strip():
        return "Type the path of a model folder to import."
    try:
        entry = models.import_folder(services, path.strip())
    except AccessError as e:
        return f"⚠ {e}"
    except Exception as e:  # CheckpointError, FileExistsError, OSError: all worded for the user
        return f"⚠ Could not import: {friendly(e)}"  # the message names the folder
    return f"Imported **{entry.name}** into {services.paths.models}."


def delete_model(services, name: str | None, confirmed: bool) -> str:
    if not name:
        return "Choose a model to delete."
    if not confirmed:
        return f"Tick “Yes, delete {name}” to confirm, then press Delete again."
    try:
        services.registry.delete(name)
    except (KeyError, PermissionError, OSError) as e:
        return f"⚠ {friendly(e)}"
    return f"Deleted {name}."


# ---- layout and wiring ------------------------------------------------------------------------------
def build(services) -> dict:
    """Build the tab inside the caller's ``with gr.Tab(...)``; returns the components by name."""
    c: dict = {"tab": enclosing_tab()}
    cur, choices = services.registry.current, models.names(services)
    # Filled when the tab is opened (the memory column asks torch for the device; the page is
    # served before torch is imported).
    c["table"] = gr.Dataframe(pd.DataFrame([], columns=view.MODEL_COLUMNS), interactive=False, wrap=True,
                              elem_id="models-table",
                              label="Local models")
    with gr.Row():
        c["pick"] = gr.Dropdown(choices, value=cur.name if cur is not None and cur.name in choices else None, label="Model",
                                elem_id="model-pick", scale=3)
        c["quant"] = gr.Dropdown(QUANT_CHOICES, value=quant_value(services), label="Weights", elem_id="model-quant",
                                 scale=1)
        c["load"] = gr.Button("Load", variant="primary", elem_id="model-load")
        c["unload"] = gr.Button("Unload", elem_id="model-unload")
        c["refresh"] = gr.Button("Refresh", elem_id="models-refresh")
    with gr.Row():
        c["confirm"] = gr.Checkbox(False, label="Yes, delete the chosen model (user models only)",
                                   elem_id="delete-confirm")
        c["delete"] = gr.Button("Delete", variant="stop", elem_id="delete-btn")
    with gr.Row():
        c["export_quant"] = gr.Dropdown(list(exports.quant_choices()), value="f32", label="GGUF weights",
                                        elem_id="export-quant", scale=1)
        c["export_btn"] = gr.Button("Export GGUF", elem_id="export-btn", scale=1)
        c["export_file"] = gr.File(label="Exported GGUF (for LM Studio, Ollama, llama.cpp)", interactive=False,
                                   elem_id="export-file", scale=2)
    with gr.Row(visible=not services.shared):
        c["import_path"] = gr.Textbox(label="Import a model folder (path)", elem_id="import-path", scale=4)
        c["import_btn"] = gr.Button("Import", elem_id="import-btn")
    c["msg"] = gr.Markdown(_hint(services), elem_id="models-msg")
    refresh = _wire(services, c)
    c["download"] = models_download.build(services, [c["msg"], c["table"], c["pick"]], refresh, c["pick"])
    return c


def quant_value(services) -> str:
    """The dropdown's value: the loaded model's format, else the one loads default to."""
    cur = services.registry.current
    quant = cur.quant if cur is not None else services.registry.quant
    return quant or "float"


def enclosing_tab():
    """The gr.Tab this tab is built in (to refresh the list whenever it is opened), if any."""
    from gradio.context import Context

    block = Context.block
    return block if isinstance(block, gr.Tab) else None


def _hint(services) -> str:
    err = services.registry.last_error
    return f"⚠ The model given at start could not be loaded: {err}" if err else ""


def _wire(services, c: dict):
    def refreshed(msg: str, keep: str | None = None):
        choices = models.names(services)
        return msg, models_frame(services), gr.update(choices=choices, value=keep if keep in choices else None)

    outs = [c["msg"], c["table"], c["pick"]]
    private = PRIVATE
    c["load"].click(lambda n, q: refreshed(load_model(services, n, q), n), [c["pick"], c["quant"]], outs,
                    **LLM, **private)
    c["unload"].click(lambda n: refreshed(unload_model(services), n), c["pick"], outs, **private)
    c["refresh"].click(lambda n: refreshed("", n), c["pick"], outs, **private)
    if c["tab"] is not None:  # a model trained or deleted elsewhere shows up when the tab is opened
        c["tab"].select(lambda n: refreshed(gr.skip(), n or models.current_name(services)), c["pick"], outs, **private)
    c["import_btn"].click(lambda p, n: refreshed(import_folder(services, p), n), [c["import_path"], c["pick"]],
                          outs, **private)
    def export(name, quant):
        result = exports.export_model(services, name, quant)
        return (*refreshed(("" if result.ok else "⚠ ") + result.message, name),
                str(result.path) if result.ok else None)

    c["export_btn"].click(export, [c["pick"], c["export_quant"]], outs + [c["export_file"]], **private)
    c["delete"].click(lambda n, ok: (*refreshed(delete_model(services, n, ok), n), False),
                      [c["pick"], c["confirm"]], outs + [c["confirm"]], **private)

    def models_list() -> list:
        """Every local model: name, folder, source, family, parameters, context_length, dtype, size_bytes,
        memory_bytes (estimate), loaded, error. ("folder", not "path": gradio_client would fetch a "path".)"""
        return [models.model_record(services, e) for e in models.all_models(services)]

    def model_load(name: str) -> str:
        """Load a listed model by name into the registry (serves Chat and /v1); returns a message."""
        return load_model(services, name)

    gr.api(models_list, api_name="models_list", concurrency_limit=None)
    gr.api(model_load, api_name="model_load", **LLM)
    return refreshed
