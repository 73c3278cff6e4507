"""Prompt builders for chat, summarize and translate: splitting, map-reduce, paragraphs, language guess.

Logic is tested with a fake model (one token per word, replies that say what they saw);
context accounting and continue-a-reply with the real stories260K tokenizer.
"""
from __future__ import annotations

import json
import threading

import pytest
from fixtures_models import STORIES, copy_with_template

from lmstudio_lite.services.tasks import chat, summarize, text, translate


class FakeTokenizer:
    bos_token, bos_id = "<s>", 1

    def encode(self, s, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [7] * len(s.split())

    def render_chat(self, messages, add_generation_prompt=True):
        body = "".join(f"<{m['role']}> {m['content']} </{m['role']}> " for m in messages)
        return "<s>" + body + ("<assistant> " if add_generation_prompt else "")

    def encode_chat(self, messages, add_generation_prompt=True):
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)


class FakeStream:
    def __init__(self, words):
        self.words, self.closed = words, False

    def __iter__(self):
        for w in self.words:
            yield w + " "

    def close(self):
        self.closed = True


class FakeModel:
    """Replies 'seen-N' (N = words in the user message) padded to ``reply_words``."""

    def __init__(self, context_length=200, reply_words=3):
        self.context_length, self.tokenizer = context_length, FakeTokenizer()
        self.reply_words, self.calls, self.streams = reply_words, [], []

    def generate(self, messages, cancel=None, **kwargs):
        self.calls.append((messages, kwargs))
        n = len(messages[-1]["content"].split())
        k = min(self.reply_words, kwargs.get("max_new_tokens", self.reply_words))  # a real model obeys the cap
        stream = FakeStream([f"seen-{n}"] + ["w"] * (k - 1))
        self.streams.append(stream)
        return stream


def words(n, start=0):
    return " ".join(f"x{i}" for i in range(start, start + n))


# -- splitting --------------------------------------------------------------------------------------
def count_words(s):
    return len(s.split())


def test_split_keeps_paragraphs_whole_when_they_fit():
    doc = "\n\n".join(words(30, 100 * i) for i in range(5))
    chunks = text.split_text(doc, count_words, 70)
    assert [count_words(c) for c in chunks] == [60, 60, 30]
    assert " ".join(chunks).split() == doc.split()


def test_split_cuts_long_paragraphs_at_sentences_then_words():
    para = " ".join(f"Sentence {i} has five words." for i in range(20))  # 100 words, no blank lines
    chunks = text.split_text(para, count_words, 12)
    assert all(count_words(c) <= 12 for c in chunks)
    assert all(c.endswith(".") for c in chunks)  # cut between sentences, not inside one
    assert " ".join(chunks).split() == para.split()
    long_word_run = words(50)
    assert all(count_words(c) <= 7 for c in text.split_text(long_word_run, count_words, 7))


def test_split_halves_text_without_any_boundary():
    cjk = "这是一个没有空格的很长的句子" * 20
    chunks = text.split_text(cjk, len, 50)
    assert all(len(c) <= 50 for c in chunks) and "".join(chunks) == cjk


def test_run_messages_closes_the_stream_when_abandoned():
    model = FakeModel(reply_words=5)
    gen = text.run_messages(model, [{"role": "user", "content": "hi"}], chat.Settings())
    next(gen)
    gen.close()
    assert model.streams[0].closed


# -- summarize --------------------------------------------------------------------------------------
def test_short_text_is_summarized_in_one_call():
    model = FakeModel()
    steps = list(summarize.summarize(model, words(20), "One sentence", chat.Settings(max_new_tokens=20)))
    assert len(model.calls) == 1
    assert "in one sentence" in model.calls[0][0][-1]["content"]
    assert steps[-1].final and steps[-1].text == f"seen-{len(model.calls[0][0][-1]['content'].split())} w w"


def test_long_text_is_mapped_then_combined():
    model = FakeModel(context_length=200)
    doc = "\n\n".join(words(60, 100 * i) for i in range(6))  # 360 words: far over the context
    settings = chat.Settings(max_new_tokens=40)
    steps = list(summarize.summarize(model, doc, "Bullet points", settings))
    budget = summarize.chunk_budget(model, 40, "Bullet points")
    n_chunks = len(text.split_text(doc, count_words, budget))
    assert n_chunks >= 3 and len(model.calls) == n_chunks + 1
    for messages, kwargs in model.calls[:-1]:  # map: every prompt fits the context with room to reply
        assert len(model.tokenizer.encode_chat(messages)) + kwargs["max_new_tokens"] <= 200
    combine = model.calls[-1][0][-1]["content"]
    assert "Combine these summaries" in combine and "Part 1: seen-" in combine and "bullet points" in combine
    assert [s.total for s in steps] == [n_chunks + 1] * len(steps)
    assert "Summarizing part 2 of" in " ".join(s.desc for s in steps)
    assert steps[-1].final and steps[-1].text.startswith("- seen-")  # as a bullet, whatever the model wrote


def test_partial_summaries_too_long_are_summarized_again():
    model = FakeModel(context_length=200, reply_words=45)  # wordy partial summaries
    doc = "\n\n".join(words(60, 100 * i) for i in range(8))
    steps = list(summarize.summarize(model, doc, "Short paragraph", chat.Settings(max_new_tokens=50)))
    assert any("(round 2)" in s.desc for s in steps)
    assert steps[-1].final


def test_summarize_refuses_a_context_too_small():
    with pytest.raises(ValueError, match="too small"):
        summarize.chunk_budget(FakeModel(context_length=40), 200)


# -- translate --------------------------------------------------------------------------------------
def test_translate_goes_paragraph_by_paragraph():
    model = FakeModel()
    doc = "Hello there my friend.\n\nHow are you today?\n\n\nFine."
    steps = list(translate.translate(model, doc, "English", "French", chat.Settings()))
    users = [m[-1]["content"] for m, _ in model.calls]
    assert users == ["Translate English to French:\nHello there my friend.",
                     "Translate English to French:\nHow are you today?", "Translate English to French:\nFine."]
    assert model.calls[0][0][0]["content"].startswith("You are a translator. Translate the user's text from English")
    assert steps[-1].final and steps[-1].text.count("\n\n") == 2


def test_translate_auto_detects_and_skips_same_language():
    model = FakeModel()
    list(translate.translate(model, "Der Hund ist nicht groß und die Katze auch nicht.", translate.AUTO,
                             "English", chat.Settings()))
    assert model.calls[0][0][-1]["content"].startswith("Translate German to English:")
    same = list(translate.translate(model, "Hello", "English", "English", chat.Settings()))
    assert same[-1].text == "Hello" and len(model.calls) == 1


@pytest.mark.parametrize("sample, lang", [
    ("The cat is on the table and it is happy.", "English"),
    ("I had a dog when I was a kid.", "English"),  # was Portuguese: 'a' twice against 'was' once
    ("Le chat est sur la table et il est très content.", "French"),
    ("Die Katze ist auf dem Tisch und sie ist glücklich.", "German"),
    ("El gato está en la mesa y es muy feliz.", "Spanish"),
    ("猫在桌子上，它很高兴。", "Chinese"),
    ("猫はテーブルの上にいます。とても嬉しいです。", "Japanese"),
    ("고양이가 탁자 위에 있어요.", "Korean"),
    ("Кошка сидит на столе.", "Russian"),
])
def test_detect_language(sample, lang):
    assert translate.detect_language(sample) == lang


def test_detect_language_without_letters():
    assert translate.detect_language("1234 !!") is None
    assert translate.resolve_source("1234", translate.AUTO) == "English"


# -- chat -------------------------------------------------------------------------------------------
def test_messages_settings_and_presets():
    hist = [{"role": "user", "content": "hi"}]
    assert chat.build_messages("  ", hist) == hist
    assert chat.build_messages("Sys", hist)[0] == {"role": "system", "content": "Sys"}
    assert chat.parse_stop("END\n\n\\n\\nUser:") == ["END", "\n\nUser:"]
    s = chat.make_settings(0.5, 0.9, 40.0, 0.05, 1.1, 100, -1, "X")
    assert s.seed is None and s.stop == ["X"] and s.generate_kwargs()["top_k"] == 40
    assert chat.make_settings(0, 1, 0, 0, 1, 10, 7, "").seed == 7
    assert chat.PRESETS["Precise"].temperature == 0.0 and chat.PRESETS["Creative"].temperature > 0.7


def test_describe_dropped_counts_turns_without_the_system_prompt():
    msgs = chat.build_messages("S", [{"role": "user", "content": str(i)} for i in range(5)])
    assert chat.describe_dropped(msgs, [1, 2]) == "messages 1–2 (the oldest; the system prompt is kept)"
    assert chat.describe_dropped(msgs, [1]).startswith("message 1 ")
    assert chat.describe_dropped(msgs, []) == ""


@pytest.fixture(scope="module")
def real_chat_model(tmp_path_factory):
    from lmstudio_lite.services.api import load_model

    folder = copy_with_template(STORIES, tmp_path_factory.mktemp("m") / "tiny-chat")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 256
    (folder / "config.json").write_text(json.dumps(cfg))
    return load_model(folder, device="cpu", dtype="float32")


def test_context_report_names_what_would_be_dropped(real_chat_model):
    turns = [{"role": r, "content": "Once upon a time there was a little dog who liked to run. " * 2}
             for _ in range(6) for r in ("user", "assistant")] + [{"role": "user", "content": "And then?"}]
    messages = chat.build_messages("Be kind.", turns)
    report = chat.context_report(real_chat_model, messages, 64)
    assert report.limit == 256 and report.dropped and report.dropped[0] == 1 and report.error is None
    assert report.used <= 256 - 64
    fits = chat.context_report(real_chat_model, messages[-2:], 64)
    assert not fits.dropped and fits.left == 256 - fits.used
    huge = chat.context_report(real_chat_model, [{"role": "user", "content": "word " * 400}], 64)
    assert huge.error and "256" in huge.error
    assert chat.too_long_for(256, "x" * 1_000_000)


def test_continue_prompt_ends_inside_the_last_reply(real_chat_model):
    tok = real_chat_model.tokenizer
    msgs = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon a"}]
    prompt = chat.continue_prompt(tok, msgs)
    assert prompt.endswith("<|im_start|>assistant\nOnce upon a")
    plain = chat.plain_prompt(tok, prompt)
    assert real_chat_model.prompt_ids(plain).count(tok.bos_id) <= 1
    stream = real_chat_model.generate(plain, max_new_tokens=5, temperature=0.0)
    assert isinstance("".join(stream), str) and stream.stats["new_tokens"] >= 1
    with pytest.raises(ValueError):
        chat.continue_prompt(tok, msgs[:1])


def test_summarize_real_model_with_small_context(real_chat_model):
    doc = "\n\n".join(f"Paragraph {i}. Lily went to the park with her dog and they played all day long."
                      for i in range(12))
    cancel = threading.Event()
    steps = list(summarize.summarize(real_chat_model, doc, "One sentence", chat.Settings(temperature=0.0,
                                     max_new_tokens=24), cancel))
    assert steps[0].total > 2 and steps[-1].final


def test_translate_stops_each_piece_at_the_end_of_its_line_structure():
    """A one-line piece ends at a line break, a piece of several lines at a blank line, so a chat
    model that rambles on after its translation (SmolLM2: "\n\nIn this context, ...") is cut there
    and its generation closed; a reply that opens with a line break is not cut to nothing."""
    class Rambler(FakeModel):
        def generate(self, messages, cancel=None, **kwargs):
            self.calls.append((messages, kwargs))
            one_line = "\n" not in messages[-1]["content"].split(":\n", 1)[1]
            words = ["\nBonjour", "mon", "ami.\nIn", "this", "context"] if one_line else \
                ["Les roses\nsont", "rouges.\n\nIn", "this"]
            self.streams.append(FakeStream(words))
            return self.streams[-1]

    model = Rambler()
    doc = "Hello there my friend.\n\nRoses are red\nviolets are blue."
    steps = list(translate.translate(model, doc, "English", "French", chat.Settings()))
    assert steps[-1].text == "Bonjour mon ami.\n\nLes roses\nsont rouges."
    assert all(s.closed for s in model.streams)
