"""A GGUF file's tokenizer (``tokenizer.ggml.*`` metadata) rebuilt as a ``tokenizers`` Tokenizer.

The goal is llama.cpp's ids for the same text (tests compare against ``llama-tokenize``):

- ``gpt2``: byte-level BPE over the file's merges, after the pre-tokenizer regexes that
  ``tokenizer.ggml.pre`` names. llama.cpp applies its list of regexes one after the other,
  keeping both the matches and the text between them: a ``Split(..., "isolated")`` each.
- ``llama``: SentencePiece BPE. llama.cpp merges the adjacent pair whose joined piece has
  the highest score, so the merges list is every (left, right) split of each piece,
  ranked by that piece's score; characters outside the vocabulary fall back to
  ``<0xNN>`` byte tokens; spaces become ``▁`` and a ``▁`` goes before the text and after
  every special token (``Prepend`` runs on each segment between added tokens).

CONTROL and UNKNOWN tokens become special added tokens and USER_DEFINED ones plain added
tokens, so both match in text, as in llama.cpp with special-token parsing on (its default).
"""
from __future__ import annotations

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from .errors import CheckpointError
from ..messages import Message
from .gguf_file import field_value
from .tokenizer import Tokenizer

# llama.cpp's token types (llama_token_type in llama-vocab.h).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
# The regexes of src/llama-vocab.cpp (llm_tokenizer_bpe), in the order llama.cpp applies them.
PRE_TOKENIZERS = {
    "default": ["[\\p{P}\\$\\+<=>\\^~\\|]+", _GPT2, "\\p{N}+", "[0-9][0-9][0-9]"],
    "gpt-2": [_GPT2],
    "smollm": ["\\p{N}", _GPT2],
    "llama3": [_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
    "qwen2": [_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
              "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"],
}
# Other names llama.cpp maps onto the same regexes.
PRE_ALIASES = {"llama-bpe": "llama3", "llama-v3": "llama3", "starcoder": "smollm", "deepseek-r1-qwen": "qwen2",
               "stablelm2": "qwen2", "phi-2": "gpt-2", "mpt": "gpt-2", "olmo": "gpt-2"}
# Pre-tokenizers whose words that are whole vocabulary entries skip the merges (llama.cpp's ignore_merges).
IGNORE_MERGES = {"llama3"}
# add_bos_token when the file does not say (llama.cpp's defaults).
ADDS_BOS = {"llama3"}


def tokenizer_from_gguf(reader) -> Tokenizer:
    """Our Tokenizer for the file; CheckpointError for a tokenizer model or pre-tokenizer we lack."""
    kind = field_value(reader, "tokenizer.ggml.model", None)
    tokens = field_value(reader, "tokenizer.ggml.tokens", None)
    if not tokens:
        raise CheckpointError(reader.path, Message("ckpt.gguf_no_tokenizer"))
    types = field_value(reader, "tokenizer.ggml.token_type", None) or [NORMAL] * len(tokens)
    if kind == "gpt2":
        pre = _pre_name(reader)
        tok = _byte_level_bpe(tokens, field_value(reader, "tokenizer.ggml.merges"), pre)
        add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", pre in ADDS_BOS)
    elif kind == "llama":
        scores = field_value(reader, "tokenizer.ggml.scores", None) or [0.0] * len(tokens)
        prefix = field_value(reader, "tokenizer.ggml.add_space_prefix", True)
        tok = _sentencepiece_bpe(tokens, scores, types, prefix)
        add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", True)
    else:
        raise CheckpointError(reader.path, Message("ckpt.gguf_tokenizer_model", kind=repr(kind)))
    _add_special_tokens(tok, tokens, types)
    specials = _special_names(reader, tokens)
    add_eos = field_value(reader, "tokenizer.ggml.add_eos_token", False)
    tok.post_processor = _post_processor(specials, add_bos, add_eos, tokens, reader)
    template = field_value(reader, "tokenizer.chat_template", None)
    # End-of-turn tokens also end a reply (llama.cpp stops on eos, eot and eom alike).
    ends = [field_value(reader, f"tokenizer.ggml.{k}_token_id", None) for k in ("eos", "eot", "eom")]
    generation = {"eos_token_id": [int(i) for i in ends if i is not None]}
    config = {"add_bos_token": add_bos, "add_eos_token": add_eos, **specials}
    return Tokenizer(tok, specials, template, config, generation)


def _pre_name(reader) -> str:
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    pre = PRE_ALIASES.get(pre, pre)
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(reader.path, Message("ckpt.gguf_pre_tokenizer", pre=repr(pre),
                                                      supported=", ".join(sorted(PRE_TOKENIZERS))))
    return pre


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> HFTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = HFTokenizer(models.BPE(vocab, pairs, ignore_merges=pre in IGNORE_MERGES))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(tokens: list[str], scores: list[float], types: list[int], prefix: bool) -> HFTokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    unk = next((t for t, k in zip(tokens, types) if k == UNKNOWN), None)
    bpe = models.BPE(vocab, _merges_by_score(tokens, scores, types, vocab), unk_token=unk, fuse_unk=True,
                     byte_fallback=True)
    tok = HFTokenizer(bpe)
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok


def _merges_by_score(tokens, scores, types, vocab) -> list[tuple[str, str]]:
    """Every split of each normal piece into two vocabulary pieces, best-scored piece first;
    splits of one piece by the ids of their halves (transformers' GGUF converter does the same)."""
    ranked = []
    for piece, score, kind in zip(tokens, scores, types):
        if kind not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        ranked += [(-score, vocab[piece], n, lr) for n, lr in enumerate(splits)]
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


def _add_special_tokens(tok: HFTokenizer, tokens: list[str], types: list[int]) -> None:
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k in (CONTROL, UNKNOWN)]
    plain = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(plain)


def _special_names(reader, tokens: list[str]) -> dict[str, str]:
    names = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown", "pad_token": "padding",
             "sep_token": "seperator"}  # (sic: the GGUF key is spelled that way)
    out = {}
    for name, key in names.items():
        i = field_value(reader, f"tokenizer.ggml.{key}_token_id", None)
        if i is not None and 0 <= int(i) < len(tokens):
            out[name] = tokens[int(i)]
    return out


def _post_processor(specials: dict, add_bos: bool, add_eos: bool, tokens: list[str], reader):
    ids = {t: i for i, t in enumerate(tokens)}
    bos = [specials["bos_token"]] if add_bos and "bos_token" in specials else []
    eos = [specials["eos_token"]] if add_eos and "eos_token" in specials else []
    if add_bos and not bos or add_eos and not eos:
        raise CheckpointError(reader.path, Message("ckpt.gguf_bos_eos"))
    single = " ".join(bos + ["$A"] + eos)
    pair = " ".join(bos + ["$A"] + eos + bos + ["$B:1"] + eos)
    return processors.TemplateProcessing(single=single, pair=pair,
                                         special_tokens=[(t, ids[t]) for t in dict.fromkeys(bos + eos)])
