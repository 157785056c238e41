"""The columns and table the stop-gap ``add_missing_columns`` used to add on start.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-02

``errors.cause_fingerprint`` (+ ``ix_errors_cause``), the ``error_group_aliases`` table, ``regressions.kind`` and
``regressions.rate_per_s``. A store the previous release started already has them (it added them itself), one
from before that has not: each is added only when it is missing. All nullable: the rows before them have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (("errors", sa.Column("cause_fingerprint", sa.String(16), nullable=True)),
           ("regressions", sa.Column("kind", sa.String(10), nullable=True)),
           ("regressions", sa.Column("rate_per_s", sa.Float(), nullable=True)))


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    for table, column in COLUMNS:
        if column.name not in {c["name"] for c in insp.get_columns(table)}:
            op.add_column(table, column)
    if "ix_errors_cause" not in {ix["name"] for ix in insp.get_indexes("errors")}:
        op.create_index("ix_errors_cause", "errors", ["cause_fingerprint"])
    if "error_group_aliases" not in insp.get_table_names():
        op.create_table("error_group_aliases",
                        sa.Column("fingerprint", sa.String(16), nullable=False, primary_key=True),
                        sa.Column("group_fingerprint", sa.String(16), nullable=False))


def downgrade() -> None:
    op.drop_table("error_group_aliases")
    op.drop_index("ix_errors_cause", table_name="errors")
    for table, column in reversed(COLUMNS):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column.name)
