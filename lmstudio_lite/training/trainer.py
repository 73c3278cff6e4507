"""The training loop: loss, optimizer, schedule, accumulation, clipping, mixed precision,
evaluation with probe generations, checkpoints and exact resume.

Shapes: B rows of a micro-batch (this rank's share under DDP), T tokens, C d_model,
V vocabulary, N positions that carry loss.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..errors import LiteError
from ..generation import Engine, SamplingParams
from ..messages import Message
from . import distributed as D
from .checkpointing import RunFolder, best_info, load_best, load_checkpoint, save_best, save_checkpoint
from .data import IGNORE, Batcher, Example, PreparedData
from .loss import CausalLMLoss
from .schedule import lr_at
from .spec import TrainSpec
from .watch import ValWatch

ADAM_BETAS = (0.9, 0.95)  # the usual choice for transformer LMs (GPT-3, Llama); 0.999 reacts slowly


class TrainingError(LiteError, RuntimeError):
    """The run cannot go on (diverged, nothing to resume, a name taken): a message for the user."""


@dataclass
class Hooks:
    """Callbacks of rank 0; each gets plain data. ``on_step`` runs after every optimizer step."""
    on_start: Callable[[dict], None] | None = None
    on_step: Callable[[dict], None] | None = None
    on_log: Callable[[str], None] | None = None


def make_optimizer(spec: TrainSpec, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on 2-D weights (matrices, embeddings, LoRA A/B) only, never on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": spec.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=0.9)
    # The fused kernel updates each tensor in one pass instead of a dozen foreach ops.
    fused = all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
    return torch.optim.AdamW(groups, lr=spec.lr, betas=ADAM_BETAS, eps=1e-8, fused=fused)


def pad_batch(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad examples to the longest: (ids [B, T], labels [B, T] with IGNORE on padding)."""
    width = max(len(ex.input_ids) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, ex in enumerate(examples):
        ids[i, :len(ex.input_ids)] = torch.tensor(ex.input_ids)
        labels[i, :len(ex.labels)] = torch.tensor(ex.labels)
    return ids, labels


class Trainer:
    """One run's live state. Every rank holds one; rank 0 alone writes files and calls hooks."""

    def __init__(self, spec: TrainSpec, run: RunFolder, built, data: PreparedData, ctx: D.DistContext,
                 device: torch.device, hooks: Hooks, cancel, amp_dtype: torch.dtype | None):
        self.spec, self.run, self.built, self.data, self.ctx = spec, run, built, data, ctx
        self.device, self.hooks, self.cancel, self.amp_dtype = device, hooks, cancel, amp_dtype
        self.model = built.model  # the Transformer (unwrapped)
        self.loss_module = D.wrap_model(CausalLMLoss(self.model), ctx, device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(spec, self.model)
        self.pad_id = built.tokenizer.pad_id if built.tokenizer.pad_id is not None else 0
        per_rank = spec.batch_size // ctx.world
        self.batcher = Batcher(data.train, per_rank, spec.seed, self.pad_id).shard(ctx.rank, ctx.world)
        self.total = spec.total_steps(len(data.train))
        self.warmup = spec.warmup(self.total)
        self.step, self.elapsed_before, self.last, self.last_probes = 0, 0.0, {}, []
        self.probe_ids = self._probe_prompts()
        self.watch = ValWatch(spec.early_stop_patience, spec.overfit_warn_evals)

    # -- state -------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def state(self, elapsed: float) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"step": self.step, "total_steps": self.total, "elapsed_s": elapsed, "rng": rng,
                "optimizer": self.optimizer.state_dict(), "batcher": self.batcher.state_dict(),
                "last": {k: v for k, v in self.last.items() if isinstance(v, (int, float))},
                "watch": self.watch.state_dict()}

    def save(self, elapsed: float):
        if self.ctx.is_main:
            save_checkpoint(self.run.path, self.trainable_state(), self.state(elapsed))
            self._log(Message("log.checkpoint", step=self.step))
        D.barrier(self.ctx)

    def restore(self):
        """Continue exactly where the last checkpoint stopped: weights, optimizer, step, RNG, data position."""
        weights, state = load_checkpoint(self.run.path, self.device)
        want = set(self.trainable_state())
        if set(weights) != want:
            missing = sorted(want - set(weights))[:3] or sorted(set(weights) - want)[:3]
            raise TrainingError(f"the checkpoint does not match this model (e.g. {', '.join(missing)})")
        with torch.no_grad():
            for name, p in self.trainable_state().items():
                p.copy_(weights[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batcher.load_state_dict(state["batcher"])
        self.step, self.elapsed_before = int(state["step"]), float(state["elapsed_s"])
        self.last = dict(state.get("last", {}))
        self.watch.load_state_dict(state.get("watch"))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(_as_tuple(rng["python"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        if self.ctx.rank:  # only rank 0's generator is saved: other ranks get their own stream back
            torch.manual_seed(self.spec.seed + 7919 * self.ctx.rank + self.step)
        if self.ctx.is_main:
            self.run.truncate_metrics(self.step)

    # -- one optimizer step -----------------------------------------------------------------
    def _amp(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def train_step(self) -> dict:
        """Accumulate ``grad_accum`` micro-batches, clip, step. Loss is the mean over every
        loss-carrying token of the global batch, however it is split over micro-batches and ranks."""
        lr = lr_at(self.step, self.spec.lr, self.warmup, self.total, self.spec.min_lr_ratio, self.spec.scheduler)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [next(self.batcher) for _ in range(self.spec.grad_accum)]
        counts = torch.tensor([sum(int((lab[:, 1:] != IGNORE).sum()) for _, lab in micro),
                               sum(ids.numel() for ids, _ in micro)], dtype=torch.float64,
                              device=D.comm_device())
        n_loss, n_tokens = D.all_reduce_sum(counts, self.ctx).tolist()
        scale = self.ctx.world / max(n_loss, 1.0)  # DDP averages gradients over ranks
        total = torch.zeros((), dtype=torch.float32, device=self.device)
        for i, (ids, labels) in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or not self.ctx.enabled else self.loss_module.no_sync()
            with sync:
                with self._amp():
                    loss_sum = self.loss_module(ids.to(self.device), labels.to(self.device))
                (loss_sum * scale).backward()
            total += loss_sum.detach()
        loss = D.all_reduce_sum(total.to(D.comm_device()).double(), self.ctx).item() / max(n_loss, 1.0)
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"the loss became {loss} at step {self.step + 1} (learning rate {lr:.3g}); "
                                "training stopped. Lower the learning rate or check the data")
        grad_norm = None
        if self.spec.clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.spec.clip))
            if not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingError(f"the gradient became {grad_norm} at step {self.step + 1}; training stopped. "
                                    "Lower the learning rate")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": int(n_tokens)}

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss/perplexity and greedy probe outputs, on rank 0, in eval mode, then back to train."""
        self.model.eval()
        try:
            out = {}
            val = self.data.val
            bs = self.spec.batch_size
            n_batches = -(-len(val) // bs)
            if self.spec.eval_batches:
                n_batches = min(n_batches, self.spec.eval_batches)
            loss_sum, n = 0.0, 0
            for b in range(n_batches):
                ids, labels = pad_batch(val[b * bs:(b + 1) * bs], self.pad_id)
                with self._amp():
                    loss_sum += float(CausalLMLoss(self.model)(ids.to(self.device), labels.to(self.device)))
                n += int((labels[:, 1:] != IGNORE).sum())
            if n:
                out["val_loss"] = loss_sum / n
                out["val_ppl"] = math.exp(min(out["val_loss"], 50.0))
            out["probes"] = self.probes()
            return out
        finally:
            self.model.train()

    def _probe_prompts(self) -> list[list[int]]:
        tok, limit = self.built.tokenizer, self.model.config.max_seq_len - self.spec.probe_tokens - 1
        if self.spec.probe_prompts:
            prompts = [tok.encode(p) for p in self.spec.probe_prompts]
        else:  # the prompt part of the first validation examples; text data: its first tokens
            prompts = []
            for ex in (self.data.val or self.data.train)[:2]:
                cut = next((i for i, lab in enumerate(ex.labels) if lab != IGNORE), 0)
                prompts.append(ex.input_ids[:cut] if cut else ex.input_ids[:min(16, len(ex.input_ids) // 2 or 1)])
        return [p[-limit:] for p in prompts if p]

    def probes(self) -> list[dict]:
        """Greedy continuations of the fixed probe prompts (the engine runs under inference_mode)."""
        tok = self.built.tokenizer
        engine = Engine(self.model, tok, self.device)
        out = []
        for ids in self.probe_ids:
            stream = engine.stream(ids, SamplingParams(temperature=0.0), self.spec.probe_tokens)
            text = "".join(stream)
            out.append({"prompt": tok.decode(ids, skip_special_tokens=False), "output": text, "step": self.step})
        return out

    # -- the loop ---------------------------------------------------------------------------
    def _cancelled(self) -> bool:
        return self._agree(self.cancel is not None and self.cancel.is_set())

    def _agree(self, mine: bool) -> bool:
        """True on every rank when any rank says so: every rank stops at the same step."""
        flag = torch.tensor([1.0 if mine else 0.0], device=D.comm_device())
        return bool(D.all_reduce_sum(flag, self.ctx).item())

    def loop(self) -> str:
        """Train to ``total`` steps (or an early stop); returns "finished" or "cancelled" (a checkpoint
        is written either way)."""
        spec, start, stop = self.spec, time.perf_counter(), False
        steps_here, window_tokens, window_t = 0, 0, start
        while self.step < self.total:
            # 1. stop at a step boundary when asked (the Cancel button, Ctrl-C)
            if self._cancelled():
                self._log(Message("log.cancelled", step=self.step))
                self.save(self.elapsed_before + time.perf_counter() - start)
                return "cancelled"
            # 2. one optimizer step
            result = self.train_step()
            steps_here += 1
            now = time.perf_counter()
            window_tokens += result["tokens"]
            elapsed = self.elapsed_before + now - start
            record = {"step": self.step, "epoch": round(self.step * spec.batch_size * spec.grad_accum
                                                        / len(self.data.train), 4),
                      "loss": result["loss"], "lr": result["lr"], "grad_norm": result["grad_norm"],
                      "tokens_per_s": window_tokens / max(now - window_t, 1e-9), "elapsed_s": round(elapsed, 3),
                      "eta_s": round((now - start) / steps_here * (self.total - self.step), 1)}
            # 3. evaluate on schedule and at the end (rank 0; the others wait at the next collective)
            is_eval = self.step == self.total or (spec.eval_every and self.step % spec.eval_every == 0)
            if is_eval and self.ctx.is_main:
                record.update(self.evaluate())
                stop = self._judge(record)
            self.last = {k: v for k, v in record.items() if k != "probes"}
            if "probes" in record:
                self.last_probes = record["probes"]
            # 4. log: metrics.jsonl every log_every steps and at every evaluation
            if self.ctx.is_main:
                logged = bool(is_eval or self.step % spec.log_every == 0)
                if logged:
                    self.run.append_metrics({k: v for k, v in record.items() if k != "eta_s"})
                    window_tokens, window_t = 0, time.perf_counter()
                record["logged"] = logged
                if self.hooks.on_step:
                    self.hooks.on_step(record)
            # 5. early stopping, agreed by every rank (only rank 0 evaluated)
            if is_eval and spec.early_stop_patience and self._agree(self.ctx.is_main and stop):
                self._log(Message("log.early_stop", step=self.step, n=spec.early_stop_patience,
                                  best=self.watch.best_step))
                self.save(self.elapsed_before + time.perf_counter() - start)
                return "finished"
            # 6. checkpoint on schedule and at the end
            if self.step == self.total or (spec.save_every and self.step % spec.save_every == 0):
                self.save(self.elapsed_before + time.perf_counter() - start)
        return "finished"

    def _judge(self, record: dict) -> bool:
        """Rank 0, after an evaluation: keep the best weights, warn of overfitting; True = stop early."""
        if "val_loss" not in record:
            return False  # no validation examples: nothing to judge by
        verdict = self.watch.update(self.step, record["val_loss"], record["loss"])
        if verdict.improved and self.spec.keep_best:
            save_best(self.run.path, self.trainable_state(), {"step": self.step, "val_loss": record["val_loss"]})
        if verdict.warning:
            record["warning"] = verdict.warning
            self._log(Message("log.warning", warning=verdict.warning))
        return verdict.stop

    def use_best(self) -> dict | None:
        """Put the kept best weights back (before export); {"step", "val_loss"} of them, or None when
        the last step is the best or none were kept."""
        if not self.spec.keep_best or self.watch.best_loss is None or self.watch.best_step == self.step:
            return None
        kept = best_info(self.run.path)
        if kept is None or kept.get("step") != self.watch.best_step:  # a crash between the two saves
            self._log(Message("log.best_missing", step=self.watch.best_step))
            return None
        weights = load_best(self.run.path, self.device)
        with torch.no_grad():
            for name, p in self.trainable_state().items():
                p.copy_(weights[name])
        return {"step": self.watch.best_step, "val_loss": self.watch.best_loss}

    def _log(self, line: str):
        if self.ctx.is_main:
            self.run.log(line)
            if self.hooks.on_log:
                self.hooks.on_log(line)


def _as_tuple(x):
    """random.setstate wants tuples; a state read back from torch.load keeps them, lists are converted."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
