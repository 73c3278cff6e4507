"""A training run on disk: spec.json, metrics.jsonl, log.txt and an atomic checkpoint/.

Layout of ``runs/<run_id>/``::

    spec.json          the TrainSpec used (resume reads it back)
    metrics.jsonl      one JSON object per logged step, append-only
    log.txt            human-readable log lines (and a traceback when a run fails)
    result.json        the outcome: {"state", "step", "total_steps"} on cancel or failure ("error"),
                       plus "model_path" once the model is exported
    base/              from-scratch runs only: config.json + tokenizer files of the new model
    checkpoint/        model.safetensors (trainable parameters) + state.pt (optimizer, step, RNG, batcher)
    best/              model.safetensors + best.json: the trainable parameters at the lowest validation
                       loss so far (spec.keep_best), exported instead of the last step's

A checkpoint (and ``best/`` alike) is written to ``checkpoint.tmp/``, fsynced, then swapped in with two
renames (``checkpoint -> checkpoint.prev``, ``checkpoint.tmp -> checkpoint``).
A crash at any point leaves either ``checkpoint/`` or ``checkpoint.prev/``
complete, and ``load_checkpoint`` takes whichever exists. ``state.pt`` holds only
tensors and plain containers and is read with ``torch.load(weights_only=True)``:
no pickled object is ever executed.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path

import torch

from ..atomic import disk_full_named, fsync_dir, fsync_file, write_json, write_text
from ..checkpoints.errors import CheckpointError

CKPT, PREV = "checkpoint", "checkpoint.prev"
BEST = "best"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class RunFolder:
    """Files of one run. Only rank 0 of a distributed run writes through it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_id = self.path.name

    @property
    def spec_path(self) -> Path:
        return self.path / "spec.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def base_dir(self) -> Path:
        return self.path / "base"

    def create(self, spec_dict: dict):
        self.path.mkdir(parents=True, exist_ok=False)
        write_json(self.spec_path, spec_dict)

    def read_spec(self) -> dict:
        if not self.spec_path.is_file():
            raise CheckpointError(self.spec_path, "missing: this is not a training run folder")
        try:
            return json.loads(self.spec_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(self.spec_path, f"cannot be read ({e})") from None

    def write_result(self, result: dict):
        write_json(self.path / "result.json", result)

    def read_result(self) -> dict:
        try:
            return json.loads((self.path / "result.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    # -- metrics and log -----------------------------------------------------------
    def append_metrics(self, record: dict):
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def read_metrics(self) -> list[dict]:
        return read_metrics_file(self.metrics_path)

    def truncate_metrics(self, last_step: int):
        """Drop lines logged after ``last_step`` (a resumed run logs those steps again)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        write_text(self.metrics_path, text)

    def log(self, line: str):
        with open(self.path / "log.txt", "a", encoding="utf-8") as f:
            f.write(time.strftime("%H:%M:%S ") + line + "\n")


def read_metrics_file(path: Path) -> list[dict]:
    """Every complete JSON line; a torn last line (a crash mid-write) is skipped."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# -- checkpoints -------------------------------------------------------------------
def _swap_in(run_dir: Path, name: str, needed: int, write) -> Path:
    """Let ``write(tmp_folder)`` fill ``<name>.tmp/``, fsync it, then swap it in for ``<name>/``
    with two renames (the old copy stays complete as ``<name>.prev/`` until the new one is in)."""
    tmp, final, prev = run_dir / f"{name}.tmp", run_dir / name, run_dir / f"{name}.prev"
    if tmp.exists():
        shutil.rmtree(tmp)  # left over from an interrupted save; never the live copy
    tmp.mkdir(parents=True)
    try:
        with disk_full_named(final, needed):
            write(tmp)
            for file in tmp.iterdir():
                fsync_file(file)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the last copy stays
        raise
    fsync_dir(tmp)
    if final.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(final, prev)
    os.replace(tmp, final)
    fsync_dir(run_dir)
    if prev.exists():
        shutil.rmtree(prev)
    return final


def _cpu(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}


def save_checkpoint(run_dir: str | Path, weights: dict[str, torch.Tensor], state: dict) -> Path:
    """Write weights (safetensors) and training state (torch.save) atomically into ``checkpoint/``."""
    from safetensors.torch import save_file

    cpu = _cpu(weights)
    # Weights plus AdamW's two moments: about three times the weights.
    needed = 3 * sum(v.numel() * v.element_size() for v in cpu.values())

    def write(tmp: Path):
        save_file(cpu, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(state, tmp / "state.pt")

    return _swap_in(Path(run_dir), CKPT, needed, write)


def save_best(run_dir: str | Path, weights: dict[str, torch.Tensor], info: dict) -> Path:
    """The trainable weights of the best evaluation so far into ``best/`` (atomically), with
    ``best.json`` = ``info`` ({"step", "val_loss"})."""
    from safetensors.torch import save_file

    cpu = _cpu(weights)

    def write(tmp: Path):
        save_file(cpu, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "best.json").write_text(json.dumps(info), encoding="utf-8")

    return _swap_in(Path(run_dir), BEST, sum(v.numel() * v.element_size() for v in cpu.values()), write)


def best_info(run_dir: str | Path) -> dict | None:
    """{"step", "val_loss"} of the run's kept best weights, or None when it has none."""
    for name in (BEST, f"{BEST}.prev"):
        folder = Path(run_dir) / name
        try:
            info = json.loads((folder / "best.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (folder / "model.safetensors").is_file():
            return {**info, "folder": str(folder)}
    return None


def load_best(run_dir: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    info = best_info(run_dir)
    if info is None:
        raise CheckpointError(Path(run_dir) / BEST, "no best weights were kept in this run")
    path = Path(info["folder"]) / "model.safetensors"
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors has its own error types for corrupt files
        raise CheckpointError(path, f"cannot be read ({e})") from None


def checkpoint_path(run_dir: str | Path) -> Path | None:
    """The complete checkpoint folder of a run (``checkpoint/``, else ``checkpoint.prev/``), or None."""
    run_dir = Path(run_dir)
    for name in (CKPT, PREV):
        folder = run_dir / name
        if (folder / "model.safetensors").is_file() and (folder / "state.pt").is_file():
            return folder
    return None


def load_checkpoint(run_dir: str | Path, device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, state) of the latest complete checkpoint; CheckpointError when there is none."""
    from safetensors.torch import load_file

    folder = checkpoint_path(run_dir)
    if folder is None:
        raise CheckpointError(Path(run_dir) / CKPT, "no complete checkpoint in this run; it cannot be resumed")
    try:
        weights = load_file(str(folder / "model.safetensors"), device=str(device))
    except Exception as e:  # safetensors has its own error types for corrupt files
        raise CheckpointError(folder / "model.safetensors", f"cannot be read ({e})") from None
    try:
        state = torch.load(folder / "state.pt", map_location=device, weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(folder / "state.pt", f"cannot be read ({e})") from None
    return weights, state


# -- LoRA adapter in the PEFT layout ---------------------------------------------------
def save_adapter(model, out_dir: str | Path, base_model: str, rank: int, alpha: float, dropout: float) -> Path | None:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` as PEFT lays them out.

    PEFT names a layer by its checkpoint module (``model.layers.0.self_attn.q_proj``)
    and stores ``lora_A [r, in]``, ``lora_B [out, r]``. GPT-2 fuses q/k/v into one
    ``c_attn`` that PEFT cannot adapt per projection, so adapters on q/k/v of a GPT-2
    model are not exported (returns None); the merged model is always saved.
    """
    from safetensors.torch import save_file

    from ..checkpoints.names import entries_for
    from ..model.lora import lora_layers

    layers = lora_layers(model)
    if not layers:
        return None
    by_ours = {e.ours: e for e in entries_for(model.config)}
    tensors, modules = {}, set()
    for name, layer in layers.items():
        entry = by_ours[name + ".weight"]
        if entry.split is not None:
            return None
        hf_module = entry.theirs.removesuffix(".weight")
        modules.add(hf_module.rsplit(".", 1)[-1])
        prefix = "base_model.model." + hf_module
        tensors[prefix + ".lora_A.weight"] = layer.lora_a.detach().t().contiguous().cpu()
        tensors[prefix + ".lora_B.weight"] = layer.lora_b.detach().t().contiguous().cpu()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    write_json(out / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(modules),
        "bias": "none", "fan_in_fan_out": model.config.family == "gpt2", "inference_mode": True})
    return out
