"""Reads for attribution ("what do the failed or slow runs share"): columns of runs and their spans, read in
bulk and left for :mod:`backend.analysis.attribution` to parse.

    rows = store.attribution_runs("checkout", since_ns, until_ns)
    store.attribution_spans(rows, sampled_indices)
"""

from __future__ import annotations

from sqlalchemy import Engine, and_, func, or_, select, union_all

from .rows import AttributionRows
from .schema import resources, runs, span_details, spans

__all__ = ["ATTRIBUTION_CHUNK", "AttributionQueries", "AttributionRows"]

#: Run ids per IN list when attribution reads spans (well under SQLite's 32,766 bound parameters).
ATTRIBUTION_CHUNK = 2000


class AttributionQueries:
    """The attribution reads of :class:`~exporter.store.RunStore`."""

    engine: Engine

    def attribution_runs(self, workflow: str, since_ns: int, until_ns: int,
                         max_runs: int = 100_000) -> AttributionRows:
        """The first read of attribution: one workflow's finished runs that started in ``[since_ns, until_ns)``
        (the newest ``max_runs``), runs only (id, status, duration, start); :meth:`attribution_spans` then
        reads the spans of the runs attribution samples."""
        q = (select(runs.c.correlation_id, runs.c.status, runs.c.duration_ms, runs.c.start_ns)
             .where(runs.c.workflow == workflow, runs.c.start_ns >= since_ns, runs.c.start_ns < until_ns)
             .order_by(runs.c.start_ns.desc()).limit(max_runs))
        out = AttributionRows()
        with self.engine.connect() as conn:
            for cid, status, dur, start in conn.execute(q):  # unpacked: up to 100,000 rows (see rows.py)
                out.run_ids.append(cid)
                out.status.append(status)
                out.duration_ms.append(dur)
                out.start_ns.append(start)
        return out

    def attribution_spans(self, rows: AttributionRows, which: list[int]) -> AttributionRows:
        """Fill ``rows``' span and resource columns for the runs at the indices ``which``: every span's names,
        duration and raw attribute JSON, and the raw resource JSON of each span that has one. JSON is left
        unparsed: identical texts (a resource's, attributes without IDs) are parsed once by the caller.
        IN lists of :data:`ATTRIBUTION_CHUNK` ids; two queries per chunk (resources: the ``resources`` row a span
        names, or a ``span_details`` copy written before revision 0006)."""
        ids = [rows.run_ids[i] for i in which]
        index = dict(zip(ids, which))
        run_of = index.__getitem__  # every id read is one of ``ids``
        span_cols = (spans.c.correlation_id, spans.c.layer, spans.c.component, spans.c.operation, spans.c.service,
                     spans.c.start_ns, spans.c.end_ns, spans.c.attributes)
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(self.engine.dialect.paramstyle)
        with self.engine.connect() as conn:
            for k in range(0, len(ids), ATTRIBUTION_CHUNK):
                chunk = ids[k:k + ATTRIBUTION_CHUNK]
                if mark is not None:  # plain SQL to the driver: compiling a 2,000-item IN list costs more than the read
                    marks = ", ".join([mark] * len(chunk))
                    span_rows = conn.exec_driver_sql(
                        "SELECT correlation_id, layer, component, operation, service, start_ns, end_ns, attributes "
                        f"FROM spans WHERE correlation_id IN ({marks})", tuple(chunk))
                    res_rows = conn.exec_driver_sql(
                        f"SELECT correlation_id, resource FROM span_details WHERE correlation_id IN ({marks}) "
                        "AND resource IS NOT NULL UNION ALL SELECT s.correlation_id, r.attributes FROM spans s "
                        f"JOIN resources r ON r.id = s.resource_id WHERE s.correlation_id IN ({marks})",
                        tuple(chunk) * 2)
                else:
                    span_rows = conn.execute(select(*span_cols).where(spans.c.correlation_id.in_(chunk)))
                    res_rows = conn.execute(union_all(
                        select(span_details.c.correlation_id, span_details.c.resource).where(
                            span_details.c.correlation_id.in_(chunk), span_details.c.resource.is_not(None)),
                        select(spans.c.correlation_id, resources.c.attributes)
                        .join(resources, resources.c.id == spans.c.resource_id)
                        .where(spans.c.correlation_id.in_(chunk))))
                for cid, layer, comp, op, service, start, end, attrs in span_rows:  # unpacked, as above
                    rows.span_run.append(run_of(cid))
                    rows.layer.append(layer)
                    rows.component.append(comp)
                    rows.operation.append(op)
                    rows.service.append(service)
                    rows.span_ms.append((end - start) / 1e6)
                    rows.attributes.append(attrs)
                for cid, res in res_rows:
                    rows.resource_run.append(run_of(cid))
                    rows.resource.append(res)
        return rows

    def attribution_step_ms(self, run_ids: list[str], operation: str) -> dict[str, float]:
        """Per run among ``run_ids``, the longest span named ``operation`` (or ``component/operation``), in ms:
        the per-step durations of attribution's ``select=slow&operation=``. Runs without the step are absent."""
        out: dict[str, float] = {}
        comp, _, op = operation.partition("/")
        match = spans.c.operation == operation
        if op:
            match = or_(match, and_(spans.c.component == comp, spans.c.operation == op))
        dur = func.max(spans.c.end_ns - spans.c.start_ns)
        with self.engine.connect() as conn:
            for k in range(0, len(run_ids), ATTRIBUTION_CHUNK):
                q = (select(spans.c.correlation_id, dur)
                     .where(spans.c.correlation_id.in_(run_ids[k:k + ATTRIBUTION_CHUNK]), match)
                     .group_by(spans.c.correlation_id))
                for cid, ns in conn.execute(q):
                    out[cid] = ns / 1e6
        return out
