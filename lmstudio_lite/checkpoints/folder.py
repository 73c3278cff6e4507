"""Read and write model folders in the Hugging Face layout (safetensors only).

Weights are read tensor by tensor from memory-mapped safetensors into a model
built on the meta device, so loading never holds two copies of the model. No
pickle is ever opened.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model.config import ModelConfig
from ..model.transformer import Transformer
from ..atomic import write_atomic, write_json
from .errors import CheckpointError
from ..messages import Message
from .hf_config import config_to_hf, read_config, read_json  # noqa: F401 (read_config: used via this module too)
from .names import IGNORABLE_SUFFIXES, entries_for, normalize_name

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"
FINITE_SAMPLE = 4096  # values checked per tensor at load: cheap, and catches all-NaN/inf weights


def weight_files(folder: Path) -> dict[str, Path]:
    """checkpoint tensor name -> the safetensors file holding it."""
    index = folder / INDEX_NAME
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(index, Message("ckpt.no_weight_map"))
        files = {name: _shard_path(folder, index, shard) for name, shard in weight_map.items()}
        for shard in set(files.values()):
            if not shard.is_file():
                raise CheckpointError(shard, Message("ckpt.shard_missing", index=INDEX_NAME))
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return {name: single for name in _tensor_names(single)}
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(folder / pickles[0], Message("ckpt.only_pickle"))
    raise CheckpointError(single, Message("ckpt.no_weights"))


def _shard_path(folder: Path, index: Path, shard) -> Path:
    """A shard named in the index: a relative name that stays inside the model folder
    (``../`` or an absolute path would let a downloaded folder read any file). Checked by
    name, not by resolving: the Hugging Face cache's shards are symlinks into its blobs/."""
    if not isinstance(shard, str) or not shard or "\x00" in shard:
        raise CheckpointError(index, Message("ckpt.shard_not_name", shard=repr(shard)))
    normal = os.path.normpath(shard)
    if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
        raise CheckpointError(index, Message("ckpt.shard_outside", shard=repr(shard)))
    return folder / normal


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(path, Message("ckpt.bad_safetensors", error=str(e))) from None


def load_weights(folder: str | Path, config: ModelConfig | None = None, device="cpu",
                 dtype: torch.dtype = torch.float32) -> Transformer:
    """Build a Transformer from a model folder's safetensors, converted to ``dtype``."""
    from safetensors import safe_open

    folder = Path(folder)
    cfg = config or read_config(folder)[0]
    files = weight_files(folder)
    available = {normalize_name(n, cfg): n for n in files}
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = dict(model.state_dict())
    state, handles = {}, {}
    try:
        for entry in entries_for(cfg):
            raw = available.get(entry.theirs)
            if raw is None:
                where = files and next(iter(set(files.values())))
                raise CheckpointError(where, Message("ckpt.tensor_missing", name=repr(entry.theirs)))
            path = files[raw]
            if path not in handles:
                handles[path] = safe_open(path, framework="pt", device="cpu")
            t = _convert(handles[path].get_tensor(raw), entry)
            _check_finite(path, raw, t)
            want = tuple(expected[entry.ours].shape)
            if tuple(t.shape) != want:
                raise CheckpointError(path, Message("ckpt.shape_config", name=repr(raw), shape=str(tuple(t.shape)),
                                                                 want=str(want)))
            state[entry.ours] = t.to(device=device, dtype=dtype)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(folder, Message("ckpt.unreadable_weights", error=str(e))) from None
    finally:
        handles.clear()
    _check_unexpected(available, {e.theirs for e in entries_for(cfg)}, cfg, files)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_rope()
    return model


def _check_finite(path: Path, name: str, t: torch.Tensor, sample: int = FINITE_SAMPLE):
    """CheckpointError when an evenly spaced sample of ``t`` holds NaN or inf: such weights
    (a diverged run, a broken conversion) would only ever generate garbage or NaN logits."""
    flat = t.reshape(-1)
    picked = flat[:: max(1, flat.numel() // sample)][:sample]
    if picked.numel() and not torch.isfinite(picked.float()).all():
        bad = int((~torch.isfinite(picked.float())).sum())
        raise CheckpointError(path, Message("ckpt.not_finite", name=repr(name), bad=bad, sampled=picked.numel()))


def _convert(t: torch.Tensor, entry) -> torch.Tensor:
    if entry.split is not None:
        a, b = entry.split
        t = t[..., a:b]
    if entry.transpose:
        t = t.t()
    return t.contiguous()


def _check_unexpected(available: dict, used: set, cfg: ModelConfig, files: dict):
    tied_head = {"lm_head.weight"} if cfg.tie_embeddings else set()
    extra = [raw for norm, raw in available.items()
             if norm not in used and norm not in tied_head and not norm.endswith(IGNORABLE_SUFFIXES)]
    if extra:
        raise CheckpointError(files[extra[0]], Message("ckpt.unexpected_tensors", names=", ".join(sorted(extra)[:3])
                                                             + (" ..." if len(extra) > 3 else "")))


# -- saving --------------------------------------------------------------------
def checkpoint_state(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters renamed and laid out as the Hugging Face checkpoint stores them."""
    cfg, ours = model.config, model.state_dict()
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    for entry in entries_for(cfg):
        t = ours[entry.ours].detach()
        if entry.split is not None:
            fused.setdefault(entry.theirs, []).append(t)
            continue
        out[entry.theirs] = (t.t() if entry.transpose else t).contiguous().cpu()
    for name, parts in fused.items():
        out[name] = torch.cat(parts, dim=-1).contiguous().cpu()
    return out


def save_folder(model: Transformer, out_dir: str | Path, tokenizer=None, dtype: torch.dtype | None = None,
                max_shard_bytes: int | None = None, special_tokens: dict | None = None,
                model_type: str | None = None) -> Path:
    """Write config.json, safetensors (sharded above ``max_shard_bytes``), tokenizer
    files and generation_config.json; each file written to a temp name then renamed."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = checkpoint_state(model)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    save_dtype = next(iter(state.values())).dtype
    special = dict(special_tokens or {})
    if tokenizer is not None:
        special.setdefault("bos_token_id", tokenizer.bos_id)
        eos = tokenizer.eos_ids
        special.setdefault("eos_token_id", (eos if len(eos) > 1 else eos[0]) if eos else None)
        special.setdefault("pad_token_id", tokenizer.pad_id)
    hf = config_to_hf(model.config, model_type, special)
    hf["torch_dtype"] = str(save_dtype).removeprefix("torch.")
    shards = _plan_shards(state, max_shard_bytes)
    for name in [p for p in out.glob("model*.safetensors*")]:
        name.unlink()  # stale shards from an earlier save must not linger
    if len(shards) == 1:
        write_atomic(out / "model.safetensors", lambda p: save_file(shards[0], str(p), metadata={"format": "pt"}),
                     _nbytes(shards[0]))
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            write_atomic(out / fname, lambda p, s=shard: save_file(s, str(p), metadata={"format": "pt"}),
                         _nbytes(shard))
            weight_map.update({k: fname for k in shard})
        total = sum(v.numel() * v.element_size() for v in state.values())
        write_json(out / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(out / "config.json", hf)
    gen = {k: special[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if special.get(k) is not None}
    write_json(out / "generation_config.json", gen)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def _nbytes(tensors: dict) -> int:
    return sum(v.numel() * v.element_size() for v in tensors.values())


def _plan_shards(state: dict, max_bytes: int | None) -> list[dict]:
    if not max_bytes:
        return [state]
    shards, cur, size = [], {}, 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if cur and size + n > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + n
    return shards + ([cur] if cur else [])
