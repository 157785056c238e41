"""SQLAlchemy instrumentation on a real SQLite database: steps, normalised statements, slow queries, N+1."""

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

from backend.app import create_app
from exporter import conventions as c
from exporter.config import load_config
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from exporter.sdk.sqlalchemy import instrument_engine, normalize, operation_of
from tests.fake_loki import FakeLoki


@pytest.mark.parametrize("sql, shape", [
    ("SELECT * FROM users WHERE name = 'o''brien' AND age > 42", "SELECT * FROM users WHERE name = ? AND age > ?"),
    ("select id from t where id in (1, 2, 3) -- hot\n", "select id from t where id in (?)"),
    ("SELECT * FROM t WHERE a = :a AND b IN (:b_1, :b_2)", "SELECT * FROM t WHERE a = ? AND b IN (?)"),
    ("UPDATE orders /* batch */ SET total = %(total)s WHERE id = %s", "UPDATE orders SET total = ? WHERE id = ?"),
    ("INSERT INTO events (v) VALUES ($1)", "INSERT INTO events (v) VALUES (?)"),
    ("SELECT col2 FROM tab3 WHERE x = 1.5e3", "SELECT col2 FROM tab3 WHERE x = ?"),
])
def test_statements_are_normalised_without_literals(sql, shape):
    assert normalize(sql) == shape


def test_operation_label_is_the_verb_and_first_table():
    assert operation_of("SELECT * FROM orders o JOIN items i ON i.order_id = o.id") == "SELECT orders"
    assert operation_of('INSERT INTO "events" (v) VALUES (?)') == "INSERT events"
    assert operation_of("BEGIN") == "BEGIN"


def test_the_default_slow_query_threshold_is_the_alert_specs_database_warning():
    """"Slow" means the same in the SDK as in the alerts: the setting's default is the shipped spec's database
    response-time warning (the SDK no longer reads the spec, so this test keeps the two equal)."""
    from backend.rules.spec import load_spec

    spec = load_spec(str(Path(__file__).resolve().parent.parent / "alert_rules/spec/flowscope.yaml"))
    (db,) = [t for t in spec.thresholds if t.layer == "database" and t.metric.name == "response_time"]
    assert load_config(environ={}).slow_query_ms == db.warning * 1000 == 100.0


class StatementClock:
    """The instrumentation's clock: 1 us a reading, so a statement takes 1 us however busy the machine is,
    except inside ``SELECT stall(ms)``, a SQLite function that moves the clock on by ``ms``."""

    def __init__(self):
        self.now = time.time_ns()

    def __call__(self) -> int:
        self.now += 1_000
        return self.now

    def stall(self, ms: int) -> int:
        self.now += ms * 1_000_000
        return ms


def test_queries_become_steps_and_slow_and_n_plus_one_are_flagged(make_exporter, tmp_path):
    loki = FakeLoki()
    try:
        ex = make_exporter(loki_url=loki.url, loki_batch_wait_s=0.05)
        web = create_app(ex).test_client()
        t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
        engine = create_engine(f"sqlite:///{tmp_path}/app.db")
        clock = StatementClock()
        event.listen(engine, "connect", lambda dbapi_conn, _: dbapi_conn.create_function("stall", 1, clock.stall))
        # slow: 100 ms (the spec's database warning); every statement takes 1 us but the stalled one, 250 ms
        instrument_engine(engine, tracer=t, slow_ms=100, n_plus_one=10, clock=clock)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"))
            conn.execute(text("INSERT INTO items (id, name) VALUES (1, 'a'), (2, 'b')"))
        with t.workflow("checkout") as run, engine.connect() as conn:
            for i in range(12):  # one query per item: the N+1 shape
                conn.execute(text(f"SELECT name FROM items WHERE id = {i}")).all()
            conn.execute(text("SELECT stall(250) FROM items WHERE name = 'a'")).all()
            with pytest.raises(OperationalError, match="no such table"):
                conn.execute(text("SELECT nope FROM missing_table"))
        assert ex.pipeline.recorder.flush()
        spans = [s for s in ex.runs.get_run(run.correlation_id).spans if s.layer == "database"]
        assert len(spans) == 14
        selects = [s for s in spans if s.attributes[c.ATTR_DB_STATEMENT] == "SELECT name FROM items WHERE id = ?"]
        assert len(selects) == 12 and {s.operation for s in selects} == {"SELECT items"}
        assert {s.component for s in spans} == {"sqlite"}
        flagged = {s.attributes.get(c.ATTR_DB_PATTERN) for s in spans} - {None}
        assert flagged == {c.QUERY_N_PLUS_ONE, c.QUERY_SLOW}
        assert [s.attributes["flowscope.db.repeat_count"] for s in selects
                if s.attributes.get(c.ATTR_DB_PATTERN) == c.QUERY_N_PLUS_ONE] == [10]   # flagged once
        failed = [s for s in spans if s.status == "error"]
        assert len(failed) == 1 and failed[0].error_type == "OperationalError"
        for kind in (c.QUERY_N_PLUS_ONE, c.QUERY_SLOW):
            assert ex.store.value(c.QUERY_PATTERNS_TOTAL, {"workflow": "checkout", "kind": kind}) == 1
        lines = [a for a in loki.wait_accepted(16) if '"db_pattern"' in a["line"]]
        assert len(lines) == 2 and all(a["labels"]["level"] == "warn" for a in lines)
        assert all(" ?" in a["line"] and "'a'" not in a["line"] for a in lines)  # statements without literals
        page = web.get(f"/runs/{run.correlation_id}").get_data(as_text=True)
        assert "Database findings (2)" in page and "n_plus_one" in page and "slow_query" in page
    finally:
        loki.stop()
