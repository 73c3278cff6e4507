"""Tensor names and layouts: Hugging Face checkpoints <-> our Transformer.

Each entry maps one of our parameters to its checkpoint name and how its layout
differs: ``T`` means the checkpoint stores [out, in] (nn.Linear) and we store
[in, out]; GPT-2's fused ``c_attn`` is split into q, k, v by columns.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model.config import ModelConfig

# Buffers some checkpoints carry that hold no learned weights.
IGNORABLE_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


@dataclass(frozen=True)
class Entry:
    ours: str
    theirs: str
    transpose: bool = False
    split: tuple[int, int] | None = None  # column slice [start, end) of a fused checkpoint tensor


def llama_entries(cfg: ModelConfig) -> list[Entry]:
    e = [Entry("tok_emb.weight", "model.embed_tokens.weight"), Entry("norm_f.weight", "model.norm.weight")]
    if not cfg.tie_embeddings:
        e.append(Entry("head.weight", "lm_head.weight", transpose=True))
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        e += [Entry(ours + "norm1.weight", theirs + "input_layernorm.weight"),
              Entry(ours + "norm2.weight", theirs + "post_attention_layernorm.weight")]
        for p in "qkvo":
            e.append(Entry(f"{ours}attn.{p}.weight", f"{theirs}self_attn.{p}_proj.weight", transpose=True))
            if (cfg.qkv_bias and p != "o") or (cfg.o_bias and p == "o"):
                e.append(Entry(f"{ours}attn.{p}.bias", f"{theirs}self_attn.{p}_proj.bias"))
        for p in ("gate", "up", "down"):
            e.append(Entry(f"{ours}mlp.{p}.weight", f"{theirs}mlp.{p}_proj.weight", transpose=True))
            if cfg.mlp_bias:
                e.append(Entry(f"{ours}mlp.{p}.bias", f"{theirs}mlp.{p}_proj.bias"))
    return e


def gpt2_entries(cfg: ModelConfig) -> list[Entry]:
    e = [Entry("tok_emb.weight", "transformer.wte.weight"), Entry("pos_emb.weight", "transformer.wpe.weight"),
         Entry("norm_f.weight", "transformer.ln_f.weight"), Entry("norm_f.bias", "transformer.ln_f.bias")]
    if not cfg.tie_embeddings:
        e.append(Entry("head.weight", "lm_head.weight", transpose=True))
    C = cfg.d_model
    for i in range(cfg.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for n, t in (("norm1", "ln_1"), ("norm2", "ln_2")):
            e += [Entry(f"{ours}{n}.weight", f"{theirs}{t}.weight"), Entry(f"{ours}{n}.bias", f"{theirs}{t}.bias")]
        for j, p in enumerate("qkv"):  # Conv1D already stores [in, out]
            e += [Entry(f"{ours}attn.{p}.weight", f"{theirs}attn.c_attn.weight", split=(j * C, (j + 1) * C)),
                  Entry(f"{ours}attn.{p}.bias", f"{theirs}attn.c_attn.bias", split=(j * C, (j + 1) * C))]
        for n, t in (("attn.o", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj")):
            e += [Entry(f"{ours}{n}.weight", f"{theirs}{t}.weight"), Entry(f"{ours}{n}.bias", f"{theirs}{t}.bias")]
    return e


def entries_for(cfg: ModelConfig) -> list[Entry]:
    return gpt2_entries(cfg) if cfg.family == "gpt2" else llama_entries(cfg)


def normalize_name(name: str, cfg: ModelConfig) -> str:
    """GPT-2 checkpoints come with and without the ``transformer.`` prefix."""
    if cfg.family == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
        return "transformer." + name
    return name
