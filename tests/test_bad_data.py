"""Training data that would take the machine down is refused by line, before tokenizing."""
from __future__ import annotations

import json
import time

import pytest

from lmstudio_lite.training.readers import MAX_LINE_CHARS, DataError, read_rows


def test_a_35_mb_single_line_file_is_refused_quickly(tmp_path):
    """It used to be read whole and tokenized as one document: 5.4 GB for a 35 MB file."""
    path = tmp_path / "one-line.txt"
    path.write_text("word " * 7_000_000)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"one-line.txt line 1: this line is 35,000,000 characters"):
        read_rows(path)
    assert time.perf_counter() - start < 5.0


def test_the_long_line_is_named_in_a_jsonl_file(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "short"}, {"text": "also short"}, {"text": "x" * (MAX_LINE_CHARS + 1)}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match="line 3"):
        read_rows(path)


def test_lines_at_the_limit_still_read(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("a" * (MAX_LINE_CHARS - 10) + "\n\nsecond document\n")
    assert len(read_rows(path).rows) == 2
