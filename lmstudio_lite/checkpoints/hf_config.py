"""config.json (Hugging Face layout) <-> our typed ModelConfig.

No torch here: listing models reads configs, and the page is served before torch is imported.
"""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

from ..model.config import ModelConfig
from .errors import CheckpointError
from ..messages import Message, message_of

LLAMA_LIKE = ("llama", "qwen2", "mistral")
SUPPORTED = ("gpt2",) + LLAMA_LIKE
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


# Every config.json field we read and the JSON type it must have ("?": null allowed too).
# Ranges are ModelConfig's business; this only keeps a string, a list or 192.0 from
# reaching arithmetic that would fail with a TypeError (or quietly repeat a string).
FIELD_TYPES = {
    "vocab_size": "int", "n_layer": "int", "n_head": "int", "n_embd": "int", "n_inner": "int?",
    "n_positions": "int", "layer_norm_epsilon": "number", "activation_function": "str",
    "tie_word_embeddings": "bool", "num_hidden_layers": "int", "num_attention_heads": "int",
    "num_key_value_heads": "int?", "hidden_size": "int", "head_dim": "int?", "intermediate_size": "int",
    "max_position_embeddings": "int", "rms_norm_eps": "number", "rope_theta": "number",
    "rope_scaling": "object?", "rope_parameters": "object?", "attention_bias": "bool", "mlp_bias": "bool",
    "hidden_act": "str", "sliding_window": "int?", "use_sliding_window": "bool",
}
KIND_KEYS = {"int": "ckpt.kind_int", "number": "ckpt.kind_number", "str": "ckpt.kind_str", "bool": "ckpt.kind_bool",
             "object": "ckpt.kind_object"}


def check_field_types(hf: dict):
    """ValueError naming the first field of ``hf`` whose JSON type is wrong."""
    for name, kind in FIELD_TYPES.items():
        if name not in hf:
            continue
        value, optional = hf[name], kind.endswith("?")
        kind = kind.rstrip("?")
        if value is None and optional:
            continue
        if not _is_kind(value, kind):
            raise ValueError(Message("ckpt.field_type_or_null" if optional else "ckpt.field_type", field=repr(name),
                                     kind=Message(KIND_KEYS[kind]), got=json_repr(value)))


def _is_kind(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)
    if kind == "number":
        return isinstance(value, numbers.Real) and math.isfinite(value)
    return isinstance(value, {"str": str, "object": dict}[kind])


def json_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _rope(hf: dict) -> tuple[float, dict | None]:
    """rope theta and scaling from either the old (rope_theta + rope_scaling) or
    the transformers 5 (rope_parameters) spelling."""
    params = hf.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = hf.get("rope_scaling") or None
    if params and (params.get("rope_type") or params.get("type") or "default") != "default":
        scaling = dict(params)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) in (None, "default"):
        scaling = None
    return theta, scaling


def config_from_hf(hf: dict) -> ModelConfig:
    """Map a config.json dict; raises ValueError/KeyError for what we cannot run."""
    mt = hf.get("model_type")
    if not isinstance(mt, str) or mt not in SUPPORTED:
        raise ValueError(Message("ckpt.model_type", model_type=json_repr(mt), supported=", ".join(SUPPORTED)))
    check_field_types(hf)
    if mt == "gpt2":
        C = hf["n_embd"]
        return ModelConfig(
            family="gpt2", vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"],
            d_model=C, d_ff=hf.get("n_inner") or 4 * C, max_seq_len=hf.get("n_positions", 1024),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), act=hf.get("activation_function", "gelu_new"),
            tie_embeddings=hf.get("tie_word_embeddings", True), extra={"model_type": mt})
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(Message("ckpt.hidden_act", act=repr(hf.get("hidden_act")), model_type=mt))
    theta, scaling = _rope(hf)
    n_head = hf["num_attention_heads"]
    window = hf.get("sliding_window") if hf.get("use_sliding_window", mt == "mistral") else None
    return ModelConfig(
        family="llama", vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head, d_model=hf["hidden_size"],
        head_dim=hf.get("head_dim") or 0, d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048), norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=scaling,
        # Qwen2 always has q/k/v bias and no o bias; Llama's attention_bias covers all four.
        qkv_bias=mt == "qwen2" or bool(hf.get("attention_bias", False)),
        o_bias=mt != "qwen2" and bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)), tie_embeddings=bool(hf.get("tie_word_embeddings", mt != "llama")),
        act="silu", extra={"model_type": mt, "sliding_window": window})


def config_to_hf(cfg: ModelConfig, model_type: str | None = None, special: dict | None = None) -> dict:
    """A config.json dict that transformers loads as the same architecture."""
    mt = model_type or cfg.extra.get("model_type") or cfg.family
    special = {k: v for k, v in (special or {}).items() if v is not None}
    if cfg.family == "gpt2":
        hf = {"model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
              "n_embd": cfg.d_model, "n_inner": cfg.d_ff, "n_positions": cfg.max_seq_len,
              "n_ctx": cfg.max_seq_len, "layer_norm_epsilon": cfg.norm_eps, "activation_function": cfg.act,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
              "tie_word_embeddings": cfg.tie_embeddings}
    else:
        hf = {"model_type": mt, "vocab_size": cfg.vocab_size, "num_hidden_layers": cfg.n_layer,
              "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head,
              "hidden_size": cfg.d_model, "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff,
              "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "hidden_act": "silu",
              "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling,
              "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0}
        if mt == "llama":
            hf.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
        if mt == "mistral":
            hf["sliding_window"] = cfg.extra.get("sliding_window")
        if mt == "qwen2":
            hf["use_sliding_window"] = False
    hf["architectures"] = [ARCHITECTURES[mt]]
    hf.update(special)
    return hf


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(path, Message("ckpt.file_missing"))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, Message("ckpt.bad_json", error=str(e))) from None
    if not isinstance(data, dict):
        raise CheckpointError(path, Message("ckpt.json_not_object"))
    return data


def read_config(folder: str | Path) -> tuple[ModelConfig, dict]:
    """(our config, the raw config.json dict)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, Message("ckpt.no_folder"))
    path = folder / "config.json"
    hf = read_json(path)
    try:
        return config_from_hf(hf), hf
    except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as e:
        # ValueError is the checks' own wording; the others are a backstop for shapes of
        # JSON the checks did not foresee: still this folder's fault, never the app's.
        problem = (Message("ckpt.missing_field", field=str(e)) if isinstance(e, KeyError)
                   else message_of(e) if isinstance(e, ValueError) else str(e))  # a TypeError's own words
        raise CheckpointError(path, problem) from None
