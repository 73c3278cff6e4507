"""The app's page: a status line above six tabs, each built by its own module.

``build_app(services) -> gr.Blocks``; ``launch.py`` mounts it beside the OpenAI API.
Public API endpoints (for tests and automation): ``/chat``, ``/summarize``, ``/translate``,
plus those the Models and Train tabs register. Every other event is private.
"""
from __future__ import annotations

import gradio as gr

from . import chat_tab, i18n, inspect_tab, models_tab, status, summarize_tab, train_tab, translate_tab
from .i18n import t

TITLE = "lmstudio_lite"


def build_app(services) -> gr.Blocks:
    from gradio.utils import get_upload_folder  # where gr.File puts uploads (GRADIO_TEMP_DIR or tmp/gradio)

    services.upload_dir = services.upload_dir or str(get_upload_folder())  # services never import gradio
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(f"### {TITLE}", elem_id="app-title")
            switch = i18n.build_switch()
        line = status.build(services, demo)
        tabs: dict[str, gr.Tab] = {}  # translation key -> tab, for the language switch
        with gr.Tabs(elem_id="tabs") as tab_bar:
            with gr.Tab(t("tab.chat"), id="chat", elem_id="tab-chat") as tabs["tab.chat"]:
                chat = chat_tab.build(services, demo)
            with gr.Tab(t("tab.summarize"), id="summarize", elem_id="tab-summarize") as tabs["tab.summarize"]:
                summarize_tab.build(services)
            with gr.Tab(t("tab.translate"), id="translate", elem_id="tab-translate") as tabs["tab.translate"]:
                translate_tab.build(services)
            with gr.Tab(t("tab.inspect"), id="inspect", elem_id="tab-inspect") as tabs["tab.inspect"]:
                inspect = inspect_tab.build(services)
            with gr.Tab(t("tab.models"), id="models", elem_id="tab-models") as tabs["tab.models"]:
                models_tab.build(services)
            with gr.Tab(t("tab.train"), id="train", elem_id="tab-train") as tabs["tab.train"]:
                train_tab.build(services)
        inspect_tab.wire_from_chat(services, chat["inspect"], chat["conv"], tab_bar, inspect)
        i18n.wire_switch(demo, switch, tabs).then(status.refresher(services), None, line, queue=False,
                                                  show_progress="hidden", api_visibility="private")
    # No demo.queue(...): each call rebuilds Gradio's app (~0.3 s at start-up). The default limit of
    # one run per event suits us: model work shares the explicit "llm" slot, the rest is cheap.
    return demo
