"""The one error type for unusable model folders."""
from __future__ import annotations

from pathlib import Path

from ..errors import LiteError

class CheckpointError(LiteError):
    """A model folder cannot be used: names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")
