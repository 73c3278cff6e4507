"""Which models exist on this machine, and which one is loaded.

Sources: the bundled ``models/`` folder, the user's models folder, and model
folders already present in a Hugging Face hub cache (read offline; nothing is
ever downloaded). One model is loaded at a time; loading is serialised.
"""
from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from .paths import AppPaths, bundled_models_dir, hf_cache_dirs

BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2}
_REGISTRY_QUANT = object()  # load()'s default: the format the registry was made with


@dataclass
class ModelEntry:
    name: str
    path: str
    source: str  # bundled | user | hf-cache
    family: str = "?"
    parameters: int = 0
    context_length: int = 0
    dtype: str = "?"
    size_bytes: int = 0
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def describe_folder(path: Path, name: str, source: str) -> ModelEntry:
    """Read config.json only (cheap); a folder that can't be described still lists, with its error."""
    from .checkpoints.errors import CheckpointError
    from .checkpoints.folder import read_config

    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    entry = ModelEntry(name, str(path), source, size_bytes=size)
    try:
        cfg, hf = read_config(path)
    except CheckpointError as e:
        entry.error = str(e)
        return entry
    entry.family = hf.get("model_type", cfg.family)
    entry.parameters = cfg.num_parameters()
    entry.context_length = cfg.max_seq_len
    entry.dtype = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")
    return entry


def memory_needed(entry: ModelEntry, dtype: str = "float32") -> int:
    """Weights in ``dtype`` plus ~20% for activations, KV cache and buffers."""
    return int(entry.parameters * BYTES_PER_DTYPE.get(dtype, 4) * 1.2)


def device_memory(device_type: str = "cpu") -> int:
    """Total memory of the device in bytes (RAM for the CPU)."""
    if device_type == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _is_model_folder(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def _is_loadable_path(p: Path) -> bool:
    """A model folder or a GGUF file: what ``load`` accepts as a path."""
    from .checkpoints.gguf_weights import is_gguf_file

    return _is_model_folder(p) or is_gguf_file(p)


class Registry:
    """Lists local models and owns the loaded one (shared by UI, API and CLI)."""

    def __init__(self, paths: AppPaths, bundled: Path | None = None, hf_dirs: list[Path] | None = None,
                 device: str | None = None, dtype: str | None = None, quant: str | None = None):
        self.paths = paths.ensure()
        self.quant = quant  # weight format for loads that do not name one (--quant)
        self.bundled = bundled if bundled is not None else bundled_models_dir()
        self.hf_dirs = hf_cache_dirs() if hf_dirs is None else hf_dirs
        self.device, self.dtype = device, dtype
        self._lock = threading.RLock()
        self._current = None  # LoadedModel
        self.last_error: str | None = None

    # -- listing -------------------------------------------------------------
    def list(self) -> list[ModelEntry]:
        out: list[ModelEntry] = []
        for source, root in (("bundled", self.bundled), ("user", self.paths.models)):
            if root.is_dir():
                out += [describe_folder(p, p.name, source) for p in sorted(root.iterdir()) if _is_model_folder(p)]
        for hub in self.hf_dirs:
            for repo in sorted(hub.glob("models--*")):
                snaps = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
                snaps = [s for s in snaps if _is_model_folder(s)]
                if snaps:
                    name = repo.name.removeprefix("models--").replace("--", "/")
                    out.append(describe_folder(snaps[-1], name, "hf-cache"))
        return out

    def find(self, name: str) -> ModelEntry:
        """A listed model by name (or, for trusted callers, a folder path)."""
        for e in self.list():
            if e.name == name or e.path == name:
                return e
        raise KeyError(f"no local model named {name!r}; available: {', '.join(e.name for e in self.list()) or 'none'}")

    def default_model(self) -> ModelEntry | None:
        bundled = [e for e in self.list() if e.source == "bundled" and e.error is None]
        return bundled[0] if bundled else None

    # -- loading -------------------------------------------------------------
    @property
    def current(self):
        return self._current

    def load(self, name_or_path: str, allow_path: bool = True, quant=_REGISTRY_QUANT):
        """Load by listed name, or by folder or GGUF file path when ``allow_path``; replaces the loaded model.

        ``quant`` is None (float) or a qtype; left out, the registry's own format.
        On failure the previously loaded model stays loaded."""
        from .api import load_model

        with self._lock:
            path = Path(name_or_path).expanduser()
            if allow_path and _is_loadable_path(path):
                target = path
            else:
                target = Path(self.find(name_or_path).path)
            quant = self.quant if quant is _REGISTRY_QUANT else quant
            cur = self._current
            if cur is not None and cur.path == target.resolve() and cur.quant == quant:
                return cur
            model = load_model(target, device=self.device, dtype=self.dtype, quant=quant)
            if name_or_path and not Path(name_or_path).is_absolute():
                model.name = name_or_path
            self._current = model
            self.last_error = None
            return model

    def get_or_load(self, name: str):
        """The loaded model if its name matches, else load the named model (API requests)."""
        with self._lock:
            cur = self._current
            if cur is not None and name in (cur.name, str(cur.path)):
                return cur
            return self.load(name, allow_path=False)

    def unload(self):
        with self._lock:
            self._current = None
            import gc

            gc.collect()

    # -- managing --------------------------------------------------------------
    def import_folder(self, path: str, name: str | None = None) -> ModelEntry:
        """Copy a model folder into the user's models folder after checking it loads."""
        from .checkpoints.folder import read_config, weight_files

        src = Path(path).expanduser().resolve()
        read_config(src)
        weight_files(src)
        dest = self.paths.models / (name or src.name)
        if dest.exists():
            raise FileExistsError(f"a model named {dest.name!r} already exists in {self.paths.models}")
        shutil.copytree(src, dest)
        return describe_folder(dest, dest.name, "user")

    def delete(self, name: str):
        entry = self.find(name)
        if entry.source != "user":
            raise PermissionError(f"{name!r} is a {entry.source} model; only models in your models folder can be deleted")
        with self._lock:
            if self._current is not None and str(self._current.path) == str(Path(entry.path).resolve()):
                self.unload()
            shutil.rmtree(entry.path)

    def status_line(self) -> str:
        from .device import choose_device

        try:
            choice = choose_device(self.device, self.dtype)
            dev = f"{choice.name} ({choice.reason})"
        except ValueError as e:
            dev = str(e)
        cur = self._current
        model = f"{cur.name} ({_weights(cur.info())})" if cur else "no model loaded"
        return f"Device: {dev} · Model: {model} · Memory: {_rss_mb():.0f} MB"


def _weights(info: dict) -> str:
    """The loaded format and the memory its weights take, e.g. "q4_0, 76 MB of weights"."""
    mb = info["weights_bytes"] / 2**20
    return f"{info['quant']}, {mb:.0f} MB of weights" if mb >= 10 else f"{info['quant']}, {mb:.2f} MB of weights"


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def entries_json(entries: list[ModelEntry]) -> str:
    return json.dumps([e.as_dict() for e in entries], indent=2)
