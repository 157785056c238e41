"""The endpoint inventory: the ``endpoints`` table (service, method, path template, view, auth, source).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

One row per documented endpoint of a service, registered through ``POST /api/v1/endpoints`` (the SDK's route
discovery or an OpenAPI document); :mod:`exporter.store.endpoints` joins it with the server spans.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("service", sa.String(200), primary_key=True),
        sa.Column("method", sa.String(16), primary_key=True),
        sa.Column("path", sa.String(500), primary_key=True),
        sa.Column("view", sa.String(300), nullable=True),
        sa.Column("auth", sa.Boolean(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("registered_at_ns", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("endpoints")
