"""Imports point down the layers of DESIGN.md; only ui imports gradio, only server fastapi."""
from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lmstudio_lite"

# Higher number = higher layer; a module may import only its own layer or lower.
LAYER = {"paths": 0, "device": 0, "threads": 0, "device_hint": 0, "native": 0, "errors": 0, "messages": 0,
         "atomic": 0, "memory": 0, "model": 1, "checkpoints": 2,
         "generation": 3, "training": 3,
         "services": 4, "chats": 4,
         "server": 5, "terminal_chat": 5, "ui": 6, "cli": 7, "__main__": 7, "__init__": 7}
# training/jobs.py is a service (DESIGN.md) and may use the services layer below it.
SERVICE_FILES = {"training/jobs.py", "training/cli.py"}


@functools.cache
def _parsed() -> tuple:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        out.append((rel, rel.parts[0].removesuffix(".py"), ast.parse(path.read_text())))
    return tuple(out)


def modules():
    yield from _parsed()  # parsed once for the three tests


def imported(tree, rel):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                yield ".".join(["lmstudio_lite", *base] + ([node.module] if node.module else []))
            elif node.module:
                yield node.module


def test_imports_point_down():
    bad = []
    for rel, top, tree in modules():
        mine = LAYER[top] if str(rel) not in SERVICE_FILES else LAYER["services"]
        for name in imported(tree, rel):
            parts = name.split(".")
            if parts[0] != "lmstudio_lite" or len(parts) < 2:
                continue
            if LAYER.get(parts[1], 0) > mine:
                bad.append(f"{rel} imports {name}")
    assert not bad, "\n".join(bad)


def test_only_ui_imports_gradio_only_server_fastapi_model_only_torch():
    bad = []
    for rel, top, tree in modules():
        for name in imported(tree, rel):
            root = name.split(".")[0]
            if root == "gradio" and top != "ui":
                bad.append(f"{rel} imports gradio")
            if root in ("fastapi", "starlette", "uvicorn") and top not in ("server", "ui"):
                bad.append(f"{rel} imports {root}")
            if root == "transformers":
                bad.append(f"{rel} imports transformers (a test-only reference)")
            if top == "model" and root not in ("torch", "lmstudio_lite") and root not in sys.stdlib_module_names:
                bad.append(f"{rel} imports {root}")
    assert not bad, "\n".join(bad)


def test_ui_reaches_the_engine_only_through_services():
    """ui/ holds tab builders and formatters: what they do lives in services (api, registry, tasks,
    chats, services/), never in a direct call into training, checkpoints, generation or the model."""
    engine = {"model", "checkpoints", "generation", "training", "device", "threads", "native"}
    bad = []
    for rel, top, tree in modules():
        if top != "ui":
            continue
        for name in imported(tree, rel):
            parts = name.split(".")
            if parts[0] == "lmstudio_lite" and len(parts) > 1 and parts[1] in engine:
                bad.append(f"{rel} imports {name}")
    assert not bad, "\n".join(bad)
