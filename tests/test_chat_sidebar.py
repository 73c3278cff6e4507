"""Chat actions that used to be silent (D7) say what happened, next to the button pressed; replies
record the model that wrote them; a message sent while the start-up model loads is answered."""
from __future__ import annotations

import json
import threading

import pytest
from fixtures_models import make_services

from lmstudio_lite.chats import ChatStore, to_markdown
from lmstudio_lite.services import build_services
from lmstudio_lite.ui.chat_handlers import ChatHandlers
from lmstudio_lite.ui.status import status_text

SAMPLING = (0.0, 1.0, 0, 0.0, 1.0, 8, 0, "")  # greedy, 8 new tokens
SYSTEM = "Be kind."

pytestmark = pytest.mark.usefixtures("quiet_toasts")  # fixtures_ui: gr.Warning outside a request


@pytest.fixture(scope="module")
def h(ui_models, tmp_path_factory):
    svc = make_services(tmp_path_factory.mktemp("home"), load=str(ui_models["tiny-256"]))
    svc.chats = ChatStore(svc.paths.chats)
    return ChatHandlers(svc)


def send(h, text, conv=None):
    _, conv, _, notice, job, _ = h.submit(text, conv, SYSTEM, [])
    list(h.run(job, conv, SYSTEM, *SAMPLING))
    return conv


def test_exporting_an_empty_chat_says_there_is_nothing(h):
    files, notice = h.export(None)
    assert files["visible"] is False and "nothing to export" in notice
    conv = send(h, "Export this one")
    files, notice = h.export(conv)
    assert len(files["value"]) == 2 and notice.startswith("✓ Exported")


def test_deleting_an_empty_chat_is_not_asked_and_says_why(h):
    row, notice = h.ask_delete({"id": "x", "title": "New chat", "messages": []})
    assert row["visible"] is False and "nothing to delete" in notice
    conv = send(h, "Delete me later")
    row, notice = h.ask_delete(conv)
    assert row["visible"] is True and notice == ""
    fresh, chatbot, notice, _, row = h.delete(conv, [])
    assert "Deleted “Delete me later”" in notice and chatbot == [] and fresh["id"] != conv["id"]
    assert conv["id"] not in [s["id"] for s in h.store.list()]


def test_import_and_rename_confirm(h, tmp_path):
    src = tmp_path / "c.json"
    src.write_text(json.dumps({"title": "Kites", "messages": [{"role": "user", "content": "Fly"},
                                                              {"role": "assistant", "content": "Up!"}]}))
    conv, _, _, notice, _, owned = h.import_file(str(src), [])
    assert notice == "✓ Imported “Kites” (2 messages); it is open now." and owned == [conv["id"]]
    title, notice, _ = h.rename("High kites", conv, owned)
    assert title == "" and "Renamed to “High kites”" in notice


def test_a_save_that_fails_is_said_inline(h, tmp_path):
    """submit() answers without the queue, where Gradio drops toasts: the notice must say it."""
    folder = tmp_path / "chats"
    broken = ChatStore(folder)
    folder.rmdir()
    folder.write_text("")  # the store's folder is now a file: every save fails
    store, h.store = h.store, broken
    try:
        _, conv, _, notice, job, _ = h.submit("Hello", None, SYSTEM, [])
    finally:
        h.store = store
    assert job is not None and "Could not save the conversation" in notice


def test_replies_record_the_model_that_wrote_them(h):
    conv = send(h, "Who wrote this?")
    reply = conv["messages"][-1]
    assert reply["role"] == "assistant" and reply["model"] == "tiny-256"
    assert h.store.load(conv["id"])["messages"][-1]["model"] == "tiny-256"  # saved, and read back
    assert "## Assistant (tiny-256)" in to_markdown(conv)
    assert "model" not in conv["messages"][0]


def test_send_while_the_model_loads_waits_for_it(ui_models, tmp_path):
    svc = build_services(model=str(ui_models["tiny-256"]), device="cpu", dtype="float32", with_jobs=False,
                         paths=_paths(tmp_path), background=True)
    assert svc.registry.current is None and svc.loading == "tiny-256"
    assert "loading model tiny-256…" in status_text(svc)
    h = ChatHandlers(svc)
    assert "loading model tiny-256" in h.meter("", None, SYSTEM, 8)
    _, conv, _, notice, job, _ = h.submit("Hello early", None, SYSTEM, [])
    assert job is not None and notice == ""  # accepted, not refused for want of a model
    outs: list = []
    worker = threading.Thread(target=lambda: outs.extend(h.run(job, conv, SYSTEM, *SAMPLING)))
    worker.start()
    assert not svc.wait_for_model(0.2) and worker.is_alive()  # nothing loads until asked
    svc.load_in_background().join(60)
    worker.join(60)
    assert svc.loading is None and conv["messages"][-1]["role"] == "assistant"
    assert conv["messages"][-1]["content"] and conv["messages"][-1]["model"] == "tiny-256"


def _paths(tmp_path):
    from lmstudio_lite.paths import app_paths

    return app_paths(tmp_path / "home")
