"""``lmstudio-lite train``: flags -> TrainSpec -> run_training, with a one-line progress bar.

Ctrl-C cancels like the UI's Cancel button: the run stops at the next step
boundary, keeps a checkpoint, and the command exits with 130 (resume it with
``--resume RUN``). A second Ctrl-C aborts at once. Under
``torchrun --nproc_per_node N -m lmstudio_lite.training.cli ...`` the same code
trains with DDP; only rank 0 prints.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time

EXIT_CANCELLED = 130


LENGTH = ("steps", "epochs")  # one or the other: a mutually exclusive pair of flags


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One flag per TrainSpec field (``--field-name``, or the field's ``metadata["flag"]``), generated:
    help from its docstring, the type and default from the field, choices from its metadata. A flag
    left out leaves the field to TrainSpec's own default, so every default is defined once."""
    from .spec import TrainSpec, defaults, field_help

    helps, values = field_help(), defaults()
    length = p.add_mutually_exclusive_group()
    for f in dataclasses.fields(TrainSpec):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        group = length if f.name in LENGTH else p
        group.add_argument(flag, dest=f.name, default=None, **_flag_kind(f, flag, helps.get(f.name, ""), values))
    p.add_argument("--resume", metavar="RUN", help="continue a cancelled or interrupted run by its id")
    return p


def _flag_kind(f: dataclasses.Field, flag: str, doc: str, values: dict) -> dict:
    kind = str(f.type).split("|")[0].strip()  # "str | None" -> "str" (annotations are strings here)
    shown = values.get(f.name) if f.default is not dataclasses.MISSING else None
    if shown not in (None, "", (), []) and "default" not in doc:
        shown = ",".join(shown) if isinstance(shown, tuple) else shown
        doc = f"{doc} (default: {shown})".strip()
    out = {"help": doc.replace("%", "%%"), "choices": f.metadata.get("choices"),
           "metavar": None if f.metadata.get("choices") else flag[2:].upper().replace("-", "_")}
    if kind == "bool":
        out["action"] = argparse.BooleanOptionalAction
    elif kind == "list":
        out.update(action="append", metavar="TEXT", help=out["help"] + " Repeat the flag for more.")
    elif kind == "tuple":
        out.update(type=_comma_list, metavar="A,B,...")
    else:
        out["type"] = {"int": int, "float": float}.get(kind, str)
    return out


def _comma_list(text: str) -> tuple:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def spec_from_args(args):
    """The TrainSpec of the flags given; the others keep TrainSpec's defaults."""
    from .spec import TrainSpec

    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainSpec)}
    return TrainSpec(**{name: value for name, value in given.items() if value is not None})


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
