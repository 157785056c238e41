"""Baseline: the tables as releases before migrations made them with ``create_all``.

Revision ID: 0001
Revises:
Create Date: 2025-06-01

Frozen: written out here, never imported from :mod:`exporter.store.schema` (which moves on). The columns and
table that the stop-gap ``add_missing_columns`` added after their tables' first release (``errors.
cause_fingerprint``, ``regressions.kind``/``rate_per_s``, ``error_group_aliases``) come in revision 0002.

Each table is created only when it is missing: a store from before migrations holds the tables of whichever
parts of the product ran on it (the exporter's run store, the backend's alerts, detection's findings), so on
such a store this revision completes what the old ``create_all`` calls would have made and leaves the rest, and
the store is then at this baseline (:func:`exporter.store.migrate.upgrade`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[tuple[str, list, list[tuple[str, list[str]]]]]:
    """(table, columns and constraints, [(index, columns)]) as the baseline made them."""
    s, big, text, f = sa.String, sa.BigInteger, sa.Text, sa.Float
    dt = sa.DateTime(timezone=True)

    def col(name, type_, nullable=True, **kw):
        return sa.Column(name, type_, nullable=nullable, **kw)

    return [
        ("runs", [
            col("correlation_id", s(128), False, primary_key=True), col("workflow", s(200), False),
            col("status", s(16), False), col("start_ns", big(), False), col("end_ns", big(), False),
            col("duration_ms", f(), False), col("trace_id", s(32), False), col("service", s(200), False),
            col("user_hash", s(64)), col("error_type", s(200)), col("error_message", text()),
        ], [("ix_runs_workflow_start", ["workflow", "start_ns"]), ("ix_runs_start", ["start_ns"]),
            ("ix_runs_trace", ["trace_id"])]),
        ("spans", [
            col("correlation_id", s(128), False, primary_key=True), col("span_id", s(16), False, primary_key=True),
            col("trace_id", s(32), False), col("parent_span_id", s(16)), col("workflow", s(200), False),
            col("service", s(200), False), col("layer", s(16), False), col("component", s(200), False),
            col("operation", s(500), False), col("start_ns", big(), False), col("end_ns", big(), False),
            col("status", s(16), False), col("error_type", s(200)), col("error_message", text()),
            col("stack_trace", text()), col("attributes", text()), col("state", text()),
            col("is_step", sa.Boolean(), False),
        ], [("ix_spans_end", ["end_ns"])]),
        ("span_details", [
            col("correlation_id", s(128), False, primary_key=True), col("span_id", s(16), False, primary_key=True),
            col("end_ns", big(), False), col("kind", s(16)), col("resource", text()), col("events", text()),
            col("links", text()),
        ], [("ix_span_details_end", ["end_ns"])]),
        ("span_links", [
            col("correlation_id", s(128), False, primary_key=True), col("span_id", s(16), False, primary_key=True),
            col("link_trace_id", s(32), False, primary_key=True), col("link_span_id", s(16), False, primary_key=True),
            col("end_ns", big(), False),
        ], [("ix_span_links_trace", ["link_trace_id"]), ("ix_span_links_end", ["end_ns"])]),
        ("errors", [
            col("id", sa.Integer(), False, primary_key=True, autoincrement=True), col("fingerprint", s(16), False),
            col("correlation_id", s(128)), col("span_id", s(16)), col("workflow", s(200), False),
            col("service", s(200), False), col("layer", s(16), False), col("component", s(200), False),
            col("error_type", s(200), False), col("message", text()), col("stack_trace", text()),
            col("time_ns", big(), False),
        ], [("ix_errors_fp_time", ["fingerprint", "time_ns"]), ("ix_errors_time", ["time_ns"]),
            ("ix_errors_cid", ["correlation_id"])]),
        ("error_groups", [
            col("fingerprint", s(16), False, primary_key=True), col("error_type", s(200), False),
            col("template", text(), False), col("category", s(32), False), col("first_seen_ns", big(), False),
            col("last_seen_ns", big(), False), col("count", big(), False), col("resolved_at_ns", big()),
            col("regressed_at_ns", big()),
        ], []),
        ("error_resolutions", [
            col("id", sa.Integer(), False, primary_key=True, autoincrement=True), col("fingerprint", s(16), False),
            col("note", text(), False), col("resolved_by", s(200)), col("resolved_at_ns", big(), False),
        ], [("ix_error_resolutions_fingerprint", ["fingerprint"])]),
        ("profiles", [
            col("id", sa.Integer(), False, primary_key=True, autoincrement=True), col("workflow", s(200), False),
            col("correlation_id", s(128)), col("time_ns", big(), False), col("format", s(16), False),
            col("sample_rate_hz", f()), col("stacks", text(), False),
        ], [("ix_profiles_correlation_id", ["correlation_id"]), ("ix_profiles_wf_time", ["workflow", "time_ns"])]),
        ("alerts", [
            col("id", sa.Integer(), False, primary_key=True, autoincrement=True), col("fingerprint", s(64), False),
            col("starts_at", dt, False), col("ends_at", dt), col("status", s(16), False),
            col("alertname", s(200), False), col("severity", s(50)), col("workflow", s(200)), col("layer", s(50)),
            col("labels", text(), False), col("annotations", text(), False), col("generator_url", text()),
            col("receiver", s(200)), col("first_received_at", dt, False), col("updated_at", dt, False),
            sa.UniqueConstraint("fingerprint", "starts_at", name="uq_alert_identity"),
        ], []),
        ("alert_events", [
            col("id", sa.Integer(), False, primary_key=True, autoincrement=True),
            col("alert_id", sa.Integer(), False), col("status", s(16), False), col("at", dt, False),
            sa.ForeignKeyConstraint(["alert_id"], ["alerts.id"], ondelete="CASCADE"),
        ], [("ix_alert_events_alert_id", ["alert_id"])]),
        ("regressions", [
            col("id", sa.Integer(), False, primary_key=True, autoincrement=True), col("series", s(500), False),
            col("labels", text(), False), col("change_time", s(40), False), col("detector", s(40), False),
            col("direction", s(20), False), col("before", f(), False), col("after", f(), False),
            col("relative_change", f(), False), col("p_value", f(), False), col("p_adjusted", f(), False),
            col("first_seen", dt, False), col("last_seen", dt, False),
            sa.UniqueConstraint("series", "change_time", "detector", name="uq_regression"),
        ], []),
    ]


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    for name, columns, indexes in _tables():
        if name in have:  # made by the release before migrations: kept as it is
            continue
        op.create_table(name, *columns)
        for ix, cols in indexes:
            op.create_index(ix, name, cols)


def downgrade() -> None:
    for name, _, _ in reversed(_tables()):
        op.drop_table(name)
