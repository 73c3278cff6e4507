"""Training examples from a data file: rendering, loss masks, packing, the validation split, batches.

The trainer codes against this module: ``prepare_data`` (read + validate + build + split + preview),
then ``Batcher`` over ``PreparedData.train``. File parsing lives in ``readers.py``.

How rows become token sequences (``Example.labels`` are NOT shifted; -100 means "no loss"):

- Raw text (``.txt`` and JSONL ``text``): each document is encoded with the tokenizer's own special
  tokens (BOS where the model uses one), followed by EOS, all concatenated and cut into blocks of
  ``seq_len`` tokens (the last may be shorter). Every token carries loss.
- Chat-like rows (``messages``, ``prompt``/``completion``, ``instruction``/``output``) go through
  ``Tokenizer.render_chat``, the same renderer chat uses, so a model is trained on exactly the text it
  is later prompted with. The prompt is ``render_chat(messages[:-1], add_generation_prompt=True)``; the
  loss covers only what follows it: the final assistant answer and the first end-of-turn/EOS token after
  it (nothing after that, e.g. the template's trailing newline, is learned). Models without a chat
  template render through ``chat_template.FALLBACK_TEMPLATE`` (this is what ``render_chat`` does),
  the plain template used for training and chat alike::

      <bos>### User:
      {prompt}

      ### Assistant:
      {answer}<eos>

- Pairs (``.csv``/``.tsv``): a user turn ``"{task_prompt}\\n{source}"`` answered by ``target``, then as
  above. ``task_prompt`` defaults to ``"Translate English to French:"`` for language-named columns
  (en/fr, English/French, ...), ``"Summarize:"`` for a ``summary`` target column, else ``"Transform:"``.

Sequences longer than ``seq_len`` are cut from the right; a row whose prompt alone fills ``seq_len``
keeps no answer token and is dropped. Both are counted in the preview's warnings.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstudio_lite.checkpoints.chat_template import ChatTemplateError
from lmstudio_lite.messages import Message
from lmstudio_lite.training.readers import DataError, RawData, read_rows, task_prompt_for

__all__ = ["IGNORE", "DataError", "RawData", "Example", "PreparedData", "Batcher", "read_rows",
           "build_examples", "split_train_val", "preview", "prepare_data"]

IGNORE = -100  # the label torch's cross_entropy skips (its ignore_index default)
_MARK_OPEN, _MARK_CLOSE = "«", "»"


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # same length as input_ids, unshifted; IGNORE where no loss


@dataclass
class PreparedData:
    train: list[Example]
    val: list[Example]
    preview: dict
    format: str


@dataclass
class BuildStats:
    """What building saw, for the preview: untruncated token length per row (documents for raw text)."""

    row_lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    dropped_lines: list[int] = field(default_factory=list)
    task_prompt: str | None = None


# ---- building ---------------------------------------------------------------------------------------
def build_examples(raw: RawData, tokenizer, seq_len: int, task_prompt: str | None = None) -> list[Example]:
    """Token sequences of at most ``seq_len`` tokens with their loss masks (see the module docstring)."""
    return _build(raw, tokenizer, seq_len, task_prompt)[0]


def _build(raw: RawData, tokenizer, seq_len: int, task_prompt: str | None) -> tuple[list[Example], BuildStats]:
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (one input and one target token), got {seq_len}")
    if raw.format in ("text", "raw_text"):
        return _pack(raw, tokenizer, seq_len)
    stats = BuildStats()
    if raw.format == "pairs":
        stats.task_prompt = task_prompt or task_prompt_for(raw.pair_header)
    examples = []
    for row, line in zip(raw.rows, raw.line_numbers):
        messages = row.get("messages") or _pair_messages(row, stats.task_prompt)
        ids, labels = _masked_sequence(tokenizer, messages, raw.path, line)
        stats.row_lengths.append(len(ids))
        if len(ids) > seq_len:
            stats.truncated += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
        if all(label == IGNORE for label in labels):
            stats.dropped_lines.append(line)  # the prompt filled seq_len: nothing left to learn
            continue
        examples.append(Example(ids, labels))
    return examples, stats


def _pair_messages(row: dict, task_prompt: str) -> list[dict]:
    return [{"role": "user", "content": f"{task_prompt}\n{row['source']}"},
            {"role": "assistant", "content": row["target"]}]


def _pack(raw: RawData, tokenizer, seq_len: int) -> tuple[list[Example], BuildStats]:
    """Documents joined by EOS into one stream, cut into seq_len blocks: no padding is wasted."""
    stats, stream = BuildStats(), []
    eos = tokenizer.eos_ids[:1]
    for row in raw.rows:
        ids = tokenizer.encode(row["text"], add_special_tokens=True)
        stats.row_lengths.append(len(ids))
        stream += ids + (eos if ids[-1:] != eos else [])
    blocks = [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)]
    return [Example(block, list(block)) for block in blocks], stats


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool, path, line: int) -> str:
    try:
        return tokenizer.render_chat(messages, add_generation_prompt=add_generation_prompt)
    except ChatTemplateError as e:
        raise DataError(path, Message("data.template_refused", error=str(e)), line) from e


def _masked_sequence(tokenizer, messages: list[dict], path, line: int) -> tuple[list[int], list[int]]:
    """Token ids of the whole conversation and labels that keep only the final answer (+ end of turn)."""
    prefix = _render(tokenizer, messages[:-1], True, path, line)
    full = _render(tokenizer, messages, False, path, line)
    if full.startswith(prefix):
        head, tail = prefix, full[len(prefix):]
    else:
        # Some templates rewrite earlier turns once an answer follows; split where the answer starts.
        cut = full.rfind(messages[-1]["content"].strip())
        if cut < 0:
            raise DataError(path, Message("data.template_loses_answer"), line)
        head, tail = full[:cut], full[cut:]
    head_ids = tokenizer.encode(head, add_special_tokens=False)
    ids = tokenizer.encode(full, add_special_tokens=False)
    if ids[:len(head_ids)] != head_ids:
        # BPE merged across the prompt/answer boundary. Encode the parts apart: that is also what
        # generation sees (the prompt is encoded alone, then the answer tokens are produced).
        ids = head_ids + tokenizer.encode(tail, add_special_tokens=False)
    answer = ids[len(head_ids):]
    keep = _through_end_of_turn(answer, set(tokenizer.eos_ids))
    labels = [IGNORE] * len(head_ids) + answer[:keep] + [IGNORE] * (len(answer) - keep)
    return ids, labels


def _through_end_of_turn(answer: list[int], eos_ids: set[int]) -> int:
    """How many answer tokens carry loss: up to and including the first EOS/end-of-turn id."""
    for i, token in enumerate(answer):
        if token in eos_ids:
            return i + 1
    return len(answer)


# ---- split ------------------------------------------------------------------------------------------
def split_train_val(
    examples: list[Example], val_fraction: float = 0.05, max_val: int = 200, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """A seeded held-out set: round(n * val_fraction), at least 1 when n >= 2, at most max_val.

    ``val_fraction=0`` means no validation set. Both parts keep the original order.
    """
    n = len(examples)
    if n < 2 or val_fraction <= 0 or max_val <= 0:
        return list(examples), []
    n_val = min(max_val, max(1, round(n * val_fraction)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [examples[i] for i in sorted(held)]


# ---- preview ----------------------------------------------------------------------------------------
def preview(
    raw: RawData, examples: list[Example], tokenizer, seq_len: int, n: int = 3,
    stats: BuildStats | None = None, task_prompt: str | None = None,
) -> dict:
    """What the user should see before training: format, sizes, lengths and the first examples marked up.

    ``examples[i]`` in the result is a list of (token text, carries loss); ``rendered[i]`` is the exact
    text with loss-carrying parts wrapped in «...». ``stats`` (from building) avoids encoding twice.
    """
    if stats is None:
        stats = _build(raw, tokenizer, seq_len, task_prompt)[1]
    shown = examples[:n]
    return {
        "format": raw.format,
        "rows": len(raw.rows),
        "examples_count": len(examples),
        "tokens": sum(len(ex.input_ids) for ex in examples),
        "loss_tokens": sum(label != IGNORE for ex in examples for label in ex.labels),
        "truncated_rows": stats.truncated,
        "histogram": _histogram(stats.row_lengths, seq_len),
        "examples": [_token_marks(tokenizer, ex) for ex in shown],
        "rendered": [_marked_text(tokenizer, ex) for ex in shown],
        "task_prompt": stats.task_prompt,
        "warnings": raw.warnings + _warnings(raw, examples, tokenizer, seq_len, stats),
    }


def _token_marks(tokenizer, ex: Example) -> list[tuple[str, bool]]:
    return list(zip(tokenizer.token_strings(ex.input_ids), (label != IGNORE for label in ex.labels)))


def _marked_text(tokenizer, ex: Example) -> str:
    """Decode run by run, as differences of prefix decodes so spaces and multi-byte characters survive."""
    parts, start = [], 0
    before = ""
    for end in _run_ends(ex.labels):
        after = tokenizer.decode(ex.input_ids[:end], skip_special_tokens=False)
        piece = after[len(before):] if after.startswith(before) else after
        parts.append(f"{_MARK_OPEN}{piece}{_MARK_CLOSE}" if ex.labels[start] != IGNORE else piece)
        start, before = end, after
    return "".join(parts)


def _run_ends(labels: list[int]) -> list[int]:
    """Indices where a run of loss / no-loss tokens ends."""
    ends = [i for i in range(1, len(labels)) if (labels[i] == IGNORE) != (labels[i - 1] == IGNORE)]
    return ends + [len(labels)]


def _histogram(lengths: list[int], seq_len: int, buckets: int = 8) -> list[tuple[str, int]]:
    """Counts of row lengths in equal-width buckets up to seq_len, plus one bucket for longer rows."""
    width = max(1, -(-seq_len // buckets))
    edges = [(lo, min(lo + width - 1, seq_len)) for lo in range(1, seq_len + 1, width)]
    counts = [(f"{lo}-{hi}", sum(lo <= n <= hi for n in lengths)) for lo, hi in edges]
    return counts + [(f">{seq_len}", sum(n > seq_len for n in lengths))]


def _warnings(raw: RawData, examples: list[Example], tokenizer, seq_len: int, stats: BuildStats) -> list[Message]:
    """Messages (English as strings: the run's log.txt writes them; the page says them in its language)."""
    out = []
    if raw.format in ("text", "raw_text"):
        out.append(Message("data.packed", documents=len(raw.rows), blocks=len(examples), seq_len=seq_len))
    elif not tokenizer.has_chat_template:
        out.append(Message("data.no_template"))
    if stats.truncated:
        out.append(Message("data.cut", n=stats.truncated, rows=len(raw.rows), seq_len=seq_len))
    if stats.dropped_lines:
        lines = ", ".join(map(str, stats.dropped_lines[:10])) + (" ..." if len(stats.dropped_lines) > 10 else "")
        out.append(Message("data.dropped_one" if len(stats.dropped_lines) == 1 else "data.dropped",
                           n=len(stats.dropped_lines), seq_len=seq_len, lines=lines))
    return out


# ---- everything before training -----------------------------------------------------------------------
def prepare_data(
    path: str | Path, tokenizer, seq_len: int, batch_size: int,
    val_fraction: float = 0.05, seed: int = 0, task_prompt: str | None = None,
) -> PreparedData:
    """Read, validate, build, split and preview; DataError for anything that would stop training later."""
    raw = read_rows(path)
    examples, stats = _build(raw, tokenizer, seq_len, task_prompt)
    if not examples:
        raise DataError(path, Message("data.no_usable_rows", seq_len=seq_len))
    train, val = split_train_val(examples, val_fraction, seed=seed)
    if len(train) < batch_size:
        raise DataError(path, Message("data.too_little", train=len(train), val=len(val), batch_size=batch_size))
    info = preview(raw, examples, tokenizer, seq_len, stats=stats)
    info.update(train_examples=len(train), val_examples=len(val))
    return PreparedData(train, val, info, raw.format)


# ---- batches ----------------------------------------------------------------------------------------
class Batcher:
    """Endless, seeded batches: each epoch is a fresh permutation, incomplete last batches are dropped.

    With ``world > 1`` (DDP), a global batch of ``batch_size * world`` rows is taken in exactly the
    single-process order and rank r keeps rows r::world, so ranks read disjoint slices and together
    see what one process with the global batch size sees. ``state_dict`` holds (epoch, position) for
    an exact resume. ``__next__`` gives (input_ids [B, T], labels [B, T]) LongTensors, right-padded to
    the longest row of the batch; padding gets label IGNORE (causal attention never lets real tokens
    see the padding to their right, so the pad id's value does not matter).
    """

    def __init__(self, examples: list[Example], batch_size: int, seed: int = 0, pad_id: int | None = None,
                 rank: int = 0, world: int = 1):
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad batch/shard settings: batch_size={batch_size}, rank={rank}, world={world}")
        if len(examples) < batch_size * world:
            raise ValueError(f"{len(examples)} examples cannot fill one batch of {batch_size} x {world} ranks")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.pad_id = 0 if pad_id is None else pad_id
        self.rank, self.world = rank, world
        self.epoch, self.position = 0, 0
        self._order: tuple[int, list[int]] | None = None  # (epoch, permutation) cache

    def shard(self, rank: int, world: int) -> "Batcher":
        """The same stream, read as one of `world` DDP ranks (batch_size stays per rank)."""
        other = Batcher(self.examples, self.batch_size, self.seed, self.pad_id, rank, world)
        other.load_state_dict(self.state_dict())
        return other

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def steps_per_epoch(self) -> int:
        return len(self.examples) // self.global_batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "examples": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("examples", len(self.examples)) != len(self.examples):
            raise ValueError(f"batcher state is for {state['examples']} examples, this data has {len(self.examples)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = int(state.get("seed", self.seed))

    def __iter__(self) -> "Batcher":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        order = self._permutation(self.epoch)
        rows = order[self.position:self.position + self.global_batch][self.rank::self.world]
        self.position += self.global_batch
        if self.position + self.global_batch > len(self.examples):
            self.epoch, self.position = self.epoch + 1, 0  # the rest cannot fill a batch: next epoch
        return self._collate([self.examples[i] for i in rows])

    def _permutation(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            order = list(range(len(self.examples)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)  # str seeds hash stably across runs
            self._order = (epoch, order)
        return self._order[1]

    def _collate(self, batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ex.input_ids) for ex in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # [B, T]
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)  # [B, T]
        for i, ex in enumerate(batch):
            ids[i, :len(ex.input_ids)] = torch.tensor(ex.input_ids, dtype=torch.long)
            labels[i, :len(ex.labels)] = torch.tensor(ex.labels, dtype=torch.long)
        return ids, labels
