"""The README.md model card of a model trained here: where it came from and how it was made."""
from __future__ import annotations

import json


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


HYPERPARAMETERS = ("steps", "epochs", "lr", "batch_size", "grad_accum", "seq_len", "optimizer", "weight_decay",
                   "warmup_steps", "scheduler", "min_lr_ratio", "clip", "lora_rank", "lora_alpha", "lora_dropout",
                   "lora_targets", "precision", "seed", "keep_best", "early_stop_patience")


def render_card(info: dict) -> str:
    """Markdown from ``info``: name, base_model, from_scratch, data, data_sha256, data_format, spec (dict),
    steps_done, total_steps, train_loss, val_loss, val_ppl, probes [{prompt, output}], run_id, device, notes."""
    spec = info.get("spec", {})
    base = "a new model trained from scratch" if info.get("from_scratch") else f"`{info.get('base_model')}`"
    kind = ("LoRA fine-tune (adapters merged into the weights)" if spec.get("lora_rank")
            else "pretraining from scratch" if info.get("from_scratch") else "full fine-tune")
    lines = [
        "---", "library_name: transformers", "tags:", "- lmstudio_lite", "---", "",
        f"# {info.get('name', 'model')}", "",
        f"Trained with lmstudio_lite: {kind} of {base}.", "",
        "## Training data", "",
        f"- file: `{info.get('data')}`",
        f"- sha256: `{info.get('data_sha256')}`",
        f"- format: {_fmt(info.get('data_format'))}",
        f"- examples: {_fmt(info.get('train_examples'))} train, {_fmt(info.get('val_examples'))} validation", "",
        "## Hyperparameters", "",
        "| setting | value |", "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt(spec.get(k))} |" for k in HYPERPARAMETERS if k in spec]
    lines += [
        "", "## Results", "",
        f"- steps: {_fmt(info.get('steps_done'))} of {_fmt(info.get('total_steps'))}",
        f"- final train loss: {_fmt(info.get('train_loss'))}",
        f"- final validation loss: {_fmt(info.get('val_loss'))} (perplexity {_fmt(info.get('val_ppl'))})",
        f"- run: `{info.get('run_id')}` on {_fmt(info.get('device'))}",
    ]
    lines += [f"- note: {n}" for n in info.get("notes", [])]
    probes = info.get("probes") or []
    if probes:
        lines += ["", "## Sample outputs (greedy)", ""]
        for p in probes:
            lines += [f"**Prompt:** {json.dumps(p['prompt'], ensure_ascii=False)}", "",
                      "```text", p["output"].replace("```", "`\u200b``"), "```", ""]
    lines += ["", "## Full training settings", "", "```json", json.dumps(spec, indent=2, ensure_ascii=False),
              "```", ""]
    return "\n".join(lines)
