"""Start-up housekeeping: temporary files that interrupted saves left behind.

Every save writes ``.NAME.<random>.tmp`` (``atomic.write_atomic``; ``checkpoint.tmp/`` for a
training checkpoint) and renames it into place; a kill between the two leaves the ``.tmp``
behind, the previous state intact. Nothing reads them, so at start they only take
disk space (a checkpoint's is the size of the model).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger("lmstudio_lite.services")

# A save in progress right now (a `train` command in another process) has a fresh .tmp:
# only those untouched this long are orphans.
ORPHAN_AGE_S = 15 * 60


def clean_orphaned_tmp(roots, min_age_s: float = ORPHAN_AGE_S, now: float | None = None) -> list[Path]:
    """Delete ``*.tmp`` files and folders under ``roots`` last modified ``min_age_s`` ago or
    more; -> what was deleted. Failures are logged and skipped: this never stops a start."""
    now = time.time() if now is None else now
    removed = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.tmp"), key=lambda p: len(p.parts)):
            try:
                if path.is_symlink() or now - path.stat().st_mtime < min_age_s:
                    continue
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            except FileNotFoundError:  # inside a .tmp folder removed a moment ago
                continue
            except OSError as e:
                log.warning("could not remove the orphaned temporary %s: %s", path, e)
                continue
            removed.append(path)
    if removed:
        log.info("removed %d orphaned temporary file(s) from interrupted saves", len(removed))
    return removed
