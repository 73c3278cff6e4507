"""Tokenizer: encode/decode parity with transformers, streaming detokenization, special ids, errors, saving."""
from __future__ import annotations

import json
import shutil

import pytest

from helpers_tokenizers import SENTENCES, STYLES, write_style_folder
from lmstudio_lite.checkpoints.errors import CheckpointError
from lmstudio_lite.checkpoints.tokenizer import Tokenizer, train_bpe_tokenizer

import transformers  # noqa: E402

from shared_data import STORIES  # noqa: E402
HARD_TEXT = "你好，世界！🙂👍🏽 café"
TEXTS = [
    "Once upon a time, there was a little cat.",
    "  leading and trailing spaces  ",
    HARD_TEXT,
    "line one\n\nline two\ttab",
    "",
    "special tokens inline: <s> </s> <|im_end|> <|extra_0|> <|eot_id|>",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok_styles")
    return {style: write_style_folder(root / style, style) for style in STYLES}


def _pairs(folders):
    yield "stories260K", Tokenizer.from_folder(STORIES), transformers.AutoTokenizer.from_pretrained(STORIES)
    for style in ("chatml", "llama3", "mistral"):
        path = str(folders[style])
        yield style, Tokenizer.from_folder(path), transformers.AutoTokenizer.from_pretrained(path)


def test_encode_and_decode_match_transformers(folders):
    for name, ours, ref in _pairs(folders):
        assert ours.vocab_size == len(ref), name
        for text in TEXTS:
            ids = ours.encode(text)
            assert ids == ref(text)["input_ids"], (name, text)
            assert ours.encode(text, add_special_tokens=False) == ref(text, add_special_tokens=False)["input_ids"]
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


def test_bos_is_prepended_where_the_model_wants_it(folders):
    stories = Tokenizer.from_folder(STORIES)
    assert stories.encode("Once upon a time")[0] == stories.bos_id == 1
    assert stories.encode("Once upon a time", add_special_tokens=False)[0] != 1
    mistral = Tokenizer.from_folder(folders["mistral"])
    assert mistral.encode("hi")[0] == mistral.bos_id
    # ChatML style has no BOS at all.
    chatml = Tokenizer.from_folder(folders["chatml"])
    assert chatml.bos_id is None and chatml.bos_token is None
    assert chatml.encode("hi") == chatml.encode("hi", add_special_tokens=False)


def test_special_ids(folders):
    stories = Tokenizer.from_folder(STORIES)
    assert (stories.bos_token, stories.eos_token, stories.eos_ids, stories.pad_id) == ("<s>", "</s>", [2], None)
    assert stories.vocab_size == 512
    # eos ids: tokenizer_config's eos first, then generation_config's, without repeats.
    chatml = Tokenizer.from_folder(folders["chatml"])
    assert chatml.eos_ids == [2, 0] and chatml.pad_id == 0 and chatml.eos_token == "<|im_end|>"
    llama3 = Tokenizer.from_folder(folders["llama3"])  # eos given as {"content": ...}
    assert llama3.eos_token == "<|eot_id|>" and llama3.eos_ids == [4, 1] and llama3.bos_id == 0


def _stream(tok, ids, skip=True):
    stream = tok.decode_stream(skip_special_tokens=skip)
    pieces = [stream.step(i) for i in ids]
    tail = stream.flush()
    return pieces, "".join(p for p in pieces if p is not None) + (tail or "")


@pytest.mark.parametrize("source", ["byte_level", "stories260K"])
def test_streaming_never_splits_a_character(folders, source):
    tok = Tokenizer.from_folder(folders["chatml"] if source == "byte_level" else STORIES)
    for text in (HARD_TEXT, "Once upon a time 🙂", SENTENCES[3]):
        ids = tok.encode(text)
        for skip in (True, False):
            pieces, joined = _stream(tok, ids, skip)
            assert joined == tok.decode(ids, skip_special_tokens=skip)
            assert all("\ufffd" not in p for p in pieces if p is not None)
    # The test means something only if some characters really span several tokens.
    assert None in _stream(tok, tok.encode("🙂👍🏽", add_special_tokens=False))[0]


def test_stream_flush_returns_an_unfinished_byte_sequence():
    tok = Tokenizer.from_folder(STORIES)
    ids = [1, 231, 231]  # BOS, then two lead bytes of a UTF-8 character that never completes
    pieces, joined = _stream(tok, ids)
    assert pieces == [None, None, None]
    assert joined == tok.decode(ids) == "\ufffd\ufffd"
    assert tok.decode_stream().flush() is None


def test_token_strings_for_previews(folders):
    stories = Tokenizer.from_folder(STORIES)
    assert stories.token_strings(stories.encode("Once upon")) == ["<s>", " Once", " upon"]
    byte_pieces = stories.token_strings(stories.encode("你", add_special_tokens=False))
    assert byte_pieces[-3:] == ["<0xE4>", "<0xBD>", "<0xA0>"]
    chatml = Tokenizer.from_folder(folders["chatml"])
    text = "Hello world, the capital <|im_end|> is Paris."
    pieces = chatml.token_strings(chatml.encode(text))
    assert "".join(pieces) == text and "<|im_end|>" in pieces
    assert all("\u0120" not in p for p in pieces)  # the byte-level stand-in for a space is gone


def test_missing_tokenizer_json_names_the_file(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="tokenizer.json") as err:
        Tokenizer.from_folder(tmp_path)
    assert err.value.path == str(tmp_path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="not a folder"):
        Tokenizer.from_folder(tmp_path / "nope")


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])
def test_malformed_json_names_the_file(folders, tmp_path, name):
    folder = shutil.copytree(folders["chatml"], tmp_path / "model")
    (folder / name).write_text('{"truncated": ', encoding="utf-8")
    with pytest.raises(CheckpointError) as err:
        Tokenizer.from_folder(folder)
    assert err.value.path == str(folder / name)


def test_save_round_trip_loads_in_both(folders, tmp_path):
    src = Tokenizer.from_folder(folders["llama3"])
    src.chat_template = src.chat_template + "{{ '' }}"  # a changed template must be written
    src.save(tmp_path / "out")
    again = Tokenizer.from_folder(tmp_path / "out")
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert again.chat_template == src.chat_template == ref.chat_template
    messages = [{"role": "user", "content": "hi"}]
    assert again.encode_chat(messages) == src.encode_chat(messages)
    assert again.encode(HARD_TEXT) == ref(HARD_TEXT)["input_ids"] == src.encode(HARD_TEXT)


def test_trained_bpe_loads_in_transformers(tmp_path):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = train_bpe_tokenizer(iter(SENTENCES * 2), vocab_size=350, special_tokens=specials)
    assert [backend.token_to_id(t) for t in specials] == [0, 1, 2]
    template = STYLES["chatml"]["config"]["chat_template"][0]["template"]
    tok = Tokenizer.from_tokenizers(
        backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=template
    )
    assert tok.eos_ids == [2] and tok.pad_id == 0 and tok.bos_id is None
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == template

    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in TEXTS:
        assert tok.encode(text) == ref(text)["input_ids"]
        assert tok.decode(tok.encode(text)) == ref.decode(ref(text)["input_ids"], skip_special_tokens=True)
    assert tok.decode(tok.encode(" " + HARD_TEXT)) == " " + HARD_TEXT  # no prefix space added or lost
    messages = [{"role": "user", "content": "Paris?"}]
    assert tok.encode_chat(messages) == ref.apply_chat_template(messages, add_generation_prompt=True,
                                                                return_dict=False)
    assert ref.eos_token_id == 2


def test_config_bos_flags_do_not_override_the_post_processor(folders, tmp_path):
    # transformers 5 ignores add_bos_token/add_eos_token when tokenizer.json exists; so do we.
    folder = shutil.copytree(folders["chatml"], tmp_path / "model")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(bos_token="<|endoftext|>", add_bos_token=True, add_eos_token=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
    assert ours.encode("hi") == ref("hi")["input_ids"] == ours.encode("hi", add_special_tokens=False)


def test_stream_survives_invalid_byte_fallback_runs():
    """Byte-fallback ids that form invalid UTF-8 (a random model emits them) make
    tokenizers' DecodeStream raise; the stream must keep going with U+FFFD."""
    from lmstudio_lite.checkpoints.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(STORIES)
    ids = [244, 289, 54, 184, 225, 164, 315, 330, 400, 244, 289]
    stream = tok.decode_stream()
    pieces = [p for p in (stream.step(i) for i in ids) if p]
    tail = stream.flush()
    text = "".join(pieces) + (tail or "")
    assert "\ufffd" in text
    # decode() renders the whole byte run, valid '3' included, as U+FFFD; the stream
    # has already shown the '3' by then. Everything else is the same text.
    assert text.replace("3", "", 1) == tok.decode(ids)
