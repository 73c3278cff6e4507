"""``lmstudio-lite serve``: the OpenAI-compatible API alone, without the UI.

``create_app(services)`` is the in-process factory tests use; ``run_serve(args)`` builds
the services from the command line and runs uvicorn (127.0.0.1:1234 by default).
"""
from __future__ import annotations

import sys

from fastapi import FastAPI

from .guard import AccessGuard
from .routes import create_api


def create_app(services, sessions=None) -> FastAPI:
    """The API app: the /v1 routes plus ``GET /healthz`` (never behind credentials), every
    request passing ``AccessGuard`` first (``sessions``: Gradio's, when the UI is mounted)."""
    app = FastAPI(title="lmstudio_lite API", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(create_api(services))
    app.add_middleware(AccessGuard, policy=services.access, sessions=sessions, max_body=services.max_body_bytes,
                       throttle=services.extra.get("login_throttle"))

    @app.get("/healthz")
    def healthz():
        current = services.registry.current
        return {"status": "ok", "model": current.name if current is not None else None,
                "loading": getattr(services, "loading", None), "error": services.registry.last_error}

    return app


def run_serve(args) -> int:
    """Load ``--model`` (or the bundled default) and serve the API until Ctrl-C."""
    import uvicorn

    from ..errors import user_message
    from ..services import build_services
    from ..services.access import AccessError, AccessPolicy, app_roots, check_listen, is_loopback, listen_urls

    try:
        warning = check_listen(args.host, False, bool(args.api_key), args.insecure_no_auth)
    except AccessError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    if warning:
        print(warning, file=sys.stderr)
    services = build_services(model=args.model, device=args.device, dtype=args.dtype, quant=args.quant,
                              api_key=args.api_key, with_jobs=False, with_chats=False)
    services.access = AccessPolicy(api_key=args.api_key, remote=not is_loopback(args.host),
                                   roots=app_roots(services.paths))
    services.use_api_options(args.max_body_mb, args.stream_interval_ms)
    registry = services.registry
    if registry.current is not None:
        info = registry.current.info()
        print(f"model: {registry.current.name} ({info['device']}, {info['quant']})")
    else:
        print("no model loaded" + (f": {registry.last_error}" if registry.last_error else "")
              + "; each request loads the model it names", file=sys.stderr)
    urls = listen_urls(args.host, args.port)
    print(f"OpenAI-compatible API at {urls[0]}v1 (Ctrl-C to stop)", flush=True)
    for url in urls[1:]:
        print(f"  also at {url}v1", flush=True)
    config = uvicorn.Config(create_app(services), host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind the port; it has said why
        return int(e.code or 1)
    except KeyboardInterrupt:
        return 130
    # A started server only stops on a signal (Ctrl-C / SIGTERM): exit like an interrupted command.
    return 130 if server.started else 1
