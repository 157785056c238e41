"""Application logs in (issue 14): OTLP logs from a real OpenTelemetry SDK, native lines, a browser's events, Loki.

Lines are checked where a user would find them: in a sink the pipeline hands them to (a test sink, the Loki a
fake checks against Loki's API), and in ``flowscope_log_lines_received_total`` on /metrics. Bad input is a 4xx
naming the field; the fuzz tests at the end hold every input path to "never a 5xx, and every line a 200
counts as accepted reaches the sinks".
"""

from __future__ import annotations

import gzip
import json
import logging

import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.trace import NonRecordingSpan, set_span_in_context

from exporter import conventions as c
from exporter.decode import otlp_logs
from exporter.errors import DecodeError
from exporter.loki import LokiConfig, LokiPusher, encode_json, encode_protobuf, log_entry
from exporter.metrics import MetricStore
from exporter.model import LogLine
from exporter.retry import RetryPolicy
from exporter.validate import MAX_LABEL_CHARS, MAX_TIME_NS
from tests.fake_loki import FakeLoki
from tests.otlp_data import sdk_provider
from tests.test_fuzz_decoders import (
    HTTP,
    SETTINGS,
    any_values,
    assert_no_5xx_and_error_shape,
    byte_edits,
    hostile_text,
    ids,
    json_scalars,
    json_values,
    mutate_fields,
    or_valid,
    pb_text,
    pb_values,
)
from tests.test_fuzz_decoders import (
    encode_json as encode_hostile_json,
)

T0 = 1_795_000_000_000_000_000
JS = {"Content-Type": "application/json"}
PB = {"Content-Type": "application/x-protobuf"}
TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class LineSink:
    """A pipeline sink that keeps the log lines it is handed (what the run store and Loki are handed)."""

    def __init__(self):
        self.lines: list[LogLine] = []

    def spans(self, batch):
        pass

    def error(self, e):
        pass

    def profile(self, p):
        pass

    def logs(self, lines):
        self.lines.extend(lines)

    def flush(self, timeout_s=None):
        return True

    def close(self, timeout_s=None, wait=True):
        return True


@pytest.fixture
def sink(ex):
    s = LineSink()
    ex.pipeline.add_sink(s)
    return s


def received(ex, fmt: str) -> float:
    return ex.store.value(c.LOG_LINES_RECEIVED_TOTAL, {"format": fmt}) or 0


def otlp_json(*records, service="shop", scope="shop.payments") -> bytes:
    return orjson.dumps({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{"scope": {"name": scope}, "logRecords": list(records)}]}]})


# --- OTLP logs ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")  # the SDK's bridge, as apps use it
def test_a_real_opentelemetry_sdk_log_exporter_delivers_lines_with_their_trace_and_workflow(ex, serve, sink):
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    srv = serve(ex)
    traces = sdk_provider(srv, {"service.name": "shop"})
    with traces.get_tracer("t").start_as_current_span("POST /checkout",
                                                      attributes={"flowscope.workflow": "checkout"}) as root:
        pass  # exported as it ends: the server now knows this trace's workflow
    provider = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=srv.url + c.OTLP_LOGS_PATH)))
    log = logging.getLogger("shop.payments.otel")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    log.addHandler(handler)
    try:
        token = otel_context.attach(set_span_in_context(NonRecordingSpan(root.get_span_context())))
        try:
            log.warning("card declined for order %s", 7, extra={"order_id": 7, "correlation_id": "corr-7"})
            try:
                raise ValueError("gateway said no")
            except ValueError:
                log.exception("payment failed")
        finally:
            otel_context.detach(token)
        log.info("outside any trace")
    finally:
        log.removeHandler(handler)
        provider.shutdown()
        traces.shutdown()
    assert [(ln.level, ln.body) for ln in sink.lines] == [
        ("warn", "card declined for order 7"), ("error", "payment failed"), ("info", "outside any trace")]
    warn, err, plain = sink.lines
    trace_id = format(root.get_span_context().trace_id, "032x")
    assert (warn.service, warn.logger, warn.source, warn.severity_number) == ("shop", "shop.payments.otel", "otlp", 13)
    assert (warn.trace_id, warn.span_id) == (trace_id, format(root.get_span_context().span_id, "016x"))
    assert warn.workflow == err.workflow == "checkout"  # named from the trace's root span
    assert warn.correlation_id == "corr-7" and err.correlation_id == trace_id
    assert warn.attributes["order_id"] == 7
    assert "ValueError" in err.exception and "gateway said no" in err.exception and "Traceback" in err.exception
    assert plain.trace_id is None and plain.workflow is None
    assert received(ex, c.FORMAT_OTLP_PROTOBUF) == 3


def test_otlp_json_reads_the_logs_data_model(client, ex, sink):
    body = otlp_json(
        {"timeUnixNano": str(T0), "severityNumber": "SEVERITY_NUMBER_ERROR2", "severityText": "ERROR",
         "body": {"kvlistValue": {"values": [{"key": "event", "value": {"stringValue": "declined"}}]}},
         "traceId": TRACE.upper(), "spanId": SPAN,
         "attributes": [{"key": "flowscope.workflow", "value": {"stringValue": "checkout"}},
                        {"key": "exception.type", "value": {"stringValue": "CardError"}},
                        {"key": "exception.message", "value": {"stringValue": "declined"}},
                        {"key": "retries", "value": {"intValue": "3"}}]},
        {"observedTimeUnixNano": T0 + 5, "severityText": "Warning", "body": {"stringValue": "slow gateway"},
         "eventName": "payment.retry"})
    r = client.post(c.OTLP_LOGS_PATH, data=gzip.compress(body), headers={**JS, "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json == {}
    first, second = sink.lines
    assert (first.time_ns, first.level, first.severity_number) == (T0, "error", 18)
    assert orjson.loads(first.body) == {"event": "declined"}
    assert (first.trace_id, first.span_id, first.workflow, first.service, first.logger) == (
        TRACE, SPAN, "checkout", "shop", "shop.payments")
    assert first.exception == "CardError: declined" and first.attributes == {"retries": 3}
    assert (second.time_ns, second.level, second.severity_number) == (T0 + 5, "warn", 13)  # observed time, text
    assert second.attributes == {"event.name": "payment.retry"}
    assert received(ex, c.FORMAT_OTLP_JSON) == 2


def test_an_otlp_record_that_cant_be_kept_is_named_in_partial_success_and_the_rest_kept(client, sink):
    good = {"timeUnixNano": str(T0), "body": {"stringValue": "kept"}}
    r = client.post(c.OTLP_LOGS_PATH, data=otlp_json(good, {"traceId": "xyz", "body": {"stringValue": "bad"}}),
                    headers=JS)
    assert r.status_code == 200
    partial = r.json["partialSuccess"]
    assert partial["rejectedLogRecords"] == 1
    assert "resourceLogs[0].scopeLogs[0].logRecords[1].traceId" in partial["errorMessage"]
    assert [ln.body for ln in sink.lines] == ["kept"]
    req = ExportLogsServiceRequest()
    rec = req.resource_logs.add().scope_logs.add().log_records.add()
    rec.body.string_value, rec.time_unix_nano = "kept too", T0
    bad = req.resource_logs[0].scope_logs[0].log_records.add()
    bad.span_id = b"\x01\x02"
    r = client.post(c.OTLP_LOGS_PATH, data=req.SerializeToString(), headers=PB)
    resp = ExportLogsServiceResponse.FromString(r.data)
    assert r.status_code == 200 and resp.partial_success.rejected_log_records == 1
    assert "logRecords[1].spanId" in resp.partial_success.error_message
    assert [ln.body for ln in sink.lines] == ["kept", "kept too"]


@pytest.mark.parametrize(("body", "headers", "status", "field"), [
    (otlp_json({"severityNumber": [1]}), JS, 400, "$.resourceLogs[0].scopeLogs[0].logRecords[0].severityNumber"),
    (b'{"resourceLogs": {"a": 1}}', JS, 400, "$.resourceLogs"),
    (b"{", JS, 400, "body"),
    (b"\xff\x00not protobuf", PB, 400, "body"),
    (otlp_json({"traceId": "00" * 17}), JS, 400, "resourceLogs[0].scopeLogs[0].logRecords[0].traceId"),
    (otlp_json({"timeUnixNano": "-5"}), JS, 400, "resourceLogs[0].scopeLogs[0].logRecords[0].timeUnixNano"),
    (b"{}", {"Content-Type": "text/csv"}, 415, "Content-Type"),
])
def test_a_malformed_otlp_log_request_is_a_4xx_naming_the_field_and_keeps_nothing(client, sink, body, headers,
                                                                                  status, field):
    r = client.post(c.OTLP_LOGS_PATH, data=body, headers=headers)
    assert r.status_code == status, r.data
    assert r.json["error"]["field"] == field
    assert sink.lines == []


def test_log_ingest_honours_the_token_the_size_limit_and_the_role(make_exporter):
    from backend.app import create_app

    ex = make_exporter(ingest_token="s3cret", max_body_bytes=2000)
    client = create_app(ex).test_client()
    body = otlp_json({"body": {"stringValue": "x"}})
    assert client.post(c.OTLP_LOGS_PATH, data=body, headers=JS).status_code == 401
    assert client.post(c.LOGS_PATH, json={"lines": []}).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post(c.OTLP_LOGS_PATH, data=body, headers={**JS, **auth}).status_code == 200
    big = otlp_json({"body": {"stringValue": "x" * 3000}})
    r = client.post(c.OTLP_LOGS_PATH, data=big, headers={**JS, **auth})
    assert r.status_code == 413 and r.json["error"]["code"] == "too_large"
    backend = create_app(make_exporter(role=c.ROLE_BACKEND)).test_client()
    for path in (c.OTLP_LOGS_PATH, c.LOGS_PATH, c.BROWSER_LOGS_PATH):
        r = backend.post(path, data=body, headers=JS)
        assert r.status_code == 404 and r.json["error"]["code"] == "wrong_role", path


# --- native lines -------------------------------------------------------------------------------------------


def test_native_lines_are_accepted_and_each_bad_one_named(client, ex, sink):
    lines = [{"time_ns": T0, "level": "error", "body": "card declined", "logger": "shop.payments", "service": "shop",
              "correlation_id": "c-1", "trace_id": TRACE, "span_id": SPAN, "workflow": "checkout",
              "attributes": {"order_id": 7}, "exception": "Traceback ..."},
             {"time": "2026-11-23T10:00:00Z", "body": "plain", "severity_number": 14},
             {"time_ns": T0, "body": "x", "level": "loud"},
             {"time_ns": T0, "body": "x", "trace_id": "nothex"}]
    r = client.post(c.LOGS_PATH, json={"lines": lines})
    assert r.status_code == 200
    assert (r.json["accepted"], r.json["rejected"]) == (2, 2)
    assert [e["field"] for e in r.json["errors"]] == ["lines[2].level", "lines[3].trace_id"]
    first, second = sink.lines
    assert first == LogLine(time_ns=T0, level="error", body="card declined", service="shop", severity_number=17,
                            logger="shop.payments", workflow="checkout", correlation_id="c-1", trace_id=TRACE,
                            span_id=SPAN, attributes={"order_id": 7}, exception="Traceback ...", source="app")
    assert (second.level, second.severity_number, second.service) == ("warn", 14, "unknown_service")
    assert received(ex, c.FORMAT_NATIVE) == 2


def test_refused_lines_are_counted_by_reason_whether_or_not_the_rest_is_kept(client, ex, sink):
    def refused(reason: str) -> float:
        return ex.store.value(c.LOG_LINES_REJECTED_TOTAL, {c.L_FORMAT: c.FORMAT_NATIVE, c.L_REASON: reason})

    good, bad = {"time_ns": T0, "body": "ok"}, {"time_ns": T0, "body": "x", "level": "loud"}
    r = client.post(c.LOGS_PATH, json={"lines": [good, bad, bad]})
    assert r.status_code == 200 and r.json["accepted"] == 1 and len(sink.lines) == 1
    reason = r.json["errors"][0]["reason"]
    assert refused(reason) == 2
    r = client.post(c.LOGS_PATH, json={"lines": [bad]})  # none valid: a 400, nothing kept, the line still counted
    assert r.status_code == 400 and len(sink.lines) == 1 and refused(reason) == 3


def test_a_lines_workflow_is_a_name_like_a_spans_with_its_secrets_redacted(client, sink):
    r = client.post(c.LOGS_PATH, json={"lines": [{"time_ns": T0, "body": "x", "workflow": "GET /login?token=s3cr3t"}]})
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert sink.lines[0].workflow == "GET /login?token=[REDACTED]"  # the Loki label and the stored name alike


@pytest.mark.parametrize(("doc", "field"), [
    ({"lines": [{"time_ns": T0}]}, "lines[0].body"),
    ({"lines": [{"body": "no time"}]}, "lines[0].time_ns"),
    ({"lines": [{"body": "x", "time": 1e-7}]}, "lines[0].time"),  # 0 ns once in whole microseconds: the epoch
    ({"lines": [{"body": "x", "time": 0}]}, "lines[0].time"),
    ({"lines": [{"body": "x", "time_ns": T0, "colour": "red"}]}, "lines[0].colour"),
    ({"lines": "x"}, "lines"),
    ({"lines": [], "steps": []}, "steps"),
])
def test_a_native_log_request_with_no_valid_line_is_a_400_naming_the_field(client, sink, doc, field):
    r = client.post(c.LOGS_PATH, json=doc)
    assert r.status_code == 400 and r.json["error"]["field"] == field
    assert sink.lines == []


# --- the browser --------------------------------------------------------------------------------------------

SHOP = "https://shop.example.com"


def test_browser_events_from_an_allowed_origin_with_cors(make_exporter):
    from backend.app import create_app

    ex = make_exporter(browser_origins=SHOP, ingest_token="s3cret")
    sink = LineSink()
    ex.pipeline.add_sink(sink)
    client = create_app(ex).test_client()
    pre = client.options(c.BROWSER_LOGS_PATH, headers={"Origin": SHOP, "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == SHOP
    assert pre.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "content-type" in pre.headers["Access-Control-Allow-Headers"].lower()
    doc = {"service": "web-shop", "correlation_id": "c-9", "page": f"{SHOP}/cart", "session_id": "s-1",
           "events": [{"type": "error", "message": "TypeError: x is undefined", "stack": "at pay (app.js:10)",
                       "time": 1795000000123},
                      {"type": "action", "message": "click", "target": "button#pay"},
                      {"type": "console", "level": "warn", "message": "slow image"},
                      {"type": "telepathy", "message": "?"}]}
    # no token: a page can't keep one; its Origin is what is checked
    r = client.post(c.BROWSER_LOGS_PATH, json=doc, headers={"Origin": SHOP, "User-Agent": "Firefox/140"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == SHOP
    assert (r.json["accepted"], r.json["rejected"]) == (3, 1) and r.json["errors"][0]["field"] == "events[3].type"
    err, action, console = sink.lines
    assert (err.level, err.time_ns, err.exception, err.logger) == ("error", 1795000000123000000, "at pay (app.js:10)",
                                                                   "browser.error")
    assert {ln.source for ln in sink.lines} == {"browser"} and {ln.service for ln in sink.lines} == {"web-shop"}
    assert {ln.correlation_id for ln in sink.lines} == {"c-9"}
    assert err.attributes == {"browser.session_id": "s-1", "browser.page": f"{SHOP}/cart",
                              "user_agent.original": "Firefox/140"}
    assert (action.level, action.attributes["browser.target"]) == ("info", "button#pay")
    assert console.level == "warn"
    assert received(ex, c.FORMAT_BROWSER) == 3
    # navigator.sendBeacon: text/plain JSON, no preflight
    beacon = client.post(c.BROWSER_LOGS_PATH, data=orjson.dumps({"events": [{"message": "bye"}]}),
                         headers={"Origin": SHOP, "Content-Type": "text/plain;charset=UTF-8"})
    assert beacon.status_code == 200 and sink.lines[-1].body == "bye"
    # not a browser (no Origin): the ingest token, as on every other ingest path
    assert client.post(c.BROWSER_LOGS_PATH, json=doc).status_code == 401


def test_browser_origins_not_allowed_a_wildcard_without_credentials_and_the_size_cap(make_exporter):
    from backend.app import create_app

    closed = create_app(make_exporter()).test_client()
    for method in (closed.options, closed.post):
        r = method(c.BROWSER_LOGS_PATH, json={"events": []}, headers={"Origin": SHOP})
        assert r.status_code == 403 and r.json["error"]["field"] == "Origin"
        assert "Access-Control-Allow-Origin" not in r.headers
    other = create_app(make_exporter(browser_origins=SHOP)).test_client()
    r = other.post(c.BROWSER_LOGS_PATH, json={"events": []}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    anyone = create_app(make_exporter(browser_origins="*", browser_max_body_bytes=1000)).test_client()
    r = anyone.options(c.BROWSER_LOGS_PATH, headers={"Origin": "https://a.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "*" and "Access-Control-Allow-Credentials" not in r.headers
    r = anyone.post(c.BROWSER_LOGS_PATH, json={"events": [{"message": "x" * 2000}]},
                    headers={"Origin": "https://a.example"})
    assert r.status_code == 413 and r.headers["Access-Control-Allow-Origin"] == "*"  # the page can read why
    r = other.post(c.BROWSER_LOGS_PATH, json={"events": [{"message": "m"}] * (otlp_logs.MAX_BROWSER_EVENTS + 1)},
                   headers={"Origin": SHOP})
    assert r.status_code == 400 and r.json["error"]["field"] == "events"
    assert r.headers["Access-Control-Allow-Origin"] == SHOP


def test_browser_origins_setting_refuses_a_wildcard_mixed_with_origins_and_paths():
    from exporter.config import load_config
    from exporter.errors import ConfigError

    assert load_config({"browser_origins": "https://a.example/, http://127.0.0.1:8000"},
                       environ={}).browser_origins == ("https://a.example", "http://127.0.0.1:8000")
    for bad in ("*,https://a.example", "a.example", "https://a.example/app"):
        with pytest.raises(ConfigError, match="browser_origins"):
            load_config({"browser_origins": bad}, environ={})


# --- end to end: the store --------------------------------------------------------------------------------


def test_a_line_posted_to_each_endpoint_is_found_in_the_store(make_exporter, database_url):
    from backend.app import create_app
    from exporter.sdk.logging import LogHandler
    from exporter.sdk.sinks import InProcessSink

    ex = make_exporter(browser_origins=SHOP, database_url=database_url)
    client = create_app(ex).test_client()
    cid = {"key": "correlation_id", "value": {"stringValue": "e2e-1"}}
    assert client.post(c.OTLP_LOGS_PATH, data=otlp_json({"timeUnixNano": str(T0), "body": {"stringValue": "via otlp"},
                                                         "attributes": [cid]}), headers=JS).status_code == 200
    assert client.post(c.LOGS_PATH, json={"lines": [{"time_ns": T0 + 1, "body": "via native", "level": "error",
                                                     "correlation_id": "e2e-1"}]}).status_code == 200
    assert client.post(c.BROWSER_LOGS_PATH, json={"correlation_id": "e2e-1", "events": [{"message": "via browser"}]},
                       headers={"Origin": SHOP}).status_code == 200
    handler = LogHandler(sink=InProcessSink(ex.pipeline))
    handler.handle(logging.makeLogRecord({"name": "shop", "msg": "via sdk", "levelno": logging.WARNING,
                                          "correlation_id": "e2e-1"}))
    assert ex.pipeline.recorder.flush(30)
    r = client.get(c.LOGS_PATH, query_string={"correlation_id": "e2e-1"})
    assert r.status_code == 200
    found = {(ln["body"], ln["source"], ln["level"]) for ln in r.json["lines"]}
    assert found == {("via otlp", "otlp", "info"), ("via native", "app", "error"), ("via browser", "browser", "info"),
                     ("via sdk", "app", "warn")}


# --- Loki ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_log_lines_reach_loki_with_the_bounded_stream_labels_and_their_ids_as_metadata(encoding):
    loki = FakeLoki()
    try:
        pusher = LokiPusher(LokiConfig(url=loki.url, encoding=encoding, batch_wait_s=0.05,
                                       retry=RetryPolicy(initial_backoff_s=0.05, deadline_s=5)), MetricStore()).start()
        pusher.logs([LogLine(time_ns=T0, level="error", body="card declined", service="shop", logger="shop.pay",
                             workflow="checkout", correlation_id="c-1", trace_id=TRACE, span_id=SPAN,
                             attributes={"order_id": 7}, exception="Traceback ..."),
                     LogLine(time_ns=T0 + 1, level="info", body="clicked", source="browser")])
        pusher.close()
        assert loki.errors == []
        app, browser = sorted(loki.accepted, key=lambda e: e["ts"])
        assert app["labels"] == {"service": "shop", "workflow": "checkout", "layer": c.LOG_LAYER, "level": "error"}
        assert browser["labels"] == {"service": "unknown_service", "workflow": c.UNKNOWN_WORKFLOW,
                                     "layer": "frontend", "level": "info"}
        assert set(app["labels"]) == set(c.STREAM_LABELS)
        assert app["ts"] == str(T0) and app["meta"] == {"correlation_id": "c-1", "trace_id": TRACE, "span_id": SPAN}
        assert orjson.loads(app["line"]) == {"message": "card declined", "level": "error", "source": "app",
                                             "logger": "shop.pay", "correlation_id": "c-1", "trace_id": TRACE,
                                             "span_id": SPAN, "exception": "Traceback ...",
                                             "attributes": {"order_id": 7}}
    finally:
        loki.stop()


def test_a_posted_line_reaches_loki_through_the_pipeline_redacted(make_exporter):
    from backend.app import create_app

    loki = FakeLoki()
    try:
        ex = make_exporter(loki_url=loki.url, loki_batch_wait_s=0.05)
        client = create_app(ex).test_client()
        r = client.post(c.LOGS_PATH, json={"lines": [{"time_ns": T0, "body": "login password=hunter2",
                                                      "attributes": {"password": "hunter2", "user": "ana"}}]})
        assert r.status_code == 200
        assert ex.loki.flush(10)
        (entry,) = loki.accepted
        assert "hunter2" not in entry["line"]
        line = orjson.loads(entry["line"])
        assert line["message"] == f"login password={c.REDACTED}"
        assert line["attributes"] == {"password": c.REDACTED, "user": "ana"}
    finally:
        loki.stop()


# --- fuzz: every input path --------------------------------------------------------------------------------

LEVELS = set(c.LOG_LEVELS)


def assert_line_fit_for_every_sink(line: LogLine) -> None:
    """What a sink may trust about a decoded line: bounded labels, int64 times, clean JSON-able values."""
    assert line.level in LEVELS and 0 <= line.severity_number <= 24
    assert 0 < line.time_ns <= MAX_TIME_NS
    for name in (line.service, line.logger, line.workflow):
        assert name is None or (type(name) is str and len(name) <= MAX_LABEL_CHARS and "\x00" not in name)
    for text in (line.body, line.exception, line.correlation_id, line.trace_id, line.span_id):
        assert text is None or (type(text) is str and "\x00" not in text)
        if text is not None:
            text.encode("utf-8")  # no lone surrogate
    assert line.source in c.LOG_SOURCES
    orjson.dumps(line.attributes)
    entry = log_entry(line)
    encode_json([entry])
    encode_protobuf([entry])


def check_result(result: otlp_logs.LogDecodeResult) -> None:
    for line in result.lines:
        assert_line_fit_for_every_sink(line)
    for r in result.rejected:
        assert r.field and r.detail.startswith(r.field)


OTLP_RECORD_HOSTILE = {
    "timeUnixNano": st.one_of(json_scalars, st.sampled_from(["0", str(2**63), str(2**64), "1e9"])),
    "observedTimeUnixNano": json_scalars,
    "severityNumber": st.one_of(json_scalars, st.sampled_from(["SEVERITY_NUMBER_FATAL4", "SEVERITY_NUMBER_X", "25"])),
    "severityText": st.one_of(hostile_text, json_scalars),
    "traceId": st.one_of(st.sampled_from(["0" * 32, "F" * 32, "٣" * 32]), hostile_text, json_scalars),
    "spanId": st.one_of(st.sampled_from(["0" * 16, "٣" * 16]), hostile_text, json_scalars),
    "body": any_values,
    "attributes": st.one_of(json_values, st.lists(st.fixed_dictionaries({"key": hostile_text, "value": any_values}),
                                                  max_size=3)),
}


@st.composite
def otlp_json_log_bodies(draw) -> bytes:
    records = []
    for _ in range(draw(st.integers(1, 3))):
        valid = {"timeUnixNano": str(T0), "severityNumber": 17, "body": {"stringValue": "card declined"},
                 "traceId": draw(ids(16)), "spanId": draw(ids(8)),
                 "attributes": [{"key": "correlation_id", "value": {"stringValue": "c-1"}}]}
        records.append(mutate_fields(draw, valid, OTLP_RECORD_HOSTILE))
    doc = {"resourceLogs": [{"resource": {"attributes": [{"key": "service.name",
                                                           "value": draw(or_valid({"stringValue": "shop"},
                                                                                  any_values))}]},
                             "scopeLogs": [{"scope": {"name": draw(or_valid("shop.pay", hostile_text))},
                                            "logRecords": records}]}]}
    if draw(st.integers(0, 9)) == 7:
        doc = draw(json_values)
    body = encode_hostile_json(doc, draw(st.booleans()), None)
    return draw(byte_edits(body)) if draw(st.integers(0, 4)) == 3 else body


@st.composite
def otlp_protobuf_log_bodies(draw) -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    kv = rl.resource.attributes.add(key="service.name")
    kv.value.CopyFrom(draw(pb_values))
    sl = rl.scope_logs.add()
    sl.scope.name = draw(or_valid("shop.pay", pb_text))
    for _ in range(draw(st.integers(1, 3))):
        rec = sl.log_records.add()
        rec.time_unix_nano = draw(or_valid(T0, st.integers(0, 2**64 - 1)))
        rec.observed_time_unix_nano = draw(st.integers(0, 2**64 - 1))
        rec.severity_number = draw(or_valid(9, st.integers(-2**31, 2**31 - 1)))
        rec.severity_text = draw(pb_text)
        rec.trace_id = draw(or_valid(bytes.fromhex(TRACE), st.binary(max_size=20)))
        rec.span_id = draw(or_valid(bytes.fromhex(SPAN), st.binary(max_size=10)))
        rec.body.CopyFrom(draw(pb_values))
        for k, v in draw(st.lists(st.tuples(pb_text, pb_values), max_size=3)):
            rec.attributes.add(key=k).value.CopyFrom(v)
    body = req.SerializeToString()
    return draw(byte_edits(body)) if draw(st.integers(0, 4)) == 3 else body


NATIVE_HOSTILE = dict.fromkeys(("time_ns", "time", "level", "severity_number", "body", "logger", "service",
                                "correlation_id", "trace_id", "span_id", "workflow", "attributes", "exception",
                                "colour"), json_values)
NATIVE_HOSTILE["time"] = st.one_of(json_scalars, st.sampled_from(["2026-11-23T10:00:00Z", "2026-11-23T10:00:00",
                                                                   "9999-12-31T23:59:59Z", "yesterday"]))
NATIVE_HOSTILE["level"] = st.one_of(st.sampled_from(["warning", "CRITICAL", "loud", ""]), hostile_text)


@st.composite
def native_log_docs(draw):
    lines = [mutate_fields(draw, {"time_ns": T0, "level": "info", "body": "ok", "trace_id": TRACE, "span_id": SPAN,
                                  "attributes": {"n": 1}}, NATIVE_HOSTILE)
             for _ in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 9)) == 7:
        return draw(json_values)
    return {"lines": lines} if draw(st.booleans()) else lines


BROWSER_HOSTILE = dict.fromkeys(("type", "level", "message", "time", "stack", "logger", "page", "target",
                                 "attributes", "correlation_id", "trace_id", "span_id", "extra"), json_values)
BROWSER_HOSTILE["time"] = st.one_of(json_scalars, st.sampled_from([0, -1, 1e20, 9.2e15, 1795000000123]))
BROWSER_HOSTILE["type"] = st.one_of(st.sampled_from(list(otlp_logs.BROWSER_TYPES) + ["x"]), hostile_text)


@st.composite
def browser_docs(draw):
    events = [mutate_fields(draw, {"type": "error", "message": "boom", "time": 1795000000123}, BROWSER_HOSTILE)
              for _ in range(draw(st.integers(0, 3)))]
    doc = mutate_fields(draw, {"service": "web", "correlation_id": "c-1", "events": events},
                        {"service": json_values, "correlation_id": json_values, "trace_id": json_values,
                         "session_id": json_values, "page": json_values, "events": json_values,
                         "referrer": json_values}, most=1)
    return draw(json_values) if draw(st.integers(0, 9)) == 7 else doc


@settings(**SETTINGS, max_examples=60)
@given(body=st.one_of(otlp_json_log_bodies(), otlp_protobuf_log_bodies()))
def test_otlp_log_decoders_decode_or_refuse_and_what_they_accept_fits_every_sink(body):
    note(f"body={body[:2000]!r}")
    for decode in (otlp_logs.decode_json, otlp_logs.decode_protobuf):
        try:
            result = decode(body, T0)
        except DecodeError as e:
            assert e.field
            continue
        check_result(result)


@settings(**SETTINGS, max_examples=60)
@given(native=native_log_docs(), browser=browser_docs())
def test_native_and_browser_decoders_decode_or_refuse_and_what_they_accept_fits_every_sink(native, browser):
    for decode in (otlp_logs.decode_native, lambda d: otlp_logs.decode_browser(d, T0, "UA\x00")):
        for doc in (native, browser):
            try:
                result = decode(doc)
            except DecodeError as e:
                assert e.field
                continue
            check_result(result)


def otlp_records(body: bytes, protobuf: bool) -> int:
    """How many log records a request the server took (a 200) holds."""
    if protobuf:
        req = ExportLogsServiceRequest.FromString(body)
        return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
    doc = json.loads(body)
    return sum(len(sl.get("logRecords") or ()) for rl in doc.get("resourceLogs") or ()
               for sl in rl.get("scopeLogs") or ())


@settings(**{**HTTP, "max_examples": 40})
@given(body=st.one_of(otlp_json_log_bodies(), otlp_protobuf_log_bodies()), protobuf=st.booleans())
def test_http_otlp_logs_never_5xx_and_every_record_is_kept_or_named(client, ex, body, protobuf):
    sink = LineSink()
    ex.pipeline.add_sink(sink)
    try:
        r = client.post(c.OTLP_LOGS_PATH, data=body, headers=PB if protobuf else JS)
    finally:
        ex.pipeline.sinks.remove(sink)
    assert_no_5xx_and_error_shape(r)
    if r.status_code != 200:
        assert sink.lines == [] and r.json["error"].get("field"), "a refused request changed something"
        return
    if protobuf:
        rejected = ExportLogsServiceResponse.FromString(r.data).partial_success.rejected_log_records
    else:
        rejected = (r.json.get("partialSuccess") or {}).get("rejectedLogRecords", 0)
    assert len(sink.lines) + rejected == otlp_records(body, protobuf)
    for line in sink.lines:
        assert_line_fit_for_every_sink(line)


@settings(**{**HTTP, "max_examples": 40})
@given(doc=st.one_of(native_log_docs(), browser_docs()), browser=st.booleans(), edit=st.integers(0, 5),
       data=st.data())
def test_http_native_and_browser_logs_never_5xx_and_every_line_accepted_reaches_the_sinks(client, ex, doc,
                                                                                            browser, edit, data):
    body = encode_hostile_json(doc, data.draw(st.booleans()), None)
    if edit == 3:
        body = data.draw(byte_edits(body))
    sink = LineSink()
    ex.pipeline.add_sink(sink)
    try:
        r = client.post(c.BROWSER_LOGS_PATH if browser else c.LOGS_PATH, data=body, headers=JS)
    finally:
        ex.pipeline.sinks.remove(sink)
    assert_no_5xx_and_error_shape(r)
    if r.status_code != 200:
        assert sink.lines == [] and r.json["error"].get("field"), r.json
        return
    assert len(sink.lines) == r.json["accepted"]
    assert r.json["accepted"] >= 1 or r.json["rejected"] == 0  # a request with lines, none valid, is a 400
    for line in sink.lines:
        assert_line_fit_for_every_sink(line)
