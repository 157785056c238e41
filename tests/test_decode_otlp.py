import gzip

import orjson
import pytest

from exporter.decode import otlp
from exporter.errors import DecodeError
from tests.otlp_data import request, span, to_json

SERVER, CLIENT, PRODUCER, INTERNAL = 2, 3, 4, 1


@pytest.mark.parametrize("attrs,kind,resource,layer", [
    ({"db.system": "postgresql"}, CLIENT, {}, "database"),
    ({"db.system.name": "mysql"}, CLIENT, {}, "database"),
    ({"db.system": "redis"}, CLIENT, {}, "cache"),
    ({"messaging.system": "kafka"}, PRODUCER, {}, "queue"),
    ({}, PRODUCER, {}, "queue"),
    ({"http.request.method": "GET", "url.path": "/x"}, SERVER, {}, "api"),
    ({"http.method": "GET"}, CLIENT, {}, "external"),
    ({"rpc.system": "grpc"}, SERVER, {}, "api"),
    ({}, INTERNAL, {"telemetry.sdk.language": "webjs"}, "frontend"),
    ({"flowscope.layer": "worker", "db.system": "postgresql"}, CLIENT, {}, "worker"),
    ({"flowscope.layer": "nonsense"}, CLIENT, {}, "other"),
    ({}, INTERNAL, {}, "other"),
])
def test_layer_follows_semantic_conventions_and_explicit_attribute_wins(attrs, kind, resource, layer):
    assert otlp.derive_layer(attrs, kind, resource) == layer


def _spans():
    root = span("checkout", kind=SERVER, attrs={"http.request.method": "POST", "flowscope.workflow": "checkout"})
    db = span("INSERT orders", trace_id=root["trace_id"], parent=root["span_id"], kind=CLIENT,
              attrs={"db.system": "postgresql"}, duration_ns=3_000_000)
    pay = span("charge", trace_id=root["trace_id"], parent=root["span_id"], kind=CLIENT,
               attrs={"http.method": "POST", "peer.service": "payments"}, error=True, message="gateway timed out",
               events=[("exception", {"exception.type": "PaymentTimeout", "exception.message": "boom",
                                      "exception.stacktrace": "Traceback ..."})])
    return [root, db, pay]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_both_encodings_decode_to_the_same_spans(encoding):
    req = request(_spans(), service="shop")
    res = (otlp.decode_protobuf(req.SerializeToString()) if encoding == "protobuf"
           else otlp.decode_json(orjson.dumps(to_json(req))))
    assert not res.rejected
    root, db, pay = res.spans
    assert (root.workflow, root.layer, root.component, root.operation, root.is_root) == (
        "checkout", "api", "shop", "checkout", True)
    assert (db.layer, db.component, db.status, db.parent_span_id) == ("database", "postgresql", "ok", root.span_id)
    assert db.duration_s == pytest.approx(0.003)
    assert db.workflow is None  # named later by the resolver, from the trace
    # an error whose type says timeout is a timeout; type and stack come from the exception event
    assert (pay.layer, pay.component, pay.status, pay.error_type, pay.error_message) == (
        "external", "payments", "timeout", "PaymentTimeout", "gateway timed out")
    assert pay.stack_trace == "Traceback ..."
    assert root.correlation_id == root.trace_id


def test_invalid_spans_are_rejected_one_by_one_with_reasons():
    good = span("ok")
    bad_trace = span("x", trace_id="00" * 16)
    bad_time = span("y", start=100, duration_ns=-50)
    res = otlp.decode_protobuf(request([good, bad_trace, bad_time]).SerializeToString())
    assert [s.span_id for s in res.spans] == [good["span_id"]]
    assert [(r.index, r.reason) for r in res.rejected] == [(1, "invalid_trace_id"), (2, "invalid_time")]
    assert "span 1: traceId must be 16 non-zero bytes" in res.summary()


def test_json_span_with_bad_ids_or_missing_name_is_rejected():
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "xyz", "spanId": "0102030405060708", "name": "a", "startTimeUnixNano": "1", "endTimeUnixNano": "2"},
        {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102", "name": "b",
         "startTimeUnixNano": "1", "endTimeUnixNano": "2"},
        {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708",
         "startTimeUnixNano": "1", "endTimeUnixNano": "2"},
        {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708", "name": "late",
         "startTimeUnixNano": "9", "endTimeUnixNano": "2"},
    ]}]}]}
    res = otlp.decode_json(orjson.dumps(doc))
    assert res.spans == []
    assert [r.reason for r in res.rejected] == ["invalid_trace_id", "invalid_span_id", "missing_field",
                                                "invalid_time"]


@pytest.mark.parametrize("body", [b"\x0a\xff\xff\xff", b"garbage that is not protobuf \xff\xfe",
                                  gzip.compress(b"x")])
def test_unreadable_protobuf_raises(body):
    with pytest.raises(DecodeError, match="not a valid OTLP"):
        otlp.decode_protobuf(body)


@pytest.mark.parametrize("doc,field", [
    ([], "$"),
    ({"resourceSpans": {"a": 1}}, "$.resourceSpans"),
    ({"resourceSpans": [1]}, "$.resourceSpans[0]"),
    ({"resourceSpans": [{"scopeSpans": 3}]}, "$.resourceSpans[0].scopeSpans"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": ["not a span"]}]}]}, "$.resourceSpans[0].scopeSpans[0].spans[0]"),
    ({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 5}]}]}]},
     "$.resourceSpans[0].scopeSpans[0].spans[0].traceId"),
])
def test_malformed_json_structure_names_the_json_path(doc, field):
    with pytest.raises(DecodeError) as e:
        otlp.decode_json(orjson.dumps(doc))
    assert e.value.field == field and "ExportTraceServiceRequest" in str(e.value)


def test_unknown_fields_are_ignored_and_enum_names_accepted():
    doc = {"resourceSpans": [{"schemaUrl": "x", "scopeSpans": [{"scope": {"name": "lib"}, "spans": [{
        "traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708", "name": "GET /",
        "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": 1, "endTimeUnixNano": 2, "flags": 1,
        "status": {"code": "STATUS_CODE_ERROR"},
        "attributes": [{"key": "http.route", "value": {"stringValue": "/"}},
                       {"key": "retries", "value": {"intValue": "3"}},
                       {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}}]}]}]}]}
    (s,) = otlp.decode_json(orjson.dumps(doc)).spans
    assert (s.layer, s.status) == ("api", "error")
    assert s.attributes == {"http.route": "/", "retries": 3, "tags": ["a"]}
