"""Forwarding what /v1/traces accepts to other OTLP/HTTP receivers (exporter/forward.py, issue 15 point 1).

The receiver here is a real HTTP server on 127.0.0.1 that decodes with opentelemetry-proto, as any OTLP receiver
does; the sender in the end-to-end test is the real OpenTelemetry SDK's OTLP/HTTP exporter. Outages are real: the
receiver is stopped (connection refused) and comes back on the same port, or answers 503.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from backend.app import create_app
from exporter import conventions as c
from exporter.config import load_config
from exporter.errors import ConfigError
from exporter.forward import (
    Forwarders,
    ForwardOptions,
    ForwardTarget,
    parse_destinations,
    parse_headers,
    parse_url,
    resolve_destinations,
)
from exporter.metrics import MetricStore
from exporter.retry import RetryPolicy
from exporter.runtime import Exporter
from tests.conftest import wait_until
from tests.otlp_data import request, sdk_provider, span, to_json

SECRET = "sk-FwdSecret-93c1f0"
FILE_SECRET = "file-Secret-7d2e44"
PB = "application/x-protobuf"
#: retries in milliseconds, so an outage costs a test a fraction of a second
FAST = RetryPolicy(retry_statuses=frozenset({408, 429, *range(500, 600)}), initial_backoff_s=0.02,
                   max_backoff_s=0.1, deadline_s=30)


class OtlpReceiver:
    """An OTLP/HTTP traces receiver: decodes each request with opentelemetry-proto (gzip or not, protobuf or JSON)
    and keeps every span's (trace id, span id, name). ``script`` holds statuses (with headers) to answer before it
    answers 200; ``port`` brings the same receiver back after :meth:`stop`."""

    def __init__(self, port: int = 0):
        self.script: list[tuple[int, dict[str, str]]] = []
        self.spans: list[tuple[str, str, str]] = []
        self.bodies: list[bytes] = []  # decompressed, as accepted
        self.seen: list[dict[str, str]] = []  # the headers (lower-case names) of every request, answered 200 or not
        self.errors: list[str] = []
        self.lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: one request per connection, so stop() ends them all
            def log_message(self, *a):
                pass

            def do_POST(self):
                rx._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _reply(self, h, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        with self.lock:
            self.seen.append({k.lower(): v for k, v in h.headers.items()})
            status, headers = self.script.pop(0) if self.script else (200, {})
        if status != 200:
            self._reply(h, status, b"scripted failure", headers)
            return
        try:
            assert h.path == c.OTLP_TRACES_PATH, h.path
            body = gzip.decompress(raw) if h.headers.get("Content-Encoding") == "gzip" else raw
            ctype = h.headers.get("Content-Type")
            if ctype == PB:
                req = ExportTraceServiceRequest.FromString(body)
                got = [(s.trace_id.hex(), s.span_id.hex(), s.name) for rs in req.resource_spans
                       for ss in rs.scope_spans for s in ss.spans]
            elif ctype == "application/json":
                doc = json.loads(body)
                got = [(s["traceId"], s["spanId"], s["name"]) for rs in doc["resourceSpans"]
                       for ss in rs["scopeSpans"] for s in ss["spans"]]
            else:
                raise AssertionError(f"Content-Type {ctype}")
        except Exception as e:  # noqa: BLE001 - what a real receiver answers: 400
            self.errors.append(f"{type(e).__name__}: {e}")
            self._reply(h, 400, str(e).encode())
            return
        with self.lock:
            self.spans += got
            self.bodies.append(body)
        self._reply(h, 200, ExportTraceServiceResponse().SerializeToString(), {"Content-Type": PB})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made: list[OtlpReceiver] = []

    def start(port: int = 0) -> OtlpReceiver:
        rx = OtlpReceiver(port)
        made.append(rx)
        return rx

    yield start
    for rx in made:
        rx.stop()


def body_of(names: list[str]) -> tuple[bytes, list[tuple[str, str, str]]]:
    """A protobuf ExportTraceServiceRequest with one span per name, and its (trace id, span id, name) triples."""
    spans = [span(n) for n in names]
    return request(spans).SerializeToString(), [(s["trace_id"], s["span_id"], s["name"]) for s in spans]


def forwarders(*targets: ForwardTarget, store: MetricStore | None = None, **options) -> Forwarders:
    options.setdefault("retry", FAST)
    return Forwarders(targets, store or MetricStore(), ForwardOptions(**options))


def value(store: MetricStore, name: str, **labels: str) -> float:
    return store.value(name, labels) or 0.0


def exporter_with(tmp_path, targets, **options) -> Exporter:
    """An exporter whose forwarders are ``targets`` with ``options`` (fast retries): passed in before it starts."""
    ex = Exporter(load_config({"database_url": f"sqlite:///{tmp_path}/fw.db", "store_writer": "thread"}, environ={}))
    options.setdefault("retry", FAST)
    ex.forwarders = Forwarders(targets, ex.store, ForwardOptions(**options))
    return ex.start()


# -- end to end -----------------------------------------------------------------------------------------------


def test_sdk_spans_reach_the_destination_unchanged_with_its_headers(tmp_path, receivers, serve):
    rx = receivers()
    ex = exporter_with(tmp_path, [ForwardTarget("rx", rx.url + c.OTLP_TRACES_PATH, (("api-key", SECRET),))])
    try:
        srv = serve(ex)
        provider = sdk_provider(srv, {"service.name": "shop"})
        tracer = provider.get_tracer("test")
        sent = []
        with tracer.start_as_current_span("checkout") as root:
            sent.append(root)
            with tracer.start_as_current_span("SELECT orders") as child:
                sent.append(child)
        provider.shutdown()
        want = sorted((format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"), s.name) for s in sent)
        assert sorted(wait_until(lambda: len(rx.spans) >= 2 and rx.spans, what="forwarded spans")) == want
        assert value(ex.store, c.SPANS_RECEIVED_TOTAL, format=c.FORMAT_OTLP_PROTOBUF) == 2  # Flowscope kept them too
        h = rx.seen[0]
        assert (h["api-key"], h["content-encoding"], h["content-type"]) == (SECRET, "gzip", PB)
        assert not rx.errors

        # OTLP/JSON goes on as JSON, byte for byte
        doc = orjson.dumps(to_json(request([span("login")])))
        r = requests.post(srv.url + c.OTLP_TRACES_PATH, data=doc, headers={"Content-Type": "application/json"},
                          timeout=10)
        assert r.status_code == 200
        assert ex.forwarders.flush(10)
        assert rx.bodies[-1] == doc and rx.seen[-1]["content-type"] == "application/json"
        requests_made = len(rx.seen)  # the SDK's two requests may have gone on as one (queued together)

        # a body Flowscope refuses (400) is not forwarded
        assert requests.post(srv.url + c.OTLP_TRACES_PATH, data=b"\xff\xff", headers={"Content-Type": PB},
                             timeout=10).status_code == 400
        assert ex.forwarders.flush(10)
        assert len(rx.seen) == requests_made
        assert value(ex.store, c.FORWARD_SENT_TOTAL, destination="rx") == 3
        assert value(ex.store, c.FORWARD_REQUESTS_TOTAL, destination="rx", outcome="ok") == requests_made
    finally:
        ex.close()


def test_an_outage_loses_nothing_within_the_queue_bound_and_counts_what_is_past_it(receivers):
    rx = receivers()
    port = rx.port
    store = MetricStore()
    body, _ = body_of(["warm-00"])
    size = len(body)
    fw = forwarders(ForwardTarget("rx", rx.url + c.OTLP_TRACES_PATH), store=store, queue_bytes=3 * size).start()
    try:
        fw.forward(c.FORMAT_OTLP_PROTOBUF, body)
        assert fw.flush(10) and len(rx.spans) == 1

        rx.stop()  # the receiver goes away: connections are refused
        first, want = body_of(["span-00"])
        fw.forward(c.FORMAT_OTLP_PROTOBUF, first)
        # the thread holds the first body and retries it; what comes next waits in the queue, up to its bound
        # (three bodies, the one being retried included)
        wait_until(lambda: value(store, c.FORWARD_REQUESTS_TOTAL, destination="rx", outcome="connection") >= 1,
                   what="a refused attempt")
        for i in range(1, 6):
            b, triples = body_of([f"span-{i:02d}"])
            assert len(b) == size
            fw.forward(c.FORMAT_OTLP_PROTOBUF, b)
            if i <= 2:
                want += triples
        assert value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason="queue_full") == 3
        assert value(store, c.FORWARD_QUEUE_BYTES, destination="rx") == 3 * size
        wait_until(lambda: fw.health()["destinations"]["rx"]["state"] == "down", what="the destination down")

        back = receivers(port)  # back on the same port, answering 503 twice first
        back.script = [(503, {"Retry-After": "0"}), (503, {})]
        assert fw.flush(20)
        assert sorted(back.spans) == sorted(want) and not back.errors
        assert value(store, c.FORWARD_REQUESTS_TOTAL, destination="rx", outcome="http_503") == 2
        assert value(store, c.FORWARD_SENT_TOTAL, destination="rx") == 4
        assert value(store, c.FORWARD_QUEUE_BYTES, destination="rx") == 0
        dropped = {r: value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason=r)
                   for r in ("queue_full", "rejected", "retries_exhausted", "shutdown")}
        assert dropped == {"queue_full": 3, "rejected": 0, "retries_exhausted": 0, "shutdown": 0}
        assert fw.health()["destinations"]["rx"]["state"] == "degraded"  # a drop within the last minute
    finally:
        fw.close(5)


def test_a_hung_destination_delays_neither_ingest_nor_the_other_destination(tmp_path, receivers):
    good = receivers()
    hung = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    ex = exporter_with(tmp_path, [ForwardTarget("hung", hung_url + c.OTLP_TRACES_PATH),
                                  ForwardTarget("good", good.url + c.OTLP_TRACES_PATH)],
                       read_timeout_s=60.0)
    try:
        client = create_app(ex).test_client()
        want = []
        for i in range(20):
            b, triples = body_of([f"step-{i}"])
            want += triples
            assert client.post(c.OTLP_TRACES_PATH, data=b, content_type=PB).status_code == 200
        # everything reaches the good destination while the hung one's first request waits out its 60 s read
        assert ex.forwarders["good"].flush(10)
        assert sorted(good.spans) == sorted(want)
        assert value(ex.store, c.FORWARD_SENT_TOTAL, destination="hung") == 0
        attempts = ex.store.get(c.FORWARD_REQUESTS_TOTAL).series
        assert not any(v.value for k, v in attempts.items() if k[0] == "hung")  # its first request is still waiting
        health = client.get(c.HEALTH_PATH).get_json()["components"]["forward"]
        assert health["destinations"]["good"]["state"] == "ok"
        assert health["destinations"]["hung"]["sent"] == 0
    finally:
        hung.close()  # the waiting request is reset: the hung forwarder ends at close, not after 60 s
        ex.forwarders["hung"].close(0.5)
        ex.close(5)


def test_a_destination_given_up_on_stays_down_in_health_until_a_request_is_accepted(receivers):
    """Retries exhausted against a dead destination: health says down and never reached (no last_ok_at), not ok or
    degraded as if the batch that failed had gone out; once it accepts a request, last_ok_at says when."""
    rx = receivers()
    port = rx.port
    rx.stop()
    store = MetricStore()
    short = RetryPolicy(retry_statuses=FAST.retry_statuses, initial_backoff_s=0.02, max_backoff_s=0.05, deadline_s=0.3)
    fw = forwarders(ForwardTarget("rx", rx.url + c.OTLP_TRACES_PATH), store=store, retry=short).start()
    try:
        fw.forward(c.FORMAT_OTLP_PROTOBUF, body_of(["lost"])[0])
        assert fw.flush(10)
        assert value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason="retries_exhausted") == 1
        h = fw.health()["destinations"]["rx"]
        assert (h["state"], h["last_ok_at"], h["sent"]) == ("down", None, 0), h
        back = receivers(port)
        fw.forward(c.FORMAT_OTLP_PROTOBUF, body_of(["kept"])[0])
        assert fw.flush(10) and len(back.spans) == 1
        h = fw.health()["destinations"]["rx"]
        assert h["state"] == "degraded" and h["last_ok_at"] is not None  # degraded: the drop within the minute
    finally:
        fw.close(5)


def test_other_4xx_and_redirects_are_dropped_at_once_and_408_429_are_retried(receivers):
    rx = receivers()
    store = MetricStore()
    fw = forwarders(ForwardTarget("rx", rx.url + c.OTLP_TRACES_PATH), store=store).start()
    try:
        rx.script = [(401, {})]
        refused, _ = body_of(["refused"])
        fw.forward(c.FORMAT_OTLP_PROTOBUF, refused)
        assert fw.flush(10)
        assert len(rx.seen) == 1 and not rx.spans
        assert value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason="rejected") == 1
        assert fw.health()["destinations"]["rx"]["last_error"].endswith("answered HTTP 401: scripted failure")

        rx.script = [(408, {}), (429, {"Retry-After": "0"})]
        kept, want = body_of(["kept"])
        fw.forward(c.FORMAT_OTLP_PROTOBUF, kept)
        assert fw.flush(10)
        assert rx.spans == want and len(rx.seen) == 4

        elsewhere = receivers()  # a redirect is not followed: the headers never go where Location points
        rx.script = [(307, {"Location": elsewhere.url + c.OTLP_TRACES_PATH})]
        fw.forward(c.FORMAT_OTLP_PROTOBUF, body_of(["moved"])[0])
        assert fw.flush(10)
        assert not elsewhere.seen and len(rx.seen) == 5
        assert value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason="rejected") == 2
    finally:
        fw.close(5)


def test_retry_after_is_honoured(receivers):
    """A 503 asking for 60 s, under a 1 s retry deadline: the wait it asks for would pass the deadline, so the body is
    given up on after one attempt (with the 20 ms backoff alone, the second attempt would have been answered 200)."""
    rx = receivers()
    store = MetricStore()
    policy = RetryPolicy(retry_statuses=FAST.retry_statuses, initial_backoff_s=0.02, deadline_s=1.0)
    fw = forwarders(ForwardTarget("rx", rx.url + c.OTLP_TRACES_PATH), store=store, retry=policy).start()
    try:
        rx.script = [(503, {"Retry-After": "60"})]
        fw.forward(c.FORMAT_OTLP_PROTOBUF, body_of(["later"])[0])
        assert fw.flush(10)
        assert len(rx.seen) == 1 and not rx.spans
        assert value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason="retries_exhausted") == 1
    finally:
        fw.close(5)


def test_protobuf_bodies_queued_together_go_as_one_request_and_json_alone(receivers):
    rx = receivers()
    store = MetricStore()
    fw = forwarders(ForwardTarget("rx", rx.url + c.OTLP_TRACES_PATH), store=store, gzip=False)
    want = []
    for i in range(5):  # queued before the thread starts: one batch
        b, triples = body_of([f"a-{i}", f"b-{i}"])
        want += triples
        fw.forward(c.FORMAT_OTLP_PROTOBUF, b)
    doc = orjson.dumps(to_json(request([span("json")])))
    fw.forward(c.FORMAT_OTLP_JSON, doc)
    fw.start()
    try:
        assert fw.flush(10)
        assert [h["content-type"] for h in rx.seen] == [PB, "application/json"]
        assert "content-encoding" not in rx.seen[0]
        assert sorted(rx.spans[:10]) == sorted(want) and rx.bodies[1] == doc
        assert value(store, c.FORWARD_SENT_TOTAL, destination="rx") == 6
    finally:
        fw.close(5)


def test_close_counts_what_could_not_be_sent(receivers):
    rx = receivers()
    rx.stop()  # never comes back
    store = MetricStore()
    fw = forwarders(ForwardTarget("rx", rx.url + c.OTLP_TRACES_PATH), store=store).start()
    for i in range(3):
        fw.forward(c.FORMAT_OTLP_PROTOBUF, body_of([f"x-{i}"])[0])
    assert not fw.close(0.3)
    assert value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason="shutdown") == 3
    fw.forward(c.FORMAT_OTLP_PROTOBUF, body_of(["late"])[0])  # after close: counted, never raises
    assert value(store, c.FORWARD_DROPPED_TOTAL, destination="rx", reason="shutdown") == 4


# -- configuration and secrets --------------------------------------------------------------------------------


def test_destinations_come_from_the_environment_and_a_headers_file(tmp_path):
    hfile = tmp_path / "nr.headers"
    hfile.write_text(f"# New Relic\napi-key={FILE_SECRET}\n")
    cfg = load_config(environ={
        "FLOWSCOPE_FORWARD_DESTINATIONS": "datadog, newrelic",
        "FLOWSCOPE_FORWARD_DATADOG_URL": "http://127.0.0.1:4318",
        "FLOWSCOPE_FORWARD_DATADOG_HEADERS": f"dd-api-key={SECRET},x-note=a%20b",
        "FLOWSCOPE_FORWARD_NEWRELIC_URL": "https://otlp.nr-data.net:4318/v1/traces",
        "FLOWSCOPE_FORWARD_NEWRELIC_HEADERS_FILE": str(hfile)})
    assert cfg.forward_destinations == (
        ForwardTarget("datadog", "http://127.0.0.1:4318/v1/traces", (("dd-api-key", SECRET), ("x-note", "a b"))),
        ForwardTarget("newrelic", "https://otlp.nr-data.net:4318/v1/traces", (("api-key", FILE_SECRET),)))
    assert cfg.replace(port=1).forward_destinations == cfg.forward_destinations
    assert parse_url("https://otlp-gateway.grafana.net/otlp") == "https://otlp-gateway.grafana.net/otlp/v1/traces"


def test_the_config_file_names_destinations_but_holds_no_header_values(tmp_path):
    f = tmp_path / "flowscope.yml"
    f.write_text("forward_destinations:\n  collector:\n    url: http://127.0.0.1:4318\n")
    cfg = load_config(environ={}, file=str(f))
    assert cfg.forward_destinations == (ForwardTarget("collector", "http://127.0.0.1:4318/v1/traces"),)
    f.write_text("forward_destinations:\n  collector:\n    url: http://127.0.0.1:4318\n    headers: {a: b}\n")
    with pytest.raises(ConfigError, match="unknown key 'headers'"):
        load_config(environ={}, file=str(f))


@pytest.mark.parametrize("env,text", [
    ({"FLOWSCOPE_FORWARD_DD_URL": "127.0.0.1:4318"}, "environment FLOWSCOPE_FORWARD_DD_URL: invalid URL for "
                                                     "forward destination 'dd': must be an http:// or https:// URL"),
    ({"FLOWSCOPE_FORWARD_DD_URL": "http://127.0.0.1:99999"}, "FLOWSCOPE_FORWARD_DD_URL: invalid URL"),
    ({"FLOWSCOPE_FORWARD_DD_URL": "http:///v1/traces"}, "FLOWSCOPE_FORWARD_DD_URL: .* has no host"),
    ({"FLOWSCOPE_FORWARD_DD_URL": "http://a b"}, "FLOWSCOPE_FORWARD_DD_URL: .* spaces"),
    ({}, "forward destination 'dd' has no URL: set FLOWSCOPE_FORWARD_DD_URL"),
    ({"FLOWSCOPE_FORWARD_DD_HEADERS": f"api-key {SECRET}"}, "FLOWSCOPE_FORWARD_DD_HEADERS: header 1 has no '='"),
    ({"FLOWSCOPE_FORWARD_DD_HEADERS": f"ok=1,bad name={SECRET}"}, "HEADERS: header 2: 'bad name' is not a valid"),
    ({"FLOWSCOPE_FORWARD_DD_HEADERS": f"api-key={SECRET}%0d%0aX-Evil: 1"}, "HEADERS: header 1 \\(api-key\\): value "
                                                                          "has control characters"),
    ({"FLOWSCOPE_FORWARD_DD_HEADERS": "content-type=text/plain"}, "content-type is set by the forwarder"),
    ({"FLOWSCOPE_FORWARD_DD_HEADERS": "api-key="}, "header 1 \\(api-key\\) has an empty value"),
    ({"FLOWSCOPE_FORWARD_DD_HEADERS_FILE": "/nonexistent/h"}, "FLOWSCOPE_FORWARD_DD_HEADERS_FILE: cannot read"),
])
def test_a_malformed_destination_is_a_configuration_error_naming_the_setting(env, text):
    environ = {"FLOWSCOPE_FORWARD_DESTINATIONS": "dd", "FLOWSCOPE_FORWARD_DD_URL": "http://127.0.0.1:4318", **env}
    if not env:
        del environ["FLOWSCOPE_FORWARD_DD_URL"]
    with pytest.raises(ConfigError, match=text) as e:
        load_config(environ=environ)
    assert SECRET not in str(e.value) and "\n" not in str(e.value)


def test_flowscope_config_masks_the_headers_and_a_bad_one_exits_2(cli, monkeypatch, tmp_path):
    hfile = tmp_path / "h"
    hfile.write_text(f"x-honeycomb-team={FILE_SECRET}\n")
    monkeypatch.setenv("FLOWSCOPE_FORWARD_DESTINATIONS", "honeycomb")
    monkeypatch.setenv("FLOWSCOPE_FORWARD_HONEYCOMB_URL", "https://api.honeycomb.io")
    monkeypatch.setenv("FLOWSCOPE_FORWARD_HONEYCOMB_HEADERS", f"x-honeycomb-dataset=shop,x-key={SECRET}")
    monkeypatch.setenv("FLOWSCOPE_FORWARD_HONEYCOMB_HEADERS_FILE", str(hfile))
    r = cli("config")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)["forward_destinations"]
    assert shown == [{"name": "honeycomb", "url": "https://api.honeycomb.io/v1/traces",
                      "headers": {"x-honeycomb-team": "***", "x-honeycomb-dataset": "***", "x-key": "***"}}]
    assert SECRET not in r.stdout + r.stderr and FILE_SECRET not in r.stdout + r.stderr

    monkeypatch.setenv("FLOWSCOPE_FORWARD_HONEYCOMB_URL", "ftp://api.honeycomb.io")
    r = cli("config")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "FLOWSCOPE_FORWARD_HONEYCOMB_URL" in r.stderr


def test_secrets_stay_out_of_logs_health_and_metrics(tmp_path, receivers, caplog):
    caplog.set_level(logging.DEBUG)  # urllib3's and requests' own debug lines included
    refusing, failing = receivers(), receivers()
    refusing.script = [(403, {})]
    failing.script = [(503, {})] * 3
    with_password = f"http://user:{FILE_SECRET}@127.0.0.1:{failing.port}{c.OTLP_TRACES_PATH}"
    ex = exporter_with(tmp_path, [ForwardTarget("refusing", refusing.url + c.OTLP_TRACES_PATH, (("api-key", SECRET),)),
                                  ForwardTarget("failing", with_password, (("x-api-key", SECRET),))])
    try:
        client = create_app(ex).test_client()
        assert client.post(c.OTLP_TRACES_PATH, data=body_of(["s"])[0], content_type=PB).status_code == 200
        assert ex.forwarders.flush(10)
        assert refusing.seen[0]["api-key"] == SECRET and failing.seen[-1]["x-api-key"] == SECRET
        assert len(failing.spans) == 1  # the fourth attempt
        outputs = [caplog.text, client.get(c.HEALTH_PATH).get_data(as_text=True),
                   client.get(c.METRICS_PATH).get_data(as_text=True), repr(ex.config), repr(ex.forwarders.forwarders)]
        for out in outputs:
            assert SECRET not in out and FILE_SECRET not in out
        assert "forward failing" in caplog.text and "HTTP 503" in caplog.text  # the retries were logged
    finally:
        ex.close(5)


# -- fuzz: every header and URL string either parses to something requests can send, or is one line naming it ----

TEXT = st.text(st.characters(codec="utf-8"), max_size=60)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(TEXT, st.lists(st.tuples(TEXT, TEXT), max_size=4).map(
    lambda kv: ",".join(f"{k}={v}" for k, v in kv))))
@example("a=%ZZ")
@example("a=%0a")
@example("a=%ff")
@example("=x")
@example("k=v,,k2=v2")
def test_fuzz_headers(text):
    environ = {"FLOWSCOPE_FORWARD_DD_URL": "http://127.0.0.1:1", "FLOWSCOPE_FORWARD_DD_HEADERS": text}
    try:
        (target,) = resolve_destinations(parse_destinations("dd"), environ)
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith("environment FLOWSCOPE_FORWARD_DD_HEADERS: ") and "\n" not in msg
        return
    prepared = requests.Request("POST", target.url, headers=dict(target.headers)).prepare()  # requests' own checks
    for k, v in target.headers:
        assert prepared.headers[k] == v and v == v.strip() and v


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.one_of(TEXT, TEXT.map(lambda s: "http://" + s), TEXT.map(lambda s: "https://127.0.0.1:" + s)))
@example("http://[::1")
@example("http://127.0.0.1:0")
@example("https://h/v1/traces#x")
def test_fuzz_urls(url):
    environ = {"FLOWSCOPE_FORWARD_DD_URL": url}
    try:
        (target,) = resolve_destinations(parse_destinations("dd"), environ)
    except ConfigError as e:
        msg = str(e)
        assert msg.startswith("environment FLOWSCOPE_FORWARD_DD_URL: invalid URL") and "\n" not in msg
        return
    assert target.url.startswith(("http://", "https://")) and target.url.endswith(c.OTLP_TRACES_PATH)
    requests.Request("POST", target.url).prepare()  # requests takes it


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.one_of(TEXT, st.lists(TEXT, max_size=4), st.dictionaries(TEXT, st.one_of(st.none(), TEXT), max_size=3)))
def test_fuzz_destination_names(value):
    try:
        specs = parse_destinations(value)
    except ValueError as e:
        assert "\n" not in str(e)
        return
    for s in specs:
        assert s.name.replace("_", "").isalnum() and s.name == s.name.lower()
    assert len({s.name for s in specs}) == len(specs)


def test_parse_headers_reads_the_otel_format():
    assert parse_headers("api-key=abc%20def, x-team=core\n# note\nX-Other=1") == (
        ("api-key", "abc def"), ("x-team", "core"), ("X-Other", "1"))
