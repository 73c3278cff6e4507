"""The access policy: who may call what, and which filesystem paths a caller may name.

One policy covers every surface of the app (the page, Gradio's API routes, ``/v1``):

- open: no ``--auth`` and no ``--api-key``. Only allowed on a loopback address
  (``check_listen`` refuses anything else unless ``--insecure-no-auth`` says so).
- protected: every surface but the login page and static assets needs one of
  the login (``--auth USER:PASS``, HTTP basic or Gradio's login form), the API
  key (``Authorization: Bearer KEY``; also accepted as the password of the
  login form, so ``--api-key`` alone still lets a browser in) or, on Gradio's
  routes only, a logged-in Gradio session cookie. ``/v1`` never takes the
  cookie: Gradio sets it with SameSite=None, so any web page could ride it.

When the app is reachable from another machine (a non-loopback host or a share
link) a path typed by a caller must lie inside the app's models, data or upload
folders: otherwise ``train_start`` could read any file the server can read and
quote it back in its status.

Pure Python: the web layers (server/guard.py, ui/launch.py) apply it.
"""
from __future__ import annotations

import base64
import ipaddress
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LiteError
from ..messages import Message

log = logging.getLogger("lmstudio_lite.access")

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
KEY_USER = "api-key"  # the user name a request authenticated by the API key acts as


# What a caller named, for the refusal (said in the page's language where the page shows it).
WHAT_KEYS = {"path": "access.path", "data file": "access.data_file", "model folder": "access.model_folder"}


class AccessError(LiteError):
    """A caller asked for something the policy forbids; the message says what and why."""


def is_loopback(host: str) -> bool:
    """True when ``host`` only listens to this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: what it resolves to may change, so it counts as remote
        return False


def check_listen(host: str, share: bool, protected: bool, insecure: bool) -> str | None:
    """Refuse (AccessError) to serve a network without a login or key; -> a warning line when
    ``--insecure-no-auth`` overrides that, else None."""
    if protected or (is_loopback(host) and not share):
        return None
    where = Message("access.share_link") if share else f"--host {host}"
    if not insecure:
        raise AccessError(Message("access.listen_open", where=where))
    return f"warning: {where} with --insecure-no-auth: anyone who can reach this machine can use the app"


def listen_urls(host: str, port: int) -> list[str]:
    """The URLs a client can actually use: for 0.0.0.0 / :: every address of this machine."""
    if host not in ("0.0.0.0", "::", ""):
        return [_url(host, port)]
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    found = {"::1" if family == socket.AF_INET6 else "127.0.0.1"} | _local_addresses(family)
    return [_url(a, port) for a in sorted(found, key=lambda a: (not is_loopback(a), a))]


def _local_addresses(family) -> set[str]:
    """This machine's addresses: the host name's, and the one a route out would use (a UDP
    "connect" sends nothing; the host name often resolves to 127.0.0.1 only)."""
    found: set[str] = set()
    try:
        found |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, family)}
    except OSError:
        pass
    probe = ("fd00::1", 1) if family == socket.AF_INET6 else ("10.255.255.255", 1)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(probe)
            found.add(s.getsockname()[0])
    except OSError:  # no route: only the loopback address works
        pass
    return found


def _url(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


@dataclass
class AccessPolicy:
    """Credentials and path rules for one running app. The default is open and local."""

    logins: dict[str, str] = field(default_factory=dict)  # --auth user -> password
    api_key: str | None = None
    remote: bool = False  # reachable from another machine: typed paths must stay in ``roots``
    roots: tuple[Path, ...] = ()  # the models, data and upload folders

    @property
    def protected(self) -> bool:
        return bool(self.logins or self.api_key)

    # -- credentials ---------------------------------------------------------------
    def key_ok(self, key: str) -> bool:
        return bool(self.api_key) and secrets.compare_digest(key.encode(), self.api_key.encode())

    def login_ok(self, user: str, password: str) -> bool:
        """The login form's check: a --auth login, or any user name with the API key as password."""
        expected = self.logins.get(user)
        by_login = expected is not None and secrets.compare_digest(password.encode(), expected.encode())
        return by_login or self.key_ok(password)

    def header_user(self, authorization: str, allow_basic: bool = True) -> str | None:
        """Who an ``Authorization`` header (Bearer KEY or Basic user:pass) names, if it is valid."""
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.key_ok(value):
            return KEY_USER
        if scheme == "basic" and allow_basic:
            user, password = _basic(value)
            if user is not None and self.login_ok(user, password):
                return user
        return None

    # -- paths ---------------------------------------------------------------------
    def check_path(self, path: str | Path, what: str = "path") -> Path:
        """``path`` resolved; AccessError when the app is remote and it lies outside the app's folders."""
        try:
            resolved = Path(path).expanduser().resolve()
        except RuntimeError:  # "~nosuchuser": no such home, so the path is taken literally
            resolved = Path(path).resolve()
        if self.remote and not any(resolved.is_relative_to(r) for r in self.roots):
            folders = ", ".join(str(r) for r in self.roots) or Message("access.none")
            raise AccessError(Message("access.outside", what=Message(WHAT_KEYS.get(what, "access.path")),
                                      folders=folders, path=repr(str(path))))
        return resolved

    def path_allowed(self, path: str | Path) -> bool:
        try:
            self.check_path(path)
        except (AccessError, OSError, ValueError, RuntimeError):
            return False
        return True


def _basic(value: str) -> tuple[str | None, str]:
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, ""
    return (user, password) if sep else (None, "")


def app_roots(paths, upload_dir: str | Path | None = None) -> tuple[Path, ...]:
    """The folders a remote caller may name: models, data (the runs and ``data/`` under home), uploads."""
    roots = [paths.models, paths.runs, paths.home / "data"]
    if upload_dir:
        roots.append(Path(upload_dir))
    return tuple(Path(r).expanduser().resolve() for r in roots)


class LoginThrottle:
    """Failed-login rate limiting: the first ``free`` failures in a row cost nothing (typos),
    then after the n-th a client must wait ``base_s * 2**(n-free-1)`` seconds (at most
    ``max_s``) before its next try, right or wrong. A lockout rather than a sleep, so parallel
    guesses gain nothing and a waiting attacker holds no worker; a right guess is not even
    checked while locked out, so it cannot be told from a wrong one."""

    def __init__(self, base_s: float = 1.0, max_s: float = 300.0, free: int = 3, clock=time.monotonic):
        self.base_s, self.max_s, self.free, self._clock = base_s, max_s, free, clock
        self._state: dict[str, tuple[int, float]] = {}  # client -> (failures, locked until)
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """Seconds this client must still wait; 0 when it may try now."""
        with self._lock:
            _, until = self._state.get(client, (0, 0.0))
        return max(0.0, until - self._clock())

    def failed(self, client: str, surface: str) -> float:
        """Record a failure; -> the delay now imposed (logged with the client and surface)."""
        with self._lock:
            count = self._state.get(client, (0, 0.0))[0] + 1
            delay = 0.0 if count <= self.free else min(self.max_s, self.base_s * 2 ** (count - self.free - 1))
            self._state[client] = (count, self._clock() + delay)
            if len(self._state) > 10_000:  # bound the table: forget the oldest entries
                for old in list(self._state)[:1000]:
                    del self._state[old]
        log.warning("failed login from %s on %s (%d in a row): next try allowed in %.1f s",
                    client, surface, count, delay)
        return delay

    def succeeded(self, client: str):
        with self._lock:
            self._state.pop(client, None)
