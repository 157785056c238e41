"""The run store: every finished workflow run with its spans, errors, state snapshots and profiles.

Two parts:

- :class:`RunStore` is the client (SQLAlchemy Core; SQLite by default,
  PostgreSQL by URL). It writes batches and answers the queries that replay,
  the run page and error analysis need.
- :class:`RunRecorder` is the pipeline's sink. Producers only append to a
  bounded deque (the SDK's fast path appends a tuple, no Span is built); one
  writer thread drains it into the store every ``flush_interval_s``, retries
  while the database is down, and sweeps runs past their retention.

Before anything is written, secret keys are redacted (:mod:`exporter.redact`),
user identifiers are hashed, and state snapshots over ``state_max_bytes`` keep
the keys that fit plus a :data:`~exporter.conventions.TRUNCATED_KEY` marker.

    store = RunStore(make_engine("sqlite:///var/flowscope.db"))
    rec = RunRecorder(store, metric_store, state_max_bytes=16384)
    pipeline.attach_recorder(rec)
    ...
    store.list_runs(workflow="checkout", status="error", min_duration_ms=500)
    store.get_run(correlation_id)
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, and_,
                        bindparam, delete, func, or_, select, update)
from sqlalchemy import exc as sa_exc

from . import conventions as c
from .classify import classify_error
from .db import add_missing_columns, insert_ignore
from .fingerprint import Fingerprinter, failure_causes
from .metrics import MetricStore
from .model import ErrorRecord, Span, hash_user
from .redact import Redactor

log = logging.getLogger("flowscope.runstore")

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("trace_id", String(32), nullable=False),
    Column("service", String(200), nullable=False),
    Column("user_hash", String(64), nullable=True),
    Column("error_type", String(200), nullable=True),
    Column("error_message", Text, nullable=True),
    Index("ix_runs_workflow_start", "workflow", "start_ns"),
    Index("ix_runs_start", "start_ns"),
    Index("ix_runs_trace", "trace_id"),
)

spans = Table(
    "spans", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("trace_id", String(32), nullable=False),
    Column("parent_span_id", String(16), nullable=True),
    Column("workflow", String(200), nullable=False),
    Column("service", String(200), nullable=False),
    Column("layer", String(16), nullable=False),
    Column("component", String(200), nullable=False),
    Column("operation", String(500), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_type", String(200), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("stack_trace", Text, nullable=True),
    Column("attributes", Text, nullable=True),
    Column("state", Text, nullable=True),
    Column("is_step", Boolean, nullable=False),
    Index("ix_spans_end", "end_ns"),
)

#: Span details beyond the spans table (a new table: existing ones are never altered, there are no
#: migrations): kind, resource attributes, events and links, as redacted JSON. One row per span that has any.
span_details = Table(
    "span_details", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("end_ns", BigInteger, nullable=False),
    Column("kind", String(16), nullable=True),
    Column("resource", Text, nullable=True),
    Column("events", Text, nullable=True),
    Column("links", Text, nullable=True),
    Index("ix_span_details_end", "end_ns"),
)

#: One row per span link, indexed by the linked trace: "which runs link to this one" without scanning JSON.
span_links = Table(
    "span_links", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("link_trace_id", String(32), primary_key=True),
    Column("link_span_id", String(16), primary_key=True),
    Column("end_ns", BigInteger, nullable=False),
    Index("ix_span_links_trace", "link_trace_id"),
    Index("ix_span_links_end", "end_ns"),
)

errors = Table(
    "errors", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(16), nullable=False),
    Column("correlation_id", String(128), nullable=True),
    Column("span_id", String(16), nullable=True),
    Column("workflow", String(200), nullable=False),
    Column("service", String(200), nullable=False),
    Column("layer", String(16), nullable=False),
    Column("component", String(200), nullable=False),
    Column("error_type", String(200), nullable=False),
    Column("message", Text, nullable=True),
    Column("stack_trace", Text, nullable=True),
    Column("time_ns", BigInteger, nullable=False),
    #: the group of the error that started this one's failure chain (set on callers; NULL on an origin).
    #: Added after the table: existing stores get it on start (:func:`~exporter.db.add_missing_columns`).
    Column("cause_fingerprint", String(16), nullable=True),
    Index("ix_errors_fp_time", "fingerprint", "time_ns"),
    Index("ix_errors_time", "time_ns"),
    Index("ix_errors_cid", "correlation_id"),
    Index("ix_errors_cause", "cause_fingerprint"),
)

error_groups = Table(
    "error_groups", metadata,
    Column("fingerprint", String(16), primary_key=True),
    Column("error_type", String(200), nullable=False),
    Column("template", Text, nullable=False),
    Column("category", String(32), nullable=False),
    Column("first_seen_ns", BigInteger, nullable=False),
    Column("last_seen_ns", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    #: set by a resolution; an error after it flags the group as regressed
    Column("resolved_at_ns", BigInteger, nullable=True),
    Column("regressed_at_ns", BigInteger, nullable=True),
)

resolutions = Table(
    "error_resolutions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(16), nullable=False, index=True),
    Column("note", Text, nullable=False),
    Column("resolved_by", String(200), nullable=True),
    Column("resolved_at_ns", BigInteger, nullable=False),
)

#: A new fingerprint that belongs to a group stored under an older one (a group the Drain-style
#: miner made before fingerprints were type + masked template): the group keeps its notes.
error_aliases = Table(
    "error_group_aliases", metadata,
    Column("fingerprint", String(16), primary_key=True),
    Column("group_fingerprint", String(16), nullable=False),
)

profiles = Table(
    "profiles", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workflow", String(200), nullable=False),
    Column("correlation_id", String(128), nullable=True, index=True),
    Column("time_ns", BigInteger, nullable=False),
    Column("format", String(16), nullable=False),
    Column("sample_rate_hz", Float, nullable=True),
    #: {folded stack: samples}, or for pstats {function: self seconds} as one-frame stacks
    Column("stacks", Text, nullable=False),
    Index("ix_profiles_wf_time", "workflow", "time_ns"),
)

SPAN_COLUMNS = tuple(col.name for col in spans.columns)
DETAIL_COLUMNS = tuple(col.name for col in span_details.columns)
LINK_COLUMNS = tuple(col.name for col in span_links.columns)
#: At most this many linked runs per direction are returned with a run.
MAX_LINKED_RUNS = 100


def _insert_ignore_sql(dialect, table: str, columns: tuple[str, ...]) -> str | None:
    """Plain SQL for the driver's executemany, where the dialect's paramstyle is known; else None."""
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    if mark is None or dialect.name not in ("sqlite", "postgresql"):
        return None
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))}) "
            "ON CONFLICT DO NOTHING")


#: Attribute keys that identify a person: stored hashed, never raw.
USER_KEYS = frozenset(("enduser.id", "user", "user.id", "user_id", "username", "user.name", "user.email", "email"))


def _like_escape(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (escape character ``\\``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _d(row) -> dict:
    """A row mapping as a plain dict (SQLAlchemy's key type is a str subclass that orjson refuses)."""
    return {str(k): v for k, v in row.items()}


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def cap_state(state: dict, max_bytes: int) -> tuple[str, bool]:
    """The snapshot as JSON, at most about ``max_bytes``: (json, truncated).

    Over the cap, keys are kept in order while they fit; a marker says how big the
    snapshot was and which keys were dropped. A snapshot is never rejected.
    """
    raw = _json(state)
    if len(raw) <= max_bytes:
        return raw, False
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    used = 200  # room for the marker
    for k, v in state.items():
        size = len(_json({k: v}))
        if used + size <= max_bytes:
            kept[k] = v
            used += size
        else:
            dropped.append(str(k))
    kept[c.TRUNCATED_KEY] = {"original_bytes": len(raw), "max_bytes": max_bytes, "dropped_keys": dropped[:20],
                             "dropped_key_count": len(dropped)}
    return _json(kept), True


#: Errors about the database's state, not the data (disconnects, locks, a full disk, a read-only
#: standby): never poison, however often one item meets them; the writer keeps the batch and retries.
_OUTAGE_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.InternalError, sa_exc.TimeoutError,
                  sa_exc.DisconnectionError)


def is_outage(error: BaseException) -> bool:
    """Whether a failed write says the database is unavailable (retry all) rather than refusing one item."""
    return isinstance(error, _OUTAGE_ERRORS) or bool(getattr(error, "connection_invalidated", False))


def _describe(item) -> str:
    """Which item was dropped, for the log: its kind and ids, never its contents."""
    try:
        if type(item) is tuple:
            return f"step of run {str(item[0].correlation_id)[:128]!r}"
        if isinstance(item, Span):
            return f"span {str(item.span_id)[:32]!r} of run {str(item.correlation_id)[:128]!r}"
        return f"{type(item).__name__} of run {str(getattr(item, 'correlation_id', None))[:128]!r}"
    except Exception:  # noqa: BLE001 - ids odd enough to fail here: the kind alone still helps
        return type(item).__name__


#: Run ids per IN list when attribution reads spans (well under SQLite's 32,766 bound parameters).
ATTRIBUTION_CHUNK = 2000


@dataclass(slots=True)
class AttributionRows:
    """Columns of :meth:`RunStore.attribution_runs` (one entry per run: ``run_ids`` .. ``start_ns``) and of
    :meth:`RunStore.attribution_spans` (one per span: ``span_run``, the index of its run, .. ``attributes``,
    its raw JSON or None; one per span with a resource: ``resource_run``, ``resource``)."""

    run_ids: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    duration_ms: list[float] = field(default_factory=list)
    start_ns: list[int] = field(default_factory=list)
    span_run: list[int] = field(default_factory=list)
    layer: list[str] = field(default_factory=list)
    component: list[str] = field(default_factory=list)
    operation: list[str] = field(default_factory=list)
    service: list[str] = field(default_factory=list)
    span_ms: list[float] = field(default_factory=list)
    attributes: list[str | None] = field(default_factory=list)
    resource_run: list[int] = field(default_factory=list)
    resource: list[str] = field(default_factory=list)


class RunStore:
    """The store client: writes from the recorder, reads for replay, the run page and error analysis."""

    def __init__(self, engine, redactor: Redactor | None = None, state_max_bytes: int = 16_384):
        self.engine = engine
        self.redactor = redactor or Redactor()
        self.state_max_bytes = state_max_bytes
        metadata.create_all(engine)
        add_missing_columns(engine, errors)
        self.fingerprints = Fingerprinter()
        self._load_fingerprints()
        self._insert_span = insert_ignore(engine, spans)
        self._span_sql = _insert_ignore_sql(engine.dialect, "spans", SPAN_COLUMNS)
        self._insert_run = insert_ignore(engine, runs)
        self._insert_detail = insert_ignore(engine, span_details)
        self._detail_sql = _insert_ignore_sql(engine.dialect, "span_details", DETAIL_COLUMNS)
        self._insert_link = insert_ignore(engine, span_links)
        self._link_sql = _insert_ignore_sql(engine.dialect, "span_links", LINK_COLUMNS)
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
        return _json(self._redact(attrs))

    def detail_rows(self, s: Span, resources: dict[int, tuple]) -> tuple[tuple | None, list[tuple]]:
        """The span's :data:`DETAIL_COLUMNS` row (None when it has no details) and its :data:`LINK_COLUMNS` rows,
        redacted like attributes. ``resources`` caches each resource's JSON by identity for one batch
        (decoders share one dict per resource)."""
        events, links = s.events, s.links
        res = s.resource
        if not (s.kind or res or events or links):
            return None, []
        res_json = None
        if res:
            got = resources.get(id(res))
            if got is None or got[0] is not res:
                got = resources[id(res)] = (res, self._attrs(res))  # holding res keeps its id from being reused
            res_json = got[1]
        text = self.redactor.text
        ev_json = _json([{"name": text(e.get("name")), "time_ns": e.get("time_ns"),
                          "attributes": self._redact(e.get("attributes") or {})} for e in events]) if events else None
        link_rows = []
        ln_json = None
        if links:
            ln_json = _json([{"trace_id": ln["trace_id"], "span_id": ln["span_id"],
                              "attributes": self._redact(ln.get("attributes") or {})} for ln in links])
            link_rows = [(s.correlation_id, s.span_id, ln["trace_id"], ln["span_id"], s.end_ns) for ln in links]
        kind = s.kind[:16] if s.kind else None
        return (s.correlation_id, s.span_id, s.end_ns, kind, res_json, ev_json, ln_json), link_rows

    def span_row(self, s: Span) -> tuple[tuple, bool]:
        """The span as a row in :data:`SPAN_COLUMNS` order, redacted and capped; and whether its state was cut."""
        red = self.redactor
        truncated = False
        state = None
        if s.state is not None:
            state, truncated = cap_state(red.value(s.state) if isinstance(s.state, dict) else {"value": s.state},
                                         self.state_max_bytes)
        return (s.correlation_id, s.span_id, s.trace_id, s.parent_span_id or None, s.workflow or c.UNKNOWN_WORKFLOW,
                s.service or "", s.layer, s.component[:200], s.operation[:500], s.start_ns, s.end_ns, s.status,
                s.error_type, red.text(s.error_message), red.text(s.stack_trace), self._attrs(s.attributes), state,
                bool(s.is_step)), truncated

    @staticmethod
    def fast_row(t: tuple) -> tuple:
        run, layer, component, operation, start_ns, end_ns, span_id, parent = t
        return (run.correlation_id, span_id, run.trace_id, parent, run.workflow, run.service or "", layer, component,
                operation, start_ns, end_ns, "ok", None, None, None, None, None, True)

    def write(self, items: list, poisoned: list | None = None) -> dict[str, int]:
        """Store one drained batch (Spans, fast-step tuples, ErrorRecords, Profiles) in one transaction.

        An item whose rows cannot even be built (orjson refusing its state or attributes, a message
        that is not text) is left out and appended to ``poisoned`` as ``(item, error)``, so the
        recorder drops it without a database round trip; without a ``poisoned`` list the error is
        raised. What the database itself refuses raises, and nothing of the batch is written.
        """
        span_rows: list[tuple] = []
        detail_rows: list[tuple] = []
        link_rows: list[tuple] = []
        resources: dict[int, tuple] = {}
        run_rows: list[dict] = []
        err_rows: list[dict] = []
        prof_rows: list[dict] = []
        truncated = 0
        red = self.redactor
        fast_row, span_row, details_of = self.fast_row, self.span_row, self.detail_rows
        for it in items:
            try:
                if type(it) is tuple:
                    span_rows.append(fast_row(it))
                elif isinstance(it, Span):
                    row, cut = span_row(it)
                    detail, links = details_of(it, resources)
                    run_row = err_row = None
                    if it.is_root:
                        run_row = {
                            "correlation_id": it.correlation_id, "workflow": row[4], "status": it.status,
                            "start_ns": it.start_ns, "end_ns": it.end_ns,
                            "duration_ms": (it.end_ns - it.start_ns) / 1e6, "trace_id": it.trace_id,
                            "service": row[5], "user_hash": it.user, "error_type": it.error_type,
                            "error_message": row[13]}
                    if it.is_step and it.status in c.FAILED_STATUSES:
                        err_row = {"correlation_id": it.correlation_id, "span_id": it.span_id,
                                   "workflow": row[4], "service": row[5], "layer": it.layer,
                                   "component": row[7], "error_type": it.error_type or it.status,
                                   "message": row[13], "stack_trace": row[14], "time_ns": it.end_ns}
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
                else:  # a Profile
                    stacks = it.stacks or {fn: secs for fn, secs in it.self_seconds.items()}
                    prof_rows.append({"workflow": it.workflow, "correlation_id": it.correlation_id,
                                      "time_ns": it.time_ns or time.time_ns(),
                                      "format": "folded" if it.stacks else "pstats",
                                      "sample_rate_hz": it.sample_rate_hz, "stacks": _json(stacks)})
            except Exception as e:  # whatever one item raises must not cost the batch
                if poisoned is None:
                    raise
                poisoned.append((it, e))
        with self._lock, self.engine.begin() as conn:
            if span_rows:
                if self._span_sql is not None:  # straight to the driver's executemany: no per-row compiling
                    conn.exec_driver_sql(self._span_sql, span_rows)
                else:
                    conn.execute(self._insert_span, [dict(zip(SPAN_COLUMNS, r)) for r in span_rows])
            for rows, sql, stmt, cols in ((detail_rows, self._detail_sql, self._insert_detail, DETAIL_COLUMNS),
                                          (link_rows, self._link_sql, self._insert_link, LINK_COLUMNS)):
                if rows:
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
        return {"spans": len(span_rows), "runs": len(run_rows), "errors": len(err_rows),
                "profiles": len(prof_rows), "truncated_states": truncated}

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
            for cid, sid, parent in conn.execute(
                    select(spans.c.correlation_id, spans.c.span_id, spans.c.parent_span_id)
                    .where(spans.c.correlation_id.in_(chained[i:i + 500]))):
                parents.setdefault(cid, {})[sid] = parent
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
        """Delete runs, spans, errors and profiles that ended before ``older_than_ns``; returns runs deleted."""
        with self.engine.begin() as conn:
            n = conn.execute(delete(runs).where(runs.c.end_ns < older_than_ns)).rowcount
            conn.execute(delete(spans).where(spans.c.end_ns < older_than_ns))
            conn.execute(delete(span_details).where(span_details.c.end_ns < older_than_ns))
            conn.execute(delete(span_links).where(span_links.c.end_ns < older_than_ns))
            conn.execute(delete(errors).where(errors.c.time_ns < older_than_ns))
            conn.execute(delete(profiles).where(profiles.c.time_ns < older_than_ns))
            # groups with no error left, and never resolved, go too; resolved ones keep their notes
            alive = select(errors.c.fingerprint).distinct()
            conn.execute(delete(error_groups).where(and_(error_groups.c.fingerprint.not_in(alive),
                                                         error_groups.c.resolved_at_ns.is_(None))))
        return n or 0

    # -- reading --------------------------------------------------------------------------------

    def list_runs(self, workflow: str | None = None, status: str | None = None, since_ns: int | None = None,
                  until_ns: int | None = None, min_duration_ms: float | None = None, limit: int = 100,
                  offset: int = 0, error_text: str | None = None, attribute: tuple[str, str] | None = None,
                  slowest_first: bool = False) -> list[dict]:
        """Finished runs, newest (or slowest) first; ``status`` is one status or several. ``error_text``
        matches the run's error type or message (case-insensitive substring); ``attribute`` = (key, value)
        keeps runs with a span whose attribute ``key`` is ``value``."""
        q = select(runs)
        if error_text:
            pattern = "%" + _like_escape(error_text) + "%"
            q = q.where(runs.c.error_message.ilike(pattern, escape="\\") |
                        runs.c.error_type.ilike(pattern, escape="\\"))
        if attribute is not None:
            # attributes are stored as orjson text: "key":"value" for a string, "key":5, or "key":5} for a number
            key, value = (_like_escape(_json(x)) for x in attribute)
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
            return [_d(r) for r in conn.execute(q).mappings()]

    def runs_by_id(self, correlation_ids: list[str]) -> list[dict]:
        """The finished runs among ``correlation_ids`` (at most a few hundred: one IN list)."""
        if not correlation_ids:
            return []
        with self.engine.connect() as conn:
            return [_d(r) for r in conn.execute(select(runs).where(runs.c.correlation_id.in_(correlation_ids)))
                    .mappings()]

    def workflow_summary(self, since_ns: int, max_runs: int = 200_000) -> list[dict]:
        """Per workflow, the runs that started since ``since_ns``: count, failed, error ratio, p50 and p95
        duration (ms, nearest rank), newest first by traffic. Reads at most ``max_runs`` runs (newest)."""
        q = (select(runs.c.workflow, runs.c.status, runs.c.duration_ms).where(runs.c.start_ns >= since_ns)
             .order_by(runs.c.start_ns.desc()).limit(max_runs))
        per: dict[str, list] = {}
        with self.engine.connect() as conn:
            for wf, status, dur in conn.execute(q):
                g = per.setdefault(wf, [0, []])
                g[0] += status in c.FAILED_STATUSES
                g[1].append(dur)
        out = []
        for wf, (failed, durs) in per.items():
            durs.sort()
            n = len(durs)
            out.append({"workflow": wf, "runs": n, "failed": failed, "error_ratio": failed / n,
                        "p50_ms": durs[max(0, math.ceil(0.5 * n) - 1)],
                        "p95_ms": durs[max(0, math.ceil(0.95 * n) - 1)]})
        out.sort(key=lambda r: (-r["runs"], r["workflow"]))
        return out

    def get_run(self, correlation_id: str) -> dict | None:
        """The run with all its spans (start order), errors, profile count and linked runs; None if unknown.

        A trace_id (as exemplars and log lines carry) finds its run too. Each span carries ``kind``,
        ``resource``, ``events`` and ``links`` (None / [] when it has none); ``linked_runs`` lists the
        runs this run's spans link to and the runs whose spans link to it (:meth:`linked_runs`).

        A run whose root has not arrived (or never will) is still returned when it has
        spans: its status is ``in_progress`` and its bounds are its spans'.
        """
        with self.engine.connect() as conn:
            run = conn.execute(select(runs).where(runs.c.correlation_id == correlation_id)).mappings().first()
            if run is None and len(correlation_id) == 32:
                # exemplars and Loki lines carry the trace_id: resolve it to its run
                cid = conn.execute(select(runs.c.correlation_id).where(runs.c.trace_id == correlation_id)
                                   .limit(1)).scalar()
                if cid is not None and cid != correlation_id:
                    return self.get_run(cid)
            rows = conn.execute(select(spans).where(spans.c.correlation_id == correlation_id)
                                .order_by(spans.c.start_ns, spans.c.end_ns, spans.c.span_id)).mappings().all()
            if run is None and not rows:
                return None
            errs = conn.execute(select(errors).where(errors.c.correlation_id == correlation_id)
                                .order_by(errors.c.time_ns, errors.c.id)).mappings().all()
            nprof = conn.execute(select(func.count()).select_from(profiles)
                                 .where(profiles.c.correlation_id == correlation_id)).scalar_one()
            details = {r.span_id: r for r in conn.execute(
                select(span_details.c.span_id, span_details.c.kind, span_details.c.resource, span_details.c.events,
                       span_details.c.links).where(span_details.c.correlation_id == correlation_id))}
            trace_ids = {r["trace_id"] for r in rows} | ({run["trace_id"]} if run is not None else set())
            linked = self._linked_runs(conn, correlation_id, trace_ids)
        span_list = []
        for r in rows:
            d = _d(r)
            d["attributes"] = orjson.loads(d["attributes"]) if d["attributes"] else {}
            d["state"] = orjson.loads(d["state"]) if d["state"] is not None else None
            x = details.get(d["span_id"])
            d["kind"] = x.kind if x is not None else None
            d["resource"] = orjson.loads(x.resource) if x is not None and x.resource else None
            d["events"] = orjson.loads(x.events) if x is not None and x.events else []
            d["links"] = orjson.loads(x.links) if x is not None and x.links else []
            span_list.append(d)
        if run is None:
            first = span_list[0]
            run = {"correlation_id": correlation_id, "workflow": first["workflow"], "status": "in_progress",
                   "start_ns": min(s["start_ns"] for s in span_list), "end_ns": max(s["end_ns"] for s in span_list),
                   "trace_id": first["trace_id"], "service": first["service"], "user_hash": None,
                   "error_type": None, "error_message": None}
            run["duration_ms"] = (run["end_ns"] - run["start_ns"]) / 1e6
        return {"run": _d(run), "spans": span_list, "errors": [_d(e) for e in errs], "profiles": nprof,
                "linked_runs": linked}

    def linked_runs(self, correlation_id: str) -> list[dict]:
        """The runs linked with this one: ``[{correlation_id, workflow, trace_id, direction}]``.

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
    def _linked_runs(conn, correlation_id: str, trace_ids: set[str]) -> list[dict]:
        out: list[dict] = []
        targets = sorted(set(conn.execute(select(span_links.c.link_trace_id)
                                          .where(span_links.c.correlation_id == correlation_id)
                                          .distinct().limit(1000)).scalars()) - trace_ids)
        seen: set[tuple[str, str]] = set()
        if targets:
            q = (select(runs.c.correlation_id, runs.c.workflow, runs.c.trace_id)
                 .where(runs.c.trace_id.in_(targets[:500]), runs.c.correlation_id != correlation_id)
                 .order_by(runs.c.start_ns, runs.c.correlation_id).limit(MAX_LINKED_RUNS))
            for r in conn.execute(q):
                if (r.correlation_id, "links_to") not in seen:
                    seen.add((r.correlation_id, "links_to"))
                    out.append({"correlation_id": r.correlation_id, "workflow": r.workflow, "trace_id": r.trace_id,
                                "direction": "links_to"})
        if trace_ids:
            src = (select(span_links.c.correlation_id)
                   .where(span_links.c.link_trace_id.in_(sorted(trace_ids)[:500]),
                          span_links.c.correlation_id != correlation_id)
                   .distinct().limit(MAX_LINKED_RUNS).subquery())
            q = (select(src.c.correlation_id, runs.c.workflow, runs.c.trace_id)
                 .select_from(src.outerjoin(runs, runs.c.correlation_id == src.c.correlation_id))
                 .order_by(runs.c.start_ns, src.c.correlation_id))
            for r in conn.execute(q):
                if (r.correlation_id, "linked_from") not in seen:
                    seen.add((r.correlation_id, "linked_from"))
                    out.append({"correlation_id": r.correlation_id, "workflow": r.workflow, "trace_id": r.trace_id,
                                "direction": "linked_from"})
        return out

    def profile_stacks(self, workflow: str | None = None, correlation_id: str | None = None,
                       since_ns: int | None = None, until_ns: int | None = None) -> dict[str, float]:
        """CPU seconds per folded stack over the matching profiles (samples / sample rate; pstats self time)."""
        q = select(profiles.c.stacks, profiles.c.sample_rate_hz)
        if workflow:
            q = q.where(profiles.c.workflow == workflow)
        if correlation_id:
            q = q.where(profiles.c.correlation_id == correlation_id)
        if since_ns is not None:
            q = q.where(profiles.c.time_ns >= since_ns)
        if until_ns is not None:
            q = q.where(profiles.c.time_ns < until_ns)
        out: dict[str, float] = {}
        with self.engine.connect() as conn:
            for raw, rate in conn.execute(q):
                scale = 1.0 / rate if rate else 1.0
                for stack, n in orjson.loads(raw).items():
                    v = out.get(stack, 0.0) + n * scale
                    if math.isfinite(v):  # rows stored before the input limits may hold a 1e-320 Hz rate
                        out[stack] = v
        return out

    # -- error analysis --------------------------------------------------------------------------

    def error_groups(self, since_ns: int, workflow: str | None = None, limit: int = 100) -> list[dict]:
        """Groups that started failures since ``since_ns``, most often first: per group its origin
        occurrences (``times``, one per run; errors without a run each), runs affected, layers,
        workflows, components, sample correlation_ids, and ``propagated_to``: the callers' groups it
        failed through (``[{fingerprint, error_type, template, count}]``, count in runs). A group seen
        only as a caller is not listed on its own: it is listed under its origins."""
        q = (select(errors.c.fingerprint, errors.c.time_ns, errors.c.layer, errors.c.workflow,
                    errors.c.correlation_id, errors.c.component, errors.c.cause_fingerprint)
             .where(errors.c.time_ns >= since_ns).order_by(errors.c.time_ns.desc()).limit(200_000))
        if workflow:
            q = q.where(errors.c.workflow == workflow)
        per: dict[str, dict] = {}
        callers: dict[str, dict[str, set]] = {}
        seen: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            for fp, t, layer, wf, cid, comp, cause in conn.execute(q):
                if cause is not None:
                    if cause != fp:  # the same exception re-raised by its callers is not a symptom of itself
                        callers.setdefault(cause, {}).setdefault(fp, set()).add(cid)
                    continue
                if cid:
                    if (fp, cid) in seen:
                        continue
                    seen.add((fp, cid))
                g = per.setdefault(fp, {"times": [], "layers": set(), "workflows": set(), "components": set(),
                                        "samples": [], "runs": set()})
                g["times"].append(t)
                if cid:
                    g["runs"].add(cid)
                    if len(g["samples"]) < 5:
                        g["samples"].append(cid)
                g["layers"].add(layer)
                g["workflows"].add(wf)
                g["components"].add(comp)
            if not per:
                return []
            wanted = list(set(per) | {fp for fps in callers.values() for fp in fps})
            rows: dict[str, dict] = {}
            for i in range(0, len(wanted), 500):
                rows.update((r["fingerprint"], _d(r)) for r in conn.execute(
                    select(error_groups).where(error_groups.c.fingerprint.in_(wanted[i:i + 500]))).mappings())
        out = []
        for fp, g in per.items():
            row = rows.get(fp)
            if row is None:
                continue
            prop = sorted(((len(cids), cfp) for cfp, cids in callers.get(fp, {}).items() if cfp in rows),
                          key=lambda x: (-x[0], x[1]))[:10]
            row.update(times=g["times"], runs=len(g["runs"]), layers=sorted(g["layers"]),
                       workflows=sorted(g["workflows"]), components=sorted(g["components"]),
                       sample_correlation_ids=g["samples"],
                       propagated_to=[{"fingerprint": cfp, "error_type": rows[cfp]["error_type"],
                                       "template": rows[cfp]["template"], "count": n} for n, cfp in prop])
            out.append(row)
        out.sort(key=lambda r: (-len(r["times"]), r["fingerprint"]))
        return out[:limit]

    def _group_fingerprint(self, conn, fingerprint: str) -> str:
        """The group a fingerprint stands for: itself, or the older group it is an alias of."""
        target = conn.execute(select(error_aliases.c.group_fingerprint)
                              .where(error_aliases.c.fingerprint == fingerprint)).scalar()
        return target or fingerprint

    def error_group(self, fingerprint: str) -> dict | None:
        """One group with its latest occurrences (each with its ``cause_fingerprint``), its resolution history
        (newest first), ``caused_by`` (the origins' groups behind its occurrences as a caller) and
        ``propagated_to`` (the callers' groups it failed through), each ``[{fingerprint, error_type, template,
        count}]`` with count in occurrences. An alias fingerprint answers with its group."""
        with self.engine.connect() as conn:
            row = conn.execute(select(error_groups).where(error_groups.c.fingerprint == fingerprint)).mappings().first()
            if row is None:
                target = self._group_fingerprint(conn, fingerprint)
                if target == fingerprint:
                    return None
                row = conn.execute(select(error_groups).where(error_groups.c.fingerprint == target)).mappings().first()
                if row is None:
                    return None
            fp = row["fingerprint"]
            recent = conn.execute(select(errors).where(errors.c.fingerprint == fp)
                                  .order_by(errors.c.time_ns.desc(), errors.c.id.desc()).limit(20)).mappings().all()
            hist = self._resolutions(conn, fp)
            n = func.count().label("n")
            caused_by = conn.execute(
                select(errors.c.cause_fingerprint, n)
                .where(errors.c.fingerprint == fp, errors.c.cause_fingerprint.is_not(None),
                       errors.c.cause_fingerprint != fp)
                .group_by(errors.c.cause_fingerprint).order_by(n.desc()).limit(20)).all()
            propagated = conn.execute(
                select(errors.c.fingerprint, n).where(errors.c.cause_fingerprint == fp, errors.c.fingerprint != fp)
                .group_by(errors.c.fingerprint).order_by(n.desc()).limit(20)).all()
            names = {r.fingerprint: r for r in conn.execute(
                select(error_groups.c.fingerprint, error_groups.c.error_type, error_groups.c.template)
                .where(error_groups.c.fingerprint.in_([f for f, _ in caused_by] + [f for f, _ in propagated])))}

        def related(pairs) -> list[dict]:
            return [{"fingerprint": f, "error_type": names[f].error_type, "template": names[f].template, "count": k}
                    for f, k in pairs if f in names]

        return {**_d(row), "recent": [_d(r) for r in recent], "resolutions": hist, "caused_by": related(caused_by),
                "propagated_to": related(propagated)}

    def error_occurrences(self, fingerprint: str, since_ns: int, limit: int = 100_000) -> list[tuple[int, str | None]]:
        """(time_ns, correlation_id) of one group's occurrences since ``since_ns``, newest first, once per run:
        the runs it started a failure in; for a group seen only as a caller there, the runs it failed in."""
        q = (select(errors.c.time_ns, errors.c.correlation_id, errors.c.cause_fingerprint)
             .where(errors.c.fingerprint == fingerprint, errors.c.time_ns >= since_ns)
             .order_by(errors.c.time_ns.desc()).limit(limit))
        origins: list[tuple[int, str | None]] = []
        others: list[tuple[int, str | None]] = []
        seen: tuple[set, set] = (set(), set())
        with self.engine.connect() as conn:
            for t, cid, cause in conn.execute(q):
                out, runs = (origins, seen[0]) if cause is None else (others, seen[1])
                if cid is None or cid not in runs:
                    runs.add(cid)
                    out.append((t, cid))
        return origins or others

    def resolutions(self, fingerprint: str) -> list[dict]:
        """A group's resolution notes, newest first."""
        with self.engine.connect() as conn:
            return self._resolutions(conn, fingerprint)

    @staticmethod
    def _resolutions(conn, fingerprint: str) -> list[dict]:
        return [_d(h) for h in conn.execute(
            select(resolutions).where(resolutions.c.fingerprint == fingerprint)
            .order_by(resolutions.c.resolved_at_ns.desc(), resolutions.c.id.desc())).mappings()]

    def resolve(self, fingerprint: str, note: str, resolved_by: str | None, now_ns: int) -> bool:
        """Record a resolution; the group counts as resolved until an error that starts a failure comes back
        (:meth:`_write_errors`). An alias fingerprint resolves its group. False if unknown."""
        with self.engine.begin() as conn:
            fingerprint = self._group_fingerprint(conn, fingerprint)
            n = conn.execute(update(error_groups).where(error_groups.c.fingerprint == fingerprint)
                             .values(resolved_at_ns=now_ns, regressed_at_ns=None)).rowcount
            if not n:
                return False
            conn.execute(resolutions.insert().values(fingerprint=fingerprint, note=self.redactor.text(note),
                                                     resolved_by=resolved_by, resolved_at_ns=now_ns))
        return True

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
            for cid, status, dur, start in conn.execute(q):
                out.run_ids.append(cid)
                out.status.append(status)
                out.duration_ms.append(dur)
                out.start_ns.append(start)
        return out

    def attribution_spans(self, rows: AttributionRows, which: list[int]) -> AttributionRows:
        """Fill ``rows``' span and resource columns for the runs at the indices ``which``: every span's names,
        duration and raw attribute JSON, and the raw resource JSON of each span that has one. JSON is left
        unparsed: identical texts (a resource's, attributes without IDs) are parsed once by the caller.
        IN lists of :data:`ATTRIBUTION_CHUNK` ids; two queries per chunk, no join."""
        ids = [rows.run_ids[i] for i in which]
        index = {cid: i for cid, i in zip(ids, which)}
        get = index.get
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
                        "AND resource IS NOT NULL", tuple(chunk))
                else:
                    span_rows = conn.execute(select(*span_cols).where(spans.c.correlation_id.in_(chunk)))
                    res_rows = conn.execute(select(span_details.c.correlation_id, span_details.c.resource).where(
                        span_details.c.correlation_id.in_(chunk), span_details.c.resource.is_not(None)))
                for cid, layer, comp, op, service, start, end, attrs in span_rows:
                    rows.span_run.append(get(cid))
                    rows.layer.append(layer)
                    rows.component.append(comp)
                    rows.operation.append(op)
                    rows.service.append(service)
                    rows.span_ms.append((end - start) / 1e6)
                    rows.attributes.append(attrs)
                for cid, res in res_rows:
                    rows.resource_run.append(get(cid))
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

    def error_runs(self, fingerprint: str, since_ns: int, until_ns: int,
                   limit: int = 200_000) -> list[tuple[str, str]]:
        """(correlation_id, workflow) of the runs with an error of one group in ``[since_ns, until_ns)``:
        the selection of "what do the runs this error hit share" (attribution's ``select=error``)."""
        q = (select(errors.c.correlation_id, errors.c.workflow)
             .where(errors.c.fingerprint == fingerprint, errors.c.time_ns >= since_ns, errors.c.time_ns < until_ns,
                    errors.c.correlation_id.is_not(None))
             .distinct().limit(limit))
        with self.engine.connect() as conn:
            return [(cid, wf) for cid, wf in conn.execute(q)]

    def close(self) -> None:
        self.engine.dispose()


class RunRecorder:
    """The pipeline's run-store sink: a bounded queue and one writer thread.

    ``spans``, ``fast``, ``error`` and ``profile`` only append (deque appends are
    atomic), so the hot path pays a few tens of nanoseconds. If the database is
    down, the writer keeps its batch and retries with backoff. If the database
    refuses a batch while it is up, the writer splits the batch to find the items
    it refuses, drops only those (``reason="poison"``) and stores the rest
    (:meth:`_write`). Past half full, the queue sheds whole runs (:meth:`_admit`);
    what it still cannot hold is dropped. All are counted by reason, never lost
    silently; metrics see every span.
    """

    def __init__(self, store: RunStore, metrics: MetricStore, queue_max: int = 200_000,
                 flush_interval_s: float = 0.5, retention_s: float = 30 * 86400, sweep_interval_s: float = 3600.0,
                 clock=time.time, shed_interval_s: float = 0.25):
        self.store = store
        self.queue_max = queue_max
        self.flush_interval_s = flush_interval_s
        self.retention_s = retention_s
        self.sweep_interval_s = sweep_interval_s
        self.clock = clock
        self._q: deque = deque()
        self._dropped: dict[str, int] = {}
        self._drop_lock = threading.Lock()
        self.shed_interval_s = shed_interval_s
        self._high, self._low = queue_max // 2, queue_max // 4
        self._level, self._level_at = 0, 0.0
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = threading.Event()  # set by close(); also ends a backoff early
        self._poison_seen: dict[str, int] = {}  # error kind -> items dropped with it, so each is logged once
        m = metrics
        self.m_runs = m.counter(c.RUNS_STORED_TOTAL, "Workflow runs written to the run store.")
        self.m_dropped = m.counter(c.RUN_STORE_DROPPED_TOTAL, "Spans and records the run store did not keep, by "
                                   "reason: shed_runs (whole runs left out under load), queue_full, poison (one item "
                                   "the database refused while it was up; the rest of its batch was stored), "
                                   "write_failed, shutdown.",
                                   (c.L_REASON,))
        self.m_failures = m.counter(c.RUN_STORE_WRITE_FAILURES_TOTAL,
                                    "Run-store writes that failed because the database was unavailable (retried).")
        self.m_swept = m.counter(c.RUN_STORE_SWEPT_TOTAL, "Runs deleted by the retention sweep.")
        self.m_truncated = m.counter(c.STATE_TRUNCATED_TOTAL, "State snapshots cut to the size cap, with a marker.")
        m.gauge(c.RUN_STORE_QUEUE_SPANS, "Items waiting for the run store's writer.").set_function(
            (), lambda: len(self._q))
        self._metrics = m
        m.collect_hooks.append(self._fold_dropped)
        self._last_sweep = 0.0
        self._thread = threading.Thread(target=self._run, name="flowscope-runstore", daemon=True)
        self._thread.start()

    # -- producers (any thread) ------------------------------------------------------------------

    def spans(self, batch) -> None:
        q = self._q
        if self._level or len(q) > self._high:
            batch = self._admit(batch)
        room = self.queue_max - len(q)
        if room >= len(batch):
            q.extend(batch)
        else:
            q.extend(batch[:max(room, 0)])
            self._drop(len(batch) - max(room, 0), "queue_full")
        if len(q) > 5000:
            self._wake.set()

    def fast(self, item: tuple) -> None:
        q = self._q
        if self._level or len(q) > self._high:
            if not self._admit((item,)):
                return
        if len(q) < self.queue_max:
            q.append(item)
        else:
            self._drop(1, "queue_full")

    def _admit(self, batch) -> list:
        """Shed load by run, not by span: past the high-water mark, whole runs are left out.

        The shed level (0..7) rises while the queue stays above half full and falls once it is
        below a quarter; a run is left out when its correlation_id hashes (crc32, so every span of
        it agrees) below the level, i.e. level/8 of the runs. The runs that are kept stay whole,
        which dropping arbitrary spans at a full queue would not do.
        """
        now = time.monotonic()
        n = len(self._q)
        if now - self._level_at >= self.shed_interval_s:
            if n > self._high and self._level < 7:
                self._level, self._level_at = self._level + 1, now
            elif n < self._low and self._level > 0:
                self._level, self._level_at = self._level - 1, now
        level = self._level
        if not level:
            return list(batch)
        kept = []
        for it in batch:
            cid = it[0].correlation_id if type(it) is tuple else getattr(it, "correlation_id", None)
            if isinstance(it, Span) or type(it) is tuple:
                if cid is not None and zlib.crc32(cid.encode()) & 7 < level:
                    continue
            kept.append(it)
        if len(kept) < len(batch):
            self._drop(len(batch) - len(kept), "shed_runs")
        return kept

    def _drop(self, n: int, reason: str) -> None:
        with self._drop_lock:  # only on overload: the normal path takes no lock
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def error(self, rec: ErrorRecord) -> None:
        self.spans([rec])

    def profile(self, profile) -> None:
        self.spans([profile])

    def _fold_dropped(self) -> None:
        with self._drop_lock:
            dropped, self._dropped = self._dropped, {}
        for reason, n in dropped.items():
            self.m_dropped.inc((reason,), n)

    # -- the writer ---------------------------------------------------------------------------------

    def _drain(self, limit: int = 20_000) -> list:
        out = []
        pop = self._q.popleft
        try:
            for _ in range(limit):
                out.append(pop())
        except IndexError:
            pass
        return out

    def _run(self) -> None:
        backoff = 0.5
        batch: list = []
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            while True:
                self._idle.clear()  # before the drain: flush() must not see an empty queue and an idle writer
                if not batch:
                    batch = self._drain()
                if not batch:
                    break
                batch, error = self._write(batch)
                if not batch:
                    backoff = 0.5
                    continue
                # the database is unavailable: keep what is left, back off, retry
                with self._metrics.lock:
                    self.m_failures.inc(())
                log.warning("run store write of %d items failed (retrying in %.1fs): %s", len(batch), backoff, error)
                if self._stopping.is_set():
                    log.error("run store closing: %d items not written", len(batch))
                    with self._metrics.lock:
                        self.m_dropped.inc(("write_failed",), len(batch) + len(self._q))
                    self._q.clear()
                    batch = []
                    break
                self._stopping.wait(backoff)  # close() cuts the wait short
                backoff = min(backoff * 2, 30.0)
            now = self.clock()
            if now - self._last_sweep >= self.sweep_interval_s:
                self._last_sweep = now
                self.sweep(now)
            self._idle.set()
            if self._stopping.is_set() and not self._q:
                return

    def _write(self, batch: list) -> tuple[list, BaseException | None]:
        """Write ``batch``, isolating what the database refuses: ``([], None)`` when every item was
        stored or dropped as poison; ``(the items not yet written, the error)`` when the database is
        unavailable, to be retried as they are.

        A failed chunk is split in halves until the failing item stands alone (a failed transaction
        writes nothing, so halves are never written twice). An error is an outage, not poison, when
        its kind says so (:func:`is_outage`) or when :meth:`RunStore.probe` fails right after it; the
        probe runs when the whole batch fails (no bisecting through an outage) and when a single
        item fails (the database may have gone away mid-split).
        """
        pending = [batch]  # chunks still to write, the next one last
        while pending:
            chunk = pending.pop()
            poisoned: list = []
            try:
                counts = self.store.write(chunk, poisoned)
            except Exception as e:  # noqa: BLE001 - classified below: outage (kept) or poison (counted, logged)
                if is_outage(e) or ((chunk is batch or len(chunk) == 1) and not self.store.probe()):
                    pending.append(chunk)
                    return [it for ch in reversed(pending) for it in ch], e
                if len(chunk) > 1:
                    mid = len(chunk) // 2
                    pending += (chunk[mid:], chunk[:mid])
                    continue
                poisoned = [(chunk[0], e)]
            else:
                if counts["runs"] or counts["truncated_states"]:
                    with self._metrics.lock:
                        if counts["runs"]:
                            self.m_runs.inc((), counts["runs"])
                        if counts["truncated_states"]:
                            self.m_truncated.inc((), counts["truncated_states"])
            for item, error in poisoned:
                self._poison(item, error)
        return [], None

    def _poison(self, item, error: BaseException) -> None:
        """Drop one item the store refused, count it, and log its kind of error once (then at 10, 100, ...)."""
        self._drop(1, "poison")
        # the driver's own message: SQLAlchemy's wrapper would add the statement and every parameter
        try:
            msg = str(getattr(error, "orig", None) or error)
        except Exception:  # noqa: BLE001 - an error whose message cannot be shown is still counted and logged
            msg = "(no message)"
        kind = f"{type(error).__name__}: {msg[:60]}"
        seen = self._poison_seen
        if kind not in seen and len(seen) >= 1000:  # bounded: past a thousand kinds, count without logging
            return
        n = seen[kind] = seen.get(kind, 0) + 1
        if n == 1 or (n >= 10 and str(n).rstrip("0") == "1"):
            log.error("run store dropped a %s it cannot store (%d so far with this error; the rest of its batch "
                      "was stored): %s: %s", _describe(item), n, type(error).__name__, msg[:500])

    def sweep(self, now: float | None = None) -> int:
        """Delete what is older than the retention; the writer calls it every ``sweep_interval_s``."""
        now = self.clock() if now is None else now
        try:
            n = self.store.sweep(int((now - self.retention_s) * 1e9))
        except Exception as e:
            log.warning("retention sweep failed: %s", e)
            return 0
        if n:
            with self._metrics.lock:
                self.m_swept.inc((), n)
            log.info("retention sweep deleted %d runs older than %g h", n, self.retention_s / 3600)
        return n

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self._q and self._idle.is_set():
                return True
            self._wake.set()
            time.sleep(0.01)
        return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (bounded by ``timeout_s``), then stop; what is left is counted as dropped."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout_s)
        left = len(self._q)
        if left:
            log.error("run store closing: %d items not written", left)
            with self._metrics.lock:
                self.m_dropped.inc(("shutdown",), left)
