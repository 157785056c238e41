"""Issue 9's triggers, each through the real HTTP views: the request gets its answer (a 4xx with a JSON
body, or a per-item refusal, or acceptance with the value cut to the limits), and afterwards the next
10,000 good spans are all stored and the next scrape is complete."""

from __future__ import annotations

import json
import marshal
import os
import time

import orjson
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from sqlalchemy import text

from exporter import conventions as c
from tests import otlp_data

GOOD_N = 10_000
T0 = time.time_ns() - 60_000_000_000  # recent: the retention sweep keeps it
TID = "5b8efff798038103d269b633813fc60c"


@pytest.fixture(scope="module")
def good_batch() -> bytes:
    """10,000 well-formed spans: 2,000 runs of a root and four children."""
    spans = []
    for r in range(GOOD_N // 5):
        tid = os.urandom(16).hex()
        root = os.urandom(8).hex()
        spans.append(otlp_data.span("GET /checkout", tid, root, None, 2, T0 + r, 5_000_000,
                                    {"http.request.method": "GET", "flowscope.workflow": "checkout"}))
        for k in range(4):
            spans.append(otlp_data.span(f"SELECT {k}", tid, None, root, 3, T0 + r + k, 1_000_000,
                                        {"db.system": "postgresql"}))
    return otlp_data.request(spans).SerializeToString()


def _otlp_json(span: dict, resource: dict | None = None) -> tuple[str, bytes, str]:
    base = {"traceId": TID, "spanId": "051581bf3cb55c13", "name": "poison", "kind": 2,
            "startTimeUnixNano": str(T0), "endTimeUnixNano": str(T0 + 1000)}
    base.update(span)
    res = {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}, *(resource or [])]}
    doc = {"resourceSpans": [{"resource": res, "scopeSpans": [{"spans": [base]}]}]}
    return c.OTLP_TRACES_PATH, orjson.dumps(doc), "application/json"


def _otlp_pb(**kw) -> tuple[str, bytes, str]:
    s = otlp_data.span("poison", TID, "051581bf3cb55c13", None, 2, T0, 1000)
    attrs = kw.pop("attrs", {})
    events = kw.pop("events", ())
    s.update(kw)
    s["attrs"] = attrs
    s["events"] = list(events)
    return c.OTLP_TRACES_PATH, otlp_data.request([s]).SerializeToString(), "application/x-protobuf"


def _native(step: dict) -> tuple[str, bytes, str]:
    rec = {"correlation_id": "c-poison", "workflow_type": "checkout", "layer": "database", "component": "pg",
           "operation": "q", "started_at": T0 / 1e9, "duration_ms": 1.0}
    rec.update(step)
    return c.NATIVE_SPANS_PATH, json.dumps({"steps": [rec]}).encode(), "application/json"


def _nested(depth: int, leaf=1):
    v = leaf
    for _ in range(depth):
        v = {"k": v}
    return v


def _deep_attribute(depth: int) -> tuple[str, bytes, str]:
    """An OTLP/JSON span with an arrayValue nested ``depth`` deep (written as text: no encoder nests that far)."""
    deep = b'{"arrayValue":{"values":[' * depth + b'{"intValue":"1"}' + b"]}}" * depth
    path, body, ctype = _otlp_json({"attributes": [{"key": "deep", "value": "DEEP"}]})
    return path, body.replace(b'"DEEP"', deep), ctype


def _pstats(entries: dict) -> bytes:
    return marshal.dumps(entries)


def _profile(body: bytes, query: str, ctype: str = "text/plain") -> tuple[str, bytes, str]:
    return f"{c.PROFILES_PATH}?workflow=checkout&{query}", body, ctype


# (id, request, expected status, what the answer must say); "accepted" rows are kept, cut to the limits.
TRIGGERS = [
    ("pb-time-2^64-2", _otlp_pb(start=2**64 - 2, end=2**64 - 2), 200, "start <= end"),
    ("json-time-40-digits", _otlp_json({"startTimeUnixNano": "1" * 40, "endTimeUnixNano": "1" * 40}), 200,
     "rejected"),
    ("json-time-400-digits", (c.OTLP_TRACES_PATH, _otlp_json({})[1].replace(
        f'"endTimeUnixNano":"{T0 + 1000}"'.encode(), b'"endTimeUnixNano":' + b"9" * 400), "application/json"),
     200, "rejected"),
    ("json-int-attribute-over-64-bits", (c.OTLP_TRACES_PATH, _otlp_json(
        {"attributes": [{"key": "big", "value": {"intValue": 0}}]})[1].replace(b'"intValue":0', b'"intValue":'
                                                                              + b"9" * 30), "application/json"),
     200, "accepted"),
    ("json-arrayValue-300-deep", _deep_attribute(300), 200,
     "accepted"),
    ("json-malformed-kvlistValue", _otlp_json({"attributes": [{"key": "kv", "value": {"kvlistValue": [1, 2]}},
                                                              {"key": "kv2", "value": {"kvlistValue": {
                                                                  "values": [{"key": 3}, "x", None]}}}]}),
     200, "accepted"),
    ("pb-exception-message-not-a-string", _otlp_pb(error=True, events=[("exception", {
        "exception.type": "ValueError", "exception.message": 42, "exception.stacktrace": 7.5})]), 200, "accepted"),
    ("pb-layer-given-as-array", (c.OTLP_TRACES_PATH, None, "application/x-protobuf"), 200,
     "flowscope.layer must be a string"),
    ("json-invalid-utf8", (c.OTLP_TRACES_PATH, _otlp_json({"name": "x"})[1].replace(b'"x"', b'"\xff\xfe"'),
                           "application/json"), 400, "malformed_body"),
    ("json-nesting-430", (c.OTLP_TRACES_PATH, b'{"resourceSpans":' + b"[" * 430 + b"]" * 430 + b"}",
                          "application/json"), 400, "malformed_body"),
    ("json-attribute-nesting-430", _deep_attribute(430), 400, "malformed_body"),
    ("json-nul-in-names", (c.OTLP_TRACES_PATH, _otlp_json({"name": "a_b"})[1].replace(
        b"a_b", b"a\\u0000b"), "application/json"), 200, "accepted"),
    ("json-lone-surrogate", (c.OTLP_TRACES_PATH, _otlp_json({"name": "a_b"})[1].replace(
        b"a_b", b"a\\ud800b"), "application/json"), 400, "malformed_body"),
    ("json-workflow-and-service-over-200-chars", _otlp_json(
        {"attributes": [{"key": "flowscope.workflow", "value": {"stringValue": "w" * 300}}]},
        [{"key": "service.name", "value": {"stringValue": "s" * 300}}]), 200, "accepted"),
    ("native-metadata-300-deep", _native({"metadata": _nested(300)}), 200, "accepted"),
    ("native-state-300-deep", _native({"state": _nested(300)}), 200, "accepted"),
    ("native-nul-in-names", _native({"operation": "a\x00b", "workflow_type": "w\x00"}), 200, "accepted"),
    ("native-time-past-2262", _native({"started_at": "9999-12-31T23:59:59-14:00"}), 400, "invalid_time"),
    ("native-layer-array", _native({"layer": ["database"]}), 400, "invalid_value"),
    ("native-status-1000-deep", (c.NATIVE_SPANS_PATH, _native({"status": "DEEP"})[1].replace(
        b'"DEEP"', b'{"a":' * 1000 + b"1" + b"}" * 1000), "application/json"), 400, "invalid_value"),
    ("folded-count-2^64", _profile(f"main;a {2**64}\n".encode(), "sample_rate=100"), 400, "malformed_profile"),
    ("folded-count-superscript", _profile("main;a \u00b2\n".encode(), "sample_rate=100"), 400,
     "malformed_profile"),
    ("folded-count-400-digits", _profile(b"main;a " + b"9" * 400 + b"\n", "sample_rate=100"), 400,
     "malformed_profile"),
    ("folded-sample-rate-1e-320", _profile(b"main;a 5\n", "sample_rate=1e-320"), 400, "malformed_profile"),
    ("folded-sample-rate-nan", _profile(b"main;a 5\n", "sample_rate=nan"), 400, "malformed_profile"),
    ("folded-3000-frames", _profile((";".join(f"f{i}" for i in range(3000)) + " 5\n").encode(),
                                    "sample_rate=100"), 200, "accepted"),
    ("pstats-nan-time", _profile(_pstats({("a.py", 1, "f"): (1, 1, float("nan"), 1.0, {})}), "format=pstats",
                                 "application/octet-stream"), 400, "malformed_profile"),
    ("pstats-inf-time", _profile(_pstats({("a.py", 1, "f"): (1, 1, float("inf"), 1.0, {})}), "format=pstats",
                                 "application/octet-stream"), 400, "malformed_profile"),
    ("pstats-negative-time", _profile(_pstats({("a.py", 1, "f"): (1, 1, 0.5, 1.0, {}),
                                               ("b.py", 1, "g"): (1, 1, -1.0, 1.0, {})}), "format=pstats",
                                      "application/octet-stream"), 400, "malformed_profile"),
    ("pstats-non-string-filename", _profile(_pstats({("a.py", 1, "f"): (1, 1, 0.5, 1.0, {}),
                                                     (7, 1, "g"): (1, 1, 0.5, 1.0, {})}), "format=pstats",
                                            "application/octet-stream"), 400, "malformed_profile"),
]


def _layer_array_body() -> bytes:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

    req = otlp_data.request([otlp_data.span("poison", TID, "051581bf3cb55c13", None, 2, T0, 1000)])
    kv = req.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="flowscope.layer")
    kv.value.CopyFrom(AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="database")])))
    return req.SerializeToString()


def _stored_spans(ex) -> int:
    assert ex.pipeline.recorder.flush(60)
    with ex.db.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM spans")).scalar()


def _scrape(client) -> dict:
    """The whole OpenMetrics exposition, parsed (the parser raises on a cut-off or malformed scrape)."""
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200
    body = r.get_data(as_text=True)
    assert body.endswith("# EOF\n")
    return {f.name: f for f in text_string_to_metric_families(body)}


def _post(client, path: str, body: bytes, ctype: str):
    return client.post(path, data=body, headers={"Content-Type": ctype})


def _check_then_prove_the_next_10000(ex, client, good_batch, trigger, status, says):
    path, body, ctype = trigger
    if body is None:
        body = _layer_array_body()
    r = _post(client, path, body, ctype)
    assert r.status_code == status, r.get_data(as_text=True)[:300]
    answer = r.get_data()
    if ctype == "application/x-protobuf" and r.status_code == 200:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        resp = ExportTraceServiceResponse.FromString(answer)
        refused = resp.partial_success.rejected_spans
        detail = resp.partial_success.error_message
    else:
        doc = orjson.loads(answer) if answer else {}
        if "error" in doc:
            assert set(doc["error"]) >= {"code", "message"}
        ps = doc.get("partialSuccess", {})
        refused = ps.get("rejectedSpans", doc.get("rejected", 0))
        detail = orjson.dumps(doc).decode()
    if says == "accepted":
        assert refused == 0, detail
    elif status == 200:
        assert refused == 1 and (says == "rejected" or says in detail), detail
    else:
        assert says in detail, detail

    before = _stored_spans(ex) if ex.pipeline.recorder is not None else 0
    r = _post(client, c.OTLP_TRACES_PATH, good_batch, "application/x-protobuf")
    assert r.status_code == 200
    assert _stored_spans(ex) == before + GOOD_N
    fams = _scrape(client)
    steps = fams[c.STEP_DURATION_SECONDS]
    count = sum(s.value for s in steps.samples if s.name.endswith("_count") and s.labels.get("workflow") == "checkout"
                and s.labels.get("operation", "").startswith(("GET /checkout", "SELECT")))
    assert count == GOOD_N
    return fams


@pytest.mark.parametrize("name,trigger,status,says", TRIGGERS, ids=[t[0] for t in TRIGGERS])
def test_a_poisoned_input_is_answered_and_the_next_10000_spans_are_stored_and_scraped(
        make_exporter, good_batch, name, trigger, status, says):
    ex = make_exporter()
    client = _client(ex)
    _check_then_prove_the_next_10000(ex, client, good_batch, trigger, status, says)


@pytest.mark.parametrize("name", ["json-nul-in-names", "json-workflow-and-service-over-200-chars",
                                  "native-nul-in-names", "pstats-non-string-filename"])
def test_on_postgresql_too(make_exporter, postgres, good_batch, name):
    ex = make_exporter(database_url=postgres.fresh_database())
    _, trigger, status, says = next(t for t in TRIGGERS if t[0] == name)
    _check_then_prove_the_next_10000(ex, _client(ex), good_batch, trigger, status, says)


def test_cut_values_are_counted_and_kept_within_the_label_cap(make_exporter):
    ex = make_exporter()
    client = _client(ex)
    _, body, ctype = next(t[1] for t in TRIGGERS if t[0] == "json-workflow-and-service-over-200-chars")
    assert _post(client, c.OTLP_TRACES_PATH, body, ctype).status_code == 200
    fams = _scrape(client)
    cut = {s.labels["format"]: s.value for s in fams[c.VALUES_TRUNCATED_TOTAL.removesuffix("_total")].samples
           if s.name.endswith("_total")}
    assert cut == {c.FORMAT_OTLP_JSON: 2}  # the workflow and the service name
    workflows = {s.labels["workflow"] for s in fams[c.STEP_DURATION_SECONDS].samples}
    assert max(len(w) for w in workflows) == 200 and any(w.startswith("w" * 199) for w in workflows)


def test_one_bad_span_in_a_batch_moves_no_counter_for_it(make_exporter):
    """A 400-digit time in the middle of a batch: the others are counted, it is refused, nothing raises."""
    ex = make_exporter()
    client = _client(ex)
    good = [{"traceId": TID, "spanId": f"{i + 1:016x}", "name": f"op{i}", "kind": 1,
             "startTimeUnixNano": str(T0), "endTimeUnixNano": str(T0 + 10)} for i in range(3)]
    bad = dict(good[0], spanId="00000000000000ff", endTimeUnixNano="TIME")
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [good[0], bad, good[1], good[2]]}]}]}
    body = orjson.dumps(doc).replace(b'"TIME"', b"9" * 400)
    r = _post(client, c.OTLP_TRACES_PATH, body, "application/json")
    assert r.status_code == 200
    assert r.json["partialSuccess"]["rejectedSpans"] == 1
    fams = _scrape(client)
    received = {s.labels["format"]: s.value for s in fams[c.SPANS_RECEIVED_TOTAL.removesuffix("_total")].samples
                if s.name.endswith("_total")}
    assert received[c.FORMAT_OTLP_JSON] == 4
    counts = [s.value for s in fams[c.STEP_DURATION_SECONDS].samples if s.name.endswith("_count")]
    assert sum(counts) == 3


def _client(ex):
    from backend.app import create_app

    return create_app(ex).test_client()


def test_the_in_process_sdk_passes_the_same_boundary(make_exporter):
    """The SDK has no decoder: deep state, huge integers, NUL bytes and 1 KiB names from application code
    are cut on the way in, so the run is stored whole and the scrape stays complete."""
    from exporter.sdk import WorkflowTracer
    from exporter.sdk.sinks import InProcessSink

    ex = make_exporter()
    tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    cid = tracer.start_workflow("checkout")
    sid = tracer.add_trace_step(cid, "database", "pg", "q" * 1024, metadata={"rows": 2**70, "sql": "a\x00b"},
                                state=_nested(300))
    tracer.complete_trace_step(sid, status="failed", error_type="DbError", error_message="bad\x00byte")
    tracer.complete_workflow(cid)
    assert _stored_spans(ex) == 2
    with ex.db.connect() as conn:
        op, msg, attrs, state = conn.execute(text(
            "SELECT operation, error_message, attributes, state FROM spans WHERE layer = 'database'")).one()
    assert len(op) == 200 and msg == "bad\ufffdbyte"
    assert orjson.loads(attrs)["rows"] == str(2**70)
    assert "nested deeper than 32 levels" in state
    fams = _scrape(_client(ex))
    ops = {s.labels["operation"] for s in fams[c.STEP_DURATION_SECONDS].samples if "operation" in s.labels}
    assert max(len(o) for o in ops) == 200


def test_a_refused_span_moves_no_cut_counter_either(make_exporter):
    """A 300-character correlation_id is cut to the label cap, then refused as longer than an id may be:
    the request changes nothing, the cut counter included."""
    ex = make_exporter()
    client = _client(ex)
    _, body, ctype = _otlp_json({"attributes": [
        {"key": "flowscope.correlation_id", "value": {"stringValue": "c" * 300}}]})
    r = _post(client, c.OTLP_TRACES_PATH, body, ctype)
    assert r.status_code == 200 and r.json["partialSuccess"]["rejectedSpans"] == 1
    fams = _scrape(client)
    cut = [s for s in fams[c.VALUES_TRUNCATED_TOTAL.removesuffix("_total")].samples if s.name.endswith("_total")]
    assert cut == []
