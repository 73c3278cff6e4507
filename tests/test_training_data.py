"""Training data: readers and validation, loss masks, packing, split, preview and the Batcher.

Two real tokenizers: a ChatML byte-level BPE built here with the tokenizers library (has a chat
template) and the bundled-style stories260K Llama folder (no template: the plain fallback).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from lmstudio_lite.checkpoints.tokenizer import Tokenizer
from lmstudio_lite.training.data import (
    IGNORE, Batcher, DataError, Example, build_examples, prepare_data, preview, read_rows, split_train_val,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
from shared_data import STORIES  # noqa: E402
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "What color is the sky? The sky is blue. Translate English to French: good morning, bonjour.",
    "Once upon a time a small cat lived in a house by the sea. The end.",
    "Instruction: add two numbers. Input: 2 and 3. Output: 5.",
]


@pytest.fixture(scope="module")
def chatml(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("chatml")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return Tokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def stories() -> Tokenizer:
    return Tokenizer.from_folder(STORIES)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


PC = {"prompt": "What color is the sky?", "completion": "Blue."}


# ---- validation: every message names the file and, where there is one, the line ------------------
@pytest.mark.parametrize("name, content, line, words", [
    ("empty.jsonl", "", None, "empty"),
    ("blank.txt", "  \n\n \n", None, "empty"),
    ("latin.txt", b"hello\nwor\xff\xfeld\n", 2, "not UTF-8"),
    ("bin.jsonl", b'{"text": "a"}\n\x00\x01\x02binary', 2, "binary"),
    ("bad.jsonl", jsonl(PC, PC, '{"prompt": "x", "completion": }'), 3, "malformed JSON"),
    ("list.jsonl", jsonl(PC, "[1, 2]"), 2, "JSON object"),
    ("missing.jsonl", jsonl(PC, PC, PC, PC, PC, PC, {"prompt": "only a prompt"}), 7, "missing field 'completion'"),
    ("nofields.jsonl", jsonl({"question": "q", "reply": "r"}), 1, "no known fields"),
    ("mixed.jsonl", jsonl(PC, PC, {"text": "raw"}, PC), 3, "mixed formats"),
    ("type.jsonl", jsonl({"prompt": "p", "completion": 3}), 1, "must be a string"),
    ("emptyans.jsonl", jsonl({"instruction": "do it", "output": "  "}), 1, "'output' is empty"),
    ("chat.jsonl", jsonl({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "?"}]}),
     1, "assistant"),
    ("role.jsonl", jsonl({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
     1, "role 'bot'"),
    ("one.csv", "source,target\nhello,bonjour\njust one column\n", 3, "expected 2 columns"),
    ("one.tsv", "hello\tbonjour\nno tab here\n", 2, "expected 2 columns"),
    ("three.csv", "a,b\nc,d,e\n", 2, "found 3"),
    ("emptycell.tsv", "hello\t\n", 1, "target column is empty"),
    ("header_only.csv", "source,target\n", None, "no data rows"),
    ("data.parquet", "whatever", None, "unsupported file type '.parquet'"),
    ("noext", "whatever", None, "unsupported file type"),
])
def test_bad_files_are_reported_with_file_and_line(tmp_path, name, content, line, words):
    with pytest.raises(DataError) as info:
        read_rows(write(tmp_path, name, content))
    err = info.value
    assert err.line == line
    assert words in str(err)
    assert str(err).startswith(name + (f" line {line}:" if line else ":"))


def test_too_little_data_for_one_batch(tmp_path, chatml):
    path = write(tmp_path, "small.jsonl", jsonl(*[PC] * 4))
    with pytest.raises(DataError, match=r"small.jsonl: too little data for one batch: 3 training examples "
                                        r"\(1 more held out"):
        prepare_data(path, chatml, seq_len=64, batch_size=4)
    assert len(prepare_data(path, chatml, seq_len=64, batch_size=3).train) == 3


def test_bom_and_blank_lines_are_accepted(tmp_path):
    raw = read_rows(write(tmp_path, "d.jsonl", "\ufeff" + jsonl(PC) + "\n\n" + jsonl(PC)))
    assert raw.format == "prompt_completion" and raw.line_numbers == [1, 4]


# ---- detection and normalisation ---------------------------------------------------------------------
def test_each_jsonl_format_is_detected_and_normalised(tmp_path):
    cases = {
        "text": ({"text": "A story."}, {"text": "A story."}),
        "prompt_completion": (PC, {"messages": [{"role": "user", "content": PC["prompt"]},
                                                {"role": "assistant", "content": "Blue."}]}),
        "instruction": ({"instruction": "Add.", "input": "2 and 3", "output": "5"},
                        {"messages": [{"role": "user", "content": "Add.\n\n2 and 3"},
                                      {"role": "assistant", "content": "5"}]}),
        "messages": ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello."}]}, None),
    }
    for fmt, (row, expected) in cases.items():
        raw = read_rows(write(tmp_path, f"{fmt}.jsonl", jsonl(row, row)))
        assert raw.format == fmt and len(raw.rows) == 2 and raw.line_numbers == [1, 2]
        assert raw.rows[0] == (expected or row)
    no_input = read_rows(write(tmp_path, "i.jsonl", jsonl({"instruction": "Say hi.", "input": "", "output": "hi"})))
    assert no_input.rows[0]["messages"][0]["content"] == "Say hi."


def test_sample_assets_are_detected(stories):
    assert read_rows(ASSETS / "sample_chat.jsonl").format == "messages"
    assert read_rows(ASSETS / "sample_stories.txt").format == "raw_text"
    pairs = read_rows(ASSETS / "sample_translate_en_fr.tsv")
    assert pairs.format == "pairs" and pairs.pair_header == ("en", "fr") and len(pairs.rows) == 40
    assert pairs.line_numbers[0] == 2
    for name in ("sample_chat.jsonl", "sample_stories.txt", "sample_translate_en_fr.tsv"):
        data = prepare_data(ASSETS / name, stories, seq_len=128, batch_size=4)
        assert data.train and data.val and data.preview["rendered"]


def test_pairs_header_detection_and_task_prompt(tmp_path, chatml):
    quoted = write(tmp_path, "q.csv", 'hello,"bonjour, ami"\n"two\nlines",deux\nthree,trois\n')
    raw = read_rows(quoted)
    assert raw.pair_header is None and raw.line_numbers == [1, 2, 4]
    assert raw.rows[0] == {"source": "hello", "target": "bonjour, ami"} and raw.rows[1]["source"] == "two\nlines"
    assert preview(raw, build_examples(raw, chatml, 64), chatml, 64)["task_prompt"] == "Transform:"
    tsv = read_rows(write(tmp_path, "t.tsv", 'English\tFrench\nHe said "hi"\tIl a dit "salut"\n'))
    assert tsv.pair_header == ("English", "French") and tsv.rows[0]["source"] == 'He said "hi"'
    summary = read_rows(write(tmp_path, "s.csv", "document,summary\nA long text.,Short.\n"))
    examples = build_examples(summary, chatml, 64)
    assert chatml.decode(examples[0].input_ids).startswith("user\nSummarize:\nA long text.")
    custom = build_examples(tsv, chatml, 64, task_prompt="Traduire :")
    assert "user\nTraduire :\nHe said" in chatml.decode(custom[0].input_ids)


# ---- loss masks ----------------------------------------------------------------------------------------
def _check_mask(tok: Tokenizer, messages: list[dict], ex: Example) -> None:
    prompt_ids = tok.encode_chat(messages[:-1], add_generation_prompt=True)
    k = len(prompt_ids)
    assert ex.input_ids[:k] == prompt_ids, "the prompt is tokenized exactly as chat will tokenize it"
    assert ex.labels[:k] == [IGNORE] * k
    loss = [label for label in ex.labels if label != IGNORE]
    assert loss == ex.input_ids[k:k + len(loss)], "loss tokens are one contiguous run right after the prompt"
    assert loss[-1] == tok.eos_ids[0], "the end-of-turn token is learned"
    assert tok.decode(loss) == messages[-1]["content"]
    assert ex.labels[k + len(loss):] == [IGNORE] * (len(ex.labels) - k - len(loss))
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == tok.render_chat(messages, False)


@pytest.mark.parametrize("tok_name", ["chatml", "stories"])
def test_loss_covers_only_the_answer(tmp_path, request, tok_name):
    tok = request.getfixturevalue(tok_name)
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                         {"role": "assistant", "content": "Hello, friend."}, {"role": "user", "content": "Sky?"},
                         {"role": "assistant", "content": "The sky is blue."}]}
    short = {"messages": [{"role": "user", "content": PC["prompt"]}, {"role": "assistant", "content": "Blue."}]}
    raw = read_rows(write(tmp_path, "c.jsonl", jsonl(chat, short)))
    examples = build_examples(raw, tok, seq_len=256)
    for row, ex in zip(raw.rows, examples):
        assert len(ex.input_ids) == len(ex.labels)
        _check_mask(tok, row["messages"], ex)


def test_chatml_trailing_newline_after_end_of_turn_is_not_learned(tmp_path, chatml):
    ex = build_examples(read_rows(write(tmp_path, "c.jsonl", jsonl(PC))), chatml, 256)[0]
    assert chatml.decode(ex.input_ids[-1:]) == "\n" and ex.labels[-1] == IGNORE
    assert ex.labels[-2] == chatml.eos_ids[0]


def test_preview_marks_the_answer(tmp_path, chatml):
    raw = read_rows(write(tmp_path, "c.jsonl", jsonl(*[PC] * 5)))
    examples = build_examples(raw, chatml, 256)
    info = preview(raw, examples, chatml, 256, n=2)
    assert info["rendered"][0] == ("<|im_start|>user\nWhat color is the sky?<|im_end|>\n"
                                   "<|im_start|>assistant\n«Blue.<|im_end|>»\n")
    assert len(info["examples"]) == 2
    tokens = info["examples"][0]
    assert [text for text, _ in tokens] == chatml.token_strings(examples[0].input_ids)
    assert "".join(text for text, loss in tokens if loss) == "Blue.<|im_end|>"
    assert info["format"] == "prompt_completion" and info["rows"] == 5 and info["truncated_rows"] == 0
    assert info["tokens"] == sum(len(ex.input_ids) for ex in examples)
    assert sum(count for _, count in info["histogram"]) == 5 and info["histogram"][-1][0] == ">256"
    assert info["warnings"] == []


def test_long_rows_are_truncated_and_counted(tmp_path, chatml):
    long_answer = {"prompt": "Tell a story.", "completion": "Once upon a time a small cat lived by the sea. " * 8}
    long_prompt = {"prompt": "Once upon a time " * 40, "completion": "The end."}
    raw = read_rows(write(tmp_path, "l.jsonl", jsonl(PC, long_answer, long_prompt)))
    examples = build_examples(raw, chatml, seq_len=32)
    assert len(examples) == 2, "the row whose prompt fills seq_len carries no loss and is dropped"
    assert all(len(ex.input_ids) <= 32 for ex in examples) and len(examples[1].input_ids) == 32
    assert examples[1].labels[-1] != IGNORE
    info = preview(raw, examples, chatml, 32)
    assert info["truncated_rows"] == 2 and info["histogram"][-1] == (">32", 2)
    assert any("dropped" in w and "line 3" in w for w in info["warnings"])


def test_template_that_rewrites_earlier_turns_falls_back_to_the_answer_split(tmp_path, chatml):
    class Rewriting:
        """A chat template that prints a marker only once an answer is present (like reasoning strippers)."""
        eos_ids, has_chat_template = chatml.eos_ids, True
        encode = staticmethod(chatml.encode)

        def render_chat(self, messages, add_generation_prompt=True):
            head = "done:" if messages[-1]["role"] == "assistant" else ""
            return head + chatml.render_chat(messages, add_generation_prompt)

    ex = build_examples(read_rows(write(tmp_path, "c.jsonl", jsonl(PC))), Rewriting(), 256)[0]
    assert chatml.decode([t for t in ex.labels if t != IGNORE]) == "Blue."


# ---- raw text packing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tok_name", ["chatml", "stories"])
def test_raw_text_is_packed_into_full_blocks(tmp_path, request, tok_name):
    tok = request.getfixturevalue(tok_name)
    docs = ["Once upon a time a small cat lived in a house by the sea.", "The sky is blue.\nThe end.",
            "What color is the sky? " * 5]
    raw = read_rows(write(tmp_path, "s.txt", "\n\n\n".join(docs) + "\n"))
    assert raw.format == "raw_text" and [r["text"] for r in raw.rows] == docs and raw.line_numbers == [1, 4, 8]
    examples = build_examples(raw, tok, seq_len=16)
    stream = [t for doc in docs for t in tok.encode(doc) + tok.eos_ids[:1]]
    assert [t for ex in examples for t in ex.input_ids] == stream
    assert all(len(ex.input_ids) == 16 for ex in examples[:-1]) and 0 < len(examples[-1].input_ids) <= 16
    assert all(ex.labels == ex.input_ids for ex in examples)
    info = preview(raw, examples, tok, 16)
    assert info["truncated_rows"] == 0 and info["tokens"] == len(stream)
    assert info["rendered"][0].startswith("«") and info["rendered"][0].endswith("»")


def test_jsonl_text_rows_are_packed(tmp_path, chatml):
    raw = read_rows(write(tmp_path, "t.jsonl", jsonl({"text": "The sky is blue."}, {"text": "The end."})))
    examples = build_examples(raw, chatml, seq_len=8)
    assert raw.format == "text" and examples[0].labels == examples[0].input_ids
    assert chatml.eos_ids[0] in examples[0].input_ids + examples[-1].input_ids


# ---- split -----------------------------------------------------------------------------------------------
def _examples(n: int) -> list[Example]:
    return [Example([i] * (1 + i % 5), [i] * (1 + i % 5)) for i in range(n)]


def test_split_is_seeded_capped_and_disjoint():
    examples = _examples(100)
    train, val = split_train_val(examples, seed=3)
    assert len(val) == 5 and len(train) == 95
    assert {ex.input_ids[0] for ex in train} | {ex.input_ids[0] for ex in val} == set(range(100))
    assert split_train_val(examples, seed=3) == (train, val)
    assert split_train_val(examples, seed=4)[1] != val
    assert len(split_train_val(_examples(10_000))[1]) == 200
    assert len(split_train_val(_examples(2))[1]) == 1 and split_train_val(_examples(1)) == (_examples(1), [])
    assert split_train_val(examples, val_fraction=0.0)[1] == []


# ---- batches ----------------------------------------------------------------------------------------------
def _rows(ids: torch.Tensor) -> list[int]:
    return ids[:, 0].tolist()  # every example's first token is its index


def test_batcher_pads_and_masks_padding():
    ids, labels = next(Batcher(_examples(8), batch_size=4, seed=0, pad_id=99))
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.shape[0] == 4
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        n = 1 + row_ids[0] % 5
        assert row_ids[n:] == [99] * (ids.shape[1] - n) and row_labels[n:] == [IGNORE] * (ids.shape[1] - n)


def test_batcher_epochs_cover_the_data_and_reshuffle():
    batcher = Batcher(_examples(10), batch_size=3, seed=1, pad_id=0)
    assert batcher.steps_per_epoch == 3
    first = [r for _ in range(3) for r in _rows(next(batcher)[0])]
    assert batcher.epoch == 1 and len(set(first)) == 9
    second = [r for _ in range(3) for r in _rows(next(batcher)[0])]
    assert batcher.epoch == 2 and second != first


def test_batcher_resume_equals_uninterrupted():
    examples = _examples(23)
    straight = Batcher(examples, batch_size=4, seed=7, pad_id=0)
    expected = [next(straight) for _ in range(20)]
    first = Batcher(examples, batch_size=4, seed=7, pad_id=0)
    got = [next(first) for _ in range(9)]
    state = json.loads(json.dumps(first.state_dict()))  # it goes into a checkpoint file
    resumed = Batcher(examples, batch_size=4, seed=7, pad_id=0)
    resumed.load_state_dict(state)
    got += [next(resumed) for _ in range(11)]
    for (a_ids, a_labels), (b_ids, b_labels) in zip(expected, got):
        assert torch.equal(a_ids, b_ids) and torch.equal(a_labels, b_labels)
    with pytest.raises(ValueError, match="23 examples"):
        Batcher(_examples(30), batch_size=4).load_state_dict(state)


def test_shards_together_read_the_single_process_batch():
    examples = _examples(37)
    single = Batcher(examples, batch_size=6, seed=5, pad_id=0)
    ranks = [Batcher(examples, batch_size=3, seed=5, pad_id=0).shard(r, 2) for r in range(2)]
    assert single.steps_per_epoch == ranks[0].steps_per_epoch == 6
    for _ in range(14):  # past two epoch boundaries
        whole = _rows(next(single)[0])
        parts = [_rows(next(rank)[0]) for rank in ranks]
        assert parts[0] == whole[0::2] and parts[1] == whole[1::2]
        assert ranks[0].epoch == ranks[1].epoch == single.epoch
    with pytest.raises(ValueError, match="cannot fill one batch"):
        Batcher(_examples(5), batch_size=3, rank=0, world=2)
