"""The Inspect analysis (tasks/inspect.py) against references: probabilities are the softmax of
``LoadedModel.logits``, attention equals transformers' eager attention on a tiny model of each
family, the logit lens's last layer is the model's own prediction, and a what-if branch is the
model's greedy continuation. On the bundled model, a quantized GGUF of it, and a bf16 load."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_models import KINDS, VOCAB, build
from lmstudio_lite import load_model
from lmstudio_lite.checkpoints.folder import load_weights
from lmstudio_lite.model.inference import InferenceModel
from lmstudio_lite.services.tasks import inspect as ins

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "lmstudio-lite-tiny"
ENGLISH = "Once upon a time, there was a little dog named Max. He liked to play."
CHINESE = "我喜欢在公园里散步。"


@pytest.fixture(scope="module")
def tiny():
    return load_model(BUNDLED, device="cpu", dtype="float32")


@pytest.fixture(scope="module", params=["q4_0-gguf", "bf16"])
def other_format(request, tmp_path_factory):
    if request.param == "bf16":
        return load_model(BUNDLED, device="cpu", dtype="bfloat16")
    from lmstudio_lite.checkpoints.gguf_export import export_gguf

    path = export_gguf(BUNDLED, tmp_path_factory.mktemp("gguf") / "tiny-q4_0.gguf", "q4_0")
    return load_model(path, device="cpu", dtype="float32")


def softmax_of_logits(m, ids):
    return torch.softmax(m.logits(torch.tensor([ids]))[0].float(), dim=-1)


def check_against_logits(m, text, atol):
    a = ins.analyze(m, text)
    assert a.ids == m.tokenizer.encode(text)
    ref = softmax_of_logits(m, a.ids)  # [T, V]
    for i, pos in enumerate(a.positions):
        want = ref[i].topk(ins.TOP)
        assert [c.prob for c in pos.top] == pytest.approx(want.values.tolist(), abs=atol)
        if pos.next_id is not None:
            assert pos.next_prob == pytest.approx(float(ref[i, pos.next_id]), abs=atol)
            assert pos.next_rank == int((ref[i] > ref[i, pos.next_id]).sum()) + 1
    ce = F.nll_loss(ref[:-1].log(), torch.tensor(a.ids[1:])).item()
    assert a.cross_entropy == pytest.approx(ce, rel=1e-3)
    assert a.perplexity == pytest.approx(torch.exp(torch.tensor(ce)).item(), rel=1e-3)
    # The logit lens's last layer is the model's own forward: its top token at every position.
    lens = ins.logit_lens(m, text)
    assert len(lens) == m.config.n_layer and all(len(row) == len(a.ids) for row in lens)
    assert [c.id for c in lens[-1]] == ref.argmax(-1).tolist()
    assert [c.prob for c in lens[-1]] == pytest.approx(ref.max(-1).values.tolist(), abs=atol)
    return a


def test_probabilities_are_the_softmax_of_the_models_logits(tiny):
    a = check_against_logits(tiny, ENGLISH, atol=1e-5)
    assert [p.nbytes for p in a.positions] == [len(b) for b in tiny.tokenizer.token_bytes(a.ids)]
    zh = check_against_logits(tiny, CHINESE, atol=1e-5)
    # Byte-level BPE without Chinese merges: each character is its three UTF-8 bytes.
    assert sum(p.nbytes for p in zh.positions) == len(CHINESE.encode())


def test_other_formats_agree_with_their_own_logits(other_format):
    m = other_format
    a = check_against_logits(m, ENGLISH, atol=2e-3 if m.choice.dtype == torch.bfloat16 else 1e-5)
    rows = torch.tensor(ins.attention(m, ENGLISH, layer=1))
    assert rows.shape == (len(a.ids), len(a.ids))
    torch.testing.assert_close(rows.sum(-1), torch.ones(len(a.ids)), atol=1e-4, rtol=0)


def test_attention_rows_sum_to_one_and_the_average_is_the_mean_of_heads(tiny):
    n = len(ins.encode(tiny, ENGLISH))
    heads = ins.attention_heads(tiny, ENGLISH, layer=2)
    assert heads.shape == (tiny.config.n_head, n, n)
    torch.testing.assert_close(heads.sum(-1), torch.ones(tiny.config.n_head, n), atol=1e-5, rtol=0)
    assert torch.equal(heads.triu(1), torch.zeros_like(heads))  # causal: nothing from the future
    avg = torch.tensor(ins.attention(tiny, ENGLISH, layer=2))
    torch.testing.assert_close(avg, heads.mean(0))
    torch.testing.assert_close(torch.tensor(ins.attention(tiny, ENGLISH, layer=2, head=3)), heads[3])


def test_bundled_model_attention_equals_transformers_eager(tiny):
    import transformers as tf

    ref = tf.AutoModelForCausalLM.from_pretrained(BUNDLED, attn_implementation="eager").eval()
    ids = ins.encode(tiny, CHINESE)
    with torch.no_grad():
        want = ref(torch.tensor([ids]), output_attentions=True).attentions
    for layer in (0, tiny.config.n_layer - 1):
        torch.testing.assert_close(ins.attention_heads(tiny, CHINESE, layer), want[layer][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_equals_transformers_eager_for_every_family(kind, tmp_path):
    hf = build(kind)
    hf.set_attn_implementation("eager")
    hf.save_pretrained(tmp_path)
    ours = InferenceModel(load_weights(tmp_path))
    ids = torch.randint(0, VOCAB, (1, 19), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf(ids, output_attentions=True).attentions
    with torch.inference_mode():
        _, got = ours.trace(ids, attention_layers=range(ours.config.n_layer))
    assert len(want) == len(got) == ours.config.n_layer
    for layer, w in enumerate(want):
        torch.testing.assert_close(got[layer], w, atol=1e-5, rtol=1e-4)


def test_a_text_over_the_cap_gets_a_message_naming_the_cap(tiny):
    cap = ins.token_cap(tiny)
    assert cap == min(ins.MAX_TOKENS, tiny.context_length)
    for text in ("dog " * (cap + 5), "x" * 100_000):
        with pytest.raises(ins.InspectError, match=f"at most {cap} tokens"):
            ins.analyze(tiny, text)
    with pytest.raises(ins.InspectError, match="Type or pick"):
        ins.analyze(tiny, "   ")
    with pytest.raises(ins.InspectError, match="layers 0 to 5"):
        ins.attention(tiny, ENGLISH, layer=6)


def test_branch_from_the_top_candidate_is_the_greedy_continuation(tiny):
    a = ins.analyze(tiny, ENGLISH)
    last = a.positions[-1]
    prefix, cont = ins.branch(tiny, ENGLISH, last.index, last.top[0].id, max_new=12)
    assert prefix == ENGLISH
    greedy = "".join(tiny.generate(ENGLISH, max_new_tokens=13, temperature=0))
    assert cont == greedy
    # Another candidate at an earlier position: the text up to there, then that token.
    pos = a.positions[3]
    other = next(c for c in pos.top if c.id != pos.next_id)
    prefix, cont = ins.branch(tiny, ENGLISH, 3, other.id, max_new=4)
    assert prefix == tiny.tokenizer.decode(a.ids[:4])
    assert cont.startswith(tiny.tokenizer.decode([other.id]))


def test_chat_reply_probabilities_are_teacher_forced_softmax(tiny):
    messages = [{"role": "user", "content": "Tell me a story."}]
    reply = "Once upon a time, there was a cat."
    got = ins.reply_probabilities(tiny, messages, reply, top=5)
    assert "".join(t.text for t in got) == reply
    prompt = tiny.tokenizer.encode_chat(messages)
    reply_ids = tiny.tokenizer.encode(tiny.tokenizer.render_chat(messages) + reply,
                                      add_special_tokens=False)[len(prompt):]
    ref = softmax_of_logits(tiny, prompt + reply_ids)
    rows = ref[len(prompt) - 1:-1]
    assert [t.prob for t in got] == pytest.approx(rows[torch.arange(len(reply_ids)), reply_ids].tolist(), abs=1e-5)
    assert [a.prob for a in got[0].alternatives] == pytest.approx(rows[0].topk(5).values.tolist(), abs=1e-5)
    # A Chinese reply: byte tokens merge into whole characters.
    zh = ins.reply_probabilities(tiny, messages, CHINESE)
    assert "".join(t.text for t in zh) == CHINESE and len(zh) == len(CHINESE)


@pytest.mark.usefixtures("quiet_toasts")
def test_tab_handlers_say_the_cap_and_colour_a_reply(tmp_path):
    from fixtures_models import make_services

    from lmstudio_lite.ui import chat_probs
    from lmstudio_lite.ui.inspect_tab import InspectHandlers

    services = make_services(tmp_path, load=str(BUNDLED))
    h = InspectHandlers(services)
    state, notice = h.run("dog " * 300)[:2]
    n = len(services.registry.current.tokenizer.encode("dog " * 300))
    assert state is None and f"at most 256 tokens (the cap); this text is {n} tokens" in notice
    out = h.run(ENGLISH)
    state, chips = out[0], out[3]
    assert [label for _, label in chips][:2] == ["#410 · 4B", "#414 · 5B"]  # "Once", " upon"
    assert h.pick(state, 3)[1].startswith("Position **3**: `␣time`")
    conv = {"system": "", "messages": [{"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "Once upon a time"}]}
    assert chat_probs.colours(services, False, conv)["visible"] is False
    shown = chat_probs.colours(services, True, conv)["value"]
    assert shown.count("class='tok'") == 4 and "alternatives:" in shown
