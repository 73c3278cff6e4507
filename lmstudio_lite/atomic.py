"""Atomic writes, written once: a temp name beside the file, fsync, rename, fsync of the folder.

A reader (or the app after a crash or power cut) sees the old file or the new one, never a torn
one. Every file the app keeps (model folders, GGUF exports, quantized caches, chats, settings,
run specs and metrics, compiled kernels) goes through ``write_atomic`` or its text/JSON forms.
The temp is ``.NAME.<random>.tmp``: unique, so two writers of one file never share a temp,
and ``services.housekeeping`` removes what a kill leaves behind. Running out of space is a
``DiskFullError`` that says how much the save needed, with the temp removed.

Streams that resume (downloads' ``NAME.part``) and folder swaps (a training checkpoint) write
their own way and finish with ``commit`` / ``fsync_dir`` from here.

Bottom layer: standard library only.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from pathlib import Path
from typing import Callable

from .errors import LiteError

# ENOSPC: the disk is full; EDQUOT: the user's quota is; EFBIG: a file-size limit (ulimit -f).
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FULL_WORDS = ("no space left", "disk quota", "file too large")  # safetensors wraps the OSError in text


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


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | Path) -> None:
    """Make the renames inside ``path`` durable. A POSIX notion (NTFS journals renames itself);
    a filesystem that refuses it (some network mounts) loses durability, not the file."""
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(done: str | Path, path: str | Path) -> Path:
    """Rename a finished, fsynced file or folder over ``path`` and make the rename durable."""
    path = Path(path)
    os.replace(done, path)
    fsync_dir(path.parent)
    return path


def write_atomic(path: str | Path, write: Callable[[Path], object], needed_bytes: int = 0) -> Path:
    """``write(temp)`` writes the whole file at the temp path; then fsync, rename over ``path``,
    fsync of the folder. Any failure removes the temp and leaves ``path`` as it was."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        with disk_full_named(path, needed_bytes):
            write(tmp)
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), len(data))


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text; a string that cannot be encoded raises before anything is written."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data) -> Path:
    """Indented, non-ASCII kept, one trailing newline (what our config and record files look like)."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
