"""A local HTTP server that checks pushes exactly against Loki's documented push API.

https://grafana.com/docs/loki/latest/reference/loki-http-api/#ingest-logs
- ``POST /loki/api/v1/push``; JSON (optionally gzip) or snappy-compressed protobuf.
- JSON: ``{"streams": [{"stream": {label: value}, "values": [[ns_string, line, {metadata}?]]}]}``.
- protobuf: ``logproto.PushRequest``; decoded here by a small wire-format reader of
  its own, so the field numbers are checked independently of the exporter's descriptor.

Responses can be scripted (status, headers, delay) to exercise the retry contract. ``refuse`` names
lines to refuse the way Loki's distributor does (``validateEntry``): the valid entries of the push are
kept, and the answer is a 400 whose body names each entry refused. ``GET /ready`` answers 200 ("ready")
as Loki's readiness endpoint does. A ``port`` lets a test bring the same Loki back after a stop.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cramjam

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _fields(b: bytes) -> list[tuple[int, object]]:
    out, i = [], 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"unexpected wire type {wt}")
        out.append((num, v))
    return out


def _parse_selector(s: str) -> dict:
    """``{a="x", b="y"}`` → dict; values use Go/JSON string escapes."""
    assert s.startswith("{") and s.endswith("}"), s
    return {m.group(1): json.loads('"' + m.group(2) + '"')
            for m in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', s)}


def decode_protobuf(body: bytes) -> list[dict]:
    streams = []
    for num, st in _fields(body):
        assert num == 1, "PushRequest.streams is field 1"
        labels, entries = None, []
        for fnum, v in _fields(st):
            if fnum == 1:
                labels = _parse_selector(v.decode())
            elif fnum == 2:
                ts = line = None
                meta = {}
                for enum, ev in _fields(v):
                    if enum == 1:
                        tf = dict(_fields(ev))
                        ts = tf.get(1, 0) * 1_000_000_000 + tf.get(2, 0)
                    elif enum == 2:
                        line = ev.decode()
                    elif enum == 3:
                        kv = dict(_fields(ev))
                        meta[kv[1].decode()] = kv[2].decode()
                entries.append((str(ts), line, meta))
        streams.append({"stream": labels, "values": entries})
    return streams


def validate_json(doc: dict) -> list[dict]:
    assert set(doc) == {"streams"}, f"top level must be only streams, got {set(doc)}"
    out = []
    for st in doc["streams"]:
        assert set(st) == {"stream", "values"}, st.keys()
        assert all(isinstance(v, str) for v in st["stream"].values())
        vals = []
        for v in st["values"]:
            assert isinstance(v, list) and len(v) in (2, 3), v
            assert isinstance(v[0], str) and v[0].isdigit() and len(v[0]) == 19, f"ns timestamp string: {v[0]!r}"
            assert isinstance(v[1], str)
            meta = v[2] if len(v) == 3 else {}
            assert isinstance(meta, dict) and all(isinstance(x, str) for x in meta.values())
            vals.append((v[0], v[1], meta))
        out.append({"stream": st["stream"], "values": vals})
    return out


class FakeLoki:
    def __init__(self, tenant: str | None = None, auth: str | None = None, port: int = 0,
                 refuse: Callable[[str], str | None] | None = None):
        self.tenant, self.auth = tenant, auth
        self.script: list[tuple[int, dict, float]] = []  # consumed per request; then 204
        #: line -> Loki's reason for refusing it (e.g. "line too long"), or None to keep it
        self.refuse = refuse
        self.probes = 0  # GET /ready requests answered
        self.attempts: list[float] = []
        self.accepted: list[dict] = []  # one per entry: labels, ts, line, meta
        self.errors: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                fake._handle(self)

            def do_GET(self):
                if self.path != "/ready":
                    fake._reply(self, 404, b"404 page not found\n")
                    return
                with fake.lock:
                    fake.probes += 1
                fake._reply(self, 200, b"ready\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _reply(self, h, status, body=b"", headers=None):
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h):
        with self.lock:
            self.attempts.append(time.monotonic())
            status, headers, delay = self.script.pop(0) if self.script else (204, {}, 0)
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        try:
            assert h.path == "/loki/api/v1/push", h.path
            if self.tenant is not None:
                assert h.headers.get("X-Scope-OrgID") == self.tenant, "tenant header"
            if self.auth is not None:
                assert h.headers.get("Authorization") == self.auth, "auth header"
            ctype = h.headers.get("Content-Type")
            if ctype == "application/json":
                if h.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                streams = validate_json(json.loads(body))
            elif ctype == "application/x-protobuf":
                assert h.headers.get("Content-Encoding") is None
                streams = decode_protobuf(bytes(cramjam.snappy.decompress_raw(body)))
            else:
                raise AssertionError(f"unsupported Content-Type {ctype}")
            for st in streams:
                assert all(LABEL_NAME.match(k) for k in st["stream"])
        except (AssertionError, ValueError, KeyError) as e:
            self.errors.append(str(e))
            self._reply(h, 400, str(e).encode())
            return
        if delay:
            time.sleep(delay)  # a hung Loki: the client times out before this ends
            return
        refused: list[str] = []
        if 200 <= status < 300:
            with self.lock:
                for st in streams:
                    for ts, line, meta in st["values"]:
                        why = self.refuse(line) if self.refuse else None
                        if why:
                            refused.append(f"entry with timestamp {ts} ignored, reason: '{why}' for stream: "
                                           f"{st['stream']}")
                            continue
                        self.accepted.append({"labels": st["stream"], "ts": ts, "line": line, "meta": meta})
        if refused:  # Loki's answer when some entries fail validation: the others are already stored
            total = sum(len(st["values"]) for st in streams)
            self._reply(h, 400, (",\n".join(refused) + f",\ntotal ignored: {len(refused)} out of {total}").encode())
            return
        self._reply(h, status, b"" if status < 300 else b"scripted failure", headers)

    def distinct(self) -> list[dict]:
        """What a query would show: Loki drops exact duplicates (same stream, time and line)."""
        seen: dict[tuple, dict] = {}
        for e in list(self.accepted):
            seen.setdefault((tuple(sorted(e["labels"].items())), e["ts"], e["line"]), e)
        return list(seen.values())

    def wait_accepted(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.accepted) < n:
            time.sleep(0.02)
        return self.accepted

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
