import gzip
import re

import orjson
import pytest
import requests
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from exporter import conventions as c
from tests.otlp_data import request, span, to_json

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
STEP_KEY = {"workflow": "checkout", "layer": "database", "component": "postgresql", "operation": "INSERT orders",
            "status": "ok"}


def step_count(ex, **labels):
    return ex.store.value(c.STEP_DURATION_SECONDS + "_count", {**STEP_KEY, **labels}) or 0


def test_a_real_opentelemetry_sdk_exports_to_v1_traces(ex, serve):
    srv = serve(ex)
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=srv.url + c.OTLP_TRACES_PATH, compression=Compression.Gzip)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("checkout", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "POST"}):
        with tracer.start_as_current_span("INSERT orders", kind=SpanKind.CLIENT,
                                          attributes={"db.system": "postgresql"}):
            pass
        with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT,
                                          attributes={"http.request.method": "POST"}) as s:
            s.set_status(Status(StatusCode.ERROR, "card declined"))
    provider.shutdown()
    # the child spans were exported before the root; the root's name became their workflow
    assert step_count(ex) == 1
    assert ex.store.value(c.STEP_ERRORS_TOTAL, {"workflow": "checkout", "layer": "external",
                                                "component": "shop", "error_type": "error"}) == 1
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "checkout", "status": "ok"}) == 1
    assert ex.store.value(c.SPANS_RECEIVED_TOTAL, {"format": c.FORMAT_OTLP_PROTOBUF}) == 3


def _req(n=2, **kw):
    root = span("checkout", kind=2, attrs={"http.method": "POST"})
    kids = [span("INSERT orders", trace_id=root["trace_id"], parent=root["span_id"], kind=3,
                 attrs={"db.system": "postgresql"}) for _ in range(n)]
    return request(kids + [root], **kw)


def test_otlp_json_with_gzip_is_accepted(ex, client):
    body = gzip.compress(orjson.dumps(to_json(_req(3))))
    r = client.post(c.OTLP_TRACES_PATH, data=body, headers={**JS, "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json == {}
    assert step_count(ex) == 3


def test_partial_success_keeps_the_valid_spans_in_both_encodings(ex, client):
    req = _req(2)
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x00" * 16
    r = client.post(c.OTLP_TRACES_PATH, data=req.SerializeToString(), headers=PB)
    assert r.status_code == 200
    resp = ExportTraceServiceResponse.FromString(r.data)
    assert resp.partial_success.rejected_spans == 1
    assert "traceId must be 16 non-zero bytes" in resp.partial_success.error_message
    assert step_count(ex) == 1

    doc = to_json(_req(2))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "nothex"
    r = client.post(c.OTLP_TRACES_PATH, data=orjson.dumps(doc), headers=JS)
    assert r.json["partialSuccess"]["rejectedSpans"] == 1
    assert step_count(ex) == 2
    assert ex.store.value(c.SPANS_REJECTED_TOTAL, {"format": c.FORMAT_OTLP_PROTOBUF,
                                                   "reason": "invalid_trace_id"}) == 1
    assert ex.store.value(c.SPANS_REJECTED_TOTAL, {"format": c.FORMAT_OTLP_JSON, "reason": "invalid_span_id"}) == 1


@pytest.mark.parametrize("body,headers,status,code,text", [
    (b"{not json", JS, 400, "malformed_body", "not valid JSON"),
    (b"\x0a\xff\xff\xff\x0f", PB, 400, "malformed_body", "not a valid OTLP"),
    (b"[]", JS, 400, "malformed_body", "ExportTraceServiceRequest"),
    (b"x", {"Content-Type": "text/plain"}, 415, "unsupported_media_type", "application/x-protobuf"),
    (b"x", {}, 415, "unsupported_media_type", "(none)"),
    (b"not gzip", {**JS, "Content-Encoding": "gzip"}, 400, "malformed_body", "not valid gzip"),
    (gzip.compress(b"{}", mtime=0)[:-6], {**JS, "Content-Encoding": "gzip"}, 400, "malformed_body", "truncated"),
    (b"{}", {**JS, "Content-Encoding": "br"}, 415, "unsupported_encoding", "gzip"),
])
def test_bad_otlp_requests_get_a_json_4xx_and_lose_nothing(ex, client, body, headers, status, code, text):
    ok = client.post(c.OTLP_TRACES_PATH, data=_req(1).SerializeToString(), headers=PB)
    assert ok.status_code == 200 and step_count(ex) == 1
    r = client.post(c.OTLP_TRACES_PATH, data=body, headers=headers)
    assert r.status_code == status
    assert r.json["error"]["code"] == code and text in r.json["error"]["message"]
    assert step_count(ex) == 1  # what was accepted before is still there
    again = client.post(c.OTLP_TRACES_PATH, data=_req(1).SerializeToString(), headers=PB)
    assert again.status_code == 200 and step_count(ex) == 2


def test_oversized_bodies_get_413_by_length_and_after_decompression(make_exporter):
    from backend.app import create_app
    ex = make_exporter(max_body_bytes=10_000)
    client = create_app(ex).test_client()
    big = orjson.dumps(to_json(_req(200)))
    assert len(big) > 10_000
    r = client.post(c.OTLP_TRACES_PATH, data=big, headers=JS)
    assert r.status_code == 413 and r.json["error"]["code"] == "too_large"
    bomb = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    assert len(bomb) < 10_000
    r = client.post(c.OTLP_TRACES_PATH, data=bomb, headers={**JS, "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json["error"]["message"]
    assert ex.store.value(c.REQUESTS_REJECTED_TOTAL, {"format": c.FORMAT_OTLP_JSON, "reason": "too_large"}) == 2


def test_ingest_token_is_required_when_configured(make_exporter, serve):
    ex = make_exporter(ingest_token="s3cret")
    srv = serve(ex)
    body = _req(1).SerializeToString()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
        r = requests.post(srv.url + c.OTLP_TRACES_PATH, data=body, headers={**PB, **headers}, timeout=5)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = requests.post(srv.url + c.NATIVE_SPANS_PATH, json={"steps": []}, headers=headers, timeout=5)
        assert r.status_code == 401
        r = requests.post(srv.url + c.PROFILES_PATH, params={"workflow": "w"}, data=b"main 1", headers=headers,
                          timeout=5)
        assert r.status_code == 401
    assert step_count(ex) == 0
    r = requests.post(srv.url + c.OTLP_TRACES_PATH, data=body, headers={**PB, "Authorization": "Bearer s3cret"},
                      timeout=5)
    assert r.status_code == 200 and step_count(ex) == 1
    # /metrics stays open for Prometheus
    assert requests.get(srv.url + c.METRICS_PATH, timeout=5).status_code == 200


STEP = {"correlation_id": "c-1", "workflow_type": "login", "layer": "cache", "component": "redis",
        "operation": "GET session", "status": "success", "started_at": 1795000000.0, "duration_ms": 2}


def test_native_batch_partial_and_total_rejection(ex, client):
    r = client.post(c.NATIVE_SPANS_PATH, json={"steps": [STEP, {**STEP, "layer": "nope"}]})
    assert r.status_code == 200
    assert r.json["accepted"] == 1 and r.json["rejected"] == 1
    assert r.json["errors"][0]["reason"] == "invalid_value" and "layer" in r.json["errors"][0]["message"]
    r = client.post(c.NATIVE_SPANS_PATH, json={"steps": [{**STEP, "duration_ms": "slow"}]})
    assert r.status_code == 400 and r.json["error"]["code"] == "no_valid_spans"
    r = client.post(c.NATIVE_SPANS_PATH, data=b"{", headers=JS)
    assert r.status_code == 400 and r.json["error"]["code"] == "malformed_body"
    r = client.post(c.NATIVE_SPANS_PATH, data=orjson.dumps({"steps": [STEP]}), headers={"Content-Type": "text/csv"})
    assert r.status_code == 415
    key = {"workflow": "login", "layer": "cache", "component": "redis", "operation": "GET session", "status": "ok"}
    assert ex.store.value(c.STEP_DURATION_SECONDS + "_count", key) == 1


def test_metrics_negotiates_openmetrics_and_includes_custom_and_process_metrics(ex, client):
    client.post(c.NATIVE_SPANS_PATH, json={"steps": [STEP]})
    text = client.get(c.METRICS_PATH)
    assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"flowscope_step_duration_seconds_bucket{" in text.data and b"# EOF" not in text.data
    assert b"process_cpu_seconds_total" in text.data
    om = client.get(c.METRICS_PATH, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.data.endswith(b"# EOF\n") and om.data.count(b"# EOF") == 1
    assert b'# {trace_id="' in om.data


def test_the_exporter_serves_alone_without_the_backend(ex):
    """exporter/ never imports backend/: its blueprint, bound by its own init_app, ingests and exposes."""
    from flask import Flask

    from exporter.http import current_exporter, init_app
    app = Flask("exporter-alone")
    init_app(app, ex)
    assert current_exporter(app) is ex
    client = app.test_client()
    served = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert served == {c.OTLP_TRACES_PATH, c.NATIVE_SPANS_PATH, c.PROFILES_PATH, c.METRICS_PATH, c.HEALTH_PATH,
                      c.READY_PATH, c.OTLP_LOGS_PATH, c.LOGS_PATH, c.BROWSER_LOGS_PATH}
    r = client.post(c.NATIVE_SPANS_PATH, json={"steps": [STEP]})
    assert r.status_code == 200 and r.json["accepted"] == 1
    assert b'flowscope_step_duration_seconds_count{workflow="login"' in client.get(c.METRICS_PATH).data
    h = client.get(c.HEALTH_PATH)
    assert h.status_code == 200 and h.json["status"] == "ok"
    r = client.post(c.NATIVE_SPANS_PATH, data=b"{", headers=JS)
    assert r.status_code == 400 and r.json["error"]["code"] == "malformed_body"
    r = client.post(c.OTLP_TRACES_PATH, data=b"x", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415 and r.json["error"]["field"] == "Content-Type"


def test_health_and_openapi(client):
    h = client.get(c.HEALTH_PATH)
    assert h.status_code == 200 and h.json["status"] == "ok" and h.json["loki"]["enabled"] is False
    doc = client.get(c.OPENAPI_PATH).json
    assert doc["openapi"].startswith("3.1")
    assert {c.OTLP_TRACES_PATH, c.NATIVE_SPANS_PATH, c.METRICS_PATH, c.HEALTH_PATH} <= set(doc["paths"])
    # every route the app serves is documented
    served = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in client.application.url_map.iter_rules()
              if rule.endpoint != "static"}
    assert served - set(doc["paths"]) == set()
    r = client.get("/nope")
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    r = client.get(c.OTLP_TRACES_PATH)
    assert r.status_code == 405 and "error" in r.json
