"""Application log lines in the store: their rows, their search index, the sweep, and the reads that search them.

**Rows.** One ``logs`` row per line. Its ``id`` is the line's time in nanoseconds, made unique by moving a
line that would share it one nanosecond later (:func:`insert_logs`): the primary key is the time index, so
"newest first" is a walk down the key that stops after one page, a time range is a key range, and the sweep
deletes a key range. Each attribute (nested ones flattened to dotted keys) is also a ``log_fields`` row
``(log_id, name, value, number)``, indexed by ``(name, value, log_id)`` and ``(name, number, log_id)``, so
``order_id=123`` and ``http.status_code>=500`` are index lookups in either database, newest first.

**Full text** uses each database's own machinery, kept in step inside the writer's transaction:

- SQLite: an FTS5 external-content table ``logs_fts(body, exception)`` over ``logs``, filled and emptied by
  triggers on ``logs`` (revision 0004);
- PostgreSQL: a stored generated ``tsvector`` column ``logs.search`` (``simple`` configuration: no stemming,
  as FTS5's ``unicode61`` tokenizer) with a GIN index.

Neither is expressible in :mod:`.schema`'s metadata; :func:`~.schema.include_name` keeps them out of the
comparison of the migrations with the metadata.

    rows = [log_row(line, redactor) for line in lines]        # the writer, any process
    insert_logs(conn, rows)                                     # inside its transaction
    store.search_logs(LogQuery(levels=("error", "fatal"), text=("card declined",)), limit=50)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnClause, TextClause

from .. import conventions as c
from ..fingerprint import mask
from ..model import LogLine, hash_user
from ..redact import Redactor
from .schema import log_fields, logs

__all__ = ["FIELD_COLUMNS", "FieldFilter", "LogEntry", "LogPage", "LogQueries", "LogQuery", "LogTemplate",
           "delete_logs_before", "insert_logs", "levels_from", "log_row"]

#: The longest body and exception stored (characters); the rest is cut (a tsvector holds at most 1 MB).
MAX_BODY = 32_768
#: At most this many attributes of a line become ``log_fields`` rows (the first, in order), nested ones
#: flattened to this depth; a field's text value is cut to :data:`MAX_FIELD_VALUE` characters.
MAX_FIELDS = 64
MAX_FIELD_DEPTH = 4
MAX_FIELD_VALUE = 200
MAX_FIELD_NAME = 200
#: Line fields that are columns: ``field=value`` on them filters the column, not the attributes.
FIELD_COLUMNS = ("level", "service", "workflow", "logger", "correlation_id", "trace_id", "span_id", "source")
#: How many times :func:`insert_logs` moves lines whose time another writer took meanwhile.
MAX_ID_ROUNDS = 8
#: Below this many rows, an attribute filter's lines are gathered as a set; from it on, each line checks its own.
FEW_FIELD_ROWS = 20_000
#: An id is its line's time moved later by at most this much (in practice a few ns): the slack a time range's
#: end is given on the key before the exact ``time_ns`` test.
ID_SLACK_NS = 1_000_000


def _user_keys() -> frozenset[str]:
    from .recorder import USER_KEYS  # here: the recorder imports this module

    return USER_KEYS


def _flatten(attrs: dict[Any, Any], prefix: str, depth: int, out: list[tuple[str, str | None, float | None]],
             seen: set[str]) -> None:
    for k, v in attrs.items():
        if len(out) >= MAX_FIELDS:
            return
        name = f"{prefix}{k}"[:MAX_FIELD_NAME]
        if isinstance(v, dict) and depth < MAX_FIELD_DEPTH:
            _flatten(v, name + ".", depth + 1, out, seen)
            continue
        if name in seen:  # {"a.b": 1, "a": {"b": 2}}, or names cut to one: the first is the field
            continue
        seen.add(name)
        number: float | None = None
        if isinstance(v, bool):
            value: str | None = "true" if v else "false"
        elif isinstance(v, (int, float)):
            number = float(v) if math.isfinite(v) and abs(v) < 1e300 else None
            value = str(v)
        elif isinstance(v, str):
            value = v
            number = _number(v)
        elif v is None:
            value = None
        else:
            value = orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
        # a number is kept as one only: `=` compares numbers as numbers (5 is 5.0 is "5")
        out.append((name, None if value is None or number is not None else value[:MAX_FIELD_VALUE], number))


#: A number in ASCII as a string may hold one (no ``_``, ``inf`` or ``nan``, which ``float`` would take).
_NUMBER_TEXT = re.compile(r"\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*")


def _number(s: str) -> float | None:
    """``s`` as a finite number when it is one in ASCII (``"500"``, ``"-1.5e3"``), else None."""
    if len(s) > 40 or not _NUMBER_TEXT.fullmatch(s):
        return None
    v = float(s)
    return v if math.isfinite(v) and abs(v) < 1e300 else None


def log_row(line: LogLine, redactor: Redactor) -> dict[str, Any]:
    """The line as a plain ``logs`` row (a dict the writer process can pickle), with its attribute rows under
    ``"fields"``: attribute values of secret keys redacted, user identifiers hashed (as spans' are)."""
    attrs = line.attributes
    fields: list[tuple[str, str | None, float | None]] = []
    stored = None
    if attrs:
        attrs = redactor.value(attrs)
        for k in _user_keys().intersection(attrs):
            if attrs[k] is not None:
                attrs[k] = hash_user(str(attrs[k]))
        stored = orjson.dumps(attrs, option=orjson.OPT_NON_STR_KEYS, default=str).decode()
        _flatten(attrs, "", 1, fields, set())
    level = line.level if line.level in c.LOG_LEVELS else "info"
    return {"time_ns": line.time_ns, "level": level, "severity_number": line.severity_number,
            "service": (line.service or "")[:200], "workflow": line.workflow[:200] if line.workflow else None,
            "logger": line.logger[:200] if line.logger else None,
            "correlation_id": line.correlation_id[:128] if line.correlation_id else None,
            "trace_id": line.trace_id[:32] if line.trace_id else None,
            "span_id": line.span_id[:16] if line.span_id else None, "source": (line.source or "app")[:16],
            "body": (line.body or "")[:MAX_BODY], "exception": line.exception[:MAX_BODY] if line.exception else None,
            "attributes": stored, "fields": fields}


def _insert(conn: Connection) -> Any:
    stmt = (postgresql.insert(logs) if conn.dialect.name == "postgresql" else sqlite.insert(logs))
    return stmt.on_conflict_do_nothing().returning(logs.c.id)


def insert_logs(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert :func:`log_row` rows in ``conn``'s transaction, each under a unique time id (see the module
    docstring): in time order, a line whose time is taken (by this batch or a stored line) moves to the next
    free nanosecond. Another writer taking an id meanwhile (replicas on one PostgreSQL) makes the insert skip
    that line, which then moves on, at most :data:`MAX_ID_ROUNDS` times."""
    if not rows:
        return
    rows.sort(key=lambda r: r["time_ns"])
    last = None
    for r in rows:
        t = r["time_ns"]
        r["id"] = t if last is None or t > last else last + 1
        last = r["id"]
    stmt = _insert(conn)
    pending = rows
    done: list[dict[str, Any]] = []
    for _ in range(MAX_ID_ROUNDS):
        got = set(conn.execute(stmt, [{k: v for k, v in r.items() if k != "fields"} for r in pending]).scalars())
        done += [r for r in pending if r["id"] in got]
        pending = [r for r in pending if r["id"] not in got]
        if not pending:
            break
        lo, hi = pending[0]["id"], pending[-1]["id"] + len(pending) + ID_SLACK_NS
        taken = set(conn.execute(select(logs.c.id).where(logs.c.id >= lo, logs.c.id <= hi)).scalars())
        last = None
        for r in pending:
            i = r["id"] if last is None or r["id"] > last else last + 1
            while i in taken:
                i += 1
            r["id"] = last = i
    if pending:
        raise RuntimeError(f"{len(pending)} log lines found no free time id in {MAX_ID_ROUNDS} rounds")
    field_rows = [(r["id"], n, v, x) for r in done for n, v, x in r["fields"]]
    if field_rows:  # straight to the driver's executemany: a line has several, and they need no compiling
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(f"INSERT INTO log_fields (log_id, name, value, number) VALUES ({mark}, {mark}, {mark}, "
                             f"{mark})", field_rows)


def delete_logs_before(engine: Engine, older_than_ns: int, chunk: int = 20_000, max_chunks: int = 100_000) -> int:
    """Delete the lines older than ``older_than_ns`` (their fields and index entries with them) in transactions of
    at most ``chunk`` lines, so a sweep of an hour of lines never holds the writer up for long; returns how
    many."""
    total = 0
    for _ in range(max_chunks):
        with engine.begin() as conn:
            upto = conn.execute(select(logs.c.id).where(logs.c.id < older_than_ns).order_by(logs.c.id)
                                .offset(chunk - 1).limit(1)).scalar()
            cut = older_than_ns if upto is None else upto + 1
            conn.execute(delete(log_fields).where(log_fields.c.log_id < cut))
            n = conn.execute(delete(logs).where(logs.c.id < cut)).rowcount or 0
        total += n
        if upto is None:
            break
    return total


# -- reads ---------------------------------------------------------------------------------------------------


def levels_from(level: str) -> tuple[str, ...]:
    """``level`` and every level more severe: ``levels_from("warn") == ("warn", "error", "fatal")``."""
    return c.LOG_LEVELS[c.LOG_LEVELS.index(level):]


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """``name op value`` on a line: ``op`` is ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``; the comparisons are
    numeric (``value`` a number), ``=``/``!=`` compare numbers as numbers and text as text. ``name`` is a
    column (:data:`FIELD_COLUMNS`) or an attribute (dotted for nested ones)."""

    name: str
    op: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LogQuery:
    """What to search for; every filter given must hold (values of one filter are alternatives).

    ``text`` words and phrases must all appear in the body or exception, none of ``exclude``; ``since_ns`` is
    inclusive, ``until_ns`` too.

        LogQuery(levels=levels_from("error"), services=("checkout",), text=("card declined",),
                 exclude=("healthcheck",))
    """

    since_ns: int | None = None
    until_ns: int | None = None
    levels: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    workflows: tuple[str, ...] = ()
    correlation_ids: tuple[str, ...] = ()
    trace_ids: tuple[str, ...] = ()
    fields: tuple[FieldFilter, ...] = ()
    text: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


class LogEntry(NamedTuple):
    """One stored line. ``id`` is its time id: the cursor of the page it ends."""

    id: int
    time_ns: int
    level: str
    service: str
    workflow: str | None
    logger: str | None
    correlation_id: str | None
    trace_id: str | None
    span_id: str | None
    source: str
    body: str
    exception: str | None
    attributes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LogPage:
    """Lines newest first, and the cursor of the next (older) page: None when there is none."""

    lines: list[LogEntry]
    next_cursor: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LogTemplate:
    """Lines with one template (their body masked, :func:`exporter.fingerprint.mask`), level and service."""

    template: str
    level: str
    service: str
    count: int
    first_ns: int
    last_ns: int
    example: LogEntry
    #: runs the lines belong to (correlation_id, or trace_id), newest first, at most a few
    runs: list[str] = field(default_factory=list)


#: A filter of a search: an expression, or (PostgreSQL's full text) SQL text with its parameters.
Clause = ColumnElement[bool] | TextClause

_ENTRY_COLUMNS = [logs.c[name] for name in LogEntry._fields]


def _entry(r: Sequence[Any]) -> LogEntry:
    *head, attrs = r
    return LogEntry._make((*head, orjson.loads(attrs) if attrs else {}))


def _fts5_string(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _numeric(value: str) -> float | None:
    return _number(value.strip())


class LogQueries:
    """The log reads of :class:`~exporter.store.RunStore`: :meth:`search_logs`, :meth:`log_templates`,
    :meth:`run_logs`."""

    engine: Engine

    def _text_clause(self, q: LogQuery, names: Iterator[str]) -> list[Clause]:
        if not (q.text or q.exclude):
            return []
        if self.engine.dialect.name == "postgresql":
            parts: list[str] = []
            params: list[BindParameter[str]] = []

            def ts(term: str) -> str:
                name = next(names)
                params.append(bindparam(name, term))
                return f"phraseto_tsquery('simple', :{name})"

            pos = " && ".join(ts(t) for t in q.text)
            if pos:
                parts.append(f"({pos})")
            if q.exclude:
                parts.append("!!(" + " || ".join(ts(t) for t in q.exclude) + ")")
            return [text(f"logs.search @@ ({' && '.join(parts)})").bindparams(*params)]
        fts: ColumnClause[Any] = literal_column("logs_fts")
        rowid: ColumnClause[Any] = literal_column("rowid")
        neg = " OR ".join(_fts5_string(t) for t in q.exclude)
        out: list[Clause] = []
        if q.text:
            match = " AND ".join(_fts5_string(t) for t in q.text) + (f" NOT ({neg})" if neg else "")
            out.append(logs.c.id.in_(select(rowid).select_from(text("logs_fts"))
                                     .where(fts.op("MATCH")(bindparam(next(names), match)))))
        elif neg:
            out.append(logs.c.id.not_in(select(rowid).select_from(text("logs_fts"))
                                        .where(fts.op("MATCH")(bindparam(next(names), neg)))))
        return out

    def _field_clause(self, conn: Connection, f: FieldFilter) -> ColumnElement[bool]:
        """``f`` as a filter on ``logs``. An attribute's rows are a set to look ids up in (``id IN``) while there
        are fewer than :data:`FEW_FIELD_ROWS` of them (one bounded count says so); past that, each candidate line
        looks its own field up (``EXISTS``, by the primary key): a common value would cost its whole set to
        gather, while the walk down the newest lines meets enough of them soon."""
        if f.name in FIELD_COLUMNS:
            col = logs.c[f.name]
            if f.op == "=":
                return col == f.value
            if f.op == "!=":
                return or_(col.is_(None), col != f.value)
            raise ValueError(f"{f.name} is text: compare it with = or !=")
        number = _numeric(f.value)
        by_name = log_fields.c.name == f.name
        if f.op in ("=", "!="):
            match = log_fields.c.number == number if number is not None else log_fields.c.value == f.value
        elif number is None:
            raise ValueError(f"{f.name}{f.op}{f.value}: {f.op} compares numbers")
        else:
            match = {">": log_fields.c.number > number, ">=": log_fields.c.number >= number,
                     "<": log_fields.c.number < number, "<=": log_fields.c.number <= number}[f.op]
        ids = select(log_fields.c.log_id).where(by_name, match)
        few = conn.execute(select(func.count()).select_from(ids.limit(FEW_FIELD_ROWS).subquery())).scalar_one()
        if few < FEW_FIELD_ROWS:
            return logs.c.id.not_in(ids) if f.op == "!=" else logs.c.id.in_(ids)
        own = exists().where(log_fields.c.log_id == logs.c.id, by_name, match)
        return ~own if f.op == "!=" else own

    def _where(self, conn: Connection, q: LogQuery) -> list[Clause]:
        names = (f"fts_{i}" for i in range(1_000_000))
        w: list[Clause] = []
        if q.since_ns is not None:
            w += [logs.c.id >= q.since_ns, logs.c.time_ns >= q.since_ns]  # id >= time_ns: the key bounds it
        if q.until_ns is not None:
            w += [logs.c.id <= q.until_ns + ID_SLACK_NS, logs.c.time_ns <= q.until_ns]
        for col, values in ((logs.c.level, q.levels), (logs.c.service, q.services), (logs.c.workflow, q.workflows),
                            (logs.c.correlation_id, q.correlation_ids), (logs.c.trace_id, q.trace_ids)):
            if values:
                w.append(col == values[0] if len(values) == 1 else col.in_(values))
        w += [self._field_clause(conn, f) for f in q.fields]
        w += self._text_clause(q, names)
        return w

    def search_logs(self, q: LogQuery, limit: int = 100, cursor: int | None = None) -> LogPage:
        """Lines matching ``q``, newest first, at most ``limit``; ``cursor`` (a page's ``next_cursor``) continues
        below the page it ended. Raises ValueError for a field compared in a way it cannot be (text with ``>``)."""
        with self.engine.connect() as conn:
            w = self._where(conn, q)
            if cursor is not None:
                w.append(logs.c.id < cursor)
            stmt = select(*_ENTRY_COLUMNS).where(*w).order_by(logs.c.id.desc()).limit(limit + 1)
            rows = [_entry(r) for r in conn.execute(stmt)]
        more = len(rows) > limit
        rows = rows[:limit]
        return LogPage(rows, rows[-1].id if more and rows else None)

    def log_templates(self, q: LogQuery, scan: int = 2000, top: int = 50) -> tuple[list[LogTemplate], int, bool]:
        """The newest ``scan`` matching lines collapsed into their templates, most frequent first (at most
        ``top``); returns (templates, lines scanned, whether more lines matched than were scanned)."""
        page = self.search_logs(q, limit=scan)
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for e in page.lines:
            key = (mask(e.body), e.level, e.service)
            g = groups.get(key)
            if g is None:
                g = groups[key] = {"count": 0, "first": e.time_ns, "last": e.time_ns, "example": e, "runs": []}
            g["count"] += 1
            g["first"] = min(g["first"], e.time_ns)
            g["last"] = max(g["last"], e.time_ns)
            run = e.correlation_id or e.trace_id
            if run and len(g["runs"]) < 5 and run not in g["runs"]:
                g["runs"].append(run)
        out = [LogTemplate(template=k[0], level=k[1], service=k[2], count=g["count"], first_ns=g["first"],
                           last_ns=g["last"], example=g["example"], runs=g["runs"]) for k, g in groups.items()]
        out.sort(key=lambda t: (-t.count, -t.last_ns))
        return out[:top], len(page.lines), page.next_cursor is not None

    def run_logs(self, correlation_id: str, trace_id: str | None = None, limit: int = 1000) -> list[LogEntry]:
        """A run's lines (by its correlation_id, or its trace_id), oldest first, at most ``limit`` (the newest)."""
        match = logs.c.correlation_id == correlation_id
        if trace_id:
            match = or_(match, logs.c.trace_id == trace_id)
        stmt = select(*_ENTRY_COLUMNS).where(match).order_by(logs.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = [_entry(r) for r in conn.execute(stmt)]
        rows.reverse()
        return rows

