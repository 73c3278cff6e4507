"""The status line shown above every tab: device (and why), loaded model, memory in use.

Refreshed by a per-session ``gr.Timer``; building the text is cheap (no tokenizing, no
file walks). Launch notes (share link state, API key hint) come from ``services.extra["notes"]``.
"""
from __future__ import annotations

import gradio as gr

from .common import PRIVATE, friendly
from .i18n import lang_of, say, tr

REFRESH_S = 5.0


def status_text(services, lang: str | None = None) -> str:
    """The line in ``lang``: the registry's part (device, model, KV, memory) is a Message said in it too."""
    reg = services.registry
    try:
        line = say(lang, reg.status_line())
    except Exception as e:  # never let the status line take a page down
        line = tr(lang, "status.unavailable", error=friendly(e, lang))
    extra = []
    if reg.current is None:
        loading = services.loading
        if loading:
            extra.append(tr(lang, "status.loading", name=loading))
        elif reg.last_error:
            extra.append(tr(lang, "status.load_failed", error=reg.last_error))
        else:
            extra.append(tr(lang, "status.no_model"))
    extra += list(services.extra.get("notes", []))
    return " · ".join([line] + extra)


def refresher(services):
    """The handler that rewords the line for the page that asks (its language)."""
    def refresh(request: gr.Request) -> str:
        return status_text(services, lang_of(request))

    return refresh


def build(services, demo: gr.Blocks) -> gr.Markdown:
    """The status Markdown (elem_id ``status-line``), fresh on each page load and every few seconds."""
    # Filled on page load, not at build: naming the device imports torch, which the page need not wait for.
    status = gr.Markdown("…", elem_id="status-line")
    refresh = refresher(services)
    demo.load(refresh, None, status, show_progress="hidden", queue=False, **PRIVATE)
    gr.Timer(REFRESH_S).tick(refresh, None, status, show_progress="hidden", queue=False, **PRIVATE)
    return status
