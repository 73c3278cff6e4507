"""The app's page: a status line above six tabs, each built by its own module.

``build_app(services) -> gr.Blocks``; ``launch.py`` mounts it beside the OpenAI API.
Public API endpoints (for tests and automation): ``/chat``, ``/summarize``, ``/translate``,
plus those the Models and Train tabs register. Every other event is private.
"""
from __future__ import annotations

import gradio as gr

from . import chat_tab, inspect_tab, models_tab, status, summarize_tab, train_tab, translate_tab

TITLE = "lmstudio_lite"


def build_app(services) -> gr.Blocks:
    from gradio.utils import get_upload_folder  # where gr.File puts uploads (GRADIO_TEMP_DIR or tmp/gradio)

    services.upload_dir = services.upload_dir or str(get_upload_folder())  # services never import gradio
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(f"### {TITLE}", elem_id="app-title")
        status.build(services, demo)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat = chat_tab.build(services, demo)
            with gr.Tab("Summarize", id="summarize", elem_id="tab-summarize"):
                summarize_tab.build(services)
            with gr.Tab("Translate", id="translate", elem_id="tab-translate"):
                translate_tab.build(services)
            with gr.Tab("Inspect", id="inspect", elem_id="tab-inspect"):
                inspect = inspect_tab.build(services)
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                models_tab.build(services)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train_tab.build(services)
        inspect_tab.wire_from_chat(services, chat["inspect"], chat["conv"], tabs, inspect)
    # No demo.queue(...): each call rebuilds Gradio's app (~0.3 s at start-up). The default limit of
    # one run per event suits us: model work shares the explicit "llm" slot, the rest is cheap.
    return demo
