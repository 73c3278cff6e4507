"""The Chat tab's first-run offer: one button that fetches SmolLM2-135M-Instruct and loads it.

Shown only while the bundled model is the only one (``services.starter.needs_starter``) and the app
is not shared; the work is ``services.starter.fetch_starter`` run as the download job.
"""
from __future__ import annotations

import gradio as gr

from ..services import starter
from .common import PRIVATE, friendly
from .models_download import progress_md

INTRO = ("The bundled model is a toy that writes short stories. For real chat, summaries and translation, "
         "get a small instruct model (it runs on this machine, nothing leaves it):")


def build(services) -> dict:
    c: dict = {}
    pending = getattr(services.pending, "target", None)  # the model still loading at start-up
    offer = services.downloads is not None and starter.needs_starter(services.registry, pending)
    with gr.Row(visible=offer, elem_id="starter-row") as c["row"]:
        gr.Markdown(INTRO)
        c["get"] = gr.Button(starter.LABEL, variant="primary", elem_id="starter-get", scale=0, min_width=320)
    c["progress"] = gr.Markdown("", elem_id="starter-progress")
    def get():
        yield from get_starter(services)

    if services.downloads is not None:
        c["get"].click(get, None, [c["progress"], c["row"]], **PRIVATE)
    return c


def get_starter(services):
    """Stream the download's progress, then load the model so Chat uses it at once."""
    jobs = services.downloads
    try:
        jobs.run(starter.HUB_REPO, None, lambda progress, cancel: starter.fetch_starter(jobs.models_dir, progress,
                                                                                          cancel))
    except Exception as e:  # another download is running
        yield f"⚠ {friendly(e)}", gr.skip()
        return
    version, status = jobs.wait(0.0)
    while status["state"] == "running":
        yield progress_md(status), gr.skip()
        version, status = jobs.wait(1.0, version)
    if status["state"] != "done":
        yield progress_md(status), gr.skip()
        return
    try:
        model = services.registry.load(status["path"])
    except Exception as e:  # e.g. a GGUF this build cannot load yet
        yield f"⚠ Downloaded to {status['path']}, but it could not be loaded: {friendly(e)}", gr.update(visible=False)
        return
    yield f"✅ **{model.name}** is loaded: chat away.", gr.update(visible=False)
