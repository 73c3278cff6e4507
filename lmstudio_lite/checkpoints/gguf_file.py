"""GGUF files (llama.cpp, LM Studio, Ollama): llama.cpp's names for our config and weights,
used in both directions (loading here and in gguf_weights.py, export in gguf_export.py).

The file is parsed by ``gguf_parse`` (our header reader): only the header is read up front
and tensors are memory-mapped views read when they are copied into the model. A GGUF holds
data only (no code); nothing in it is executed.

Layouts: GGUF stores a weight as ggml ``ne = [in, out]``, a numpy array ``[out, in]``
(quantized ones as raw block bytes ``[out, in/32*bytes]``); we store linears ``[in, out]``.
llama.cpp's converter permutes the rows of the q and k weights of the ``llama`` architecture
(its rope rotates interleaved pairs, Hugging Face's rotates halves): ``permute`` and its
inverse ``unpermute``, which also works on raw block rows, since the permutation only
reorders output rows and a quantization block lies within one row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.config import ModelConfig
from .errors import CheckpointError
from ..messages import Message, message_of
from .gguf_parse import GGUFFile, parse

# The weight types gguf_export.py writes; here, in a module without torch, so the Models tab can
# offer them while the page is served before torch is imported.
EXPORT_QUANTS = ("f32", "bf16", "q8_0", "q4_0")

ARCHITECTURES = ("llama", "qwen2", "gpt2")
_MISSING = object()


def open_gguf(path: str | Path) -> GGUFFile:
    """The parsed header of ``path``, every tensor's type known and its data inside the file;
    CheckpointError for anything that is not a whole GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, Message("ckpt.gguf_missing"))
    try:
        f = parse(path)
    except (OSError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise CheckpointError(path, Message("ckpt.gguf_unreadable", error=f"{type(e).__name__}: {e}")) from None
    size, names = path.stat().st_size, set()
    for t in f.tensors:
        try:
            end = t.offset + f.nbytes(t)
        except ValueError as e:  # a type id newer (or other) than the gguf package knows
            raise CheckpointError(path, Message("ckpt.gguf_tensor_type", error=str(e), name=repr(t.name))) from None
        if end > size:
            raise CheckpointError(path, Message("ckpt.gguf_past_end", name=repr(t.name)))
        if t.name in names:
            raise CheckpointError(path, Message("ckpt.gguf_twice", name=repr(t.name)))
        names.add(t.name)
    return f


def field_value(reader, key: str, default: Any = _MISSING) -> Any:
    """One metadata value as a Python object (str, int, float, bool or list)."""
    value = reader.fields.get(key)
    if value is None:
        if default is _MISSING:
            raise CheckpointError(reader.path, Message("ckpt.gguf_key_missing", key=repr(key)))
        return default
    return value


@dataclass
class _Meta:
    """Metadata lookups for one architecture (keys are prefixed with its name)."""
    reader: Any
    arch: str

    def get(self, key: str, default: Any = _MISSING) -> Any:
        value = field_value(self.reader, f"{self.arch}.{key}", default)
        if isinstance(value, list):  # some files store per-layer values: we only run uniform ones
            if len(set(value)) != 1:
                raise CheckpointError(self.reader.path, Message("ckpt.gguf_per_layer", key=f"{self.arch}.{key}",
                                                                          values=str(value[:4])))
            value = value[0]
        return value


def architecture(reader) -> str:
    arch = field_value(reader, "general.architecture", None)
    if arch not in ARCHITECTURES:
        raise CheckpointError(reader.path, Message("ckpt.gguf_arch", arch=repr(arch), supported=", ".join(ARCHITECTURES)))
    return arch


# -- hyperparameters ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HParam:
    """``{arch}.<key>`` metadata <-> one ModelConfig field. ``type``: how llama.cpp's converter
    writes it (int: uint32, float: float32); ``default``: what a file without it means."""
    key: str
    field: str
    type: type
    archs: tuple[str, ...] = ARCHITECTURES
    default: Any = _MISSING  # _MISSING: required; None: ModelConfig's own default


_ROPE = ("llama", "qwen2")
# In the order llama.cpp's converter writes them. Written but derived, so not here: the head
# size (rope.dimension_count, attention.key_length/value_length), vocab_size and rope scaling.
HPARAMS = (
    HParam("context_length", "max_seq_len", int),
    HParam("embedding_length", "d_model", int),
    HParam("block_count", "n_layer", int),
    HParam("feed_forward_length", "d_ff", int),
    HParam("attention.head_count", "n_head", int),
    HParam("attention.layer_norm_epsilon", "norm_eps", float, ("gpt2",), 1e-5),
    HParam("attention.head_count_kv", "n_kv_head", int, _ROPE, None),
    HParam("attention.layer_norm_rms_epsilon", "norm_eps", float, _ROPE, 1e-6),
    HParam("rope.freq_base", "rope_theta", float, _ROPE, 10000.0),
)


def gguf_arch(cfg: ModelConfig) -> str:
    """llama.cpp's architecture for a config: Mistral is written as llama, as llama.cpp's converter does."""
    if cfg.family == "gpt2":
        return "gpt2"
    return "qwen2" if cfg.extra.get("model_type") == "qwen2" else "llama"


def _hparams(m: _Meta, arch: str) -> dict:
    out = {}
    for h in HPARAMS:
        value = m.get(h.key, h.default) if arch in h.archs else None
        if value is not None:
            out[h.field] = h.type(value)
    return out


def config_from_gguf(reader) -> ModelConfig:
    """The file's metadata as our ModelConfig; biases and the tied head come from which tensors exist."""
    arch = architecture(reader)
    m, names = _Meta(reader, arch), {t.name for t in reader.tensors}
    hp = _hparams(m, arch)
    vocab = m.get("vocab_size", None) or len(field_value(reader, "tokenizer.ggml.tokens", [])) \
        or int(_tensor(reader, "token_embd.weight").shape[1])
    common = dict(vocab_size=int(vocab), tie_embeddings="output.weight" not in names,
                  extra={"model_type": arch, "format": "gguf"}, **hp)
    try:
        if arch == "gpt2":
            return ModelConfig(family="gpt2", act="gelu_new", **common)
        head_dim = int(m.get("attention.key_length", 0) or hp["d_model"] // hp["n_head"])
        rot = int(m.get("rope.dimension_count", head_dim))
        if rot != head_dim:
            raise CheckpointError(reader.path, Message("ckpt.gguf_partial_rope", rot=rot, head_dim=head_dim))
        return ModelConfig(
            family="llama", head_dim=head_dim, rope_scaling=_rope_scaling(reader, m),
            qkv_bias="blk.0.attn_q.bias" in names, o_bias="blk.0.attn_output.bias" in names,
            mlp_bias="blk.0.ffn_up.bias" in names, act="silu", **common)
    except ValueError as e:  # ModelConfig's own validation
        raise CheckpointError(reader.path, message_of(e)) from None


def _rope_scaling(reader, m: _Meta) -> dict | None:
    """Linear scaling from metadata; Llama 3.x's scaling arrives as a ``rope_freqs`` tensor of
    per-frequency divisors (the converter computes them), which we apply as they are."""
    kind = m.get("rope.scaling.type", "none")
    factors = _tensor(reader, "rope_freqs.weight", required=False)
    if factors is not None:
        return {"rope_type": "freq_factors", "factors": [float(x) for x in reader.array(factors).reshape(-1)]}
    if kind in ("none", None):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(m.get("rope.scaling.factor"))}
    raise CheckpointError(reader.path, Message("ckpt.gguf_rope_scaling", kind=repr(kind)))


def _tensor(reader, name: str, required: bool = True):
    t = reader.tensor(name)
    if t is not None:
        return t
    if required:
        raise CheckpointError(reader.path, Message("ckpt.tensor_missing", name=repr(name)))
    return None


# -- tensor names ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One of our parameters and the GGUF tensor it comes from.

    kind: "linear" ([out, in] -> our [in, out], may stay quantized), "plain" (same layout),
    ``rows`` a row slice [start, end) of a fused tensor (GPT-2's attn_qkv), ``permute_heads``
    the head count whose rope permutation to undo (llama q and k)."""
    ours: str
    theirs: str
    kind: str = "plain"
    rows: tuple[int, int] | None = None
    permute_heads: int = 0


def entries(cfg: ModelConfig) -> list[Entry]:
    e = [Entry("tok_emb.weight", "token_embd.weight"), Entry("norm_f.weight", "output_norm.weight")]
    if cfg.family == "gpt2":
        e += [Entry("pos_emb.weight", "position_embd.weight"), Entry("norm_f.bias", "output_norm.bias")]
    if not cfg.tie_embeddings:
        e.append(Entry("head.weight", "output.weight", "linear"))
    for i in range(cfg.n_layer):
        e += (_gpt2_block if cfg.family == "gpt2" else _llama_block)(cfg, f"blocks.{i}.", f"blk.{i}.")
    return e


def _llama_block(cfg: ModelConfig, ours: str, theirs: str) -> list[Entry]:
    permuted = gguf_arch(cfg) == "llama"  # qwen2 is written unpermuted (NEOX rope)
    heads = {"q": cfg.n_head, "k": cfg.n_kv_head} if permuted else {}
    e = [Entry(ours + "norm1.weight", theirs + "attn_norm.weight"),
         Entry(ours + "norm2.weight", theirs + "ffn_norm.weight")]
    for p, g in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
        e.append(Entry(f"{ours}attn.{p}.weight", f"{theirs}{g}.weight", "linear", permute_heads=heads.get(p, 0)))
        if (cfg.qkv_bias and p != "o") or (cfg.o_bias and p == "o"):
            e.append(Entry(f"{ours}attn.{p}.bias", f"{theirs}{g}.bias", permute_heads=heads.get(p, 0)))
    for p in ("gate", "up", "down"):
        e.append(Entry(f"{ours}mlp.{p}.weight", f"{theirs}ffn_{p}.weight", "linear"))
        if cfg.mlp_bias:
            e.append(Entry(f"{ours}mlp.{p}.bias", f"{theirs}ffn_{p}.bias"))
    return e


def _gpt2_block(cfg: ModelConfig, ours: str, theirs: str) -> list[Entry]:
    C = cfg.d_model
    e = []
    for n, t in (("norm1", "attn_norm"), ("norm2", "ffn_norm")):
        e += [Entry(f"{ours}{n}.weight", f"{theirs}{t}.weight"), Entry(f"{ours}{n}.bias", f"{theirs}{t}.bias")]
    for j, p in enumerate("qkv"):
        rows = (j * C, (j + 1) * C)
        e += [Entry(f"{ours}attn.{p}.weight", f"{theirs}attn_qkv.weight", "linear", rows=rows),
              Entry(f"{ours}attn.{p}.bias", f"{theirs}attn_qkv.bias", rows=rows)]
    for n, t in (("attn.o", "attn_output"), ("mlp.up", "ffn_up"), ("mlp.down", "ffn_down")):
        e += [Entry(f"{ours}{n}.weight", f"{theirs}{t}.weight", "linear"),
              Entry(f"{ours}{n}.bias", f"{theirs}{t}.bias")]
    return e


# Tensors a GGUF may carry that we do not load as parameters (rope_freqs becomes rope_scaling).
IGNORED = ("rope_freqs.weight",)


def permute(rows, n_head: int):
    """convert_hf_to_gguf's ``LlamaModel.permute``: within each head, Hugging Face's rotate-half
    row order (first halves, then second halves) -> llama.cpp's interleaved pairs. Any numpy
    array or torch tensor whose first axis is the output row (weights [out, in], biases)."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def unpermute(rows, n_head: int):
    """The inverse of ``permute``; works on raw quantized block rows too (a block never crosses a row)."""
    return rows.reshape(n_head, rows.shape[0] // n_head // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
