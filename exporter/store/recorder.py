"""The store's write path: :class:`RunWriter` turns a drained batch into rows and writes it in one transaction,
and :class:`RunRecorder`, the pipeline's sink, queues what the pipeline hands it on a
:class:`~exporter.worker.BatchWorker` whose one thread writes it.

Producers only queue (the SDK's fast path queues a tuple, no Span is built); the writer thread takes a batch every
``flush_interval_s`` and retries while the database is down (:data:`STORE_RETRY`); the exporter's tick sweeps
runs past their retention (:meth:`RunRecorder.sweep_if_due`).

Before anything is written, secret keys are redacted (:mod:`exporter.redact`), user identifiers are hashed, and
state snapshots over ``state_max_bytes`` keep the keys that fit plus a :data:`~exporter.conventions.TRUNCATED_KEY`
marker.

    store = RunStore(make_engine("sqlite:///var/flowscope.db"))
    rec = RunRecorder(store, metric_store, retention_s=7 * 86400)
    pipeline.attach_recorder(rec)
    rec.start()                 # the owner starts the writer thread ...
    rec.close(timeout_s=10)     # ... and stops it (Pipeline.close does, for every sink)
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, and_, bindparam, delete, select, update
from sqlalchemy import exc as sa_exc

from .. import conventions as c
from ..classify import classify_error
from ..db import insert_ignore
from ..fingerprint import Fingerprinter, failure_causes
from ..metrics import MetricStore
from ..model import ErrorRecord, LogLine, Span, hash_user
from ..redact import Redactor
from ..retry import RetriesExhausted, RetryInterrupted, RetryPolicy, SendError
from ..worker import BatchWorker
from .logs import delete_logs_before, insert_logs, log_row
from .migrate import ensure_schema
from .pgcopy import BulkInsert, bulk_method_from_env
from .process import WriterDied, WriterOutage, WriterProcess
from .rows import DETAIL_COLUMNS, LINK_COLUMNS, SPAN_COLUMNS, DetailRow, LinkRow, SpanRow, to_json
from .schema import error_aliases, error_groups, errors, profiles, runs, span_details, span_links, spans
from .schema import resources as resources_table

if TYPE_CHECKING:
    from .client import RunStore

log = logging.getLogger("flowscope.runstore")

N_SPAN_COLUMNS = len(SPAN_COLUMNS)
_END_NS, _RESOURCE_ID = SPAN_COLUMNS.index("end_ns"), SPAN_COLUMNS.index("resource_id")
#: A stored resource's ``last_seen_ns`` is raised only once it is this far behind a batch's spans (one update per
#: process an hour, not one per batch); the retention sweep keeps resources this much longer, so a kept span's
#: resource is never deleted.
RESOURCE_SEEN_SLACK_NS = 3600 * 10**9

#: The writer's retry while the database is unavailable: backoff from 0.5 s doubling to 30 s, no deadline (a
#: store that is down keeps its batch until it is back, or until the recorder closes; meanwhile the queue
#: sheds runs and counts what it drops).
STORE_RETRY = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=30.0, deadline_s=float("inf"))


def _insert_ignore_sql(dialect, table: str, columns: tuple[str, ...]) -> str | None:
    """Plain SQL for the driver's executemany, where the dialect's paramstyle is known; else None."""
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    if mark is None or dialect.name not in ("sqlite", "postgresql"):
        return None
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))}) "
            "ON CONFLICT DO NOTHING")


#: Attribute keys that identify a person: stored hashed, never raw.
USER_KEYS = frozenset(("enduser.id", "user", "user.id", "user_id", "username", "user.name", "user.email", "email"))


def cap_state(state: dict, max_bytes: int) -> tuple[str, bool]:
    """The snapshot as JSON, at most about ``max_bytes``: (json, truncated).

    Over the cap, keys are kept in order while they fit; a marker says how big the
    snapshot was and which keys were dropped. A snapshot is never rejected.
    """
    raw = to_json(state)
    if len(raw) <= max_bytes:
        return raw, False
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    used = 200  # room for the marker
    for k, v in state.items():
        size = len(to_json({k: v}))
        if used + size <= max_bytes:
            kept[k] = v
            used += size
        else:
            dropped.append(str(k))
    kept[c.TRUNCATED_KEY] = {"original_bytes": len(raw), "max_bytes": max_bytes, "dropped_keys": dropped[:20],
                             "dropped_key_count": len(dropped)}
    return to_json(kept), True


#: Errors about the database's state, not the data (disconnects, locks, a full disk, a read-only
#: standby): never poison, however often one item meets them; the writer keeps the batch and retries.
_OUTAGE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.InternalError, sa_exc.TimeoutError,
                  sa_exc.DisconnectionError)


def is_outage(error: BaseException) -> bool:
    """Whether a failed write says the database is unavailable (retry all) rather than refusing one item."""
    return isinstance(error, _OUTAGE_ERRORS) or bool(getattr(error, "connection_invalidated", False))


def driver_message(error: BaseException) -> str:
    """The driver's own message (SQLAlchemy's wrapper would add the statement and every parameter)."""
    try:
        return str(getattr(error, "orig", None) or error)[:500]
    except Exception:  # noqa: BLE001 - an error whose message cannot be shown is still counted and logged
        return "(no message)"


def describe(item) -> str:
    """Which item was dropped, for the log: its kind and ids, never its contents."""
    try:
        if type(item) is tuple:  # an SDK fast-path step, or (in the writer process) its row
            cid = item[0] if isinstance(item[0], str) else item[0].correlation_id
            return f"step of run {str(cid)[:128]!r}"
        if isinstance(item, Span):
            return f"span {str(item.span_id)[:32]!r} of run {str(item.correlation_id)[:128]!r}"
        return f"{type(item).__name__} of run {str(getattr(item, 'correlation_id', None))[:128]!r}"
    except Exception:  # noqa: BLE001 - ids odd enough to fail here: the kind alone still helps
        return type(item).__name__


class RunWriter:
    """The write half of :class:`~exporter.store.RunStore`: rows from spans, errors and profiles, error
    fingerprints and failure chains, the retention sweep.

    On PostgreSQL (psycopg 3) the big tables go in bulk, by ``pg_method`` (:data:`~exporter.store.pgcopy.METHODS`;
    default COPY through a staging table, or what a benchmark's ``FLOWSCOPE_BENCH_PG_INSERT`` names)."""

    engine: Engine

    def __init__(self, engine, redactor: Redactor | None = None, state_max_bytes: int = 16_384,
                 pg_method: str | None = None):
        self.engine = engine
        self.redactor = redactor or Redactor()
        self.state_max_bytes = state_max_bytes
        ensure_schema(engine)
        self.fingerprints = Fingerprinter()
        self._load_fingerprints()
        self._insert_span = insert_ignore(engine, spans)
        self._span_sql = _insert_ignore_sql(engine.dialect, "spans", SPAN_COLUMNS)
        self._insert_run = insert_ignore(engine, runs)
        self._insert_detail = insert_ignore(engine, span_details)
        self._insert_resource = insert_ignore(engine, resources_table)
        self._detail_sql = _insert_ignore_sql(engine.dialect, "span_details", DETAIL_COLUMNS)
        self._insert_link = insert_ignore(engine, span_links)
        self._link_sql = _insert_ignore_sql(engine.dialect, "span_links", LINK_COLUMNS)
        #: PostgreSQL: the big tables' rows go in bulk (:mod:`exporter.store.pgcopy`), not row by row
        self._bulk: dict[str, BulkInsert] = {}
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            method = pg_method or bulk_method_from_env()
            self._bulk = {t.name: BulkInsert(t, method) for t in (spans, span_details, span_links)}
        self._lock = threading.Lock()  # one writer at a time owns the fingerprinter

    #: At most this many stored messages of legacy groups are read on start to find their aliases.
    MAX_ALIAS_SCAN = 50_000

    def _load_fingerprints(self) -> None:
        """Give the fingerprinter the stored groups and aliases; find aliases for groups stored by the old
        miner from their template and their stored messages (once: a group with an alias is not scanned
        again), and keep the aliases found."""
        fpr = self.fingerprints
        with self.engine.begin() as conn:
            groups = [(r.fingerprint, r.error_type, r.template, (r.resolved_at_ns is not None, r.count))
                      for r in conn.execute(select(error_groups.c.fingerprint, error_groups.c.error_type,
                                                   error_groups.c.template, error_groups.c.resolved_at_ns,
                                                   error_groups.c.count))]
            aliases = conn.execute(select(error_aliases.c.group_fingerprint, error_aliases.c.fingerprint)).all()
            aliased = {fp for fp, _ in aliases}
            scan = [g[0] for g in groups if g[0] not in aliased and fpr.is_legacy(*g[:3])]
            occurrences: list = []
            for i in range(0, len(scan), 500):
                left = self.MAX_ALIAS_SCAN - len(occurrences)
                if left <= 0:
                    break
                occurrences += conn.execute(
                    select(errors.c.fingerprint, errors.c.error_type, errors.c.message)
                    .where(errors.c.fingerprint.in_(scan[i:i + 500])).distinct().limit(left)).all()
            found = fpr.load(groups, aliases, occurrences)
            if found:
                conn.execute(insert_ignore(self.engine, error_aliases),
                             [{"fingerprint": new, "group_fingerprint": fp} for fp, new in found])
            if scan or found:
                log.info("error groups from before type + template fingerprints: %d, aliases found: %d",
                         len(fpr.legacy), len(found))

    # -- writing ------------------------------------------------------------------------------

    def _redact(self, attrs: dict) -> dict:
        """Attributes as stored: secret keys redacted, user identifiers hashed."""
        out = self.redactor.value(attrs)
        for k in USER_KEYS.intersection(out):
            if out[k] is not None:
                out[k] = hash_user(str(out[k]))
        return out

    def _attrs(self, attrs: dict | None) -> str | None:
        if not attrs:
            return None
        return to_json(self._redact(attrs))

    def resource_id(self, res: dict | None, resources: dict[int, tuple]) -> str | None:
        """The ``resources`` id of a span's resource (a hash of its redacted JSON; None without one).
        ``resources`` caches each resource by identity for one batch (decoders share one dict per resource):
        ``id(res) -> (res, id, json)``."""
        if not res:
            return None
        got = resources.get(id(res))
        if got is None or got[0] is not res:  # holding res keeps its id from being reused
            text = self._attrs(res)
            got = resources[id(res)] = (res, blake2b(text.encode(), digest_size=8).hexdigest() if text else None,
                                        text)
        return got[1]  # type: ignore[no-any-return]

    def detail_rows(self, s: Span) -> tuple[DetailRow | None, list[LinkRow]]:
        """The span's :data:`DETAIL_COLUMNS` row (None when it has no events or links) and its
        :data:`LINK_COLUMNS` rows, redacted like attributes."""
        events, links = s.events, s.links
        if not (events or links):
            return None, []
        text = self.redactor.text
        ev_json = to_json([{"name": text(e.get("name")), "time_ns": e.get("time_ns"),
                          "attributes": self._redact(e.get("attributes") or {})} for e in events]) if events else None
        link_rows = []
        ln_json = None
        if links:
            ln_json = to_json([{"trace_id": ln["trace_id"], "span_id": ln["span_id"],
                              "attributes": self._redact(ln.get("attributes") or {})} for ln in links])
            link_rows = [LinkRow(s.correlation_id, s.span_id, ln["trace_id"], ln["span_id"], s.end_ns) for ln in links]
        return DetailRow(s.correlation_id, s.span_id, s.end_ns, None, None, ev_json, ln_json), link_rows

    def span_row(self, s: Span, resources: dict[int, tuple]) -> tuple[SpanRow, bool]:
        """The span as a row in :data:`SPAN_COLUMNS` order, redacted and capped; and whether its state was cut.
        ``resources``: as :meth:`resource_id`."""
        red = self.redactor
        truncated = False
        state = None
        if s.state is not None:
            state, truncated = cap_state(red.value(s.state) if isinstance(s.state, dict) else {"value": s.state},
                                         self.state_max_bytes)
        return SpanRow(s.correlation_id, s.span_id, s.trace_id, s.parent_span_id or None,
                       s.workflow or c.UNKNOWN_WORKFLOW, s.service or "", s.layer, s.component[:200], s.operation[:500],
                       s.start_ns, s.end_ns, s.status, s.error_type, red.text(s.error_message), red.text(s.stack_trace),
                       self._attrs(s.attributes), state, bool(s.is_step), s.kind[:16] if s.kind else None,
                       self.resource_id(s.resource, resources)), truncated

    @staticmethod
    def fast_row(t: tuple) -> tuple:
        """A fast-path step as a spans row (a plain tuple in :data:`SPAN_COLUMNS` order: this is the SDK's hot
        path, and nothing reads it back by name)."""
        run, layer, component, operation, start_ns, end_ns, span_id, parent = t
        return (run.correlation_id, span_id, run.trace_id, parent, run.workflow, run.service or "", layer, component,
                operation, start_ns, end_ns, "ok", None, None, None, None, None, True, None, None)

    def write(self, items: list, poisoned: list | None = None) -> dict[str, int]:
        """Store one drained batch (Spans, fast-step tuples, ErrorRecords, Profiles) in one transaction.

        An item whose rows cannot even be built (orjson refusing its state or attributes, a message
        that is not text) is left out and appended to ``poisoned`` as ``(item, error)``, so the
        recorder drops it without a database round trip; without a ``poisoned`` list the error is
        raised. What the database itself refuses raises, and nothing of the batch is written.
        """
        span_rows: list[tuple] = []
        detail_rows: list[DetailRow] = []
        link_rows: list[LinkRow] = []
        resources: dict[int, tuple] = {}
        run_rows: list[dict] = []
        err_rows: list[dict] = []
        prof_rows: list[dict] = []
        log_rows: list[dict] = []
        truncated = 0
        red = self.redactor
        fast_row, span_row, details_of = self.fast_row, self.span_row, self.detail_rows
        for it in items:
            try:
                if type(it) is tuple:  # an SDK fast-path step (its run a RunIds, from the writer process's pipe)
                    span_rows.append(it if len(it) == N_SPAN_COLUMNS else fast_row(it))
                elif isinstance(it, Span):
                    row, cut = span_row(it, resources)
                    detail, links = details_of(it)
                    run_row = err_row = None
                    if it.is_root:
                        run_row = {
                            "correlation_id": it.correlation_id, "workflow": row.workflow, "status": it.status,
                            "start_ns": it.start_ns, "end_ns": it.end_ns,
                            "duration_ms": (it.end_ns - it.start_ns) / 1e6, "trace_id": it.trace_id,
                            "service": row.service, "user_hash": it.user, "error_type": it.error_type,
                            "error_message": row.error_message}
                    if it.is_step and it.status in c.FAILED_STATUSES:
                        err_row = {"correlation_id": it.correlation_id, "span_id": it.span_id,
                                   "workflow": row.workflow, "service": row.service, "layer": it.layer,
                                   "component": row.component, "error_type": it.error_type or it.status,
                                   "message": row.error_message, "stack_trace": row.stack_trace,
                                   "time_ns": it.end_ns}
                    # appended only once every row of the item is built: a poisoned item leaves no half behind
                    span_rows.append(row)
                    truncated += cut
                    if detail is not None:
                        detail_rows.append(detail)
                        link_rows += links
                    if run_row is not None:
                        run_rows.append(run_row)
                    if err_row is not None:
                        err_rows.append(err_row)
                elif isinstance(it, ErrorRecord):
                    err_rows.append({"correlation_id": it.correlation_id, "span_id": it.span_id,
                                     "workflow": it.workflow, "service": it.service or "", "layer": it.layer,
                                     "component": it.component[:200], "error_type": it.error_type[:200],
                                     "message": red.text(it.message), "stack_trace": red.text(it.stack_trace),
                                     "time_ns": it.time_ns or time.time_ns()})
                elif isinstance(it, LogLine):
                    log_rows.append(log_row(it, red))
                else:  # a Profile: CPU (folded, pstats) or memory (alloc, held: bytes per stack, peak and net)
                    stacks = it.stacks if it.stacks or it.is_memory else dict(it.self_seconds.items())
                    prof_rows.append({"workflow": it.workflow, "correlation_id": it.correlation_id,
                                      "time_ns": it.time_ns or time.time_ns(), "format": it.kind,
                                      "sample_rate_hz": it.sample_rate_hz, "stacks": to_json(stacks),
                                      "peak_bytes": it.peak_bytes, "net_bytes": it.net_bytes})
            except Exception as e:  # whatever one item raises must not cost the batch
                if poisoned is None:
                    raise
                poisoned.append((it, e))
        res_rows = self._resource_rows(resources, span_rows)
        with self._lock:
            if res_rows:
                self._write_resources(res_rows)
            self._write_rows(span_rows, detail_rows, link_rows, run_rows, err_rows, prof_rows, log_rows)
        return {"spans": len(span_rows), "runs": len(run_rows), "errors": len(err_rows),
                "profiles": len(prof_rows), "logs": len(log_rows), "truncated_states": truncated}

    def _write_resources(self, rows: list[dict]) -> None:
        """The batch's resources, in a short transaction of their own before the spans that name them, in id
        order, and ``last_seen_ns`` raised only when it is :data:`RESOURCE_SEEN_SLACK_NS` behind: replicas writing
        spans of one process at once neither wait on its row for a whole batch nor lock two rows in two orders.
        (A batch that then fails leaves its resources stored: the sweep takes them in time.)"""
        rows.sort(key=lambda r: r["id"])
        with self.engine.begin() as conn:
            conn.execute(self._insert_resource, rows)
            seen = bindparam("seen")
            conn.execute(update(resources_table)
                         .where(resources_table.c.id == bindparam("rid"),
                                resources_table.c.last_seen_ns < seen - RESOURCE_SEEN_SLACK_NS)
                         .values(last_seen_ns=seen),
                         [{"rid": r["id"], "seen": r["last_seen_ns"]} for r in rows])

    def _write_rows(self, span_rows: list, detail_rows: list, link_rows: list, run_rows: list, err_rows: list,
                    prof_rows: list, log_rows: list) -> None:
        """Every row of one batch but its resources, in one transaction."""
        bulk = self._bulk
        with self.engine.begin() as conn:
            if bulk:  # PostgreSQL: one statement per table (pgcopy), still ON CONFLICT DO NOTHING
                bulk["spans"].insert(conn, span_rows)
                bulk["span_details"].insert(conn, detail_rows)
                bulk["span_links"].insert(conn, link_rows)
            elif span_rows:
                if self._span_sql is not None:  # straight to the driver's executemany: no per-row compiling
                    conn.exec_driver_sql(self._span_sql, span_rows)
                else:
                    conn.execute(self._insert_span, [dict(zip(SPAN_COLUMNS, r)) for r in span_rows])
            for rows, sql, stmt, cols in ((detail_rows, self._detail_sql, self._insert_detail, DETAIL_COLUMNS),
                                          (link_rows, self._link_sql, self._insert_link, LINK_COLUMNS)):
                if rows and not bulk:
                    if sql is not None:
                        conn.exec_driver_sql(sql, rows)
                    else:
                        conn.execute(stmt, [dict(zip(cols, r)) for r in rows])
            if run_rows:
                conn.execute(self._insert_run, run_rows)
            if err_rows:
                self._write_errors(conn, err_rows)
            if prof_rows:
                conn.execute(profiles.insert(), prof_rows)
            if log_rows:
                insert_logs(conn, log_rows)

    @staticmethod
    def _resource_rows(resources: dict[int, tuple], span_rows: list[tuple]) -> list[dict]:
        """One ``resources`` row per resource of the batch, seen as late as the latest end of its spans (the write
        raises a stored ``last_seen_ns``, never lowers it: with :data:`RESOURCE_SEEN_SLACK_NS`, the sweep, which
        keeps spans by their end, never deletes a resource a kept span names)."""
        if not resources:
            return []
        latest: dict[str, int] = {}
        for row in span_rows:
            rid, end = row[_RESOURCE_ID], row[_END_NS]
            if rid is not None and latest.get(rid, 0) < end:
                latest[rid] = end
        return [{"id": rid, "attributes": text, "last_seen_ns": latest[rid]}
                for rid, text in {got[1]: got[2] for got in resources.values() if got[1] is not None}.items()
                if rid in latest]

    def _write_errors(self, conn, rows: list[dict]) -> None:
        """Fingerprint the batch's errors, link each run's errors into failure chains, and count groups.

        **Linking.** Errors of one run (one ``correlation_id``; errors without one stand alone) are
        placed by their ``span_id`` on the run's span tree (the ``spans`` table: ``parent_span_id``,
        this batch's spans included). An error whose span is a strict ancestor of another failing span
        is a *caller*: its ``cause_fingerprint`` is the group of the deepest error below it (the
        earliest of equals), which has no failing span below it, so it is the *origin* that started
        the chain. A logged error (``ErrorRecord``) is placed at the step it was logged in; one without
        a known span, and errors on the same span, are peers. When a deeper error arrives after its
        callers, the callers stored earlier are relinked.

        **Counting.** A group's ``count`` is the runs in which it was an origin (each error without a
        run counts once): an exception that fails five callers counts once, for its own group, and
        the callers' generic 502 counts for nothing. Only an origin arriving after a resolution flags
        its group ``regressed``; ``first_seen``/``last_seen`` cover every occurrence.
        """
        fpr = self.fingerprints
        new_aliases, templates = [], {}
        for r in rows:
            fp, template, alias = fpr.assign(r["error_type"], r["message"])
            r["fingerprint"], r["cause_fingerprint"] = fp, None
            templates.setdefault(fp, template)
            if alias is not None:
                new_aliases.append({"fingerprint": alias[1], "group_fingerprint": alias[0]})
        delta = self._link_causes(conn, rows)
        if new_aliases:
            conn.execute(insert_ignore(self.engine, error_aliases), new_aliases)
        conn.execute(errors.insert(), rows)
        per: dict[str, dict] = {}
        for r in rows:
            g = per.setdefault(r["fingerprint"], {"row": r, "first": r["time_ns"], "last": r["time_ns"],
                                                  "origin_last": None})
            g["first"] = min(g["first"], r["time_ns"])
            g["last"] = max(g["last"], r["time_ns"])
            if r["cause_fingerprint"] is None:
                g["origin_last"] = max(g["origin_last"] or r["time_ns"], r["time_ns"])
        touched = list(set(per) | {fp for fp, d in delta.items() if d})
        existing = {}
        for i in range(0, len(touched), 500):
            existing.update((r.fingerprint, r) for r in conn.execute(
                select(error_groups).where(error_groups.c.fingerprint.in_(touched[i:i + 500]))))
        for fp in touched:
            old, g = existing.get(fp), per.get(fp)
            if old is None:
                if g is None:  # an earlier occurrence was relinked, and its group is gone (swept)
                    continue
                r = g["row"]
                conn.execute(error_groups.insert().values(
                    fingerprint=fp, error_type=r["error_type"], template=templates[fp],
                    category=classify_error(r["error_type"], r["message"]), first_seen_ns=g["first"],
                    last_seen_ns=g["last"], count=max(0, delta.get(fp, 0))))
                continue
            values: dict[str, Any] = {"count": max(0, old.count + delta.get(fp, 0))}
            if g is not None:
                values["last_seen_ns"] = max(old.last_seen_ns, g["last"])
                values["first_seen_ns"] = min(old.first_seen_ns, g["first"])
                if fpr.is_legacy(fp, old.error_type, old.template) and old.template != templates[fp]:
                    values["template"] = templates[fp]  # an old group shows its error's words, not <*>
                if (old.resolved_at_ns is not None and old.regressed_at_ns is None and g["origin_last"] is not None
                        and g["origin_last"] > old.resolved_at_ns):
                    values["regressed_at_ns"] = g["origin_last"]
            conn.execute(update(error_groups).where(error_groups.c.fingerprint == fp).values(**values))

    def _link_causes(self, conn, rows: list[dict]) -> dict[str, int]:
        """Set ``cause_fingerprint`` on the new rows (and relink stored ones of their runs); returns each
        group's change in origin runs. See :meth:`_write_errors`."""
        delta: dict[str, int] = {}
        by_run: dict[str, list[dict]] = {}
        for r in rows:
            if r["correlation_id"]:
                by_run.setdefault(r["correlation_id"], []).append(r)
            else:
                delta[r["fingerprint"]] = delta.get(r["fingerprint"], 0) + 1
        if not by_run:
            return delta
        cids = list(by_run)
        stored: dict[str, list[dict]] = {}
        for i in range(0, len(cids), 500):
            for e in conn.execute(select(errors.c.id, errors.c.correlation_id, errors.c.span_id, errors.c.fingerprint,
                                         errors.c.cause_fingerprint, errors.c.time_ns)
                                  .where(errors.c.correlation_id.in_(cids[i:i + 500]))).mappings():
                stored.setdefault(e["correlation_id"], []).append(dict(e))
        chained = [cid for cid in cids if len(by_run[cid]) + len(stored.get(cid, ())) > 1]
        parents: dict[str, dict[str, str | None]] = {}
        for i in range(0, len(chained), 500):
            for sp in conn.execute(select(spans.c.correlation_id, spans.c.span_id, spans.c.parent_span_id)
                                   .where(spans.c.correlation_id.in_(chained[i:i + 500]))):
                parents.setdefault(sp.correlation_id, {})[sp.span_id] = sp.parent_span_id
        relinked = []
        for cid in cids:
            old, new = stored.get(cid, []), by_run[cid]
            before = {e["fingerprint"] for e in old if e["cause_fingerprint"] is None}
            if len(old) + len(new) > 1:
                everything = old + new
                for e, cause in zip(everything, failure_causes(everything, parents.get(cid, {})), strict=True):
                    if "id" in e and e["cause_fingerprint"] != cause:
                        relinked.append({"eid": e["id"], "cause": cause})
                    e["cause_fingerprint"] = cause
            after = {e["fingerprint"] for e in old + new if e["cause_fingerprint"] is None}
            for fp in before ^ after:
                delta[fp] = delta.get(fp, 0) + (1 if fp in after else -1)
        if relinked:
            conn.execute(update(errors).where(errors.c.id == bindparam("eid"))
                         .values(cause_fingerprint=bindparam("cause")), relinked)
        return delta

    def probe(self) -> bool:
        """True if the database answers ``SELECT 1``: the recorder asks when one item fails, to tell an
        outage (keep everything, retry) from a poisoned item (drop it). The pool pings a connection
        before lending it (``pool_pre_ping``), so a dead one is replaced and a refused one fails here."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Exception as e:  # noqa: BLE001 - any failure means "not answering"
            log.debug("run store probe failed: %s", e)
            return False

    def sweep(self, older_than_ns: int) -> int:
        """Delete runs, spans, errors, profiles and log lines older than ``older_than_ns``; returns runs deleted."""
        with self.engine.begin() as conn:
            n = conn.execute(delete(runs).where(runs.c.end_ns < older_than_ns)).rowcount
            conn.execute(delete(spans).where(spans.c.end_ns < older_than_ns))
            conn.execute(delete(span_details).where(span_details.c.end_ns < older_than_ns))
            conn.execute(delete(resources_table).where(
                resources_table.c.last_seen_ns < older_than_ns - RESOURCE_SEEN_SLACK_NS))
            conn.execute(delete(span_links).where(span_links.c.end_ns < older_than_ns))
            conn.execute(delete(errors).where(errors.c.time_ns < older_than_ns))
            conn.execute(delete(profiles).where(profiles.c.time_ns < older_than_ns))
            # groups with no error left, and never resolved, go too; resolved ones keep their notes
            alive = select(errors.c.fingerprint).distinct()
            conn.execute(delete(error_groups).where(and_(error_groups.c.fingerprint.not_in(alive),
                                                         error_groups.c.resolved_at_ns.is_(None))))
        delete_logs_before(self.engine, older_than_ns)  # application log lines: in chunks, their own transactions
        return n or 0

    # -- reading --------------------------------------------------------------------------------


def write_isolating(store: RunWriter, batch: list) -> tuple[list, BaseException | None, dict[str, int], list]:
    """Write ``batch``, isolating what the database refuses. Returns ``(left, error, counts, poisoned)``:
    ``left`` the items not yet written because the database is unavailable (``error`` says why; always a
    suffix of ``batch``, to be retried as it is), ``counts`` the runs and truncated states written, and
    ``poisoned`` one ``(item, error)`` per item the database refused while it was up (to be dropped).

    A failed chunk is split in halves until the failing item stands alone (a failed transaction writes
    nothing, so halves are never written twice). An error is an outage, not poison, when its kind says so
    (:func:`is_outage`) or when :meth:`RunWriter.probe` fails right after it; the probe runs when the whole
    batch fails (no bisecting through an outage) and when a single item fails (the database may have gone
    away mid-split). Chunks are written left to right, so what is left is the end of the batch.
    """
    counts = {"runs": 0, "truncated_states": 0}
    poisoned: list = []
    pending = [batch]  # chunks still to write, the next one last
    while pending:
        chunk = pending.pop()
        refused: list = []
        try:
            done = store.write(chunk, refused)
        except Exception as e:  # noqa: BLE001 - classified below: outage (kept) or poison (counted, logged)
            if is_outage(e) or ((chunk is batch or len(chunk) == 1) and not store.probe()):
                pending.append(chunk)
                return [it for ch in reversed(pending) for it in ch], e, counts, poisoned
            if len(chunk) > 1:
                mid = len(chunk) // 2
                pending += (chunk[mid:], chunk[:mid])
                continue
            refused = [(chunk[0], e)]
        else:
            counts["runs"] += done["runs"]
            counts["truncated_states"] += done["truncated_states"]
        poisoned += refused
    return [], None, counts, poisoned


class RunRecorder:
    """The pipeline's run-store sink (:class:`~exporter.sinks.FastSink`): a :class:`~exporter.worker.BatchWorker`
    whose one thread writes what ``spans``, ``fast``, ``error`` and ``profile`` queue.

    Producers never block: past half full, the queue sheds whole runs (:meth:`_admit`); what it still
    cannot hold is dropped. The writer takes up to ``batch_max`` items every ``flush_interval_s`` (at
    once when that many are queued) and writes them in one transaction. If the database refuses a
    batch while it is up, the writer splits the batch to find the items it refuses, drops only those
    (``reason="poison"``) and stores the rest (:meth:`_write`). If the database is down, the writer
    keeps what it has not written and retries it under ``retry`` (by default until the database is
    back or the recorder closes), resuming where the last attempt stopped. All drops are counted by
    reason, never lost silently; metrics see every span.

    Nothing is written until :meth:`start` (the owner's call: ``Exporter.start``); :meth:`close`
    writes what is queued within its deadline and stops. The retention sweep is the owner's to call
    (:meth:`sweep_if_due`, from the exporter's tick).
    """

    def __init__(self, store: RunStore, metrics: MetricStore, queue_max: int = 200_000,
                 flush_interval_s: float = 0.5, retention_s: float = 30 * 86400, sweep_interval_s: float = 3600.0,
                 clock=time.time, shed_interval_s: float = 0.25, batch_max: int = 20_000,
                 retry: RetryPolicy | None = None, writer: WriterProcess | None = None):
        self.store = store
        #: the writer process (:mod:`exporter.store.process`); None: the worker's thread writes itself
        self.writer = writer
        self.queue_max = queue_max
        self.flush_interval_s = flush_interval_s
        self.retention_s = retention_s
        self.sweep_interval_s = sweep_interval_s
        self.clock = clock
        self._dropped: dict[str, int] = {}
        self._drop_lock = threading.Lock()
        self.shed_interval_s = shed_interval_s
        self._high, self._low = queue_max // 2, queue_max // 4
        self._level, self._level_at = 0, 0.0
        self._poison_seen: dict[str, int] = {}  # error kind -> items dropped with it, so each is logged once
        m = metrics
        self.m_runs = m.counter(c.RUNS_STORED_TOTAL, "Workflow runs written to the run store.")
        self.m_dropped = m.counter(c.RUN_STORE_DROPPED_TOTAL, "Spans and records the run store did not keep, by "
                                   "reason: shed_runs (whole runs left out under load), queue_full, poison (one item "
                                   "the database refused while it was up; the rest of its batch was stored), "
                                   "write_failed (the database was still unavailable when the recorder closed), "
                                   "shutdown (still queued at the close deadline), internal_error.",
                                   (c.L_REASON,))
        self.m_written = m.counter(c.RUN_STORE_WRITTEN_TOTAL, "Spans and records the run store wrote (with the "
                                   "dropped, everything it was handed).")
        with m.lock:  # every series present from the start, at 0, for rate() and the FlowscopeRunStoreDropping alert
            self.m_written.inc((), 0)
            for reason in c.RUN_STORE_DROP_REASONS:
                self.m_dropped.inc((reason,), 0)
        self.m_failures = m.counter(c.RUN_STORE_WRITE_FAILURES_TOTAL,
                                    "Run-store writes that failed because the database was unavailable (retried).")
        self.m_swept = m.counter(c.RUN_STORE_SWEPT_TOTAL, "Runs deleted by the retention sweep.")
        self.m_truncated = m.counter(c.STATE_TRUNCATED_TOTAL, "State snapshots cut to the size cap, with a marker.")
        self._metrics = m
        m.collect_hooks.append(self._fold_dropped)
        self._last_sweep: float | None = None
        self.worker: BatchWorker[Any] = BatchWorker(
            "flowscope-runstore", self._export, on_drop=self._on_drop, max_queue=queue_max, max_batch=batch_max,
            linger_s=flush_interval_s, policy=retry or STORE_RETRY)
        self._queued = self.worker.queued
        m.gauge(c.RUN_STORE_QUEUE_SPANS, "Items waiting for the run store's writer.").set_function((), self._queued)

    # -- the owner's side ----------------------------------------------------------------------------

    def start(self) -> RunRecorder:
        """Start the writer thread (once), and the writer process when there is one; whoever calls this calls
        :meth:`close`. A writer process that cannot start is logged and started again by the first write."""
        if self.writer is not None and not self.worker.started:
            try:
                self.writer.start()
            except WriterDied as e:
                log.error("%s; retrying with the first batch", e)
        self.worker.start()
        return self

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written or counted; False on timeout (or if not started)."""
        return self.worker.force_flush(timeout_s)

    def close(self, timeout_s: float = 10.0, wait: bool = True) -> bool:
        """Write what is queued (bounded by ``timeout_s``), then stop; what is left is counted as dropped
        (``shutdown``, or ``write_failed`` for a batch the database never took). True if everything was written
        in time. ``wait=False``: stop taking items and start draining, return at once."""
        end = time.monotonic() + timeout_s
        done = self.worker.shutdown(timeout_s, wait=wait)
        if wait and self.writer is not None:  # it has its last batch written by now: this is its exit
            self.writer.close(max(1.0, end - time.monotonic()))
        return done

    def sweep_due(self, now: float | None = None) -> bool:
        """Whether ``sweep_interval_s`` has passed since the last sweep (or none has run yet)."""
        now = self.clock() if now is None else now
        return self._last_sweep is None or now - self._last_sweep >= self.sweep_interval_s

    def sweep_if_due(self, now: float | None = None) -> int:
        """Run :meth:`sweep` if it is due (:meth:`sweep_due`; the first call always is); the exporter's tick
        calls it. Returns the runs deleted."""
        now = self.clock() if now is None else now
        if not self.sweep_due(now):
            return 0
        self._last_sweep = now
        return self.sweep(now)

    # -- producers (any thread): the pipeline's sink --------------------------------------------------

    def spans(self, batch) -> None:
        if self._level or self._queued() > self._high:
            batch = self._admit(batch)
        self.worker.submit_many(batch)  # what a full queue cannot take is counted as queue_full

    def fast(self, item: tuple) -> None:
        """One SDK fast-path step (the pipeline hands them over in batches, :meth:`fast_many`)."""
        self.spans((item,))

    def fast_many(self, steps: list) -> None:
        """SDK fast-path steps in one batch (the pipeline folds them): shed by run like spans."""
        self.spans(steps)

    def error(self, rec: ErrorRecord) -> None:
        self.spans((rec,))

    def profile(self, profile) -> None:
        self.spans((profile,))

    def logs(self, lines) -> None:
        """Application log lines (:class:`~exporter.model.LogLine`): queued with the spans, never shed by run."""
        self.spans(lines)

    def _admit(self, batch) -> list:
        """Shed load by run, not by span: past the high-water mark, whole runs are left out.

        The shed level (0..7) rises while the queue stays above half full and falls once it is
        below a quarter; a run is left out when its correlation_id hashes (crc32, so every span of
        it agrees) below the level, i.e. level/8 of the runs. The runs that are kept stay whole,
        which dropping arbitrary spans at a full queue would not do.
        """
        level = self._relevel(self._queued())
        if not level:
            return list(batch)
        kept = []
        for it in batch:
            cid = it[0].correlation_id if type(it) is tuple else getattr(it, "correlation_id", None)
            if ((isinstance(it, Span) or type(it) is tuple) and cid is not None
                    and zlib.crc32(cid.encode()) & 7 < level):
                continue
            kept.append(it)
        if len(kept) < len(batch):
            self._drop(len(batch) - len(kept), "shed_runs")
        return kept

    def _relevel(self, n: int) -> int:
        """Raise the shed level one step while ``n`` (the queue's length) is above the high-water mark, lower
        it below the low one, at most once per ``shed_interval_s``; returns the level."""
        now = time.monotonic()
        if now - self._level_at >= self.shed_interval_s:
            if n > self._high and self._level < 7:
                self._level, self._level_at = self._level + 1, now
            elif n < self._low and self._level > 0:
                self._level, self._level_at = self._level - 1, now
        return self._level

    def _on_drop(self, reason: str, n: int) -> None:
        self._drop(n, reason)

    def _drop(self, n: int, reason: str) -> None:
        with self._drop_lock:  # only on overload: the normal path takes no lock
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def _fold_dropped(self) -> None:
        with self._drop_lock:
            dropped, self._dropped = self._dropped, {}
        for reason, n in dropped.items():
            self.m_dropped.inc((reason,), n)

    # -- the writer (the worker's thread) -------------------------------------------------------------

    def _export(self, batch: list) -> None:
        """Write one batch taken from the queue; while the database is unavailable, retry what is not written yet.

        Each attempt writes the remainder the last one left (:meth:`_write`), so rows already committed are
        never sent again. An outage is a retryable :class:`~exporter.retry.SendError` to the worker's
        policy; when the recorder closes (or the policy gives up) in the middle, the rest is counted as
        ``write_failed``.
        """
        left = batch

        def attempt() -> None:
            nonlocal left
            left, error = self._write(left)
            if left:
                with self._metrics.lock:
                    self.m_failures.inc(())
                raise SendError(f"run store unavailable: {error}", reason="outage") from error

        def on_retry(error: BaseException, n: int, wait: float) -> None:
            log.warning("run store write of %d items failed (retrying in %.1fs): %s", len(left), wait,
                        error.__cause__ or error)

        try:
            self.worker.retry(attempt, on_retry=on_retry)
        except (RetryInterrupted, RetriesExhausted) as e:
            log.error("run store closing: %d items not written (the database is unavailable: %s)", len(left),
                      e.last.__cause__ or e.last)
            self._on_drop("write_failed", len(left))

    def _write(self, batch: list) -> tuple[list, BaseException | None]:
        """Write ``batch`` (:func:`write_isolating`, here or in the writer process): ``([], None)`` when every
        item was stored or dropped as poison; ``(the items not yet written, the error)`` when the database is
        unavailable, to be retried as they are."""
        if self.writer is not None:
            result, left, unsent = self.writer.write(batch)
            for item, e in unsent:
                self._poison(item, e)
            for what, kind, msg in result.poisoned:
                self._poisoned(what, kind, msg)
            self._count(result.counts, len(batch) - len(left) - len(unsent) - len(result.poisoned))
            if left:
                return left, WriterOutage(result.error or "unavailable", len(left))
            return [], None
        left, error, counts, poisoned = write_isolating(self.store, batch)
        self._count(counts, len(batch) - len(left) - len(poisoned))
        for item, e in poisoned:
            self._poison(item, e)
        return left, error

    def _count(self, counts: dict[str, int], written: int) -> None:
        with self._metrics.lock:
            if written > 0:
                self.m_written.inc((), written)
            if counts.get("runs"):
                self.m_runs.inc((), counts["runs"])
            if counts.get("truncated_states"):
                self.m_truncated.inc((), counts["truncated_states"])

    def _poison(self, item, error: BaseException) -> None:
        """Drop one item the store refused, count it, and log its kind of error once (then at 10, 100, ...)."""
        self._poisoned(describe(item), type(error).__name__, driver_message(error))

    def _poisoned(self, what: str, error_type: str, msg: str) -> None:
        self._drop(1, "poison")
        kind = f"{error_type}: {msg[:60]}"
        seen = self._poison_seen
        if kind not in seen and len(seen) >= 1000:  # bounded: past a thousand kinds, count without logging
            return
        n = seen[kind] = seen.get(kind, 0) + 1
        if n == 1 or (n >= 10 and str(n).rstrip("0") == "1"):
            log.error("run store dropped a %s it cannot store (%d so far with this error; the rest of its batch "
                      "was stored): %s: %s", what, n, error_type, msg[:500])

    def sweep(self, now: float | None = None) -> int:
        """Delete what is older than the retention (runs, spans, errors, profiles); returns the runs deleted."""
        now = self.clock() if now is None else now
        try:
            n = self.store.sweep(int((now - self.retention_s) * 1e9))
        except Exception as e:  # noqa: BLE001 - a failed sweep is retried at the next interval
            log.warning("retention sweep failed: %s", e)
            return 0
        if n:
            with self._metrics.lock:
                self.m_swept.inc((), n)
            log.info("retention sweep deleted %d runs older than %g h", n, self.retention_s / 3600)
        return n
