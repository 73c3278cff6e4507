"""GGUF models that other apps already keep on this machine, listed read-only.

Nothing here writes, moves or deletes a file in another app's folder: we only list and read.

- LM Studio: ``~/.lmstudio/models`` and ``~/.cache/lm-studio/models``, laid out
  ``publisher/repo/file.gguf``; listed as ``publisher/repo/file``.
- Ollama: ``~/.ollama/models`` (or ``$OLLAMA_MODELS``). A manifest
  ``manifests/registry.ollama.ai/library/NAME/TAG`` (JSON) lists layers; the one whose mediaType is
  ``application/vnd.ollama.image.model`` has digest ``sha256:<hex>``, which is the GGUF file
  ``blobs/sha256-<hex>``. Listed as ``NAME:TAG`` (other registries and namespaces keep their prefix).
- More folders, scanned for ``*.gguf`` files and model folders (``config.json``): the
  ``LMSTUDIO_LITE_MODEL_DIRS`` environment variable (folders separated by ``os.pathsep``) and the
  ``"model_dirs"`` list in ``settings.json`` in the app's data folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..messages import Message

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_DEFAULT_HOST, OLLAMA_DEFAULT_NAMESPACE = "registry.ollama.ai", "library"
DIRS_ENV = "LMSTUDIO_LITE_MODEL_DIRS"
SETTINGS_NAME = "settings.json"


@dataclass(frozen=True)
class LibraryModel:
    name: str
    path: Path
    source: str  # lm-studio | ollama | folder
    kind: str = "gguf"  # gguf | folder


@dataclass
class LibraryRoots:
    """Where to look; ``default_roots`` fills it from the user's home, tests from temp trees."""
    lmstudio: list[Path] = field(default_factory=list)
    ollama: list[Path] = field(default_factory=list)
    extra: list[Path] = field(default_factory=list)


def default_roots(app_home: Path, home: Path | None = None) -> LibraryRoots:
    home = home or Path.home()
    ollama = Path(os.environ["OLLAMA_MODELS"]) if os.environ.get("OLLAMA_MODELS") else home / ".ollama" / "models"
    return LibraryRoots(lmstudio=[home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"],
                        ollama=[ollama], extra=extra_dirs(app_home))


# -- settings ---------------------------------------------------------------------------
def read_settings(app_home: Path) -> dict:
    """settings.json in the data folder; a missing or unreadable file means no settings."""
    path = Path(app_home) / SETTINGS_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def extra_dirs(app_home: Path) -> list[Path]:
    """Folders the user added: the environment variable first, then settings.json."""
    env = [p for p in os.environ.get(DIRS_ENV, "").split(os.pathsep) if p.strip()]
    listed = read_settings(app_home).get("model_dirs") or []
    out: list[Path] = []
    for p in env + [p for p in listed if isinstance(p, str)]:
        path = Path(p).expanduser()
        if path not in out:
            out.append(path)
    return out


def add_model_dir(app_home: Path, folder: str) -> list[Path]:
    """Remember one more folder in settings.json (written atomically); returns the saved list."""
    from ..atomic import write_json

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(Message("models.err_not_folder", folder=repr(folder)))
    settings = read_settings(app_home)
    dirs = [d for d in settings.get("model_dirs") or [] if isinstance(d, str)]
    if str(path) not in dirs:
        dirs.append(str(path))
    settings["model_dirs"] = dirs
    write_json(Path(app_home) / SETTINGS_NAME, settings)
    return [Path(d) for d in dirs]


# -- scanning -------------------------------------------------------------------------------
def gguf_tree(root: Path, source: str) -> list[LibraryModel]:
    """Every model GGUF under ``root``, named by its path below it (vision projectors skipped)."""
    if not root.is_dir():
        return []
    return [LibraryModel(p.relative_to(root).with_suffix("").as_posix(), p, source)
            for p in sorted(root.rglob("*.gguf")) if p.is_file() and not p.name.lower().startswith("mmproj")]


def folder_tree(root: Path, source: str) -> list[LibraryModel]:
    """GGUF files and model folders (config.json) anywhere under an added folder."""
    if not root.is_dir():
        return []
    folders = [LibraryModel(p.parent.relative_to(root).as_posix() or root.name, p.parent, source, "folder")
               for p in sorted(root.rglob("config.json")) if (p.parent / "tokenizer.json").is_file()]
    return folders + gguf_tree(root, source)


def ollama_name(manifest: Path, manifests: Path) -> str:
    """``host/namespace/name/tag`` -> ``name:tag`` for Ollama's own library, else keep the prefix."""
    parts = manifest.relative_to(manifests).parts
    host, rest, tag = parts[0], parts[1:-1], parts[-1]
    if host == OLLAMA_DEFAULT_HOST and rest and rest[0] == OLLAMA_DEFAULT_NAMESPACE:
        rest = rest[1:]
    elif host != OLLAMA_DEFAULT_HOST:
        rest = (host,) + rest
    return "/".join(rest) + ":" + tag


def ollama_blob(manifest: Path, blobs: Path) -> Path | None:
    """The model layer's blob named by a manifest, or None (unreadable, no model layer, blob missing)."""
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers") or []
    except (OSError, ValueError, AttributeError):
        return None
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            digest = str(layer.get("digest", ""))
            blob = blobs / digest.replace(":", "-", 1)
            return blob if digest.startswith("sha256:") and blob.is_file() else None
    return None


def ollama_store(root: Path) -> list[LibraryModel]:
    manifests, blobs = root / "manifests", root / "blobs"
    if not manifests.is_dir():
        return []
    out = []
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        if len(manifest.relative_to(manifests).parts) < 3:
            continue
        blob = ollama_blob(manifest, blobs)
        if blob is not None:
            out.append(LibraryModel(ollama_name(manifest, manifests), blob, "ollama"))
    return out


def scan(roots: LibraryRoots) -> list[LibraryModel]:
    """Everything the libraries hold, LM Studio first, then Ollama, then added folders."""
    out: list[LibraryModel] = []
    for root in roots.lmstudio:
        out += gguf_tree(Path(root).expanduser(), "lm-studio")
    for root in roots.ollama:
        out += ollama_store(Path(root).expanduser())
    for root in roots.extra:
        out += folder_tree(Path(root).expanduser(), "folder")
    return out


# -- describing a GGUF without loading it ----------------------------------------------------
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
               18: "Q6_K", 32: "BF16"}


def read_gguf_header(path: Path) -> tuple[dict, int]:
    """(metadata, parameter count) from a GGUF header, arrays (vocabularies) skipped as None:
    checkpoints' own GGUF parser, which the loader uses too. Raises ValueError/OSError if malformed."""
    from ..checkpoints.gguf_parse import parse

    header = parse(path, arrays=False)
    return header.fields, sum(t.n_elements for t in header.tensors)


def describe_gguf(path: Path) -> dict:
    """family, parameters, context_length, dtype (the file type) from the header; or an error."""
    try:
        meta, params = read_gguf_header(path)
        arch = meta.get("general.architecture") or "?"
        ftype = meta.get("general.file_type")
        return {"family": arch, "parameters": int(params), "context_length": int(meta.get(f"{arch}.context_length") or 0),
                "dtype": _FILE_TYPES.get(ftype, "?") if ftype is not None else "?"}
    except (OSError, ValueError, OverflowError) as e:  # truncated or foreign: lists with why
        return {"error": f"{path}: not a readable GGUF file ({e})"}
