"""The production server (exporter/server.py): bounded connections, timeouts, JSON refusals, and `flowscope serve`.

Every test runs the real server on 127.0.0.1 with small limits, so the cases stay cheap; every wait has a
count and a deadline, and nothing asserts on elapsed time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import orjson
import pytest
import requests

from backend.app import create_app
from exporter import conventions as c
from exporter.server import ServerLimits, connection_budget, make_server

ROOT = Path(__file__).resolve().parent.parent
STEP = {"correlation_id": "c-1", "workflow_type": "login", "layer": "cache", "component": "redis",
        "operation": "GET session", "status": "success", "started_at": 1795000000.0, "duration_ms": 2}


@pytest.fixture
def start(make_exporter):
    """Start the production server on an exporter; yields ``start(limits, **settings) -> (server, url, ex)``."""
    running = []

    def go(limits: ServerLimits, **settings):
        ex = make_exporter(**settings)
        server = make_server("127.0.0.1", 0, create_app(ex), limits)
        t = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
        t.start()
        running.append((server, t))
        return server, f"http://127.0.0.1:{server.server_address[1]}", ex

    yield go
    for server, t in running:
        server.shutdown()
        t.join(15)
        assert not t.is_alive(), "serve_forever did not return after shutdown()"


def _closed_by_server(sock: socket.socket, deadline_s: float) -> bool:
    """Wait (bounded) until the server closes ``sock``: recv gives b"" or a reset."""
    sock.settimeout(0.2)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def _raw(url: str, payload: bytes, deadline_s: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read one response until the server closes or its Content-Length is complete."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=deadline_s) as s:
        s.sendall(payload)
        data = b""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                if len(body) >= int(headers.get("content-length", 1 << 30)):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_the_connection_limit_comes_from_the_descriptor_limit():
    assert connection_budget(1024) == 1024 - 64 - 128
    assert ServerLimits().effective_connection_limit(1024) == 832  # default cap 1000, budget 832
    assert ServerLimits().effective_connection_limit(65536) == 1000
    assert ServerLimits(connection_limit=5000).effective_connection_limit(1024) == 832
    assert ServerLimits(connection_limit=50).effective_connection_limit(1024) == 50


def test_health_and_metrics_answer_with_300_idle_sockets_over_a_limit_of_50(start):
    server, url, _ = start(ServerLimits(connection_limit=50, header_timeout_s=60, idle_timeout_s=60))
    host, port = "127.0.0.1", server.server_address[1]
    with ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection((host, port), timeout=5)) for _ in range(300)]
        # a slowloris of the other kind: half a header on some of them
        for s in idle[::10]:
            with suppress(OSError):  # the server may already have evicted it
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        for _ in range(5):
            assert requests.get(url + c.HEALTH_PATH, timeout=10).status_code == 200
            r = requests.get(url + c.METRICS_PATH, timeout=10)
            assert r.status_code == 200 and b"process_cpu_seconds_total" in r.content
        assert len(server.active_channels) <= 50
        assert server.closed["evicted"] > 0


def test_at_the_limit_the_quietest_connection_makes_room(start):
    server, url, _ = start(ServerLimits(connection_limit=3, header_timeout_s=60, idle_timeout_s=60))
    port = server.server_address[1]

    def wait_open(n):
        for _ in range(100):
            if len(server.active_channels) == n:
                return
            time.sleep(0.05)
        raise AssertionError(f"{len(server.active_channels)} connections open, expected {n}")

    with ExitStack() as stack:
        busy = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        busy.sendall(b"POST /api/v1/spans HTTP/1.1\r\nHost: x\r\n")  # half a request: evicted last
        wait_open(1)
        quiet = []
        for n in (2, 3):
            quiet.append(stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5)))
            wait_open(n)
        r = requests.get(url + c.HEALTH_PATH, timeout=10)
        assert r.status_code == 200 and server.closed["evicted"] == 1
        assert _closed_by_server(quiet[0], 5.0), "the oldest quiet connection should have been evicted"
        assert not _closed_by_server(busy, 0.5) and not _closed_by_server(quiet[1], 0.5)


def test_making_room_keeps_a_connection_whose_request_is_sent_but_not_yet_read():
    """At the limit the event loop may accept a burst of connections before it reads any of them: one whose client
    has already sent its request is not quiet, however old, and the next quietest goes instead (the idle-socket test
    above lost its own GET this way, now and then)."""
    from types import SimpleNamespace

    from exporter.server import BoundedChannel, BoundedServer

    class Conn:
        request, total_outbufs_len, will_close, close_when_flushed = None, 0, False, False

        def __init__(self, last_activity: float, sent: bytes) -> None:
            self.last_activity = last_activity
            self.socket, self.peer = socket.socketpair()
            if sent:
                self.peer.sendall(sent)
            self.closed = False

        def in_app(self) -> bool:
            return False

        def close_now(self) -> None:
            self.closed = True

    conns = [Conn(1.0, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Conn(2.0, b""), Conn(3.0, b"")]
    try:
        server = SimpleNamespace(active_channels=dict(enumerate(conns)), closed={"evicted": 0})
        assert BoundedServer._make_room(server) is True  # type: ignore[arg-type]
        assert [ch.closed for ch in conns] == [False, True, False] and server.closed["evicted"] == 1
        assert BoundedChannel.eviction_key(conns[0]) < BoundedChannel.eviction_key(conns[1])  # by age alone: first
    finally:
        for ch in conns:
            ch.socket.close()
            ch.peer.close()


def test_a_slowloris_header_is_closed_after_the_header_timeout(start):
    server, url, _ = start(ServerLimits(header_timeout_s=1.0, idle_timeout_s=60))
    port = server.server_address[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as trickle, \
            socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        trickle.sendall(b"GET /api/v1/health HTTP/1.1\r\n")
        closed = False
        for i in range(50):  # one header line every 0.2 s, never the blank line that ends the header
            try:
                trickle.sendall(f"X-Slow-{i}: a\r\n".encode())
            except OSError:
                closed = True
                break
            if _closed_by_server(trickle, 0.2):
                closed = True
                break
        assert closed, "a header trickled over 10 s was never cut off"
        assert _closed_by_server(silent, 10.0), "a connection that never spoke was kept"
    assert server.closed["header_timeout"] >= 2, server.closed
    assert requests.get(url + c.HEALTH_PATH, timeout=10).status_code == 200


def test_a_keep_alive_connection_outlives_the_header_timeout_between_requests(start):
    server, url, _ = start(ServerLimits(header_timeout_s=0.5, idle_timeout_s=60))
    with requests.Session() as s:
        assert s.get(url + c.HEALTH_PATH, timeout=10).status_code == 200
        time.sleep(1.5)  # three header timeouts with the connection idle between requests
        assert s.get(url + c.HEALTH_PATH, timeout=10).status_code == 200
    assert server.closed["header_timeout"] == 0


def test_an_idle_connection_is_closed_after_the_idle_timeout(start):
    server, url, _ = start(ServerLimits(header_timeout_s=60, idle_timeout_s=1.0))
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(s, 10.0)
    assert server.closed["idle_timeout"] >= 1


def test_a_client_that_stops_reading_a_large_response_frees_its_worker():
    chunk = b"x" * (1 << 20)

    def app(environ, start_response):  # 24 MiB: past waitress's 16 MiB high watermark, so the worker waits
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(24 * len(chunk)))])
        return [chunk] * 24

    server = make_server("127.0.0.1", 0, app, ServerLimits(threads=1, idle_timeout_s=1.0))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as stuck:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
            # the only worker is held by the stuck response until the send timeout frees it
            r = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
            assert r.status_code == 200 and len(r.content) == 24 * len(chunk)
        assert server.closed["send_timeout"] == 1
    finally:
        server.shutdown()
        t.join(15)


def test_oversized_and_malformed_requests_get_a_json_4xx(start):
    _, url, _ = start(ServerLimits(max_body_bytes=1024), max_body_bytes=1024)
    # far over the limit: waitress refuses on the Content-Length alone, before reading the body
    status, headers, body = _raw(url, b"POST /api/v1/spans HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      b"Content-Length: 100000000\r\n\r\n")
    assert status == 413 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["error"]["code"] == "too_large"
    # just over it: the application's own refusal, same shape
    r = requests.post(url + c.NATIVE_SPANS_PATH, data=b"x" * 2000, headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    # a header line without a colon
    status, headers, body = _raw(url, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
    assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_request"
    # a body of exactly max_body_bytes is still the application's to judge
    r = requests.post(url + c.NATIVE_SPANS_PATH, data=b" " * 1024, headers={"Content-Type": "application/json"},
                      timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body"


def test_ingest_and_scrape_through_the_server(start):
    _, url, ex = start(ServerLimits(threads=2))
    with requests.Session() as s:
        for i in range(20):
            r = s.post(url + c.NATIVE_SPANS_PATH, json={"steps": [{**STEP, "correlation_id": f"c-{i}"}]}, timeout=10)
            assert r.status_code == 200 and r.json()["accepted"] == 1
        text = s.get(url + c.METRICS_PATH, timeout=10).text
    key = {"workflow": "login", "layer": "cache", "component": "redis", "operation": "GET session", "status": "ok"}
    assert ex.store.value(c.STEP_DURATION_SECONDS + "_count", key) == 20
    assert 'flowscope_step_duration_seconds_count{workflow="login",layer="cache"' in text


def test_flowscope_serve_answers_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "FLOWSCOPE_DATABASE_URL": f"sqlite:///{tmp_path}/fs.db", "FLOWSCOPE_LOG_LEVEL": "WARNING"}
    p = subprocess.Popen([sys.executable, "-m", "flowscope.cli", "serve", "--port", "0", "--threads", "2",
                          "--connection-limit", "20", "--header-timeout-s", "2"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()  # blocks until the server prints it, or exits
        assert line.startswith("flowscope serving on http://127.0.0.1:"), (line, p.stderr.read() if p.poll() else "")
        url = line.split()[3]
        health = requests.get(url + c.HEALTH_PATH, timeout=10)
        assert health.status_code == 200
        writer = health.json()["components"]["writer"]["process"]  # the run store's writer process (the default)
        assert writer["alive"] and writer["pid"] != p.pid
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        with pytest.raises(ProcessLookupError):  # it stopped with the server, and was reaped
            os.kill(writer["pid"], 0)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdout.close()
        p.stderr.close()
