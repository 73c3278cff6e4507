"""Where lmstudio_lite keeps the user's models, training runs and chats.

Everything moves under one folder when ``LMSTUDIO_LITE_HOME`` is set (tests and
CI use it so they never touch a real user's data).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import LiteError

HOME_ENV = "LMSTUDIO_LITE_HOME"


@dataclass(frozen=True)
class AppPaths:
    home: Path
    models: Path
    runs: Path
    chats: Path

    def ensure(self) -> "AppPaths":
        for p in (self.models, self.runs, self.chats):
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a read-only home, a file in the way: one line, not a traceback
                raise HomeError(f"cannot create the app's folder {p} ({e.strerror or e}). Make it writable, "
                                f"or point {HOME_ENV} at a writable folder.") from None
        return self


class HomeError(LiteError, OSError):
    """The app's own folders cannot be created."""


def app_paths(home: str | os.PathLike | None = None) -> AppPaths:
    """The app's folders; created on first use by ``ensure()``, never at import."""
    root = home or os.environ.get(HOME_ENV)
    if root:
        base = Path(root).expanduser().resolve()
        return AppPaths(base, base / "models", base / "runs", base / "chats")
    import platformdirs

    data = Path(platformdirs.user_data_dir("lmstudio_lite", appauthor=False))
    return AppPaths(data, data / "models", data / "runs", data / "chats")


def cache_dir() -> Path:
    """Rebuildable files (compiled kernels): ``$LMSTUDIO_LITE_HOME/cache`` or the platform's cache folder."""
    if os.environ.get(HOME_ENV):
        return app_paths().home / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir("lmstudio_lite", appauthor=False))


def _bundled(name: str) -> Path:
    """A bundled folder: in an installed wheel under ``lmstudio_lite/bundled/`` (setup.py copies it
    there at build time), in a source checkout or editable install at the repository root.

    The installed copy wins: beside an installed package, ``site-packages/<name>`` could be anything."""
    package = Path(__file__).resolve().parent
    installed = package / "bundled" / name
    return installed if installed.is_dir() else package.parent / name


def bundled_models_dir() -> Path:
    """The folder holding the bundled default model (the repository's ``models/``)."""
    return _bundled("models")


def bundled_assets_dir() -> Path:
    """The folder holding the sample data files (the repository's ``assets/``)."""
    return _bundled("assets")


def hf_cache_dirs() -> list[Path]:
    """Hugging Face hub caches that may already exist on this machine (read offline)."""
    candidates = []
    if os.environ.get("HF_HUB_CACHE"):
        candidates.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        candidates.append(Path(os.environ["HF_HOME"]) / "hub")
    candidates.append(Path.home() / ".cache" / "huggingface" / "hub")
    seen, out = set(), []
    for c in candidates:
        c = c.expanduser()
        if c not in seen and c.is_dir():
            seen.add(c)
            out.append(c)
    return out
