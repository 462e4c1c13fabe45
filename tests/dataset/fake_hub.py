"""A loopback stand-in for the Hugging Face Hub HTTP API, enough for ``create_repo`` / ``create_branch`` /
``upload_folder``: it records every call and keeps committed files in memory.

Binds 127.0.0.1 only, on a free port; stops by itself after ``lifetime`` seconds even if a test forgets to.
Every file is answered as a "regular" (inline base64) upload, so no LFS/Xet storage is involved.
"""
from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FakeHub:
    def __init__(self, lifetime: float = 120.0, commit_status: int = 200):
        self.lifetime = lifetime
        self.commit_status = commit_status  # e.g. 500 to test a failing upload
        self.calls: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.repos: dict[str, dict] = {}
        self.validated_cards: list[str] = []
        self._lock = threading.Lock()

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _reply(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                url = urlsplit(self.path)
                call = {"method": self.command, "path": url.path, "query": url.query,
                        "authorization": self.headers.get("Authorization"), "body": body}
                with hub._lock:
                    hub.calls.append(call)
                status, payload = hub.route(self.command, url.path, body)
                self._reply(status, payload)

            do_GET = do_POST = do_PUT = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    # ---- the API ----------------------------------------------------------------------------------------------
    def route(self, method: str, path: str, body: bytes):
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req.get('organization')}/{req['name']}" if req.get("organization") else req["name"]
            self.repos[repo] = req
            return 200, {"url": f"{self.endpoint}/datasets/{repo}", "name": repo}
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
        if method == "POST" and m:
            repo, what, rev = m.groups()
            if what == "branch":
                return 200, {}
            if what == "preupload":
                files = json.loads(body)["files"]
                return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                        "oid": None} for f in files]}
            if self.commit_status != 200:
                return self.commit_status, {"error": "simulated server failure"}
            for line in body.splitlines():
                item = json.loads(line)
                if item.get("key") == "file":
                    v = item["value"]
                    self.files[v["path"]] = base64.b64decode(v["content"])
            return 200, {"commitUrl": f"{self.endpoint}/datasets/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40,
                         "pullRequestUrl": None}
        if method == "POST" and path == "/api/validate-yaml":  # the Hub checks the card's metadata first
            self.validated_cards.append(json.loads(body)["content"])
            return 200, {"errors": [], "warnings": []}
        if path == "/api/whoami-v2":
            return 200, {"name": "tester", "type": "user"}
        return 404, {"error": f"fake hub: no route for {method} {path}"}
