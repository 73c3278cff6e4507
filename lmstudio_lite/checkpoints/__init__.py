"""Reading and writing models: HF folders, GGUF files, tokenizers, chat templates.

Only what the torch-free layers (registry, UI) need at import time lives here.
"""
from __future__ import annotations

from pathlib import Path


def is_gguf_file(path) -> bool:
    """A file that starts with GGUF's magic bytes (Ollama's blobs have no .gguf suffix; a suffix proves nothing)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return path.is_file() and f.read(4) == b"GGUF"
    except OSError:
        return False
