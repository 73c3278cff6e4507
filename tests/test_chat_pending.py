"""Regenerate (or Send, or an edit) while a reply is still pending keeps the conversation well formed
(D2): the steps are queued one at a time, and whatever order they run in, the conversation ends
user, assistant, never user, assistant, assistant."""
from __future__ import annotations

import pytest
from fixtures_ui import chat_handlers_for

SAMPLING = (0.0, 1.0, 0, 0.0, 1.0, 8, 0, "")  # greedy, 8 new tokens
SYSTEM = "Be kind."


pytestmark = pytest.mark.usefixtures("quiet_toasts")  # fixtures_ui: gr.Warning outside a request

@pytest.fixture(scope="module")
def h(ui_models, tmp_path_factory):
    return chat_handlers_for(ui_models, tmp_path_factory)



def roles(conv) -> list[str]:
    return [m["role"] for m in conv["messages"]]


def test_regenerate_before_the_pending_reply_starts(h):
    _, conv, _, _, first, _ = h.submit("Tell me a story", None, SYSTEM, [])
    conv, _, _, second = h.regenerate(conv)  # clicked ~100 ms after Send: the reply has not begun
    assert second is not None
    for job in (first, second):  # the queue runs them one after the other
        list(h.run(job, conv, SYSTEM, *SAMPLING))
    assert roles(conv) == ["user", "assistant"]
    assert roles(h.store.load(conv["id"])) == ["user", "assistant"]


def test_regenerate_while_the_reply_streams(h):
    _, conv, _, _, first, _ = h.submit("Tell me a story", None, SYSTEM, [])
    running = h.run(first, conv, SYSTEM, *SAMPLING)
    next(running), next(running)  # the reply has started
    conv, _, _, second = h.regenerate(conv)
    list(running)
    list(h.run(second, conv, SYSTEM, *SAMPLING))
    assert roles(conv) == ["user", "assistant"] and conv["messages"][-1]["content"]


def test_two_sends_before_the_first_reply(h):
    _, conv, _, _, first, _ = h.submit("Hello", None, SYSTEM, [])
    _, conv, _, _, second, _ = h.submit("Are you there?", conv, SYSTEM, [])
    for job in (first, second):
        list(h.run(job, conv, SYSTEM, *SAMPLING))
    assert roles(conv) == ["user", "user", "assistant"]
