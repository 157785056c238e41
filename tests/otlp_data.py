"""Build OTLP requests (protobuf messages and their OTLP/JSON form) for tests and benchmarks."""

from __future__ import annotations

import os

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


def _kv(k, v) -> KeyValue:
    if isinstance(v, bool):
        return KeyValue(key=k, value=AnyValue(bool_value=v))
    if isinstance(v, int):
        return KeyValue(key=k, value=AnyValue(int_value=v))
    if isinstance(v, float):
        return KeyValue(key=k, value=AnyValue(double_value=v))
    return KeyValue(key=k, value=AnyValue(string_value=str(v)))


def span(name, trace_id=None, span_id=None, parent=None, kind=1, start=1_700_000_000_000_000_000,
         duration_ns=1_000_000, attrs=None, error=False, message="", events=()):
    """A span dict for :func:`request`."""
    return {"name": name, "trace_id": trace_id or os.urandom(16).hex(), "span_id": span_id or os.urandom(8).hex(),
                "parent": parent, "kind": kind, "start": start, "end": start + duration_ns, "attrs": attrs or {},
                "error": error,
                "message": message, "events": list(events)}


def request(spans, service="shop", resource=None) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in {"service.name": service, **(resource or {})}.items():
        rs.resource.attributes.append(_kv(k, v))
    ss = rs.scope_spans.add()
    for s in spans:
        sp = ss.spans.add()
        sp.trace_id = bytes.fromhex(s["trace_id"])
        sp.span_id = bytes.fromhex(s["span_id"])
        if s["parent"]:
            sp.parent_span_id = bytes.fromhex(s["parent"])
        sp.name, sp.kind = s["name"], s["kind"]
        sp.start_time_unix_nano, sp.end_time_unix_nano = s["start"], s["end"]
        for k, v in s["attrs"].items():
            sp.attributes.append(_kv(k, v))
        if s["error"]:
            sp.status.code = 2
            sp.status.message = s["message"]
        for ev_name, ev_attrs in s["events"]:
            ev = sp.events.add(name=ev_name, time_unix_nano=s["end"])
            for k, v in ev_attrs.items():
                ev.attributes.append(_kv(k, v))
    return req


def to_json(req: ExportTraceServiceRequest) -> dict:
    """OTLP/JSON: like protobuf's JSON mapping, but IDs are hex, not base64."""
    doc = MessageToDict(req)  # camelCase keys, int64 as strings, enums as names
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for sp in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in sp:
                        import base64
                        sp[k] = base64.b64decode(sp[k]).hex()
                kinds = {"SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
                         "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}
                if "kind" in sp:
                    sp["kind"] = kinds[sp["kind"]]
                if "status" in sp and "code" in sp["status"]:
                    sp["status"]["code"] = 2 if sp["status"]["code"] == "STATUS_CODE_ERROR" else 1
    return doc


# --- raw protobuf wire: for what python-protobuf refuses to build (AnyValues nested past ~100) ----------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(fieldno: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return varint(fieldno << 3 | 2) + varint(len(payload)) + payload


def deep_any_value_wire(kind: str, depth: int) -> bytes:
    """An AnyValue nested ``depth`` deep on the wire: ``array`` (array_value { values: v }) or kvlist
    (kvlist_value { values { key: "k" value: v } }), around a string leaf."""
    v = ld(1, b"leaf")
    for _ in range(depth):
        v = ld(5, ld(1, v)) if kind == "array" else ld(6, ld(1, ld(1, b"k") + ld(2, v)))
    return v


def sdk_provider(srv, resource: dict, processor=None):
    """A real OpenTelemetry SDK TracerProvider exporting OTLP/HTTP protobuf to ``srv`` (a live test server).

    ``processor`` wraps the exporter (default: SimpleSpanProcessor, one request per span as it ends).
    The SDK is imported here, not at module level: benches use this module without it.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from exporter import conventions as c

    p = TracerProvider(resource=Resource.create(resource))
    exporter = OTLPSpanExporter(endpoint=srv.url + c.OTLP_TRACES_PATH)
    p.add_span_processor((processor or SimpleSpanProcessor)(exporter))
    return p
