"""Download models from the Hugging Face Hub with huggingface_hub: list a repo's files, fetch one.

- Listing: ``HfApi.model_info(files_metadata=True)``; GGUF files show their quant (from the file
  name), size, and whether they fit in memory.
- Fetching: ``get_hf_file_metadata`` (HEAD: size, commit, sha256 etag), then the body through
  huggingface_hub's own HTTP session, into ``<file>.part`` beside the destination. An interrupted
  or cancelled download keeps the ``.part`` file and resumes it with a Range request next time.
  The finished file is checked (size; sha256 when the Hub gives one), renamed into place, and its
  source recorded in ``<file>.source.json``.
- Files land in the models folder as ``<owner>/<repo>/<file>`` (LM Studio's layout), so they list
  as user models.
- ``HF_ENDPOINT`` (read at each call, so tests and mirrors can point elsewhere), ``HF_TOKEN`` and
  ``HF_HUB_OFFLINE`` are honoured. Offline or blocked, the user gets a ``DownloadError`` within
  ``CONNECT_TIMEOUT_S`` seconds.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..atomic import commit, fsync_file, write_json
from ..errors import LiteError
from ..messages import Message, message_of

CONNECT_TIMEOUT_S = 5.0  # a blocked network must fail fast, not hang the UI
READ_TIMEOUT_S = 30.0
CHUNK = 1 << 20
DISK_MARGIN = 64 << 20  # leave room for the rest of the system
_QUANT = re.compile(r"(?i)(?:^|[-_.])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?=[-_.])")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DownloadError(LiteError):
    """A download cannot start or go on; the message is for the user."""


class DownloadCancelled(DownloadError):
    pass


@dataclass
class RepoFile:
    name: str
    size: int
    quant: str | None = None  # GGUF files: Q4_K_M, Q8_0, F16...
    fits: bool | None = None  # in memory, with ~20% for the KV cache and buffers

    def as_dict(self) -> dict:
        return asdict(self)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def check_repo(repo: str) -> str:
    repo = (repo or "").strip().removeprefix(endpoint() + "/").strip("/")
    if not _REPO.match(repo):
        raise DownloadError(Message("dl.err_not_repo", repo=repr(repo)))
    return repo


def quant_of(filename: str) -> str | None:
    m = _QUANT.search(Path(filename).name)
    return m.group(1).upper() if m else None


# -- errors from the Hub, worded for people ------------------------------------------------------
def explain(e: BaseException, repo: str, filename: str | None = None) -> DownloadError:
    from huggingface_hub import errors

    what = f"{repo}/{filename}" if filename else repo
    if isinstance(e, DownloadError):
        return e
    if isinstance(e, errors.OfflineModeIsEnabled):
        return DownloadError(Message("dl.err_offline"))
    if isinstance(e, errors.GatedRepoError):
        return DownloadError(Message("dl.err_gated", repo=repo))
    if isinstance(e, errors.RepositoryNotFoundError):
        return DownloadError(Message("dl.err_no_repo", repo=repr(repo), endpoint=endpoint()))
    if isinstance(e, (errors.EntryNotFoundError, errors.RemoteEntryNotFoundError)):
        return DownloadError(Message("dl.err_no_file", repo=repo, file=repr(filename)))
    if isinstance(e, errors.HfHubHTTPError):
        return DownloadError(Message("dl.err_refused", what=what, error=str(e).splitlines()[0][:300]))
    if _is_network_error(e):
        return DownloadError(Message("dl.err_unreachable", endpoint=endpoint(), error=type(e).__name__))
    return DownloadError(Message("dl.err_other", what=what, error=f"{type(e).__name__}: {e}"))


def _is_network_error(e: BaseException) -> bool:
    names = {t.__name__ for t in type(e).__mro__}
    return bool(names & {"TransportError", "TimeoutException", "NetworkError", "ConnectError", "ConnectionError",
                         "TimeoutError", "gaierror"})


# -- listing ---------------------------------------------------------------------------------------
def list_files(repo: str, memory_bytes: int = 0) -> tuple[list[RepoFile], str | None]:
    """(files of the repo's main revision, commit sha). GGUF files carry quant and fits."""
    from huggingface_hub import HfApi

    repo = check_repo(repo)
    try:
        info = HfApi(endpoint=endpoint()).model_info(repo, files_metadata=True, timeout=CONNECT_TIMEOUT_S)
    except Exception as e:  # every failure becomes one worded DownloadError
        raise explain(e, repo) from None
    files = []
    for s in info.siblings or []:
        size = int(s.size or (s.lfs.size if s.lfs else 0) or 0)
        gguf = s.rfilename.lower().endswith(".gguf")
        fits = (size * 1.2 <= memory_bytes) if gguf and memory_bytes else None
        files.append(RepoFile(s.rfilename, size, quant_of(s.rfilename) if gguf else None, fits))
    return files, info.sha


def gguf_files(files: list[RepoFile]) -> list[RepoFile]:
    """The model GGUFs of a listing (vision projectors left out)."""
    return [f for f in files if f.name.lower().endswith(".gguf") and not Path(f.name).name.startswith("mmproj")]


# -- fetching --------------------------------------------------------------------------------------
def destination(models_dir: Path, repo: str, filename: str) -> Path:
    dest = (Path(models_dir) / repo / filename).resolve()
    if not dest.is_relative_to(Path(models_dir).resolve()):
        raise DownloadError(Message("dl.err_leaves_folder", file=repr(filename)))
    return dest


def download_file(repo: str, filename: str, models_dir: Path, progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None, folder: str | None = None) -> Path:
    """Fetch one file into ``models_dir/<folder or repo>/<filename>``; returns its path.

    Raises DownloadCancelled (the partial file stays, to resume) or DownloadError."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    repo = check_repo(repo)
    dest = destination(models_dir, folder or repo, filename)
    try:
        url = hf_hub_url(repo, filename, endpoint=endpoint())
        meta = get_hf_file_metadata(url, timeout=CONNECT_TIMEOUT_S)
    except Exception as e:
        raise explain(e, repo, filename) from None
    size = meta.size or 0
    if dest.is_file() and dest.stat().st_size == size:
        return dest  # already here, complete
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    check_disk(dest.parent, size - have)
    headers = build_hf_headers()
    try:
        _fetch(meta.location, part, have, size, headers, progress, cancel)
    except DownloadError:
        raise
    except Exception as e:
        got = part.stat().st_size if part.is_file() else 0
        if got > have:  # some bytes came: the connection broke mid-file
            raise DownloadError(Message("dl.err_interrupted", file=filename, got=f"{got / 1e6:.1f}",
                                            size=f"{size / 1e6:.1f}", error=type(e).__name__)) from None
        raise explain(e, repo, filename) from None
    _verify(part, size, meta.etag)
    fsync_file(part)
    commit(part, dest)
    if folder is None:
        record_source(dest, repo, filename, meta, url)
    return dest


def check_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN > free:
        raise DownloadError(Message("dl.err_disk", folder=str(folder), needed=f"{needed / 1e9:.2f}",
                                    free=f"{free / 1e9:.2f}"))


def _fetch(url: str, part: Path, have: int, size: int, headers: dict, progress, cancel) -> None:
    """Stream the body into ``part`` from byte ``have`` on (Range); checks ``cancel`` between chunks."""
    import httpx2
    from huggingface_hub.utils import get_session

    if size and have >= size:
        return
    if have:
        headers = {**headers, "Range": f"bytes={have}-"}
    timeout = httpx2.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    with get_session().stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
        if r.status_code == 416:  # the part already holds everything
            return
        r.raise_for_status()
        if have and r.status_code != 206:
            have = 0  # the server ignored the range: start over
        with open(part, "ab" if have else "wb") as f:
            done = have
            for chunk in r.iter_bytes():  # as bytes arrive: a broken connection loses nothing received
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, size)
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelled(Message("dl.cancelled_at", done=f"{done / 1e6:.1f}",
                                                    size=f"{size / 1e6:.1f}"))


def _verify(part: Path, size: int, etag: str | None) -> None:
    got = part.stat().st_size
    if size and got != size:
        raise DownloadError(Message("dl.err_short", got=f"{got:,}", size=f"{size:,}"))
    if etag and re.fullmatch(r"[0-9a-f]{64}", etag):  # LFS files: the etag is the content's sha256
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        if h.hexdigest() != etag:
            part.unlink()
            raise DownloadError(Message("dl.err_checksum"))


def record_source(dest: Path, repo: str, filename: str, meta, url: str) -> Path:
    source = {"repo": repo, "file": filename, "revision": meta.commit_hash, "url": url, "etag": meta.etag,
              "size": meta.size, "endpoint": endpoint(), "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                       time.gmtime())}
    path = dest.with_name(dest.name + ".source.json")
    write_json(path, source)
    return path


# -- a whole model folder (repos without GGUF files) ----------------------------------------------------
FOLDER_FILES = re.compile(r"^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|"
                          r"special_tokens_map\.json|chat_template\.jinja|README\.md|"
                          r"model\.safetensors\.index\.json|[^/]*\.safetensors)$")


def download_folder(repo: str, files: list[RepoFile], models_dir: Path, progress=None, cancel=None) -> Path:
    """A Hugging Face model folder (config.json + safetensors + tokenizer) into ``models_dir/<name>``."""
    wanted = [f for f in files if FOLDER_FILES.match(f.name)]
    if not any(f.name == "config.json" for f in wanted) or not any(f.name.endswith(".safetensors") for f in wanted):
        raise DownloadError(Message("dl.err_nothing", repo=repo))
    name, total, done = repo.split("/")[-1], sum(f.size for f in wanted), 0
    check_disk(Path(models_dir), total)
    for f in wanted:
        report = (lambda d, _t, base=done: progress(base + d, total)) if progress else None
        path = download_file(repo, f.name, models_dir, report, cancel, folder=name)
        done += path.stat().st_size
    folder = destination(models_dir, name, "config.json").parent
    write_json(folder / "source.json", {"repo": repo, "endpoint": endpoint(), "files": [f.name for f in wanted]})
    return folder


def fetch(repo: str, filename: str | None, models_dir: Path, memory_bytes: int = 0, progress=None,
          cancel=None) -> Path:
    """What ``lmstudio-lite get`` and the Download box do: one GGUF file (named, or the only one),
    or the whole model folder of a repo without GGUF files."""
    files, _ = list_files(repo, memory_bytes)
    if filename:
        if not any(f.name == filename for f in files):
            choices = ", ".join(f.name for f in gguf_files(files)) or ", ".join(f.name for f in files[:8])
            raise DownloadError(Message("dl.err_no_file_of", repo=repo, file=repr(filename), choices=choices))
        return download_file(repo, filename, models_dir, progress, cancel)
    ggufs = gguf_files(files)
    if len(ggufs) == 1:
        return download_file(repo, ggufs[0].name, models_dir, progress, cancel)
    if ggufs:
        raise DownloadError(Message("dl.err_choose", repo=repo, n=len(ggufs), names=", ".join(f.name for f in ggufs)))
    return download_folder(check_repo(repo), files, models_dir, progress, cancel)


# -- one download at a time in the background (the UI polls it) ----------------------------------------
class Downloads:
    """Runs ``fetch`` in a thread; ``status()`` is a snapshot, ``wait(timeout)`` blocks until it changes."""

    def __init__(self, models_dir: Path, memory_bytes: int = 0):
        self.models_dir, self.memory_bytes = Path(models_dir), memory_bytes
        self._changed = threading.Condition()
        self._status: dict = {"state": "idle"}
        self._cancel: threading.Event | None = None
        self._version = 0

    def start(self, repo: str, filename: str | None = None) -> None:
        """Fetch ``repo`` (its file ``filename``) in the background; DownloadError if one is running."""
        self.run(repo, filename, lambda progress, cancel: fetch(repo, filename, self.models_dir, self.memory_bytes,
                                                                progress, cancel))

    def run(self, repo: str, filename: str | None, work: Callable) -> None:
        """Run ``work(progress, cancel) -> Path`` as the download (the starter model's two-source fetch too)."""
        with self._changed:
            if self._status["state"] == "running":
                raise DownloadError(Message("dl.err_busy", repo=self._status["repo"]))
            self._cancel = threading.Event()
            self._set(state="running", repo=repo, file=filename, done=0, total=0, path=None,
                      message=Message("dl.connecting"))
        threading.Thread(target=self._work, args=(work, self._cancel), daemon=True, name="download").start()

    def cancel(self) -> bool:
        with self._changed:
            if self._status["state"] != "running" or self._cancel is None:
                return False
            self._cancel.set()
            return True

    def note(self, message: str) -> None:
        """Say what the running job does now (the starter's turn to its second source, say)."""
        self._set(message=message)

    def status(self) -> dict:
        with self._changed:
            return dict(self._status)

    def wait(self, timeout: float, seen: int | None = None) -> tuple[int, dict]:
        """(version, status) once the status differs from version ``seen`` (or after ``timeout``)."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen, timeout)
            return self._version, dict(self._status)

    def _set(self, **fields):
        with self._changed:
            self._status.update(fields)
            self._version += 1
            self._changed.notify_all()

    def _work(self, work: Callable, cancel: threading.Event):
        last = [0.0]

        def progress(done: int, total: int):
            now = time.monotonic()
            if now - last[0] >= 0.2 or (total and done >= total):  # ~5 updates a second is plenty
                last[0] = now
                self._set(done=done, total=total, message=Message("dl.downloading"))

        try:
            path = work(progress, cancel)
        except DownloadCancelled as e:
            self._set(state="cancelled", message=message_of(e))
        except DownloadError as e:
            self._set(state="failed", message=message_of(e))
        except Exception as e:  # the thread must always end in a final state
            self._set(state="failed", message=Message("dl.err_failed", error=message_of(e)))
        else:
            self._set(state="done", path=str(path), message=Message("dl.saved", path=str(path)))
