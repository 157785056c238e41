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
                                  gzip.compress(b"x", mtime=0)])  # the same bytes (and test id) every run
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


# --- span details (issue 10): kind, resource, events, links, users, state ---------------------------------------


def _both(req):
    """The request decoded through both encodings (OTLP/JSON link ids are hex too, which to_json leaves base64)."""
    import base64

    doc = to_json(req)
    for sp in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for ln in sp.get("links", ()):
            for k in ("traceId", "spanId"):
                ln[k] = base64.b64decode(ln[k]).hex()
    return otlp.decode_protobuf(req.SerializeToString()), otlp.decode_json(orjson.dumps(doc))


def test_kind_resource_events_and_links_are_kept_in_both_encodings():
    prod = span("publish", kind=PRODUCER)
    cons = span("process", kind=5, events=[("retry", {"attempt": 2}), ("exception", {"exception.type": "E"})])
    req = request([prod, cons], resource={"service.version": "1.2", "deployment.environment": "prod"})
    ln = req.resource_spans[0].scope_spans[0].spans[1].links
    ln.add(trace_id=bytes.fromhex(prod["trace_id"]), span_id=bytes.fromhex(prod["span_id"])).attributes.add(
        key="messaging.operation").value.string_value = "publish"
    ln.add(trace_id=b"\x01" * 3, span_id=b"\x02" * 8)  # a malformed link id: the link goes, not the span
    for res in _both(req):
        assert not res.rejected
        p, s = res.spans
        assert (p.kind, s.kind) == ("producer", "consumer")
        assert s.resource == {"service.name": "shop", "service.version": "1.2", "deployment.environment": "prod"}
        assert p.resource is s.resource  # decoded once per ResourceSpans, shared
        assert [(e["name"], e["attributes"]) for e in s.events] == [("retry", {"attempt": 2}),
                                                                    ("exception", {"exception.type": "E"})]
        assert s.events[0]["time_ns"] == cons["end"]
        assert s.links == [{"trace_id": prod["trace_id"], "span_id": prod["span_id"],
                            "attributes": {"messaging.operation": "publish"}}]
        assert p.events is None and p.links is None


def test_unknown_kinds_are_kept_as_given_and_unspecified_is_none():
    req = request([span("a", kind=0), span("b", kind=9)])
    assert [s.kind for s in otlp.decode_protobuf(req.SerializeToString()).spans] == [None, "9"]
    doc = to_json(request([span("c")]))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] = "SPAN_KIND_TELEPATHY"
    (s,) = otlp.decode_json(orjson.dumps(doc)).spans
    assert s.kind == "SPAN_KIND_TELEPATHY"[:15] + "…"  # cut to the 16-character column, as names are cut


def test_semantic_convention_user_ids_on_a_root_are_hashed_like_the_native_user():
    from exporter.model import hash_user

    root = span("checkout", kind=SERVER, attrs={"enduser.id": "alice"})
    kid = span("q", trace_id=root["trace_id"], parent=root["span_id"], attrs={"user.id": "bob"})
    other = span("login", kind=SERVER, attrs={"user.id": 42})
    for res in _both(request([root, kid, other])):
        assert [s.user for s in res.spans] == [hash_user("alice"), None, hash_user("42")]


@pytest.mark.parametrize("attrs,events,state,cut", [
    ({"flowscope.state": '{"cart": 3}'}, (), {"cart": 3}, 0),
    ({}, [("flowscope.state", {"state": '{"cart": 4}'})], {"cart": 4}, 0),
    ({"flowscope.state": '{"cart": 3}'}, [("flowscope.state", {"state": '{"cart": 4}'})], {"cart": 4}, 0),
    ({"flowscope.state": "{nope"}, (), {"value": "{nope"}, 1),
    ({"flowscope.state": "7"}, (), {"value": 7}, 0),
])
def test_flowscope_state_becomes_span_state(attrs, events, state, cut):
    for res in _both(request([span("s", attrs=attrs, events=events)])):
        (s,) = res.spans
        assert s.state == state and res.truncated == cut


def test_state_text_past_the_parse_limit_is_the_cap_marker_alone():
    from exporter import conventions as c

    text = '{"k": "' + "x" * otlp.MAX_STATE_CHARS + '"}'
    (s,) = otlp.decode_protobuf(request([span("s", attrs={"flowscope.state": text})]).SerializeToString()).spans
    assert list(s.state) == [c.TRUNCATED_KEY] and s.state[c.TRUNCATED_KEY]["original_bytes"] == len(text)
