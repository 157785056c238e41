"""One sink protocol: the Loki pusher, the run store and any extra sink take what the pipeline hands on,
the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from exporter import conventions as c
from exporter.model import Span
from exporter.profiles import Profile
from exporter.sdk import ErrorLogger, WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from exporter.sinks import FastSink, Sink

ROOT = Path(__file__).resolve().parent.parent


class ListSink:
    """An extra sink that keeps what it is given (a forwarder would send it on): it subclasses nothing."""

    def __init__(self, close_ok: bool = True):
        self.batches: list[list] = []
        self.errors: list = []
        self.profiles: list = []
        self.closes: list[bool] = []
        self.close_ok = close_ok

    def spans(self, batch):
        self.batches.append(list(batch))

    def error(self, rec):
        self.errors.append(rec)

    def profile(self, profile):
        self.profiles.append(profile)

    def flush(self, timeout_s=10.0):
        return True

    def close(self, timeout_s=10.0, wait=True):
        self.closes.append(wait)
        return self.close_ok

    def operations(self) -> list[str]:
        return [s.operation for b in self.batches for s in b]


class FastListSink(ListSink):
    """An extra sink that also takes the SDK's fast-path steps, as the run store does."""

    def __init__(self):
        super().__init__()
        self.steps: list[tuple] = []

    def fast(self, step):
        self.steps.append(step)


def test_loki_and_the_run_store_are_sinks_and_only_the_store_takes_fast_steps(make_exporter):
    ex = make_exporter(loki_url="http://127.0.0.1:9", loki_retry_deadline_s=1)
    assert isinstance(ex.loki, Sink) and not isinstance(ex.loki, FastSink)
    assert isinstance(ex.recorder, FastSink)
    assert ex.pipeline.sinks == [ex.loki, ex.recorder] and ex.pipeline.recorder is ex.recorder
    assert not ex.pipeline.metrics_only  # Loki needs Span objects: the SDK builds them
    only_store = make_exporter()
    assert only_store.pipeline.sinks == [only_store.recorder] and only_store.pipeline.metrics_only
    assert make_exporter(run_store=False).pipeline.sinks == []


def test_the_sinks_satisfy_the_protocol_for_mypy_and_a_class_missing_a_method_does_not(tmp_path):
    """Structural typing, checked statically: the same check reports a sink without ``profile``."""
    check = tmp_path / "check_sinks.py"
    check.write_text(textwrap.dedent("""
        from exporter.loki import LokiPusher
        from exporter.sinks import FastSink, Sink
        from exporter.store.recorder import RunRecorder


        class NoProfile:
            def spans(self, batch: object) -> None: ...
            def error(self, rec: object) -> None: ...
            def flush(self, timeout_s: float = 10.0) -> bool: return True
            def close(self, timeout_s: float = 10.0, wait: bool = True) -> bool: return True


        def loki(p: LokiPusher) -> Sink:
            return p


        def store(r: RunRecorder) -> FastSink:
            return r


        def incomplete(n: NoProfile) -> Sink:
            return n  # line 23: the one error expected
        """))
    env = {**os.environ, "MYPYPATH": str(ROOT), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--explicit-package-bases",
                          "--follow-imports=silent", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"),
                          str(check)], check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "check_sinks.py:23:" in errors[0], out.stdout
    assert out.stdout.split("missing following")[1].split()[-1] == "profile", out.stdout  # the member named


def test_an_extra_sink_gets_every_span_error_and_profile_and_is_closed_with_the_rest(make_exporter):
    ex = make_exporter()
    extra = ex.pipeline.add_sink(ListSink())
    assert not ex.pipeline.metrics_only  # a sink without fast(): the SDK now builds a Span for every step
    sdk = InProcessSink(ex.pipeline)
    t = WorkflowTracer(sdk, service="shop")
    with t.workflow("checkout") as run, t.step("api", "orders", "create_order"):
        pass
    ErrorLogger(sdk).log_error("KeyError", "user 7 not found", "api", "users", correlation_id=run.correlation_id)
    sdk.profile(Profile("checkout", {"main": 0.5}, run.correlation_id, {"main;f": 10}, 100.0, time.time_ns()))
    now = time.time_ns()
    ex.pipeline.ingest([Span(trace_id="b" * 32, span_id="1" * 16, workflow="login", layer="api", component="auth",
                             operation="login", start_ns=now - 10**6, end_ns=now, correlation_id="native-1")],
                       "native")
    assert sorted(extra.operations()) == ["checkout", "create_order", "login"]
    assert [e.error_type for e in extra.errors] == ["KeyError"]
    assert [p.correlation_id for p in extra.profiles] == [run.correlation_id]
    assert ex.recorder.flush()  # the run store, beside it, got the same
    stored = ex.runs.get_run(run.correlation_id)
    assert [s.operation for s in stored.spans] == ["checkout", "create_order"]
    assert [e.error_type for e in stored.errors] == ["KeyError"]
    assert ex.runs.get_run("native-1") is not None
    ex.close()
    assert extra.closes == [False, True]  # told to start draining with the others, then waited on


def test_a_second_fast_sink_gets_the_fast_steps_beside_the_run_store(make_exporter):
    ex = make_exporter()
    extra = ex.pipeline.add_sink(FastListSink())
    assert ex.pipeline.metrics_only  # every sink takes fast steps: the SDK still builds no Span for a plain step
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with t.workflow("checkout") as run:
        for _ in range(3):
            with t.step("database", "postgres", "select_cart"):
                pass
    assert [s[3] for s in extra.steps] == ["select_cart"] * 3 and extra.steps[0][0].correlation_id == run.correlation_id
    assert extra.operations() == ["checkout"]  # the root still comes as a Span
    assert ex.recorder.flush()
    assert [s.operation for s in ex.runs.get_run(run.correlation_id).spans] == ["checkout"] + ["select_cart"] * 3


def test_a_plain_callable_is_a_sink_of_spans_and_anything_else_is_refused(make_exporter):
    ex = make_exporter(run_store=False)
    seen: list = []
    ex.pipeline.add_sink(seen.extend)
    now = time.time_ns()
    ex.pipeline.ingest([Span(trace_id="c" * 32, span_id="2" * 16, workflow="w", layer="api", component="x",
                             operation="op", start_ns=now - 1000, end_ns=now, correlation_id="r")], "native")
    assert [s.operation for s in seen] == ["op"]
    with pytest.raises(TypeError, match=r"exporter\.sinks\.Sink"):
        ex.pipeline.add_sink(object())


def test_close_says_whether_every_sink_delivered_in_time(make_exporter):
    ex = make_exporter(run_store=False)
    ex.pipeline.add_sink(ListSink())
    late = ex.pipeline.add_sink(ListSink(close_ok=False))
    assert ex.pipeline.close(1.0) is False and late.closes == [False, True]
    ok = make_exporter(run_store=False)
    ok.pipeline.add_sink(ListSink())
    assert ok.pipeline.close(1.0) is True


def test_loki_gets_steps_and_errors_through_the_protocol(make_exporter):
    from tests.fake_loki import FakeLoki

    loki = FakeLoki()
    try:
        ex = make_exporter(loki_url=loki.url, loki_batch_wait_s=0.05, run_store=False)
        sdk = InProcessSink(ex.pipeline)
        t = WorkflowTracer(sdk, service="shop")
        with t.workflow("checkout") as run, t.step("api", "orders", "create_order"):
            pass
        ErrorLogger(sdk).log_error("KeyError", "token=abc123 missing", "api", "users",
                                   correlation_id=run.correlation_id)
        sdk.profile(Profile("checkout", {"main": 0.5}, run.correlation_id, {"main;f": 10}, 100.0, 0))  # not a line
        assert ex.loki.flush(10)
        lines = [a["line"] for a in loki.wait_accepted(3)]
        assert len(lines) == 3 and sum("create_order" in ln for ln in lines) == 1
        assert any("KeyError" in ln for ln in lines) and not any("abc123" in ln for ln in lines)  # redacted
        assert ex.store.value(c.LOKI_LINES_SENT_TOTAL) == 3
    finally:
        loki.stop()
