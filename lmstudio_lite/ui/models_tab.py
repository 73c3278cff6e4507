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
from .i18n import lang_of, say, t, tr


# Weight formats offered beside Load: value -> its label's key; "float" keeps the folder's own weights.
QUANT_KEYS = {"float": "models.quant_float", "q8_0": "models.quant_q8_0", "q4_1": "models.quant_q4_1",
              "q4_0": "models.quant_q4_0"}


# ---- messages around services.models (plain values in, message out) -------------------------------------------------------
def models_frame(services, lang: str | None = None) -> pd.DataFrame:
    from ..services.registry import memory_needed

    total, label, dtype = models.device_memory_info(services)
    cur = services.registry.current
    loaded = str(Path(cur.path).resolve()) if cur is not None else None
    entries = models.all_models(services)
    for e in entries:
        e.path = str(Path(e.path).resolve())
    rows = view.model_rows(entries, loaded, lambda e: memory_needed(e, dtype), total, label, lang)
    return pd.DataFrame(rows, columns=column_names(lang))


def column_names(lang: str | None = None) -> list[str]:
    """The table's headers in ``lang`` (a Dataframe's headers are not translated in the browser)."""
    return [tr(lang, key) for key in view.MODEL_COLUMN_KEYS.values()]


def load_model(services, name: str | None, quant: str | None = None, lang: str | None = None) -> str:
    """Load a listed model by name; on failure the previously loaded model stays and the message says so.

    ``quant`` is a QUANT_KEYS key; None loads in the registry's format (``--quant``)."""
    if not name:
        return tr(lang, "models.choose_load")
    try:
        model = models.load(services, name, quant)
    except models.UnknownModel:
        return "⚠ " + tr(lang, "models.unknown", name=repr(name))
    except Exception as e:  # CheckpointError, OSError, bad weights: report, keep the old model
        cur = services.registry.current
        kept = tr(lang, "models.still_loaded", name=cur.name) if cur is not None else tr(lang, "models.none_loaded")
        return "⚠ " + tr(lang, "models.load_failed", name=name, error=friendly(e, lang).rstrip('.'), kept=kept)
    info = model.info()
    return tr(lang, "models.loaded", name=model.name, quant=info['quant'], device=info['device'],
              mb=f"{info['weights_bytes'] / 2**20:.1f}")


def unload_model(services, lang: str | None = None) -> str:
    cur = services.registry.current
    if cur is None:
        return tr(lang, "models.none_loaded")
    services.registry.unload()
    return tr(lang, "models.unloaded", name=cur.name)


def import_folder(services, path: str | None, lang: str | None = None) -> str:
    from ..services.access import AccessError

    if not (path or "").strip():
        return tr(lang, "models.import_empty")
    try:
        entry = models.import_folder(services, path.strip())
    except AccessError as e:
        return f"⚠ {e}"
    except Exception as e:  # CheckpointError, FileExistsError, OSError: all worded for the user
        return "⚠ " + tr(lang, "models.import_failed", error=friendly(e, lang))  # the message names the folder
    return tr(lang, "models.imported", name=entry.name, folder=services.paths.models)


def delete_model(services, name: str | None, confirmed: bool, lang: str | None = None) -> str:
    if not name:
        return tr(lang, "models.choose_delete")
    if not confirmed:
        return tr(lang, "models.confirm_delete", name=name)
    try:
        services.registry.delete(name)
    except (KeyError, PermissionError, OSError) as e:
        return f"⚠ {friendly(e, lang)}"
    return tr(lang, "models.deleted", name=name)


# ---- layout and wiring ------------------------------------------------------------------------------
def build(services) -> dict:
    """Build the tab inside the caller's ``with gr.Tab(...)``; returns the components by name."""
    c: dict = {"tab": enclosing_tab()}
    cur, choices = services.registry.current, models.names(services)
    # Filled when the tab is opened (the memory column asks torch for the device; the page is
    # served before torch is imported).
    c["table"] = gr.Dataframe(pd.DataFrame([], columns=column_names()), interactive=False, wrap=True,
                              elem_id="models-table", label=t("models.table"))
    with gr.Row():
        c["pick"] = gr.Dropdown(choices, value=cur.name if cur is not None and cur.name in choices else None,
                                label=t("models.model"), elem_id="model-pick", scale=3)
        c["quant"] = gr.Dropdown([(t(key), v) for v, key in QUANT_KEYS.items()], value=quant_value(services),
                                 label=t("models.weights"), elem_id="model-quant", scale=1)
        c["load"] = gr.Button(t("models.load"), variant="primary", elem_id="model-load")
        c["unload"] = gr.Button(t("models.unload"), elem_id="model-unload")
        c["refresh"] = gr.Button(t("models.refresh"), elem_id="models-refresh")
    with gr.Row():
        c["confirm"] = gr.Checkbox(False, label=t("models.delete_confirm"), elem_id="delete-confirm")
        c["delete"] = gr.Button(t("models.delete"), variant="stop", elem_id="delete-btn")
    with gr.Row():
        c["export_quant"] = gr.Dropdown(list(exports.quant_choices()), value="f32", label=t("models.gguf_weights"),
                                        elem_id="export-quant", scale=1)
        c["export_btn"] = gr.Button(t("models.export"), elem_id="export-btn", scale=1)
        c["export_file"] = gr.File(label=t("models.exported"), interactive=False, elem_id="export-file", scale=2)
    with gr.Row(visible=not services.shared):
        c["import_path"] = gr.Textbox(label=t("models.import_path"), elem_id="import-path", scale=4)
        c["import_btn"] = gr.Button(t("models.import"), elem_id="import-btn")
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
    return f"⚠ {t('models.start_failed')} {err}" if err else ""  # one marker, translated in the browser


def _wire(services, c: dict):
    def refreshed(msg: str, keep: str | None = None, lang: str | None = None):
        choices = models.names(services)
        return msg, models_frame(services, lang), gr.update(choices=choices, value=keep if keep in choices else None)

    outs = [c["msg"], c["table"], c["pick"]]
    private = PRIVATE

    def load(n, q, request: gr.Request):
        return refreshed(load_model(services, n, q, lang_of(request)), n, lang_of(request))

    def unload(n, request: gr.Request):
        return refreshed(unload_model(services, lang_of(request)), n, lang_of(request))

    def import_(p, n, request: gr.Request):
        return refreshed(import_folder(services, p, lang_of(request)), n, lang_of(request))

    def delete(n, ok, request: gr.Request):
        return *refreshed(delete_model(services, n, ok, lang_of(request)), n, lang_of(request)), False

    def refresh(n, request: gr.Request):
        return refreshed("", n, lang_of(request))

    def reopened(n, request: gr.Request):
        return refreshed(gr.skip(), n or models.current_name(services), lang_of(request))

    c["load"].click(load, [c["pick"], c["quant"]], outs, **LLM, **private)
    c["unload"].click(unload, c["pick"], outs, **private)
    c["refresh"].click(refresh, c["pick"], outs, **private)
    if c["tab"] is not None:  # a model trained or deleted elsewhere shows up when the tab is opened
        c["tab"].select(reopened, c["pick"], outs, **private)
    c["import_btn"].click(import_, [c["import_path"], c["pick"]], outs, **private)
    def export(name, quant, request: gr.Request):
        lang, result = lang_of(request), exports.export_model(services, name, quant)
        return (*refreshed(("" if result.ok else "⚠ ") + say(lang, result.message), name, lang),
                str(result.path) if result.ok else None)

    c["export_btn"].click(export, [c["pick"], c["export_quant"]], outs + [c["export_file"]], **private)
    c["delete"].click(delete, [c["pick"], c["confirm"]], outs + [c["confirm"]], **private)

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
