import pytest

from exporter.decode import native
from exporter.errors import DecodeError

STEP = {"correlation_id": "c-1", "workflow_type": "checkout", "layer": "database", "component": "postgres",
        "operation": "insert_order", "status": "success", "started_at": "2026-11-23T10:00:00.250Z",
        "duration_ms": 12.5, "metadata": {"rows": 1}, "state": {"order_id": 7}}
RUN = {"correlation_id": "c-1", "workflow_type": "checkout", "status": "failed", "started_at": 1795000000,
       "duration_ms": 840, "user": "alice@example.com", "error_type": "CardDeclined", "error_message": "declined"}


def test_steps_and_workflows_decode_into_one_trace():
    res = native.decode({"steps": [STEP], "workflows": [RUN]})
    assert not res.rejected
    step, run = res.spans
    assert (step.workflow, step.layer, step.component, step.operation, step.status) == (
        "checkout", "database", "postgres", "insert_order", "ok")
    assert step.duration_s == pytest.approx(0.0125)
    assert step.start_ns == 1795428000250000000
    assert step.state == {"order_id": 7} and step.attributes == {"rows": 1}
    assert step.trace_id == run.trace_id == native.trace_id_for("c-1")
    # a parentless step hangs off the run envelope; only the envelope ends the run
    assert step.parent_span_id == run.span_id and run.is_root and not step.is_root
    assert (run.is_step, run.status, run.error_type) == (False, "error", "CardDeclined")
    assert run.user != "alice@example.com" and len(run.user) == 16  # hashed, never raw


def test_bare_array_is_steps_and_uuid_correlation_is_the_trace_id():
    cid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    res = native.decode([{**STEP, "correlation_id": cid, "ended_at": "2026-11-23T10:00:01.250Z",
                          "duration_ms": None}])
    assert res.spans[0].trace_id == cid.replace("-", "")
    assert res.spans[0].duration_s == pytest.approx(1.0)


@pytest.mark.parametrize("change,reason,text", [
    ({"layer": "mainframe"}, "invalid_value", "layer must be one of"),
    ({"layer": None}, "missing_field", "layer is required"),
    ({"workflow_type": 5}, "invalid_value", "workflow_type must be a string"),
    ({"started_at": "yesterday"}, "invalid_time", "not ISO 8601"),
    ({"started_at": "2026-11-23T10:00:00"}, "invalid_time", "needs a timezone"),
    ({"duration_ms": -1}, "invalid_value", "duration_ms must be a number from 0"),
    ({"duration_ms": 1e308}, "invalid_value", "duration_ms must be a number from 0"),
    ({"started_at": 1e300}, "invalid_time", "epoch seconds between"),
    ({"started_at": "0107-12-04T16:23:43Z"}, "invalid_time", "after 1970"),
    ({"duration_ms": None}, "missing_field", "duration_ms or ended_at"),
    ({"status": "meh"}, "invalid_value", "status must be one of"),
    ({"trace_id": "XYZ"}, "invalid_trace_id", "trace_id"),
    ({"span_id": "123"}, "invalid_span_id", "span_id"),
    ({"metadata": [1]}, "invalid_value", "metadata must be an object"),
    ({"component": "x" * 201}, "invalid_value", "longer than 200"),
])
def test_each_bad_step_is_rejected_with_its_reason_and_the_rest_kept(change, reason, text):
    res = native.decode({"steps": [STEP, {**STEP, **change}, STEP]})
    assert len(res.spans) == 2
    (rej,) = res.rejected
    assert (rej.index, rej.reason) == (1, reason)
    assert text in rej.detail and rej.detail.startswith("steps[1]:")


@pytest.mark.parametrize("doc,text", [
    ("a string", "body must be an object"),
    ({"steps": {}}, "steps must be an array"),
    ({"spans": []}, "unknown top-level field"),
])
def test_unreadable_batch_raises(doc, text):
    with pytest.raises(DecodeError, match=text):
        native.decode(doc)


def test_errors_records_decode_and_bad_ones_are_refused_with_reasons():
    good = {"error_type": "PaymentTimeout", "message": "gateway timed out after 5000 ms", "layer": "external",
            "component": "payments", "workflow_type": "checkout", "correlation_id": "c-1", "time": 1795000000}
    res = native.decode({"errors": [good, {**good, "layer": "moon"}, {**good, "message": None}, 7]})
    (e,) = res.errors
    assert (e.error_type, e.category, e.workflow, e.correlation_id) == ("PaymentTimeout", "timeout", "checkout", "c-1")
    assert [(r.index, r.reason) for r in res.rejected] == [(1, "invalid_value"), (2, "missing_field"),
                                                           (3, "malformed_span")]


def test_kind_events_and_links_are_checked_and_kept():
    step = {**STEP, "kind": "Consumer",
            "events": [{"name": "retry", "time": 1795000000.5, "attributes": {"attempt": 2}},
                       {"name": "odd time", "time": "yesterday"}],
            "links": [{"trace_id": "A" * 32, "span_id": "b" * 16, "attributes": {"x": 1}},
                      {"trace_id": "nothex", "span_id": "b" * 16}, {"trace_id": "0" * 32, "span_id": "b" * 16}]}
    res = native.decode({"steps": [step], "workflows": [{**RUN, "kind": "quantum"}]})
    assert not res.rejected
    s, run = res.spans
    assert (s.kind, run.kind) == ("consumer", "quantum")  # an unknown kind is kept as given
    assert s.events == [{"name": "retry", "time_ns": 1795000000500000000, "attributes": {"attempt": 2}},
                        {"name": "odd time", "time_ns": None, "attributes": {}}]
    assert s.links == [{"trace_id": "a" * 32, "span_id": "b" * 16, "attributes": {"x": 1}}]
    assert res.truncated == 3  # the bad time and the two bad links, each left out and counted
    assert run.events is None and run.links is None


@pytest.mark.parametrize("field,value", [("kind", 5), ("events", {}), ("events", [{"time": 1}]),
                                         ("events", ["x"]), ("links", [3]), ("links", [{"trace_id": "a" * 32,
                                                                                         "span_id": "b" * 16,
                                                                                         "attributes": []}])])
def test_malformed_details_refuse_the_record_with_a_reason(field, value):
    res = native.decode({"steps": [{**STEP, field: value}]})
    assert not res.spans and res.rejected[0].reason in ("invalid_value", "missing_field")
