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
import re
from typing import Any

import msgspec
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
ZERO_TRACE, ZERO_SPAN = bytes(16), bytes(8)
ZERO_TRACE_HEX, ZERO_SPAN_HEX = "0" * 32, "0" * 16
_TRACE_ID = re.compile(r"[0-9a-f]{32}").fullmatch
_SPAN_ID = re.compile(r"[0-9a-f]{16}").fullmatch


#: The only attribute keys the metric mapping reads; the rest are decoded lazily.
WANTED_KEYS = frozenset({
    *c.ATTR_WORKFLOW, *c.ATTR_CORRELATION_ID, c.ATTR_LAYER, c.ATTR_COMPONENT, "flowscope.status",
    "db.system", "db.system.name", "messaging.system", "rpc.service", "peer.service", "server.address",
    "net.peer.name", "error.type",
})
WEB_PREFIXES = ("http.", "url.", "rpc.")


def derive_layer(attrs: dict[str, Any], kind: int, resource: dict[str, Any], web: bool | None = None) -> str:
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
        if web is None:
            web = any(k.startswith(WEB_PREFIXES) for k in attrs)
        if web:
            return "api" if kind == KIND_SERVER else "external"
    return "other"


def derive_component(attrs: dict[str, Any], kind: int, service: str) -> str:
    v = (attrs.get(c.ATTR_COMPONENT) or attrs.get("db.system") or attrs.get("db.system.name")
         or attrs.get("messaging.system") or attrs.get("rpc.service"))
    if v is None and kind == KIND_CLIENT:
        v = attrs.get("peer.service") or attrs.get("server.address") or attrs.get("net.peer.name")
    return str(v) if v is not None else service


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


_WF1, _WF2 = c.ATTR_WORKFLOW
_CID1, _CID2 = c.ATTR_CORRELATION_ID


def _span(trace_id: str, span_id: str, parent: str, name: str, kind: int, start: int, end: int, attrs: dict,
          resource: dict, service: str, code: int, message: str, exc: dict | None, web: bool | None = None) -> Span:
    """Map one validated OTLP span to the model (shared by both encodings).

    ``attrs`` may hold only the :data:`WANTED_KEYS`; ``web`` then says whether
    any ``http.*``/``url.*``/``rpc.*`` key was present.
    """
    if code == 0 and "flowscope.status" not in attrs:
        status = etype = emsg = None
        status = "ok"
    else:
        status, etype, emsg = _status(code, message, attrs, exc)
    wf = attrs.get(_WF1) or attrs.get(_WF2)
    corr = attrs.get(_CID1) or attrs.get(_CID2)
    return Span(trace_id, span_id, str(wf) if wf else None, derive_layer(attrs, kind, resource, web),
                derive_component(attrs, kind, service), name, start, end, status, parent or None,
                str(corr) if corr else None, service, etype, emsg, attrs, None, True, None,
                exc.get("exception.stacktrace") if exc else None)


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


def _pb_scan(kvs) -> tuple[dict[str, Any], bool]:
    """The wanted attributes, and whether any key is http.*/url.*/rpc.*, in one pass."""
    out = {}
    web = False
    for kv in kvs:
        k = kv.key
        if k in WANTED_KEYS:
            out[k] = _pb_value(kv.value)
        elif not web and k.startswith(WEB_PREFIXES):
            web = True
    return out, web


def decode_protobuf(body: bytes) -> DecodeResult:
    """Decode an ``ExportTraceServiceRequest`` in protobuf binary."""
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (PbDecodeError, ValueError, RuntimeError) as e:
        raise DecodeError(f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {e}") from None
    result = DecodeResult()
    append = result.spans.append
    index = 0
    for rs in req.resource_spans:
        resource = _pb_attrs(rs.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for ss in rs.scope_spans:
            for sp in ss.spans:
                exc = None
                if sp.events:
                    for ev in sp.events:
                        if ev.name == "exception":
                            exc = _pb_attrs(ev.attributes)
                            break
                tid, sid = sp.trace_id, sp.span_id
                start, end = sp.start_time_unix_nano, sp.end_time_unix_nano
                if len(tid) != 16 or tid == ZERO_TRACE:
                    result.reject(index, "invalid_trace_id", f"traceId must be 16 non-zero bytes, got {tid.hex()!r}")
                elif len(sid) != 8 or sid == ZERO_SPAN:
                    result.reject(index, "invalid_span_id", f"spanId must be 8 non-zero bytes, got {sid.hex()!r}")
                elif start <= 0 or end < start:
                    result.reject(index, "invalid_time",
                                  f"needs 0 < startTimeUnixNano <= endTimeUnixNano, got {start}..{end}")
                elif not sp.name:
                    result.reject(index, "missing_field", "span name is empty")
                else:
                    st = sp.status
                    raw = sp.attributes
                    wanted, web = _pb_scan(raw)
                    s = _span(tid.hex(), sid.hex(), sp.parent_span_id.hex(), sp.name, sp.kind, start, end,
                              wanted, resource, service, st.code, st.message, exc, web)
                    s.defer_attributes(_pb_attrs, raw)
                    append(s)
                index += 1
    return result


# --- JSON ----------------------------------------------------------------------------------
#
# OTLP/JSON is decoded by msgspec straight into the structs below: one pass, no
# intermediate dict tree, and a type error names its exact JSON path. Unknown
# fields are ignored, as the OTLP spec asks of receivers.

_FROZEN = dict(rename="camel", frozen=True)


class _AnyValue(msgspec.Struct, **_FROZEN):
    string_value: str | None = None
    int_value: int | str | None = None
    bool_value: bool | None = None
    double_value: float | str | None = None
    array_value: Any = None
    kvlist_value: Any = None
    bytes_value: str | None = None


_EMPTY_VALUE = _AnyValue()


class _KeyValue(msgspec.Struct, **_FROZEN):
    key: str
    value: _AnyValue | None = _EMPTY_VALUE


class _Status(msgspec.Struct, **_FROZEN):
    code: int | str | None = 0
    message: str | None = ""


class _Event(msgspec.Struct, **_FROZEN):
    name: str | None = ""
    attributes: list[_KeyValue] | None = None


class _JSpan(msgspec.Struct, **_FROZEN):
    trace_id: str | None = ""
    span_id: str | None = ""
    parent_span_id: str | None = ""
    name: str | None = ""
    kind: int | str | None = 0
    start_time_unix_nano: int | str | None = 0
    end_time_unix_nano: int | str | None = 0
    attributes: list[_KeyValue] | None = None
    events: list[_Event] | None = None
    status: _Status | None = None


class _ScopeSpans(msgspec.Struct, **_FROZEN):
    spans: list[_JSpan] | None = None


class _Resource(msgspec.Struct, **_FROZEN):
    attributes: list[_KeyValue] | None = None


class _ResourceSpans(msgspec.Struct, **_FROZEN):
    resource: _Resource | None = None
    scope_spans: list[_ScopeSpans] | None = None


class _ExportRequest(msgspec.Struct, **_FROZEN):
    resource_spans: list[_ResourceSpans] | None = None


_decoder = msgspec.json.Decoder(_ExportRequest)
_KINDS = {"SPAN_KIND_INTERNAL": 1, "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3, "SPAN_KIND_PRODUCER": 4,
          "SPAN_KIND_CONSUMER": 5}


def _jv(v: _AnyValue | None) -> Any:
    if v is None:
        return None
    if v.string_value is not None:
        return v.string_value
    if v.int_value is not None:
        try:
            return int(v.int_value)
        except ValueError:
            return None
    if v.bool_value is not None:
        return v.bool_value
    if v.double_value is not None:
        try:
            return float(v.double_value)
        except ValueError:
            return None
    if v.array_value is not None:
        return _json_value({"arrayValue": v.array_value})
    if v.kvlist_value is not None:
        return _json_value({"kvlistValue": v.kvlist_value})
    if v.bytes_value is not None:
        return _json_value({"bytesValue": v.bytes_value})
    return None


def _json_value(v: Any) -> Any:
    """An AnyValue in its JSON (dict) form; used for arrays and kvlists."""
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
        return {kv["key"]: _json_value(kv.get("value")) for kv in (v["kvlistValue"] or {}).get("values", []) or []
                if isinstance(kv, dict) and isinstance(kv.get("key"), str)}
    if "bytesValue" in v:
        try:
            return base64.b64decode(v["bytesValue"]).hex()
        except (ValueError, TypeError):
            return None
    return None


def _j_attrs(kvs: list[_KeyValue] | None) -> dict[str, Any]:
    if not kvs:
        return {}
    return {kv.key: (kv.value.string_value if kv.value is not None and kv.value.string_value is not None
                     else _jv(kv.value)) for kv in kvs}


def _j_scan(kvs: list[_KeyValue] | None) -> tuple[dict[str, Any], bool]:
    out: dict[str, Any] = {}
    web = False
    if kvs:
        for kv in kvs:
            k = kv.key
            if k in WANTED_KEYS:
                out[k] = _jv(kv.value)
            elif not web and k.startswith(WEB_PREFIXES):
                web = True
    return out, web


def _int(v: Any) -> int:
    if type(v) is int:
        return v
    if type(v) is str:
        try:
            return int(v)
        except ValueError:
            return -1
    return -1


def decode_json(body: bytes) -> DecodeResult:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest`` body."""
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as e:
        msg = str(e)
        path = msg.rsplit("at `", 1)[1].rstrip("`") if "at `" in msg else "$"
        raise DecodeError(f"OTLP/JSON body does not match ExportTraceServiceRequest: {msg}", field=path) from None
    except msgspec.DecodeError as e:
        raise DecodeError(f"body is not valid JSON: {e}") from None
    result = DecodeResult()
    append = result.spans.append
    index = 0
    for rs in req.resource_spans or ():
        resource = _j_attrs(rs.resource.attributes if rs.resource else None)
        service = str(resource.get("service.name") or "unknown_service")
        for ss in rs.scope_spans or ():
            for sp in ss.spans or ():
                exc = None
                if sp.events:
                    for ev in sp.events:
                        if ev.name == "exception":
                            exc = _j_attrs(ev.attributes)
                            break
                st = sp.status
                code = st.code if st is not None else 0
                if type(code) is str:  # tolerate the enum-name form
                    code = STATUS_CODE_ERROR if code.endswith("ERROR") else 0
                kind = sp.kind
                if type(kind) is not int:
                    kind = _KINDS.get(kind, 1)
                name = sp.name
                tid = (sp.trace_id or "").lower()
                sid = (sp.span_id or "").lower()
                parent = (sp.parent_span_id or "").lower()
                start, end = _int(sp.start_time_unix_nano), _int(sp.end_time_unix_nano)
                if not _TRACE_ID(tid) or tid == ZERO_TRACE_HEX:
                    result.reject(index, "invalid_trace_id", f"traceId must be 32 hex digits, got {tid!r}")
                elif not _SPAN_ID(sid) or sid == ZERO_SPAN_HEX:
                    result.reject(index, "invalid_span_id", f"spanId must be 16 hex digits, got {sid!r}")
                elif parent and not _SPAN_ID(parent):
                    result.reject(index, "invalid_span_id", f"parentSpanId must be 16 hex digits, got {parent!r}")
                elif start <= 0 or end < start:
                    result.reject(index, "invalid_time",
                                  f"needs 0 < startTimeUnixNano <= endTimeUnixNano, got {start}..{end}")
                elif not name:
                    result.reject(index, "missing_field", "span name is empty")
                else:
                    raw = sp.attributes
                    wanted, web = _j_scan(raw)
                    s = _span(tid, sid, parent, name, kind, start, end, wanted, resource, service, code or 0,
                              (st.message or "") if st is not None else "", exc, web)
                    s.defer_attributes(_j_attrs, raw)
                    append(s)
                index += 1
    return result
