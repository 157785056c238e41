"""Native JSON batches (the workflow-session / trace-step shape) → spans.

A batch is an object with ``steps`` (finished trace steps) and, optionally,
``workflows`` (finished workflow sessions, one per run)::

    {"workflows": [{"correlation_id": "c-1", "workflow_type": "checkout", "status": "success",
                    "started_at": "2026-11-23T10:00:00Z", "duration_ms": 840, "user": "u-42"}],
     "steps": [{"correlation_id": "c-1", "workflow_type": "checkout", "layer": "database",
                "component": "postgres", "operation": "insert_order", "status": "success",
                "started_at": 1795000000.120, "duration_ms": 12.5,
                "metadata": {"rows": 1}, "state": {"order_id": 7}}]}

An optional ``errors`` array carries errors logged outside any step
(``ErrorLogger`` in remote mode): ``error_type``, ``message``, ``layer``,
``component``, and optionally ``workflow_type``, ``correlation_id``,
``trace_id``, ``span_id``, ``category``, ``stack_trace``, ``time`` and ``service``.

A bare array is read as ``steps``. ``started_at`` is ISO 8601 or epoch
seconds; ``ended_at`` may stand in for ``duration_ms``. ``status`` accepts the
seed vocabulary (success/completed/failed) as well as ok/error/timeout/cancelled.
Without ``trace_id``, all records of a correlation_id share one derived from it;
a step without ``parent_span_id`` hangs off the run's envelope, whose span_id is
derived from the correlation_id too. Only workflow records finish runs.

Steps and workflows may carry the span details OTLP spans carry, in the shapes
the runs API serves them::

    "kind": "consumer",                      # internal/server/client/producer/consumer; another is kept as given
    "events": [{"name": "retry", "time": "2026-11-23T10:00:00.5Z", "attributes": {"attempt": 2}}],
    "links": [{"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
               "attributes": {"messaging.operation": "publish"}}]

An event's ``time`` is ISO 8601 or epoch seconds (optional; an invalid one is left
out, not the event). A link whose ids are not W3C ids is left out, not the record;
both are counted as cut values.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

from .. import conventions as c
from .. import validate
from ..classify import classify_error
from ..errors import DecodeError
from ..model import LAYERS, ErrorRecord, Span, hash_user, new_span_id
from ..validate import (
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_TEXT_CHARS,
    MAX_TIME_NS,
    Invalid,
    clean_str,
    clean_text,
    clean_value,
    show,
)
from . import DecodeResult

MAX_NAME = MAX_LABEL_CHARS
MAX_EPOCH_S = validate.MAX_EPOCH_S  # int64 nanoseconds: 2262-04-11
MAX_DURATION_MS = 30 * 86_400_000  # 30 days
_TRACE_RE = re.compile(r"[0-9a-f]{32}\Z")
_SPAN_RE = re.compile(r"[0-9a-f]{16}\Z")
KINDS = frozenset(("internal", "server", "client", "producer", "consumer"))


_Bad = Invalid


def trace_id_for(correlation_id: str) -> str:
    """A stable trace_id for a correlation_id: itself if it is one, else a digest."""
    cid = correlation_id.replace("-", "").lower()
    if _TRACE_RE.match(cid):
        return cid
    return hashlib.sha256(correlation_id.encode()).hexdigest()[:32]


def root_span_id_for(correlation_id: str) -> str:
    """The span_id of a run's envelope; steps sent without a parent hang off it."""
    return hashlib.sha256(b"root:" + correlation_id.encode()).hexdigest()[:16]


def _name(rec: dict, key: str, required: bool = True, limit: int = MAX_NAME) -> str | None:
    v = rec.get(key)
    if v is None or v == "":
        if required:
            raise _Bad("missing_field", f"{key} is required")
        return None
    if not isinstance(v, str):
        raise _Bad("invalid_value", f"{key} must be a string, got {type(v).__name__}")
    if len(v) > limit:
        raise _Bad("invalid_value", f"{key} is longer than {limit} characters")
    return v if v.isascii() and "\x00" not in v else clean_str(v, limit)[0]


def _cid(rec: dict, required: bool = True) -> str | None:
    return _name(rec, "correlation_id", required, MAX_ID_CHARS)


def _time_ns(rec: dict, key: str) -> int | None:
    v = rec.get(key)
    if v is None:
        return None
    if isinstance(v, bool):
        raise _Bad("invalid_time", f"{key} must be ISO 8601 or epoch seconds")
    if isinstance(v, (int, float)):
        if not 0 < v < MAX_EPOCH_S:
            raise _Bad("invalid_time", f"{key} must be epoch seconds between 0 and {MAX_EPOCH_S}")
        return int(v * 1e9)
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v) if len(v) <= 64 else None
            ts = dt.timestamp() if dt is not None and dt.tzinfo is not None else None
        except (ValueError, OverflowError):
            raise _Bad("invalid_time", f"{key} is not ISO 8601: {v[:40]!r}") from None
        if dt is None:
            raise _Bad("invalid_time", f"{key} is not ISO 8601: {v[:40]!r}")
        if ts is None:
            raise _Bad("invalid_time", f"{key} needs a timezone (e.g. Z): {v[:40]!r}")
        if not 0 < ts < MAX_EPOCH_S:
            raise _Bad("invalid_time", f"{key} must be after 1970 and before 2262-04-11: {v[:40]!r}")
        return int(ts * 1_000_000) * 1000
    raise _Bad("invalid_time", f"{key} must be ISO 8601 or epoch seconds")


def _interval(rec: dict) -> tuple[int, int]:
    start = _time_ns(rec, "started_at")
    if start is None:
        raise _Bad("missing_field", "started_at is required")
    dur = rec.get("duration_ms")
    if dur is not None:
        if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not 0 <= dur <= MAX_DURATION_MS:
            raise _Bad("invalid_value", f"duration_ms must be a number from 0 to {MAX_DURATION_MS:g}")
        end = start + int(dur * 1e6)
        if end > MAX_TIME_NS:
            raise _Bad("invalid_time", "started_at + duration_ms is after 2262-04-11")
        return start, end
    end = _time_ns(rec, "ended_at")
    if end is None:
        raise _Bad("missing_field", "duration_ms or ended_at is required")
    if end < start:
        raise _Bad("invalid_time", "ended_at is before started_at")
    return start, end


def _status(rec: dict) -> str:
    v = rec.get("status", "ok")
    s = c.STATUS_ALIASES.get(v.lower()) if isinstance(v, str) else None  # the SDK's table too
    if s is None:
        raise _Bad("invalid_value", f"status must be one of {sorted(c.STATUS_ALIASES)}, got {show(v)}")
    return s


def _dict(rec: dict, key: str, result: DecodeResult) -> dict | None:
    """An object field (metadata, state, context), cut to the boundary's depth and size caps (counted)."""
    v = rec.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _Bad("invalid_value", f"{key} must be an object")
    v, cut = clean_value(v)
    result.truncated += cut
    return v


MAX_KIND_CHARS = 16


def _kind(rec: dict) -> str | None:
    v = rec.get("kind")
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise _Bad("invalid_value", f"kind must be a string, got {type(v).__name__}")
    return clean_str(v.lower() if v.lower() in KINDS else v, MAX_KIND_CHARS)[0]


def _list(rec: dict, key: str) -> list:
    v = rec.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise _Bad("invalid_value", f"{key} must be an array")
    return v


def _attributes(item: dict, field: str) -> dict:
    a = item.get("attributes")
    if a is None:
        return {}
    if not isinstance(a, dict):
        raise _Bad("invalid_value", f"{field}.attributes must be an object")
    return a


def _details(rec: dict, result: DecodeResult) -> tuple[list | None, list | None]:
    """``events`` and ``links`` checked like OTLP's: a bad time or link id is left out (counted), not the record."""
    events, links = [], []
    for i, ev in enumerate(_list(rec, "events")):
        if not isinstance(ev, dict):
            raise _Bad("invalid_value", f"events[{i}] must be an object")
        name = ev.get("name")
        if not isinstance(name, str) or not name:
            raise _Bad("missing_field", f"events[{i}].name is required")
        try:
            t = _time_ns(ev, "time")
        except _Bad:
            t = None
            result.truncated += 1
        events.append({"name": clean_str(name, MAX_NAME)[0], "time_ns": t,
                       "attributes": _attributes(ev, f"events[{i}]")})
    for i, ln in enumerate(_list(rec, "links")):
        if not isinstance(ln, dict):
            raise _Bad("invalid_value", f"links[{i}] must be an object")
        tid, sid = ln.get("trace_id"), ln.get("span_id")
        if not (isinstance(tid, str) and _TRACE_RE.match(tid.lower()) and isinstance(sid, str)
                and _SPAN_RE.match(sid.lower())) or tid.strip("0") == "" or sid.strip("0") == "":
            result.truncated += 1  # a link to no valid span: left out, not the record
            continue
        links.append({"trace_id": tid.lower(), "span_id": sid.lower(), "attributes": _attributes(ln, f"links[{i}]")})
    ev_out, cut_e = clean_value(events) if events else (None, False)
    ln_out, cut_l = clean_value(links) if links else (None, False)
    result.truncated += cut_e + cut_l
    return ev_out, ln_out


def _text(rec: dict, key: str) -> str | None:
    v = rec.get(key)
    return clean_text(v) if isinstance(v, str) else None


def _ids(rec: dict, cid: str) -> tuple[str, str, str | None]:
    tid = rec.get("trace_id") or trace_id_for(cid)
    sid = rec.get("span_id") or rec.get("step_id") or new_span_id()
    parent = rec.get("parent_span_id") or root_span_id_for(cid)
    if not isinstance(tid, str) or not _TRACE_RE.match(tid):
        raise _Bad("invalid_trace_id", "trace_id must be 32 lowercase hex digits")
    if not isinstance(sid, str) or not _SPAN_RE.match(sid):
        raise _Bad("invalid_span_id", "span_id must be 16 lowercase hex digits")
    if parent is not None and (not isinstance(parent, str) or not _SPAN_RE.match(parent)):
        raise _Bad("invalid_span_id", "parent_span_id must be 16 lowercase hex digits")
    return tid, sid, parent


def _step(rec: dict, result: DecodeResult) -> Span:
    cid = _cid(rec)
    layer = _name(rec, "layer")
    if layer not in LAYERS:
        raise _Bad("invalid_value", f"layer must be one of {list(c.LAYERS)}, got {layer!r}")
    start, end = _interval(rec)
    tid, sid, parent = _ids(rec, cid)
    status = _status(rec)
    etype = _name(rec, "error_type", required=False)
    if status in c.FAILED_STATUSES and not etype:
        etype = status
    events, links = _details(rec, result)
    return Span(trace_id=tid, span_id=sid, workflow=_name(rec, "workflow_type"), layer=layer,
                component=_name(rec, "component"), operation=_name(rec, "operation"), start_ns=start, end_ns=end,
                status=status, parent_span_id=parent, correlation_id=cid,
                service=_name(rec, "service", required=False) or "", error_type=etype,
                error_message=_text(rec, "error_message"), attributes=_dict(rec, "metadata", result),
                state=_dict(rec, "state", result), stack_trace=_text(rec, "stack_trace"),
                kind=_kind(rec), events=events, links=links)


def _workflow(rec: dict, result: DecodeResult) -> Span:
    cid = _cid(rec)
    start, end = _interval(rec)
    tid = rec.get("trace_id") or trace_id_for(cid)
    if not isinstance(tid, str) or not _TRACE_RE.match(tid):
        raise _Bad("invalid_trace_id", "trace_id must be 32 lowercase hex digits")
    status = _status(rec)
    user = rec.get("user")
    wf = _name(rec, "workflow_type")
    etype = _name(rec, "error_type", required=False)
    if status in c.FAILED_STATUSES and not etype:
        etype = status
    events, links = _details(rec, result)
    return Span(trace_id=tid, span_id=root_span_id_for(cid), workflow=wf, layer="system", component="workflow",
                operation=wf, start_ns=start, end_ns=end, status=status, correlation_id=cid,
                service=_name(rec, "service", required=False) or "", error_type=etype,
                error_message=_text(rec, "error_message"), attributes=_dict(rec, "metadata", result),
                is_step=False, user=hash_user(_user(user)) if user is not None else None, kind=_kind(rec),
                events=events, links=links)


def _user(user: Any) -> str:
    return clean_str(user, MAX_TEXT_CHARS)[0] if isinstance(user, str) else clean_text(user)


def _error(rec: dict, result: DecodeResult) -> ErrorRecord:
    layer = _name(rec, "layer")
    if layer not in LAYERS:
        raise _Bad("invalid_value", f"layer must be one of {list(c.LAYERS)}, got {layer!r}")
    message = rec.get("message")
    if not isinstance(message, str):
        raise _Bad("missing_field", "message is required and must be a string")
    message = clean_text(message)
    etype = _name(rec, "error_type")
    t = _time_ns(rec, "time")
    # an error record's ids only link it to a trace: one that is not a W3C id is left out, not the record
    tid, sid = _name(rec, "trace_id", required=False), _name(rec, "span_id", required=False)
    tid = tid.lower() if tid is not None and _TRACE_RE.match(tid.lower()) else None
    sid = sid.lower() if sid is not None and _SPAN_RE.match(sid.lower()) else None
    return ErrorRecord(error_type=etype, message=message, layer=layer, component=_name(rec, "component"),
                       workflow=_name(rec, "workflow_type", required=False) or c.UNKNOWN_WORKFLOW,
                       correlation_id=_cid(rec, required=False), trace_id=tid, span_id=sid,
                       category=_name(rec, "category", required=False, limit=32) or classify_error(etype, message),
                       stack_trace=_text(rec, "stack_trace"), time_ns=t or 0,
                       service=_name(rec, "service", required=False) or "",
                       context=_dict(rec, "context", result) or {})


def decode(doc: Any) -> DecodeResult:
    """Decode a parsed native batch. Steps are indexed first, then workflows, then errors."""
    if isinstance(doc, list):
        steps, workflows, errors = doc, [], []
    elif isinstance(doc, dict):
        unknown = set(doc) - {"steps", "workflows", "errors"}
        if unknown:
            raise DecodeError(f"unknown top-level field(s) {sorted(unknown)}; expected steps, workflows, errors",
                              field=sorted(unknown)[0])
        steps = doc.get("steps")
        workflows = doc.get("workflows")
        errors = doc.get("errors")
        steps = [] if steps is None else steps
        workflows = [] if workflows is None else workflows
        errors = [] if errors is None else errors
        for k, v in (("steps", steps), ("workflows", workflows), ("errors", errors)):
            if not isinstance(v, list):
                raise DecodeError(f"{k} must be an array", field=k)
    else:
        raise DecodeError("body must be an object with steps/workflows, or an array of steps")
    result = DecodeResult()
    offset = 0
    for kind, records, make, keep in (("step", steps, _step, result.spans.append),
                                      ("workflow", workflows, _workflow, result.spans.append),
                                      ("error", errors, _error, result.errors.append)):
        for i, rec in enumerate(records):
            cuts = result.truncated
            try:
                if not isinstance(rec, dict):
                    raise _Bad("malformed_span", f"a {kind} must be an object")
                keep(make(rec, result))
            except _Bad as b:
                result.truncated = cuts  # a refused record's cuts are not counted: it changes nothing
                result.reject(offset + i, b.reason, f"{kind}s[{i}]: {b.detail}")
        offset += len(records)
    return result
