"""The Download box of the Models tab: list a Hub repo's files, fetch one with progress, cancel.

Only layout and formatting here: listing and the download job are ``services.download``.
Hidden while the app is shared (strangers do not write to this disk).
"""
from __future__ import annotations

import gradio as gr

from ..services import download as dl
from .common import PRIVATE
from .i18n import lang_of, say, t, tr

EXAMPLE_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"


def file_label(f: dl.RepoFile, lang: str | None = None) -> str:
    """``name · Q4_K_M · 98.2 MB · fits in memory`` (pure formatter)."""
    parts = [f.name, f.quant, f"{f.size / 1e6:.1f} MB"]
    if f.fits is not None:
        parts.append(tr(lang, "dl.fits" if f.fits else "dl.too_big"))
    return " · ".join(p for p in parts if p)


def progress_md(status: dict, lang: str | None = None) -> str:
    """The job's state as Markdown; its own message (a Message from services.download) said in ``lang``."""
    state = status.get("state", "idle")
    if state == "idle":
        return ""
    done, total = status.get("done", 0), status.get("total", 0)
    what = f"**{status.get('repo')}** {status.get('file') or ''}".strip()
    if state == "running" and total:
        pct = 100 * done / total
        bar = f"<progress value='{done}' max='{total}' style='width:100%'></progress>"
        return tr(lang, "dl.progress", what=what, pct=f"{pct:.1f}", done=f"{done / 1e6:.1f}",
                  total=f"{total / 1e6:.1f}") + f"\n\n{bar}"
    mark = {"failed": "⚠ ", "cancelled": "⏹ ", "done": "✅ "}.get(state, "")
    return f"{mark}{what}: {say(lang, status.get('message', ''))}"


def list_choices(services, repo: str, lang: str | None = None):
    """(dropdown update, message) for a repo's files; GGUF files first, the only ones if there are any."""
    try:
        files, _ = dl.list_files(repo, services.downloads.memory_bytes)
    except dl.DownloadError as e:
        return gr.update(choices=[], value=None), f"⚠ {say(lang, e)}"
    ggufs = dl.gguf_files(files)
    if not ggufs:
        return gr.update(choices=[], value=None), tr(lang, "dl.no_gguf", repo=repo)
    choices = [(file_label(f, lang), f.name) for f in ggufs]
    best = next((f.name for f in ggufs if f.fits), ggufs[0].name)
    return (gr.update(choices=choices, value=best),
            tr(lang, "dl.found_one" if len(ggufs) == 1 else "dl.found", n=len(ggufs), repo=repo))


def build(services, on_done_outputs: list, refreshed, keep) -> dict:
    """Build the box; ``refreshed(msg, kept)`` gives the values of ``on_done_outputs`` after a download,
    ``keep`` is the component whose value (the chosen model) survives that refresh."""
    c: dict = {}
    with gr.Accordion(t("dl.title"), open=False, visible=services.downloads is not None):
        with gr.Row():
            c["repo"] = gr.Textbox(label=t("dl.repo"), placeholder=EXAMPLE_REPO, scale=4,
                                   elem_id="dl-repo")
            c["list"] = gr.Button(t("dl.list"), elem_id="dl-list")
        c["file"] = gr.Dropdown([], label=t("dl.file"), elem_id="dl-file")
        with gr.Row():
            c["start"] = gr.Button(t("dl.start"), variant="primary", elem_id="dl-start")
            c["cancel"] = gr.Button(t("common.cancel"), elem_id="dl-cancel")
        c["progress"] = gr.Markdown("", elem_id="dl-progress")
    if services.downloads is not None:
        _wire(services, c, on_done_outputs, refreshed, keep)
    return c


def _wire(services, c: dict, outs: list, refreshed, keep):
    jobs = services.downloads
    def list_files(repo, request: gr.Request):
        return list_choices(services, repo, lang_of(request))

    c["list"].click(list_files, c["repo"], [c["file"], c["progress"]], **PRIVATE)

    def start(repo, name, kept=None, request: gr.Request = None):
        lang = lang_of(request)
        try:
            jobs.start(dl.check_repo(repo), name or None)
        except dl.DownloadError as e:
            yield f"⚠ {say(lang, e)}", *[gr.skip()] * len(outs)
            return
        version, status = jobs.wait(0.0)
        while status["state"] == "running":
            yield progress_md(status, lang), *[gr.skip()] * len(outs)
            version, status = jobs.wait(1.0, version)
        yield progress_md(status, lang), *refreshed("", kept, lang)

    def cancel(request: gr.Request):
        return tr(lang_of(request), "dl.cancelling" if jobs.cancel() else "dl.not_running")

    c["start"].click(start, [c["repo"], c["file"], keep], [c["progress"]] + outs, **PRIVATE)
    c["cancel"].click(cancel, None, c["progress"], **PRIVATE)
