"""Tiny GGUF files for tests, written with the gguf package's writer in llama.cpp's layout
(``write_gguf``: whole models; ``tiny_gguf``: a header-true file of a few tensors for listings).

The layout follows convert_hf_to_gguf.py: weights [out, in] (ggml ne = [in, out]), the rows
of llama q/k weights permuted by its ``permute``, GPT-2's q/k/v fused into attn_qkv, Llama 3
rope scaling as a ``rope_freqs`` tensor. tests/data/stories260K-f32.gguf, made by llama.cpp's
own converter, checks that these assumptions are llama.cpp's.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lmstudio_lite.model.config import ModelConfig
from lmstudio_lite.model.layers import rope_inv_freq
from lmstudio_lite.model.transformer import Transformer

DATA = Path(__file__).resolve().parent / "data"
STORIES_GGUF = DATA / "stories260K-f32.gguf"


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(cfg)
    model.init_weights(std=0.3)
    with torch.no_grad():  # non-trivial norms and biases, so a mix-up of any of them shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def gguf_tensors(model: Transformer, arch: str) -> dict[str, np.ndarray]:
    """Our parameters under llama.cpp's names and layouts (float32)."""
    from lmstudio_lite.checkpoints.gguf_file import entries, permute

    cfg = replace(model.config, extra={"model_type": arch})  # llama q/k are permuted, qwen2's are not
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out: dict[str, list | np.ndarray] = {}
    for e in entries(cfg):
        t = state[e.ours].T if e.kind == "linear" else state[e.ours]
        if e.permute_heads:
            t = permute(np.ascontiguousarray(t), e.permute_heads)
        if e.rows is not None:  # GPT-2's fused q/k/v: rows in order q, k, v
            out.setdefault(e.theirs, []).append(t)
        else:
            out[e.theirs] = np.ascontiguousarray(t, dtype=np.float32)
    return {k: np.ascontiguousarray(np.concatenate(v) if isinstance(v, list) else v) for k, v in out.items()}


def write_gguf(model: Transformer, path: Path, arch: str, qtype: str = "F32", tokenizer_from: Path = STORIES_GGUF,
               rope_llama3: dict | None = None, extra_tensors: dict | None = None,
               embedding_qtype: str | None = None) -> Path:
    """A GGUF of ``model`` with the tokenizer metadata of ``tokenizer_from``; 2-D weights in ``qtype``
    (the token embedding in ``embedding_qtype`` when given, as llama-quantize keeps a 4-bit file's in Q8_0)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    _write_hparams(w, model.config, arch)
    _copy_tokenizer(w, tokenizer_from)
    tensors = gguf_tensors(model, arch)
    if rope_llama3:
        cfg = model.config
        plain = rope_inv_freq(cfg.head_dim, cfg.rope_theta, None)
        tensors["rope_freqs.weight"] = (plain / rope_inv_freq(cfg.head_dim, cfg.rope_theta, rope_llama3)).numpy()
    tensors.update(extra_tensors or {})
    for name, t in tensors.items():
        kind = (embedding_qtype or qtype) if name == "token_embd.weight" else qtype
        _add_tensor(w, name, t, kind if t.ndim == 2 and name != "rope_freqs.weight" else "F32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _add_tensor(w, name: str, t: np.ndarray, qtype: str) -> None:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if qtype == "F32":
        w.add_tensor(name, t.astype(np.float32))
    else:
        w.add_tensor(name, quantize(t.astype(np.float32), Q[qtype]), raw_dtype=Q[qtype])


def _write_hparams(w, cfg: ModelConfig, arch: str) -> None:
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_head)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.family == "gpt2":
        w.add_layer_norm_eps(cfg.norm_eps)
        return
    w.add_head_count_kv(cfg.n_kv_head)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    if (cfg.rope_scaling or {}).get("rope_type") == "linear":
        import gguf

        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(cfg.rope_scaling["factor"])


def _copy_tokenizer(w, source: Path) -> None:
    import gguf

    r = gguf.GGUFReader(source)
    for key, field in r.fields.items():
        if key.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), kind, sub_type=sub)


def vocab_only_copy(source: Path, dest: Path, pre: str) -> Path:
    """``source``'s metadata without its tensors, the pre-tokenizer renamed to ``pre``: the same
    vocabulary and merges under another pre-tokenizer, which llama-tokenize (vocabulary only) loads."""
    import gguf

    r = gguf.GGUFReader(source)
    w = gguf.GGUFWriter(str(dest), r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the writer adds the header fields and the architecture itself
        kind = field.types[0]
        value = pre if key == "tokenizer.ggml.pre" else field.contents()
        w.add_key_value(key, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest


def tiny_gguf(path: Path, arch: str = "llama", ctx: int = 128, extra_floats: int = 0) -> Path:
    """A header-true GGUF: architecture, context, file type and two small tensors (40 parameters),
    plus ``extra_floats`` more in a third tensor when a test needs a bigger file."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(ctx)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    if extra_floats:
        w.add_tensor("output.weight", np.random.default_rng(0).random(extra_floats, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
