"""The run store, against SQLite and a real PostgreSQL (``database_url`` is parametrised in conftest)."""

import time

import orjson
import pytest
from sqlalchemy import text

from exporter import conventions as c
from exporter.model import Span, hash_user
from exporter.sdk import ErrorLogger, WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from tests.fake_loki import FakeLoki


@pytest.fixture
def stored(make_exporter, database_url):
    return make_exporter(database_url=database_url)


def _tracer(ex):
    return WorkflowTracer(InProcessSink(ex.pipeline), service="shop")


def _all_text(ex) -> str:
    """Every stored row of every table, as one string: what a database reader could see."""
    out = []
    with ex.db.connect() as conn:
        for table in ("runs", "spans", "span_details", "resources", "errors", "error_groups"):
            out.extend(str(tuple(r)) for r in conn.execute(text(f"SELECT * FROM {table}")))
    return "\n".join(out)


def test_a_traced_run_is_stored_whole(stored):
    t = _tracer(stored)
    with t.workflow("checkout", user="ana@example.com") as run:
        with (t.step("api", "orders", "create_order"),          # fast path: no Span object built
              t.step("database", "postgres", "insert_order", state={"order_id": 7})):
            pass
        with pytest.raises(TimeoutError), t.step("external", "stripe", "charge"):
            raise TimeoutError("timeout after 5012 ms on 10.0.0.7")
    assert stored.pipeline.recorder.flush()
    got = stored.runs.get_run(run.correlation_id)
    r = got.run
    assert (r.workflow, r.status, r.service) == ("checkout", "ok", "shop")
    assert r.user_hash == hash_user("ana@example.com") and "ana@example.com" not in _all_text(stored)
    ops = [s.operation for s in got.spans]
    assert ops == ["checkout", "create_order", "insert_order", "charge"]
    by_op = {s.operation: s for s in got.spans}
    assert by_op["insert_order"].parent_span_id == by_op["create_order"].span_id
    assert by_op["create_order"].parent_span_id == by_op["checkout"].span_id
    assert by_op["insert_order"].state == {"order_id": 7}
    assert by_op["charge"].status == "timeout" and "TimeoutError" in by_op["charge"].stack_trace
    [err] = got.errors
    assert (err.error_type, err.layer, err.span_id) == ("TimeoutError", "external", by_op["charge"].span_id)
    assert stored.store.value(c.RUNS_STORED_TOTAL) == 1


def test_runs_are_listed_with_filters(stored):
    t = _tracer(stored)
    ids = {}
    for wf, sleep in (("login", 0), ("checkout", 0.03), ("checkout", 0)):
        with t.workflow(wf) as run:
            time.sleep(sleep)
        ids[(wf, sleep)] = run.correlation_id
    t.complete_workflow(t.start_workflow("checkout"), status="failed", error_type="PaymentDeclined")
    assert stored.pipeline.recorder.flush()
    runs = stored.runs
    assert {r.workflow for r in runs.list_runs()} == {"login", "checkout"}
    assert len(runs.list_runs(workflow="checkout")) == 3
    [failed] = runs.list_runs(status="error")
    assert failed.error_type == "PaymentDeclined"
    slow = runs.list_runs(min_duration_ms=25)
    assert [r.correlation_id for r in slow] == [ids[("checkout", 0.03)]]
    newest = runs.list_runs(limit=1)[0]
    assert runs.list_runs(since_ns=newest.start_ns)[0].correlation_id == newest.correlation_id
    assert runs.list_runs(until_ns=0) == []


def test_secrets_are_redacted_before_the_store_and_loki(make_exporter, database_url):
    loki = FakeLoki()
    try:
        ex = make_exporter(database_url=database_url, loki_url=loki.url, loki_batch_wait_s=0.05)
        t = _tracer(ex)
        with (t.workflow("login") as run, pytest.raises(PermissionError),
              t.step("api", "auth", "login", metadata={"api_key": "AK-123456", "user.email": "bo@x.io"},
                     state={"form": {"user": "bo", "password": "hunter2"}, "session_token": "tok-999"})):
            raise PermissionError("login failed: password=hunter2 Authorization: Bearer sekrit-abcdef")
        ErrorLogger(InProcessSink(ex.pipeline)).log_error("AuthError", "bad token=tok-999 for bo", "api", "auth",
                                                          correlation_id=run.correlation_id)
        assert ex.pipeline.recorder.flush()
        stored = _all_text(ex)
        lines = [a["line"] for a in loki.wait_accepted(3)]
        assert len(lines) >= 3
        for secret in ("hunter2", "tok-999", "AK-123456", "sekrit-abcdef", "bo@x.io"):
            assert secret not in stored, secret
            assert not any(secret in line for line in lines), secret
        step = next(s for s in ex.runs.get_run(run.correlation_id).spans
                    if s.operation == "login" and s.is_step)
        assert step.state == {"form": {"user": "bo", "password": c.REDACTED}, "session_token": c.REDACTED}
        assert step.attributes["api_key"] == c.REDACTED
        assert step.attributes["user.email"] == hash_user("bo@x.io")
        assert "password=[REDACTED]" in step.error_message
    finally:
        loki.stop()


def test_oversized_state_is_truncated_with_a_marker(make_exporter, database_url):
    ex = make_exporter(database_url=database_url, state_max_bytes=1000)
    t = _tracer(ex)
    state = {"cart_id": 42, "items": ["x" * 50] * 40, "note": "small"}
    with t.workflow("checkout") as run, t.step("api", "cart", "load", state=state):
        pass
    assert ex.pipeline.recorder.flush()
    [_, step] = ex.runs.get_run(run.correlation_id).spans
    kept = step.state
    assert kept["cart_id"] == 42 and kept["note"] == "small" and "items" not in kept
    marker = kept[c.TRUNCATED_KEY]
    assert marker["dropped_keys"] == ["items"] and marker["original_bytes"] > 1000
    assert len(orjson.dumps(kept)) <= 1000
    assert ex.store.value(c.STATE_TRUNCATED_TOTAL) == 1


def _span(cid, sid, parent, end_ns, workflow="checkout", **kw):
    return Span(trace_id="a" * 32, span_id=sid, workflow=workflow, layer="api", component="svc", operation="op",
                start_ns=end_ns - 1_000_000, end_ns=end_ns, parent_span_id=parent, correlation_id=cid, **kw)


def test_retention_sweep_deletes_old_runs_only(make_exporter, database_url):
    ex = make_exporter(database_url=database_url, run_retention_s=86400)
    now_ns = time.time_ns()
    old, new = now_ns - 2 * 86400 * 10**9, now_ns - 3600 * 10**9
    ex.pipeline.ingest([_span("old", "1" * 16, None, old, resource={"service.name": "old-shop"}),
                        _span("old", "2" * 16, "1" * 16, old),
                        _span("new", "3" * 16, None, new, resource={"service.name": "new-shop"}),
                        _span("old", "4" * 16, "1" * 16, old, status="error", error_type="Boom",
                              error_message="boom")], "native")
    rec = ex.pipeline.recorder
    assert rec.flush()
    # the exporter's tick sweeps once a second when a sweep is due (the first tick, then every sweep_interval_s);
    # it may have run before the rows were written, or after: between them, the old run is swept exactly once
    ex.tick()
    rec.sweep()
    assert [r.correlation_id for r in ex.runs.list_runs()] == ["new"]
    assert ex.runs.get_run("old") is None
    assert "Boom" not in _all_text(ex)  # its error and its (unresolved) group went with it
    assert "old-shop" not in _all_text(ex)  # and the resource no kept span names
    assert ex.runs.get_run("new").spans[0].resource == {"service.name": "new-shop"}
    assert ex.store.value(c.RUN_STORE_SWEPT_TOTAL) == 1


def test_a_resource_is_stored_once_redacted_and_read_back_with_each_span(stored):
    """Every span of a process carries the same resource: it is one ``resources`` row (redacted like attributes),
    and each span of a run reads it back whole, with its kind."""
    now = time.time_ns()
    for cid in ("res-a", "res-b"):  # two batches, each with its own (equal) resource dict
        resource = {"service.name": "shop", "host.name": "node-3", "api_key": "sk-live-123"}
        stored.pipeline.ingest([_span(cid, "1" * 16, None, now, kind="server", resource=resource),
                                _span(cid, "2" * 16, "1" * 16, now, kind="client", resource=resource)], "native")
    assert stored.pipeline.recorder.flush()
    with stored.db.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM resources")).scalar_one() == 1
    assert "sk-live-123" not in _all_text(stored)
    spans = stored.runs.get_run("res-b").spans
    assert [(s.kind, s.resource) for s in spans] == \
        [(k, {"service.name": "shop", "host.name": "node-3", "api_key": c.REDACTED}) for k in ("server", "client")]


def test_a_span_stored_before_revision_0006_keeps_its_kind_and_resource(stored):
    """Before revision 0006 a span's kind and resource were in its ``span_details`` row: they still read back."""
    now = time.time_ns()
    stored.pipeline.ingest([_span("legacy", "1" * 16, None, now)], "native")
    assert stored.pipeline.recorder.flush()
    with stored.db.begin() as conn:
        conn.execute(text("INSERT INTO span_details (correlation_id, span_id, end_ns, kind, resource) "
                          "VALUES ('legacy', :sid, :end, 'server', :res)"),
                     {"sid": "1" * 16, "end": now, "res": '{"service.name":"old"}'})
    (span,) = stored.runs.get_run("legacy").spans
    assert (span.kind, span.resource) == ("server", {"service.name": "old"})


def test_the_same_span_twice_is_stored_once(stored):
    batch = [_span("dup", "1" * 16, None, time.time_ns())]
    stored.pipeline.ingest(batch, "native")
    stored.pipeline.ingest(batch, "native")
    assert stored.pipeline.recorder.flush()
    assert len(stored.runs.get_run("dup").spans) == 1
    assert len(stored.runs.list_runs()) == 1


def test_a_run_without_its_root_is_shown_in_progress(stored):
    stored.pipeline.ingest([_span("open", "2" * 16, "1" * 16, time.time_ns())], "native")
    assert stored.pipeline.recorder.flush()
    got = stored.runs.get_run("open")
    assert got.run.status == "in_progress" and len(got.spans) == 1
    assert stored.runs.get_run("nope") is None


def test_a_database_outage_is_retried_counted_and_loses_nothing(make_exporter, postgres):
    """PostgreSQL refuses connections for a while: the writer keeps its batch, retries, and catches up."""
    import psycopg

    url = postgres.fresh_database()
    db = url.rsplit("/", 1)[1]
    admin = postgres.admin_dsn
    ex = make_exporter(database_url=url)
    t = _tracer(ex)
    with t.workflow("checkout"):
        pass
    assert ex.pipeline.recorder.flush()
    with psycopg.connect(admin, autocommit=True) as conn:   # the outage: no new connections, old ones cut
        conn.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
    ids = []
    for _ in range(3):
        with t.workflow("checkout") as run, t.step("api", "orders", "create", state={"n": 1}):
            pass
        ids.append(run.correlation_id)
    deadline = time.monotonic() + 20
    while not ex.store.value(c.RUN_STORE_WRITE_FAILURES_TOTAL) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ex.store.value(c.RUN_STORE_WRITE_FAILURES_TOTAL) >= 1
    with psycopg.connect(admin, autocommit=True) as conn:   # back up
        conn.execute(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
    assert ex.pipeline.recorder.flush(60)
    assert all(ex.runs.get_run(cid).run.status == "ok" for cid in ids)
    assert ex.store.value(c.RUNS_STORED_TOTAL) == 4
    assert not ex.store.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "write_failed"})


def test_a_full_queue_drops_and_counts_and_keeps_what_it_accepted(tmp_path):
    from exporter.db import make_engine
    from exporter.metrics import MetricStore
    from exporter.runstore import RunRecorder, RunStore

    metrics = MetricStore()
    store = RunStore(make_engine(f"sqlite:///{tmp_path}/q.db"))
    # the writer waits for a full batch (20,000 items) or an hour: nothing drains until close
    rec = RunRecorder(store, metrics, queue_max=10, flush_interval_s=3600).start()
    now = time.time_ns()
    rec.spans([_span(f"r{i}", f"{i:016x}", None, now) for i in range(25)])
    assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "queue_full"}) == 15
    assert metrics.value(c.RUN_STORE_QUEUE_SPANS) == 10
    rec.close()  # closing writes what was accepted
    assert len(store.list_runs(limit=100)) == 10
    assert metrics.value(c.RUNS_STORED_TOTAL) == 10


def test_under_load_the_store_sheds_whole_runs_not_random_spans(tmp_path):
    from exporter.db import make_engine
    from exporter.metrics import MetricStore
    from exporter.runstore import RunRecorder, RunStore

    metrics = MetricStore()
    store = RunStore(make_engine(f"sqlite:///{tmp_path}/shed.db"))
    rec = RunRecorder(store, metrics, queue_max=100, flush_interval_s=3600, shed_interval_s=0).start()
    now = time.time_ns()

    def run(i):  # a root and one child, arriving together
        return [_span(f"run-{i}", f"{i:015x}0", None, now), _span(f"run-{i}", f"{i:015x}1", f"{i:015x}0", now)]

    for i in range(125):  # the writer sleeps, so the queue fills: past 50 items runs start being shed
        rec.spans(run(i))
    shed = metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "shed_runs"})
    assert shed and not metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "queue_full"})
    rec.close()
    kept = store.list_runs(limit=1000)
    assert 25 <= len(kept) < 125 and len(kept) * 2 + shed == 250
    assert all(len(store.get_run(r.correlation_id).spans) == 2 for r in kept)  # every kept run is whole


# -- poison: one item the database refuses must not stop the store ----------------------------------------------

def _nested(depth: int) -> dict:
    out = cur = {}
    for _ in range(depth):
        cur["a"] = {}
        cur = cur["a"]
    return out


#: One span each store refuses (or cannot even serialise), by name; the decode-time validator refuses most of
#: these at the door, and these tests hand them past it, straight to the sink, which must hold on its own.
POISON = {
    "start_ns_over_2_63": lambda s: setattr(s, "start_ns", 2**70),
    "int_attribute_over_64_bits": lambda s: setattr(s, "attributes", {"retries": 2**65}),
    "state_nested_300_deep": lambda s: setattr(s, "state", _nested(300)),
    "error_message_not_a_string": lambda s: (setattr(s, "status", "error"), setattr(s, "error_type", "Boom"),
                                             setattr(s, "error_message", {"not": "text"})),
    "events_not_a_list": lambda s: setattr(s, "events", 5),  # its span_details row cannot be built
    "kind_nul_and_too_long": lambda s: setattr(s, "kind", "\x00" * 40),  # PostgreSQL text holds no NUL
    "nul_byte_in_operation": lambda s: setattr(s, "operation", "SELECT\x00 1"),  # PostgreSQL text holds no NUL
    "workflow_of_300_chars": lambda s: setattr(s, "workflow", "w" * 300),        # PostgreSQL enforces String(200)
}
#: SQLite stores these as they are
POSTGRES_ONLY = {"nul_byte_in_operation", "workflow_of_300_chars", "kind_nul_and_too_long"}


def _recorder(request, tmp_path, backend, **kw):
    from exporter.db import make_engine
    from exporter.metrics import MetricStore
    from exporter.runstore import RunRecorder, RunStore

    url = (f"sqlite:///{tmp_path}/poison.db" if backend == "sqlite"
           else request.getfixturevalue("postgres").fresh_database())
    metrics = MetricStore()
    store = RunStore(make_engine(url))
    kw.setdefault("flush_interval_s", 3600)  # the writer waits for flush(): every item lands in one batch
    rec = RunRecorder(store, metrics, **kw).start()
    request.addfinalizer(lambda: (rec.close(), store.close()))
    return rec, store, metrics


def _count(store, table: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


@pytest.mark.parametrize("trigger,backend", [(t, b) for t in POISON for b in ("sqlite", "postgresql")
                                             if b == "postgresql" or t not in POSTGRES_ONLY])
def test_one_poisoned_span_is_dropped_and_counted_and_the_next_10000_are_stored(request, tmp_path, trigger, backend):
    rec, store, metrics = _recorder(request, tmp_path, backend)
    now = time.time_ns()
    poison = _span("poison", "f" * 16, None, now)
    POISON[trigger](poison)
    rec.spans([poison])
    rec.spans([_span(f"good-{i}", f"{i:016x}", None, now) for i in range(10_000)])
    assert rec.flush(60)
    assert _count(store, "spans") == 10_000 and _count(store, "runs") == 10_000
    assert store.get_run("poison") is None and store.get_run("good-9999").run.status == "ok"
    assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"}) == 1
    assert metrics.value(c.RUNS_STORED_TOTAL) == 10_000
    assert not metrics.value(c.RUN_STORE_WRITE_FAILURES_TOTAL)  # not taken for an outage: nothing retried
    rec.spans([_span("later", "e" * 16, None, now)])                # and the writer is still writing
    assert rec.flush(10) and store.get_run("later") is not None


def test_poison_scattered_through_a_batch_of_every_kind_costs_only_itself(request, tmp_path, caplog):
    """Spans, SDK fast-path steps, logged errors and profiles in one batch, with poisoned items among them."""
    from types import SimpleNamespace

    from exporter.model import ErrorRecord
    from exporter.profiles import Profile

    rec, store, metrics = _recorder(request, tmp_path, "sqlite")
    now = time.time_ns()
    items: list = []
    for i in range(2_000):
        root = _span(f"run-{i}", f"{i:016x}", None, now)
        run = SimpleNamespace(correlation_id=root.correlation_id, trace_id=root.trace_id, workflow="checkout",
                              service="svc")
        step_start = 2**70 if i % 400 == 199 else now - 1000  # every 400th run has one poisoned step
        items += [root, (run, "api", "orders", "create", step_start, now, f"{i:015x}a", root.span_id)]
        if i % 100 == 0:
            items.append(ErrorRecord("KeyError", f"user {i} not found", "api", "users", "checkout",
                                     correlation_id=root.correlation_id, time_ns=now))
            items.append(Profile("checkout", {"main": 0.5}, root.correlation_id, {"main;f": 10}, 100.0, now))
    with caplog.at_level("ERROR", logger="flowscope.runstore"):
        rec.spans(items)
        assert rec.flush(60)
    assert _count(store, "runs") == 2_000 and _count(store, "spans") == 4_000 - 5
    assert _count(store, "errors") == 20 and _count(store, "profiles") == 20
    assert len(store.get_run("run-199").spans) == 1 and len(store.get_run("run-198").spans) == 2
    assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"}) == 5
    logged = [r.getMessage() for r in caplog.records if "cannot store" in r.getMessage()]
    assert len(logged) == 1 and "OverflowError" in logged[0]  # once per kind of error, not once per item


def test_an_outage_is_not_taken_for_poison_and_loses_nothing(tmp_path):
    """The SQLite file's volume goes away with a poisoned span queued: nothing is dropped until it is back."""
    from exporter.db import make_engine
    from exporter.metrics import MetricStore
    from exporter.runstore import RunRecorder, RunStore

    (tmp_path / "vol").mkdir()
    metrics = MetricStore()
    store = RunStore(make_engine(f"sqlite:///{tmp_path}/vol/store.db"))
    rec = RunRecorder(store, metrics, flush_interval_s=0.05).start()
    try:
        (tmp_path / "vol").rename(tmp_path / "gone")   # every new connection now fails: "unable to open"
        store.engine.dispose()
        now = time.time_ns()
        poison = _span("poison", "f" * 16, None, now)
        poison.start_ns = 2**70
        rec.spans([_span("before", "1" * 16, None, now), poison, _span("after", "2" * 16, None, now)])
        deadline = time.monotonic() + 20
        while metrics.value(c.RUN_STORE_WRITE_FAILURES_TOTAL) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metrics.value(c.RUN_STORE_WRITE_FAILURES_TOTAL) >= 1
        assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"}) == 0  # an outage drops nothing
        (tmp_path / "gone").rename(tmp_path / "vol")
        assert rec.flush(60)
        assert {r.correlation_id for r in store.list_runs()} == {"before", "after"}
        assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"}) == 1
        assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "write_failed"}) == 0
    finally:
        rec.close()
        store.close()


# -- the writer on the shared batch worker ----------------------------------------------------------------------

def _store_recorder(tmp_path, **kw):
    from exporter.db import make_engine
    from exporter.metrics import MetricStore
    from exporter.store import RunRecorder, RunStore

    metrics = MetricStore()
    store = RunStore(make_engine(f"sqlite:///{tmp_path}/w.db"))
    return RunRecorder(store, metrics, **kw), store, metrics


class Outage:
    """The database goes away and comes back: while ``down`` is set, every statement fails the way SQLite does
    when its disk is gone. Records the span ids of every spans INSERT the database executed."""

    def __init__(self, engine):
        import sqlite3
        import threading

        from sqlalchemy import event

        self.down = threading.Event()
        self.sent: list[str] = []
        self.go_down_after_commits: int | None = None
        self.commits = 0

        @event.listens_for(engine, "before_cursor_execute")
        def fail(conn, cursor, statement, params, context, executemany):
            if self.down.is_set():
                raise sqlite3.OperationalError("disk I/O error")

        @event.listens_for(engine, "after_cursor_execute")
        def record(conn, cursor, statement, params, context, executemany):
            if statement.startswith("INSERT INTO spans"):
                self.sent += [row[1] for row in (params if executemany else [params])]

        @event.listens_for(engine, "commit")
        def commit(conn):
            self.commits += 1
            if self.commits == self.go_down_after_commits:
                self.down.set()


def _wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_the_recorder_starts_no_thread_until_its_owner_does_and_close_leaves_none(tmp_path):
    import threading

    def writers():
        return [t for t in threading.enumerate() if t.name == "flowscope-runstore"]

    before = len(writers())
    rec, store, _ = _store_recorder(tmp_path, flush_interval_s=0.05)
    now = time.time_ns()
    rec.spans([_span("queued", "1" * 16, None, now)])
    assert len(writers()) == before and not rec.flush(0.05)  # built, not started: nothing writes yet
    assert rec.start() is rec and len(writers()) == before + 1
    assert rec.flush(10) and store.get_run("queued") is not None
    assert rec.close(10) and len(writers()) == before
    store.close()


def test_a_retry_after_an_outage_resumes_where_the_write_stopped_and_sends_no_row_twice(tmp_path):
    """A batch is being split around a poisoned span when the database goes away: the retry writes only
    the part not yet committed."""
    rec, store, metrics = _store_recorder(tmp_path, flush_interval_s=0.05)
    outage = Outage(store.engine)
    outage.go_down_after_commits = 1  # right after the first half of the split batch is committed
    now = time.time_ns()
    poison = _span("poison", "f" * 16, None, now)
    poison.start_ns = 2**70
    good = [_span(f"r{i}", f"{i:016x}", None, now) for i in range(100)]
    rec.start()
    rec.spans(good[:50] + [poison] + good[50:])  # one batch: the whole fails on the poison, then it is halved
    assert _wait_for(lambda: metrics.value(c.RUN_STORE_WRITE_FAILURES_TOTAL))  # the second half met the outage
    assert sorted(outage.sent) == sorted(s.span_id for s in good[:50])  # the first half was committed before it
    assert not metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"})  # an outage is not poison
    outage.down.clear()
    assert rec.flush(30)
    assert sorted(outage.sent) == sorted(s.span_id for s in good)  # every good row sent once, none twice
    assert len(store.list_runs(limit=1000)) == 100 and metrics.value(c.RUNS_STORED_TOTAL) == 100
    assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"}) == 1
    assert rec.close(10)
    store.close()


def test_closing_while_the_database_is_down_counts_what_was_not_written(tmp_path):
    import threading

    rec, store, metrics = _store_recorder(tmp_path, flush_interval_s=0.01)
    outage = Outage(store.engine)
    outage.down.set()
    now = time.time_ns()
    rec.start()
    rec.spans([_span(f"r{i}", f"{i:016x}", None, now) for i in range(10)])
    assert _wait_for(lambda: metrics.value(c.RUN_STORE_WRITE_FAILURES_TOTAL))
    rec.spans([_span(f"q{i}", f"{i + 10:016x}", None, now) for i in range(5)])  # queued behind the failing batch
    assert rec.close(0.2) is False  # the database never came back within the deadline
    assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "write_failed"}) == 10  # the batch being retried
    assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "shutdown"}) == 5     # what was still queued
    assert not any(t.name == "flowscope-runstore" for t in threading.enumerate())
    outage.down.clear()
    assert store.list_runs() == []
    store.close()


def test_the_retention_sweep_runs_when_due_from_the_owners_tick(tmp_path):
    clock = [1_700_000_000.0]
    rec, store, metrics = _store_recorder(tmp_path, flush_interval_s=0.05, retention_s=3600, sweep_interval_s=600,
                                          clock=lambda: clock[0])
    rec.start()

    def ended(seconds_ago):
        return int((clock[0] - seconds_ago) * 1e9)

    rec.spans([_span("old-1", "1" * 16, None, ended(7200)), _span("new", "2" * 16, None, ended(60))])
    assert rec.flush(10)
    assert rec.sweep_if_due() == 1  # the first call sweeps
    rec.spans([_span("old-2", "3" * 16, None, ended(7200))])
    assert rec.flush(10)
    clock[0] += 599
    assert rec.sweep_if_due() == 0 and store.get_run("old-2") is not None  # not due yet: nothing deleted
    clock[0] += 1
    assert rec.sweep_if_due() == 1 and store.get_run("old-2") is None
    assert [r.correlation_id for r in store.list_runs()] == ["new"]
    assert metrics.value(c.RUN_STORE_SWEPT_TOTAL) == 2
    assert rec.close(10)
    store.close()
