"""The process-wide objects, made once in ``main`` and passed down (STYLE rule 8)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import user_message
from ..paths import AppPaths, app_paths
from ..registry import Registry
from .access import AccessPolicy, app_roots


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
    extra: dict = field(default_factory=dict)
    access: AccessPolicy | None = None  # who may call what; built from api_key / shared when not given
    upload_dir: str | None = None  # where the UI's uploads land (set by ui.app.build_app); None: no uploads

    def __post_init__(self):
        if self.access is None:
            self.access = AccessPolicy(api_key=self.api_key, remote=self.shared, roots=app_roots(self.paths))


def build_services(model: str | None = None, device: str | None = None, dtype: str | None = None,
                   quant: str | None = None, shared: bool = False, api_key: str | None = None, with_jobs: bool = True,
                   with_chats: bool = True, paths: AppPaths | None = None, load_default: bool = True,
                   access: AccessPolicy | None = None) -> Services:
    """Create the registry (loading ``model`` or the bundled default), job runner and chat store.

    A model that fails to load leaves the app running with no model and the
    error in ``registry.last_error``: the UI says so instead of crashing.
    """
    from ..checkpoints.errors import CheckpointError
    from .housekeeping import clean_orphaned_tmp

    paths = (paths or app_paths()).ensure()
    clean_orphaned_tmp([paths.models, paths.runs, paths.chats])
    registry = Registry(paths, device=device, dtype=dtype, quant=quant)
    target = model
    if target is None and load_default:
        default = registry.default_model()
        target = default.path if default else None
    if target:
        try:
            registry.load(target)
        except (CheckpointError, KeyError, ValueError, OSError) as e:
            registry.last_error = user_message(e)
            fallback = registry.bundled_default() if model is None else None
            if fallback is not None and fallback.path != target:  # a default that fails: the bundled one
                error = registry.last_error
                try:
                    registry.load(fallback.path)
                    registry.last_error = f"{error} (the bundled model is loaded instead)"
                except (CheckpointError, KeyError, ValueError, OSError):
                    registry.last_error = error
    jobs = chats = None
    if with_jobs:
        from ..training.jobs import JobRunner

        jobs = JobRunner(paths)
    if with_chats:
        from ..chats import ChatStore

        chats = ChatStore(paths.chats)
    from ..registry import device_memory
    from .download import Downloads

    downloads = None if shared else Downloads(paths.models, device_memory("cpu"))  # shared: no writes by strangers
    return Services(paths, registry, jobs, chats, shared=shared, api_key=api_key, downloads=downloads,
                    access=access)
