"""What a run trains and what it leaves behind: model + tokenizer + data in, model folder out.

Training always builds its own model from files (the base folder, or a new
config for from-scratch runs): the model instance that serves chat is never
touched (STYLE.md rule 9).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import commit, write_json, write_text
from ..checkpoints.chat_template import CHATML_SPECIAL_TOKENS, FALLBACK_TEMPLATE, PRESETS
from ..checkpoints.folder import load_weights, read_config, save_folder
from ..checkpoints.hf_config import config_to_hf
from ..checkpoints.tokenizer import Tokenizer, train_bpe_tokenizer
from ..messages import Message
from ..model.config import ModelConfig
from ..model.lora import apply_lora, merge_lora
from ..model.transformer import Transformer
from .checkpointing import RunFolder, save_adapter
from .data import PreparedData, prepare_data, read_rows
from .model_card import render_card
from .spec import TrainSpec

EOS_TOKEN = "<|endoftext|>"  # the one special token of a from-scratch tokenizer (GPT-2 style)


@dataclass
class Built:
    model: Transformer  # float32 master weights on the training device, LoRA applied when asked
    tokenizer: Tokenizer
    model_type: str  # config.json model_type to save under
    save_dtype: torch.dtype  # dtype of the exported weights: the base's (bf16/fp16) or float32
    seq_len: int  # spec.seq_len capped to the model's context
    notes: list[str]


def build_model(spec: TrainSpec, run: RunFolder, device: torch.device, is_main: bool, barrier) -> Built:
    """Load the base (or create a new model + tokenizer), then apply LoRA. Same result on every rank."""
    notes = []
    if spec.from_scratch:
        if is_main and not (run.base_dir / "config.json").is_file():
            _write_scratch_base(spec, run.base_dir)
        barrier()  # other ranks read the tokenizer rank 0 trained: BPE ties must not differ
        cfg, hf = read_config(run.base_dir)
        tokenizer = Tokenizer.from_folder(run.base_dir)
        torch.manual_seed(spec.seed)
        model = Transformer(cfg).to(device)
        model.init_weights()
        save_dtype = torch.float32
    else:
        cfg, hf = read_config(spec.base_model)
        tokenizer = Tokenizer.from_folder(spec.base_model)
        model = load_weights(spec.base_model, cfg, device=device, dtype=torch.float32)
        save_dtype = _base_dtype(hf)
    if not tokenizer.has_chat_template:
        # render_chat falls back to this template; saving it makes transformers prompt the same way.
        tokenizer.chat_template = FALLBACK_TEMPLATE
    seq_len = spec.seq_len
    if seq_len > cfg.max_seq_len:
        notes.append(Message("log.seq_capped", seq_len=seq_len, context=cfg.max_seq_len))
        seq_len = cfg.max_seq_len
    if spec.lora_rank:
        torch.manual_seed(spec.seed)
        swapped = apply_lora(model, spec.lora_rank, spec.lora_alpha, spec.lora_dropout, spec.lora_targets)
        notes.append(Message("log.lora", rank=spec.lora_rank, layers=len(swapped)))
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    notes.append(Message("log.trainable", trainable=f"{trainable:,}",
                         total=f"{sum(p.numel() for p in model.parameters()):,}"))
    return Built(model, tokenizer, hf.get("model_type", cfg.family), save_dtype, seq_len, notes)


def _base_dtype(hf: dict) -> torch.dtype:
    name = hf.get("torch_dtype") or hf.get("dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def _texts(path: str):
    """Every text a data file holds, for learning a tokenizer's merges."""
    for row in read_rows(path).rows:
        if "text" in row:
            yield row["text"]
        for m in row.get("messages") or ():
            yield m["content"]
        for key in ("source", "target"):
            if key in row:
                yield row[key]


def _write_scratch_base(spec: TrainSpec, out: Path):
    """A new byte-level BPE learned from the data, and the config of the new model, into ``out``."""
    chatml = spec.chat_template == "chatml"
    specials = [EOS_TOKEN, *CHATML_SPECIAL_TOKENS] if chatml else [EOS_TOKEN]
    tok = train_bpe_tokenizer(_texts(spec.data), spec.vocab_size, specials)
    tokenizer = Tokenizer.from_tokenizers(tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                                          chat_template=PRESETS[spec.chat_template])
    d = spec.d_model
    # SwiGLU keeps the parameter count of a 4x GELU MLP at ~8/3 x width (rounded to 64 for fast matmuls).
    d_ff = 4 * d if spec.family == "gpt2" else 64 * -(-(8 * d // 3) // 64)
    cfg = ModelConfig(family=spec.family, vocab_size=tokenizer.vocab_size, n_layer=spec.n_layer,
                      n_head=spec.n_head, d_model=d, d_ff=d_ff, max_seq_len=spec.seq_len,
                      act="gelu_new" if spec.family == "gpt2" else "silu", tie_embeddings=True)
    out.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.eos_ids[0]
    # Documents end with <|endoftext|>; a ChatML answer ends with <|im_end|>: both stop generation.
    stops = [eos, tok.token_to_id("<|im_end|>")] if chatml else eos
    write_json(out / "config.json", config_to_hf(cfg, None, {"eos_token_id": stops, "pad_token_id": eos}))
    write_json(out / "generation_config.json", {"eos_token_id": stops, "pad_token_id": eos})
    tokenizer.save(out)


def load_data(spec: TrainSpec, tokenizer: Tokenizer, seq_len: int, per_rank_batch: int) -> PreparedData:
    return prepare_data(spec.data, tokenizer, seq_len, per_rank_batch, spec.val_fraction, spec.seed,
                        spec.task_prompt)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_out_name(spec: TrainSpec, run_id: str) -> str:
    if spec.from_scratch:
        return f"scratch-{run_id}"
    kind = "lora" if spec.lora_rank else "ft"
    return f"{Path(spec.base_model).name}-{kind}-{run_id}"


EXPORT_MARK = "lmstudio_run.json"  # in an exported folder: which run made it


def _exported_by(models_dir: Path, name: str, run_id: str) -> Path | None:
    """The folder this run already exported under ``name`` (or ``name-run_id``), if any."""
    for folder in (models_dir / name, models_dir / f"{name}-{run_id}"):
        try:
            if json.loads((folder / EXPORT_MARK).read_text(encoding="utf-8")).get("run_id") == run_id:
                return folder
        except (OSError, ValueError, AttributeError):
            continue
    return None


def export_model(built: Built, spec: TrainSpec, run: RunFolder, models_dir: Path, card: dict) -> Path:
    """Merge LoRA, write a complete model folder inside the run, then move it into the models dir.

    The folder appears in the models list only once complete (one rename). A name
    taken meanwhile gets the run id appended rather than overwriting a model. A resume
    after a kill between that rename and result.json finds the folder by its mark and
    returns it, instead of exporting a second copy.
    """
    name = spec.out_name or default_out_name(spec, run.run_id)
    done = _exported_by(models_dir, name, run.run_id)
    if done is not None:
        return done
    model, staging = built.model, run.path / "export"
    if staging.exists():
        shutil.rmtree(staging)
    if spec.lora_rank:
        if spec.save_adapter:
            base = spec.base_model or ""
            if save_adapter(model, staging / "adapter", base, spec.lora_rank, spec.lora_alpha,
                            spec.lora_dropout) is None:
                card.setdefault("notes", []).append("adapter not exported: GPT-2's fused q/k/v has no PEFT layout")
        merge_lora(model)
    save_folder(model, staging, tokenizer=built.tokenizer, dtype=built.save_dtype, model_type=built.model_type)
    write_text(staging / "README.md", render_card(card))
    write_json(staging / EXPORT_MARK, {"run_id": run.run_id})
    target = models_dir / name
    if target.exists():
        target = models_dir / f"{name}-{run.run_id}"
    models_dir.mkdir(parents=True, exist_ok=True)
    try:
        commit(staging, target)
    except OSError:  # runs and models on different filesystems: copy, then remove
        shutil.move(str(staging), str(target))
    return target
