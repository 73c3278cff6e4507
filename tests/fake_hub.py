"""A local stand-in for the Hugging Face Hub's file API, enough for huggingface_hub's listing and our
downloads: ``/api/models/{repo}[/revision/{rev}]``, and HEAD/GET (with Range) on
``/{repo}/resolve/{rev}/{file}`` with the X-Repo-Commit / ETag / X-Linked-Etag / X-Linked-Size
headers. Runs in a thread on a free port; ``throttle_s`` slows bodies down (to cancel mid-way),
``cut_after`` drops the connection once after that many body bytes (to resume)."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PIECE = 64 * 1024


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.throttle_s, self.cut_after = repos, 0.0, None
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while True:  # readiness: the first answered request, not a sleep
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- routes ---------------------------------------------------------------------------------
    def answer(self, h: BaseHTTPRequestHandler, body: bool):
        path = h.path.split("?")[0]
        self.requests.append((h.command, path, h.headers.get("Range")))
        if path == "/api/health":
            return self.send(h, 200, b"ok", body=body)
        if path.startswith("/api/models/"):
            return self.model_info(h, path.removeprefix("/api/models/").split("/revision/")[0], body)
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.resolve(h, "/".join(parts[:2]), "/".join(parts[4:]), body)
        self.send(h, 404, b"not found", body=body)

    def model_info(self, h, repo: str, body: bool):
        files = self.repos.get(repo)
        if files is None:
            return self.send(h, 404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)
        siblings = [{"rfilename": n, "size": len(d), "lfs": {"sha256": sha(d), "size": len(d), "pointerSize": 134}}
                    for n, d in files.items()]
        info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}
        self.send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def resolve(self, h, repo: str, name: str, body: bool):
        data = (self.repos.get(repo) or {}).get(name)
        if data is None:
            code = "RepoNotFound" if repo not in self.repos else "EntryNotFound"
            return self.send(h, 404, b'{"error":"not found"}', {"X-Error-Code": code}, body)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{sha(data)}"', "X-Linked-Etag": f'"{sha(data)}"',
                   "X-Linked-Size": str(len(data)), "Accept-Ranges": "bytes"}
        start, status = 0, 200
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start, status = int(rng[6:].split("-")[0]), 206
            if start >= len(data):
                return self.send(h, 416, b"", headers, body)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self.send(h, status, data[start:], headers, body, stream=True)

    def send(self, h, status: int, data: bytes, headers: dict | None = None, body: bool = True, stream=False):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if not body:
            return
        if not stream:
            h.wfile.write(data)
            return
        sent = 0
        for i in range(0, len(data), PIECE):
            if self.cut_after is not None and sent >= self.cut_after:
                self.cut_after = None  # only once: the retry gets the rest
                h.close_connection = True
                h.wfile.flush()
                h.connection.close()
                return
            h.wfile.write(data[i:i + PIECE])
            sent += len(data[i:i + PIECE])
            if self.throttle_s:
                time.sleep(self.throttle_s)  # the server's pace, not a test wait


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
