"""Reads of runs for replay and the run page: lists and summaries of finished runs, one run with its spans,
errors and linked runs, as typed rows (:mod:`.rows`).

    store.list_runs(workflow="checkout", status="error", min_duration_ms=500)   # [RunSummary, ...]
    store.get_run(correlation_id)                                                # RunDetail | None
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, func, or_, select

from .. import conventions as c
from .rows import (
    ErrorOccurrence,
    LinkedRun,
    RunDetail,
    RunSummary,
    SpanRow,
    SpanView,
    WorkflowStats,
    columns_of,
    to_json,
)
from .schema import errors, profiles, resources, runs, span_details, span_links, spans

#: At most this many linked runs per direction are returned with a run.
MAX_LINKED_RUNS = 100


def _like_escape(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (escape character ``\\``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class RunQueries:
    """The run reads of :class:`~exporter.store.RunStore`."""

    engine: Engine

    def list_runs(self, workflow: str | None = None, status: str | None = None, since_ns: int | None = None,
                  until_ns: int | None = None, min_duration_ms: float | None = None, limit: int = 100,
                  offset: int = 0, error_text: str | None = None, attribute: tuple[str, str] | None = None,
                  slowest_first: bool = False) -> list[RunSummary]:
        """Finished runs, newest (or slowest) first; ``status`` is one status or several. ``error_text``
        matches the run's error type or message (case-insensitive substring); ``attribute`` = (key, value)
        keeps runs with a span whose attribute ``key`` is ``value``."""
        q = select(*columns_of(runs, RunSummary))
        if error_text:
            pattern = "%" + _like_escape(error_text) + "%"
            q = q.where(runs.c.error_message.ilike(pattern, escape="\\") |
                        runs.c.error_type.ilike(pattern, escape="\\"))
        if attribute is not None:
            # attributes are stored as orjson text: "key":"value" for a string, "key":5, or "key":5} for a number
            key, value = (_like_escape(to_json(x)) for x in attribute)
            number = _like_escape(attribute[1])
            match = or_(*(spans.c.attributes.like(f"%{key}:{v}%", escape="\\")
                          for v in (value, number + ",", number + "}")))
            has = select(spans.c.correlation_id).where(spans.c.correlation_id == runs.c.correlation_id, match).exists()
            q = q.where(has)
        if workflow:
            q = q.where(runs.c.workflow == workflow)
        if status:
            q = q.where(runs.c.status.in_((status,) if isinstance(status, str) else tuple(status)))
        if since_ns is not None:
            q = q.where(runs.c.start_ns >= since_ns)
        if until_ns is not None:
            q = q.where(runs.c.start_ns <= until_ns)
        if min_duration_ms is not None:
            q = q.where(runs.c.duration_ms >= min_duration_ms)
        order = (runs.c.duration_ms.desc(),) if slowest_first else (runs.c.start_ns.desc(),)
        q = q.order_by(*order, runs.c.correlation_id).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [RunSummary(*r) for r in conn.execute(q)]

    def runs_by_id(self, correlation_ids: list[str]) -> list[RunSummary]:
        """The finished runs among ``correlation_ids`` (at most a few hundred: one IN list)."""
        if not correlation_ids:
            return []
        with self.engine.connect() as conn:
            return [RunSummary(*r) for r in conn.execute(select(*columns_of(runs, RunSummary))
                                                         .where(runs.c.correlation_id.in_(correlation_ids)))]

    def workflows_of_traces(self, trace_ids: list[str]) -> dict[str, str]:
        """The workflow of the stored run of each trace among ``trace_ids`` that has one (``ix_runs_trace``; one
        IN list: pass at most a few thousand). How a replica names the spans whose root another replica stored
        (:class:`~exporter.resolver.WorkflowResolver`)."""
        if not trace_ids:
            return {}
        with self.engine.connect() as conn:
            q = select(runs.c.trace_id, runs.c.workflow).where(runs.c.trace_id.in_(trace_ids))
            return dict(conn.execute(q).all())  # not dict(result): a Result has keys(), so dict() reads it as a mapping

    def workflow_summary(self, since_ns: int, max_runs: int = 200_000) -> list[WorkflowStats]:
        """Per workflow, the runs that started since ``since_ns``: count, failed, error ratio, p50 and p95
        duration (ms, nearest rank), newest first by traffic. Reads at most ``max_runs`` runs (newest)."""
        q = (select(runs.c.workflow, runs.c.status, runs.c.duration_ms).where(runs.c.start_ns >= since_ns)
             .order_by(runs.c.start_ns.desc()).limit(max_runs))
        per: dict[str, list[Any]] = {}  # workflow: [failed, durations]
        with self.engine.connect() as conn:
            for wf, status, dur in conn.execute(q):  # unpacked: up to 200,000 rows, and a Row's attributes cost 15x
                g = per.setdefault(wf, [0, []])
                g[0] += status in c.FAILED_STATUSES
                g[1].append(dur)
        out = []
        for wf, (failed, durs) in per.items():
            durs.sort()
            n = len(durs)
            out.append(WorkflowStats(workflow=wf, runs=n, failed=failed, error_ratio=failed / n,
                                     p50_ms=durs[max(0, math.ceil(0.5 * n) - 1)],
                                     p95_ms=durs[max(0, math.ceil(0.95 * n) - 1)]))
        out.sort(key=lambda r: (-r.runs, r.workflow))
        return out

    def get_run(self, correlation_id: str) -> RunDetail | None:
        """The run with all its spans (start order), errors, profile count and linked runs; None if unknown.

        A trace_id (as exemplars and log lines carry) finds its run too. Each span carries ``kind``,
        ``resource``, ``events`` and ``links`` (None / [] when it has none); ``linked_runs`` lists the
        runs this run's spans link to and the runs whose spans link to it (:meth:`linked_runs`).

        A run whose root has not arrived (or never will) is still returned when it has
        spans: its status is ``in_progress`` and its bounds are its spans'.
        """
        with self.engine.connect() as conn:
            run = conn.execute(select(*columns_of(runs, RunSummary))
                               .where(runs.c.correlation_id == correlation_id)).first()
            if run is None and len(correlation_id) == 32:
                # exemplars and Loki lines carry the trace_id: resolve it to its run
                cid = conn.execute(select(runs.c.correlation_id).where(runs.c.trace_id == correlation_id)
                                   .limit(1)).scalar()
                if cid is not None and cid != correlation_id:
                    return self.get_run(cid)
            rows = conn.execute(select(*columns_of(spans, SpanRow)).where(spans.c.correlation_id == correlation_id)
                                .order_by(spans.c.start_ns, spans.c.end_ns, spans.c.span_id)).all()
            if run is None and not rows:
                return None
            errs = [ErrorOccurrence(*e) for e in conn.execute(
                select(*columns_of(errors, ErrorOccurrence)).where(errors.c.correlation_id == correlation_id)
                .order_by(errors.c.time_ns, errors.c.id))]
            nprof = conn.execute(select(func.count()).select_from(profiles)
                                 .where(profiles.c.correlation_id == correlation_id)).scalar_one()
            details = {sid: (kind, res, events, links) for sid, kind, res, events, links in conn.execute(
                select(span_details.c.span_id, span_details.c.kind, span_details.c.resource, span_details.c.events,
                       span_details.c.links).where(span_details.c.correlation_id == correlation_id))}
            rids = {r.resource_id for r in rows} - {None}
            res_json = dict(conn.execute(select(resources.c.id, resources.c.attributes)
                                         .where(resources.c.id.in_(rids))).all()) if rids else {}
            trace_ids = {r.trace_id for r in rows} | ({run.trace_id} if run is not None else set())
            linked = self._linked_runs(conn, correlation_id, trace_ids)
        loads = orjson.loads
        none = (None, None, None, None)
        span_list = []
        for (cid, sid, tid, parent, wf, service, layer, comp, op, start, end, status, etype, emsg, stack, attrs,
             state, is_step, kind, rid) in rows:  # unpacked: a run may hold tens of thousands of spans
            old_kind, res, events, links = details.get(sid, none)  # kind and resource: here before revision 0006
            kind = kind or old_kind
            if rid is not None:
                res = res_json.get(rid)
            span_list.append(SpanView(
                cid, sid, tid, parent, wf, service, layer, comp, op, start, end, status, etype, emsg, stack,
                loads(attrs) if attrs else {}, loads(state) if state is not None else None, is_step, kind,
                loads(res) if res else None, loads(events) if events else [], loads(links) if links else []))
        if run is None:
            first = span_list[0]
            start_ns, end_ns = min(s.start_ns for s in span_list), max(s.end_ns for s in span_list)
            head = RunSummary(correlation_id=correlation_id, workflow=first.workflow, status="in_progress",
                              start_ns=start_ns, end_ns=end_ns, duration_ms=(end_ns - start_ns) / 1e6,
                              trace_id=first.trace_id, service=first.service, user_hash=None, error_type=None,
                              error_message=None)
        else:
            head = RunSummary(*run)
        return RunDetail(run=head, spans=span_list, errors=errs, profiles=nprof, linked_runs=linked)

    def linked_runs(self, correlation_id: str) -> list[LinkedRun]:
        """The runs linked with this one (:class:`~exporter.store.rows.LinkedRun`).

        ``direction`` is ``links_to`` for a run one of this run's spans links to (a consumer's producer)
        and ``linked_from`` for a run with a span linking to this run's trace (the producer's consumers).
        Links resolve to runs through the runs table's trace index; a link to a trace with no stored run
        stays on its span only. At most :data:`MAX_LINKED_RUNS` per direction.
        """
        with self.engine.connect() as conn:
            tids = set(conn.execute(select(spans.c.trace_id).where(spans.c.correlation_id == correlation_id)
                                    .distinct()).scalars())
            tids.update(conn.execute(select(runs.c.trace_id).where(runs.c.correlation_id == correlation_id))
                        .scalars())
            return self._linked_runs(conn, correlation_id, tids)

    @staticmethod
    def _linked_runs(conn: Connection, correlation_id: str, trace_ids: set[str]) -> list[LinkedRun]:
        out: list[LinkedRun] = []
        targets = sorted(set(conn.execute(select(span_links.c.link_trace_id)
                                          .where(span_links.c.correlation_id == correlation_id)
                                          .distinct().limit(1000)).scalars()) - trace_ids)
        seen: set[tuple[str, str]] = set()
        if targets:
            q = (select(runs.c.correlation_id, runs.c.workflow, runs.c.trace_id)
                 .where(runs.c.trace_id.in_(targets[:500]), runs.c.correlation_id != correlation_id)
                 .order_by(runs.c.start_ns, runs.c.correlation_id).limit(MAX_LINKED_RUNS))
            for cid, wf, tid in conn.execute(q):
                if (cid, "links_to") not in seen:
                    seen.add((cid, "links_to"))
                    out.append(LinkedRun(cid, wf, tid, "links_to"))
        if trace_ids:
            src = (select(span_links.c.correlation_id)
                   .where(span_links.c.link_trace_id.in_(sorted(trace_ids)[:500]),
                          span_links.c.correlation_id != correlation_id)
                   .distinct().limit(MAX_LINKED_RUNS).subquery())
            q = (select(src.c.correlation_id, runs.c.workflow, runs.c.trace_id)
                 .select_from(src.outerjoin(runs, runs.c.correlation_id == src.c.correlation_id))
                 .order_by(runs.c.start_ns, src.c.correlation_id))
            for cid, wf, tid in conn.execute(q):
                if (cid, "linked_from") not in seen:
                    seen.add((cid, "linked_from"))
                    out.append(LinkedRun(cid, wf, tid, "linked_from"))
        return out
