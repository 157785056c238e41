"""Remote mode as an app runs it: a burst loses nothing, flush says whether spans got out, Retry-After is
honoured, and the transport copes with what servers do to kept-alive connections. Real servers on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from prometheus_client import CollectorRegistry

import flowscope
from exporter import conventions as c
from exporter import sdk
from exporter.model import Span
from exporter.retry import SendError
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import RemoteSink, to_native
from exporter.sdk.transport import DirectHttp, RequestsHttp, transport_for
from tests.conftest import free_port

WAIT_S = 60  # upper bound on any wait for the sender; a pass takes a small fraction of it


class Recorder:
    """An HTTP/1.1 server on 127.0.0.1 that answers POSTs from a script of (status, headers), then 200, and
    records each request: (monotonic time it arrived, request target, headers, body, status answered)."""

    def __init__(self, script=(), port: int = 0):
        self.script = list(script)
        self.requests: list[tuple[float, str, dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps connections alive, as servers do

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with rec.lock:
                    status, headers = rec.script.pop(0) if rec.script else (200, {})
                    rec.requests.append((time.monotonic(), self.path, dict(self.headers), body, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def records(self) -> list[dict]:
        """Every step, workflow and error record accepted on the native spans path, in order."""
        out = []
        for _, path, _, body, status in self.requests:
            if path == c.NATIVE_SPANS_PATH and status < 300:
                doc = orjson.loads(body)
                out += doc.get("steps", []) + doc.get("workflows", []) + doc.get("errors", [])
        return out

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    made = []

    def start(script=(), port: int = 0) -> Recorder:
        r = Recorder(script, port)
        made.append(r)
        return r

    yield start
    for r in made:
        r.stop()


@pytest.fixture
def remote_defaults(monkeypatch):
    """The SDK's settings as an app gets them: nothing set in the environment."""
    for name in ("FLOWSCOPE_SDK_QUEUE_SIZE", "FLOWSCOPE_SDK_MODE", "FLOWSCOPE_SDK_ENDPOINT", "FLOWSCOPE_CONFIG",
                 "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield
    sdk.shutdown()


def _steps(tracer: WorkflowTracer, n: int, workflow: str = "checkout") -> str:
    with tracer.workflow(workflow) as run:
        for _ in range(n):  # a tight loop: nothing between the steps
            with tracer.step("database", "postgres", "SELECT orders"):
                pass
    assert run.correlation_id is not None
    return run.correlation_id


def test_a_burst_of_20000_steps_with_the_default_settings_loses_nothing(make_exporter, serve, remote_defaults):
    ex = make_exporter(run_store=False)  # the metrics count every step; the run store is not what is tested
    srv = serve(ex)
    sink = sdk.configure(mode="remote", endpoint=srv.url)
    _steps(WorkflowTracer(service="shop"), 20_000)
    assert sdk.flush(WAIT_S)
    assert isinstance(sink, RemoteSink) and sink.dropped == 0 and sink.sent == 20_001
    labels = {"workflow": "checkout", "layer": "database", "component": "postgres", "operation": "SELECT orders",
              "status": "ok"}
    assert ex.store.value(c.STEP_DURATION_SECONDS + "_count", labels) == 20_000
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "checkout", "status": "ok"}) == 1
    assert ex.store.value(c.SPANS_RECEIVED_TOTAL, {"format": c.FORMAT_NATIVE}) == 20_001


def test_the_step_hot_path_sends_what_a_full_span_would(recorder):
    srv = recorder()
    sink = RemoteSink(srv.url, registry=None, batch_wait_s=5)  # one batch: flush sends it
    t = WorkflowTracer(sink, service="shop")
    try:
        with t.workflow("login") as run:
            with t.step("api", "auth", "check") as plain:  # the hot path: a tuple
                pass
            with t.step("cache", "redis", "GET", state={"hit": True}) as stateful:  # a Span
                pass
        assert sink.flush(WAIT_S)
    finally:
        sink.close()
    step, other, workflow = srv.records()
    assert (step["span_id"], other["span_id"]) == (plain.span_id, stateful.span_id)
    assert other["state"] == {"hit": True} and workflow["workflow_type"] == "login" and "layer" not in workflow
    # the same record as the step sent as a full Span
    as_span = Span(trace_id=step["trace_id"], span_id=plain.span_id, workflow="login", layer="api",
                   component="auth", operation="check", start_ns=round(step["started_at"] * 1e9),
                   end_ns=round(step["started_at"] * 1e9 + step["duration_ms"] * 1e6), status="ok",
                   parent_span_id=step["parent_span_id"], correlation_id=run.correlation_id, service="shop")
    expected = to_native(as_span)[1]
    assert step.keys() == expected.keys()
    assert {k: v for k, v in step.items() if k not in ("started_at", "duration_ms")} == {
        k: v for k, v in expected.items() if k not in ("started_at", "duration_ms")}
    assert step["parent_span_id"] == other["parent_span_id"]  # both children of the run
    assert step["correlation_id"] == workflow["correlation_id"] == run.correlation_id


def test_a_503_with_retry_after_is_honoured(recorder):
    srv = recorder([(503, {"Retry-After": "1"})])
    sink = RemoteSink(srv.url, registry=None, batch_wait_s=5)  # one batch: flush sends it
    try:
        _steps(WorkflowTracer(sink, service="shop"), 3)
        assert sink.flush(WAIT_S)
    finally:
        sink.close()
    (refused_at, _, _, first, _), (sent_at, _, _, again, _) = srv.requests
    assert again == first and len(srv.records()) == 4  # the same body, whole, once accepted
    # the policy's own first backoff is 0.5 s (+-20 %); Retry-After: 1 makes it at least a second
    assert sent_at - refused_at >= 0.95, f"the retry came {sent_at - refused_at:.2f} s after the 503"
    assert sink.sent == 4 and sink.dropped == 0


def test_flush_is_false_at_its_timeout_when_the_server_is_down_and_true_once_it_is_delivered(recorder, caplog):
    caplog.set_level(logging.ERROR, "flowscope.sdk")  # the retries' warnings are expected here
    port = free_port()  # nothing listens there yet
    sink = RemoteSink(f"http://127.0.0.1:{port}", registry=None, batch_wait_s=0.01)
    try:
        _steps(WorkflowTracer(sink, service="shop"), 5)
        started = time.monotonic()
        assert sink.flush(0.3) is False
        assert time.monotonic() - started < 5  # it returned at its timeout (generously): it did not hang
        assert sink.dropped == 0  # still queued, and retried
        srv = recorder(port=port)
        assert sink.flush(WAIT_S) is True
        assert len(srv.records()) == 6 and sink.sent == 6 and sink.dropped == 0
    finally:
        sink.close()


def test_the_public_flush(remote_defaults, recorder):
    sdk.shutdown()
    assert flowscope.flush(0.1) is True  # nothing configured: nothing to deliver
    srv = recorder()
    flowscope.configure(mode="remote", endpoint=srv.url)
    _steps(flowscope.WorkflowTracer(service="shop"), 2)
    assert flowscope.flush(WAIT_S) is True
    assert len(srv.records()) == 3


def test_a_body_past_max_body_bytes_is_split_and_all_of_it_delivered(recorder):
    srv = recorder()
    sink = RemoteSink(srv.url, registry=None, batch_wait_s=5, max_body_bytes=4096)
    try:
        _steps(WorkflowTracer(sink, service="shop"), 100)
        assert sink.flush(WAIT_S)
    finally:
        sink.close()
    bodies = [body for _, _, _, body, _ in srv.requests]
    assert len(bodies) > 1 and all(len(b) <= 4096 for b in bodies)
    assert len(srv.records()) == 101 and len({r["span_id"] for r in srv.records() if "span_id" in r}) == 100


def _closing_server(answers: int) -> tuple[socket.socket, list[bytes], threading.Thread]:
    """A raw HTTP/1.1 server that answers each request 200 (keep-alive implied), then closes the connection:
    what an idle-timeout does to a kept-alive connection between two batches."""
    lsock = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        for _ in range(answers):
            conn, _ = lsock.accept()
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                got.append(body)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the client's side closes too (or the timeout)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lsock, got, t


def test_a_kept_alive_connection_the_server_closed_is_reopened_without_a_retry(caplog):
    lsock, got, thread = _closing_server(2)
    post = DirectHttp("127.0.0.1", lsock.getsockname()[1], "", None, timeout_s=10)
    try:
        post("/api/v1/spans", b'{"steps": []}', "application/json")
        post("/api/v1/spans", b'{"steps": [1]}', "application/json")  # the first connection is closed by now
    finally:
        post.close()
        thread.join(10)
        lsock.close()
    assert got == [b'{"steps": []}', b'{"steps": [1]}']


def test_the_transport_is_direct_for_plain_http_and_requests_for_https_or_a_proxy(monkeypatch, recorder):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(transport_for("http://127.0.0.1:9464", None, 1.0), DirectHttp)
    assert isinstance(transport_for("https://flowscope.example:443", None, 1.0), RequestsHttp)
    proxy = recorder()  # a forward proxy sees the whole URL in the request line
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    post = transport_for("http://flowscope.invalid:9464/base/", "s3cret", 5.0)
    assert isinstance(post, RequestsHttp)
    try:
        post(c.NATIVE_SPANS_PATH, b'{"steps": []}', "application/json")
    finally:
        post.close()
    ((_, target, headers, body, _),) = proxy.requests
    assert target == "http://flowscope.invalid:9464/base" + c.NATIVE_SPANS_PATH
    assert headers["Authorization"] == "Bearer s3cret" and body == b'{"steps": []}'


def test_the_direct_transport_sends_the_token_and_says_what_the_server_refused(recorder):
    srv = recorder([(401, {})])
    post = transport_for(srv.url + "/", "s3cret", 5.0)
    try:
        with pytest.raises(SendError, match="HTTP 401") as refused:
            post(c.NATIVE_SPANS_PATH, b"{}", "application/json")
        assert refused.value.status == 401
        post(c.NATIVE_SPANS_PATH, b"{}", "application/json")
    finally:
        post.close()
    assert [h["Authorization"] for _, _, h, _, _ in srv.requests] == ["Bearer s3cret"] * 2


def test_the_step_path_never_waits_on_a_server_that_does_not_answer():
    """A server that accepts connections and never answers: the sender is stuck in a post, the app is not."""
    lsock = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody reads
    sink = RemoteSink(f"http://127.0.0.1:{lsock.getsockname()[1]}", registry=CollectorRegistry(),
                      queue_size=1_000, batch_size=10, batch_wait_s=5, timeout_s=30)  # sent at 10 queued
    try:
        t = WorkflowTracer(sink, service="shop")
        _steps(t, 10)  # a full batch: the sender takes it and waits for an answer
        assert sink.flush(0.2) is False  # the sender is stuck in its post...
        _steps(t, 5_000)  # ...and the app's steps go on: queued up to the bound, then dropped and counted
        # 10 steps in the post; of the 5,002 after them (a root, 5,000 steps, a root) 1,000 wait, the rest dropped
        assert (sink.queued(), sink.dropped) == (1_000, 4_002)
    finally:
        lsock.close()  # the connection waiting in its backlog is reset: the stuck post ends
        sink.close(0.1)


def test_a_remote_run_is_one_tree_on_the_server(ex, serve):
    srv = serve(ex)
    sink = RemoteSink(srv.url, registry=None, batch_wait_s=5)
    t = WorkflowTracer(sink, service="shop")
    try:
        # the outer step takes the hot path (a tuple), the inner one, with state, is a Span
        with (t.workflow("checkout") as run, t.step("api", "orders", "POST /orders"),
              t.step("database", "postgres", "INSERT orders", state={"rows": 1})):
            pass
        assert sink.flush(WAIT_S)
    finally:
        sink.close()
    assert ex.pipeline.recorder is not None and ex.pipeline.recorder.flush(WAIT_S)
    detail = ex.runs.get_run(run.correlation_id)
    assert detail is not None
    by_op = {s.operation: s for s in detail.spans}
    assert set(by_op) == {"checkout", "POST /orders", "INSERT orders"}
    assert by_op["POST /orders"].parent_span_id == by_op["checkout"].span_id
    assert by_op["INSERT orders"].parent_span_id == by_op["POST /orders"].span_id
