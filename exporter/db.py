"""One SQLAlchemy engine per database URL: SQLite by default, PostgreSQL by URL.

Use :func:`make_engine` for every store (runs, errors, alerts, regressions), so
SQLite gets the pragmas that let a writer thread and request threads share one
file, and a bare ``postgresql://`` URL uses psycopg 3, the driver Flowscope ships.

    engine = make_engine("sqlite:///var/flowscope.db")
    engine = make_engine("postgresql://flowscope@127.0.0.1:5432/flowscope")
"""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite

from .errors import ConfigError
from .redact import mask_url


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 (SQLAlchemy would otherwise look for psycopg2)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:" and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    except Exception as e:  # noqa: BLE001 - unknown dialect, missing driver, malformed URL
        raise ConfigError(f"database_url: {mask_url(str(e))}") from None  # the message may quote the URL
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):
            # WAL: readers never block the writer thread; busy_timeout: writers queue, not fail.
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=10000")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
    return engine


def insert_ignore(engine: Engine, table):
    """``INSERT ... ON CONFLICT DO NOTHING`` in the engine's dialect: a span delivered twice is stored once."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return table.insert()
