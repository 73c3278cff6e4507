"""``lmstudio-lite train``: flags -> TrainSpec -> run_training, with a one-line progress bar.

Ctrl-C cancels like the UI's Cancel button: the run stops at the next step
boundary, keeps a checkpoint, and the command exits with 130 (resume it with
``--resume RUN``). A second Ctrl-C aborts at once. Under
``torchrun --nproc_per_node N -m lmstudio_lite.training.cli ...`` the same code
trains with DDP; only rank 0 prints.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

EXIT_CANCELLED = 130


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", help="base model folder to fine-tune")
    p.add_argument("--data", help="training data: .txt, .jsonl, .csv or .tsv")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=0, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=0.0, help="passes over the data (instead of --steps)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 3e-4)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch (default 8)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=-1, help="-1 = 5%% of the run, at most 100")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0 = full fine-tune)")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--lora-targets", default="q,k,v,o", help="comma list of q,k,v,o,gate,up,down")
    p.add_argument("--eval-every", type=int, default=50, help="validation + probe generations every N steps")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, default=1, help="a metrics.jsonl line every N steps")
    p.add_argument("--probe", action="append", default=[], help="a prompt to generate from at each evaluation")
    p.add_argument("--out", help="name of the finished model in the models folder")
    p.add_argument("--resume", metavar="RUN", help="continue a cancelled or interrupted run by its id")
    p.add_argument("--from-scratch", action="store_true", help="train a new model with a new BPE tokenizer")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--family", choices=("llama", "gpt2"), default="llama")
    p.add_argument("--chat-template", choices=("fallback", "chatml"), default="fallback",
                   help="chat format of a from-scratch model (chatml adds <|im_start|>/<|im_end|> tokens)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 or mps (default: best available)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 = autocast with float32 master weights (default: bf16 where the GPU or CPU runs it natively)")
    p.add_argument("--threads", type=int, help="CPU threads for training (default: all cores but one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--task-prompt", help="instruction put before each source text of a .csv/.tsv file")
    return p


def spec_from_args(args):
    from .spec import TrainSpec

    extra = {"threads": args.threads} if args.threads else {}
    return TrainSpec(
        data=args.data, base_model=args.model, out_name=args.out, steps=args.steps, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, grad_accum=args.grad_accum, seq_len=args.seq_len, optimizer=args.optimizer,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        eval_every=args.eval_every, save_every=args.save_every, log_every=args.log_every, probe_prompts=args.probe,
        seed=args.seed, device=args.device, precision=args.precision, from_scratch=args.from_scratch,
        vocab_size=args.vocab_size, n_layer=args.n_layer, d_model=args.d_model, n_head=args.n_head,
        family=args.family, chat_template=args.chat_template, val_fraction=args.val_fraction,
        task_prompt=args.task_prompt, **extra)


def _clock(seconds) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """A carriage-return progress line on stderr; log lines print above it."""

    def __init__(self, stream=None, width: int = 24):
        self.stream, self.width = stream or sys.stderr, width
        self.total, self.line, self.val = None, "", None

    def start(self, info: dict):
        self.total = info["total_steps"]

    def step(self, r: dict):
        if r.get("val_loss") is not None:
            self.val = r["val_loss"]
        total = self.total or r["step"]
        done = int(self.width * r["step"] / total)
        bar = "#" * done + "." * (self.width - done)
        val = f"  val {self.val:.3f}" if self.val is not None else ""
        self.line = (f"[{bar}] {r['step']}/{total}  loss {r['loss']:.3f}{val}  "
                     f"{r['tokens_per_s']:,.0f} tok/s  ETA {_clock(r.get('eta_s'))}")
        self._draw()
        for p in r.get("probes") or []:
            self.log(f"probe {p['prompt'][-40:]!r} -> {p['output'][:80]!r}")

    def log(self, line: str):
        self.stream.write("\r\033[K" + line + "\n")
        self._draw()

    def _draw(self):
        if self.line:
            self.stream.write("\r\033[K" + self.line)
        self.stream.flush()

    def end(self):
        if self.line:
            self.stream.write("\n")
            self.stream.flush()


def run_train(args) -> int:
    """Run ``lmstudio-lite train``; 0 finished, 130 cancelled (Ctrl-C), 1 failed, 2 bad arguments."""
    from . import distributed as D
    from ..errors import user_message
    from .run import run_training
    from .trainer import Hooks

    try:
        spec = None if args.resume else spec_from_args(args)
    except ValueError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    is_main = int(os.environ.get("RANK", "0")) == 0
    bar = Progress() if is_main else None
    hooks = Hooks(on_start=bar.start, on_step=bar.step, on_log=bar.log) if bar else Hooks()
    cancel = threading.Event()
    restore = _install_cancel_handlers(cancel, bar, also_sigterm=D.launched_by_torchrun())
    started = time.perf_counter()
    try:
        result = run_training(spec, resume=args.resume, cancel=cancel, hooks=hooks)
    except KeyboardInterrupt:
        if bar:
            bar.end()
        print("aborted", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as e:
        if bar:
            bar.end()
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 1
    finally:
        restore()
    if bar:
        bar.end()
        took = _clock(time.perf_counter() - started)
        if result.state == "cancelled":
            print(f"cancelled at step {result.step}/{result.total_steps} after {took}; checkpoint kept. "
                  f"Continue with: lmstudio-lite train --resume {result.run_id}", file=sys.stderr)
        else:
            print(f"finished {result.step} steps in {took}; model: {result.model_path}", file=sys.stderr)
    return EXIT_CANCELLED if result.state == "cancelled" else 0


def _install_cancel_handlers(cancel: threading.Event, bar, also_sigterm: bool):
    """First Ctrl-C: cancel at the next step boundary. Second: abort (KeyboardInterrupt)."""
    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        if bar:
            bar.log("cancelling after this step (Ctrl-C again to abort) ...")

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    signals = [signal.SIGINT] + ([signal.SIGTERM] if also_sigterm else [])
    previous = {s: signal.signal(s, handler) for s in signals}
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


def main(argv=None) -> int:
    parser = add_train_arguments(argparse.ArgumentParser(prog="lmstudio-lite train",
                                                         description="Fine-tune or train a model"))
    return run_train(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
