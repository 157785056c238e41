"""A span's kind and resource move onto its ``spans`` row; each resource is stored once, in ``resources``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

Before this revision every span from an OpenTelemetry SDK had a ``span_details`` row for its kind and a copy of
its resource's JSON (about 300 bytes, the same for every span of a process): a second row and index entry per
span, and most of the bytes written. Now ``spans.kind`` holds the kind, ``spans.resource_id`` names a
``resources`` row, and ``span_details`` has rows only for spans with events or links. Rows written before keep
their details; the reads take a span's kind and resource from either place, so nothing is rewritten here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ALTER TABLE ADD COLUMN (nullable): no table rebuild on either database, however many spans it holds
    op.add_column("spans", sa.Column("kind", sa.String(16), nullable=True))
    op.add_column("spans", sa.Column("resource_id", sa.String(16), nullable=True))
    op.create_table(
        "resources",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("last_seen_ns", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_resources_last_seen", "resources", ["last_seen_ns"])


def downgrade() -> None:
    op.drop_index("ix_resources_last_seen", table_name="resources")
    op.drop_table("resources")
    with op.batch_alter_table("spans") as batch:
        batch.drop_column("resource_id")
        batch.drop_column("kind")
