from exporter.model import Span
from exporter.resolver import WorkflowResolver

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
