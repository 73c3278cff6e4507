"""The background training job: one run at a time in one daemon thread.

The narrow protocol (STYLE.md rule 9): ``start(spec) -> run_id``, ``cancel()``
(an Event checked at every optimizer step), ``status()`` (a cheap, lock-protected
snapshot the UI polls), and the run's append-only ``metrics.jsonl`` to rebuild a
plot after a page reload. Training loads its own model from files; the model
serving chat is never touched.

Threads: the job thread takes ``threads.training_threads(spec.threads)`` (the one
thread policy, lmstudio_lite/threads.py): the count is per calling thread on this torch
build, so a 1-thread job leaves chat its own thread count instead of the two competing
for both cores. With a one-process GPU job the CPU count barely matters.
"""
from __future__ import annotations

import copy
import threading
import time

from ..checkpoints.errors import CheckpointError
from ..errors import LiteError
from ..messages import Message, message_of
from ..paths import AppPaths, app_paths
from .checkpointing import RunFolder, best_info, checkpoint_path, new_run_id, read_metrics_file
from .run import run_training
from .spec import TrainSpec
from .trainer import Hooks

STATES = ("idle", "queued", "running", "cancelling", "finished", "failed", "cancelled")
HISTORY_MAX = 400  # plot points kept in the status; halved (every other point) when full
LOG_MAX = 50


class JobBusyError(LiteError, RuntimeError):
    """A second run was started while one is still going; ``run_id`` and ``state`` name that one."""

    def __init__(self, run_id: str | None, state: str):
        super().__init__(f"run {run_id} is still {state}: cancel it or wait for it to finish")
        self.run_id, self.state = run_id, state


def _blank(state: str = "idle", run_id: str | None = None) -> dict:
    return {"state": state, "run_id": run_id, "step": 0, "total_steps": None, "epoch": 0.0, "loss": None,
            "val_loss": None, "val_ppl": None, "lr": None, "tokens_per_s": None, "elapsed_s": 0.0, "eta_s": None,
            "probes": [], "error": None, "model_path": None, "run_dir": None, "history": [], "log": [],
            "preview": None, "warning": None}


class JobRunner:
    """Runs one training job at a time in a background daemon thread."""

    def __init__(self, paths: AppPaths | None = None):
        self.paths = paths or app_paths()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._status = _blank()

    # -- control -------------------------------------------------------------------------
    def start(self, spec: TrainSpec | None = None, resume: str | None = None) -> str:
        """Start a run (or resume one by id) in the background; returns its run id."""
        if spec is None and resume is None:
            raise ValueError("give a training spec, or a run id to resume")
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise JobBusyError(self._status["run_id"], self._status["state"])
            run_id = resume or new_run_id()
            self._cancel = threading.Event()
            self._status = _blank("queued", run_id)
            self._thread = threading.Thread(target=self._work, args=(spec, run_id, resume, self._cancel),
                                            name=f"train-{run_id}", daemon=True)
            self._thread.start()
        return run_id

    def cancel(self) -> bool:
        """Ask the job to stop at the next step boundary (it saves a checkpoint). False if none runs."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return False
            self._cancel.set()
            if self._status["state"] in ("queued", "running"):
                self._status["state"] = "cancelling"
            return True

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the job ends (or ``timeout``); returns the status."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status()

    def status(self) -> dict:
        """A snapshot: safe to keep and read while the job goes on (``preview`` is shared, read-only)."""
        with self._lock:
            s = dict(self._status)
            s["history"], s["log"], s["probes"] = list(s["history"]), list(s["log"]), copy.deepcopy(s["probes"])
            return s

    # -- the job thread -------------------------------------------------------------------
    def _work(self, spec, run_id: str, resume: str | None, cancel: threading.Event):
        self._update(state="cancelling" if cancel.is_set() else "running")
        hooks = Hooks(on_start=self._on_start, on_step=self._on_step, on_log=self._on_log)
        try:
            result = run_training(spec, paths=self.paths, run_id=None if resume else run_id, resume=resume,
                                  cancel=cancel, hooks=hooks)
        except BaseException as e:  # the thread must always end in a final state
            self._on_log(Message("log.failed", error=message_of(e)))
            self._update(state="failed", error=message_of(e), eta_s=None)
            return
        self._update(state=result.state, step=result.step, eta_s=None,
                     model_path=str(result.model_path) if result.model_path else None)

    def _update(self, **fields):
        with self._lock:
            self._status.update(fields)

    def _on_start(self, info: dict):
        history = [(r["step"], r.get("loss"), r.get("val_loss")) for r in self.read_metrics(info["run_id"])]
        self._update(step=info["step"], total_steps=info["total_steps"], preview=info.get("preview"),
                     run_dir=info["run_dir"], history=_thin(history))

    def _on_step(self, record: dict):
        with self._lock:
            s = self._status
            for key in ("step", "epoch", "loss", "lr", "tokens_per_s", "elapsed_s", "eta_s"):
                s[key] = record.get(key)
            if "val_loss" in record:
                s["val_loss"], s["val_ppl"] = record["val_loss"], record.get("val_ppl")
            if record.get("warning"):
                s["warning"] = record["warning"]
            if record.get("probes") is not None:
                s["probes"] = record["probes"]
            if record.get("logged", True):
                s["history"].append((record["step"], record["loss"], record.get("val_loss")))
                s["history"] = _thin(s["history"])

    def _on_log(self, line: str):
        """``line``: often a Message; kept one (English as a string), so the page can say it in its language."""
        timed = Message("log.timed", time=time.strftime("%H:%M:%S"), line=line)
        with self._lock:
            self._status["log"] = (self._status["log"] + [timed])[-LOG_MAX:]

    # -- runs on disk ---------------------------------------------------------------------
    def read_metrics(self, run_id: str) -> list[dict]:
        """Every metrics.jsonl line of a run (to redraw its plot after a page reload)."""
        return read_metrics_file(self.paths.runs / run_id / "metrics.jsonl")

    def list_runs(self) -> list[dict]:
        """Runs on disk, newest first: id, spec (its settings), outcome ("finished", "cancelled",
        "failed", "running" for this runner's live run, "stopped" when the app ended mid-run), steps
        done and planned, last losses, the kept best, the model path, and whether it can be resumed."""
        if not self.paths.runs.is_dir():
            return []
        live = self.status()
        out = []
        for folder in sorted((p for p in self.paths.runs.iterdir() if p.is_dir()), reverse=True):
            run = RunFolder(folder)
            try:
                spec = run.read_spec()
            except CheckpointError:
                continue
            metrics, result = run.read_metrics(), run.read_result()
            last = metrics[-1] if metrics else {}
            outcome = result.get("state") or "stopped"
            if live["run_id"] == folder.name and live["state"] in ("queued", "running", "cancelling"):
                outcome = "running"
            out.append({"run_id": folder.name, "spec": spec, "base_model": spec.get("base_model"),
                        "data": spec.get("data"), "from_scratch": spec.get("from_scratch"), "outcome": outcome,
                        "step": last.get("step", 0), "total_steps": result.get("total_steps"),
                        "loss": last.get("loss"), "val_loss": next((m["val_loss"] for m in reversed(metrics)
                                                                    if "val_loss" in m), None),
                        "best": best_info(folder), "error": result.get("error"),
                        "model_path": result.get("model_path"),
                        "resumable": (outcome != "running" and checkpoint_path(folder) is not None
                                      and not result.get("model_path"))})
        return out


def _thin(history: list) -> list:
    """Keep the plot small: halve the points (keeping the newest) when there are too many."""
    while len(history) > HISTORY_MAX:
        history = history[::-1][::2][::-1]
    return history
