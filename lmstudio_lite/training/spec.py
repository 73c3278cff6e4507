"""TrainSpec: everything one training run needs, validated up front.

A spec is what the UI form, the CLI flags and ``spec.json`` in a run folder
all turn into; a run can be repeated or resumed from its ``spec.json`` alone.
Each default is defined here only: the CLI's flags are generated from the fields
(help = the attribute docstring, ``metadata`` for choices and a flag named otherwise),
and the UI's starting values come from ``defaults()``.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from dataclasses import dataclass, field

from ..messages import Message
from ..threads import default_training_threads

OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
FAMILIES = ("llama", "gpt2")
CHAT_TEMPLATES = ("fallback", "chatml")  # from scratch; the presets of checkpoints/chat_template.py
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class TrainSpec:
    """One fine-tuning (or from-scratch) run."""

    data: str
    """Training data file: .txt, .jsonl, .csv or .tsv (format detected by training/data.py)."""
    base_model: str | None = field(default=None, metadata={"flag": "--model"})
    """Model folder to fine-tune (Hugging Face layout). Not used with ``from_scratch``."""
    out_name: str | None = field(default=None, metadata={"flag": "--out"})
    """Name of the finished model folder under the models dir (default: derived from the run id)."""
    steps: int = 0
    """Optimizer steps; give this or ``epochs`` (0 = use epochs)."""
    epochs: float = 0.0
    """Passes over the training examples; converted to steps once the data is read."""
    lr: float = 3e-4
    """Peak learning rate (after warm-up; the cosine schedule decays from it)."""
    batch_size: int = 8
    """Sequences per micro-batch, over all processes together under DDP."""
    grad_accum: int = 1
    """Micro-batches per optimizer step: the global batch is batch_size * grad_accum."""
    seq_len: int = 256
    """Longest training sequence in tokens (capped to the model's context)."""
    optimizer: str = field(default="adamw", metadata={"choices": OPTIMIZERS})
    """AdamW, or plain SGD (with momentum)."""
    weight_decay: float = 0.01
    """Applied to 2-D weights only (matrices, embeddings); never to norms and biases."""
    warmup_steps: int = -1
    """Linear warm-up steps; -1 = 5% of the run, at most 100."""
    scheduler: str = "cosine"
    """Learning rate after warm-up: "cosine" or "linear" decay to lr * min_lr_ratio, or "constant"."""
    min_lr_ratio: float = 0.1
    """The decaying schedules end at lr * min_lr_ratio."""
    clip: float = 1.0
    """Gradient-norm clipping (0 = off)."""
    lora_rank: int = 0
    """0 = full fine-tune; > 0 = train LoRA adapters of this rank only."""
    lora_alpha: float = 16.0
    """LoRA scale: the adapters' update is multiplied by alpha / rank."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA adapters' input (0 = none)."""
    lora_targets: tuple = ("q", "k", "v", "o")
    """Projections given LoRA adapters, among q, k, v, o, gate, up, down (a comma list on the command line)."""
    save_adapter: bool = True
    """With LoRA, also write the adapter (PEFT layout) into ``adapter/`` of the model folder."""
    eval_every: int = 50
    """Validation loss + probe generations every N steps (0 = only at the end)."""
    keep_best: bool = True
    """Export the weights of the evaluation with the lowest validation loss, not those of the last step."""
    early_stop_patience: int = 0
    """Stop after this many evaluations without a new best validation loss (0 = never stop early)."""
    overfit_warn_evals: int = 3
    """Warn when the validation loss rose this many evaluations in a row (0 = never warn)."""
    eval_batches: int = 16
    """At most this many validation batches per evaluation (0 = all)."""
    save_every: int = 100
    """Checkpoint every N steps (0 = only on cancel and at the end)."""
    log_every: int = 1
    """A metrics.jsonl line every N steps (evaluation steps are always logged)."""
    probe_prompts: list = field(default_factory=list, metadata={"flag": "--probe"})
    """Fixed prompts generated greedily at each evaluation; empty = two prompts from the validation set."""
    probe_tokens: int = 24
    """New tokens of each probe generation."""
    seed: int = 0
    """Seeds the data split and order and the initialisation: the same seed repeats a run."""
    device: str | None = None
    """cpu, cuda, cuda:1 or mps; None or "auto" = the best available."""
    precision: str = field(default="auto", metadata={"choices": PRECISIONS})
    """"fp32", or "bf16" (autocast with float32 master weights); "auto" = bf16 where the GPU or CPU runs it natively."""
    from_scratch: bool = False
    """Train a new model with a new byte-level BPE tokenizer learned from the data."""
    vocab_size: int = 8192
    """From scratch: the new tokenizer's vocabulary size."""
    n_layer: int = 6
    """From scratch: transformer blocks."""
    d_model: int = 384
    """From scratch: the model's width."""
    n_head: int = 6
    """From scratch: attention heads (d_model must divide by it)."""
    family: str = field(default="llama", metadata={"choices": FAMILIES})
    """From scratch: the architecture (Llama: RoPE, RMSNorm, SwiGLU; GPT-2: learned positions, LayerNorm, GELU)."""
    chat_template: str = field(default="fallback", metadata={"choices": CHAT_TEMPLATES})
    """From scratch: "fallback" (### User: / ### Assistant:) or "chatml" (adds <|im_start|>, <|im_end|>)."""
    threads: int = field(default_factory=default_training_threads)
    """Torch CPU threads of the training thread (default: all cores but one; set per thread, see jobs.py)."""
    val_fraction: float = 0.05
    """Share of the examples held out for validation."""
    task_prompt: str | None = None
    """An instruction put in front of every example (e.g. before each source text of a .csv/.tsv file)."""

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        if self.device is not None:
            self.device = str(self.device)  # a torch.device would not survive spec.json
        self.probe_prompts = [str(p) for p in self.probe_prompts]
        self._check_sources()
        self._check_numbers()
        self._check_choices()

    def _check_sources(self):
        if not self.data:
            raise ValueError("choose a training data file")
        if self.from_scratch and self.base_model:
            raise ValueError("from_scratch trains a new model: do not also give a base model")
        if not self.from_scratch and not self.base_model:
            raise ValueError("choose a base model to fine-tune (or train from scratch)")
        if self.out_name is not None and not _NAME_OK.match(self.out_name):
            raise ValueError(Message("spec.out_name", name=repr(self.out_name)))

    def _check_numbers(self):
        if self.steps < 0 or self.epochs < 0:
            raise ValueError(Message("spec.negative_length"))
        if self.steps and self.epochs:
            raise ValueError(Message("spec.both_lengths"))
        if not self.steps and not self.epochs:
            raise ValueError(Message("spec.no_length"))
        if not self.lr > 0 or self.lr > 1:
            raise ValueError(Message("spec.lr", lr=self.lr))
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "seq_len": self.seq_len,
                    "threads": self.threads, "probe_tokens": self.probe_tokens, "log_every": self.log_every}
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(Message("spec.whole", name=name, value=value))
        if self.seq_len < 2:
            raise ValueError(Message("spec.seq_len"))
        for name in ("eval_every", "save_every", "eval_batches", "lora_rank", "early_stop_patience",
                     "overfit_warn_evals"):
            if getattr(self, name) < 0:
                raise ValueError(Message("spec.negative", name=name))
        if self.warmup_steps < -1:
            raise ValueError(Message("spec.warmup"))
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.clip < 0:
            raise ValueError("weight_decay and clip cannot be negative")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_rank and self.lora_alpha <= 0:
            raise ValueError("lora_alpha must be positive")
        if not 0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")

    def _check_choices(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(Message("spec.scheduler", choices=", ".join(SCHEDULERS), got=repr(self.scheduler)))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        from ..model.lora import TARGETS

        bad = [t for t in self.lora_targets if t not in TARGETS]
        if self.lora_rank and (bad or not self.lora_targets):
            raise ValueError(f"LoRA targets must be among {', '.join(TARGETS)}; got {', '.join(bad) or 'none'}")
        if self.from_scratch:
            if self.chat_template not in CHAT_TEMPLATES:
                raise ValueError(f"chat_template must be fallback or chatml, got {self.chat_template!r}")
            if self.family not in FAMILIES:
                raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
            if self.lora_rank:
                raise ValueError("LoRA needs a trained base model: use lora_rank 0 with from_scratch")
            if self.vocab_size < 300:
                raise ValueError("vocab_size must be at least 300 (256 bytes + special tokens + merges)")
            for name in ("n_layer", "d_model", "n_head"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be positive")
            if self.d_model % self.n_head:
                raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")

    # -- (de)serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**data)

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps for the run, given the number of training examples."""
        if self.steps:
            return self.steps
        per_step = self.batch_size * self.grad_accum
        return max(1, -(-int(self.epochs * n_train) // per_step))

    def warmup(self, total: int) -> int:
        return min(100, total // 20) if self.warmup_steps < 0 else min(self.warmup_steps, total)


def defaults() -> dict:
    """Every field's default (factories called): the UI's starting values."""
    out = {}
    for f in dataclasses.fields(TrainSpec):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def field_help() -> dict[str, str]:
    """Each field's attribute docstring, one line: the help of its CLI flag.

    Read from the source (as litgpt's jsonargparse does); without the source (a stripped
    install) the flags still work, with no help text."""
    try:
        tree = ast.parse(inspect.getsource(TrainSpec))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    out = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            out[node.target.id] = " ".join(after.value.value.replace("``", "").split())
    return out
