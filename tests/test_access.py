"""The access policy on every surface: the auth matrix (surface x credential) for --auth and
--api-key, the failed-login throttle, path rules for a remote app, and the listen check.

In-process: ``create_web_app`` (the page, Gradio's API and /v1 behind the guard) under
Starlette's TestClient; no server, no model load."""
from __future__ import annotations

import base64
import logging

import pytest
from fastapi.testclient import TestClient
from fixtures_models import make_services

from lmstudio_lite.services.access import (AccessError, AccessPolicy, LoginThrottle, app_roots, check_listen,
                                           is_loopback, listen_urls)

KEY = "sk-test-access"
LOGIN = ("ann", "pw-ann")
# Gradio's surfaces and /v1, each a (method, path, body) that answers at once when allowed.
GRADIO = [("GET", "/config", None), ("GET", "/gradio_api/info", None),
          ("GET", "/gradio_api/openapi.json", None),
          ("POST", "/gradio_api/call/models_list", {"data": []}),
          ("POST", "/gradio_api/call/train_start", {"data": ["x", "/etc/passwd", 2, 5e-4, 1, 16, 0]})]
V1 = [("GET", "/v1/models", None)]
NO_CREDENTIAL_ONLY = [("GET", "/gradio_api/heartbeat/abc", None), ("GET", "/openapi.json", None),
                      ("POST", "/gradio_api/queue/join", {"data": [], "fn_index": 0, "session_hash": "x"})]


def basic(user: str, password: str) -> dict:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def web_client(home, policy: AccessPolicy, throttle: LoginThrottle | None = None) -> TestClient:
    from lmstudio_lite.ui.launch import create_web_app

    from lmstudio_lite.training.jobs import JobRunner

    services = make_services(home)
    services.jobs = JobRunner(services.paths)  # offers train_start, the endpoint of the original probe
    services.access, services.shared = policy, policy.remote
    services.extra["login_throttle"] = throttle or LoginThrottle(base_s=0.0)
    return TestClient(create_web_app(services))


def call(client, method, path, body, headers=None):
    return client.request(method, path, json=body, headers=headers or {})


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory):
    policy = AccessPolicy(logins=dict([LOGIN]), remote=True)
    return web_client(tmp_path_factory.mktemp("auth"), policy)


@pytest.fixture(scope="module")
def key_app(tmp_path_factory):
    return web_client(tmp_path_factory.mktemp("key"), AccessPolicy(api_key=KEY, remote=True))


def session_cookie(client, user, password) -> dict:
    r = client.post("/login", data={"username": user, "password": password})
    assert r.status_code == 200, r.text
    cookies = dict(client.cookies)
    client.cookies.clear()  # each request below states its own credentials
    return {"cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


@pytest.mark.parametrize("method,path,body", GRADIO + V1 + NO_CREDENTIAL_ONLY)
@pytest.mark.parametrize("app", ["auth_app", "key_app"])
def test_no_or_wrong_credentials_are_401_everywhere(request, app, method, path, body):
    client = request.getfixturevalue(app)
    assert call(client, method, path, body).status_code == 401
    wrong = basic("ann", "nope") if app == "auth_app" else {"authorization": "Bearer sk-wrong"}
    assert call(client, method, path, body, wrong).status_code == 401


@pytest.mark.parametrize("method,path,body", GRADIO + V1)
def test_with_auth_the_login_opens_every_surface(auth_app, method, path, body):
    r = call(auth_app, method, path, body, basic(*LOGIN))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("method,path,body", GRADIO + V1)
def test_with_api_key_the_key_opens_every_surface(key_app, method, path, body):
    r = call(key_app, method, path, body, {"authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("app,login", [("auth_app", LOGIN), ("key_app", ("anyone", KEY))])
def test_a_logged_in_session_opens_gradio_but_never_v1(request, app, login):
    """The page's cookie is SameSite=None: /v1 must not take it, or any web site could call it."""
    client = request.getfixturevalue(app)
    cookie = session_cookie(client, *login)
    for method, path, body in GRADIO:
        assert call(client, method, path, body, cookie).status_code == 200, path
    assert call(client, "GET", "/v1/models", None, cookie).status_code == 401


def test_healthz_and_the_login_page_stay_public(key_app):
    assert key_app.get("/healthz").status_code == 200
    assert key_app.get("/").status_code == 200  # Gradio's login form


def test_open_local_app_needs_nothing(tmp_path):
    client = web_client(tmp_path, AccessPolicy())
    for method, path, body in GRADIO[:4] + V1:
        assert call(client, method, path, body).status_code == 200, path


# ---- the failed-login throttle -----------------------------------------------------------------
def test_throttle_delay_grows_per_client_and_resets_on_success():
    now = [0.0]
    t = LoginThrottle(base_s=2.0, max_s=5.0, free=1, clock=lambda: now[0])
    assert t.failed("a", "x") == 0.0 and t.wait_s("a") == 0.0  # one typo is free
    assert t.failed("a", "x") == 2.0 and t.wait_s("a") == 2.0 and t.wait_s("b") == 0.0
    assert t.failed("a", "x") == 4.0 and t.failed("a", "x") == 5.0  # doubling, capped
    now[0] += 5.0
    assert t.wait_s("a") == 0.0
    t.succeeded("a")
    assert t.failed("a", "x") == 0.0


def test_failed_logins_are_locked_out_and_logged(tmp_path, caplog):
    now = [100.0]
    client = web_client(tmp_path, AccessPolicy(logins=dict([LOGIN])), LoginThrottle(base_s=30.0, free=0,
                                                                                   clock=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger="lmstudio_lite.access"):
        assert client.post("/login", data={"username": "ann", "password": "bad"}).status_code == 400
        r = client.post("/login", data={"username": "ann", "password": LOGIN[1]})  # right, but too soon
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 30
        assert call(client, "GET", "/v1/models", None, basic(*LOGIN)).status_code == 429  # every surface
    assert "failed login from" in caplog.text
    now[0] += 31
    assert client.post("/login", data={"username": "ann", "password": LOGIN[1]}).status_code == 200


# ---- paths --------------------------------------------------------------------------------------
def test_remote_app_refuses_paths_outside_its_folders(tmp_path):
    from lmstudio_lite.paths import app_paths
    from lmstudio_lite.ui import models_tab as mt
    from lmstudio_lite.services import train_actions as act

    paths = app_paths(tmp_path / "home").ensure()
    policy = AccessPolicy(api_key=KEY, remote=True, roots=app_roots(paths, tmp_path / "uploads"))
    with pytest.raises(AccessError, match="reachable from other machines"):
        policy.check_path("/etc/passwd")
    assert policy.check_path(paths.models / "m") == (paths.models / "m").resolve()
    assert not policy.path_allowed(str(paths.models / ".." / ".." / "etc"))  # no climbing out
    assert AccessPolicy(remote=False).path_allowed("/etc/passwd")  # local: the user's own machine
    services = make_services(tmp_path / "home")
    services.access = policy
    with pytest.raises(act.UserError, match="reachable from other machines"):
        act.resolve_data(services, "/etc/passwd")
    assert "reachable from other machines" in mt.import_folder(services, "/usr")
    assert "No local model" in mt.load_model(services, "/usr")


def test_train_start_through_gradio_api_refuses_a_server_file(tmp_path):
    """The probe that started issue 13: train_start on /etc/passwd, now with the key (so it gets in)."""
    import shutil

    from fixtures_models import STORIES

    shutil.copytree(STORIES, tmp_path / "models" / "stories260K")
    key = {"authorization": f"Bearer {KEY}"}
    with web_client(tmp_path, AccessPolicy(api_key=KEY, remote=True)) as client:  # lifespan: the queue runs
        data = ["stories260K", "/etc/passwd", 2, 5e-4, 1, 16, 0]
        r = call(client, "POST", "/gradio_api/call/train_start", {"data": data}, key)
        answer = client.get(f"/gradio_api/call/train_start/{r.json()['event_id']}", headers=key)
    assert "root:" not in answer.text and "reachable from other machines" in answer.text


# ---- listening ------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
def test_loopback_hosts(host):
    assert is_loopback(host) and check_listen(host, False, False, False) is None


def test_network_without_credentials_is_refused_unless_insecure():
    with pytest.raises(AccessError, match="--insecure-no-auth"):
        check_listen("0.0.0.0", False, False, False)
    with pytest.raises(AccessError, match="share link"):
        check_listen("127.0.0.1", True, False, False)
    assert check_listen("0.0.0.0", False, True, False) is None
    assert "warning" in check_listen("192.168.1.4", False, False, True)


def test_listen_urls_name_real_addresses():
    urls = listen_urls("0.0.0.0", 7860)
    assert urls[0] == "http://127.0.0.1:7860/" and all(":7860/" in u for u in urls)
    assert "0.0.0.0" not in " ".join(urls)
    assert listen_urls("::1", 80) == ["http://[::1]:80/"]


@pytest.mark.parametrize("argv", [["--host", "0.0.0.0"], ["serve", "--host", "0.0.0.0"],
                                  ["--host", "192.0.2.7", "--port", "1"]])
def test_cli_refuses_the_network_without_credentials(argv, capsys):
    from lmstudio_lite import cli

    assert cli.main(argv + ["--no-browser"] if argv[0] != "serve" else argv) == 2
    err = capsys.readouterr().err
    assert "--insecure-no-auth" in err and "--auth" in err


def test_banner_prints_every_real_address():
    import types

    from lmstudio_lite.ui.launch import _banner

    services = types.SimpleNamespace(registry=types.SimpleNamespace(current=None, last_error=None))
    lines = _banner(services, ["http://127.0.0.1:7860/", "http://192.0.2.2:7860/"], None, None)
    assert "running at http://127.0.0.1:7860/" in lines[0] and "also at http://192.0.2.2:7860/" in lines[1]
