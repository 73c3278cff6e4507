"""The tokenizer of a model folder: tokenizers' tokenizer.json plus the Hugging Face config around it.

`Tokenizer.from_folder` reads tokenizer.json, tokenizer_config.json (special tokens, added tokens,
chat template), chat_template.jinja and generation_config.json (eos ids) and behaves like
transformers' fast tokenizer for the same folder: `encode(text)` equals `tokenizer(text)["input_ids"]`,
`decode` equals `tokenizer.decode`, `render_chat`/`encode_chat` equal
`apply_chat_template(..., tokenize=False / True)`. transformers itself is never imported.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import jinja2
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers

from lmstudio_lite.atomic import write_atomic, write_text
from lmstudio_lite.checkpoints import chat_template as chat_templates
from lmstudio_lite.checkpoints.errors import CheckpointError
from lmstudio_lite.messages import Message

# The named special tokens transformers passes to chat templates (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _new_text(before: str, after: str) -> str:
    """What ``after`` adds past the common prefix (a byte run can re-render earlier text)."""
    n = 0
    for a, b in zip(before, after):
        if a != b:
            break
        n += 1
    return after[n:]


class TextStream:
    """Incremental detokenizer over `tokenizers.decoders.DecodeStream`.

    `step(id)` returns the new text, or None while a UTF-8 character is still incomplete (or a
    skipped special token arrived). Joining every non-None piece, then `flush()`, gives exactly
    `decode(all ids)`; `flush()` only matters when generation stops inside a broken byte sequence.
    """

    def __init__(self, tok: tokenizers.Tokenizer, skip_special_tokens: bool = True):
        self._tok, self._skip = tok, skip_special_tokens
        self._stream = decoders.DecodeStream(skip_special_tokens=skip_special_tokens)
        self._context: list[int] = []  # ids behind the last emitted piece: decoders like Strip need them
        self._pending: list[int] = []  # ids fed since then

    def step(self, token_id: int) -> str | None:
        token_id = int(token_id)
        try:
            piece = self._stream.step(self._tok, token_id)
        except Exception:  # tokenizers raises on byte-fallback runs that are not valid UTF-8
            return self._step_by_diff(token_id)
        self._pending.append(token_id)
        if piece is not None:
            self._context, self._pending = (self._context + self._pending)[-8:], []
        return piece

    def _step_by_diff(self, token_id: int) -> str | None:
        """Emit what decode() makes of the invalid bytes (U+FFFD), then restart the
        incremental decoder primed with the recent ids so spacing stays right."""
        self._pending.append(token_id)
        before = self._tok.decode(self._context, skip_special_tokens=self._skip)
        after = self._tok.decode(self._context + self._pending, skip_special_tokens=self._skip)
        self._context, self._pending = (self._context + self._pending)[-8:], []
        self._stream = decoders.DecodeStream(ids=self._context, skip_special_tokens=self._skip)
        return _new_text(before, after) or None

    def flush(self) -> str | None:
        """At the end of a stream: text still held back (replacement characters for an unfinished
        byte sequence), or None."""
        if not self._pending:
            return None
        before = self._tok.decode(self._context, skip_special_tokens=self._skip)
        after = self._tok.decode(self._context + self._pending, skip_special_tokens=self._skip)
        self._context, self._pending = (self._context + self._pending)[-8:], []
        return _new_text(before, after) or None


class Tokenizer:
    """A tokenizers.Tokenizer with the special tokens, eos ids and chat template of its model."""

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        specials: dict[str, str],
        template: str | None = None,
        config: dict | None = None,
        generation: dict | None = None,
        source: Path | None = None,
    ):
        self._tok, self._specials, self._source = tok, specials, source
        self._config, self._generation = dict(config or {}), dict(generation or {})
        self._template, self._compiled = template, None
        self._byte_level: dict[str, int] | bool | None = None  # the byte table of a byte-level BPE, else False
        _add_missing_tokens(tok, self._config, specials)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path) -> "Tokenizer":
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(folder, Message("ckpt.not_folder"))
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise CheckpointError(tok_file, Message("ckpt.no_tokenizer_json"))
        try:
            tok = tokenizers.Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception for bad JSON or unknown components
            raise CheckpointError(tok_file, Message("ckpt.tokenizer_unreadable", error=str(e))) from e
        config = _read_json(folder / "tokenizer_config.json")
        specials = {name: _content(config.get(name)) for name in SPECIAL_TOKEN_NAMES if _content(config.get(name))}
        template = _read_template(folder, config)
        generation = _read_json(folder / "generation_config.json")
        return cls(tok, specials, template, config, generation, source=folder)

    @classmethod
    def from_tokenizers(
        cls,
        tok: tokenizers.Tokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ) -> "Tokenizer":
        """Wrap a tokenizer built in memory (the trainer's new BPE). Missing special tokens are added."""
        given = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
        specials = {name: value for name, value in given.items() if value}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **specials}
        return cls(tok, specials, chat_template, config)

    # ---- special tokens -----------------------------------------------------------------------
    @property
    def bos_token(self) -> str | None:
        return self._specials.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self._specials.get("eos_token")

    @property
    def bos_id(self) -> int | None:
        if self.bos_token is not None:
            return self._tok.token_to_id(self.bos_token)
        return _first_id(self._generation.get("bos_token_id"))

    @property
    def eos_ids(self) -> list[int]:
        """Every id that ends generation: tokenizer_config's eos_token, then generation_config's ids."""
        ids = [self._tok.token_to_id(self.eos_token)] if self.eos_token is not None else []
        ids += _as_id_list(self._generation.get("eos_token_id"))
        return list(dict.fromkeys(i for i in ids if i is not None))

    @property
    def pad_id(self) -> int | None:
        pad = self._specials.get("pad_token")
        if pad is not None:
            return self._tok.token_to_id(pad)
        return _first_id(self._generation.get("pad_token_id"))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    # ---- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """tokenizer.json's post-processor alone decides BOS/EOS, as in transformers 5: with a
        tokenizer.json present it ignores add_bos_token/add_eos_token in tokenizer_config.json."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        # transformers skips clean_up_tokenization_spaces for BPE models, so there is nothing more to do.
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_stream(self, skip_special_tokens: bool = True) -> TextStream:
        return TextStream(self._tok, skip_special_tokens)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """One readable piece per id, for token previews (spaces shown as spaces, bytes as <0xHH>)."""
        added, byte_table = self._piece_tables()
        return [self._token_string(int(i), added, byte_table) for i in ids]

    def token_bytes(self, ids: Iterable[int]) -> list[bytes]:
        """The bytes of text each id stands for: a byte-fallback piece <0xHH> is that one byte, a
        byte-level piece its raw bytes, a special token its own text (what inspection counts)."""
        added, byte_table = self._piece_tables()
        out = []
        for i in ids:
            piece = self._tok.id_to_token(int(i)) or ""
            if int(i) in added:
                out.append(piece.encode())
            elif _BYTE_TOKEN.match(piece):
                out.append(bytes([int(piece[3:5], 16)]))
            elif byte_table is not None:
                out.append(bytes(byte_table.get(ch, ord("?")) for ch in piece))
            else:
                out.append(piece.replace("\u2581", " ").encode())
        return out

    def _piece_tables(self) -> tuple[set[int], dict[str, int] | None]:
        if self._byte_level is None:
            byte_level = self._tok.decoder is not None and b'"ByteLevel"' in self._tok.decoder.__getstate__()
            self._byte_level = _byte_decoder() if byte_level else False
        return set(self._tok.get_added_tokens_decoder()), self._byte_level or None

    def _token_string(self, token_id: int, added: set[int], byte_table: dict[str, int] | None) -> str:
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return f"<unknown id {token_id}>"
        if token_id in added or _BYTE_TOKEN.match(piece):
            return piece
        if byte_table is not None:
            raw = bytes(byte_table.get(ch, ord("?")) for ch in piece)
            return raw.decode("utf-8", errors="backslashreplace")
        return piece.replace("\u2581", " ")  # Metaspace's word-start marker

    # ---- chat ---------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        return self._template

    @chat_template.setter
    def chat_template(self, template: str | None) -> None:
        self._template, self._compiled = template, None  # recompile on next use

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text, as transformers' apply_chat_template(tokenize=False); FALLBACK_TEMPLATE if none."""
        if self._compiled is None:
            self._compiled = chat_templates.compile_template(self.chat_template or chat_templates.FALLBACK_TEMPLATE)
        return chat_templates.render(self._compiled, messages, add_generation_prompt, **self._specials)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        # The template writes its own BOS, so (like transformers) the post-processor adds nothing.
        return self.encode(self.render_chat(messages, add_generation_prompt), add_special_tokens=False)

    # ---- saving -------------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json (with the chat template) into `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        src = self._source / "tokenizer.json" if self._source else None
        if src is not None and src.is_file():
            # Copy the original bytes: tokens we add on load are added again by whoever loads it.
            if src.resolve() != (out / "tokenizer.json").resolve():
                write_atomic(out / "tokenizer.json", lambda tmp: shutil.copyfile(src, tmp), src.stat().st_size)
        else:
            write_atomic(out / "tokenizer.json", lambda tmp: self._tok.save(str(tmp)))
        config = dict(self._config)
        if self.chat_template is not None and _pick_template(config.get("chat_template")) != self.chat_template:
            config["chat_template"] = self.chat_template
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        write_text(out / "tokenizer_config.json", text)
        if self.chat_template is not None and (out / "chat_template.jinja").exists():
            # transformers prefers chat_template.jinja over the config: keep the two the same.
            write_text(out / "chat_template.jinja", self.chat_template)


def train_bpe_tokenizer(
    texts_iter: Iterable[str], vocab_size: int, special_tokens: list[str]
) -> tokenizers.Tokenizer:
    """A GPT-2-style byte-level BPE (no prefix space) that transformers' AutoTokenizer loads.

    Special tokens get the first ids, in the order given. Every byte is in the initial alphabet,
    so any text encodes without unknown tokens.
    """
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts_iter, trainer=trainer)
    return tok


# ---- helpers --------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    """A JSON object from an optional file: {} if missing, CheckpointError if malformed."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, Message("ckpt.bad_json_colon", error=str(e))) from e
    if not isinstance(data, dict):
        raise CheckpointError(path, Message("ckpt.must_be_object"))
    return data


def _content(token: Any) -> str | None:
    # Special tokens appear as plain strings or as serialized AddedToken dicts {"content": ...}.
    if isinstance(token, dict):
        token = token.get("content")
    return token if isinstance(token, str) else None


def _pick_template(value: Any) -> str | None:
    # A list of {"name", "template"} (several templates) or a dict: use "default", as transformers does without tools.
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(value, dict):
        value = value.get("default")
    return value if isinstance(value, str) else None


def _read_template(folder: Path, config: dict) -> str | None:
    jinja_file = folder / "chat_template.jinja"  # newer transformers save the template here; it wins
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    return _pick_template(config.get("chat_template"))


def _add_missing_tokens(tok: tokenizers.Tokenizer, config: dict, specials: dict[str, str]) -> None:
    """Add tokens the config names but tokenizer.json lacks as added tokens, as transformers does on load."""
    present = {t.content for t in tok.get_added_tokens_decoder().values()}
    for entry in sorted(config.get("added_tokens_decoder", {}).items(), key=lambda kv: int(kv[0])):
        props = entry[1] if isinstance(entry[1], dict) else {}
        if _content(props) and props["content"] not in present:
            keys = ("single_word", "lstrip", "rstrip", "normalized", "special")
            token = AddedToken(props["content"], **{k: bool(props[k]) for k in keys if k in props})
            (tok.add_special_tokens if props.get("special") else tok.add_tokens)([token])
            present.add(props["content"])
    for content in specials.values():
        if content not in present:
            tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
            present.add(content)


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _first_id(value: Any) -> int | None:
    ids = _as_id_list(value)
    return ids[0] if ids else None


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character of each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars
