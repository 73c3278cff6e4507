"""The Chat tab's first-run offer: one button that fetches SmolLM2-135M-Instruct and loads it.

Shown only while the bundled model is the only one (``services.starter.needs_starter``) and the app
is not shared; the work is ``services.starter.fetch_starter`` run as the download job.
"""
from __future__ import annotations

import gradio as gr

from ..services import starter
from .common import PRIVATE, friendly
from .i18n import lang_of, t, tr
from .models_download import progress_md


def build(services) -> dict:
    c: dict = {}
    pending = getattr(services.pending, "target", None)  # the model still loading at start-up
    offer = services.downloads is not None and starter.needs_starter(services.registry, pending)
    with gr.Row(visible=offer, elem_id="starter-row") as c["row"]:
        gr.Markdown(t("starter.intro"))
        c["get"] = gr.Button(t("starter.get"), variant="primary", elem_id="starter-get", scale=0, min_width=320)
    c["progress"] = gr.Markdown("", elem_id="starter-progress")
    def get(request: gr.Request):
        yield from get_starter(services, lang_of(request))

    if services.downloads is not None:
        c["get"].click(get, None, [c["progress"], c["row"]], **PRIVATE)
    return c


def get_starter(services, lang: str | None = None):
    """Stream the download's progress, then load the model so Chat uses it at once."""
    jobs = services.downloads
    try:
        jobs.run(starter.HUB_REPO, None, lambda progress, cancel: starter.fetch_starter(jobs.models_dir, progress,
                                                                                          cancel, note=jobs.note))
    except Exception as e:  # another download is running
        yield f"⚠ {friendly(e, lang)}", gr.skip()
        return
    version, status = jobs.wait(0.0)
    while status["state"] == "running":
        yield progress_md(status, lang), gr.skip()
        version, status = jobs.wait(1.0, version)
    if status["state"] != "done":
        yield progress_md(status, lang), gr.skip()
        return
    try:
        model = services.registry.load(status["path"])
    except Exception as e:  # e.g. a GGUF this build cannot load yet
        message = tr(lang, "starter.load_failed", path=status['path'], error=friendly(e, lang))
        yield f"⚠ {message}", gr.update(visible=False)
        return
    yield "✅ " + tr(lang, "starter.loaded", name=model.name), gr.update(visible=False)
