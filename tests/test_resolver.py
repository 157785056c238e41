from exporter.model import Span
from exporter.resolver import WorkflowResolver

T = "ab" * 16


def _span(sid, parent=None, wf=None, name="op", start=1):
    return Span(T, sid * 8, wf, "api", "svc", name, start, start + 10, parent_span_id=parent and parent * 8)


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
        s = Span(f"{i:032x}", f"{i + 1:016x}", None, "api", "svc", f"op{i}", 1, 2, parent_span_id="ff" * 8)
        ready += r.resolve([s], now=i)
    assert r.pending_spans <= 10
    assert len(ready) + r.pending_spans == 25
