"""The Models tab's actions without widgets: the one model listing the tabs share, which model a name
or a typed folder stands for, loading and importing through the access policy, and a model's record
with its memory estimate. Messages for people stay with the tab (ui/models_tab.py); failures here are
exceptions (LiteError, or the OS's and the loaders' own, worded by ``errors.user_message``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import LiteError


class UnknownModel(LiteError, KeyError):
    """No listed model has this name (and it is not a folder the caller may name)."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


def all_models(services) -> list:
    """registry.list(), plus the loaded model when it came from a folder outside the models folders."""
    from .registry import describe_folder

    entries = services.registry.list()
    cur = services.registry.current
    if cur is not None and not any(Path(e.path).resolve() == Path(cur.path).resolve() for e in entries):
        entries.append(describe_folder(Path(cur.path), cur.name, "loaded"))
    return entries


def names(services) -> list[str]:
    return [e.name for e in all_models(services)]


def current_name(services) -> str | None:
    """The loaded model's name (it may have loaded after the page was built)."""
    cur = services.registry.current
    return cur.name if cur is not None else None


def device_type(services) -> str:
    cur = services.registry.current
    if cur is not None:
        return cur.device.type
    if "torch" not in sys.modules:  # the page is being built, before torch: no need to wait for it here
        from ..device_hint import likely_device_type

        return likely_device_type(services.registry.device)
    from ..device import choose_device

    try:
        return choose_device(services.registry.device, services.registry.dtype).device.type
    except ValueError:
        return "cpu"


def device_memory_info(services) -> tuple[int, str, str]:
    """(total bytes, device label, dtype name) of the device models load on."""
    from .registry import device_memory

    reg, cur = services.registry, services.registry.current
    dtype = cur.info()["dtype"] if cur is not None else (reg.dtype or None)
    dev = device_type(services)
    if dtype is None:
        dtype = "float32" if dev == "cpu" else "bfloat16"
    try:
        total = device_memory(dev)
    except Exception:  # no driver, or a device without a memory query
        total = 0
    return total, {"cpu": "RAM"}.get(dev, dev.upper()), dtype


def load(services, name: str, quant: str | None = None):
    """Load a listed model by name, or a typed folder the access policy allows; -> the LoadedModel.

    ``quant``: "float", a qtype, or None for the registry's format (``--quant``). UnknownModel when
    nothing answers to ``name``; a failed load leaves the loaded model as it was."""
    entry = next((e for e in all_models(services) if e.name == name), None)
    if entry is None and services.access.path_allowed(name) and Path(name).expanduser().is_dir():
        target, by_path = name, True  # a typed folder path (inside the app's folders when remote)
    elif entry is None:
        raise UnknownModel(f"No local model named {name!r}")
    else:  # by name, so the registry keeps its display name; the unlisted loaded model by its path
        target, by_path = (entry.path, True) if entry.source == "loaded" else (entry.name, False)
    fmt = {} if quant is None else {"quant": None if quant == "float" else quant}
    return services.registry.load(target, allow_path=by_path, **fmt)


def import_folder(services, path: str):
    """Copy a model folder into the models folder; AccessError when the policy refuses the path."""
    services.access.check_path(path, "model folder")
    return services.registry.import_folder(path)


def is_loaded(services, entry) -> bool:
    cur = services.registry.current
    return cur is not None and Path(cur.path).resolve() == Path(entry.path).resolve()


def model_record(services, entry) -> dict:
    """A listed model as plain data (the models_list API): memory estimate and whether it is loaded.
    ("folder", not "path": gradio_client would fetch a "path".)"""
    from .registry import memory_needed

    d = entry.as_dict()
    d["folder"] = d.pop("path")
    d["memory_bytes"] = memory_needed(entry, device_memory_info(services)[2]) if entry.parameters else None
    d["loaded"] = is_loaded(services, entry)
    return d
