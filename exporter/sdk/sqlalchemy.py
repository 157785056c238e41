"""SQLAlchemy instrumentation: every query a database-layer step, slow queries and N+1 patterns flagged.

    import flowscope
    flowscope.instrument_engine(engine)           # uses the default tracer
    instrument_engine(engine, tracer=t, slow_ms=100, n_plus_one=10)

Through SQLAlchemy's engine events (``before_cursor_execute``,
``after_cursor_execute``, ``handle_error``), each statement becomes a step:
layer ``database``, component the dialect (``postgresql``, ``sqlite``, ...),
operation ``<VERB> <first table>`` (bounded, so it can be a metric label) and
the statement with its literals stripped in the ``db.statement`` attribute.

Flags, set in the ``flowscope.db.pattern`` attribute of the step:

- ``slow_query``: the statement took at least ``slow_ms`` (default ``FLOWSCOPE_SLOW_QUERY_MS``, 100: the
  shipped alert spec's warning threshold for the database layer, so "slow" means the same thing here and
  in the alerts; a test keeps the two equal).
- ``n_plus_one``: the same normalised statement ran ``n_plus_one`` times (default
  ``FLOWSCOPE_N_PLUS_ONE_THRESHOLD``, 10) in one run; flagged once per statement per run.

The exporter counts flagged steps in ``flowscope_query_patterns_total{workflow,kind}``
(never the statement), pushes them to Loki at level ``warn``, and the run page
lists them. A warning also goes to the ``flowscope.sql`` logger, with the run's IDs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from time import time_ns
from typing import TYPE_CHECKING

from .. import conventions as c
from .context import current_step
from .tracer import WorkflowTracer

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine, ExceptionContext
    from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext

log = logging.getLogger("flowscope.sql")

_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r"'(?:[^']|'')*'")
_NUMBERS = re.compile(r"(?<![\w$.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?\b", re.I)
_IN_LIST = re.compile(r"\(\s*(?:\?|%s|:\w+|\$\d+)(?:\s*,\s*(?:\?|%s|:\w+|\$\d+))+\s*\)")
_PLACEHOLDER = re.compile(r"%\(\w+\)s|:\w+|\$\d+|%s")
_SPACE = re.compile(r"\s+")
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+([\w.\"`\[\]]+)", re.I)
MAX_STATEMENT = 2000


def normalize(statement: str) -> str:
    """The statement with comments, literals and placeholder styles collapsed: one shape per query."""
    s = _COMMENTS.sub(" ", statement)
    s = _STRINGS.sub("?", s)
    s = _NUMBERS.sub("?", s)
    s = _PLACEHOLDER.sub("?", s)
    s = _IN_LIST.sub("(?)", s)
    return _SPACE.sub(" ", s).strip()[:MAX_STATEMENT]


def operation_of(normalized: str) -> str:
    """``SELECT orders``: the verb and first table, a bounded label value."""
    verb = normalized.split(" ", 1)[0].upper() if normalized else "QUERY"
    m = _TABLE.search(normalized)
    table = m.group(1).strip('"`[]') if m else ""
    return f"{verb} {table}".strip()[:100]


def instrument_engine(engine: Engine, tracer: WorkflowTracer | None = None, slow_ms: float | None = None,
                      n_plus_one: int | None = None, component: str | None = None,
                      clock: Callable[[], int] = time_ns) -> None:
    """Record every statement ``engine`` runs as a step of the current run (timed by ``clock``, ns)."""
    from sqlalchemy import event

    if n_plus_one is None or slow_ms is None:
        from ..config import load_config
        cfg = load_config()
        n_plus_one = cfg.n_plus_one_threshold if n_plus_one is None else n_plus_one
        slow_ms = cfg.slow_query_ms if slow_ms is None else slow_ms
    comp = component or engine.dialect.name
    slow_ns = int(slow_ms * 1e6)

    def _tracer() -> WorkflowTracer:
        return tracer or WorkflowTracer.default()

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, cursor: DBAPICursor, statement: str, parameters: object,
                context: ExecutionContext | None, executemany: bool) -> None:
        conn.info.setdefault("flowscope_t0", []).append(clock())

    def _finish(conn: Connection, statement: str, failure: BaseException | None) -> None:
        stack = conn.info.get("flowscope_t0")
        if not stack:
            return
        start = stack.pop()
        end = clock()
        norm = normalize(statement)
        attrs: dict[str, object] = {c.ATTR_DB_STATEMENT: norm, "db.system": engine.dialect.name}
        cur = current_step.get()
        pattern = None
        if cur is not None:
            run = cur[0]
            if run.extras is None:
                run.extras = {}
            counts: dict[str, int] = run.extras.setdefault("db_counts", {})
            n = counts[norm] = counts.get(norm, 0) + 1
            if n == n_plus_one:
                pattern = c.QUERY_N_PLUS_ONE
                attrs["flowscope.db.repeat_count"] = n
        if pattern is None and end - start >= slow_ns:
            pattern = c.QUERY_SLOW
        if pattern is not None:
            attrs[c.ATTR_DB_PATTERN] = pattern
            log.warning("%s in %s: %s", pattern, cur[0].workflow if cur else "no run", norm[:300],
                        extra={"flowscope_pattern": pattern})
        _tracer().record_step("database", comp, operation_of(norm), start, end, attrs, failure)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Connection, cursor: DBAPICursor, statement: str, parameters: object,
               context: ExecutionContext | None, executemany: bool) -> None:
        _finish(conn, statement, None)

    @event.listens_for(engine, "handle_error")
    def _error(ctx: ExceptionContext) -> None:
        if ctx.connection is not None and ctx.statement:
            _finish(ctx.connection, ctx.statement, ctx.original_exception)
