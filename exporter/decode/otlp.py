"""OTLP/HTTP trace requests (protobuf or JSON) → spans.

The layer comes from OpenTelemetry semantic conventions (``derive_layer``); an
explicit ``flowscope.layer`` attribute wins. The workflow comes from the
``flowscope.workflow`` / ``workflow.type`` attribute; when a span has neither,
``Span.workflow`` is left ``None`` and :class:`exporter.resolver.WorkflowResolver`
names it after the trace's root span, which may arrive in a later request.

OTLP/JSON follows the protobuf JSON mapping with the OTLP exceptions: trace
and span IDs are hex strings, enums are integers, and 64-bit integers may be
strings. See https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.message import DecodeError as PbDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .. import conventions as c
from ..errors import DecodeError
from ..model import LAYERS, Span
from . import DecodeResult

# Span.kind values (opentelemetry.proto.trace.v1.Span.SpanKind)
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 1, 2, 3, 4, 5
STATUS_CODE_ERROR = 2

CACHE_SYSTEMS = frozenset({"redis", "memcached", "hazelcast", "coherence", "valkey"})
FRONTEND_SDKS = frozenset({"webjs", "browser", "javascript-browser"})
_HEX = frozenset("0123456789abcdef")


def derive_layer(attrs: dict[str, Any], kind: int, resource: dict[str, Any]) -> str:
    """The layer of one span, from semantic conventions.

    ``flowscope.layer`` wins; then ``db.system`` (a cache system such as redis
    → cache, else database); ``messaging.system`` or a PRODUCER/CONSUMER span →
    queue; a browser SDK → frontend; a SERVER span with ``http.*``/``url.*``
    or ``rpc.*`` → api; a CLIENT span with those → external; else other.
    """
    explicit = attrs.get(c.ATTR_LAYER)
    if explicit is not None:
        return explicit if explicit in LAYERS else "other"
    db = attrs.get("db.system") or attrs.get("db.system.name")
    if db is not None:
        return "cache" if str(db).lower() in CACHE_SYSTEMS else "database"
    if "messaging.system" in attrs or kind in (KIND_PRODUCER, KIND_CONSUMER):
        return "queue"
    if str(resource.get("telemetry.sdk.language", "")).lower() in FRONTEND_SDKS:
        return "frontend"
    if kind == KIND_SERVER or kind == KIND_CLIENT:
        web = False
        for k in attrs:
            if k.startswith(("http.", "url.", "rpc.")):
                web = True
                break
        if web:
            return "api" if kind == KIND_SERVER else "external"
    return "other"


def derive_component(attrs: dict[str, Any], kind: int, service: str) -> str:
    v = (attrs.get(c.ATTR_COMPONENT) or attrs.get("db.system") or attrs.get("db.system.name")
         or attrs.get("messaging.system") or attrs.get("rpc.service"))
    if v is None and kind == KIND_CLIENT:
        v = attrs.get("peer.service") or attrs.get("server.address") or attrs.get("net.peer.name")
    return str(v) if v is not None else service


def _first(attrs: dict[str, Any], names: tuple[str, ...]) -> Any:
    for n in names:
        v = attrs.get(n)
        if v is not None and v != "":
            return v
    return None


def _status(code: int, message: str, attrs: dict[str, Any], exc: dict[str, Any] | None):
    """(status, error_type, error_message) from the OTLP status and exception event."""
    explicit = attrs.get("flowscope.status")
    if explicit in c.STATUSES:
        status = explicit
    elif code == STATUS_CODE_ERROR:
        status = "error"
    else:
        return "ok", None, None
    etype = attrs.get("error.type") or (exc or {}).get("exception.type")
    emsg = message or (exc or {}).get("exception.message")
    if status == "error" and etype and "timeout" in str(etype).lower():
        status = "timeout"
    if status != "ok" and not etype:
        etype = status
    return status, (str(etype) if etype else None), emsg


def _finish(result: DecodeResult, index: int, trace_id: str, span_id: str, parent: str, name: str,
            kind: int, start: int, end: int, attrs: dict, resource: dict, service: str,
            code: int, message: str, exc: dict | None) -> None:
    if len(trace_id) != 32 or trace_id == "0" * 32 or not _HEX.issuperset(trace_id):
        result.reject(index, "invalid_trace_id", f"traceId must be 32 hex digits, got {trace_id!r}")
        return
    if len(span_id) != 16 or span_id == "0" * 16 or not _HEX.issuperset(span_id):
        result.reject(index, "invalid_span_id", f"spanId must be 16 hex digits, got {span_id!r}")
        return
    if start <= 0 or end < start:
        result.reject(index, "invalid_time",
                      f"needs 0 < startTimeUnixNano <= endTimeUnixNano, got {start}..{end}")
        return
    if not name:
        result.reject(index, "missing_field", "span name is empty")
        return
    status, etype, emsg = _status(code, message, attrs, exc)
    wf = _first(attrs, c.ATTR_WORKFLOW)
    corr = _first(attrs, c.ATTR_CORRELATION_ID)
    result.spans.append(Span(
        trace_id, span_id, str(wf) if wf is not None else None,
        derive_layer(attrs, kind, resource), derive_component(attrs, kind, service), name,
        start, end, status, parent or None, str(corr) if corr is not None else None, service,
        etype, emsg, attrs, None, True, None, (exc or {}).get("exception.stacktrace"),
    ))


# --- protobuf -----------------------------------------------------------------------


def _pb_value(v) -> Any:
    which = v.WhichOneof("value")
    if which == "string_value":
        return v.string_value
    if which == "int_value":
        return v.int_value
    if which == "bool_value":
        return v.bool_value
    if which == "double_value":
        return v.double_value
    if which == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return None


def _pb_attrs(kvs) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        out[kv.key] = v.string_value if which == "string_value" else _pb_value(v)
    return out


def decode_protobuf(body: bytes) -> DecodeResult:
    """Decode an ``ExportTraceServiceRequest`` in protobuf binary."""
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (PbDecodeError, ValueError, RuntimeError) as e:
        raise DecodeError(f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {e}") from None
    result = DecodeResult()
    index = 0
    for rs in req.resource_spans:
        resource = _pb_attrs(rs.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for ss in rs.scope_spans:
            for sp in ss.spans:
                exc = None
                for ev in sp.events:
                    if ev.name == "exception":
                        exc = _pb_attrs(ev.attributes)
                        break
                _finish(result, index, sp.trace_id.hex(), sp.span_id.hex(), sp.parent_span_id.hex(),
                        sp.name, sp.kind, sp.start_time_unix_nano, sp.end_time_unix_nano,
                        _pb_attrs(sp.attributes), resource, service, sp.status.code, sp.status.message, exc)
                index += 1
    return result


# --- JSON -------------------------------------------------------------------------------


def _json_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return None
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        try:
            return int(v["intValue"])
        except (TypeError, ValueError):
            return None
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "doubleValue" in v:
        try:
            return float(v["doubleValue"])
        except (TypeError, ValueError):
            return None
    if "arrayValue" in v:
        return [_json_value(x) for x in (v["arrayValue"] or {}).get("values", []) or []]
    if "kvlistValue" in v:
        return _json_attrs((v["kvlistValue"] or {}).get("values", []))
    if "bytesValue" in v:
        try:
            return base64.b64decode(v["bytesValue"]).hex()
        except (ValueError, TypeError):
            return None
    return None


def _json_attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(kvs, list):
        return out
    for kv in kvs:
        if isinstance(kv, dict):
            key = kv.get("key")
            if isinstance(key, str):
                v = kv.get("value")
                out[key] = v["stringValue"] if type(v) is dict and "stringValue" in v else _json_value(v)
    return out


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return -1


def _list(obj: dict, *keys: str) -> list:
    for k in keys:
        v = obj.get(k)
        if v is not None:
            if not isinstance(v, list):
                raise DecodeError(f"{k} must be an array, got {type(v).__name__}", field=k)
            return v
    return []


def _hex_id(v: Any) -> str:
    return v.lower() if isinstance(v, str) else ""


def decode_json(doc: Any) -> DecodeResult:
    """Decode an ``ExportTraceServiceRequest`` already parsed from OTLP/JSON."""
    if not isinstance(doc, dict):
        raise DecodeError("OTLP/JSON body must be an object with resourceSpans", field="resourceSpans")
    result = DecodeResult()
    index = 0
    for ri, rs in enumerate(_list(doc, "resourceSpans", "resource_spans")):
        if not isinstance(rs, dict):
            raise DecodeError(f"resourceSpans[{ri}] must be an object", field=f"resourceSpans[{ri}]")
        resource = _json_attrs((rs.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name") or "unknown_service")
        for si, ss in enumerate(_list(rs, "scopeSpans", "scope_spans", "instrumentationLibrarySpans")):
            if not isinstance(ss, dict):
                raise DecodeError(f"resourceSpans[{ri}].scopeSpans[{si}] must be an object",
                                  field=f"resourceSpans[{ri}].scopeSpans[{si}]")
            for sp in _list(ss, "spans"):
                if not isinstance(sp, dict):
                    result.reject(index, "malformed_span", "span must be an object")
                    index += 1
                    continue
                exc = None
                for ev in sp.get("events") or ():
                    if isinstance(ev, dict) and ev.get("name") == "exception":
                        exc = _json_attrs(ev.get("attributes"))
                        break
                status = sp.get("status") or {}
                if not isinstance(status, dict):
                    status = {}
                code = status.get("code", 0)
                if isinstance(code, str):  # tolerate the enum-name form
                    code = STATUS_CODE_ERROR if code.endswith("ERROR") else 0
                kind = sp.get("kind", 0)
                if not isinstance(kind, int):
                    kind = {"SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4,
                            "SPAN_KIND_CONSUMER": 5}.get(kind, 1)
                name = sp.get("name")
                _finish(result, index, _hex_id(sp.get("traceId")), _hex_id(sp.get("spanId")),
                        _hex_id(sp.get("parentSpanId")), name if isinstance(name, str) else "", kind,
                        _int(sp.get("startTimeUnixNano")), _int(sp.get("endTimeUnixNano")),
                        _json_attrs(sp.get("attributes")), resource, service, code,
                        str(status.get("message") or ""), exc)
                index += 1
    return result
