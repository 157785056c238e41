"""What the log API and page show, built from the store's rows: a line or a template as JSON, each linked to its
run's page; a query from the typed text and the request's filters.

    got = search(store, request_query("level:error -healthcheck", LogFilters(service="checkout")), limit=50)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from exporter import conventions as c
from exporter.store import RunStore
from exporter.store.logs import FieldFilter, LogEntry, LogQuery, LogTemplate, levels_from

from ..query import iso_ns
from .query import parse


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFilters:
    """The filters a request gives as parameters beside its query text (each one more condition)."""

    since_ns: int | None = None
    until_ns: int | None = None
    level: str | None = None
    service: str | None = None
    workflow: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None


def request_query(text: str, f: LogFilters) -> LogQuery:
    """The typed ``text`` (:func:`.query.parse`, which raises :class:`.query.QueryError`) and ``f``, all of which
    must hold: a parameter narrows what the text already filters on (a level parameter keeps the more severe)."""
    q = parse(text)
    extra: list[FieldFilter] = []
    levels = q.levels
    if f.level is not None:
        mine = levels_from(f.level)
        levels = tuple(lv for lv in mine if lv in levels) if levels else mine
        if not levels:  # the two ranges do not meet: no level is both
            extra.append(FieldFilter("level", "=", "-"))

    def both(name: str, have: tuple[str, ...], value: str | None) -> tuple[str, ...]:
        if value is None:
            return have
        if not have:
            return (value,)
        extra.append(FieldFilter(name, "=", value))  # and the text's own alternatives: both hold
        return have

    services = both("service", q.services, f.service)
    workflows = both("workflow", q.workflows, f.workflow)
    cids = both("correlation_id", q.correlation_ids, f.correlation_id)
    traces = both("trace_id", q.trace_ids, f.trace_id)
    return replace(q, since_ns=f.since_ns, until_ns=f.until_ns, levels=levels, services=services,
                   workflows=workflows, correlation_ids=cids, trace_ids=traces, fields=(*q.fields, *extra))


def run_page(public_url: str, e: LogEntry) -> str | None:
    """The page of the line's run (by correlation_id, else trace_id: the run page takes either), or None."""
    run = e.correlation_id or e.trace_id
    return f"{public_url.rstrip('/')}{c.RUN_PAGE_PATH}/{quote(run, safe='')}" if run else None


def line_json(public_url: str, e: LogEntry) -> dict[str, Any]:
    """One line for the API: ``id`` (its cursor) as a string, since it is past what a JSON number holds exactly."""
    return {"id": str(e.id), "time": iso_ns(e.time_ns), "time_ns": e.time_ns, "level": e.level, "service": e.service,
            "workflow": e.workflow, "logger": e.logger, "correlation_id": e.correlation_id, "trace_id": e.trace_id,
            "span_id": e.span_id, "source": e.source, "body": e.body, "exception": e.exception,
            "attributes": e.attributes, "run_page": run_page(public_url, e)}


def template_json(public_url: str, t: LogTemplate) -> dict[str, Any]:
    public = public_url.rstrip("/")
    return {"template": t.template, "level": t.level, "service": t.service, "count": t.count,
            "first": iso_ns(t.first_ns), "last": iso_ns(t.last_ns), "example": line_json(public_url, t.example),
            "runs": [{"id": r, "run_page": f"{public}{c.RUN_PAGE_PATH}/{quote(r, safe='')}"} for r in t.runs]}


def search(store: RunStore, q: LogQuery, public_url: str, limit: int, cursor: int | None) -> dict[str, Any]:
    page = store.search_logs(q, limit=limit, cursor=cursor)
    return {"lines": [line_json(public_url, e) for e in page.lines], "count": len(page.lines),
            "next_cursor": None if page.next_cursor is None else str(page.next_cursor)}


def templates(store: RunStore, q: LogQuery, public_url: str, scan: int, top: int) -> dict[str, Any]:
    got, scanned, more = store.log_templates(q, scan=scan, top=top)
    return {"templates": [template_json(public_url, t) for t in got], "count": len(got), "scanned": scanned,
            "truncated": more}


#: At most this many of a run's lines (its newest) are shown on its page.
RUN_PAGE_LINES = 500


def run_timeline(store: RunStore, correlation_id: str, trace_id: str | None, steps: list[dict[str, Any]],
                 t0_ns: int, limit: int = RUN_PAGE_LINES) -> dict[str, Any]:
    """A run's steps and its log lines in one list, in time order (a line logged during a step follows the
    step's start), for the run page: each entry ``{"kind": "step" | "log", "offset_ms", ...}`` with the
    offset from the run's start; a line names the step it was logged in (by span id) when it is one of the
    run's steps. ``lines`` counts the lines shown; ``truncated`` says older ones were left out."""
    lines = store.run_logs(correlation_id, trace_id, limit=limit + 1)
    truncated = len(lines) > limit
    lines = lines[len(lines) - limit:] if truncated else lines
    step_of = {s["span_id"]: i for i, s in enumerate(steps)}
    entries: list[tuple[int, int, dict[str, Any]]] = []
    for i, s in enumerate(steps):
        entries.append((s["start_ns"], 0, {"kind": "step", "offset_ms": (s["start_ns"] - t0_ns) / 1e6, "index": i,
                                           "span_id": s["span_id"], "layer": s.get("layer"),
                                           "component": s.get("component"), "operation": s.get("operation"),
                                           "status": s.get("status")}))
    for e in lines:
        entries.append((e.time_ns, 1, {"kind": "log", "offset_ms": (e.time_ns - t0_ns) / 1e6, "time": iso_ns(e.time_ns),
                                       "level": e.level, "service": e.service, "logger": e.logger, "body": e.body,
                                       "exception": e.exception, "step": step_of.get(e.span_id or ""),
                                       "span_id": e.span_id}))
    entries.sort(key=lambda x: (x[0], x[1]))
    return {"entries": [x[2] for x in entries], "lines": len(lines), "truncated": truncated,
            "search": f"{c.LOGS_PAGE_PATH}?q={quote('cid:' + _quoted_value(correlation_id))}"}


def _quoted_value(v: str) -> str:
    """``v`` as a value of the search language: bare when it has no space or quote, else quoted."""
    return v if v and not any(ch.isspace() or ch == '"' for ch in v) else '"' + v.replace('"', '""') + '"'
