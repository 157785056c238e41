"""The run store's writer process (issue 13): what it stores is what the in-thread writer stores, and a
batch it cannot take, an item it refuses or a writer that dies costs nothing else."""

import os
import signal
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from exporter import conventions as c
from exporter.db import make_engine
from exporter.decode import otlp
from exporter.metrics import MetricStore
from exporter.model import ErrorRecord, Span
from exporter.profiles import Profile
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from exporter.store import RunRecorder, RunStore, process
from exporter.store.process import WriterProcess, decode, encode
from tests.otlp_data import request, span

PB = {"Content-Type": "application/x-protobuf"}


def _otlp_body(trace_id: str) -> bytes:
    """A checkout run as OTel instrumentation sends it: attributes (a secret and a user among them), an
    exception event, a link, a resource."""
    root = span("POST /checkout", trace_id=trace_id, span_id="0a" * 8, kind=2,
                attrs={"http.request.method": "POST", "http.route": "/checkout", "flowscope.workflow": "checkout",
                       "enduser.id": "alice@example.com", "http.request.header.authorization": "Bearer s3cr3t-t0ken",
                       "cart.items": 3, "cart.total": 99.5, "retry": False})
    db = span("SELECT orders", trace_id=trace_id, span_id="0b" * 8, parent=root["span_id"], kind=3, error=True,
              message="timeout",
              attrs={"db.system": "postgresql", "db.statement": "SELECT * FROM orders WHERE password = 'hunter2'"},
              events=[("exception", {"exception.type": "TimeoutError", "exception.message": "db timed out"})])
    req = request([db, root], service="shop", resource={"service.version": "1.4.2", "host.name": "node-3"})
    req.resource_spans[0].scope_spans[0].spans[1].links.add(trace_id=bytes.fromhex("ab" * 16),
                                                            span_id=bytes.fromhex("cd" * 8))
    return req.SerializeToString()


def test_the_writer_process_stores_exactly_what_the_thread_stores(make_exporter):
    """OTLP protobuf (attributes, events, links, resource: decoded in the child from the span's bytes), native
    JSON and the SDK's fast path, through the real HTTP views and tracer, into two stores, one per writer."""
    from backend.app import create_app

    stores = {}
    for mode in ("thread", "process"):
        ex = make_exporter(store_writer=mode).start()
        assert (ex.recorder.writer is not None) == (mode == "process")
        client = create_app(ex).test_client()
        assert client.post(c.OTLP_TRACES_PATH, data=_otlp_body("0f" * 16), headers=PB).status_code == 200
        native = [{"correlation_id": "n-1", "trace_id": "1e" * 16, "span_id": "1d" * 8, "workflow_type": "search",
                   "layer": "api", "component": "web",
                   "operation": "GET /search", "started_at": 1_700_000_000.0, "duration_ms": 12.5,
                   "status": "error", "error_type": "KeyError", "error_message": "token=abc missing",
                   "metadata": {"q": "shoes", "api_key": "k-123"}, "state": {"page": 2}}]
        r = client.post(c.NATIVE_SPANS_PATH, json={"steps": native})
        assert r.status_code in (200, 202), r.get_data(as_text=True)
        tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
        with tracer.workflow("login") as run, tracer.step("database", "pg", "select user"):
            pass
        assert ex.recorder.flush(60)
        sdk_run = ex.runs.get_run(run.correlation_id)
        assert sdk_run is not None
        stores[mode] = {"otlp": ex.runs.get_run("0f" * 16), "native": ex.runs.get_run("n-1"),
                        "sdk": [(s.layer, s.component, s.operation, s.status, s.attributes, s.state, s.is_step)
                                for s in sdk_run.spans]}  # its ids are the tracer's own, new in each store
    for what, thread_view in stores["thread"].items():
        assert thread_view, what
        assert stores["process"][what] == thread_view, what
    otlp_run = stores["process"]["otlp"]
    stored_text = repr(otlp_run)
    assert "s3cr3t-t0ken" not in stored_text and "hunter2" not in stored_text and "alice@example.com" not in stored_text
    assert len(otlp_run.spans) == 2 and any(s.events for s in otlp_run.spans) and any(s.links for s in otlp_run.spans)


def _recorder(request, tmp_path, backend="sqlite"):
    url = (f"sqlite:///{tmp_path}/w.db" if backend == "sqlite"
           else request.getfixturevalue("postgres").fresh_database())
    metrics = MetricStore()
    store = RunStore(make_engine(url))
    writer = WriterProcess(store.engine.url.render_as_string(hide_password=False), store.redactor.fragments)
    rec = RunRecorder(store, metrics, flush_interval_s=3600, writer=writer).start()
    request.addfinalizer(lambda: (rec.close(), store.close()))
    return rec, store, metrics


def _count(store, table: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def _span(cid: str, sid: str, now: int, **kw) -> Span:
    return Span(trace_id=cid.ljust(32, "0")[:32], span_id=sid, workflow="checkout", layer="api", component="shop",
                operation="POST /checkout", start_ns=now - 1000, end_ns=now, correlation_id=cid, **kw)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_poison_in_the_writer_process_costs_only_itself(request, tmp_path, caplog, backend):
    """A step the database refuses (start past 2^63), a span whose attributes orjson refuses (an int past 64
    bits), a span that cannot even be pickled: each dropped and counted as poison; the rest of the batch, spans,
    fast-path steps, errors and profiles, is stored."""
    rec, store, metrics = _recorder(request, tmp_path, backend)
    now = time.time_ns()
    items: list = []
    for i in range(1_000):
        root = _span(f"run-{i}", f"{i:016x}", now)
        run = SimpleNamespace(correlation_id=root.correlation_id, trace_id=root.trace_id, workflow="checkout",
                              service="svc")
        items += [root, (run, "api", "orders", "create", 2**70 if i == 199 else now - 1000, now, f"{i:015x}a",
                         root.span_id)]
        if i % 100 == 0:
            items.append(ErrorRecord("KeyError", f"user {i} not found", "api", "users", "checkout",
                                     correlation_id=root.correlation_id, time_ns=now))
            items.append(Profile("checkout", {"main": 0.5}, root.correlation_id, {"main;f": 10}, 100.0, now))
    items.insert(500, _span("big-int", "b" * 16, now, attributes={"retries": 2**65}))
    items.insert(900, _span("unpicklable", "c" * 16, now, attributes={"callback": lambda: None}))
    with caplog.at_level("ERROR", logger="flowscope.runstore"):
        rec.spans(items)
        assert rec.flush(60)
    assert _count(store, "runs") == 1_000 and _count(store, "spans") == 2_000 - 1
    assert _count(store, "errors") == 10 and _count(store, "profiles") == 10
    assert store.get_run("big-int") is None and store.get_run("unpicklable") is None
    assert metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": "poison"}) == 3
    assert metrics.value(c.RUNS_STORED_TOTAL) == 1_000
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "step of run 'run-199'" in logged and "span 'cccccccccccccccc'" in logged


def test_a_killed_writer_is_replaced_and_its_batch_is_written_by_the_next(request, tmp_path):
    rec, store, metrics = _recorder(request, tmp_path)
    now = time.time_ns()
    rec.spans([_span(f"a-{i}", f"{i:016x}", now) for i in range(1_000)])
    assert rec.flush(60)
    first = rec.writer.pid
    os.kill(first, signal.SIGKILL)
    rec.spans([_span(f"b-{i}", f"{i:016x}", now) for i in range(1_000)])
    assert rec.flush(60)
    assert _count(store, "spans") == 2_000
    assert rec.writer.pid != first and rec.writer.restarts == 1
    assert not metrics.value(c.RUN_STORE_DROPPED_TOTAL)


class _ExitsTheWriter:
    """An item that ends the process that unpickles it: the writer process dies while reading its chunk."""

    def __reduce__(self):
        return os._exit, (3,)


@pytest.mark.parametrize("shared_memory", [True, False], ids=["memfd", "pipe"])
def test_a_writer_dying_mid_batch_keeps_the_rest_and_writes_no_chunk_twice(tmp_path, monkeypatch, shared_memory):
    """A batch goes over in chunks, each its own transaction: when the child dies on one, the chunks it answered
    are stored and not sent again (error rows have no key that would make a second copy harmless), and the chunk
    it died on and the rest are left for the retry, which a new child writes. Chunks go through shared memory
    (two in flight) where there is ``memfd_create``, else through the pipe (one)."""
    monkeypatch.setattr(process, "CHUNK_ITEMS", 10)
    if not shared_memory:
        monkeypatch.setattr(process, "_new_slots", list)
    url = f"sqlite:///{tmp_path}/w.db"
    store = RunStore(make_engine(url))
    writer = WriterProcess(url, store.redactor.fragments).start()
    try:
        now = time.time_ns()
        items: list = []
        for i in range(40):
            root = _span(f"run-{i}", f"{i:016x}", now)
            items += [root, ErrorRecord("KeyError", f"user {i} not found", "api", "users", "checkout",
                                        correlation_id=root.correlation_id, time_ns=now)]
        killer = _ExitsTheWriter()
        items.insert(45, killer)  # in the fifth chunk
        result, left, refused = writer.write(items)
        assert "died" in (result.error or "") and not refused and writer.restarts == 1
        assert left == items[40:] and result.left == len(left)
        assert (result.counts["runs"], _count(store, "spans"), _count(store, "errors")) == (20, 20, 20)
        left.remove(killer)
        result, left, refused = writer.write(left)  # the retry: a new child
        assert (left, refused, result.error) == ([], [], None)
        assert (_count(store, "spans"), _count(store, "errors"), _count(store, "runs")) == (40, 40, 40)
    finally:
        writer.close()
        store.close()


def test_health_shows_the_writer_process_and_a_dead_one(make_exporter):
    from backend.app import create_app

    ex = make_exporter(store_writer="process").start()
    client = create_app(ex).test_client()
    writer = client.get(c.HEALTH_PATH).json["components"]["writer"]
    assert writer["state"] == "ok" and writer["process"]["alive"] and writer["process"]["restarts"] == 0
    os.kill(writer["process"]["pid"], signal.SIGKILL)
    ex.recorder.writer._proc.wait(10)
    assert client.get(c.HEALTH_PATH).json["components"]["writer"]["state"] == "degraded"
    ex.recorder.spans([_span("after", "a" * 16, time.time_ns())])
    assert ex.recorder.flush(60) and ex.runs.get_run("after") is not None  # the next batch starts a new one
    writer = client.get(c.HEALTH_PATH).json["components"]["writer"]
    assert writer["state"] == "ok" and writer["process"]["alive"] and writer["process"]["restarts"] == 1


def test_closing_the_recorder_stops_the_writer_process(tmp_path):
    store = RunStore(make_engine(f"sqlite:///{tmp_path}/w.db"))
    writer = WriterProcess(str(store.engine.url), store.redactor.fragments)
    rec = RunRecorder(store, MetricStore(), writer=writer).start()
    pid = writer.pid
    rec.spans([_span("one", "1" * 16, time.time_ns())])
    assert rec.close(30)
    assert store.get_run("one") is not None
    with pytest.raises(ProcessLookupError):  # exited and reaped, not a zombie
        os.kill(pid, 0)
    store.close()


def test_a_store_the_writer_cannot_open_is_retried_not_lost(tmp_path):
    """The child cannot open the store (a file stands where its directory should be): start() logs, the first
    batch is retried until it can, and nothing is dropped."""
    (tmp_path / "later").write_text("in the way")
    store = RunStore(make_engine(f"sqlite:///{tmp_path}/w.db"))
    writer = WriterProcess(f"sqlite:///{tmp_path}/later/w.db", store.redactor.fragments)
    rec = RunRecorder(store, MetricStore(), writer=writer, flush_interval_s=0.05).start()
    rec.spans([_span("one", "1" * 16, time.time_ns())])
    assert not rec.flush(1.5)
    (tmp_path / "later").unlink()
    (tmp_path / "later").mkdir()
    assert rec.flush(60)
    assert rec.close(30)
    later = RunStore(make_engine(f"sqlite:///{tmp_path}/later/w.db"))
    assert later.get_run("one") is not None
    later.close()
    store.close()


_text = st.text(max_size=40)
_value = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | _text,
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
                      max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attrs=st.dictionaries(_text, _value, max_size=8), state=st.none() | st.dictionaries(_text, _value, max_size=4),
       message=st.none() | _text, parent=st.none() | st.just("a" * 16))
def test_any_span_crosses_the_pipe_unchanged(attrs, state, message, parent):
    s = Span(trace_id="f" * 32, span_id="e" * 16, parent_span_id=parent, workflow="w", layer="api", component="x",
             operation="op", start_ns=1, end_ns=2, error_message=message, attributes=attrs, state=state,
             resource={"service.name": "s"}, events=[{"name": "e", "time_ns": 1, "attributes": attrs}])
    data, kept, bad = encode([s])
    assert kept == [s] and not bad
    (back,) = decode(data)
    for name in ("trace_id", "span_id", "parent_span_id", "correlation_id", "workflow", "error_message",
                 "attributes", "state", "resource", "events", "links", "is_step", "start_ns", "end_ns"):
        assert getattr(back, name) == getattr(s, name), name


def test_an_otlp_span_crosses_as_its_bytes_and_decodes_the_same():
    (s,) = otlp.decode_protobuf(_otlp_body("1f" * 16)).spans[1:]
    assert otlp.pb_span_bytes(s) is not None  # unread: it travels as bytes
    data, _, _ = encode([s])
    (back,) = decode(data)
    assert (back.attributes, back.events, back.links) == (s.attributes, s.events, s.links)
    assert otlp.pb_span_bytes(s) is None  # read now: it would travel decoded
