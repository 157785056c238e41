"""The Span model: built with keywords only, and every decoder's spans as complete as the constructor's."""

import inspect

import orjson
import pytest

from exporter.decode import native, otlp
from exporter.model import Span
from exporter.resolver import WorkflowResolver
from tests.otlp_data import request, span, to_json
from tests.test_types import run_mypy

FIELDS = list(inspect.signature(Span).parameters)


def test_a_span_cannot_be_built_by_position():
    with pytest.raises(TypeError):
        Span("a" * 32, "b" * 16, "checkout", "api", "orders", "POST", 1, 2)  # which one is the component?
    s = Span(trace_id="a" * 32, span_id="b" * 16, workflow="checkout", layer="api", component="orders",
             operation="POST", start_ns=1, end_ns=2)
    assert (s.component, s.operation, s.correlation_id, s.status) == ("orders", "POST", "a" * 32, "ok")


def _rebuilt(s: Span) -> Span:
    """The same span through the keyword constructor."""
    return Span(**{f: getattr(s, f) for f in FIELDS})


def _otlp_spans(encoding: str) -> list[Span]:
    tid = "4bf92f3577b34da6a3ce929d0e0e4736"
    req = request([
        span("GET /orders", trace_id=tid, span_id="00f067aa0ba902b7", kind=2,
             attrs={"http.request.method": "GET", "http.route": "/orders", "enduser.id": "ana",
                    "flowscope.workflow": "orders", "flowscope.state": '{"cart": 3}'}),
        span("SELECT orders", trace_id=tid, span_id="00f067aa0ba902b8", parent="00f067aa0ba902b7", kind=3,
             attrs={"db.system": "postgresql", "db.statement": "SELECT 1"}, error=True, message="boom",
             events=[("exception", {"exception.type": "OperationalError", "exception.message": "gone",
                                    "exception.stacktrace": "Traceback ..."})]),
    ], resource={"deployment.environment": "prod"})
    res = otlp.decode_protobuf(req.SerializeToString()) if encoding == "protobuf" else \
        otlp.decode_json(orjson.dumps(to_json(req)))
    assert not res.rejected
    return res.spans


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_otlp_spans_set_every_slot_as_the_constructor_does(encoding):
    spans = _otlp_spans(encoding)
    assert len(spans) == 2
    for s in spans:
        for slot in Span.__slots__:
            getattr(s, slot)  # an unset slot raises AttributeError
        assert s.to_dict() == _rebuilt(s).to_dict()
    root, child = spans
    assert (root.workflow, root.user is not None, root.state, root.kind) == ("orders", True, {"cart": 3}, "server")
    assert (child.status, child.error_type, child.stack_trace, child.parent_span_id) == (
        "error", "OperationalError", "Traceback ...", root.span_id)


def test_native_spans_match_the_constructor_too():
    res = native.decode({"workflows": [{"correlation_id": "c-1", "workflow_type": "checkout", "status": "failed",
                                        "started_at": 1795000000, "duration_ms": 5, "user": "ana"}],
                         "steps": [{"correlation_id": "c-1", "workflow_type": "checkout", "layer": "database",
                                    "component": "postgres", "operation": "INSERT", "status": "timed_out",
                                    "started_at": 1795000000, "duration_ms": 2, "state": {"order": 7}}]})
    assert not res.rejected and len(res.spans) == 2
    for s in res.spans:
        assert s.to_dict() == _rebuilt(s).to_dict()


def test_a_spans_workflow_may_be_none_and_its_type_says_so(tmp_path):
    """An OTLP span has no workflow until the resolver names it, so ``Span.workflow`` is ``str | None``:
    mypy --strict refuses code that reads it as a ``str`` unchecked, and accepts it once narrowed."""
    root, child = _otlp_spans("protobuf")
    assert child.workflow is None  # decoded without flowscope.workflow
    assert child in WorkflowResolver().resolve([root, child], now=0.0) and child.workflow == "orders"
    probe = tmp_path / "flowscope_workflow_probe.py"
    probe.write_text(
        "from exporter.model import Span\n\n\n"
        "def unchecked(s: Span) -> str:\n"
        "    return s.workflow\n\n\n"
        "def checked(s: Span) -> str:\n"
        "    return s.workflow if s.workflow is not None else 'unknown'\n")
    status, report = run_mypy(str(probe))
    assert status == 1, report
    assert report.count("error:") == 1, report
    assert ':5: error: Incompatible return value type (got "str | None", expected "str")' in report, report
