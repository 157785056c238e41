"""Alembic's environment for the Flowscope store.

Run through :mod:`exporter.store.migrate` (``flowscope db upgrade``, or a store upgrading itself at start), which
passes an open connection in ``config.attributes["connection"]``, already inside the transaction (and, on
PostgreSQL, the advisory lock) the upgrade runs in. A developer writing a revision runs Alembic's commands with
the same configuration and a URL (a database at head), then edits what autogenerate wrote:

    from alembic import command
    from exporter.store.migrate import config
    cfg = config(url="sqlite:///var/dev.db")
    command.upgrade(cfg, "head"); command.revision(cfg, "what changes", autogenerate=True)
    command.check(cfg)   # "No new upgrade operations detected" when schema.py and the migrations agree
"""

from __future__ import annotations

from alembic import context

from exporter.db import make_engine
from exporter.store.schema import include_name, metadata

config = context.config


def _run(connection) -> None:
    # include_name: the full-text objects (FTS5 tables, PostgreSQL's tsvector column and GIN index) are DDL of the
    # migrations, not of schema.py, so `alembic check` leaves them out as the tests' comparison does
    context.configure(connection=connection, target_metadata=metadata, include_name=include_name,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the Flowscope migrations inspect the database: offline (--sql) mode is not supported")

_conn = config.attributes.get("connection")
if _conn is not None:
    _run(_conn)
else:
    _url = config.get_main_option("sqlalchemy.url")
    _engine = make_engine(_url)
    try:
        with _engine.connect() as _c:
            _run(_c)
            _c.commit()
    finally:
        _engine.dispose()
