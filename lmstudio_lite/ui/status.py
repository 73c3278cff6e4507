"""The status line shown above every tab: device (and why), loaded model, memory in use.

Refreshed by a per-session ``gr.Timer``; building the text is cheap (no tokenizing, no
file walks). Launch notes (share link state, API key hint) come from ``services.extra["notes"]``.
"""
from __future__ import annotations

import gradio as gr

from .common import PRIVATE, friendly

REFRESH_S = 5.0


def status_text(services) -> str:
    reg = services.registry
    try:
        line = reg.status_line()
    except Exception as e:  # never let the status line take a page down
        line = f"status unavailable: {friendly(e)}"
    extra = []
    if reg.current is None:
        loading = services.loading
        if loading:
            extra.append(f"loading model {loading}… (you can send already: replies wait for it)")
        elif reg.last_error:
            extra.append(f"**the model failed to load:** {reg.last_error}")
        else:
            extra.append("no model yet: load one in the Models tab or start with `--model FOLDER`")
    extra += list(services.extra.get("notes", []))
    return " · ".join([line] + extra)


def build(services, demo: gr.Blocks) -> gr.Markdown:
    """The status Markdown (elem_id ``status-line``), fresh on each page load and every few seconds."""
    # Filled on page load, not at build: naming the device imports torch, which the page need not wait for.
    status = gr.Markdown("…", elem_id="status-line")

    def refresh() -> str:
        return status_text(services)

    demo.load(refresh, None, status, show_progress="hidden", queue=False, **PRIVATE)
    gr.Timer(REFRESH_S).tick(refresh, None, status, show_progress="hidden", queue=False, **PRIVATE)
    return status
