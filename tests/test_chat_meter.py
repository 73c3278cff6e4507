"""The Chat tab's context meter (D1): prompt, the reply's room and free space as three parts that add
up to the context, and "cannot be sent" only when sending would really fail; the reply's stats say
when the context, not the token limit, ended it (D12)."""
from __future__ import annotations

import re
import pytest
from fixtures_ui import chat_handlers_for

from lmstudio_lite.chats import new_conversation

SYSTEM = "Be kind."
STORY = "The little dog ran to the big park and played with a red ball all day long. "


pytestmark = pytest.mark.usefixtures("quiet_toasts")  # fixtures_ui: gr.Warning outside a request

@pytest.fixture(scope="module")
def h(ui_models, tmp_path_factory):
    return chat_handlers_for(ui_models, tmp_path_factory)



def parts(meter: str) -> dict[str, int]:
    m = re.search(r"Context ([\d,]+) tokens: prompt ([\d,]+).* reply up to ([\d,]+) · free ([\d,]+)", meter)
    assert m, meter
    limit, prompt, reply, free = (int(g.replace(",", "")) for g in m.groups())
    assert prompt + reply + free == limit, meter
    return {"prompt": prompt, "reply": reply, "free": free}


def long_chat(h) -> dict:
    """Two turns whose last reply is too long to be answered again with a 256-token reply kept."""
    tok = h.services.registry.current.tokenizer
    reply = STORY * 6
    assert 128 < len(tok.encode(reply)) < 256
    conv = new_conversation(SYSTEM)
    conv["messages"] = [{"role": "user", "content": "Tell me a long story."}, {"role": "assistant", "content": reply},
                        {"role": "user", "content": "Tell me a long story."}, {"role": "assistant", "content": reply}]
    return conv


def test_an_empty_input_box_is_never_too_long(h):
    meter = h.meter("", long_chat(h), SYSTEM, 256)
    assert "cannot be sent" not in meter
    p = parts(meter)
    assert p["prompt"] > 128 and p["reply"] == 256 - p["prompt"]


def test_a_short_message_after_a_long_chat_sends(h):
    conv = long_chat(h)
    meter = h.meter("And then?", conv, SYSTEM, 64)
    assert "cannot be sent" not in meter and "will be left out" in meter
    assert parts(meter)["reply"] == 64
    _, conv, _, notice, job, _ = h.submit("And then?", conv, SYSTEM, [])
    list(h.run(job, conv, SYSTEM, 0.0, 1.0, 0, 0.0, 1.0, 64, 0, ""))
    assert conv["messages"][-1]["role"] == "assistant" and conv["messages"][-1]["content"]


def test_cannot_be_sent_only_when_sending_fails(h):
    conv, draft = long_chat(h), STORY * 6
    meter = h.meter(draft, conv, SYSTEM, 256)
    assert "cannot be sent" in meter
    _, conv, _, _, job, _ = h.submit(draft, conv, SYSTEM, [])
    outs = list(h.run(job, conv, SYSTEM, 0.0, 1.0, 0, 0.0, 1.0, 256, 0, "")) if job else []
    assert conv["messages"][-1]["role"] == "user"  # no reply: it really could not be sent
    assert not job or "context" in outs[-1][3]


def test_a_reply_cut_by_the_context_says_so(ui_models):
    from lmstudio_lite.services.api import load_model
    from lmstudio_lite.ui.common import stats_md

    model = load_model(ui_models["tiny-256"], device="cpu", dtype="float32")
    stream = model.generate(STORY * 3, max_new_tokens=500, ignore_eos=True)
    "".join(stream)
    assert stream.stats["finish_reason"] == "length"
    assert "context" in stats_md(stream.stats) and "token limit" not in stats_md(stream.stats)
    stream = model.generate("Once", max_new_tokens=4, ignore_eos=True)
    "".join(stream)
    assert "token limit" in stats_md(stream.stats)


def test_max_new_tokens_is_capped_at_the_context(h):
    update = h.max_new_limit(4096)
    assert update["maximum"] == 256 and update["value"] == 128  # room left for the prompt
    assert h.max_new_limit(256)["value"] == 128
    kept = h.max_new_limit(64)  # fits: only the maximum is sent, so a value typed meanwhile stays
    assert kept["maximum"] == 256 and "value" not in kept
