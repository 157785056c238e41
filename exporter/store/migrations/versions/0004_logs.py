"""Application log lines: the ``logs`` and ``log_fields`` tables, and each database's full-text index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

``logs`` is keyed by the line's time in ns (unique: see :mod:`exporter.store.logs`); ``log_fields`` holds one row
per attribute for ``field=value`` / ``field>number`` lookups (a number in ``number``, other values in ``value``,
each indexed where set; WITHOUT ROWID on SQLite, where the primary key is the table). Full text, made here by hand because metadata cannot
express it (``exporter.store.schema.include_name`` keeps it out of the comparison with the metadata):

- SQLite: the FTS5 external-content table ``logs_fts(body, exception)`` over ``logs`` (rowid = ``logs.id``),
  kept in step by an insert and a delete trigger; ``columnsize=0``: no ranking, so no per-row sizes kept.
- PostgreSQL: ``logs.search``, a stored generated ``tsvector`` (``simple``: no stemming, no stop words, as FTS5's
  ``unicode61``) over body and exception, with a GIN index.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LOG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_FTS = (
    "CREATE VIRTUAL TABLE logs_fts USING fts5(body, exception, content='logs', content_rowid='id', columnsize=0)",
    "CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN "
    "INSERT INTO logs_fts(rowid, body, exception) VALUES (new.id, new.body, new.exception); END",
    "CREATE TRIGGER logs_fts_delete AFTER DELETE ON logs BEGIN "
    "INSERT INTO logs_fts(logs_fts, rowid, body, exception) VALUES ('delete', old.id, old.body, old.exception); END",
)
POSTGRESQL_FTS = (
    "ALTER TABLE logs ADD COLUMN search tsvector GENERATED ALWAYS AS "
    "(to_tsvector('simple'::regconfig, body || ' ' || coalesce(exception, ''))) STORED",
    "CREATE INDEX ix_logs_search ON logs USING gin (search)",
)


def upgrade() -> None:
    op.create_table(
        "logs",
        sa.Column("id", LOG_ID, primary_key=True, autoincrement=False),
        sa.Column("time_ns", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("severity_number", sa.Integer(), nullable=False),
        sa.Column("service", sa.String(200), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=True),
        sa.Column("logger", sa.String(200), nullable=True),
        sa.Column("correlation_id", sa.String(128), nullable=True),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("span_id", sa.String(16), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("exception", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=True),
    )
    for name, cols in (("ix_logs_cid", ["correlation_id", "id"]), ("ix_logs_trace", ["trace_id", "id"]),
                       ("ix_logs_service", ["service", "id"]), ("ix_logs_workflow", ["workflow", "id"]),
                       ("ix_logs_level", ["level", "id"])):
        op.create_index(name, "logs", cols)
    op.create_table(
        "log_fields",
        sa.Column("log_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("value", sa.String(200), nullable=True),
        sa.Column("number", sa.Float(), nullable=True),
        sqlite_with_rowid=False,
    )
    for name, column in (("ix_log_fields_value", "value"), ("ix_log_fields_number", "number")):
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "log_fields", ["name", column, "log_id"], sqlite_where=where, postgresql_where=where)
    dialect = op.get_bind().dialect.name
    for stmt in SQLITE_FTS if dialect == "sqlite" else POSTGRESQL_FTS if dialect == "postgresql" else ():
        op.execute(stmt)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS logs_fts_delete")
        op.execute("DROP TRIGGER IF EXISTS logs_fts_insert")
        op.execute("DROP TABLE IF EXISTS logs_fts")
    op.drop_table("log_fields")
    op.drop_table("logs")
