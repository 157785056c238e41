"""The store's schema under migrations: a database the previous release made is upgraded with its rows, an empty
one is created at head, ``flowscope db upgrade`` twice changes nothing, and replicas upgrading together take
turns (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from backend.app import create_app
from exporter import conventions as c
from exporter.db import make_engine
from exporter.decode import native
from exporter.errors import ConfigError
from exporter.store import RunStore, migrate
from exporter.store.rows import DETAIL_COLUMNS, LINK_COLUMNS, SPAN_COLUMNS, DetailRow, LinkRow, SpanRow
from exporter.store.schema import include_name, metadata
from flowscope.cli import main

#: The schema as the previous release's ``create_all`` calls made it (exporter/runstore.py, backend/store.py,
#: backend/regression/service.py at the commit before migrations), written out: {serial} and {ts} are the two
#: types SQLAlchemy spelled differently on SQLite and PostgreSQL.
PREVIOUS_RELEASE = """
CREATE TABLE runs (correlation_id VARCHAR(128) NOT NULL, workflow VARCHAR(200) NOT NULL, status VARCHAR(16) NOT NULL,
    start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, duration_ms FLOAT NOT NULL, trace_id VARCHAR(32) NOT NULL,
    service VARCHAR(200) NOT NULL, user_hash VARCHAR(64), error_type VARCHAR(200), error_message TEXT,
    PRIMARY KEY (correlation_id));
CREATE INDEX ix_runs_start ON runs (start_ns);
CREATE INDEX ix_runs_trace ON runs (trace_id);
CREATE INDEX ix_runs_workflow_start ON runs (workflow, start_ns);
CREATE TABLE spans (correlation_id VARCHAR(128) NOT NULL, span_id VARCHAR(16) NOT NULL, trace_id VARCHAR(32) NOT NULL,
    parent_span_id VARCHAR(16), workflow VARCHAR(200) NOT NULL, service VARCHAR(200) NOT NULL,
    layer VARCHAR(16) NOT NULL, component VARCHAR(200) NOT NULL, operation VARCHAR(500) NOT NULL,
    start_ns BIGINT NOT NULL, end_ns BIGINT NOT NULL, status VARCHAR(16) NOT NULL, error_type VARCHAR(200),
    error_message TEXT, stack_trace TEXT, attributes TEXT, state TEXT, is_step BOOLEAN NOT NULL,
    PRIMARY KEY (correlation_id, span_id));
CREATE INDEX ix_spans_end ON spans (end_ns);
CREATE TABLE span_details (correlation_id VARCHAR(128) NOT NULL, span_id VARCHAR(16) NOT NULL, end_ns BIGINT NOT NULL,
    kind VARCHAR(16), resource TEXT, events TEXT, links TEXT, PRIMARY KEY (correlation_id, span_id));
CREATE INDEX ix_span_details_end ON span_details (end_ns);
CREATE TABLE span_links (correlation_id VARCHAR(128) NOT NULL, span_id VARCHAR(16) NOT NULL,
    link_trace_id VARCHAR(32) NOT NULL, link_span_id VARCHAR(16) NOT NULL, end_ns BIGINT NOT NULL,
    PRIMARY KEY (correlation_id, span_id, link_trace_id, link_span_id));
CREATE INDEX ix_span_links_end ON span_links (end_ns);
CREATE INDEX ix_span_links_trace ON span_links (link_trace_id);
CREATE TABLE errors (id {serial} NOT NULL, fingerprint VARCHAR(16) NOT NULL, correlation_id VARCHAR(128),
    span_id VARCHAR(16), workflow VARCHAR(200) NOT NULL, service VARCHAR(200) NOT NULL, layer VARCHAR(16) NOT NULL,
    component VARCHAR(200) NOT NULL, error_type VARCHAR(200) NOT NULL, message TEXT, stack_trace TEXT,
    time_ns BIGINT NOT NULL, cause_fingerprint VARCHAR(16), PRIMARY KEY (id));
CREATE INDEX ix_errors_cause ON errors (cause_fingerprint);
CREATE INDEX ix_errors_cid ON errors (correlation_id);
CREATE INDEX ix_errors_fp_time ON errors (fingerprint, time_ns);
CREATE INDEX ix_errors_time ON errors (time_ns);
CREATE TABLE error_groups (fingerprint VARCHAR(16) NOT NULL, error_type VARCHAR(200) NOT NULL, template TEXT NOT NULL,
    category VARCHAR(32) NOT NULL, first_seen_ns BIGINT NOT NULL, last_seen_ns BIGINT NOT NULL, count BIGINT NOT NULL,
    resolved_at_ns BIGINT, regressed_at_ns BIGINT, PRIMARY KEY (fingerprint));
CREATE TABLE error_resolutions (id {serial} NOT NULL, fingerprint VARCHAR(16) NOT NULL, note TEXT NOT NULL,
    resolved_by VARCHAR(200), resolved_at_ns BIGINT NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_error_resolutions_fingerprint ON error_resolutions (fingerprint);
CREATE TABLE error_group_aliases (fingerprint VARCHAR(16) NOT NULL, group_fingerprint VARCHAR(16) NOT NULL,
    PRIMARY KEY (fingerprint));
CREATE TABLE profiles (id {serial} NOT NULL, workflow VARCHAR(200) NOT NULL, correlation_id VARCHAR(128),
    time_ns BIGINT NOT NULL, format VARCHAR(16) NOT NULL, sample_rate_hz FLOAT, stacks TEXT NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_profiles_correlation_id ON profiles (correlation_id);
CREATE INDEX ix_profiles_wf_time ON profiles (workflow, time_ns);
CREATE TABLE alerts (id {serial} NOT NULL, fingerprint VARCHAR(64) NOT NULL, starts_at {ts} NOT NULL, ends_at {ts},
    status VARCHAR(16) NOT NULL, alertname VARCHAR(200) NOT NULL, severity VARCHAR(50), workflow VARCHAR(200),
    layer VARCHAR(50), labels TEXT NOT NULL, annotations TEXT NOT NULL, generator_url TEXT, receiver VARCHAR(200),
    first_received_at {ts} NOT NULL, updated_at {ts} NOT NULL, PRIMARY KEY (id),
    CONSTRAINT uq_alert_identity UNIQUE (fingerprint, starts_at));
CREATE TABLE alert_events (id {serial} NOT NULL, alert_id INTEGER NOT NULL, status VARCHAR(16) NOT NULL,
    at {ts} NOT NULL, PRIMARY KEY (id), FOREIGN KEY(alert_id) REFERENCES alerts (id) ON DELETE CASCADE);
CREATE INDEX ix_alert_events_alert_id ON alert_events (alert_id);
CREATE TABLE regressions (id {serial} NOT NULL, series VARCHAR(500) NOT NULL, labels TEXT NOT NULL,
    change_time VARCHAR(40) NOT NULL, detector VARCHAR(40) NOT NULL, direction VARCHAR(20) NOT NULL,
    "before" FLOAT NOT NULL, "after" FLOAT NOT NULL, relative_change FLOAT NOT NULL, p_value FLOAT NOT NULL,
    p_adjusted FLOAT NOT NULL, first_seen {ts} NOT NULL, last_seen {ts} NOT NULL, kind VARCHAR(10), rate_per_s FLOAT,
    PRIMARY KEY (id), CONSTRAINT uq_regression UNIQUE (series, change_time, detector));
"""

#: What the stop-gap ``add_missing_columns`` added on start: a store made before it lacks these until started.
ADDED_ON_START = ("    time_ns BIGINT NOT NULL, cause_fingerprint VARCHAR(16), PRIMARY KEY (id));\n",
                  "CREATE INDEX ix_errors_cause ON errors (cause_fingerprint);\n",
                  ("CREATE TABLE error_group_aliases (fingerprint VARCHAR(16) NOT NULL, group_fingerprint VARCHAR(16) "
                   "NOT NULL,\n    PRIMARY KEY (fingerprint));\n"),
                  " kind VARCHAR(10), rate_per_s FLOAT,\n")
BEFORE_ADDED = (PREVIOUS_RELEASE.replace(ADDED_ON_START[0], "    time_ns BIGINT NOT NULL, PRIMARY KEY (id));\n")
                .replace(ADDED_ON_START[1], "").replace(ADDED_ON_START[2], "").replace(ADDED_ON_START[3], "\n"))

H = 3600 * 10**9
OLD_FP, OLD_CID = "0123456789abcdef", "old-run-1"


def _create(url: str, ddl: str, skip: tuple[str, ...] = ()) -> None:
    """Make the tables of ``ddl`` (less the tables in ``skip``) as that release did."""
    engine = sa.create_engine(url)
    pg = engine.dialect.name == "postgresql"
    ddl = ddl.replace("{serial}", "SERIAL" if pg else "INTEGER").replace("{ts}", "TIMESTAMP WITH TIME ZONE" if pg
                                                                         else "DATETIME")
    with engine.begin() as conn:
        for stmt in filter(None, (s.strip() for s in ddl.split(";"))):
            if not any(f" {t} " in stmt.split("(")[0] + " " for t in skip):
                conn.exec_driver_sql(stmt)
    engine.dispose()


def _engine_and_time(url: str):
    engine = sa.create_engine(url)
    # what SQLAlchemy wrote for an aware datetime: SQLite keeps no offset, PostgreSQL a timestamptz
    return engine, ("{}+00" if engine.dialect.name == "postgresql" else "{}.000000").format


def _run_rows(url: str, now: int) -> None:
    """A failed run with its spans, span details, error, group, resolution note and profile."""
    engine, _ = _engine_and_time(url)
    t0, t1, tid = now - H, now - H + 5 * 10**8, "a" * 32
    with engine.begin() as conn:
        def x(sql: str, **params) -> None:
            conn.execute(sa.text(sql), params)

        x("INSERT INTO runs VALUES ('old-run-1', 'checkout', 'error', :t0, :t1, 500.0, :tid, 'shop', NULL, "
          "'CardDeclined', 'declined')", t0=t0, t1=t1, tid=tid)
        for sid, parent, step in (("1" * 16, None, False), ("2" * 16, "1" * 16, True)):
            x("INSERT INTO spans VALUES ('old-run-1', :sid, :tid, :parent, 'checkout', 'shop', 'external', 'stripe', "
              "'charge', :t0, :t1, 'error', 'CardDeclined', 'declined', NULL, :attrs, NULL, :step)",
              sid=sid, tid=tid, parent=parent, t0=t0, t1=t1, attrs='{"amount":5}', step=step)
        x("INSERT INTO span_details VALUES ('old-run-1', :sid, :t1, 'client', NULL, NULL, NULL)", sid="2" * 16, t1=t1)
        x("INSERT INTO errors (fingerprint, correlation_id, span_id, workflow, service, layer, component, error_type, "
          "message, stack_trace, time_ns) VALUES (:fp, 'old-run-1', :sid, 'checkout', 'shop', 'external', 'stripe', "
          "'CardDeclined', 'declined', NULL, :t1)", fp=OLD_FP, sid="2" * 16, t1=t1)
        x("INSERT INTO error_groups VALUES (:fp, 'CardDeclined', 'declined', 'external', :t1, :t1, 1, :t2, NULL)",
          fp=OLD_FP, t1=t1, t2=t1 + 1)
        x("INSERT INTO error_resolutions (fingerprint, note, resolved_by, resolved_at_ns) VALUES (:fp, "
          "'asked the bank', 'ana', :t2)", fp=OLD_FP, t2=t1 + 1)
        x("INSERT INTO profiles (workflow, correlation_id, time_ns, format, sample_rate_hz, stacks) VALUES "
          "('checkout', 'old-run-1', :t1, 'folded', 100.0, :stacks)", t1=t1, stacks='{"main;charge": 50}')
    engine.dispose()


def _backend_rows(url: str) -> None:
    """An alert with its history and a regression finding, as the backend stored them."""
    engine, ts = _engine_and_time(url)
    with engine.begin() as conn:
        x = conn.exec_driver_sql
        x("INSERT INTO alerts (fingerprint, starts_at, ends_at, status, alertname, severity, workflow, layer, labels, "
          "annotations, generator_url, receiver, first_received_at, updated_at) VALUES ('aa11', "
          f"'{ts('2026-01-02 03:04:05')}', NULL, 'firing', 'WorkflowErrors', 'page', 'checkout', NULL, "
          f"'{{\"alertname\": \"WorkflowErrors\"}}', '{{}}', NULL, 'flowscope', '{ts('2026-01-02 03:04:06')}', "
          f"'{ts('2026-01-02 03:04:06')}')")
        alert_id = x("SELECT id FROM alerts").scalar_one()
        x(f"INSERT INTO alert_events (alert_id, status, at) VALUES ({alert_id}, 'firing', "
          f"'{ts('2026-01-02 03:04:06')}')")
        x("INSERT INTO regressions (series, labels, change_time, detector, direction, \"before\", \"after\", "
          "relative_change, p_value, p_adjusted, first_seen, last_seen) VALUES ('p95', '{}', '2026-01-01T00:00:00Z', "
          f"'change_point', 'regression', 1.0, 1.5, 0.5, 1e-9, 1e-8, '{ts('2026-01-02 00:00:00')}', "
          f"'{ts('2026-01-02 00:00:00')}')")
    engine.dispose()


def _chain(cid: str, now: int) -> list:
    """A new run where a database timeout fails the gateway call above it (a failure chain)."""
    s = now / 1e9
    return native.decode({"steps": [
        {"correlation_id": cid, "workflow_type": "checkout", "layer": "api", "component": "gateway",
         "operation": "pay", "status": "failed", "started_at": s, "duration_ms": 40, "span_id": "3" * 16,
         "error_type": "GatewayError", "error_message": "upstream failed"},
        {"correlation_id": cid, "workflow_type": "checkout", "layer": "database", "component": "pg",
         "operation": "select", "status": "failed", "started_at": s + 0.01, "duration_ms": 20, "span_id": "4" * 16,
         "parent_span_id": "3" * 16, "error_type": "DbTimeout", "error_message": "statement timeout"}],
        "workflows": [{"correlation_id": cid, "workflow_type": "checkout", "status": "failed", "started_at": s,
                       "duration_ms": 50}]}).spans


#: Columns and indexes the revisions after 0002 add, by table (revision 0003: memory profiles; 0004: log lines,
#: less the full-text objects metadata cannot express, which ``schema.include_name`` leaves out; 0005: the endpoint
#: inventory; 0006: span kinds and resources on the spans row, each resource once).
ADDED_SINCE = {"profiles": (["net_bytes", "peak_bytes"], []),
               "spans": (["kind", "resource_id"], []),
               "resources": (["attributes", "id", "last_seen_ns"], ["ix_resources_last_seen"]),
               "logs": (["attributes", "body", "correlation_id", "exception", "id", "level", "logger",
                         "service", "severity_number", "source", "span_id", "time_ns", "trace_id", "workflow"],
                        ["ix_logs_cid", "ix_logs_level", "ix_logs_service", "ix_logs_trace", "ix_logs_workflow"]),
               "log_fields": (["log_id", "name", "number", "value"], ["ix_log_fields_number", "ix_log_fields_value"]),
               "endpoints": (["auth", "method", "path", "registered_at_ns", "service", "source", "view"], [])}


def _schema(url: str) -> dict:
    """Every table's columns and indexes, and the recorded revision."""
    engine = make_engine(url)
    try:
        insp = sa.inspect(engine)
        keep = include_name  # the full-text objects metadata cannot express are left out here too
        out = {t: (sorted(col["name"] for col in insp.get_columns(t) if keep(col["name"], "column", {"table_name": t})),
                   sorted(ix["name"] for ix in insp.get_indexes(t) if keep(ix["name"], "index", {"table_name": t})))
               for t in insp.get_table_names() if keep(t, "table", {})}
        with engine.connect() as conn:
            out["revision"] = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() \
                if "alembic_version" in out else None
        return out
    finally:
        engine.dispose()


def _migrations_match_the_schema(url: str) -> list:
    """What autogenerate would still change: nothing when the migrations build exactly schema.py."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True,
                                                                           "include_name": include_name}), metadata)
    finally:
        engine.dispose()


def _check_product_reads_and_writes(ex, now: int) -> None:
    """The old rows come back through the API, and new rows use what the upgrade added."""
    client = create_app(ex).test_client()
    run = client.get(f"{c.RUNS_PATH}/{OLD_CID}").json
    assert run["run"]["status"] == "error" and run["run"]["error_type"] == "CardDeclined"
    spans, work = [], list(run["tree"])
    while work:  # the span tree, flat
        spans.append(work.pop())
        work.extend(spans[-1]["children"])
    assert sorted((s["span_id"], s["kind"], s["attributes"]) for s in spans) == [
        ("1" * 16, None, {"amount": 5}), ("2" * 16, "client", {"amount": 5})]
    assert [e["fingerprint"] for e in run["errors"]] == [OLD_FP] and run["profiles"] == 1
    group = client.get(f"{c.ERRORS_PATH}/{OLD_FP}").json
    assert [r["note"] for r in group["resolutions"]] == ["asked the bank"]
    (alert,) = client.get(c.ALERTS_PATH).json["alerts"]
    assert (alert["alertname"], [h["status"] for h in alert["history"]]) == ("WorkflowErrors", ["firing"])
    (finding,) = client.get(c.REGRESSIONS_PATH).json["regressions"]
    assert (finding["series"], finding["kind"], finding["rate_per_s"]) == ("p95", "step", 0.0)
    ex.pipeline.ingest(_chain("new-run-1", now), "native")
    assert ex.pipeline.recorder.flush()
    groups = {g["error_type"]: g for g in client.get(c.ERRORS_PATH).json["groups"]}
    assert [p["error_type"] for p in groups["DbTimeout"]["propagated_to"]] == ["GatewayError"]  # cause_fingerprint
    assert "GatewayError" not in groups  # a caller is listed under its origin only


def test_a_store_made_by_the_previous_release_is_upgraded_and_keeps_its_rows(make_exporter, database_url):
    now = time.time_ns()
    _create(database_url, PREVIOUS_RELEASE)
    _run_rows(database_url, now)
    _backend_rows(database_url)
    before = _schema(database_url)
    assert before["revision"] is None
    ex = make_exporter(database_url=database_url)  # serve's start: the store upgrades itself
    after = _schema(database_url)
    assert after.pop("revision") == [migrate.head()]
    del after["alembic_version"], before["revision"]
    for table, (cols, indexes) in ADDED_SINCE.items():  # what the revisions after that release add, and only that
        had_cols, had_indexes = before.get(table, ([], []))
        before[table] = (sorted(had_cols + cols), sorted(had_indexes + indexes))
    assert after == before  # this release's schema is the previous release's plus the additions: nothing else
    _check_product_reads_and_writes(ex, now)
    assert _migrations_match_the_schema(database_url) == []


def test_a_store_from_before_the_columns_added_on_start_gets_them(make_exporter, database_url):
    """Older still, and partial: the exporter's tables only (the backend never ran on it), without
    errors.cause_fingerprint and error_group_aliases; the backend's tables come at the baseline."""
    now = time.time_ns()
    _create(database_url, BEFORE_ADDED, skip=("alerts", "alert_events", "regressions"))
    _run_rows(database_url, now)
    old = _schema(database_url)
    assert "cause_fingerprint" not in old["errors"][0] and "error_group_aliases" not in old
    engine = make_engine(database_url)
    assert migrate.status(engine).legacy
    engine.dispose()
    ex = make_exporter(database_url=database_url)  # serve's start
    new = _schema(database_url)
    assert new["revision"] == [migrate.head()]
    assert "cause_fingerprint" in new["errors"][0] and "ix_errors_cause" in new["errors"][1]
    assert {"kind", "rate_per_s"} <= set(new["regressions"][0]) and "error_group_aliases" in new
    assert _migrations_match_the_schema(database_url) == []
    _backend_rows(database_url)
    _check_product_reads_and_writes(ex, now)


def test_a_regressions_table_from_before_drifts_gets_kind_and_rate(database_url):
    _create(database_url, BEFORE_ADDED)
    _backend_rows(database_url)
    migrate.upgrade(make_engine(database_url))
    engine = make_engine(database_url)
    with engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT series, kind, rate_per_s FROM regressions").one()
    engine.dispose()
    assert tuple(row) == ("p95", None, None)  # NULL: a step, as the API shows it


def test_an_empty_database_is_created_at_head_and_db_upgrade_twice_is_a_no_op(database_url, capsys):
    assert main(["db", "upgrade", "--database-url", database_url]) == 0
    assert f"upgraded from empty to {migrate.head()} (head)" in capsys.readouterr().out
    first = _schema(database_url)
    assert first["revision"] == [migrate.head()] and set(metadata.tables) < set(first)
    assert _migrations_match_the_schema(database_url) == []
    assert main(["db", "upgrade", "--database-url", database_url]) == 0
    assert f"at {migrate.head()} (head)" in capsys.readouterr().out
    assert _schema(database_url) == first
    assert main(["db", "current", "--check", "--database-url", database_url]) == 0
    assert capsys.readouterr().out == f"{migrate.head()} (head)\n"


def test_db_current_reports_a_store_to_upgrade_and_makes_no_file(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/none.db"
    assert main(["db", "current", "--database-url", url]) == 1
    assert "no database at" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    _create(url, PREVIOUS_RELEASE)
    assert main(["db", "current", "--check", "--database-url", url]) == 1
    assert capsys.readouterr().out == "none (a store from before migrations)\n"
    assert main(["db", "current", "--database-url", url]) == 0


def test_a_database_a_newer_release_upgraded_is_refused_not_touched(database_url, capsys):
    migrate.upgrade(make_engine(database_url))
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(ConfigError, match=r"'9999'.*newer release"):
        RunStore(engine)
    assert main(["db", "upgrade", "--database-url", database_url]) == 2
    assert "revision '9999'" in capsys.readouterr().err
    assert main(["db", "current", "--database-url", database_url]) == 0
    assert capsys.readouterr().out == f"9999 (unknown to this release (head {migrate.head()}))\n"
    engine.dispose()


def test_replicas_upgrading_one_postgresql_together_take_turns(postgres):
    """Three processes (as three replicas would) run ``flowscope db upgrade`` on one empty database while the
    test holds the advisory lock: all three wait on it, then go one at a time; one creates the schema, the
    others find it at head. Without the lock they would create the same tables at once, and fail."""
    url = postgres.fresh_database()
    holder = make_engine(url)
    waiting = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = "
               f"{migrate.LOCK_KEY}")
    with holder.connect() as conn:
        tx = conn.begin()
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({migrate.LOCK_KEY})")
        replicas = [subprocess.Popen([sys.executable, "-m", "flowscope.cli", "db", "upgrade", "--database-url", url],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        try:
            with holder.connect() as watch:
                deadline = time.monotonic() + 60  # a bound for a broken run: three interpreters start in ~1 s
                while time.monotonic() < deadline:  # until all three wait on the lock (or one ended without waiting)
                    if watch.exec_driver_sql(waiting).scalar_one() == 3 or any(r.poll() is not None for r in replicas):
                        break
                    time.sleep(0.01)
                assert watch.exec_driver_sql(waiting).scalar_one() == 3, [r.communicate() for r in replicas]
        finally:
            tx.rollback()  # lets them go
        outputs = [r.communicate(timeout=120) for r in replicas]
    holder.dispose()
    assert [r.returncode for r in replicas] == [0, 0, 0], outputs
    said = sorted(out.split(": ", 1)[1].strip() for out, _ in outputs)
    assert said == [f"at {migrate.head()} (head)"] * 2 + [f"upgraded from empty to {migrate.head()} (head)"]
    assert _schema(url)["revision"] == [migrate.head()]


def test_the_head_the_store_checks_without_alembic_is_the_scripts_head():
    assert migrate._script().get_current_head() == migrate.HEAD
    revisions = [r.revision for r in migrate._script().walk_revisions()]
    assert revisions[0] == migrate.HEAD and revisions[-1] == migrate.BASELINE


def test_rows_bound_for_the_driver_follow_their_tables_column_order():
    assert SpanRow._fields == SPAN_COLUMNS
    assert DetailRow._fields == DETAIL_COLUMNS
    assert LinkRow._fields == LINK_COLUMNS
