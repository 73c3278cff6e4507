"""The tokenizer part of a GGUF export: vocabulary, merges or scores, token types, special ids,
``add_bos_token`` and the chat template, from a folder's tokenizer.json.

Two kinds, as llama.cpp names them in ``tokenizer.ggml.model``:
- ``gpt2``: byte-level BPE; tokens as tokenizer.json spells them, merges as "a b", and
  ``tokenizer.ggml.pre`` naming the pre-tokenizer regex llama.cpp must apply;
- ``llama``: SentencePiece-style BPE (▁ for spaces, <0xNN> byte fallback). llama.cpp merges the
  adjacent pair whose joined text has the highest score, so a merged token scores minus the rank
  of the merge that makes it: that replays tokenizer.json's merge order exactly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..model.config import ModelConfig
from .errors import CheckpointError
from ..messages import Message

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# Split regexes of known byte-level tokenizers -> llama.cpp's pre-tokenizer name.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_KNOWN_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


def _components(node: dict | None) -> list[dict]:
    """A pre-tokenizer/decoder and, for a Sequence, its members, flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [c for child in node.get("pretokenizers") or node.get("decoders") or [] for c in _components(child)]
    return [node]


def tokenizer_kind(data: dict, path: Path) -> str:
    """"gpt2" (byte-level BPE) or "llama" (SentencePiece-style BPE); anything else is refused."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(path, Message("ckpt.export_tokenizer_kind", kind=repr(model.get("type"))))
    kinds = {c.get("type") for c in _components(data.get("pre_tokenizer")) + _components(data.get("decoder"))}
    if "ByteLevel" in kinds:
        return "gpt2"
    if model.get("byte_fallback") or "Metaspace" in kinds or "Replace" in kinds:
        return "llama"
    raise CheckpointError(path, Message("ckpt.export_tokenizer_neither"))


def pre_tokenizer_name(data: dict, path: Path) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level tokenizer."""
    parts = _components(data.get("pre_tokenizer"))
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own regex (llama.cpp spells it with a hyphen)
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    splits = [(p.get("pattern") or {}).get("Regex") for p in parts if p.get("type") == "Split"]
    if len(splits) == 1 and splits[0] in _KNOWN_SPLITS:
        return _KNOWN_SPLITS[splits[0]]
    raise CheckpointError(path, Message("ckpt.export_pre_tokenizer", types=str(types)))


def _merges(model: dict) -> list[str]:
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]


def unk_token(folder: Path, data: dict) -> str | None:
    """tokenizer.json's unk_token, else tokenizer_config.json's (converted SentencePiece files keep it there)."""
    if data["model"].get("unk_token"):
        return data["model"]["unk_token"]
    path = Path(folder) / "tokenizer_config.json"
    unk = json.loads(path.read_text(encoding="utf-8")).get("unk_token") if path.is_file() else None
    return unk.get("content") if isinstance(unk, dict) else unk


def vocab_table(data: dict, vocab_size: int, kind: str, unk: str | None = None
                ) -> tuple[list[str], list[int], list[float]]:
    """(tokens, token types, scores), one per id up to the model's vocab size."""
    from gguf import TokenType

    model = data["model"]
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i] = text
            types[i] = int(TokenType.BYTE if kind == "llama" and _BYTE_TOKEN.match(text) else TokenType.NORMAL)
    for added in data.get("added_tokens") or []:
        i = added["id"]
        if i < vocab_size:
            tokens[i] = added["content"]
            types[i] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    if unk is not None and unk in tokens:
        types[tokens.index(unk)] = int(TokenType.UNKNOWN)
    scores = [0.0] * vocab_size
    if kind == "llama":
        seen = set()
        for rank, merge in enumerate(_merges(model)):
            i = model["vocab"].get(merge.replace(" ", ""))
            if i is not None and i < vocab_size and i not in seen:
                scores[i], _ = -float(rank + 1), seen.add(i)
    return tokens, types, scores


def write_vocab(writer, folder: Path, tok, cfg: ModelConfig) -> None:
    """Add the tokenizer keys to a GGUFWriter."""
    path = Path(folder) / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    kind = tokenizer_kind(data, path)
    unk = unk_token(folder, data)
    tokens, types, scores = vocab_table(data, cfg.vocab_size, kind, unk)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(pre_tokenizer_name(data, path))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(_merges(data["model"]))
    else:
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(_adds_space_prefix(data))
    write_special_tokens(writer, tok, unk)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)


def _adds_space_prefix(data: dict) -> bool:
    meta = [c for c in _components(data.get("pre_tokenizer")) + _components(data.get("normalizer"))
            if c.get("type") in ("Metaspace", "Prepend")]
    return any(c.get("type") == "Prepend" or c.get("prepend_scheme", "always") != "never" for c in meta)


def write_special_tokens(writer, tok, unk: str | None) -> None:
    """bos/eos/eot/unk/pad ids and whether encoding adds bos/eos, measured on the tokenizer itself."""
    eos = tok.eos_ids
    eos_main = tok.backend.token_to_id(tok.eos_token) if tok.eos_token else (eos[0] if eos else None)
    if tok.bos_id is not None:
        writer.add_bos_token_id(tok.bos_id)
    if eos_main is not None:
        writer.add_eos_token_id(eos_main)
    others = [i for i in eos if i != eos_main]
    if others:  # e.g. <|im_end|> beside <|endoftext|>: llama.cpp stops on end-of-turn too
        writer.add_eot_token_id(others[0])
    if unk is not None and tok.backend.token_to_id(unk) is not None:
        writer.add_unk_token_id(tok.backend.token_to_id(unk))
    if tok.pad_id is not None:
        writer.add_pad_token_id(tok.pad_id)
    probe = tok.encode("a", add_special_tokens=True)
    writer.add_add_bos_token(bool(probe) and tok.bos_id is not None and probe[0] == tok.bos_id)
    writer.add_add_eos_token(bool(probe) and eos_main is not None and probe[-1] == eos_main and len(probe) > 1)
