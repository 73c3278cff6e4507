"""``lmstudio-lite`` (the app): build the services, the page and the API, and serve them.

One uvicorn server on one port: the OpenAI routes (``/v1``, from ``server/``) and
``/healthz`` first, then Gradio mounted at "/". The port is bound before the model loads,
so a busy ``--port`` fails at once with a clear message; without ``--port`` the first free
port from 7860 is used.

``--share`` means strangers may reach the app: a login is always required (``--auth`` or a
generated one, printed here), uploads are capped lower, and an API key is generated and
printed when none was given. A non-loopback ``--host`` needs ``--auth`` or ``--api-key``
(or ``--insecure-no-auth``). Either way one access policy (``services/access.py``, applied
by ``server/guard.py``) covers the page, Gradio's API and ``/v1``, and typed filesystem
paths must lie inside the app's folders. The share tunnel is Gradio's; with no internet it
fails within seconds and the app keeps serving locally, saying so here and in the status line.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
import webbrowser

from ..errors import LiteError, user_message

DEFAULT_PORT = 7860
PORT_SCAN = 100
SHARE_WAIT_S = 8.0  # how long to wait for the share tunnel before saying it failed
SHARED_UPLOAD_BYTES = 5 * 1024 * 1024


class PortBusy(LiteError, OSError):
    pass


def bind_socket(host: str, port: int | None) -> tuple[socket.socket, int]:
    """A socket bound to ``host:port`` (or the first free port from 7860) for uvicorn to serve on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port] if port else range(DEFAULT_PORT, DEFAULT_PORT + PORT_SCAN)
    last: OSError | None = None
    for p in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, p))
            return sock, sock.getsockname()[1]
        except OSError as e:
            sock.close()
            last = e
    why = last.strerror if last else "unavailable"
    if port:
        raise PortBusy(f"port {port} on {host} is not available ({why}). Choose another with --port, "
                       f"or leave --port out to use the first free port from {DEFAULT_PORT}.")
    raise PortBusy(f"no free port between {DEFAULT_PORT} and {DEFAULT_PORT + PORT_SCAN - 1} on {host} ({why})")


def resolve_login(args) -> tuple[list[tuple[str, str]] | None, str | None]:
    """-> (Gradio auth list or None, a line to print when a login was generated)."""
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise ValueError("--auth must look like USER:PASSWORD")
        return [(user, password)], None
    if args.share:
        user, password = "lmstudio", secrets.token_urlsafe(12)
        return [(user, password)], f"login (required with --share): user {user!r}, password {password!r}"
    return None, None


def make_policy(args, logins, api_key: str | None):
    """The access policy for these flags: who may log in, the key, and the folders remote callers may name."""
    from gradio.utils import get_upload_folder  # where gr.File puts uploads

    from ..paths import app_paths
    from ..services.access import AccessPolicy, app_roots, is_loopback

    remote = bool(args.share) or not is_loopback(args.host)
    return AccessPolicy(logins=dict(logins or []), api_key=api_key, remote=remote,
                        roots=app_roots(app_paths(), get_upload_folder()))


def make_services(args, api_key: str | None, policy=None):
    """Services with the requested (or bundled default) model to load; a failed load leaves the app up,
    saying why. Nothing here imports torch: ``_serve`` loads the model once the page answers."""
    import importlib.util

    from ..services import build_services
    from .common import friendly

    remote = policy.remote if policy is not None else bool(args.share)
    opts = dict(device=args.device, dtype=args.dtype, quant=args.quant, shared=remote, api_key=api_key,
                access=policy,
                with_jobs=importlib.util.find_spec("lmstudio_lite.training.jobs") is not None)
    try:
        services = build_services(model=args.model, background=True, **opts)
    except Exception as e:  # anything build_services itself does not catch: still start, with no model
        services = build_services(model=None, load_default=False, background=True, **opts)
        services.registry.last_error = friendly(e)
    if args.share:
        services.max_upload_bytes = min(services.max_upload_bytes, SHARED_UPLOAD_BYTES)
    services.use_api_options(getattr(args, "max_body_mb", None), getattr(args, "stream_interval_ms", None))
    services.extra.setdefault("notes", [])
    return services


class GradioSessions:
    """What the access guard needs to know of Gradio's logins: who a session cookie belongs
    to, and a session for a caller that authenticated with a header (Bearer key or basic),
    so Gradio's own login check lets that caller through too."""

    def __init__(self):
        self._app = None  # the mounted gradio App, known once mounted
        self._tokens: dict[str, str] = {}  # user -> the session token made for header callers

    def attach(self, outer_app):
        from gradio.routes import App

        self._app = next(r.app for r in outer_app.routes if isinstance(getattr(r, "app", None), App))

    def user(self, cookies: dict[str, str]) -> str | None:
        if self._app is None:
            return None
        cid = self._app.cookie_id
        token = cookies.get(f"access-token-{cid}") or cookies.get(f"access-token-unsecure-{cid}")
        return self._app.tokens.get(token) if token else None

    def cookie_for(self, user: str) -> str:
        if self._app is None:
            return ""
        token = self._tokens.setdefault(user, secrets.token_urlsafe(24))
        self._app.tokens[token] = user
        return f"access-token-unsecure-{self._app.cookie_id}={token}"


def create_web_app(services):
    """The ASGI app: the API (``/v1``, ``/healthz``) with the Gradio page mounted at "/" after it,
    all behind one access guard. Gradio's login form checks ``services.access.login_ok``."""
    import gradio as gr

    from ..server.serve import create_app
    from .app import build_app
    from .common import CSS
    from .i18n import gradio_i18n

    sessions = GradioSessions()
    app = create_app(services, sessions)  # its routes are registered before the catch-all Gradio mount
    demo = build_app(services)
    auth = services.access.login_ok if services.access.protected else None
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, max_file_size=services.max_upload_bytes,
                              theme=gr.themes.Soft(), css=CSS, show_error=True, footer_links=["api", "settings"],
                              i18n=gradio_i18n())
    sessions.attach(app)
    return app


def run_app(args) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..services.access import AccessError, check_listen, listen_urls

    try:
        auth, login_line = resolve_login(args)
        warning = check_listen(args.host, args.share, bool(auth or args.api_key), args.insecure_no_auth)
        sock, port = bind_socket(args.host, args.port)
    except (ValueError, OSError, AccessError) as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    if warning:
        print(warning, file=sys.stderr)
    api_key = args.api_key or ("sk-lite-" + secrets.token_urlsafe(24) if args.share else None)
    services = make_services(args, api_key, make_policy(args, auth, api_key))
    app = create_web_app(services)
    urls = listen_urls(args.host, port)
    lines = _banner(services, urls, login_line, api_key if api_key and not args.api_key else None)
    return _serve(app, sock, urls[0], lines, args, services, port)


def _banner(services, urls: list[str], login_line: str | None, new_key: str | None) -> list[str]:
    model = _model_line(services)
    url = urls[0]
    lines = [f"lmstudio_lite is running at {url}"] + [f"  also at {u}" for u in urls[1:]]
    lines += [f"  {model}", f"  OpenAI-compatible API: {url}v1"]
    if login_line:
        lines.append(f"  {login_line}")
    if new_key:
        lines.append(f"  API key for /v1 and Gradio's API (send 'Authorization: Bearer KEY'; also accepted as the "
                     f"login page's password): {new_key}")
    return lines + ["  Press Ctrl-C to stop."]


def _model_line(services) -> str:
    cur, loading = services.registry.current, getattr(services, "loading", None)
    if cur is not None:
        info = cur.info()
        return f"model: {cur.name} on {info['device']} ({info['device_reason']})"
    err = services.registry.last_error
    if err:
        return f"no model loaded: {err}"
    if loading:
        return f"model: loading {loading}… (the page answers meanwhile)"
    return "no model loaded yet (no bundled model found); load one in the Models tab or start with --model FOLDER"


def _serve(app, sock, url, lines, args, services, port) -> int:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # Open pages hold streams that are cut on exit: uvicorn would log each as an error.
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
            super().handle_exit(sig, frame)

    # Each open page holds a stream that only ends when cut: waiting for them is waiting for the timeout.
    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=0.5))

    def after_start():
        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.02)
        print("\n".join(lines), flush=True)
        # Only now: importing torch and reading weights would hold up the page (the GIL, two cores).
        services.load_in_background(lambda: print(f"  {_model_line(services)}", flush=True))
        if args.share:
            start_share(services, port)
        if not args.no_browser:
            webbrowser.open(url)

    threading.Thread(target=after_start, name="after-start", daemon=True).start()
    interrupted = False
    try:
        server.run(sockets=[sock])  # uvicorn re-raises Ctrl-C after a clean shutdown
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sock.close()
        print("lmstudio_lite stopped.", flush=True)
    if server.started:
        exit_at_once(130 if interrupted else 0)
    if interrupted:
        raise KeyboardInterrupt
    return 1


def exit_at_once(code: int) -> None:
    """End the process now that the server has shut down cleanly. A normal interpreter exit then
    spends seconds tearing down torch, gradio and their threads (3-8 s measured, after Ctrl-C):
    nothing is left to save (every write is atomic and already done), so skip it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start_share(services, port: int, wait_s: float = SHARE_WAIT_S) -> str | None:
    """Open Gradio's share tunnel to ``127.0.0.1:port``; give up waiting after ``wait_s`` (a link
    that comes later is still announced). The outcome goes to the terminal and the status line."""
    notes = services.extra.setdefault("notes", [])
    result: dict = {}
    lock, done = threading.Lock(), threading.Event()

    def announce(url: str, late: bool = False):
        notes[:] = [n for n in notes if not n.startswith("could not create a share link")]
        notes.append(f"share link: {url} (login required)")
        print(f"  share link{' (late)' if late else ''}: {url} (login required)", flush=True)

    def tunnel():
        try:
            from gradio import networking

            url, error = networking.setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None), None
        except Exception as e:  # no internet, a blocked download, ...
            url, error = None, str(e) or type(e).__name__
        with lock:
            result.update(url=url, error=error)
            if url and result.get("gave_up"):
                announce(url, late=True)
        done.set()

    threading.Thread(target=tunnel, name="share-tunnel", daemon=True).start()
    done.wait(wait_s)
    with lock:
        if result.get("url"):
            announce(result["url"])
            return result["url"]
        result["gave_up"] = True
        why = result.get("error") or f"no answer within {wait_s:.0f} s"
        notes.append("could not create a share link — serving locally only")
    print(f"  could not create a share link ({why}); the app keeps serving locally", flush=True)
    return None
