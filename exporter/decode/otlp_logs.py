"""Application log requests → :class:`~exporter.model.LogLine` lists (pure): OTLP logs, native lines, a browser's.

Three input paths share one result shape (:class:`LogDecodeResult`) and one boundary: times are int64
nanoseconds, names that become labels are bounded (:func:`~exporter.validate.clean_label`), text is cut to
:data:`~exporter.validate.MAX_TEXT_CHARS`, attributes pass :func:`~exporter.validate.clean_value`. A body
that can't be read at all raises :class:`~exporter.errors.DecodeError` naming the field; a record that
can't be kept is a :class:`LogRejection` naming its own, and the others are kept.

**OTLP logs** (``ExportLogsServiceRequest``, protobuf or JSON; the OpenTelemetry logs data model,
https://opentelemetry.io/docs/specs/otel/logs/data-model/): ``service.name`` of the resource is the
service, the instrumentation scope's name the logger; ``severity_number`` gives the level
(:func:`~exporter.model.severity_level`), or, when it is 0, ``severity_text`` does (``WARNING`` → warn);
the body (any AnyValue: a map or an array becomes its JSON text) is the line. The time is
``time_unix_nano``, else ``observed_time_unix_nano``, else the time it was received. ``trace_id`` /
``span_id`` are kept (all-zero ones are none); a ``flowscope.correlation_id`` / ``correlation_id``
attribute is the correlation id (else the trace id), a ``flowscope.workflow`` / ``workflow.type`` one the
workflow, and ``exception.type`` / ``exception.message`` / ``exception.stacktrace`` (what OpenTelemetry
SDKs' logging handlers set) the exception text; an ``event_name`` becomes the ``event.name`` attribute,
and the other attributes stay attributes::

    result = decode_protobuf(body, now_ns=time.time_ns())     # or decode_json(body, now_ns)

**Native lines** (``POST /api/v1/logs``, what the SDK's remote mode sends)::

    {"lines": [{"time_ns": 1795000000123000000, "level": "error", "body": "card declined",
                "logger": "shop.payments", "service": "shop", "correlation_id": "c-1",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
                "workflow": "checkout", "attributes": {"order_id": 7}, "exception": "Traceback ..."}]}

``body`` is required; the time is ``time_ns`` (int) or ``time`` (epoch seconds or RFC 3339); ``level``
is one of ``trace debug info warn error fatal`` (default: from ``severity_number``, else info).

**Browser events** (``POST /api/v1/logs/browser``): console errors and user actions, small::

    {"service": "web-shop", "correlation_id": "c-1", "page": "https://shop.example.com/cart",
     "events": [{"type": "error", "message": "TypeError: x is undefined", "stack": "at pay (app.js:10)",
                 "time": 1795000000123},
                {"type": "action", "message": "click #pay", "attributes": {"cart_items": 3}},
                {"type": "console", "level": "warn", "message": "slow image"}]}

``time`` is epoch **milliseconds** (``Date.now()``), default the time received; ``type`` is ``console``
(default), ``error`` or ``action``; ``level`` defaults to error for an error, info otherwise (a console's
``log`` is info). At most :data:`MAX_BROWSER_EVENTS` events a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import orjson
from google.protobuf.message import DecodeError as PbDecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from .. import conventions as c
from ..errors import DecodeError
from ..model import LogLine, severity_level
from ..validate import (
    MAX_EPOCH_S,
    MAX_ID_CHARS,
    MAX_TEXT_CHARS,
    MAX_TIME_NS,
    Invalid,
    clean_label,
    clean_text,
    clean_value,
    show,
)
from .otlp import (
    _SPAN_ID,
    _TRACE_ID,
    ZERO_SPAN,
    ZERO_SPAN_HEX,
    ZERO_TRACE,
    ZERO_TRACE_HEX,
    _AnyValue,
    _jv,
    _KeyValue,
    _pb_attrs,
    _pb_value,
    _Resource,
)

__all__ = ["MAX_BROWSER_EVENTS", "LogDecodeResult", "LogRejection", "decode_browser", "decode_json",
           "decode_native", "decode_protobuf"]

#: Events one browser request may carry (a page batches a few; thousands are not a page's).
MAX_BROWSER_EVENTS = 100
#: Lines one native request may carry (the SDK posts at most its batch size, 5,000).
MAX_NATIVE_LINES = 50_000
#: Severity text (lower-cased) → level, for records whose severity_number is 0.
TEXT_LEVELS = {"trace": "trace", "debug": "debug", "info": "info", "information": "info", "notice": "info",
               "log": "info", "warn": "warn", "warning": "warn", "error": "error", "err": "error",
               "critical": "fatal", "crit": "fatal", "fatal": "fatal", "alert": "fatal", "emergency": "fatal"}
#: The first severity number of each level (OpenTelemetry's ranges).
LEVEL_NUMBERS = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
_SEVERITY_NAMES = {f"SEVERITY_NUMBER_{name}{'' if k == 0 else k + 1}": first + k
                   for name, first in (("TRACE", 1), ("DEBUG", 5), ("INFO", 9), ("WARN", 13), ("ERROR", 17),
                                       ("FATAL", 21)) for k in range(4)}
_SEVERITY_NAMES["SEVERITY_NUMBER_UNSPECIFIED"] = 0
_EXC_KEYS = ("exception.type", "exception.message", "exception.stacktrace")
#: The attribute a record's ``event_name`` (an OpenTelemetry event) is kept as.
EVENT_NAME_ATTR = "event.name"
_WF1, _WF2 = c.ATTR_WORKFLOW
_CID1, _CID2 = c.ATTR_CORRELATION_ID


@dataclass(slots=True)
class LogRejection:
    index: int
    reason: str
    detail: str
    #: where in the request: ``resourceLogs[0].scopeLogs[1].logRecords[2].traceId``, ``lines[3].level``
    field: str


@dataclass(slots=True)
class LogDecodeResult:
    lines: list[LogLine] = field(default_factory=list)
    rejected: list[LogRejection] = field(default_factory=list)
    #: values cut to the boundary's caps (kept, and counted)
    truncated: int = 0

    def reject(self, index: int, reason: str, detail: str, where: str) -> None:
        self.rejected.append(LogRejection(index, reason, f"{where}: {detail}", where))

    def summary(self, limit: int = 5) -> str:
        """One line about the rejections, for OTLP's ``errorMessage``."""
        parts = [r.detail for r in self.rejected[:limit]]
        more = len(self.rejected) - limit
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _key(unknown: Any) -> str:
    """The first unknown key, as a field name (an empty key is ``""``, a long one cut)."""
    name = sorted(str(k) for k in unknown)[0]
    return clean_label(name[:100])[0] if name else '""'


class _Bad(Exception):
    def __init__(self, reason: str, detail: str, sub: str):
        super().__init__(detail)
        self.reason, self.detail, self.sub = reason, detail, sub


def _label(v: Any, name: str, result: LogDecodeResult) -> str:
    try:
        out, cut = clean_label(v)
    except Invalid as e:
        raise _Bad(e.reason, f"{e.detail}", name) from None
    result.truncated += cut
    return out


def _text(v: Any, result: LogDecodeResult) -> str:
    """A body: a string as it is, a map or an array as its JSON text, cut to the text cap."""
    if v is None:
        return ""
    if type(v) is not str:
        if isinstance(v, (dict, list)):
            v = orjson.dumps(clean_value(v)[0], default=str).decode()
        else:
            v = str(v)
    out = clean_text(v, MAX_TEXT_CHARS) or ""
    if len(out) < len(v):
        result.truncated += 1
    return out


def _attrs(raw: dict[str, Any], result: LogDecodeResult) -> tuple[dict[str, Any], str | None, str | None,
                                                                 str | None]:
    """(attributes, correlation_id, workflow, exception text) of one record; ids and exception keys are taken out."""
    if not raw:
        return {}, None, None, None
    attrs, cut = clean_value(raw)
    result.truncated += cut
    if type(attrs) is not dict:
        return {}, None, None, None
    cid = attrs.pop(_CID1, None) or attrs.pop(_CID2, None)
    attrs.pop(_CID2, None)
    wf = attrs.pop(_WF1, None) or attrs.pop(_WF2, None)
    attrs.pop(_WF2, None)
    exc = None
    if any(k in attrs for k in _EXC_KEYS):
        etype, emsg, stack = (attrs.pop(k, None) for k in _EXC_KEYS)
        head = ": ".join(str(x) for x in (etype, emsg) if x not in (None, ""))
        exc = clean_text(str(stack) if stack not in (None, "") else head, MAX_TEXT_CHARS)
        if stack not in (None, "") and head and head not in str(stack):
            exc = clean_text(f"{head}\n{stack}", MAX_TEXT_CHARS)
    cid_s = None
    if cid not in (None, "") and not isinstance(cid, (dict, list)):
        cid_s = _label(cid, "correlation_id", result)
        if len(cid_s) > MAX_ID_CHARS:
            raise _Bad("invalid_value", f"correlation_id is longer than {MAX_ID_CHARS} characters", "attributes")
    wf_s = _label(wf, "workflow", result) if wf not in (None, "") and not isinstance(wf, (dict, list)) else None
    return attrs, cid_s, wf_s, exc


def _severity(number: int, text: str, result: LogDecodeResult) -> tuple[int, str]:
    """(severity_number, level): the number when it is 1..24, else the text's level (its range's first number)."""
    if 1 <= number <= 24:
        return number, severity_level(number)
    if number != 0:
        result.truncated += 1  # out of OpenTelemetry's range: read as unspecified
    level = TEXT_LEVELS.get(text.strip().lower()) if text else None
    if level is None:
        return 0, "info"
    return LEVEL_NUMBERS[level], level


def _line(time_ns: int, observed_ns: int, now_ns: int, number: int, text: str, body: Any, raw_attrs: dict[str, Any],
          trace_id: str, span_id: str, service: str, logger: str | None, result: LogDecodeResult,
          event_name: str | None = None) -> LogLine:
    t = time_ns or observed_ns or now_ns
    if not 0 < t <= MAX_TIME_NS:
        raise _Bad("invalid_time", f"must be 0 < t <= {MAX_TIME_NS} ns", "timeUnixNano")
    severity, level = _severity(number, text, result)
    attrs, cid, wf, exc = _attrs(raw_attrs, result)
    if event_name:
        attrs[EVENT_NAME_ATTR] = _label(event_name, "eventName", result)
    return LogLine(time_ns=t, level=level, body=_text(body, result), service=service, severity_number=severity,
                   logger=logger, workflow=wf, correlation_id=cid or trace_id or None, trace_id=trace_id or None,
                   span_id=span_id or None, attributes=attrs, exception=exc, source=c.LOG_SOURCE_OTLP)


def _service(resource: dict[str, Any], result: LogDecodeResult) -> str:
    v = resource.get("service.name")
    if v in (None, "") or isinstance(v, (dict, list)):
        return "unknown_service"
    try:
        out, cut = clean_label(v)
    except Invalid:
        return "unknown_service"
    result.truncated += cut
    return out


def _logger(name: str | None, result: LogDecodeResult) -> str | None:
    if not name:
        return None
    out, cut = clean_label(name)
    result.truncated += cut
    return out


# --- OTLP protobuf ------------------------------------------------------------------------------------


def decode_protobuf(body: bytes, now_ns: int) -> LogDecodeResult:
    """An ``ExportLogsServiceRequest`` in protobuf binary; ``now_ns`` stands in for a record with no time."""
    req = ExportLogsServiceRequest()
    try:
        req.ParseFromString(body)
    except (PbDecodeError, ValueError, RuntimeError, RecursionError, UnicodeDecodeError) as e:
        raise DecodeError(f"body is not a valid OTLP ExportLogsServiceRequest protobuf: {e}", field="body") from None
    result = LogDecodeResult()
    index = 0
    for i, rl in enumerate(req.resource_logs):
        try:
            resource = clean_value(_pb_attrs(rl.resource.attributes))[0]
        except RecursionError:
            resource = {}
        service = _service(resource, result)
        for j, sl in enumerate(rl.scope_logs):
            logger = _logger(sl.scope.name, result)
            for k, rec in enumerate(sl.log_records):
                where = f"resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]"
                cuts = result.truncated
                try:
                    tid, sid = rec.trace_id, rec.span_id
                    if tid and len(tid) != 16:
                        raise _Bad("invalid_trace_id", f"must be 16 bytes, got {len(tid)}", "traceId")
                    if sid and len(sid) != 8:
                        raise _Bad("invalid_span_id", f"must be 8 bytes, got {len(sid)}", "spanId")
                    try:
                        raw = _pb_attrs(rec.attributes)
                        body_v = _pb_value(rec.body) if rec.HasField("body") else None
                    except RecursionError:
                        raise _Bad("invalid_value", "nested too deeply", "attributes") from None
                    result.lines.append(_line(
                        rec.time_unix_nano, rec.observed_time_unix_nano, now_ns, rec.severity_number,
                        rec.severity_text, body_v, raw, tid.hex() if tid and tid != ZERO_TRACE else "",
                        sid.hex() if sid and sid != ZERO_SPAN else "", service, logger, result, rec.event_name))
                except _Bad as b:
                    result.truncated = cuts
                    result.reject(index, b.reason, b.detail, f"{where}.{b.sub}")
                index += 1
    return result


# --- OTLP JSON ----------------------------------------------------------------------------------------

_FROZEN: dict[str, Any] = {"rename": "camel", "frozen": True}


class _Scope(msgspec.Struct, **_FROZEN):
    name: str | None = ""


class _Record(msgspec.Struct, **_FROZEN):
    time_unix_nano: int | str | None = 0
    observed_time_unix_nano: int | str | None = 0
    severity_number: int | str | None = 0
    severity_text: str | None = ""
    body: _AnyValue | None = None
    attributes: list[_KeyValue] | None = None
    trace_id: str | None = ""
    span_id: str | None = ""
    event_name: str | None = ""


class _ScopeLogs(msgspec.Struct, **_FROZEN):
    scope: _Scope | None = None
    log_records: list[_Record] | None = None


class _ResourceLogs(msgspec.Struct, **_FROZEN):
    resource: _Resource | None = None
    scope_logs: list[_ScopeLogs] | None = None


class _ExportLogs(msgspec.Struct, **_FROZEN):
    resource_logs: list[_ResourceLogs] | None = None


_decoder = msgspec.json.Decoder(_ExportLogs)


def _kv(kvs: list[_KeyValue] | None) -> dict[str, Any]:
    return {kv.key: _jv(kv.value) for kv in kvs} if kvs else {}


def _uint64(v: int | str | None, name: str) -> int:
    """A time given as a number or a decimal string (OTLP/JSON's forms); 0 when absent."""
    if v is None or v == "" or v == 0:
        return 0
    if type(v) is int:
        n = v
    elif type(v) is str and len(v) <= 20 and v.isascii() and v.isdigit():
        n = int(v)
    else:
        raise _Bad("invalid_time", f"must be nanoseconds as a number or a decimal string, got {show(v)}", name)
    if not 0 < n <= MAX_TIME_NS:
        raise _Bad("invalid_time", f"must be 0 < t <= {MAX_TIME_NS} ns, got {show(n)}", name)
    return n


def _j_severity(v: int | str | None) -> int:
    if v is None:
        return 0
    if type(v) is int:
        return v
    if v in _SEVERITY_NAMES:
        return _SEVERITY_NAMES[v]
    if type(v) is str and v.isascii() and v.isdigit() and len(v) <= 3:
        return int(v)
    raise _Bad("invalid_value", f"must be 0..24 or a SEVERITY_NUMBER_* name, got {show(v)}", "severityNumber")


def _hex_id(v: str | None, n: int, zero: str, name: str) -> str:
    s = (v or "").lower()
    if not s or s == zero:
        return ""
    if not (_TRACE_ID if n == 32 else _SPAN_ID)(s):
        raise _Bad("invalid_trace_id" if n == 32 else "invalid_span_id", f"must be {n} hex digits, got {show(s)}",
                   name)
    return s


def decode_json(body: bytes, now_ns: int) -> LogDecodeResult:
    """An OTLP/JSON ``ExportLogsServiceRequest``; a body of the wrong shape is a DecodeError naming its JSON path."""
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as e:
        msg = str(e)
        path = msg.rsplit("at `", 1)[1].rstrip("`") if "at `" in msg else "$"
        raise DecodeError(f"OTLP/JSON body does not match ExportLogsServiceRequest: {msg}", field=path) from None
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as e:
        raise DecodeError(f"body is not valid JSON: {e}", field="body") from None
    except RecursionError:
        raise DecodeError("body is nested too deeply", field="body") from None
    result = LogDecodeResult()
    index = 0
    for i, rl in enumerate(req.resource_logs or ()):
        try:
            resource = clean_value(_kv(rl.resource.attributes if rl.resource else None))[0]
        except RecursionError:
            resource = {}
        service = _service(resource, result)
        for j, sl in enumerate(rl.scope_logs or ()):
            logger = _logger(sl.scope.name if sl.scope else None, result)
            for k, rec in enumerate(sl.log_records or ()):
                where = f"resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]"
                cuts = result.truncated
                try:
                    tid = _hex_id(rec.trace_id, 32, ZERO_TRACE_HEX, "traceId")
                    sid = _hex_id(rec.span_id, 16, ZERO_SPAN_HEX, "spanId")
                    t = _uint64(rec.time_unix_nano, "timeUnixNano")
                    observed = _uint64(rec.observed_time_unix_nano, "observedTimeUnixNano")
                    try:
                        raw = _kv(rec.attributes)
                        body_v = _jv(rec.body)
                    except RecursionError:
                        raise _Bad("invalid_value", "nested too deeply", "attributes") from None
                    result.lines.append(_line(t, observed, now_ns, _j_severity(rec.severity_number),
                                              rec.severity_text or "", body_v, raw, tid, sid, service, logger,
                                              result, rec.event_name))
                except _Bad as b:
                    result.truncated = cuts
                    result.reject(index, b.reason, b.detail, f"{where}.{b.sub}")
                index += 1
    return result


# --- native lines and browser events ------------------------------------------------------------------


def _opt_name(rec: dict[str, Any], key: str, result: LogDecodeResult, limit: int | None = None) -> str | None:
    v = rec.get(key)
    if v is None or v == "":
        return None
    if type(v) is not str:
        raise _Bad("invalid_value", f"must be a string, got {show(v)}", key)
    out = _label(v, key, result)
    if limit is not None and len(out) > limit:
        raise _Bad("invalid_value", f"is longer than {limit} characters", key)
    return out


def _opt_id(rec: dict[str, Any], key: str, n: int) -> str | None:
    v = rec.get(key)
    if v is None or v == "":
        return None
    if type(v) is not str:
        raise _Bad("invalid_value", f"must be a string of {n} hex digits, got {show(v)}", key)
    return _hex_id(v, n, "0" * n, key) or None


def _opt_text(rec: dict[str, Any], key: str, result: LogDecodeResult) -> str | None:
    v = rec.get(key)
    if v is None:
        return None
    if type(v) is not str:
        raise _Bad("invalid_value", f"must be a string, got {show(v)}", key)
    return _text(v, result)


def _opt_attrs(rec: dict[str, Any], key: str, result: LogDecodeResult) -> dict[str, Any]:
    v = rec.get(key)
    if v is None:
        return {}
    if type(v) is not dict:
        raise _Bad("invalid_value", f"must be an object, got {show(v)}", key)
    try:
        out, cut = clean_value(v)
    except RecursionError:
        raise _Bad("invalid_value", "nested too deeply", key) from None
    result.truncated += cut
    return out if type(out) is dict else {}


def _seconds_ns(v: Any, key: str, scale: float) -> int:
    """``v`` epoch seconds (``scale`` 1) or milliseconds (1e-3), or RFC 3339 text, as int64 nanoseconds."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise _Bad("invalid_time", f"must be a number or RFC 3339 text, got {show(v)}", key)
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v) if len(v) <= 64 else None
            ts = dt.timestamp() if dt is not None and dt.tzinfo is not None else None
        except (ValueError, OverflowError):
            ts = None
        if ts is None:
            raise _Bad("invalid_time", f"is not RFC 3339 with a timezone: {show(v)}", key)
    else:
        ts = v * scale
    ns = int(ts * 1_000_000) * 1000 if 0 < ts < MAX_EPOCH_S else 0
    if ns <= 0:  # a time under a microsecond past the epoch would be 0 ns: refused like the epoch itself
        raise _Bad("invalid_time", f"must be after 1970 and before 2262-04-11, got {show(v)}", key)
    return ns


def _level(rec: dict[str, Any], default: str, key: str = "level") -> str:
    v = rec.get(key)
    if v is None or v == "":
        return default
    level = TEXT_LEVELS.get(v.lower()) if type(v) is str and len(v) <= 20 else None
    if level is None:
        raise _Bad("invalid_value", f"must be one of {', '.join(c.LOG_LEVELS)}, got {show(v)}", key)
    return level


_NATIVE_KEYS = frozenset(("time_ns", "time", "level", "severity_number", "body", "logger", "service",
                          "correlation_id", "trace_id", "span_id", "workflow", "attributes", "exception"))


def _object(v: Any, what: str, keys: frozenset[str]) -> None:
    """Refuse ``v`` unless it is an object of only ``keys`` (the first unknown one is named)."""
    if type(v) is not dict:
        raise _Bad("invalid_value", f"{what} must be an object, got {show(v)}", "")
    unknown = v.keys() - keys
    if unknown:
        name = _key(unknown)
        raise _Bad("unknown_field", f"unknown field {show(name)}", name)


def _native_line(rec: Any, result: LogDecodeResult) -> LogLine:
    _object(rec, "a line", _NATIVE_KEYS)
    body = rec.get("body")
    if type(body) is not str:
        raise _Bad("missing_field" if body is None else "invalid_value", "body is required, a string", "body")
    t = rec.get("time_ns")
    if t is not None:
        if type(t) is not int or not 0 < t <= MAX_TIME_NS:
            raise _Bad("invalid_time", f"must be an integer 0 < t <= {MAX_TIME_NS}, got {show(t)}", "time_ns")
    elif rec.get("time") is not None:
        t = _seconds_ns(rec["time"], "time", 1.0)
    else:
        raise _Bad("missing_field", "time_ns or time is required", "time_ns")
    number = rec.get("severity_number")
    if number is not None and (type(number) is not int or not 0 <= number <= 24):
        raise _Bad("invalid_value", f"must be an integer 0..24, got {show(number)}", "severity_number")
    level = _level(rec, severity_level(number) if number else "info")
    if not number:
        number = LEVEL_NUMBERS[level]
    tid = _opt_id(rec, "trace_id", 32)
    cid = _opt_name(rec, "correlation_id", result, MAX_ID_CHARS)
    return LogLine(time_ns=t, level=level, body=_text(body, result),
                   service=_opt_name(rec, "service", result) or "unknown_service", severity_number=number,
                   logger=_opt_name(rec, "logger", result), workflow=_opt_name(rec, "workflow", result),
                   correlation_id=cid or tid, trace_id=tid, span_id=_opt_id(rec, "span_id", 16),
                   attributes=_opt_attrs(rec, "attributes", result), exception=_opt_text(rec, "exception", result),
                   source=c.LOG_SOURCE_APP)


def decode_native(doc: Any) -> LogDecodeResult:
    """A parsed native batch ``{"lines": [...]}`` (a bare array is read as the lines)."""
    if isinstance(doc, dict):
        unknown = doc.keys() - {"lines"}
        if unknown:
            name = _key(unknown)
            raise DecodeError(f"unknown top-level field {show(name)}; expected lines", field=name)
        lines = doc.get("lines")
    else:
        lines = doc
    if not isinstance(lines, list):
        raise DecodeError("body must be an object with a lines array, or an array of lines", field="lines")
    if len(lines) > MAX_NATIVE_LINES:
        raise DecodeError(f"at most {MAX_NATIVE_LINES} lines a request, got {len(lines)}", field="lines")
    result = LogDecodeResult()
    for i, rec in enumerate(lines):
        cuts = result.truncated
        try:
            result.lines.append(_native_line(rec, result))
        except _Bad as b:
            result.truncated = cuts
            result.reject(i, b.reason, b.detail, f"lines[{i}]" + (f".{b.sub}" if b.sub else ""))
    return result


BROWSER_TYPES = ("console", "error", "action")
_BROWSER_TOP = frozenset(("service", "correlation_id", "trace_id", "session_id", "page", "events"))
_BROWSER_EVENT = frozenset(("type", "level", "message", "time", "stack", "logger", "page", "target",
                            "attributes", "correlation_id", "trace_id", "span_id"))


def _browser_event(ev: Any, top: dict[str, Any], now_ns: int, result: LogDecodeResult) -> LogLine:
    _object(ev, "an event", _BROWSER_EVENT)
    kind = ev.get("type", "console")
    if kind not in BROWSER_TYPES:
        raise _Bad("invalid_value", f"must be one of {', '.join(BROWSER_TYPES)}, got {show(kind)}", "type")
    message = ev.get("message")
    if type(message) is not str:
        raise _Bad("missing_field" if message is None else "invalid_value", "message is required, a string",
                   "message")
    level = _level(ev, "error" if kind == "error" else "info")
    t = now_ns if ev.get("time") is None else _seconds_ns(ev["time"], "time", 1e-3)
    attrs = _opt_attrs(ev, "attributes", result)
    for key in ("page", "target"):
        v = _opt_text(ev, key, result)
        if v is not None:
            attrs[f"browser.{key}"] = v
    tid = _opt_id(ev, "trace_id", 32) or top["trace_id"]
    cid = _opt_name(ev, "correlation_id", result, MAX_ID_CHARS) or top["correlation_id"]
    return LogLine(time_ns=t, level=level, body=_text(message, result), service=top["service"],
                   severity_number=LEVEL_NUMBERS[level], logger=_opt_name(ev, "logger", result) or f"browser.{kind}",
                   correlation_id=cid or tid, trace_id=tid, span_id=_opt_id(ev, "span_id", 16),
                   attributes={**top["attributes"], **attrs}, exception=_opt_text(ev, "stack", result),
                   source=c.LOG_SOURCE_BROWSER)


def decode_browser(doc: Any, now_ns: int, user_agent: str | None = None) -> LogDecodeResult:
    """A parsed browser batch (see the module docstring); ``now_ns`` is the time of an event without one."""
    if not isinstance(doc, dict):
        raise DecodeError(f"body must be an object with an events array, got {show(doc)}", field="body")
    unknown = doc.keys() - _BROWSER_TOP
    if unknown:
        name = _key(unknown)
        raise DecodeError(f"unknown top-level field {show(name)}; expected {', '.join(sorted(_BROWSER_TOP))}",
                          field=name)
    events = doc.get("events")
    if not isinstance(events, list):
        raise DecodeError("events is required, an array", field="events")
    if len(events) > MAX_BROWSER_EVENTS:
        raise DecodeError(f"at most {MAX_BROWSER_EVENTS} events a request, got {len(events)}", field="events")
    result = LogDecodeResult()
    try:
        top: dict[str, Any] = {"service": _opt_name(doc, "service", result) or "browser",
               "correlation_id": _opt_name(doc, "correlation_id", result, MAX_ID_CHARS),
               "trace_id": _opt_id(doc, "trace_id", 32), "attributes": {}}
        session = _opt_name(doc, "session_id", result)
        page = _opt_text(doc, "page", result)
    except _Bad as b:
        raise DecodeError(f"{b.sub}: {b.detail}", field=b.sub) from None
    attrs: dict[str, Any] = top["attributes"]
    if session:
        attrs["browser.session_id"] = session
    if page:
        attrs["browser.page"] = page
    if user_agent:
        attrs["user_agent.original"] = _text(user_agent[:1000], result)
    for i, ev in enumerate(events):
        cuts = result.truncated
        try:
            result.lines.append(_browser_event(ev, top, now_ns, result))
        except _Bad as b:
            result.truncated = cuts
            result.reject(i, b.reason, b.detail, f"events[{i}]" + (f".{b.sub}" if b.sub else ""))
    return result
