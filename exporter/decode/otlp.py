"""OTLP/HTTP trace requests (protobuf or JSON) → spans.

The layer, the component and the span name come from OpenTelemetry semantic
conventions, one table in :mod:`exporter.semconv`; an explicit ``flowscope.layer``
attribute wins. The workflow comes from the ``flowscope.workflow`` /
``workflow.type`` attribute; when a span has neither,
``Span.workflow`` is left ``None`` and :class:`exporter.resolver.WorkflowResolver`
names it after the trace's root span, which may arrive in a later request.

OTLP/JSON follows the protobuf JSON mapping with the OTLP exceptions: trace
and span IDs are hex strings, enums are integers, and 64-bit integers may be
strings. See https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding

Every span detail is kept: ``Span.kind`` (internal/server/client/producer/consumer;
an unknown kind as given), ``Span.resource`` (all resource attributes, one dict
shared by the spans of a ResourceSpans), and ``Span.events`` /
``Span.links``, decoded on first read like the attributes (the metrics path never
reads them). A link whose ids are malformed is dropped, not its span.

``enduser.id`` / ``user.id`` on a root span become ``Span.user``, hashed like the
native ``user``. State for time travel: a span event named ``flowscope.state``
with an attribute ``state`` holding JSON text, or a span attribute
``flowscope.state`` holding JSON text (the event wins)::

    span.add_event("flowscope.state", {"state": json.dumps({"cart": 3})})

Text that is not JSON is kept as ``{"value": text}`` and counted as a cut value;
a snapshot over the store's ``state_max_bytes`` is cut by
:func:`exporter.runstore.cap_state`.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec
import orjson
from google.protobuf.message import DecodeError as PbDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as _PbSpan

from .. import conventions as c
from .. import semconv
from ..errors import DecodeError
from ..model import Span, hash_user
from ..semconv import WANTED_KEYS, WEB_PREFIXES, derive_component, derive_layer  # noqa: F401 - re-exported
from ..validate import (
    MAX_DEPTH,
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_TIME_NS,
    MAX_VALUE_CHARS,
    TOO_DEEP,
    Invalid,
    check_interval,
    clean_label,
    clean_str,
    clean_text,
    clean_value,
)
from . import DecodeResult

_new_span = object.__new__  # see _span
#: The one attribute a span keeps when its attributes could not be read at all.
INVALID_ATTRIBUTES = "flowscope.invalid_attributes"

STATUS_CODE_ERROR = 2

ZERO_TRACE, ZERO_SPAN = bytes(16), bytes(8)
ZERO_TRACE_HEX, ZERO_SPAN_HEX = "0" * 32, "0" * 16
_TRACE_ID = re.compile(r"[0-9a-f]{32}").fullmatch
_SPAN_ID = re.compile(r"[0-9a-f]{16}").fullmatch
#: An OTLP/JSON int64 given as text: ASCII digits only (``"²".isdigit()`` is True).
_INT64_TEXT = re.compile(r"-?[0-9]{1,19}").fullmatch

#: The span event / attribute that carries state for time travel, and the event attribute holding its JSON.
STATE_EVENT = STATE_ATTR = "flowscope.state"
STATE_EVENT_KEY = "state"
#: JSON state text longer than this is not parsed at all: it is stored as the cap marker alone.
MAX_STATE_CHARS = 1 << 20
#: Semantic-convention user ids, read (and hashed) on root spans.
USER_ATTRS = ("enduser.id", "user.id")
#: What the decoder reads eagerly: the semconv keys, the state attribute and the user ids.
_WANTED = WANTED_KEYS | {STATE_ATTR, *USER_ATTRS}
#: OTLP SpanKind numbers → names; 0 (unspecified) is no kind.
KIND_NAMES = (None, "internal", "server", "client", "producer", "consumer")
_KIND_JSON_NAMES = {f"SPAN_KIND_{n.upper()}": n for n in KIND_NAMES[1:]}
_KIND_JSON_NAMES["SPAN_KIND_UNSPECIFIED"] = None
#: Kinds are stored in a 16-character column; an unknown one is kept as given, cut to this.
MAX_KIND_CHARS = 16


# The semantic-conventions mapping (layer, component, span name) and the attribute keys it reads
# eagerly live in one table, exporter/semconv.py; the names stay importable from here.
_classify, _span_name, _HTTP_SPAN_NAMES = semconv.classify, semconv.span_name, semconv.HTTP_SPAN_NAMES


def _status(code: int, message: str, attrs: dict[str, Any], exc: dict[str, Any] | None):
    """(status, error_type, error_message) from the OTLP status and exception event."""
    explicit = attrs.get("flowscope.status")
    if type(explicit) is str and explicit in c.STATUSES:
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


def _label(v: Any, field: str, result: DecodeResult) -> str:
    if type(v) is str and len(v) <= MAX_LABEL_CHARS and v.isascii() and "\x00" not in v:
        return v  # the common case, without a call
    try:
        out, cut = clean_label(v)
    except Invalid as e:
        raise Invalid(e.reason, f"{field}: {e.detail}") from None
    if cut:
        result.truncated += 1
    return out


def _span(trace_id: str, span_id: str, parent: str, name: str, kind: int, start: int, end: int, attrs: dict,
          resource: dict, service: str, code: int, message: str, exc: dict | None, web: bool | None,
          result: DecodeResult, kind_name: str | None = None, state_text: Any = None) -> Span:
    """Map one OTLP span to the model (shared by both encodings); :class:`Invalid` refuses it.

    ``attrs`` may hold only the :data:`WANTED_KEYS`; ``web`` then says whether
    any ``http.*``/``url.*``/``rpc.*`` key was present. Every name that becomes
    a label passes the boundary check (:mod:`exporter.validate`) here.
    """
    if not (type(start) is int and type(end) is int and 0 < start <= end <= MAX_TIME_NS):
        check_interval(start, end)  # raises, naming the times
    if code == 0 and "flowscope.status" not in attrs:
        status = etype = emsg = None
        status = "ok"
    else:
        status, etype, emsg = _status(code, message, attrs, exc)
    wf = attrs.get(_WF1) or attrs.get(_WF2)
    corr = attrs.get(_CID1) or attrs.get(_CID2)
    explicit_layer = attrs.get(c.ATTR_LAYER)
    if explicit_layer is not None and type(explicit_layer) is not str:
        raise Invalid("invalid_value", f"{c.ATTR_LAYER} must be a string, got {type(explicit_layer).__name__}")
    if corr:
        corr = _label(corr, "correlation_id", result)
        if len(corr) > MAX_ID_CHARS:
            raise Invalid("invalid_value", f"correlation_id is longer than {MAX_ID_CHARS} characters")
    layer, component = _classify(attrs, kind, resource, service, web)
    if (name in _HTTP_SPAN_NAMES or name.isupper()) and ("http.route" in attrs or "url.template" in attrs):
        name = _span_name(name, attrs)  # named by its HTTP method alone: "GET" → "GET /users/{id}"
    if state_text is None:
        state_text = attrs.get(STATE_ATTR)
    # Every slot set by name, without Span.__init__: keyword arguments would cost ~0.5 us a span here
    # (the hot path of ingest); tests/test_model.py checks that no slot is left unset.
    s = _new_span(Span)
    s.trace_id = trace_id
    s.span_id = span_id
    s.parent_span_id = parent or None
    s.correlation_id = corr or trace_id
    s.workflow = _label(wf, "workflow", result) if wf else None
    s.service = service
    s.layer = layer
    s.component = _label(component, "component", result)
    s.operation = _label(name, "name", result)
    s.start_ns = start
    s.end_ns = end
    s.status = status
    s.error_type = _label(etype, "error.type", result) if etype else None
    s.error_message = clean_text(emsg) if emsg else None
    s._attrs = attrs
    s._raw_attrs = None
    s.state = None if state_text is None else _state(state_text, result)
    s.is_step = True
    s.user = None
    s.stack_trace = clean_text(exc.get("exception.stacktrace")) if exc else None
    s.kind = kind_name
    s.resource = resource
    s._details = None
    if not parent:
        user = attrs.get(USER_ATTRS[0])
        if user is None:
            user = attrs.get(USER_ATTRS[1])
        if user is not None and user != "" and not isinstance(user, (dict, list)):
            s.user = hash_user(clean_text(user))
    return s


def _state(v: Any, result: DecodeResult) -> dict[str, Any]:
    """A ``flowscope.state`` value as a state snapshot; never raises.

    JSON object text becomes the snapshot (cut to the boundary's caps); other JSON becomes
    ``{"value": ...}``, as the store keeps any non-object state. Text that is not JSON is kept
    as ``{"value": text}``, and text over :data:`MAX_STATE_CHARS` as the cap marker alone; both
    are counted as cut values.
    """
    if type(v) is str:
        if len(v) > MAX_STATE_CHARS:
            result.truncated += 1
            return {c.TRUNCATED_KEY: {"original_bytes": len(v.encode("utf-8", "replace")),
                                      "max_bytes": MAX_STATE_CHARS, "dropped_keys": [], "dropped_key_count": 0}}
        try:
            v = orjson.loads(v)
        except orjson.JSONDecodeError:
            result.truncated += 1
            return {"value": clean_str(v, MAX_VALUE_CHARS)[0]}
    try:
        out, cut = clean_value(v if type(v) is dict else {"value": v})
    except RecursionError:  # orjson parses deeper than clean_value recurses only past 1024 levels: never, but total
        out, cut = {"value": TOO_DEEP}, True
    result.truncated += cut
    return out


def _kind_name(kind: Any) -> str | None:
    """A span kind as its name; an unknown one as given (cut to :data:`MAX_KIND_CHARS`)."""
    if type(kind) is int:
        return KIND_NAMES[kind] if 0 <= kind < 6 else str(kind)[:MAX_KIND_CHARS]
    if type(kind) is str:
        return _KIND_JSON_NAMES[kind] if kind in _KIND_JSON_NAMES else clean_str(kind, MAX_KIND_CHARS)[0] or None
    return None


def _clean_details(events: list, links: list) -> tuple[list | None, list | None]:
    """Events and links through the boundary's sanitiser (one budget each)."""
    for ev in events:
        name = ev["name"]
        if type(name) is not str or not (len(name) <= MAX_LABEL_CHARS and name.isascii() and "\x00" not in name):
            ev["name"] = clean_label(name)[0] if name is not None else ""
    return (clean_value(events)[0] if events else None), (clean_value(links)[0] if links else None)


def _event_time(t: Any) -> int | None:
    return t if type(t) is int and 0 < t <= MAX_TIME_NS else None


def _lazy_details(decode):
    """``(events, links)`` decoded on first read; never raises (an unreadable part becomes a marker event)."""
    def details(raw) -> tuple[list | None, list | None]:
        try:
            return _clean_details(*decode(raw))
        except (RecursionError, ValueError, TypeError, AttributeError, OverflowError, Invalid) as e:
            return [{"name": INVALID_ATTRIBUTES, "time_ns": None,
                     "attributes": {"error": f"{type(e).__name__}: {e}"[:200]}}], None
    return details


def _service(resource: dict, result: DecodeResult) -> str:
    v = resource.get("service.name")
    if not v or isinstance(v, (dict, list)):
        return "unknown_service"
    return _label(v, "service.name", result)


def _lazy(decode):
    """Attributes decoded on first read, through the boundary's sanitiser; never raises."""
    def attrs(raw) -> dict[str, Any]:
        try:
            return clean_value(decode(raw))[0]
        except (RecursionError, ValueError, TypeError, AttributeError, OverflowError) as e:
            return {INVALID_ATTRIBUTES: f"{type(e).__name__}: {e}"[:200]}
    return attrs


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
        s = v.string_value  # most values are text: one read, and WhichOneof only for the rest ("" included)
        out[kv.key] = s if s else _pb_value(v)
    return out


def _pb_details(sp) -> tuple[list, list]:
    """A protobuf span's events and links, unsanitised (:func:`_clean_details` follows)."""
    if not sp.events and not sp.links:  # most spans: nothing to build
        return [], []
    events = [{"name": ev.name, "time_ns": _event_time(ev.time_unix_nano), "attributes": _pb_attrs(ev.attributes)}
              for ev in sp.events]
    links = []
    for ln in sp.links:
        tid, sid = ln.trace_id, ln.span_id
        if len(tid) == 16 and tid != ZERO_TRACE and len(sid) == 8 and sid != ZERO_SPAN:  # else dropped, not the span
            links.append({"trace_id": tid.hex(), "span_id": sid.hex(), "attributes": _pb_attrs(ln.attributes)})
    return events, links


def _pb_scan(kvs) -> tuple[dict[str, Any], bool]:
    """The wanted attributes, and whether any key is http.*/url.*/rpc.*, in one pass."""
    out = {}
    web = False
    for kv in kvs:
        k = kv.key
        if k in _WANTED:
            out[k] = _pb_value(kv.value)
        elif not web and k.startswith(WEB_PREFIXES):
            web = True
    return out, web


def _special_events(events, attrs) -> tuple[dict | None, Any]:
    """(the first ``exception`` event's attributes, the last ``flowscope.state`` event's state), either
    encoding: ``attrs`` decodes an event's attributes."""
    exc = state = None
    for ev in events:
        n = ev.name
        if n == "exception":
            if exc is None:
                exc = attrs(ev.attributes)
        elif n == STATE_EVENT:
            state = attrs(ev.attributes).get(STATE_EVENT_KEY, state)
    return exc, state


def _pb_span_attrs(sp) -> dict[str, Any]:
    return _PB_LAZY(sp.attributes)


_PB_LAZY = _lazy(_pb_attrs)
_PB_DETAILS = _lazy_details(_pb_details)


def pb_span_bytes(s: Span) -> bytes | None:
    """The protobuf span ``s`` was decoded from, as bytes, while its attributes and its events and links are both
    still unread (so nothing has changed them): the run store's writer process decodes them itself
    (:func:`span_from_pb_bytes`). None when ``s`` did not come from :func:`decode_protobuf` or was read."""
    raw, details = s._raw_attrs, s._details
    if raw is None or raw[0] is not _pb_span_attrs or type(details) is not list:
        return None
    return raw[1].SerializeToString()  # type: ignore[no-any-return]


def defer_to_pb_bytes(s: Span, data: bytes) -> None:
    """Give ``s`` back the attributes, events and links of :func:`pb_span_bytes`, decoded on first read."""
    sp = _PbSpan.FromString(data)
    s._attrs, s._raw_attrs = None, (_pb_span_attrs, sp)
    s._details = [_PB_DETAILS, sp]


def decode_protobuf(body: bytes) -> DecodeResult:
    """Decode an ``ExportTraceServiceRequest`` in protobuf binary."""
    req = ExportTraceServiceRequest()
    try:
        req.ParseFromString(body)
    except (PbDecodeError, ValueError, RuntimeError, RecursionError, UnicodeDecodeError) as e:
        raise DecodeError(f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {e}") from None
    result = DecodeResult()
    append = result.spans.append
    index = 0
    for rs in req.resource_spans:
        resource = clean_value(_pb_attrs(rs.resource.attributes))[0]
        service = _service(resource, result)
        for ss in rs.scope_spans:
            scope = ss.spans
            details = _lazy_details(lambda k, scope=scope: _pb_details(scope[k]))
            k = -1
            for sp in scope:
                k += 1
                tid, sid, parent = sp.trace_id, sp.span_id, sp.parent_span_id
                cuts = result.truncated
                try:
                    if len(tid) != 16 or tid == ZERO_TRACE:
                        raise Invalid("invalid_trace_id", f"traceId must be 16 non-zero bytes, got {tid.hex()!r}")
                    if len(sid) != 8 or sid == ZERO_SPAN:
                        raise Invalid("invalid_span_id", f"spanId must be 8 non-zero bytes, got {sid.hex()!r}")
                    if parent and len(parent) != 8:
                        raise Invalid("invalid_span_id", f"parentSpanId must be 8 bytes, got {parent.hex()!r}")
                    if not sp.name:
                        raise Invalid("missing_field", "span name is empty")
                    exc, state = _special_events(sp.events, _pb_attrs) if sp.events else (None, None)
                    st = sp.status
                    raw = sp.attributes
                    wanted, web = _pb_scan(raw)
                    kind = sp.kind
                    s = _span(tid.hex(), sid.hex(), parent.hex(), sp.name, kind, sp.start_time_unix_nano,
                              sp.end_time_unix_nano, wanted, resource, service, st.code, st.message, exc, web,
                              result, KIND_NAMES[kind] if 0 <= kind < 6 else _kind_name(kind), state)
                except Invalid as e:
                    result.truncated = cuts  # a refused span's cuts are not counted: it changes nothing
                    result.reject(index, e.reason, e.detail)
                else:
                    s._attrs, s._raw_attrs = None, (_pb_span_attrs, sp)  # on first read (Span.defer_attributes)
                    # events and links on first read, found by index: keeping each span's message alive costs
                    s._details = [details, k]
                    append(s)
                index += 1
    return result


# --- JSON ----------------------------------------------------------------------------------
#
# OTLP/JSON is decoded by msgspec straight into the structs below: one pass, no
# intermediate dict tree, and a type error names its exact JSON path. Unknown
# fields are ignored, as the OTLP spec asks of receivers.

_FROZEN = {"rename": "camel", "frozen": True}


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
    time_unix_nano: int | str | None = 0
    attributes: list[_KeyValue] | None = None


class _Link(msgspec.Struct, **_FROZEN):
    trace_id: str | None = ""
    span_id: str | None = ""
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
    links: list[_Link] | None = None
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
        x = v.int_value
        if type(x) is int:
            return x
        return int(x) if _INT64_TEXT(x) else None
    if v.bool_value is not None:
        return v.bool_value
    if v.double_value is not None:
        try:
            return float(v.double_value)
        except (ValueError, OverflowError):
            return None
    if v.array_value is not None:
        return _json_value({"arrayValue": v.array_value})
    if v.kvlist_value is not None:
        return _json_value({"kvlistValue": v.kvlist_value})
    if v.bytes_value is not None:
        return _json_value({"bytesValue": v.bytes_value})
    return None


def _values(container: Any, key: str) -> list:
    """``container[key]["values"]`` when the shapes are right (OTLP/JSON arrays and kvlists), else []."""
    inner = container.get(key)
    if not isinstance(inner, dict):
        return []
    vals = inner.get("values")
    return vals if isinstance(vals, list) else []


def _json_value(v: Any, depth: int = 0) -> Any:
    """An AnyValue in its JSON (dict) form; used for arrays and kvlists. Total: odd shapes become None,
    and nesting past :data:`~exporter.validate.MAX_DEPTH` becomes a marker (so recursion is bounded)."""
    if not isinstance(v, dict):
        return None
    if depth > MAX_DEPTH:
        return TOO_DEEP
    if "stringValue" in v:
        x = v["stringValue"]
        return x if type(x) is str else None
    if "intValue" in v:
        x = v["intValue"]
        if type(x) is int:
            return x
        return int(x) if type(x) is str and _INT64_TEXT(x) else None
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "doubleValue" in v:
        x = v["doubleValue"]
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return float(x) if abs(x) < 1e308 or isinstance(x, float) else None
        if type(x) is str and len(x) <= 40:
            try:
                return float(x)
            except ValueError:
                return None
        return None
    if "arrayValue" in v:
        return [_json_value(x, depth + 1) for x in _values(v, "arrayValue")]
    if "kvlistValue" in v:
        return {kv["key"]: _json_value(kv.get("value"), depth + 1) for kv in _values(v, "kvlistValue")
                if isinstance(kv, dict) and isinstance(kv.get("key"), str)}
    if "bytesValue" in v:
        x = v["bytesValue"]
        if type(x) is not str:
            return None
        try:
            return base64.b64decode(x).hex()
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
            if k in _WANTED:
                out[k] = _jv(kv.value)
            elif not web and k.startswith(WEB_PREFIXES):
                web = True
    return out, web


def _j_details(sp: _JSpan) -> tuple[list, list]:
    """An OTLP/JSON span's events and links, unsanitised (:func:`_clean_details` follows)."""
    events = [{"name": ev.name or "", "time_ns": _event_time(_int(ev.time_unix_nano)),
               "attributes": _j_attrs(ev.attributes)} for ev in sp.events or ()]
    links = []
    for ln in sp.links or ():
        tid, sid = (ln.trace_id or "").lower(), (ln.span_id or "").lower()
        if _TRACE_ID(tid) and tid != ZERO_TRACE_HEX and _SPAN_ID(sid) and sid != ZERO_SPAN_HEX:  # else dropped
            links.append({"trace_id": tid, "span_id": sid, "attributes": _j_attrs(ln.attributes)})
    return events, links


def _int(v: Any) -> int:
    """A uint64 given as a number or a decimal string (the OTLP/JSON forms); -1 when it is neither."""
    if type(v) is int:
        return v
    if type(v) is str and 0 < len(v) <= 20 and v.isascii() and v.isdigit():
        return int(v)
    return -1


def decode_json(body: bytes) -> DecodeResult:
    """Decode an OTLP/JSON ``ExportTraceServiceRequest`` body."""
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as e:
        msg = str(e)
        path = msg.rsplit("at `", 1)[1].rstrip("`") if "at `" in msg else "$"
        raise DecodeError(f"OTLP/JSON body does not match ExportTraceServiceRequest: {msg}", field=path) from None
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as e:
        raise DecodeError(f"body is not valid JSON: {e}") from None
    except RecursionError:
        raise DecodeError("body is nested too deeply") from None
    result = DecodeResult()
    append = result.spans.append
    lazy = _lazy(_j_attrs)
    details = _lazy_details(_j_details)
    index = 0
    for rs in req.resource_spans or ():
        resource = clean_value(_j_attrs(rs.resource.attributes if rs.resource else None))[0]
        service = _service(resource, result)
        for ss in rs.scope_spans or ():
            for sp in ss.spans or ():
                cuts = result.truncated
                try:
                    st = sp.status
                    code = st.code if st is not None else 0
                    if type(code) is str:  # tolerate the enum-name form
                        code = STATUS_CODE_ERROR if code.endswith("ERROR") else 0
                    kind = sp.kind
                    kind_name = KIND_NAMES[kind] if type(kind) is int and 0 <= kind < 6 else _kind_name(kind)
                    if type(kind) is not int:
                        kind = _KINDS.get(kind, 1)
                    name = sp.name
                    tid = (sp.trace_id or "").lower()
                    sid = (sp.span_id or "").lower()
                    parent = (sp.parent_span_id or "").lower()
                    if not _TRACE_ID(tid) or tid == ZERO_TRACE_HEX:
                        raise Invalid("invalid_trace_id", f"traceId must be 32 hex digits, got {tid[:40]!r}")
                    if not _SPAN_ID(sid) or sid == ZERO_SPAN_HEX:
                        raise Invalid("invalid_span_id", f"spanId must be 16 hex digits, got {sid[:40]!r}")
                    if parent and not _SPAN_ID(parent):
                        raise Invalid("invalid_span_id", f"parentSpanId must be 16 hex digits, got {parent[:40]!r}")
                    if not name:
                        raise Invalid("missing_field", "span name is empty")
                    exc, state = _special_events(sp.events, _j_attrs) if sp.events else (None, None)
                    raw = sp.attributes
                    wanted, web = _j_scan(raw)
                    s = _span(tid, sid, parent, name, kind, _int(sp.start_time_unix_nano),
                              _int(sp.end_time_unix_nano), wanted, resource, service, code or 0,
                              (st.message or "") if st is not None else "", exc, web, result, kind_name, state)
                except Invalid as e:
                    result.truncated = cuts  # a refused span's cuts are not counted: it changes nothing
                    result.reject(index, e.reason, e.detail)
                else:
                    s.defer_attributes(lazy, raw)
                    if sp.events or sp.links:
                        s.defer_details(details, sp)
                    append(s)
                index += 1
    return result
