"""Tokenizers rebuilt from GGUF metadata give llama.cpp's ids (golden file written by
bench/gguf_tokenize_parity.py from llama-tokenize), decode back, and carry the chat template."""
from __future__ import annotations

import json

import pytest

from fixtures_gguf import smollm2_path  # noqa: F401
from helpers_gguf import DATA, STORIES_GGUF, random_model, vocab_only_copy, write_gguf
from lmstudio_lite.checkpoints.errors import CheckpointError
from lmstudio_lite.checkpoints.gguf_file import open_gguf
from lmstudio_lite.checkpoints.gguf_tokenizer import PRE_TOKENIZERS, tokenizer_from_gguf
from lmstudio_lite.model.config import ModelConfig

GOLDEN = json.loads((DATA / "gguf_tokenize_golden.json").read_text(encoding="utf-8"))["models"]


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_path):  # noqa: F811
    return tokenizer_from_gguf(open_gguf(smollm2_path))


@pytest.fixture(scope="module")
def stories_tok():
    return tokenizer_from_gguf(open_gguf(STORIES_GGUF))


def mismatches(tok, cases) -> list[str]:
    return [f"{c['text'][:50]!r}: llama.cpp {c['ids'][:12]} ours {tok.encode(c['text'])[:12]}"
            for c in cases if tok.encode(c["text"]) != c["ids"]]


def test_smollm2_ids_equal_llama_cpp(smollm2_tok):
    cases = GOLDEN["smollm2"]["cases"]
    assert len(cases) > 60
    assert mismatches(smollm2_tok, cases) == []


def test_stories260k_ids_equal_llama_cpp(stories_tok):
    cases = GOLDEN["stories260K"]["cases"]
    assert mismatches(stories_tok, cases) == []


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_every_pre_tokenizer_gives_llama_cpp_ids(pre, tmp_path):
    """tests/data/bpe-small.gguf's vocabulary under each pre-tokenizer name, as the bench renamed it."""
    path = vocab_only_copy(DATA / "bpe-small.gguf", tmp_path / f"{pre}.gguf", pre)
    assert mismatches(tokenizer_from_gguf(open_gguf(path)), GOLDEN[f"bpe-small-{pre}"]["cases"]) == []


def test_pre_tokenizers_are_told_apart_by_the_golden_texts():
    ids = {pre: [c["ids"] for c in GOLDEN[f"bpe-small-{pre}"]["cases"]] for pre in PRE_TOKENIZERS}
    assert ids["default"] != ids["gpt-2"] != ids["llama3"] != ids["qwen2"]


@pytest.mark.parametrize("model", ["smollm2", "stories260K"])
def test_decode_gives_the_text_back(model, smollm2_tok, stories_tok):
    tok = smollm2_tok if model == "smollm2" else stories_tok
    for case in GOLDEN[model]["cases"]:
        if "<|im_" not in case["text"]:  # special tokens are skipped on decode
            assert tok.decode(tok.encode(case["text"])) == case["text"]


def test_special_tokens_and_bos_follow_the_metadata(smollm2_tok, stories_tok):
    assert (smollm2_tok.bos_id, smollm2_tok.eos_ids, smollm2_tok.pad_id) == (1, [2], 2)
    assert smollm2_tok.encode("hi")[0] != 1  # add_bos_token is false in this file
    assert smollm2_tok.encode("<|im_start|>")[0] == 1  # a CONTROL token is one id, not text
    assert stories_tok.encode("hi")[0] == stories_tok.bos_id == 1  # SentencePiece files add BOS


def test_smollm2_chat_template_comes_from_the_file(smollm2_tok):
    text = smollm2_tok.render_chat([{"role": "user", "content": "Hello"}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    ids = smollm2_tok.encode_chat([{"role": "user", "content": "Hello"}])
    assert ids[0] == 1 and ids.count(1) == 3  # three <|im_start|> tokens, no BOS added on top


def _with_tokenizer_field(tmp_path, key: str, value: str):
    """A tiny GGUF whose string field ``key`` is overwritten in place (same length) with ``value``."""
    path = write_gguf(random_model(ModelConfig(family="llama", vocab_size=512, n_layer=1, n_head=4, d_model=64,
                                               d_ff=64, max_seq_len=32)), tmp_path / "m.gguf", "llama")
    data = bytearray(path.read_bytes())
    at = data.index(key.encode()) + len(key) + 4 + 8  # then the value type (u32) and string length (u64)
    data[at:at + len(value)] = value.encode()
    path.write_bytes(bytes(data))
    return path


def test_unknown_pre_tokenizer_is_named(tmp_path):
    path = vocab_only_copy(DATA / "bpe-small.gguf", tmp_path / "x.gguf", "klingon")
    with pytest.raises(CheckpointError, match="pre-tokenizer 'klingon' is not supported"):
        tokenizer_from_gguf(open_gguf(path))


def test_unknown_tokenizer_model_is_named(tmp_path):
    path = _with_tokenizer_field(tmp_path, "tokenizer.ggml.model", "rwkv!")
    with pytest.raises(CheckpointError, match="tokenizer model 'rwkv!' is not supported"):
        tokenizer_from_gguf(open_gguf(path))
