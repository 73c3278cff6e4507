"""``AccessGuard``: one ASGI middleware in front of every route (the page, Gradio's API, ``/v1``).

It applies ``services.access.AccessPolicy`` before any route runs, so a route added
later (or one of Gradio's that its own login check skips, like the heartbeat) cannot
be left open by mistake. It also refuses hostile bodies before anything parses them:
a body over the limit gets a 413 (read at most limit + 1 bytes), and ``/v1`` takes
``application/json`` only (415), because a text/plain POST is a "simple" request that
any web page may send cross-site without a preflight.

Surfaces:
- public: the page shell and its static files, ``/healthz``, the login form (throttled);
- ``v1``: ``/v1/...``: the API key (Bearer) or the login (HTTP basic); never a cookie;
- gradio: everything else: a Gradio session cookie, the API key or the login. A request
  authenticated by a header gets a Gradio session cookie added, so Gradio's own login
  check lets it through too (``sessions``, supplied by the UI, knows Gradio's cookies).
"""
from __future__ import annotations

import json
import logging
from http.cookies import SimpleCookie
from typing import Protocol

from ..services.access import AccessPolicy, LoginThrottle

log = logging.getLogger("lmstudio_lite.server")

DEFAULT_MAX_BODY = 4 * 1024 * 1024
PUBLIC_EXACT = frozenset({"/healthz", "/favicon.ico", "/robots.txt", "/manifest.json", "/theme.css",
                          "/gradio_api/theme.css", "/logout", "/logout/", "/gradio_api/login_check",
                          "/gradio_api/login_check/", "/gradio_api/startup-events"})
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon", "/gradio_api/assets/")
LOGIN_PATHS = frozenset({"/login", "/login/"})
# Gradio answers these itself when nobody is logged in (the login page, a 401 the page
# understands); the guard only adds a session for a request that brought a header.
GRADIO_GATED = frozenset({"/", "/config", "/config/"})
UPLOAD_PATHS = ("/gradio_api/upload",)  # capped by Gradio's max_file_size instead
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Sessions(Protocol):
    def user(self, cookies: dict[str, str]) -> str | None: ...
    def cookie_for(self, user: str) -> str: ...


def surface_of(path: str) -> str:
    """"public", "login", "v1" or "gradio"."""
    if path in LOGIN_PATHS:
        return "login"
    if path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES):
        return "public"
    if path == "/v1" or path.startswith("/v1/"):
        return "v1"
    return "gradio"


class AccessGuard:
    def __init__(self, app, policy: AccessPolicy, throttle: LoginThrottle | None = None,
                 sessions: Sessions | None = None, max_body: int = DEFAULT_MAX_BODY):
        self.app, self.policy, self.sessions, self.max_body = app, policy, sessions, max_body
        self.throttle = throttle or LoginThrottle()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        surface, headers = surface_of(scope["path"]), _headers(scope)
        if surface == "login":
            return await self._login(scope, receive, send)
        if surface != "public" and self.policy.protected:
            scope = await self._authenticate(scope, headers, surface, send)
            if scope is None:
                return
        if scope["type"] == "http" and scope["method"] in BODY_METHODS:
            return await self._with_body(scope, headers, surface, receive, send)
        return await self.app(scope, receive, send)

    # -- credentials ---------------------------------------------------------------
    async def _authenticate(self, scope, headers: dict, surface: str, send):
        """-> the scope to pass on (with a Gradio session added when a header authenticated
        a Gradio route), or None after answering 401/429 itself."""
        client = _client(scope)
        authorization = headers.get("authorization", "")
        if authorization:
            wait = self.throttle.wait_s(client)
            if wait > 0:
                await _reject(scope, send, 429, surface, f"too many failed logins: try again in {wait:.0f} s",
                              {"retry-after": str(int(wait) + 1)})
                return None
            user = self.policy.header_user(authorization)
            if user is not None:
                self.throttle.succeeded(client)
                return self._with_session(scope, user) if surface == "gradio" else scope
            self.throttle.failed(client, scope["path"])
        elif surface == "gradio" and self.sessions is not None:
            if self.sessions.user(_cookies(headers)) is not None:
                return scope
            if scope["path"] in GRADIO_GATED:
                return scope  # Gradio shows its login page / a 401 its page understands
        await _reject(scope, send, 401, surface, _missing(surface, bool(authorization)),
                      {"www-authenticate": 'Basic realm="lmstudio_lite"'} if surface == "v1" else {})
        return None

    def _with_session(self, scope, user: str):
        if self.sessions is None:
            return scope
        cookie = self.sessions.cookie_for(user).encode("latin-1")
        raw = [(k, v) for k, v in scope["headers"] if k != b"cookie"]
        old = [v for k, v in scope["headers"] if k == b"cookie"]
        raw.append((b"cookie", b"; ".join(old + [cookie])))
        return {**scope, "headers": raw}

    async def _login(self, scope, receive, send):
        """Gradio's login form, throttled per client: a wrong password locks the client out
        for a growing time; a right one clears its record."""
        client = _client(scope)
        wait = self.throttle.wait_s(client)
        if wait > 0:
            return await _reject(scope, send, 429, "login", f"too many failed logins: try again in {wait:.0f} s",
                                 {"retry-after": str(int(wait) + 1)})
        body = await _read_body(receive, self.max_body)
        if body is None:
            return await _reject(scope, send, 413, "login", self._too_large())
        status: list[int] = []

        async def watch(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        await self.app(scope, _replay(body, receive), watch)
        if status and status[0] == 200:
            self.throttle.succeeded(client)
        elif status and status[0] in (400, 401):
            self.throttle.failed(client, "login form")

    # -- bodies --------------------------------------------------------------------
    async def _with_body(self, scope, headers: dict, surface: str, receive, send):
        if surface == "v1" and _media_type(headers) != "application/json":
            return await _reject(scope, send, 415, surface, "the request body must be JSON: send it with "
                                 "'Content-Type: application/json'")
        if scope["path"].startswith(UPLOAD_PATHS):
            return await self.app(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _reject(scope, send, 413, surface, self._too_large())
        body = await _read_body(receive, self.max_body)
        if body is None:
            return await _reject(scope, send, 413, surface, self._too_large())
        return await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> str:
        return (f"the request body is larger than the server's limit of {self.max_body / 2**20:.1f} MB "
                "(lmstudio-lite --max-body-mb)")


def _missing(surface: str, given: bool) -> str:
    if given:
        return "invalid credentials: the API key or the login is wrong"
    if surface == "v1":
        return ("this server needs credentials: send 'Authorization: Bearer KEY' (the --api-key) "
                "or the login as HTTP basic auth")
    return "not logged in: log in on the page, or send the API key as 'Authorization: Bearer KEY'"


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` (the rest is never buffered)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect as usual

    return replay


async def _reject(scope, send, status: int, surface: str, message: str, extra: dict | None = None):
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    if surface == "v1":
        kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(status, "invalid_request_error")
        code = {401: "invalid_api_key", 413: "request_too_large", 415: "unsupported_media_type"}.get(status)
        payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    else:
        payload = {"detail": message}
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookies(headers: dict) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except Exception:  # a malformed cookie header counts as no cookie
        return {}
    return {k: m.value for k, m in jar.items()}


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _media_type(headers: dict) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()
