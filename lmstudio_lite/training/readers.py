"""Training-data files -> normalised rows, with every problem reported by file name and line.

Formats, detected from the extension and then the content:

- ``.txt``: raw text (format ``raw_text``). Documents are separated by blank lines; each becomes
  ``{"text"}`` and is later packed into fixed-length blocks.
- ``.jsonl``: one JSON object per line, all lines in the same format, detected from the keys:
  ``messages`` (a chat; the last message is the assistant answer trained on), ``prompt``/``completion``,
  ``instruction``/``input``/``output`` (``input`` optional) or ``text``. Chat-like rows are normalised
  to ``{"messages": [...]}``: prompt -> user, completion -> assistant; ``instruction`` + ``input`` ->
  one user message ``"instruction\\n\\ninput"``, output -> assistant.
- ``.csv`` / ``.tsv``: two columns, source then target (format ``pairs``), rows ``{"source", "target"}``.
  The first row is a header when both cells are known column names (source/target, input/output,
  en/fr, english/french, ...); a TSV is read without quote handling, since quotes in TSV are text.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LiteError
from ..messages import Message

FORMATS = ("text", "raw_text", "prompt_completion", "instruction", "messages", "pairs")
EXTENSIONS = (".txt", ".jsonl", ".csv", ".tsv")
ROLES = ("system", "user", "assistant", "tool")

# JSONL formats: the key that identifies each (checked in this order) and the fields it requires.
_SIGNATURES = (
    ("messages", ("messages",), ("messages",)),
    ("prompt_completion", ("prompt", "completion"), ("prompt", "completion")),
    ("instruction", ("instruction", "output"), ("instruction", "output")),
    ("text", ("text",), ("text",)),
)

LANGUAGES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ar": "Arabic",
    "pl": "Polish", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "cs": "Czech", "el": "Greek",
}
COLUMN_EMPTY_KEYS = {"source": "data.source_empty", "target": "data.target_empty"}
_HEADER_NAMES = {
    "source", "target", "src", "tgt", "input", "output", "prompt", "completion", "question", "answer",
    "text", "summary", "document", "article", "instruction", "response", "original", "translation",
} | set(LANGUAGES) | {name.lower() for name in LANGUAGES.values()}


# The longest line read. Tokenizing one line builds an encoding of ~150 bytes per
# character (a 35 MB single-line file took 5.4 GB); real rows (a chat, a document's
# paragraph) are far shorter. A longer line is refused with its number.
MAX_LINE_CHARS = 1_000_000


class DataError(LiteError, ValueError):
    """A training-data problem, worded for the user: ``"data.jsonl line 7: missing field 'completion'"``
    (a Message, so the page can say it in its language; ``problem`` may be one too)."""

    def __init__(self, path: str | Path | None, problem: str, line: int | None = None):
        self.path, self.problem, self.line = path, problem, line
        where = Path(path).name if path is not None else Message("data.unnamed")
        super().__init__(Message("data.at", file=where, problem=problem) if line is None
                         else Message("data.at_line", file=where, line=line, problem=problem))


@dataclass
class RawData:
    """Rows read from one file; ``line_numbers[i]`` is the 1-based line where row i starts."""

    format: str
    rows: list[dict]
    line_numbers: list[int]
    pair_header: tuple[str, str] | None = None
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)


def read_rows(path: str | Path) -> RawData:
    """Read and validate a training file; raises DataError naming the first bad line."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise DataError(path, Message("data.bad_type", ext=repr(ext or "(none)"), types=", ".join(EXTENSIONS)))
    text = _read_text(path)
    _check_line_lengths(path, text)
    if ext == ".txt":
        return _read_raw_text(path, text)
    if ext == ".jsonl":
        return _read_jsonl(path, text)
    return _read_pairs(path, text, delimiter="\t" if ext == ".tsv" else ",")


# ---- bytes -> text ---------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(path, Message("data.unreadable", reason=e.strerror or str(e))) from e
    if not data.strip():
        raise DataError(path, Message("data.empty"))
    if b"\x00" in data:
        # Text files never hold NUL; UTF-16 files and binaries do, and would decode to garbage.
        nul = data.index(b"\x00")
        raise DataError(path, Message("data.binary"), _line_at(data, nul))
    try:
        return data.decode("utf-8-sig")  # -sig: spreadsheet exports often start with a BOM
    except UnicodeDecodeError as e:
        raise DataError(path, Message("data.not_utf8", byte=f"0x{data[e.start]:02x}"),
                        _line_at(data, e.start)) from e


def _check_line_lengths(path: Path, text: str, limit: int = MAX_LINE_CHARS):
    """DataError naming the first line longer than ``limit`` characters (found without
    splitting the text: one scan of newline positions)."""
    start, number = 0, 1
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        if end - start > limit:
            raise DataError(path, Message("data.long_line", chars=f"{end - start:,}", limit=f"{limit:,}"), number)
        start, number = end + 1, number + 1


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


# ---- .txt -----------------------------------------------------------------------------------------
def _read_raw_text(path: Path, text: str) -> RawData:
    rows, lines, current = [], [], []
    for number, line in enumerate(text.splitlines() + [""], start=1):  # "" closes the last document
        if line.strip():
            current.append((number, line))
        elif current:
            rows.append({"text": "\n".join(part for _, part in current)})
            lines.append(current[0][0])
            current = []
    return RawData("raw_text", rows, lines, path=path)


# ---- .jsonl ---------------------------------------------------------------------------------------
def _read_jsonl(path: Path, text: str) -> RawData:
    rows, lines, fmt, first_line = [], [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        obj = _parse_json_object(path, line, number)
        kind = _detect_kind(path, obj, number)
        if fmt is None:
            fmt, first_line = kind, number
        elif kind != fmt:
            raise DataError(path, Message("data.mixed", kind=repr(kind), first_line=first_line, fmt=repr(fmt)),
                            number)
        rows.append(_normalise(path, fmt, obj, number))
        lines.append(number)
    return RawData(fmt, rows, lines, path=path)


def _parse_json_object(path: Path, line: str, number: int) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(path, Message("data.bad_json", error=e.msg, column=e.colno), number) from e
    if not isinstance(obj, dict):
        raise DataError(path, Message("data.not_object", got=type(obj).__name__), number)
    return obj


def _detect_kind(path: Path, obj: dict, number: int) -> str:
    for kind, keys, _ in _SIGNATURES:
        if any(key in obj for key in keys):
            return kind
    found = ", ".join(sorted(obj)) or Message("train.none")
    raise DataError(path, Message("data.no_known_fields", found=found), number)


def _normalise(path: Path, fmt: str, obj: dict, number: int) -> dict:
    required = dict((kind, fields) for kind, _, fields in _SIGNATURES)[fmt]
    for name in required:
        if name not in obj:
            raise DataError(path, Message("data.missing_field", name=repr(name)), number)
    if fmt == "messages":
        return {"messages": _check_messages(path, obj["messages"], number)}
    strings = {name: _string_field(path, obj, name, number) for name in required}
    if fmt == "text":
        return {"text": strings["text"]}
    if fmt == "prompt_completion":
        return {"messages": _turn(strings["prompt"], strings["completion"])}
    extra = obj.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(path, Message("data.not_string", name="'input'", got=type(extra).__name__), number)
    prompt = f"{strings['instruction']}\n\n{extra}" if extra.strip() else strings["instruction"]
    return {"messages": _turn(prompt, strings["output"])}


def _string_field(path: Path, obj: dict, name: str, number: int) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise DataError(path, Message("data.not_string", name=repr(name), got=type(value).__name__), number)
    if not value.strip():
        raise DataError(path, Message("data.empty_field", name=repr(name)), number)
    return value


def _turn(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _check_messages(path: Path, messages, number: int) -> list[dict]:
    if not isinstance(messages, list) or len(messages) < 2:
        raise DataError(path, Message("data.few_messages"), number)
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(path, Message("data.message_not_object", i=i), number)
        for name in ("role", "content"):
            if name not in message:
                raise DataError(path, Message("data.message_missing", i=i, name=repr(name)), number)
        if message["role"] not in ROLES:
            raise DataError(path, Message("data.bad_role", i=i, role=repr(message["role"]), roles=", ".join(ROLES)),
                            number)
        if not isinstance(message["content"], str):
            raise DataError(path, Message("data.content_not_string", i=i), number)
        clean.append({"role": message["role"], "content": message["content"]})
    if clean[-1]["role"] != "assistant" or not clean[-1]["content"].strip():
        # The final assistant message is what the loss trains on; without it the row teaches nothing.
        raise DataError(path, Message("data.no_answer"), number)
    return clean


# ---- .csv / .tsv ----------------------------------------------------------------------------------
def _read_pairs(path: Path, text: str, delimiter: str) -> RawData:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows, lines, header = [], [], None
    start = 1
    try:
        for cells in reader:
            number, start = start, reader.line_num + 1  # a quoted cell may span lines: report where it began
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != 2:
                raise DataError(path, Message("data.columns", n=len(cells), hint=_delimiter_hint(delimiter, cells)),
                                number)
            if not rows and header is None and _is_header(cells):
                header = (cells[0].strip(), cells[1].strip())
                continue
            for name, cell in zip(("source", "target"), cells):
                if not cell.strip():
                    raise DataError(path, Message(COLUMN_EMPTY_KEYS[name]), number)
            rows.append({"source": cells[0], "target": cells[1]})
            lines.append(number)
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(path, Message("data.bad_table", kind=kind, error=str(e)), start) from e
    if not rows:
        raise DataError(path, Message("data.only_header"))
    return RawData("pairs", rows, lines, pair_header=header, path=path)


def _delimiter_hint(delimiter: str, cells: list[str]) -> str:
    if len(cells) == 1 and ("\t" if delimiter == "," else ",") in cells[0]:
        return Message("data.wrong_extension", kind="TSV" if delimiter == "," else "CSV")
    return ""


def _is_header(cells: list[str]) -> bool:
    return all(_header_word(cell) in _HEADER_NAMES for cell in cells)


def _header_word(cell: str) -> str:
    # "Source text", "target_lang", "EN": compare the first word, lower-cased.
    words = re.split(r"[\s_\-]+", cell.strip().lower())
    return words[0] if words else ""


def language_of(column: str) -> str | None:
    """'en', 'English', 'en_text' -> 'English'; None when the column name is not a language we know."""
    word = _header_word(column)
    if word in LANGUAGES:
        return LANGUAGES[word]
    names = {name.lower(): name for name in LANGUAGES.values()}
    return names.get(word)


def task_prompt_for(header: tuple[str, str] | None) -> str:
    """The instruction put before each source of a pairs file, guessed from its header."""
    if header:
        source, target = (language_of(column) for column in header)
        if source and target:
            return f"Translate {source} to {target}:"
        if _header_word(header[1]) == "summary":
            return "Summarize:"
    return "Transform:"
