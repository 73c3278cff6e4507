"""The process-wide objects, made once in ``main`` and passed down (STYLE rule 8)."""
from __future__ import annotations

from dataclasses import dataclass, field

from .paths import AppPaths, app_paths
from .registry import Registry


@dataclass
class Services:
    paths: AppPaths
    registry: Registry
    jobs: object = None  # training.jobs.JobRunner; None where training is not offered
    chats: object = None  # chats.ChatStore
    shared: bool = False  # a share link is on: refuse typed filesystem paths, require login
    api_key: str | None = None  # required on /v1 routes when set
    max_upload_bytes: int = 20 * 1024 * 1024
    extra: dict = field(default_factory=dict)


def build_services(model: str | None = None, device: str | None = None, dtype: str | None = None,
                   quant: str | None = None, shared: bool = False, api_key: str | None = None, with_jobs: bool = True,
                   with_chats: bool = True, paths: AppPaths | None = None, load_default: bool = True) -> Services:
    """Create the registry (loading ``model`` or the bundled default), job runner and chat store.

    A model that fails to load leaves the app running with no model and the
    error in ``registry.last_error``: the UI says so instead of crashing.
    """
    from .checkpoints.errors import CheckpointError

    paths = (paths or app_paths()).ensure()
    registry = Registry(paths, device=device, dtype=dtype, quant=quant)
    target = model
    if target is None and load_default:
        default = registry.default_model()
        target = default.path if default else None
    if target:
        try:
            registry.load(target)
        except (CheckpointError, KeyError, ValueError, OSError) as e:
            registry.last_error = str(e.args[0] if isinstance(e, KeyError) else e)
    jobs = chats = None
    if with_jobs:
        from .training.jobs import JobRunner

        jobs = JobRunner(paths)
    if with_chats:
        from .chats import ChatStore

        chats = ChatStore(paths.chats)
    return Services(paths, registry, jobs, chats, shared=shared, api_key=api_key)
