"""The one error type for unusable model folders."""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path

from ..errors import LiteError

# ENOSPC: the disk is full; EDQUOT: the user's quota is; EFBIG: a file-size limit (ulimit -f).
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FULL_WORDS = ("no space left", "disk quota", "file too large")  # safetensors wraps the OSError in text


class CheckpointError(LiteError):
    """A model folder cannot be used: names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class DiskFullError(LiteError, OSError):
    """A save ran out of room. The file it would have replaced is untouched."""


def _is_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
        return True
    return any(w in str(e).lower() for w in _FULL_WORDS)


@contextlib.contextmanager
def disk_full_named(target: str | Path, needed_bytes: int):
    """Turn running out of disk space inside the block into a DiskFullError that says how much
    the save needed ("no space left on device: 12.3 MB needed for ...")."""
    try:
        yield
    except Exception as e:
        if not _is_full(e):
            raise
        full = DiskFullError(f"no space left on device: {needed_bytes / 1e6:.1f} MB needed to save {target}; "
                             "the previous version is unchanged. Free some space and try again.")
        full.errno = errno.ENOSPC  # set after: OSError(errno, text) would prefix the text with "[Errno 28]"
        raise full from None
