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
    if type(kvs) is not list:
        return out
    for kv in kvs:
        try:
            key, v = kv["key"], kv["value"]
            sv = v.get("stringValue")
        except (KeyError, TypeError, AttributeError):
            continue  # a malformed attribute is dropped, not the span
        if type(key) is str:
            out[key] = sv if sv is not None else _json_value(v)
    return out


def _json_scan(kvs: Any) -> tuple[dict[str, Any], bool]:
    out: dict[str, Any] = {}
    web = False
    if type(kvs) is not list:
        return out, web
    for kv in kvs:
        try:
            key = kv["key"]
        except (KeyError, TypeError):
            continue
        if type(key) is not str:
            continue
        if key in WANTED_KEYS:
            try:
                out[key] = _json_value(kv["value"])
            except (KeyError, TypeError):
                pass
        elif not web and key.startswith(WEB_PREFIXES):
            web = True
    return out, web


def _int(v: Any) -> int:
    t = type(v)
    if t is str:
        return int(v) if v.isdigit() else -1
    return v if t is int else -1


def _list(obj: dict, *keys: str) -> list:
    for k in keys:
        v = obj.get(k)
        if v is not None:
            if not isinstance(v, list):
                raise DecodeError(f"{k} must be an array, got {type(v).__name__}", field=k)
            return v
    return []


def _hex_id(v: Any) -> str:
    return v.lower() if type(v) is str else ""


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
                tid, sid = _hex_id(sp.get("traceId")), _hex_id(sp.get("spanId"))
                parent = _hex_id(sp.get("parentSpanId"))
                start, end = _int(sp.get("startTimeUnixNano")), _int(sp.get("endTimeUnixNano"))
                if not _TRACE_ID(tid) or tid == ZERO_TRACE_HEX:
                    result.reject(index, "invalid_trace_id", f"traceId must be 32 hex digits, got {tid!r}")
                elif not _SPAN_ID(sid) or sid == ZERO_SPAN_HEX:
                    result.reject(index, "invalid_span_id", f"spanId must be 16 hex digits, got {sid!r}")
                elif parent and not _SPAN_ID(parent):
                    result.reject(index, "invalid_span_id", f"parentSpanId must be 16 hex digits, got {parent!r}")
                elif start <= 0 or end < start:
                    result.reject(index, "invalid_time",
                                  f"needs 0 < startTimeUnixNano <= endTimeUnixNano, got {start}..{end}")
                elif not name or not isinstance(name, str):
                    result.reject(index, "missing_field", "span name is empty")
                else:
                    raw = sp.get("attributes")
                    wanted, web = _json_scan(raw)
                    s = _span(tid, sid, parent, name, kind, start, end, wanted, resource, service, code,
                              str(status.get("message") or ""), exc, web)
                    s.defer_attributes(_json_attrs, raw)
                    result.spans.append(s)
                index += 1
    return result
