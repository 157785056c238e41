"""A local HTTP server that checks requests against Grafana's documented HTTP API.

Folders (https://grafana.com/docs/grafana/latest/developers/http_api/folder/), data sources
(.../data_source/) and dashboards (.../dashboard/): paths, methods, JSON body shape and the
``Authorization: Bearer`` header. Responses can be scripted (401, 412, 5xx) per request.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeGrafana:
    def __init__(self, token: str = "glsa_test_token"):
        self.token = token
        self.folders: dict[str, dict] = {}
        self.datasources: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.annotations: list[dict] = []
        self.requests: list[tuple[str, str, dict | None, dict]] = []  # method, path, body, headers
        self.script: list[tuple[int, dict] | None] = []  # one per request; None = handle normally
        self.errors: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def do_PUT(self):
                fake._handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, _ in self.requests if m != "GET"]

    def _send(self, h, status: int, body: dict):
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h, method: str):
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self.errors.append(f"{method} {h.path}: body is not JSON")
                return self._send(h, 400, {"message": "bad request data"})
        with self.lock:
            self.requests.append((method, h.path, body, dict(h.headers)))
            scripted = self.script.pop(0) if self.script else None
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, {"message": "Unauthorized"})
        if scripted:
            return self._send(h, *scripted)
        if method in ("POST", "PUT") and h.headers.get("Content-Type", "").split(";")[0] != "application/json":
            self.errors.append(f"{method} {h.path}: Content-Type {h.headers.get('Content-Type')}")
        try:
            status, out = self._route(method, h.path, body)
        except (KeyError, TypeError, AssertionError) as e:
            self.errors.append(f"{method} {h.path}: {e!r}")
            status, out = 400, {"message": f"bad request data: {e}"}
        self._send(h, status, out)

    def _route(self, method: str, path: str, body):
        if m := re.fullmatch(r"/api/folders/([\w-]+)", path):
            uid = m.group(1)
            if method == "GET":
                return (200, self.folders[uid]) if uid in self.folders else (404, {"message": "folder not found"})
            if method == "PUT":
                assert set(body) <= {"title", "version", "overwrite", "uid"}, body
                self.folders[uid]["title"] = body["title"]
                self.folders[uid]["version"] += 1
                return 200, self.folders[uid]
        if path == "/api/folders" and method == "POST":
            assert set(body) <= {"uid", "title", "parentUid"} and body["title"], body
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "version": 1, "id": 1}
            return 200, self.folders[body["uid"]]
        if m := re.fullmatch(r"/api/datasources/uid/([\w-]+)", path):
            uid = m.group(1)
            if method == "GET":
                return (200, self.datasources[uid]) if uid in self.datasources \
                    else (404, {"message": "Data source not found"})
            if method == "PUT":
                assert body["uid"] == uid and body["type"] and body["url"] and body["access"] in ("proxy", "direct")
                self.datasources[uid] = {**body, "id": self.datasources[uid]["id"], "orgId": 1}
                return 200, {"datasource": self.datasources[uid], "message": "Datasource updated"}
        if path == "/api/datasources" and method == "POST":
            assert body["name"] and body["type"] and body["url"] and body["access"] in ("proxy", "direct"), body
            if any(d["name"] == body["name"] for d in self.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            self.datasources[body["uid"]] = {**body, "id": len(self.datasources) + 1, "orgId": 1}
            return 200, {"datasource": self.datasources[body["uid"]], "id": len(self.datasources),
                         "message": "Datasource added", "name": body["name"]}
        if m := re.fullmatch(r"/api/dashboards/uid/([\w-]+)", path):
            uid = m.group(1)
            if method == "GET":
                return (200, self.dashboards[uid]) if uid in self.dashboards \
                    else (404, {"message": "Dashboard not found"})
        if path == "/api/dashboards/db" and method == "POST":
            assert set(body) <= {"dashboard", "folderUid", "folderId", "overwrite", "message"}, body
            d = body["dashboard"]
            assert d["uid"] and d["title"] and isinstance(d.get("panels"), list), "dashboard needs uid/title/panels"
            assert d.get("id") is None, "a new or overwritten dashboard must have id null"
            old = self.dashboards.get(d["uid"])
            version = (old["dashboard"]["version"] + 1) if old else 1
            self.dashboards[d["uid"]] = {"dashboard": {**d, "id": 7, "version": version},
                                         "meta": {"folderUid": body.get("folderUid"), "version": version,
                                                  "message": body.get("message")}}
            return 200, {"id": 7, "uid": d["uid"], "url": f"/d/{d['uid']}", "status": "success", "version": version}
        if path == "/api/annotations" and method == "POST":
            assert isinstance(body.get("time"), int) and body["time"] > 0, "time: epoch milliseconds"
            assert isinstance(body.get("tags"), list) and isinstance(body.get("text"), str) and body["text"], body
            self.annotations.append(body)
            return 200, {"message": "Annotation added", "id": len(self.annotations)}
        return 404, {"message": "Not found"}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
