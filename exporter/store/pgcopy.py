"""PostgreSQL's bulk paths for the run store's big tables (``spans``, ``span_details``, ``span_links``).

The run store writes a batch of up to 20,000 spans in one transaction with ``INSERT ... ON CONFLICT DO NOTHING``,
so a batch the writer sends again after an outage stores nothing twice. On PostgreSQL the row-at-a-time
``executemany`` (psycopg 3 pipelines it: no round trip per row, but still a Bind and an Execute, and an
executor start-up, per row) is where the writer's time goes. :class:`BulkInsert` keeps the statement's meaning,
idempotent and first-row-wins, and sends the rows in bulk, one of three ways (``method``):

- ``"executemany"``: today's path, the driver's ``executemany`` of the one-row statement (the baseline);
- ``"copy"``: ``COPY ... FROM STDIN (FORMAT BINARY)`` into a temporary staging table that is emptied at commit,
  then one ``INSERT INTO t SELECT * FROM staging ON CONFLICT DO NOTHING`` (COPY cannot skip a duplicate);
- ``"unnest"``: one ``INSERT INTO t SELECT * FROM unnest(%b, %b, ...) ON CONFLICT DO NOTHING`` with a
  binary array per column: no staging table, every error wrapped by SQLAlchemy as usual.

``bench/store_ingest.py --postgres --pg-methods copy,unnest,executemany --closed-loop 6`` measures them (the writer
alone, 5,000-span batches, medians of 3 rounds, 2026-11-28): per span, ``copy`` costs the writer (building the rows
included) 16.7 µs of CPU and PostgreSQL 13.0 µs, ``unnest`` 23.8 and 14.7, ``executemany`` 36.1 and 19.3; so
:data:`DEFAULT_METHOD` is ``copy``. (psycopg's explicit pipeline mode is no fourth candidate: its ``executemany``
already runs in one.) The staging table is made in the writing transaction when missing (``CREATE TEMP TABLE IF NOT
EXISTS``), so it holds behind a transaction-pooling PgBouncer too, and each replica's sessions have their own.

Rows that repeat a key within one batch keep the first, as the one-row statements did: ``DO NOTHING``
skips a row whose key an earlier row of the same statement inserted, and both bulk statements read their rows in
the order they were sent (``unnest`` in array order; the staging table is temporary, emptied at each commit and
filled by one COPY, so its sequential scan, never synchronised or parallel for a temporary table, is in COPY's
order). A row the database refuses (a NUL in text, a value too long) fails the whole statement, as it failed
the whole ``executemany``, and the recorder's bisection (:func:`~exporter.store.recorder.write_isolating`)
finds it the same way. Use::

    bulk = BulkInsert(spans, method="copy")
    with engine.begin() as conn:
        bulk.insert(conn, rows)          # rows: tuples in the table's column order
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql

#: How rows reach PostgreSQL, fastest first as measured by bench/store_ingest.py (see the README's "Scale").
METHODS = ("copy", "unnest", "executemany")
DEFAULT_METHOD = "copy"

#: The environment variable that picks the method, for benchmarks only (bench/store_ingest.py sets it for the
#: server it starts, whose writer process inherits it): not a setting, since the default is the fastest.
METHOD_ENV = "FLOWSCOPE_BENCH_PG_INSERT"

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]

log = logging.getLogger("flowscope.runstore")


def bulk_method_from_env(environ: dict[str, str] | None = None) -> str:
    """The method :data:`METHOD_ENV` names (a benchmark's choice), else :data:`DEFAULT_METHOD`."""
    value = (os.environ if environ is None else environ).get(METHOD_ENV, "").strip()
    if not value:
        return DEFAULT_METHOD
    if value not in METHODS:
        raise ValueError(f"{METHOD_ENV}={value!r}: one of {', '.join(METHODS)}")
    return value


class BulkInsert:
    """``INSERT ... ON CONFLICT DO NOTHING`` of many rows into one PostgreSQL table, by ``method`` (see the
    module docstring). Stateless across connections: the ``copy`` method's staging table is made per
    connection when missing (``CREATE TEMP TABLE IF NOT EXISTS``)."""

    def __init__(self, table: Table, method: str = DEFAULT_METHOD):
        if method not in METHODS:
            raise ValueError(f"unknown bulk insert method {method!r}: one of {', '.join(METHODS)}")
        self.table = table
        self.method = method
        self.columns = tuple(col.name for col in table.columns)
        names = ", ".join(self.columns)
        types = [col.type.compile(dialect=_DIALECT) for col in table.columns]
        #: the binary COPY's types: each column's own, without its length (COPY checks none; the INSERT does)
        self.copy_types = [t.split("(")[0].lower() for t in types]
        self.stage = f"flowscope_stage_{table.name}"
        self.executemany_sql = (f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(['%s'] * len(types))}) "
                                "ON CONFLICT DO NOTHING")
        self.unnest_sql = (f"INSERT INTO {table.name} ({names}) SELECT * FROM unnest("
                           + ", ".join(f"%b::{t.split('(')[0].lower()}[]" for t in types) + ") ON CONFLICT DO NOTHING")
        self.create_stage_sql = (f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} "
                                 f"({', '.join(f'{n} {t}' for n, t in zip(self.columns, self.copy_types))}) "
                                 "ON COMMIT DELETE ROWS")
        self.copy_sql = f"COPY {self.stage} ({names}) FROM STDIN (FORMAT BINARY)"
        self.merge_sql = f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {self.stage} ON CONFLICT DO NOTHING"
        #: whether the role may create the staging table (asked once): a database that revokes TEMPORARY from it
        #: gets ``unnest``, which needs no table, rather than every batch refused and dropped as poison
        self.temp_allowed: bool | None = None

    def insert(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (tuples in the table's column order) in ``conn``'s transaction, skipping every key that
        is stored already. Errors are SQLAlchemy's (``sqlalchemy.exc.DBAPIError`` subclasses), as ever."""
        if not rows:
            return
        if self.method == "executemany":
            conn.exec_driver_sql(self.executemany_sql, list(rows))
            return
        if self.method == "copy" and self.temp_allowed is None:
            self.temp_allowed = bool(conn.exec_driver_sql(
                "SELECT has_database_privilege(current_database(), 'TEMPORARY')").scalar())
            if not self.temp_allowed:
                log.warning("%s: this role may not create temporary tables (TEMPORARY privilege), so no COPY through a "
                            "staging table: its rows go by unnest", self.table.name)
        if self.method == "unnest" or self.temp_allowed is False:
            conn.exec_driver_sql(self.unnest_sql, tuple(list(col) for col in zip(*rows, strict=True)))
            return
        conn.exec_driver_sql(self.create_stage_sql)
        self._copy(conn, rows)
        conn.exec_driver_sql(self.merge_sql)

    def _copy(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """COPY ``rows`` into the staging table on the driver's own connection (psycopg 3's ``Cursor.copy``)."""
        import psycopg

        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor() as cur, cur.copy(self.copy_sql) as copy:
                copy.set_types(self.copy_types)
                write = copy.write_row
                for r in rows:
                    write(r)
        except psycopg.Error as e:  # as SQLAlchemy would have raised it: outages and refusals told apart as ever
            raise sa_exc.DBAPIError.instance(self.copy_sql, None, e, psycopg.Error, hide_parameters=True,
                                             dialect=conn.dialect) from e
