"""Which rows of ../shared/data the bundled model never trains on.

Shared by the data builder (recipes/default_model/build_data.py) and the
evaluator (bench/eval_model.py) so both agree on the held-out split.
"""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")

HELDOUT_MOD = 40  # 1 pair in 40 is held out of training


def is_heldout(source_text: str) -> bool:
    """Stable across runs and machines: decided by a checksum of the source side."""
    return zlib.crc32(source_text.strip().encode("utf-8")) % HELDOUT_MOD == 0


def read_pairs(name: str) -> list[tuple[str, str]]:
    pairs = []
    for line in (SHARED / name).read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].strip() and parts[1].strip():
            pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def split_pairs(name: str) -> tuple[list, list]:
    """(train pairs, held-out pairs); every English sentence lands wholly on one side."""
    train, held = [], []
    for en, other in read_pairs(name):
        (held if is_heldout(en) else train).append((en, other))
    return train, held


def train_stories() -> list[str]:
    text = (SHARED / "tinystories_train_sample.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()]


def valid_paragraphs(n: int | None = None) -> list[str]:
    """Blank-line-separated paragraphs of the TinyStories validation sample (never trained on)."""
    text = (SHARED / "tinystories_valid_sample.txt").read_text(encoding="utf-8")
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return paras[:n] if n else paras


_SENT = re.compile(r"(?<=[.!?])[\"”]?\s+")


def lead_sentence(story: str) -> str:
    """The templated one-sentence summary used for story summarization pairs."""
    first = _SENT.split(story.strip().replace("\n", " "), maxsplit=1)[0].strip()
    return first


def summary_pairs(split: str) -> list[tuple[str, str]]:
    """QMSum "Summarize ..." span pairs (document, summary) of one split."""
    out = []
    for line in (SHARED / "summarization.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        r = json.loads(line)
        if r["kind"] == "span" and r["query"].startswith("Summarize") and r["split"] == split:
            out.append((r["document"], r["summary"]))
    return out
