import pytest

from exporter.model import Span
from exporter.resolver import WorkflowResolver
from tests.conftest import wait_until

T = "ab" * 16


def _span(sid, parent=None, wf=None, name="op", start=1):
    return Span(trace_id=T, span_id=sid * 8, workflow=wf, layer="api", component="svc", operation=name, start_ns=start,
                end_ns=start + 10, parent_span_id=parent and parent * 8)


def test_children_that_arrive_before_their_root_wait_for_its_name():
    r = WorkflowResolver(timeout_s=30)
    child = _span("02", parent="01")
    assert r.resolve([child], now=0) == []
    assert r.pending_spans == 1
    root = _span("01", name="checkout")
    ready = r.resolve([root], now=1)
    assert {s.span_id for s in ready} == {"01" * 8, "02" * 8}
    assert {s.workflow for s in ready} == {"checkout"} and r.pending_spans == 0
    late = _span("03", parent="01")
    assert r.resolve([late], now=2)[0].workflow == "checkout"


def test_an_explicit_workflow_attribute_names_the_whole_trace():
    r = WorkflowResolver()
    ready = r.resolve([_span("02", parent="01"), _span("03", parent="01", wf="login")], now=0)
    assert sorted(s.workflow for s in ready) == ["login", "login"]


def test_a_trace_whose_root_never_comes_is_named_after_its_earliest_local_span_on_timeout():
    r = WorkflowResolver(timeout_s=5)
    r.resolve([_span("03", parent="02", name="inner", start=5), _span("02", parent="99", name="handler", start=2)],
              now=0)
    assert r.expire(now=4) == []
    out = r.expire(now=5)
    assert {s.workflow for s in out} == {"handler"} and r.pending_spans == 0


def test_pending_spans_are_bounded():
    r = WorkflowResolver(timeout_s=1000, max_pending_spans=10)
    ready = []
    for i in range(25):
        s = Span(trace_id=f"{i:032x}", span_id=f"{i + 1:016x}", workflow=None, layer="api", component="svc",
                 operation=f"op{i}", start_ns=1, end_ns=2, parent_span_id="ff" * 8)
        ready += r.resolve([s], now=i)
    assert r.pending_spans <= 10
    assert len(ready) + r.pending_spans == 25


def test_a_root_that_comes_alone_in_a_later_all_named_batch_releases_what_waits():
    r = WorkflowResolver(timeout_s=30)
    assert r.resolve([_span("02", parent="01", name="SELECT 1"), _span("03", parent="02")], now=0) == []
    root = _span("01", name="POST /checkout", wf="checkout")  # SimpleSpanProcessor: the root alone, named
    ready = r.resolve([root], now=1)
    assert sorted(s.span_id[:2] for s in ready) == ["01", "02", "03"]
    assert {s.workflow for s in ready} == {"checkout"} and r.pending_spans == 0 and r.guessed == {}


def test_a_named_span_that_comes_first_names_the_spans_that_come_after_it():
    r = WorkflowResolver(timeout_s=30)
    batch = [_span("01", name="POST /checkout", wf="checkout")]
    assert r.resolve(batch, now=0) is batch  # all named: passed through, no copy
    (late,) = r.resolve([_span("05", parent="04", name="SELECT 1")], now=1)  # another service's span, later
    assert late.workflow == "checkout" and r.pending_spans == 0


def test_a_named_span_of_any_service_releases_the_trace_and_keeps_its_own_name():
    r = WorkflowResolver(timeout_s=30)
    r.resolve([_span("03", parent="02", name="SELECT 1")], now=0)
    ready = r.resolve([_span("02", parent="01", name="GET /stock", wf="restock")], now=1)
    assert {(s.span_id[:2], s.workflow) for s in ready} == {("02", "restock"), ("03", "restock")}
    (root,) = r.resolve([_span("01", name="POST /checkout")], now=2)  # the root, unnamed, comes last
    assert root.workflow == "restock"


def test_guesses_are_counted_by_reason():
    r = WorkflowResolver(timeout_s=10, max_pending_spans=2)
    r.resolve([_span("02", parent="01")], now=0)
    r.resolve([Span(trace_id="cd" * 16, span_id="0a" * 8, workflow=None, layer="api", component="svc", operation="a",
                    start_ns=1, end_ns=2, parent_span_id="ff" * 8)], now=1)
    assert r.expire(now=9) == [] and r.guessed == {}
    assert [s.operation for s in r.expire(now=10)] == ["op"]  # the older trace timed out, the other waits
    assert r.guessed == {"timeout": 1} and r.pending_spans == 1
    for i in range(2):  # over the bound: the oldest is forced out early
        r.resolve([Span(trace_id="ef" * 16, span_id=f"{i + 1:016x}", workflow=None, layer="api", component="svc",
                        operation=f"b{i}", start_ns=5 + i, end_ns=9, parent_span_id="ee" * 8)],
                  now=2)
    assert r.guessed == {"timeout": 1, "pending_limit": 1} and r.pending_spans == 2
    out = r.expire(now=float("inf"))
    assert {s.workflow for s in out} == {"b0"} and r.guessed["shutdown"] == 1 and r.pending_spans == 0


def test_the_pipeline_counts_guesses_in_a_counter_by_reason():
    from exporter import conventions as c
    from exporter.metrics import MetricStore
    from exporter.pipeline import Pipeline

    now = [0.0]
    store = MetricStore()
    p = Pipeline(store, resolver=WorkflowResolver(timeout_s=30), clock=lambda: now[0])
    assert store.value(c.WORKFLOW_NAMES_GUESSED_TOTAL, {"reason": "timeout"}) == 0
    p.ingest([_span("03", parent="02", name="SELECT 1", start=5), _span("02", parent="01", name="GET /a", start=2)],
             "otlp_json")
    now[0] = 30
    p.tick()
    assert store.value(c.WORKFLOW_NAMES_GUESSED_TOTAL, {"reason": "timeout"}) == 1
    assert store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "GET /a", "status": "ok"}) is None  # not a root
    assert store.value(c.STEP_DURATION_SECONDS + "_count", {"workflow": "GET /a", "layer": "api", "component": "svc",
                                                            "operation": "SELECT 1", "status": "ok"}) == 1


# -- replicas without trace affinity: the root another replica stored names the trace --------------------------


def _root_stored_elsewhere(store, trace_id=T, workflow="checkout"):
    """What another replica did with the trace's root: named it and wrote it to the store they share."""
    root = Span(trace_id=trace_id, span_id="01" * 8, workflow=workflow, layer="api", component="svc",
                operation="POST /checkout", start_ns=1, end_ns=20)
    store.write([root])


@pytest.fixture
def run_store(tmp_path):
    from exporter.db import make_engine
    from exporter.store import RunStore

    store = RunStore(make_engine(f"sqlite:///{tmp_path}/shared.db"))
    yield store
    store.close()


def test_a_child_whose_root_another_replica_stored_is_named_from_the_store(run_store):
    r = WorkflowResolver(timeout_s=30, lookup=run_store.workflows_of_traces, lookup_after_s=2, lookup_in_thread=False)
    assert r.resolve([_span("02", parent="01", name="SELECT 1")], now=0) == []
    _root_stored_elsewhere(run_store)
    assert r.expire(now=1) == []  # not asked yet: its root may still come here
    (child,) = r.expire(now=2)
    assert (child.operation, child.workflow) == ("SELECT 1", "checkout")
    assert r.pending_spans == 0 and r.named_from_store == 1 and r.guessed == {}
    (late,) = r.resolve([_span("03", parent="01", name="SELECT 2")], now=3)  # the trace's name is remembered
    assert late.workflow == "checkout"


def test_store_lookups_are_one_query_a_tick_bounded_oldest_first_and_backed_off(run_store):
    asked: list[list[str]] = []

    def lookup(ids):
        asked.append(list(ids))
        return run_store.workflows_of_traces(ids)

    r = WorkflowResolver(timeout_s=30, lookup=lookup, lookup_after_s=2, lookup_max=3, lookup_in_thread=False)
    tids = [f"{i:032x}" for i in range(5)] + ["ff" * 16]
    for i, tid in enumerate(tids):
        r.resolve([Span(trace_id=tid, span_id="02" * 8, workflow=None, layer="api", component="svc", operation="q",
                        start_ns=1, end_ns=2, parent_span_id="01" * 8)], now=0 if i < 5 else 1)
    assert r.expire(now=2) == [] and asked == [tids[:3]]  # one query, at most 3 ids, the oldest first
    assert r.expire(now=3) == [] and asked[1:] == [tids[3:]]  # the first 3 wait their turn
    _root_stored_elsewhere(run_store, trace_id=tids[4], workflow="w4")
    assert r.expire(now=3.5) == [] and len(asked) == 2  # nothing due: no query
    assert r.expire(now=4) == [] and asked[2:] == [tids[:3]]  # asked again after as long as they had waited
    assert r.expire(now=5) == [] and asked[3:] == [tids[5:]]
    (named,) = r.expire(now=6)
    assert asked[4:] == [tids[3:5]] and (named.trace_id, named.workflow) == (tids[4], "w4")
    asked.clear()
    for t in range(7, 30):
        assert r.expire(now=t) == []
    # past LOOKUP_MAX_INTERVAL_S of waiting, a trace is asked every 5 s: 4 or 5 times in 23 ticks, not 23
    from collections import Counter
    per_trace = Counter(tid for ids in asked for tid in ids)
    assert set(per_trace) == set(tids) - {tids[4]} and all(4 <= n <= 5 for n in per_trace.values()), per_trace
    assert all(len(ids) <= 3 for ids in asked)
    out = r.expire(now=30)
    assert len(out) == 4 and r.guessed == {"timeout": 4} and r.named_from_store == 1  # then rule 3, counted


def test_a_root_that_comes_here_after_the_query_keeps_its_own_name(run_store):
    r = WorkflowResolver(timeout_s=30, lookup=run_store.workflows_of_traces, lookup_after_s=2)
    assert r.resolve([_span("02", parent="01", name="SELECT 1")], now=0) == []
    _root_stored_elsewhere(run_store, workflow="from_the_store")
    assert r.expire(now=2) == []  # asked, on the lookup thread
    ready = r.resolve([_span("01", name="POST /checkout", wf="here")], now=2.5)  # the root came here meanwhile
    assert {s.workflow for s in ready} == {"here"}
    wait_until(lambda: r.lookups == 1 and r._lookup._busy is False, what="the lookup to answer")
    assert r.expire(now=3) == [] and r.named_from_store == 0


def test_the_lookup_runs_off_the_callers_thread_and_its_answer_names_the_trace_at_a_later_tick(run_store):
    import threading

    callers = set()

    def lookup(ids):
        callers.add(threading.get_ident())
        return run_store.workflows_of_traces(ids)

    r = WorkflowResolver(timeout_s=30, lookup=lookup, lookup_after_s=2)
    r.resolve([_span("02", parent="01", name="SELECT 1")], now=0)
    _root_stored_elsewhere(run_store)
    assert r.expire(now=2) == []  # the query runs on the lookup thread: the caller (under the lock) never waits
    got = wait_until(lambda: r.expire(now=3), what="the store's answer to name the child")
    assert [(s.operation, s.workflow) for s in got] == [("SELECT 1", "checkout")]
    assert threading.get_ident() not in callers and len(callers) == 1
    r.expire(now=float("inf"))  # shutdown ends the lookup thread
    wait_until(lambda: not r._lookup._thread.is_alive(), what="the lookup thread to end")


def test_a_store_that_cannot_answer_leaves_the_trace_to_rule_3(run_store, caplog):
    from sqlalchemy import text

    with run_store.engine.begin() as conn:
        conn.execute(text("DROP TABLE runs"))  # every lookup now fails in the database
    r = WorkflowResolver(timeout_s=10, lookup=run_store.workflows_of_traces, lookup_after_s=2, lookup_in_thread=False)
    r.resolve([_span("02", parent="01", name="SELECT 1")], now=0)
    with caplog.at_level("WARNING", logger="flowscope.resolver"):
        for t in range(2, 10):
            assert r.expire(now=t) == []
    assert r.lookup_errors >= 2
    assert len([m for m in caplog.messages if "could not look up" in m]) == 1  # logged once, not every tick
    (child,) = r.expire(now=10)
    assert child.workflow == "SELECT 1" and r.guessed == {"timeout": 1}
