"""Memory profiles: a run's peak and net memory beside its allocation stacks.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A memory profile is a ``profiles`` row like a CPU one: ``format`` says what its stacks count (``alloc``: bytes
allocated, ``held``: bytes still held at the run's end) and two new nullable columns carry the run's peak and net
memory in bytes. CPU rows have neither.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (sa.Column("peak_bytes", sa.BigInteger(), nullable=True),
           sa.Column("net_bytes", sa.BigInteger(), nullable=True))


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("profiles", column)


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column.name)
