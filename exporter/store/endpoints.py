"""The endpoint inventory in the store, and its join with what the server spans show.

A service's inventory (``endpoints``: method, path template, view, auth, source) is registered whole through
``POST /api/v1/endpoints``; :meth:`EndpointQueries.endpoint_report` reads the server spans of a window (kind
``server``, or the ``api`` layer when a span has no kind, with an ``http.route``), keys each by (service, method,
:func:`~exporter.sdk.routes.normalize_route` of its route), and returns per documented endpoint its calls, error
ratio, p95 duration, workflows and last call; the documented endpoints no span reached; and the routes spans show
that no inventory lists (for services that registered one).

    store.register_endpoints("shop", [EndpointEntry("GET", "/users/{id}", "app.user", True, "flask")], now_ns)
    report = store.endpoint_report(since_ns=t0, until_ns=t1, service="shop")
    [e.path for e in report.never_called]          # ['/admin/export']
    [e.path for e in report.undocumented]          # ['/internal/debug']

The span scan is bounded (``max_spans``, newest first); ``report.truncated`` says when the window held more, and
``report.covered_since_ns`` how far back the read went.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from sqlalchemy import Engine, and_, delete, func, insert, or_, select
from sqlalchemy.exc import IntegrityError

from .. import conventions as c
from ..sdk.routes import normalize_route
from .schema import endpoints, span_details, spans

__all__ = ["EndpointEntry", "EndpointQueries", "EndpointReport", "EndpointUsage", "RegisterResult", "p95"]

#: Tries of a registration whose insert lost a race with another registration of the same service.
REGISTER_ATTEMPTS = 3
#: Most server spans one report reads (newest first).
MAX_SPANS = 200_000
_METHOD_KEYS = ("http.request.method", "http.method")
_STATUS_KEYS = ("http.response.status_code", "http.status_code")


@dataclass(frozen=True, slots=True)
class EndpointEntry:
    """One documented endpoint as registered (the store adds its service and registration time)."""

    method: str
    path: str
    view: str | None
    auth: bool | None
    source: str


@dataclass(frozen=True, slots=True)
class InventoryRow:
    service: str
    method: str
    path: str
    view: str | None
    auth: bool | None
    source: str
    registered_at_ns: int


@dataclass(frozen=True, slots=True)
class RegisterResult:
    added: int
    kept: int
    removed: int


@dataclass(slots=True)
class EndpointUsage:
    """One endpoint over a window: the inventory's columns (None for an undocumented one) and its traffic."""

    service: str
    method: str
    path: str
    documented: bool
    view: str | None = None
    auth: bool | None = None
    source: str | None = None
    registered_at_ns: int | None = None
    calls: int = 0
    errors: int = 0
    p95_ms: float | None = None
    last_seen_ns: int | None = None
    workflows: tuple[str, ...] = ()
    #: the statuses seen, {"200": 10, "500": 1} (the HTTP status code, or the span's status without one)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def error_ratio(self) -> float | None:
        return self.errors / self.calls if self.calls else None


@dataclass(frozen=True, slots=True)
class EndpointReport:
    since_ns: int
    until_ns: int
    #: every documented endpoint (of the service asked for), sorted by service, path, method
    endpoints: list[EndpointUsage]
    #: routes the spans show that the service's inventory does not list
    undocumented: list[EndpointUsage]
    #: services with server spans in the window but no inventory at all
    services_without_inventory: list[str]
    spans_read: int
    truncated: bool
    #: the start of what was read: ``since_ns``, or when truncated the end of the oldest span read (an endpoint not
    #: seen is known quiet only since then)
    covered_since_ns: int = 0

    @property
    def never_called(self) -> list[EndpointUsage]:
        return [e for e in self.endpoints if e.calls == 0]


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile by the nearest-rank method (the smallest value with at least 95% at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _attr(attrs: dict[str, object], keys: Sequence[str]) -> object:
    for k in keys:
        v = attrs.get(k)
        if v is not None:
            return v
    return None


class _Acc:
    __slots__ = ("calls", "durations", "errors", "last", "statuses", "workflows")

    def __init__(self) -> None:
        self.calls = self.errors = self.last = 0
        self.durations: list[float] = []
        self.statuses: dict[str, int] = {}
        self.workflows: set[str] = set()

    def fill(self, u: EndpointUsage) -> EndpointUsage:
        u.calls, u.errors, u.p95_ms = self.calls, self.errors, p95(self.durations)
        u.last_seen_ns = self.last or None
        u.workflows = tuple(sorted(self.workflows))
        u.statuses = dict(sorted(self.statuses.items()))
        return u


class EndpointQueries:
    """The endpoint reads and writes of :class:`~exporter.store.RunStore`."""

    engine: Engine

    def register_endpoints(self, service: str, entries: Sequence[EndpointEntry], now_ns: int,
                           replace: bool = True) -> RegisterResult:
        """Make ``entries`` ``service``'s inventory (``replace``: its other rows go; otherwise they stay). An entry
        already listed keeps its first registration time, so re-registering at every deploy does not make an
        endpoint that is never called look new.

        Replicas of a service registering at once race between the read and the insert: the loser's insert hits
        the primary key and its transaction is tried again (bounded), now seeing the winner's rows."""
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                return self._register_once(service, entries, now_ns, replace)
            except IntegrityError:
                if attempt == REGISTER_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _register_once(self, service: str, entries: Sequence[EndpointEntry], now_ns: int,
                       replace: bool) -> RegisterResult:
        unique = {(e.method, e.path): e for e in entries}
        with self.engine.begin() as conn:
            rows = conn.execute(select(endpoints.c.method, endpoints.c.path, endpoints.c.registered_at_ns)
                                .where(endpoints.c.service == service)).all()
            before = {(r.method, r.path): r.registered_at_ns for r in rows}
            gone = [k for k in before if k not in unique] if replace else []
            for method, path in [*gone, *(k for k in unique if k in before)]:
                conn.execute(delete(endpoints).where(and_(endpoints.c.service == service,
                                                          endpoints.c.method == method, endpoints.c.path == path)))
            if unique:
                conn.execute(insert(endpoints), [
                    {"service": service, "method": e.method, "path": e.path, "view": e.view, "auth": e.auth,
                     "source": e.source, "registered_at_ns": before.get(k, now_ns)} for k, e in unique.items()])
        kept = sum(1 for k in unique if k in before)
        return RegisterResult(added=len(unique) - kept, kept=kept, removed=len(gone))

    def inventory(self, service: str | None = None) -> list[InventoryRow]:
        q = select(endpoints).order_by(endpoints.c.service, endpoints.c.path, endpoints.c.method)
        if service is not None:
            q = q.where(endpoints.c.service == service)
        with self.engine.connect() as conn:
            return [InventoryRow(r.service, r.method, r.path, r.view, r.auth, r.source, r.registered_at_ns)
                    for r in conn.execute(q)]

    def endpoint_report(self, since_ns: int, until_ns: int, service: str | None = None,
                        max_spans: int = MAX_SPANS) -> EndpointReport:
        """The inventory joined with the server spans that ended in ``[since_ns, until_ns)``."""
        inv = self.inventory(service)
        kind = func.coalesce(spans.c.kind, span_details.c.kind)  # in span_details before revision 0006
        q = (select(spans.c.service, spans.c.workflow, spans.c.start_ns, spans.c.end_ns, spans.c.status,
                    spans.c.attributes)
             .select_from(spans.outerjoin(span_details, and_(span_details.c.correlation_id == spans.c.correlation_id,
                                                             span_details.c.span_id == spans.c.span_id)))
             .where(spans.c.end_ns >= since_ns, spans.c.end_ns < until_ns,
                    spans.c.attributes.like('%"http.route"%'),
                    or_(kind == "server", and_(kind.is_(None), spans.c.layer == "api")))
             .order_by(spans.c.end_ns.desc()).limit(max_spans + 1))
        if service is not None:
            q = q.where(spans.c.service == service)
        acc: dict[tuple[str, str, str], _Acc] = {}
        traffic_services: set[str] = set()
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        truncated = len(rows) > max_spans
        for r in rows[:max_spans]:
            try:
                attrs = orjson.loads(r.attributes)
            except orjson.JSONDecodeError:
                continue
            route = attrs.get("http.route") if isinstance(attrs, dict) else None
            if not isinstance(route, str) or not route:
                continue
            method = _attr(attrs, _METHOD_KEYS)
            code = _attr(attrs, _STATUS_KEYS)
            key = (r.service, str(method).upper() if method else c.METHOD_ANY, normalize_route(route))
            a = acc.get(key)
            if a is None:
                a = acc[key] = _Acc()
            traffic_services.add(r.service)
            a.calls += 1
            failed = r.status in c.FAILED_STATUSES or (isinstance(code, int) and code >= 500)
            a.errors += failed
            a.durations.append(max(0, r.end_ns - r.start_ns) / 1e6)
            a.last = max(a.last, r.end_ns)
            a.workflows.add(r.workflow)
            status = str(code) if code is not None else r.status
            a.statuses[status] = a.statuses.get(status, 0) + 1
        documented: dict[tuple[str, str, str], EndpointUsage] = {}
        for e in inv:
            documented[(e.service, e.method, e.path)] = EndpointUsage(
                e.service, e.method, e.path, True, e.view, e.auth, e.source, e.registered_at_ns)
        per_doc: dict[tuple[str, str, str], _Acc] = {}
        undocumented: list[EndpointUsage] = []
        inventoried = {e.service for e in inv}
        for key, a in acc.items():
            svc, method, path = key
            target = key if key in documented else (svc, c.METHOD_ANY, path)
            if target in documented:
                merged = per_doc.setdefault(target, _Acc())
                merged.calls += a.calls
                merged.errors += a.errors
                merged.durations += a.durations
                merged.last = max(merged.last, a.last)
                merged.workflows |= a.workflows
                for k, n in a.statuses.items():
                    merged.statuses[k] = merged.statuses.get(k, 0) + n
            elif svc in inventoried:
                undocumented.append(a.fill(EndpointUsage(svc, method, path, False)))
        out = [per_doc[k].fill(u) if k in per_doc else u for k, u in sorted(documented.items(), key=lambda kv: (
            kv[0][0], kv[0][2], kv[0][1]))]
        undocumented.sort(key=lambda u: (u.service, u.path, u.method))
        covered = rows[max_spans - 1].end_ns if truncated else since_ns
        return EndpointReport(since_ns, until_ns, out, undocumented, sorted(traffic_services - inventoried),
                              min(len(rows), max_spans), truncated, covered)
