"""The process-wide objects, made once in ``main`` and passed down (STYLE rule 8)."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..messages import message_of
from ..paths import AppPaths, app_paths
from .registry import Registry
from .access import AccessPolicy, app_roots

# A streamed answer's text goes out at most this often per choice (its first and last text at once),
# joined, rather than a chunk per token: every chunk costs the server a pass through its ASGI stack and
# a write, and the client a parse. The bundled model through `serve` on 2 cores, paired against 0:
# 1.20x the tokens per second for one client, 1.30x for eight (README: Concurrency). 40 updates a
# second still read as a smooth stream, and a model slower than that streams token by token.
STREAM_INTERVAL_S = 0.025


@dataclass
class Services:
    paths: AppPaths
    registry: Registry
    jobs: object = None  # training.jobs.JobRunner; None where training is not offered
    chats: object = None  # chats.ChatStore
    shared: bool = False  # a share link is on: refuse typed filesystem paths, require login
    api_key: str | None = None  # required on /v1 routes when set
    downloads: object = None  # services.download.Downloads; None where downloading is not offered
    max_upload_bytes: int = 20 * 1024 * 1024
    max_body_bytes: int = 4 * 1024 * 1024  # any other request body (/v1, Gradio's API): larger is a 413
    stream_interval_s: float = STREAM_INTERVAL_S  # an API stream's text between its first and last, at most this often
    extra: dict = field(default_factory=dict)
    access: AccessPolicy | None = None  # who may call what; built from api_key / shared when not given
    pending: object = None  # _Pending: the start-up model, until it has loaded (or failed to)
    upload_dir: str | None = None  # where the UI's uploads land (set by ui.app.build_app); None: no uploads

    def __post_init__(self):
        if self.access is None:
            self.access = AccessPolicy(api_key=self.api_key, remote=self.shared, roots=app_roots(self.paths))

    def use_api_options(self, max_body_mb: float | None = None, stream_interval_ms: float | None = None):
        """The command line's API options (None: the defaults stay)."""
        if max_body_mb:
            self.max_body_bytes = int(max_body_mb * 2**20)
        if stream_interval_ms is not None:
            self.stream_interval_s = stream_interval_ms / 1000.0

    @property
    def loading(self) -> str | None:
        """The name of the model being loaded at start-up, or None."""
        p = self.pending
        return p.name if p is not None and not p.done.is_set() else None

    def load_in_background(self, on_done=None) -> threading.Thread:
        """Load the start-up model in a thread (the page answers meanwhile), then call ``on_done()``;
        -> the thread."""
        p = self.pending

        def load():
            try:
                if p is not None:
                    _load_first(self.registry, p.target, p.fallback)
            except Exception as e:  # not the folder's fault: still keep the app up, saying why
                logging.getLogger("lmstudio_lite").error("loading the model failed", exc_info=e)
                self.registry.last_error = message_of(e)  # a Message: the page says it in its language
            finally:
                try:
                    if on_done is not None:
                        on_done()
                finally:
                    if p is not None:
                        p.done.set()

        thread = threading.Thread(target=load, name="load-model", daemon=True)
        thread.start()
        return thread

    def wait_for_model(self, timeout: float | None = None) -> bool:
        """Wait while the start-up model loads; -> False if it is still loading after ``timeout``."""
        p = self.pending
        return p is None or p.done.wait(timeout)


def build_services(model: str | None = None, device: str | None = None, dtype: str | None = None,
                   quant: str | None = None, shared: bool = False, api_key: str | None = None, with_jobs: bool = True,
                   with_chats: bool = True, paths: AppPaths | None = None, load_default: bool = True,
                   access: AccessPolicy | None = None, background: bool = False) -> Services:
    """Create the registry (loading ``model`` or the bundled default), job runner and chat store.

    A model that fails to load leaves the app running with no model and the
    error in ``registry.last_error``: the UI says so instead of crashing.
    ``background=True`` (the app): nothing here imports torch; the model loads when
    ``services.load_in_background()`` is called, and the job runner is made on first use.
    """
    from .housekeeping import clean_orphaned_tmp

    paths = (paths or app_paths()).ensure()
    clean_orphaned_tmp([paths.models, paths.runs, paths.chats])
    registry = Registry(paths, device=device, dtype=dtype, quant=quant)
    target = model
    if target is None and load_default:
        default = registry.default_model()
        target = default.path if default else None
    jobs = chats = None
    if with_jobs:
        jobs = LazyJobs(paths) if background else LazyJobs(paths).runner()
    if with_chats:
        from ..chats import ChatStore

        chats = ChatStore(paths.chats)
    from .registry import device_memory
    from .download import Downloads

    downloads = None if shared else Downloads(paths.models, device_memory("cpu"))  # shared: no writes by strangers
    services = Services(paths, registry, jobs, chats, shared=shared, api_key=api_key, downloads=downloads,
                        access=access)
    if target and background:
        services.pending = _Pending(target, fallback=model is None)
    elif target:
        _load_first(registry, target, fallback=model is None)
    return services


def _load_first(registry, target: str, fallback: bool) -> None:
    """Load the model the app starts with; when the default fails, the bundled one instead."""
    from ..checkpoints.errors import CheckpointError

    try:
        registry.load(target)
    except (CheckpointError, KeyError, ValueError, OSError) as e:
        registry.last_error = message_of(e)
        bundled = registry.bundled_default() if fallback else None
        if bundled is not None and bundled.path != target:  # a default that fails: the bundled one
            error = registry.last_error
            try:
                registry.load(bundled.path)
                registry.last_error = f"{error} (the bundled model is loaded instead)"
            except (CheckpointError, KeyError, ValueError, OSError):
                registry.last_error = error


class _Pending:
    """The model the app starts with, while it loads: its name, and an event set when done."""

    def __init__(self, target: str, fallback: bool):
        self.target, self.fallback = target, fallback
        self.name = Path(target).name
        self.done = threading.Event()


class LazyJobs:
    """The training job runner, made on first use: importing training imports torch, which
    serving the page does not need."""

    def __init__(self, paths: AppPaths):
        self._paths, self._runner, self._lock = paths, None, threading.Lock()

    def runner(self):
        with self._lock:
            if self._runner is None:
                from ..training.jobs import JobRunner

                self._runner = JobRunner(self._paths)
            return self._runner

    def __getattr__(self, name):
        return getattr(self.runner(), name)
