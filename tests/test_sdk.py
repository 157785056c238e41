import asyncio
import io
import logging
import os
import threading
import time

import orjson
import pytest
from flask import Flask, jsonify
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from exporter import conventions as c
from exporter import sdk
from exporter.db import make_engine
from exporter.sdk import (
    CorrelationIdMiddleware,
    ErrorLogger,
    JsonFormatter,
    PerformanceMonitor,
    WorkflowTracer,
    classify_error,
    parse_traceparent,
    traced,
)
from exporter.sdk.sinks import InProcessSink, RemoteSink


@pytest.fixture
def tracer(ex):
    return WorkflowTracer(InProcessSink(ex.pipeline), service="shop")


def count(ex, wf, layer, comp, op, status="ok"):
    return ex.store.value(c.STEP_DURATION_SECONDS + "_count", {"workflow": wf, "layer": layer, "component": comp,
                                                               "operation": op, "status": status}) or 0


def test_instance_style_seed_api(ex, tracer):
    cid = tracer.start_workflow("checkout", user="alice", metadata={"cart": 3})
    assert ex.store.value(c.WORKFLOWS_IN_PROGRESS, {"workflow": "checkout"}) == 1
    sid = tracer.add_trace_step(cid, "database", "postgres", "insert_order", state={"cart": 3})
    tracer.complete_trace_step(sid, status="failed", error_type="DeadlockDetected", error_message="deadlock")
    tracer.fail_workflow(cid, RuntimeError("order failed"))
    assert count(ex, "checkout", "database", "postgres", "insert_order", "error") == 1
    assert ex.store.value(c.STEP_ERRORS_TOTAL, {"workflow": "checkout", "layer": "database", "component": "postgres",
                                                "error_type": "DeadlockDetected"}) == 1
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "checkout", "status": "error"}) == 1
    assert ex.store.value(c.WORKFLOWS_IN_PROGRESS, {"workflow": "checkout"}) == 0
    with pytest.raises(KeyError, match="already completed"):
        tracer.complete_workflow(cid)
    other = tracer.start_workflow("x")
    with pytest.raises(ValueError, match="status must be one of"):
        tracer.complete_trace_step(tracer.add_trace_step(other, "api", "a", "b"), status="meh")
    tracer.complete_workflow(other)


def test_static_style_uses_the_default_tracer(ex):
    sdk.configure(exporter=ex)
    try:
        cid = WorkflowTracer.start_workflow("login")
        sid = WorkflowTracer.add_trace_step(cid, "cache", "redis", "GET session")
        WorkflowTracer.complete_trace_step(sid)
        WorkflowTracer.complete_workflow(cid)
        assert count(ex, "login", "cache", "redis", "GET session") == 1
        assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "login", "status": "ok"}) == 1
    finally:
        sdk.shutdown()


def _started_since(before: set[threading.Thread]) -> list[str]:
    """The names of the threads alive now that were not alive at ``before``."""
    return sorted(t.name for t in threading.enumerate() if t not in before)


@pytest.fixture
def inprocess_store(tmp_path, monkeypatch):
    """In-process mode set up as an app does it, from the environment: a run store of its own, no Loki."""
    url = f"sqlite:///{tmp_path}/app.db"
    monkeypatch.setenv("FLOWSCOPE_DATABASE_URL", url)
    monkeypatch.delenv("FLOWSCOPE_LOKI_URL", raising=False)
    return url


def test_shutdown_flushes_then_stops_what_an_in_process_configure_started(inprocess_store):
    before = set(threading.enumerate())
    sdk.configure(mode="inprocess")
    try:
        assert _started_since(before)  # the exporter it built runs threads: the tick, the run store's writer
        tracer = WorkflowTracer()
        with tracer.workflow("checkout") as run:
            with tracer.step("database", "postgres", "SELECT orders"):
                pass
            with tracer.step("api", "orders", "POST /orders", state={"cart": 3}):
                pass
    finally:
        sdk.shutdown()
    assert _started_since(before) == []
    sdk.shutdown()  # idempotent
    assert _started_since(before) == []
    engine = make_engine(inprocess_store)  # the app's store, read afresh: the exporter closed its own engine
    try:
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT operation FROM spans WHERE correlation_id = :cid ORDER BY start_ns"),
                                  {"cid": run.correlation_id}).scalars().all()
    finally:
        engine.dispose()
    assert stored == ["checkout", "SELECT orders", "POST /orders"], "spans recorded before shutdown are missing"


def test_configure_again_closes_the_exporter_it_built_but_never_one_it_was_given(inprocess_store, ex):
    before = set(threading.enumerate())  # the given exporter (the fixture) is running already
    sdk.configure(mode="inprocess")
    try:
        built = sdk.default_exporter()
        assert built is not None and built is not ex and _started_since(before)
        sdk.configure(exporter=ex)  # replaces the one it built: that one is closed
        assert _started_since(before) == []
        assert sdk.default_exporter() is ex
    finally:
        sdk.shutdown()
    # ex belongs to whoever passed it: shutdown left it running, and it still stores runs
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with t.workflow("login") as run:
        pass
    assert ex.pipeline.recorder.flush()
    assert ex.runs.get_run(run.correlation_id) is not None


def test_context_managers_nest_and_record_failures_with_stack(ex, tracer):
    seen = []
    ex.pipeline.add_sink(seen.extend)
    with pytest.raises(TimeoutError), tracer.workflow("checkout") as run, \
            tracer.step("api", "orders", "POST /checkout") as outer, \
            tracer.step("external", "payments", "charge") as inner:
        raise TimeoutError("gateway timed out")
    assert count(ex, "checkout", "external", "payments", "charge", "timeout") == 1
    assert count(ex, "checkout", "api", "orders", "POST /checkout", "timeout") == 1
    charge = next(s for s in seen if s.operation == "charge")
    assert charge.parent_span_id == outer.span_id and charge.span_id == inner.span_id
    assert charge.correlation_id == run.correlation_id and "TimeoutError" in charge.stack_trace
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "checkout", "status": "timeout"}) == 1


def test_step_fail_marks_a_handled_error(ex, tracer):
    with tracer.workflow("search"), tracer.step("external", "catalog", "GET /items") as s:
        s.fail("HTTP503", "catalog unavailable")
    assert count(ex, "search", "external", "catalog", "GET /items", "error") == 1


def test_traced_decorator_on_sync_and_async_functions(ex, tracer):
    @traced("database", "postgres", tracer=tracer)
    def load(x):
        return x * 2

    @traced("cache", "redis", "GET", tracer=tracer)
    async def get(x):
        await asyncio.sleep(0)
        return x + 1

    async def main():
        with tracer.workflow("product_search"):
            return load(2), await get(2)

    assert asyncio.run(main()) == (4, 3)
    assert count(ex, "product_search", "database", "postgres",
                 "test_traced_decorator_on_sync_and_async_functions.<locals>.load") == 1
    assert count(ex, "product_search", "cache", "redis", "GET") == 1


def test_steps_in_concurrent_tasks_keep_their_own_runs(ex, tracer):
    async def run(wf):
        with tracer.workflow(wf):
            for _ in range(3):
                with tracer.step("api", "svc", "op"):
                    await asyncio.sleep(0)

    async def main():
        await asyncio.gather(run("login"), run("checkout"))

    asyncio.run(main())
    assert count(ex, "login", "api", "svc", "op") == 3 and count(ex, "checkout", "api", "svc", "op") == 3


def test_performance_monitor_values_appear_on_metrics(ex, client):
    mon = PerformanceMonitor(ex.meter_provider())
    mon.record_metric("cache", "redis", "hit rate", 0.93, correlation_id="c-1")
    mon.record_metric("queue", "kafka", "queue_depth", 12)
    with pytest.raises(ValueError, match="layer"):
        mon.record_metric("disk", "x", "y", 1)
    text = client.get(c.METRICS_PATH).data.decode()
    got = {(s.name, s.labels.get("layer"), s.labels.get("component")): s.value
           for f in text_string_to_metric_families(text) for s in f.samples
           if s.name.startswith(c.CUSTOM_METRIC_PREFIX)}
    assert got[("flowscope_custom_hit_rate", "cache", "redis")] == 0.93
    assert got[("flowscope_custom_queue_depth", "queue", "kafka")] == 12
    assert "c-1" not in text  # correlation IDs are never labels


@pytest.mark.parametrize("etype,msg,category", [
    ("TimeoutError", "", "timeout"), ("ConnectionRefusedError", "", "connection"),
    ("OperationalError", "deadlock detected", "deadlock"), ("HTTPError", "403 Forbidden", "auth"),
    ("HTTPError", "404 Not Found", "not_found"), ("HTTPError", "429 Too Many Requests", "rate_limit"),
    ("ValueError", "bad", "validation"), ("MemoryError", "", "resource"), ("Weird", "", "unknown"),
])
def test_errors_are_classified(etype, msg, category):
    assert classify_error(etype, msg) == category


def test_error_logger_keeps_the_stack_and_counts(ex, tracer):
    log = ErrorLogger(InProcessSink(ex.pipeline), service="shop")
    with tracer.workflow("checkout") as run:
        try:
            {}["missing"]
        except KeyError as e:
            rec = log.log_exception(e, layer="api", component="orders")
    assert rec.correlation_id == run.correlation_id and rec.workflow == "checkout"
    assert rec.category == "not_found" and "KeyError" in rec.stack_trace and "missing" in rec.stack_trace
    assert ex.store.value(c.STEP_ERRORS_TOTAL, {"workflow": "checkout", "layer": "api", "component": "orders",
                                                "error_type": "KeyError"}) == 1


def _app():
    app = Flask(__name__)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.app")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)

    @app.get("/hello")
    def hello():
        logger.info("hello", extra={"user_tier": "gold"})
        return jsonify(sdk.current_correlation_id())

    app.wsgi_app = CorrelationIdMiddleware(app.wsgi_app)
    return app, stream


def test_middleware_reads_creates_and_echoes_the_correlation_id():
    app, stream = _app()
    client = app.test_client()
    before = sdk.current_ids()
    r = client.get("/hello", headers={"X-Correlation-ID": "req-42"})
    assert r.headers["X-Correlation-ID"] == "req-42" and r.json == "req-42"
    r = client.get("/hello")
    assert len(r.headers["X-Correlation-ID"]) == 32 and r.json == r.headers["X-Correlation-ID"]
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = client.get("/hello", headers={"traceparent": tp})
    assert r.json == "0af7651916cd43dd8448eb211c80319c"
    r = client.get("/hello", headers={"X-Correlation-ID": "bad id with spaces"})
    assert r.headers["X-Correlation-ID"] != "bad id with spaces"
    records = [orjson.loads(x) for x in stream.getvalue().splitlines()]
    assert records[0]["correlation_id"] == "req-42" and records[0]["user_tier"] == "gold"
    assert records[2]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert records[2]["span_id"] == "b7ad6b7169203331"
    assert sdk.current_ids() == before  # nothing leaks out of the request


@pytest.mark.parametrize("value,expected", [
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
     ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
    ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
    ("garbage", None), (None, None),
])
def test_traceparent_parsing(value, expected):
    assert parse_traceparent(value) == expected


def test_json_formatter_stamps_ids_inside_a_step(ex, tracer):
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "msg %s", ("a",), None)
    with tracer.workflow("login") as run, tracer.step("api", "auth", "check") as st:
        out = orjson.loads(JsonFormatter().format(rec))
    assert (out["correlation_id"], out["span_id"], out["level"], out["message"]) == (
        run.correlation_id, st.span_id, "warning", "msg a")


def test_remote_mode_sends_batches_to_a_real_exporter(ex, serve):
    srv = serve(ex)
    reg = CollectorRegistry()
    sink = RemoteSink(srv.url, batch_wait_s=0.05, registry=reg)
    t = WorkflowTracer(sink, service="shop")
    with t.workflow("cart_update") as run, t.step("database", "postgres", "UPDATE cart", state={"items": 2}):
        pass
    sink.close()
    assert sink.sent == 2 and sink.dropped == 0
    assert count(ex, "cart_update", "database", "postgres", "UPDATE cart") == 1
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "cart_update", "status": "ok"}) == 1
    assert ex.store.value(c.SPANS_RECEIVED_TOTAL, {"format": c.FORMAT_NATIVE}) == 2
    assert run.correlation_id


def test_remote_mode_never_blocks_and_counts_drops():
    gate = threading.Event()
    reg = CollectorRegistry()
    # an exporter that never answers: the port is closed, so every send fails and retries
    sink = RemoteSink("http://127.0.0.1:9", queue_size=5, batch_size=1, batch_wait_s=0.01, registry=reg)
    t = WorkflowTracer(sink, service="shop")
    started = time.monotonic()
    with t.workflow("login"):
        for _ in range(200):
            with t.step("api", "auth", "check"):
                pass
    elapsed = time.monotonic() - started
    gate.set()
    assert sink.dropped >= 190
    assert reg.get_sample_value("flowscope_sdk_spans_dropped_total", {"reason": "queue_full"}) >= 190
    sink.close(timeout_s=0.5)
    assert elapsed < 5  # bounded: 200 steps never waited on the network


def test_remote_mode_sends_logged_errors_too(ex, serve):
    srv = serve(ex)
    sink = RemoteSink(srv.url, batch_wait_s=0.05, registry=CollectorRegistry())
    log = ErrorLogger(sink, service="shop")
    try:
        raise ConnectionRefusedError("connection to 10.0.0.7:5432 refused")
    except ConnectionRefusedError as e:
        log.log_exception(e, layer="database", component="postgres", workflow="checkout", correlation_id="c-7")
    sink.close()
    assert sink.sent == 1 and sink.dropped == 0
    assert ex.store.value(c.STEP_ERRORS_TOTAL, {"workflow": "checkout", "layer": "database",
                                                "component": "postgres", "error_type": "ConnectionRefusedError"}) == 1


def test_runs_never_completed_are_evicted_and_leave_the_in_progress_gauge(ex, tracer):
    tracer.MAX_OPEN = 3
    for _ in range(5):
        tracer.start_workflow("abandoned")
    assert tracer.evicted == 2
    assert ex.store.value(c.WORKFLOWS_IN_PROGRESS, {"workflow": "abandoned"}) == 3


@pytest.fixture
def no_run():
    """Start with no current run, whatever an earlier test on this thread left open."""
    from exporter.sdk.context import current_step
    token = current_step.set(None)
    yield
    current_step.reset(token)


class _FailingStartSink(InProcessSink):
    """An in-process sink whose in-progress gauge update fails (a closed pipeline, a bug in a sink)."""

    def started(self, workflow: str) -> None:
        raise RuntimeError("sink is down")


def _unrelated_step(ex, tracer):
    seen = []
    ex.pipeline.add_sink(seen.extend)
    with tracer.step("cache", "redis", "GET unrelated"):
        pass
    return next(s for s in seen if s.operation == "GET unrelated")


@pytest.mark.parametrize("case", ["bad workflow type", "sink raises"])
def test_a_start_that_raises_leaves_no_run_for_the_next_step_to_join(ex, no_run, case):
    if case == "bad workflow type":
        tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
        with pytest.raises(ValueError, match="workflow_type must be a non-empty string, got None"):
            tracer.start_workflow(None)
    else:
        tracer = WorkflowTracer(_FailingStartSink(ex.pipeline), service="shop")
        with pytest.raises(RuntimeError, match="sink is down"):
            tracer.start_workflow("checkout", correlation_id="dead-run")
        with pytest.raises(KeyError, match="unknown or already completed"):
            tracer.complete_workflow("dead-run")  # never opened: nothing to complete, nothing leaks
    assert sdk.current_ids() == (None, None, None)
    step = _unrelated_step(ex, tracer)
    assert step.workflow == c.UNKNOWN_WORKFLOW and step.correlation_id != "dead-run"
    assert ex.store.value(c.WORKFLOWS_IN_PROGRESS, {"workflow": "checkout"}) in (None, 0)


def test_a_run_completed_from_another_thread_is_never_joined_by_a_later_step(ex, tracer, no_run):
    cid = tracer.start_workflow("checkout")
    assert sdk.current_correlation_id() == cid
    done = threading.Thread(target=tracer.complete_workflow, args=(cid,))  # e.g. a callback thread ends it
    done.start()
    done.join(10)
    assert not done.is_alive()
    assert sdk.current_ids() == (None, None, None)  # log lines here no longer carry the finished run's ids
    step = _unrelated_step(ex, tracer)
    assert step.workflow == c.UNKNOWN_WORKFLOW and step.correlation_id != cid


def test_a_run_evicted_unfinished_is_never_joined_by_a_later_step(ex, tracer, no_run):
    import contextvars
    tracer.MAX_OPEN = 1
    abandoned = contextvars.copy_context()  # the context of a task that started a run and never ended it
    cid = abandoned.run(tracer.start_workflow, "abandoned")
    tracer.complete_workflow(tracer.start_workflow("other"))  # evicts the abandoned run
    assert tracer.evicted == 1
    assert abandoned.run(sdk.current_ids) == (None, None, None)
    step = abandoned.run(_unrelated_step, ex, tracer)
    assert step.workflow == c.UNKNOWN_WORKFLOW and step.correlation_id != cid


@pytest.mark.parametrize("word,status", [
    ("ok", "ok"), ("success", "ok"), ("succeeded", "ok"), ("completed", "ok"), ("complete", "ok"),
    ("error", "error"), ("failed", "error"), ("failure", "error"), ("timeout", "timeout"),
    ("timed_out", "timeout"), ("cancelled", "cancelled"), ("canceled", "cancelled"),
])
def test_the_sdk_and_native_json_accept_the_same_status_words(ex, tracer, word, status):
    from exporter.decode import native
    seen = []
    ex.pipeline.add_sink(seen.extend)
    cid = tracer.start_workflow("checkout")
    tracer.complete_trace_step(tracer.add_trace_step(cid, "api", "orders", "POST"), status=word.upper())
    tracer.complete_workflow(cid, status=word)
    decoded = native.decode({"steps": [{"correlation_id": "c-1", "workflow_type": "checkout", "layer": "api",
                                        "component": "orders", "operation": "POST", "status": word,
                                        "started_at": 1795000000, "duration_ms": 1}]})
    assert not decoded.rejected
    assert {s.status for s in seen} == {decoded.spans[0].status} == {status}


# -- the in-process hot path (bench/sdk_overhead.py): what it saves must not change what a step records ----------


def test_span_ids_are_distinct_sixteen_hex_digits_across_threads(ex, tracer):
    ids: list[str] = []

    def trace(n: int) -> None:
        with tracer.workflow("checkout"):
            for _ in range(n):
                with tracer.step("database", "postgres", "SELECT orders") as step:
                    ids.append(step.span_id)

    threads = [threading.Thread(target=trace, args=(2_000,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 8_000 == len(set(ids))
    assert all(len(i) == 16 and int(i, 16) for i in ids) and all(i == i.lower() for i in ids)


def test_a_scrape_mid_run_counts_every_step_recorded_before_it(ex, tracer):
    """Plain steps are queued and folded into the metrics in batches (Pipeline.fast_step): a scrape folds first, so
    it shows every step so far, however few, while the run is still open; the run store gets them by the run's end."""
    from exporter.exposition import render
    from exporter.pipeline import FAST_FOLD

    n = FAST_FOLD // 3  # never a full batch on its own
    with tracer.workflow("checkout") as run:
        for k in range(n):
            with tracer.step("database", "postgres", "SELECT orders"):
                pass
            if k in (0, n // 2):
                body = render(ex.store).decode()
                assert f'{c.STEP_DURATION_SECONDS}_count{{workflow="checkout",layer="database",component="postgres",' \
                       f'operation="SELECT orders",status="ok"}} {k + 1}' in body
    assert ex.recorder.flush(10)  # the store's own flush: the run's end handed its steps over
    assert [s.operation for s in ex.runs.get_run(run.correlation_id).spans].count("SELECT orders") == n


def test_a_secret_in_a_plain_steps_name_seen_first_by_a_scrape_is_still_redacted_and_counted(ex, tracer):
    """A step whose name a redaction changes cannot be recorded inside the scrape's fold (it holds the metric store's
    lock): it is recorded, redacted, at the next fold. Its raw name never becomes a label or a row."""
    from exporter.exposition import render

    with tracer.workflow("login") as run:
        with tracer.step("api", "auth", "GET /login?token=s3cr3t-abc"):
            pass
        assert "s3cr3t" not in render(ex.store).decode()  # folded by the scrape, the step held back
    assert tracer._sink.flush(10)
    body = render(ex.store).decode()
    assert "s3cr3t" not in body
    assert count(ex, "login", "api", "auth", "GET /login?token=[REDACTED]") == 1
    ops = [s.operation for s in ex.runs.get_run(run.correlation_id).spans]
    assert "GET /login?token=[REDACTED]" in ops and not any("s3cr3t" in o for o in ops)


def test_steps_from_many_threads_while_scrapes_fold_are_each_counted_and_stored_once(ex, tracer):
    from exporter.exposition import render

    runs: list[str] = []
    stop = threading.Event()

    def work() -> None:
        for _ in range(5):
            with tracer.workflow("checkout") as run:
                for _ in range(200):
                    with tracer.step("cache", "redis", "GET cart"):
                        pass
            runs.append(run.correlation_id)

    def scrape() -> None:
        for _ in range(2_000):  # bounded: until the workers end, or 2,000 scrapes
            if stop.is_set():
                return
            render(ex.store)

    scraper = threading.Thread(target=scrape)
    workers = [threading.Thread(target=work) for _ in range(4)]
    scraper.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    scraper.join(60)
    assert tracer._sink.flush(30)
    assert count(ex, "checkout", "cache", "redis", "GET cart") == 4 * 5 * 200
    assert ex.store.value(c.SPANS_RECEIVED_TOTAL, {"format": c.FORMAT_SDK}) == 4 * 5 * 201
    assert sorted(len(ex.runs.get_run(cid).spans) for cid in runs) == [201] * 20


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
def test_a_child_forked_mid_run_gives_its_steps_span_ids_its_parent_does_not(tracer):
    """A run open across ``os.fork`` (a worker pool forked mid-run): the child used to go on with its parent's span
    id counter, so the steps both recorded in the run got the same ids, and the store kept one of each pair."""
    import select
    import signal

    def step_ids(n: int, *, child: bool = False) -> list[str]:
        out = []
        for _ in range(n):
            step = tracer.step("database", "postgres", "SELECT orders")
            if child:  # a step has its id from its start; the child leaves before recording (no sink threads)
                out.append(step.__enter__().span_id)
            else:
                with step as s:
                    out.append(s.span_id)
        return out

    with tracer.workflow("checkout"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its ids to the pipe, then out at once (the parent's threads are not here)
            try:
                os.write(w, ",".join(step_ids(50, child=True)).encode())
            finally:
                os._exit(0)
        os.close(w)
        mine = step_ids(50)
        try:
            sent = select.select([r], [], [], 30)[0]
            if not sent:
                os.kill(pid, signal.SIGKILL)
            assert sent, "the forked child sent nothing in 30 s"
            theirs = os.read(r, 1 << 16).decode().split(",")
        finally:
            os.close(r)
            os.waitpid(pid, 0)
    assert len(theirs) == 50 and not set(theirs) & set(mine)


def test_a_run_leaves_the_process_as_the_ids_its_rows_need_and_nothing_more(tracer):
    import pickle

    from exporter.sdk.tracer import RunIds
    from exporter.store.recorder import RunWriter

    with tracer.workflow("checkout", metadata={"card": "4111 1111 1111 1111"}), \
            tracer.step("database", "postgres", "SELECT orders") as step:
        run = step._run
    crossed = pickle.loads(pickle.dumps(run, protocol=pickle.HIGHEST_PROTOCOL))
    assert crossed == RunIds(run.correlation_id, run.trace_id, "checkout", "shop")
    assert "4111" not in repr(crossed)
    fast = (run, "database", "postgres", "SELECT orders", 1, 2, step.span_id, run.span_id)
    assert RunWriter.fast_row((crossed, *fast[1:])) == RunWriter.fast_row(fast)


def test_steps_written_by_the_writer_process_are_stored_as_traced(make_exporter):
    """The default writer is a process: plain steps cross its pipe with their run and come back as rows."""
    ex = make_exporter(store_writer="process")
    tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with tracer.workflow("checkout", metadata={"cart": 3}) as wf, tracer.step("api", "orders", "POST /orders") as outer:
        with tracer.step("database", "postgres", "INSERT orders") as inner:
            pass
        run = outer._run
    assert ex.pipeline.recorder.flush(30)
    with ex.runs.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT span_id, parent_span_id, trace_id, workflow, service, layer, component, operation, status, "
            "start_ns < end_ns FROM spans WHERE correlation_id = :cid AND is_step ORDER BY start_ns"),
            {"cid": wf.correlation_id}).all()
    assert [tuple(r) for r in rows] == [
        (outer.span_id, run.span_id, run.trace_id, "checkout", "shop", "api", "orders", "POST /orders", "ok", 1),
        (inner.span_id, outer.span_id, run.trace_id, "checkout", "shop", "database", "postgres", "INSERT orders",
         "ok", 1)]
    assert ex.store.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"}) in (None, 0)


def _newest_exemplars(observations, bounds):
    """The exemplar rule of exporter.metrics.Histogram, spelled out: per bucket, the newest span by its
    millisecond; a later one of the same millisecond, or an older one, leaves it in place."""
    import bisect
    kept: dict[int, tuple] = {}
    for value, ts, sid in observations:
        i = bisect.bisect_left(bounds, value)
        ms = round(ts * 1e3) / 1e3
        if i not in kept or ms > kept[i][3]:
            kept[i] = ("t" * 32, sid, value, ms)
    return kept


@given(st.floats(1.5e9, 2.5e9), st.lists(st.tuples(st.sampled_from([0.004, 0.2, 30.0]),
                                                   st.integers(-3_000, 3_000)), max_size=60))
@settings(max_examples=300, deadline=None)
def test_each_step_bucket_keeps_the_newest_exemplar_by_its_millisecond(base, steps):
    """The hot path skips rounding a timestamp that cannot beat its bucket's (bad cases: same millisecond, half a
    millisecond either side, out of order): the exemplars kept are those of the rule."""
    from exporter.metrics import MetricStore
    h = MetricStore().histogram(c.STEP_DURATION_SECONDS, "steps", ("workflow",))
    observations = [(value, base + us / 1e6, f"{n:016x}") for n, (value, us) in enumerate(steps)]
    for value, ts, sid in observations:
        h.observe(("checkout",), value, "t" * 32, sid, ts)
    series = h.series.get(("checkout",))
    got = {} if series is None else {i: e for i, e in enumerate(series.exemplars) if e is not None}
    assert got == _newest_exemplars(observations, h.bounds)
