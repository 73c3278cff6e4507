"""Validation-loss bookkeeping of one run: the best evaluation, early stopping, the overfitting warning.

Pure and torch-free: the trainer feeds it each evaluation and acts on the verdict (save the best
weights, stop, log the warning); its state goes into the checkpoint so a resumed run keeps counting.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..messages import Message


@dataclass
class Verdict:
    improved: bool = False  # a new lowest validation loss: keep these weights
    stop: bool = False  # early stopping: no new best for ``patience`` evaluations
    warning: str | None = None  # said once per streak of rising validation losses


@dataclass
class ValWatch:
    patience: int = 0  # evaluations without a new best before stopping (0 = never)
    warn_after: int = 3  # rises in a row before warning (0 = never)
    best_loss: float | None = None
    best_step: int = 0
    since_best: int = 0
    rises: int = 0
    last_loss: float | None = None
    rise_from: float | None = None  # the validation loss the current streak of rises started from

    def update(self, step: int, val_loss: float, train_loss: float | None = None) -> Verdict:
        verdict = Verdict()
        if self.best_loss is None or val_loss < self.best_loss:
            self.best_loss, self.best_step, self.since_best = val_loss, step, 0
            verdict.improved = True
        else:
            self.since_best += 1
        if self.last_loss is not None and val_loss > self.last_loss:
            if self.rises == 0:
                self.rise_from = self.last_loss
            self.rises += 1
        else:
            self.rises, self.rise_from = 0, None
        self.last_loss = val_loss
        if self.warn_after and self.rises == self.warn_after:
            verdict.warning = self._warning(val_loss, train_loss)
        verdict.stop = bool(self.patience) and self.since_best >= self.patience
        return verdict

    def _warning(self, val_loss: float, train_loss: float | None) -> Message:
        train = Message("log.while_train", loss=f"{train_loss:.3f}") if train_loss is not None else ""
        return Message("log.overfit", n=self.rises, start=f"{self.rise_from:.3f}", end=f"{val_loss:.3f}", train=train,
                       best=self.best_step, best_loss=f"{self.best_loss:.3f}")

    def state_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("patience", "warn_after")}

    def load_state_dict(self, state: dict):
        for key, value in (state or {}).items():
            if key in self.state_dict():
                setattr(self, key, value)
