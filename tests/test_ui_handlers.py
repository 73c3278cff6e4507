"""The Chat tab's handlers in-process (no server): overflow warnings, continue, regenerate,
edit, stop, save/export/import, and what a shared app lets each visitor see."""
from __future__ import annotations

import json
import types

import pytest
from fixtures_models import make_services

from lmstudio_lite.chats import ChatStore
from lmstudio_lite.ui.chat_handlers import view

SAMPLING = (0.0, 1.0, 0, 0.0, 1.0, 16, 0, "")  # temperature .. stop: greedy, 16 new tokens


pytestmark = pytest.mark.usefixtures("quiet_toasts")  # fixtures_ui: gr.Warning outside a request

@pytest.fixture(scope="module")
def services(ui_models, tmp_path_factory):
    svc = make_services(tmp_path_factory.mktemp("home"), load=str(ui_models["tiny-256"]))
    svc.chats = ChatStore(svc.paths.chats)
    return svc


@pytest.fixture
def h(services):
    from lmstudio_lite.ui.chat_handlers import ChatHandlers

    services.shared = False
    return ChatHandlers(services)



def send(h, conv, text, system="Be kind."):
    _, conv, _, notice, job, _ = h.submit(text, conv, system, [])
    outs = list(h.run(job, conv, system, *SAMPLING)) if job else []
    return conv, notice, outs


def test_send_streams_saves_and_shows_stats(h, services):
    conv, notice, outs = send(h, None, "Hello there")
    assert notice == "" and len(outs) >= 2
    final_conv, chatbot, stats, _ = outs[-1]
    assert [m["role"] for m in chatbot] == ["user", "assistant"] and chatbot[1]["content"]
    assert "tokens" in stats and "tok/s" in stats and "first token" in stats
    saved = services.chats.load(conv["id"])
    assert saved["messages"] == final_conv["messages"] and saved["title"] == "Hello there"


def test_empty_and_huge_messages_are_refused(h):
    for text, words in [("   ", "Type a message first"), ("word " * 250_000, "context window")]:
        box, conv, chatbot, notice, job, _ = h.submit(text, None, "", [])
        assert job is None and words in notice and chatbot == [] and box == text
    conv, notice, outs = send(h, None, "Still answering?")
    assert outs and outs[-1][1][-1]["role"] == "assistant"


def test_overflow_is_announced_before_and_during_the_reply(h):
    conv = None
    for i in range(6):
        conv, _, _ = send(h, conv, f"Tell me about the dog number {i} who liked to run in the big green park.")
    meter = h.meter("And then what happened to all of them?", conv, "Be kind.", 64)
    assert "will be left out" in meter and "messages 1–" in meter
    _, conv, _, _, job, _ = h.submit("And then what happened to all of them?", conv, "Be kind.", [])
    outs = list(h.run(job, conv, "Be kind.", 0.0, 1.0, 0, 0.0, 1.0, 64, 0, ""))
    assert "Context full: messages 1–" in outs[0][3] and "left out of this reply" in outs[-1][3]
    prompt = h.show_prompt("", conv, "Be kind.", 64)
    assert prompt.startswith("# ") and "left out" in prompt and "<|im_start|>system" in prompt


def test_show_prompt_has_the_special_tokens(h):
    conv, _, _ = send(h, None, "Hi")
    text = h.show_prompt("What next?", conv, "Be kind.", 16)
    assert "\n<|im_start|>system\nBe kind.<|im_end|>" in text and "<|im_start|>user\nWhat next?<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_regenerate_continue_and_edit(h):
    conv, _, _ = send(h, None, "Tell me a story")
    first = conv["messages"][-1]["content"]
    conv, chatbot, notice, job = h.regenerate(conv)
    assert job == {"mode": "reply"} and chatbot[-1]["role"] == "user"
    list(h.run(job, conv, "Be kind.", 0.9, 1.0, 0, 0.0, 1.0, 16, 5, ""))  # a different seed
    assert len(conv["messages"]) == 2
    before = conv["messages"][-1]["content"]
    conv, _, _, job = h.cont(conv)
    list(h.run(job, conv, "Be kind.", *SAMPLING))
    assert len(conv["messages"]) == 2 and conv["messages"][-1]["content"].startswith(before)
    assert len(conv["messages"][-1]["content"]) > len(before)
    edit = types.SimpleNamespace(index=0, value="Tell me a poem", previous_value="Tell me a story")
    conv, chatbot, _, job = h.edit(conv, edit)
    assert job and chatbot == [{"role": "user", "content": "Tell me a poem"}]
    list(h.run(job, conv, "Be kind.", *SAMPLING))
    assert len(conv["messages"]) == 2 and first  # re-run from the edited message


def test_stop_cancels_within_one_token(h):
    _, conv, _, _, job, _ = h.submit("Go on forever", None, "", [])
    gen = h.run(job, conv, "", 0.0, 1.0, 0, 0.0, 1.0, 200, 0, "")
    next(gen)  # the first update: the stream is running
    next(gen)
    h.stop(job)
    rest = list(gen)
    assert job["stream"].stats["finish_reason"] == "cancelled"
    shown, stats = h.stopped(job, conv)
    assert "stopped by you" in rest[-1][2] and "stopped by you" in stats
    # the page is redrawn from what was kept: a delta the throttled view had not drawn yet shows now
    assert shown[-1]["content"] == conv["messages"][-1]["content"]


def test_stop_on_a_waiting_reply_returns_within_a_step_of_a_long_prefill(ui_models, tmp_path):
    """Stop on a reply that waits for the model while another request's long prompt is prefilled:
    the Stop handler redraws as soon as the reply's stream has ended (within a prefill pass), not
    after a fixed wait nor after the other prompt's whole prefill (that stalled close() for as long
    as the burst of prefill passes ran)."""
    from lmstudio_lite.ui.chat_handlers import ChatHandlers

    services = make_services(tmp_path / "home", load=str(ui_models["slow-chat"]))
    services.chats = ChatStore(services.paths.chats)
    h = ChatHandlers(services)
    model = services.registry.current
    model.engine.max_batch = 1  # one sequence at a time: the reply waits for the other request
    model.engine.prefill_chunk = 16  # the other prompt takes a hundred-odd small passes (seconds)
    other = model.generate("Once upon a time there was a dog. " * 400, max_new_tokens=1, ignore_eos=True,
                           on_overflow="truncate")
    assert other.stats["prompt_tokens"] > 1500
    for _ in other.waiting():  # it joins first and takes the only row (returns once placed)
        pass
    _, conv, _, _, job, _ = h.submit("Hello", None, "", [])
    gen = h.run(job, conv, "", *SAMPLING)
    next(gen)  # the reply's stream exists
    assert "number 1 in the queue" in next(gen)[3]  # it waits behind the other prompt
    h.stop(job)
    shown, stats = h.stopped(job, conv)
    assert job["stream"].wait_ended(0) and job["stream"].finish_reason == "cancelled"
    assert other.stats["new_tokens"] == 0  # Stop answered while the other prompt was still being prefilled
    assert "stopped by you" in stats and shown[-1] == {"role": "assistant", "content": ""}
    other.close()
    assert other.wait_ended(0) and other.finish_reason == "cancelled" and other.stats["new_tokens"] == 0
    rest = list(gen)  # the cancelled event ends on its own and keeps what Stop drew
    assert rest[-1][1] == shown and services.chats.load(conv["id"])["messages"][-1]["content"] == ""


def test_export_and_import(h, tmp_path):
    conv, _, _ = send(h, None, "Export me")
    files = h.export(conv)[0]["value"]
    data = json.loads(open(files[0], encoding="utf-8").read())
    assert data["messages"] == conv["messages"] and open(files[1]).read().startswith("# Export me")
    src = tmp_path / "c.json"
    src.write_text(json.dumps(data))
    new, chatbot, system, notice, _, owned = h.import_file(str(src), [])
    assert new["id"] != conv["id"] and chatbot == view(conv) and owned == [new["id"]]
    assert new["messages"] == conv["messages"]  # with the model that wrote each reply
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\x01binary")
    assert "Import failed" in h.import_file(str(bad), [])[3]


def test_shared_app_lists_only_your_own_conversations(h, services):
    mine, _, _ = send(h, None, "mine")
    services.shared = True
    ids = [v for _, v in h.choices([mine["id"]])]
    assert ids == [mine["id"]]
    other = services.chats.list()[-1]["id"]
    assert "not yours" in h.select(other, mine, [mine["id"]])[3]


def test_the_ui_never_imports_torch():
    import ast
    from pathlib import Path

    ui = Path(__file__).resolve().parents[1] / "lmstudio_lite" / "ui"
    for path in ui.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "torch" for n in names), f"{path.name} imports torch"
