"""The one error type for unusable model folders."""
from __future__ import annotations

from pathlib import Path

from ..errors import LiteError
from ..messages import Message

class CheckpointError(LiteError):
    """A model folder cannot be used: names the file and the problem. ``problem`` is a Message
    (the Models tab says it in the page's language; str(e) stays English) or, for a library's
    own wording passed on, plain text."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(Message("ckpt.at", path=str(path), problem=problem))
