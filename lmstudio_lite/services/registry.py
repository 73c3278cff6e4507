"""Which models exist on this machine, and which one is loaded.

Sources: the bundled ``models/`` folder, the user's models folder (model folders
and downloaded GGUF files), model folders and GGUF files already present in a
Hugging Face hub cache (read offline), and the libraries of other apps (LM Studio,
Ollama, folders added in settings: ``services/libraries.py``), all read-only.
One model is loaded at a time; loading is serialised.
"""
from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoints import is_gguf_file
from ..messages import Message
from ..paths import AppPaths, bundled_models_dir, hf_cache_dirs

BYTES_PER_DTYPE = {"float32": 4, "bfloat16": 2, "float16": 2}
_REGISTRY_QUANT = object()  # load()'s default: the format the registry was made with


@dataclass
class ModelEntry:
    name: str
    path: str
    source: str  # bundled | user | hf-cache | lm-studio | ollama | folder
    family: str = "?"
    parameters: int = 0
    context_length: int = 0
    dtype: str = "?"
    size_bytes: int = 0
    error: str | None = None
    format: str = "folder"  # folder | gguf

    def as_dict(self) -> dict:
        return asdict(self)


def describe_folder(path: Path, name: str, source: str) -> ModelEntry:
    """Read config.json only (cheap); a folder that can't be described still lists, with its error."""
    from ..checkpoints.errors import CheckpointError
    from ..checkpoints.hf_config import read_config

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


def describe_gguf_file(path: Path, name: str, source: str) -> ModelEntry:
    """Read the GGUF header only (memory-mapped); an unreadable file still lists, with its error."""
    from .libraries import describe_gguf

    entry = ModelEntry(name, str(path), source, size_bytes=path.stat().st_size, format="gguf")
    for key, value in describe_gguf(path).items():
        setattr(entry, key, value)
    return entry


def memory_needed(entry: ModelEntry, dtype: str = "float32") -> int:
    """Weights in ``dtype`` (a GGUF file: its size, as its weights load as stored) plus ~20% for
    activations, KV cache and buffers."""
    if entry.format == "gguf":
        return int(entry.size_bytes * 1.2)
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
    return _is_model_folder(p) or is_gguf_file(p)


class Registry:
    """Lists local models and owns the loaded one (shared by UI, API and CLI)."""

    def __init__(self, paths: AppPaths, bundled: Path | None = None, hf_dirs: list[Path] | None = None,
                 device: str | None = None, dtype: str | None = None, quant: str | None = None, libraries=None):
        """``libraries``: a ``services.libraries.LibraryRoots`` (default: LM Studio's and Ollama's folders
        in the user's home plus the folders added in settings)."""
        self.paths = paths.ensure()
        self.quant = quant  # weight format for loads that do not name one (--quant)
        self._libraries = libraries
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
        from .libraries import gguf_tree

        out += [describe_gguf_file(m.path, m.name, "user") for m in gguf_tree(self.paths.models, "user")]
        out += self._hf_cache()
        out += self._library_entries()
        return out

    def _hf_cache(self) -> list[ModelEntry]:
        out = []
        for hub in self.hf_dirs:
            for repo in sorted(hub.glob("models--*")):
                name = repo.name.removeprefix("models--").replace("--", "/")
                snaps = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
                folders = [s for s in snaps if _is_model_folder(s)]
                if folders:
                    out.append(describe_folder(folders[-1], name, "hf-cache"))
                files = {f.name: f for s in snaps for f in s.glob("*.gguf")}  # newest snapshot wins
                out += [describe_gguf_file(f, f"{name}/{f.stem}", "hf-cache") for f in files.values() if f.is_file()]
        return out

    def _library_entries(self) -> list[ModelEntry]:
        from .libraries import default_roots, scan

        roots = self._libraries if self._libraries is not None else default_roots(self.paths.home)
        return [describe_folder(m.path, m.name, m.source) if m.kind == "folder"
                else describe_gguf_file(m.path, m.name, m.source) for m in scan(roots)]

    def find(self, name: str) -> ModelEntry:
        """A listed model by name (or, for trusted callers, a folder path)."""
        for e in self.list():
            if e.name == name or e.path == name:
                return e
        names = ", ".join(e.name for e in self.list()) or Message("models.none_available")
        raise KeyError(Message("models.no_such_model", name=repr(name), available=names))

    def resolve(self, name_or_path: str, allow_path: bool = True) -> Path:
        """The folder or GGUF file a listed name (or, when ``allow_path``, a typed path) stands for."""
        if allow_path:
            try:
                path = Path(name_or_path).expanduser()
            except RuntimeError:  # "~nosuchuser": no such home folder, so no such model there either
                path = Path(name_or_path)
            if _is_loadable_path(path):
                return path
        return Path(self.find(name_or_path).path)

    def resolve_folder(self, name_or_path: str, allow_path: bool = True) -> Path:
        """Like ``resolve`` but a model folder is required (export reads a folder)."""
        target = self.resolve(name_or_path, allow_path)
        if not _is_model_folder(target):
            raise ValueError(Message("models.export_gguf_given", name=repr(name_or_path)))
        return target

    def default_model(self) -> ModelEntry | None:
        """The first-run chat model once present (services/starter.py), else the bundled model."""
        from .starter import is_starter

        usable = [e for e in self.list() if e.error is None]
        preferred = [e for e in usable if is_starter(e)] + [e for e in usable if e.source == "bundled"]
        return preferred[0] if preferred else None

    def bundled_default(self) -> ModelEntry | None:
        return next((e for e in self.list() if e.source == "bundled" and e.error is None), None)

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
            target = self.resolve(name_or_path, allow_path)
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
        from ..checkpoints.errors import CheckpointError
        from ..checkpoints.folder import read_config, weight_files

        src = Path(path).expanduser().resolve()
        if not src.is_dir():
            raise FileNotFoundError(Message("models.no_folder_at", path=str(src)))
        if not (src / "config.json").is_file():
            raise CheckpointError(src, Message("models.import_not_model_folder"))
        read_config(src)
        weight_files(src)
        dest = self.paths.models / (name or src.name)
        if dest.exists():
            raise FileExistsError(Message("models.import_exists", name=repr(dest.name), folder=str(self.paths.models)))
        shutil.copytree(src, dest)
        return describe_folder(dest, dest.name, "user")

    def delete(self, name: str):
        entry = self.find(name)
        if entry.source != "user":
            raise PermissionError(Message("models.delete_not_yours", name=repr(name), source=entry.source))
        with self._lock:
            if self._current is not None and str(self._current.path) == str(Path(entry.path).resolve()):
                self.unload()
            if entry.format == "gguf":
                Path(entry.path).unlink()
                Path(entry.path + ".source.json").unlink(missing_ok=True)
            else:
                shutil.rmtree(entry.path)

    def status_line(self) -> str:
        """Device (and why), model (format, weights' memory), KV use and memory: a ``Message``, so the
        page says it in its language and everything else reads English."""
        from ..device import choose_device

        try:
            choice = choose_device(self.device, self.dtype)
            dev = Message("status.device", name=choice.name, reason=choice.reason)
        except ValueError as e:
            dev = str(e)
        cur = self._current
        info = cur.info() if cur else None
        model = Message("status.model", name=cur.name, weights=_weights(info)) if cur else Message("status.no_model_loaded")
        return Message("status.line", device=dev, model=model, kv=_kv(info), memory=f"{_rss_mb():.0f}")


def _kv(info: dict | None):
    """The scheduler's use of its KV rows (sized from its budget), e.g.
    " · KV: 3 of 8 running, 2 waiting, 12 of 36 MB in 16 rows"; "" without a scheduler."""
    sched = (info or {}).get("scheduler")
    if not sched:
        return ""
    waiting = Message("status.kv_waiting", n=sched["waiting"]) if sched["waiting"] else ""
    return Message("status.kv", running=sched["running"], max_batch=sched["max_batch"], waiting=waiting,
                   used=f"{sched['kv_used_bytes'] / 2**20:.0f}", total=f"{sched['kv_bytes'] / 2**20:.0f}",
                   rows=sched["kv_rows"])


def _weights(info: dict) -> Message:
    """The loaded format and the memory its weights take, e.g. "q4_0, 76 MB of weights"."""
    mb = info["weights_bytes"] / 2**20
    return Message("status.weights", quant=info["quant"], mb=f"{mb:.0f}" if mb >= 10 else f"{mb:.2f}")


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


def entries_table(entries: list[ModelEntry]) -> str:
    """A plain-text table for the terminal: a header, and columns as wide as their longest cell
    (names such as 'HuggingFaceTB/SmolLM2-135M-Instruct' outgrow any fixed width)."""
    rows = [("NAME", "FAMILY", "PARAMS", "CONTEXT", "KIND", "SOURCE", "PATH")]
    for e in entries:
        params = f"{e.parameters / 1e6:.1f}M" if e.parameters else "?"
        path = e.path + (f"  [{e.error}]" if e.error else "")
        kind = e.dtype if e.format == "gguf" else "folder"  # a GGUF's file type, e.g. Q4_1
        rows.append((e.name, e.family, params, str(e.context_length or "?"), kind or "?", e.source, path))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    right = {2, 3}  # numbers align on the right
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))) + "  " + row[-1]
                     for row in rows)


def model_or_default(name_or_path: str | None, paths: AppPaths | None = None) -> Path:
    """What ``--model`` stands for: a model folder or file as given, a listed model's folder by name,
    or, when it is left out, the default model. Raises ValueError when there is none."""
    from ..paths import app_paths

    if name_or_path and Path(name_or_path).expanduser().exists():
        return Path(name_or_path).expanduser()
    registry = Registry(paths or app_paths())
    if name_or_path:
        return Path(registry.find(name_or_path).path)
    default = registry.default_model()
    if default is None:
        raise ValueError("no model given and no bundled model found; pass --model PATH "
                         "(`lmstudio-lite models` lists local models)")
    return Path(default.path)
