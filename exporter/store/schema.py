"""Every table of the product in one :data:`metadata`: the run store, error analysis, profiles, alerts and
regression findings.

This is the schema as the code reads and writes it (head). The database gets it through the migrations in
:mod:`exporter.store.migrations` (:func:`exporter.store.migrate.upgrade`), never through ``create_all``: a
change here comes with a new revision there, and ``tests/test_migrations.py`` checks that the migrations
build exactly this.

    from exporter.store.schema import metadata, runs
    select(runs.c.correlation_id).where(runs.c.workflow == "checkout")
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# -- runs and spans ------------------------------------------------------------------------------------

runs = Table(
    "runs", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("trace_id", String(32), nullable=False),
    Column("service", String(200), nullable=False),
    Column("user_hash", String(64), nullable=True),
    Column("error_type", String(200), nullable=True),
    Column("error_message", Text, nullable=True),
    Index("ix_runs_workflow_start", "workflow", "start_ns"),
    Index("ix_runs_start", "start_ns"),
    Index("ix_runs_trace", "trace_id"),
)

spans = Table(
    "spans", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("trace_id", String(32), nullable=False),
    Column("parent_span_id", String(16), nullable=True),
    Column("workflow", String(200), nullable=False),
    Column("service", String(200), nullable=False),
    Column("layer", String(16), nullable=False),
    Column("component", String(200), nullable=False),
    Column("operation", String(500), nullable=False),
    Column("start_ns", BigInteger, nullable=False),
    Column("end_ns", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_type", String(200), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("stack_trace", Text, nullable=True),
    Column("attributes", Text, nullable=True),
    Column("state", Text, nullable=True),
    Column("is_step", Boolean, nullable=False),
    #: the span's kind (server, client, ...); revision 0006 (before it, ``span_details.kind``)
    Column("kind", String(16), nullable=True),
    #: the ``resources`` row of the span's resource; revision 0006 (before it, ``span_details.resource``)
    Column("resource_id", String(16), nullable=True),
    Index("ix_spans_end", "end_ns"),
)

#: Each resource (the redacted attributes of the process that sent spans) once, not once per span: its id is a
#: hash of its JSON. ``last_seen_ns`` is at least the end of every span stored with it, so the retention sweep
#: deletes a resource only once no span it keeps can name it. Revision 0006.
resources = Table(
    "resources", metadata,
    Column("id", String(16), primary_key=True),
    Column("attributes", Text, nullable=False),
    Column("last_seen_ns", BigInteger, nullable=False),
    Index("ix_resources_last_seen", "last_seen_ns"),
)

#: Span details beyond the spans table: events and links as redacted JSON, one row per span that has any.
#: Rows written before revision 0006 also hold the span's kind and resource (since then in ``spans``).
span_details = Table(
    "span_details", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("end_ns", BigInteger, nullable=False),
    Column("kind", String(16), nullable=True),
    Column("resource", Text, nullable=True),
    Column("events", Text, nullable=True),
    Column("links", Text, nullable=True),
    Index("ix_span_details_end", "end_ns"),
)

#: One row per span link, indexed by the linked trace: "which runs link to this one" without scanning JSON.
span_links = Table(
    "span_links", metadata,
    Column("correlation_id", String(128), primary_key=True),
    Column("span_id", String(16), primary_key=True),
    Column("link_trace_id", String(32), primary_key=True),
    Column("link_span_id", String(16), primary_key=True),
    Column("end_ns", BigInteger, nullable=False),
    Index("ix_span_links_trace", "link_trace_id"),
    Index("ix_span_links_end", "end_ns"),
)

# -- errors ------------------------------------------------------------------------------------------

errors = Table(
    "errors", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(16), nullable=False),
    Column("correlation_id", String(128), nullable=True),
    Column("span_id", String(16), nullable=True),
    Column("workflow", String(200), nullable=False),
    Column("service", String(200), nullable=False),
    Column("layer", String(16), nullable=False),
    Column("component", String(200), nullable=False),
    Column("error_type", String(200), nullable=False),
    Column("message", Text, nullable=True),
    Column("stack_trace", Text, nullable=True),
    Column("time_ns", BigInteger, nullable=False),
    #: the group of the error that started this one's failure chain (set on callers; NULL on an origin).
    #: Revision 0002 adds it to stores made before it.
    Column("cause_fingerprint", String(16), nullable=True),
    Index("ix_errors_fp_time", "fingerprint", "time_ns"),
    Index("ix_errors_time", "time_ns"),
    Index("ix_errors_cid", "correlation_id"),
    Index("ix_errors_cause", "cause_fingerprint"),
)

error_groups = Table(
    "error_groups", metadata,
    Column("fingerprint", String(16), primary_key=True),
    Column("error_type", String(200), nullable=False),
    Column("template", Text, nullable=False),
    Column("category", String(32), nullable=False),
    Column("first_seen_ns", BigInteger, nullable=False),
    Column("last_seen_ns", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
    #: set by a resolution; an error after it flags the group as regressed
    Column("resolved_at_ns", BigInteger, nullable=True),
    Column("regressed_at_ns", BigInteger, nullable=True),
)

resolutions = Table(
    "error_resolutions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(16), nullable=False, index=True),
    Column("note", Text, nullable=False),
    Column("resolved_by", String(200), nullable=True),
    Column("resolved_at_ns", BigInteger, nullable=False),
)

#: A new fingerprint that belongs to a group stored under an older one (a group the Drain-style
#: miner made before fingerprints were type + masked template): the group keeps its notes.
error_aliases = Table(
    "error_group_aliases", metadata,
    Column("fingerprint", String(16), primary_key=True),
    Column("group_fingerprint", String(16), nullable=False),
)

# -- profiles ----------------------------------------------------------------------------------------

profiles = Table(
    "profiles", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workflow", String(200), nullable=False),
    Column("correlation_id", String(128), nullable=True, index=True),
    Column("time_ns", BigInteger, nullable=False),
    Column("format", String(16), nullable=False),
    Column("sample_rate_hz", Float, nullable=True),
    #: {folded stack: samples}, or for pstats {function: self seconds} as one-frame stacks
    Column("stacks", Text, nullable=False),
    #: memory profiles (format alloc | held, revision 0003): the run's peak and net bytes; NULL on CPU rows
    Column("peak_bytes", BigInteger, nullable=True),
    Column("net_bytes", BigInteger, nullable=True),
    Index("ix_profiles_wf_time", "workflow", "time_ns"),
)

# -- application log lines (issue 14; exporter.store.logs) -----------------------------------------------

#: The key of ``logs``: BIGINT on PostgreSQL, INTEGER on SQLite (there the rowid itself, which FTS5's external
#: content table is keyed by).
LogId = BigInteger().with_variant(Integer(), "sqlite")

logs = Table(
    "logs", metadata,
    #: the line's time in ns, moved a few ns later when another line has it (exporter.store.logs.insert_logs)
    Column("id", LogId, primary_key=True, autoincrement=False),
    Column("time_ns", BigInteger, nullable=False),
    Column("level", String(8), nullable=False),
    Column("severity_number", Integer, nullable=False),
    Column("service", String(200), nullable=False),
    Column("workflow", String(200), nullable=True),
    Column("logger", String(200), nullable=True),
    Column("correlation_id", String(128), nullable=True),
    Column("trace_id", String(32), nullable=True),
    Column("span_id", String(16), nullable=True),
    Column("source", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("exception", Text, nullable=True),
    Column("attributes", Text, nullable=True),
    Index("ix_logs_cid", "correlation_id", "id"),
    Index("ix_logs_trace", "trace_id", "id"),
    Index("ix_logs_service", "service", "id"),
    Index("ix_logs_workflow", "workflow", "id"),
    Index("ix_logs_level", "level", "id"),
)

#: One row per attribute of a line (nested ones as dotted names): ``field=value`` and ``field>number`` as index
#: lookups. A number (or a string that is one) is kept in ``number`` only, other values in ``value`` only, so each
#: row has one entry in one of the two partial indexes; on SQLite the table is its primary key (WITHOUT ROWID).
log_fields = Table(
    "log_fields", metadata,
    Column("log_id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(200), primary_key=True),
    Column("value", String(200), nullable=True),
    Column("number", Float, nullable=True),
    Index("ix_log_fields_value", "name", "value", "log_id", sqlite_where=text("value IS NOT NULL"),
          postgresql_where=text("value IS NOT NULL")),
    Index("ix_log_fields_number", "name", "number", "log_id", sqlite_where=text("number IS NOT NULL"),
          postgresql_where=text("number IS NOT NULL")),
    sqlite_with_rowid=False,
)

#: What revision 0004 makes by hand for full-text search, which metadata cannot express: SQLite's FTS5 table
#: ``logs_fts`` (and the shadow tables FTS5 keeps, ``logs_fts_*``), PostgreSQL's generated column
#: ``logs.search`` and its GIN index ``ix_logs_search``.
SEARCH_INDEX_OBJECTS = ("logs_fts", "search", "ix_logs_search")


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """Alembic's ``include_name`` hook: False for the full-text objects of :data:`SEARCH_INDEX_OBJECTS`, so
    comparing the database with :data:`metadata` (autogenerate, ``alembic check``) leaves them out."""
    if name is None:
        return True
    if type_ == "table":
        return not (name == "logs_fts" or name.startswith("logs_fts_"))
    if type_ == "column":
        return not (name == "search" and parent_names.get("table_name") == "logs")
    if type_ == "index":
        return name != "ix_logs_search"
    return True


# -- endpoint inventory (issue 15; exporter.store.endpoints, revision 0005) -----------------------------------

#: A service's documented endpoints, as the SDK discovered them or an OpenAPI document lists them; joined with the
#: server spans' ``http.route`` to find endpoints no traffic reaches and traffic no inventory lists.
endpoints = Table(
    "endpoints", metadata,
    Column("service", String(200), primary_key=True),
    Column("method", String(16), primary_key=True),
    Column("path", String(500), primary_key=True),
    Column("view", String(300), nullable=True),
    #: requires auth, as the SDK's heuristic or the document's ``security`` says; NULL: not known
    Column("auth", Boolean, nullable=True),
    Column("source", String(16), nullable=False),
    Column("registered_at_ns", BigInteger, nullable=False),
)


# -- alerts (backend.store) --------------------------------------------------------------------------

alerts = Table(
    "alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(64), nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("alertname", String(200), nullable=False),
    Column("severity", String(50), nullable=True),
    Column("workflow", String(200), nullable=True),
    Column("layer", String(50), nullable=True),
    Column("labels", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("generator_url", Text, nullable=True),
    Column("receiver", String(200), nullable=True),
    Column("first_received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("fingerprint", "starts_at", name="uq_alert_identity"),
)

alert_events = Table(
    "alert_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", Integer, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

# -- regression findings (backend.regression.service) ---------------------------------------------------

regressions = Table(
    "regressions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("series", String(500), nullable=False),
    Column("labels", Text, nullable=False),
    Column("change_time", String(40), nullable=False),
    Column("detector", String(40), nullable=False),
    Column("direction", String(20), nullable=False),
    Column("before", Float, nullable=False),
    Column("after", Float, nullable=False),
    Column("relative_change", Float, nullable=False),
    Column("p_value", Float, nullable=False),
    Column("p_adjusted", Float, nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("kind", String(10)),  # step | drift; revision 0002, nullable for the rows before it (NULL: step)
    Column("rate_per_s", Float),  # a drift's new rate
    UniqueConstraint("series", "change_time", "detector", name="uq_regression"),
)
