"""The SDK's fast path folds plain steps in batches (Pipeline.fast_step): what another thread's fold in progress,
a sink given to the constructor and the health page must still see.

A thread that folds the queue takes the steps under the metric store's lock and hands them to the fast sinks (the
run store) after letting it go. A thread that ends its run, or flushes, meanwhile must wait for that hand-over, or
its root (or its flush) would overtake its own steps. The sinks below stand for a thread preempted there (the GIL
switches every 5 ms) or a slow hand-over (the writer's condition lock contended).
"""

from __future__ import annotations

import threading

from exporter import conventions as c
from exporter.metrics import MetricStore
from exporter.pipeline import FAST_FOLD, Pipeline
from exporter.sdk.sinks import InProcessSink
from exporter.sdk.tracer import WorkflowTracer


class _Gate:
    """Holds back the first batch that a thread other than the test's hands over, until ``release`` is set."""

    def __init__(self) -> None:
        self.main = threading.current_thread()
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._first = True

    def maybe_wait(self) -> None:
        if threading.current_thread() is self.main:
            return
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.entered.set()
            self.release.wait(10)


class _OrderSink:
    """A FastSink (with ``fast_many``) that records what it is handed, in order."""

    def __init__(self, gate: _Gate) -> None:
        self.gate = gate
        self.got: list[tuple[str, str | None, str]] = []  # (kind, correlation_id, span_id)

    def fast(self, step):
        self.fast_many([step])

    def fast_many(self, steps):
        self.gate.maybe_wait()
        self.got += [("step", s[0].correlation_id, s[6]) for s in steps]

    def spans(self, batch):
        self.got += [("root" if not s.parent_span_id else "span", s.correlation_id, s.span_id) for s in batch]

    def error(self, rec):
        pass

    def profile(self, profile):
        pass

    def flush(self, timeout_s=10.0):
        return True

    def close(self, timeout_s=10.0, wait=True):
        return True


def _fold_elsewhere(tracer: WorkflowTracer) -> threading.Thread:
    """Another thread that steps until its step fills the fast queue, so it folds (and hands over) our steps."""

    def work() -> None:
        with tracer.workflow("other"):
            for _ in range(FAST_FOLD):
                with tracer.step("cache", "redis", "GET cart"):
                    pass

    t = threading.Thread(target=work, name="folder", daemon=True)
    t.start()
    return t


def _end_a_run_while_another_thread_hands_over(tracer: WorkflowTracer, gate: _Gate):
    """A run of three plain steps that ends while another thread, whose step filled the queue, is handing those
    steps over (held at ``gate`` until 0.2 s after it got there). Returns the run and that thread."""
    t = None
    try:
        with tracer.workflow("checkout") as run:
            for _ in range(3):
                with tracer.step("database", "postgres", "SELECT orders"):
                    pass
            t = _fold_elsewhere(tracer)
            assert gate.entered.wait(10), "no other thread folded"
            threading.Timer(0.2, gate.release.set).start()  # the other hand-over ends while this run ends
    except BaseException:
        gate.release.set()
        if t is not None:
            t.join(10)
        raise
    return run, t


def test_a_runs_steps_reach_the_sinks_before_its_root_when_another_thread_is_folding_them():
    """A run's steps reach the sinks before its root, even while another thread is handing them over."""
    gate = _Gate()
    sink = _OrderSink(gate)
    p = Pipeline(MetricStore())
    p.add_sink(sink)
    tracer = WorkflowTracer(InProcessSink(p), service="shop", profiler=False)
    run, t = _end_a_run_while_another_thread_hands_over(tracer, gate)  # its root was handed over at its end
    t.join(10)
    cid = run.correlation_id
    mine = [i for i, (kind, rc, _) in enumerate(sink.got) if rc == cid]
    kinds = [sink.got[i][0] for i in mine]
    assert kinds.count("step") == 3 and kinds.count("root") == 1
    assert kinds[-1] == "root", f"the run's root reached the sink before its steps: {kinds}"


def test_flush_after_a_run_ends_stores_its_steps_while_another_thread_is_folding_them(ex, monkeypatch):
    """``flush()`` after the run's end returns once the run's steps are in the run store, even while another thread
    holds them (it used to return True with only the root stored)."""
    tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop", profiler=False)
    gate = _Gate()
    p = ex.pipeline
    real = p._fast_many
    assert real is not None

    def gated(steps):
        gate.maybe_wait()
        real(steps)

    monkeypatch.setattr(p, "_fast_many", gated)
    run, t = _end_a_run_while_another_thread_hands_over(tracer, gate)
    try:
        assert tracer._sink.flush(10)
        spans = ex.runs.get_run(run.correlation_id).spans
        assert [s.operation for s in spans].count("SELECT orders") == 3, \
            f"flush() returned True with {len(spans)} of the run's 4 spans stored"
    finally:
        gate.release.set()
        if t is not None:
            t.join(10)


def test_a_fast_sink_given_to_the_constructor_gets_the_fast_path_steps():
    """A FastSink passed as ``Pipeline(store, sinks=[...])`` gets the plain steps (they were lost to it)."""
    gate = _Gate()
    sink = _OrderSink(gate)
    p = Pipeline(MetricStore(), sinks=[sink])
    tracer = WorkflowTracer(InProcessSink(p), service="shop", profiler=False)
    with tracer.workflow("checkout") as run, tracer.step("database", "postgres", "SELECT orders"):
        pass
    kinds = [kind for kind, cid, _ in sink.got if cid == run.correlation_id]
    assert kinds == ["step", "root"], kinds


def test_health_counts_a_step_series_before_any_scrape_without_run_store(make_exporter):
    """``/api/v1/health``'s series per metric include the steps still queued (it read the families directly)."""
    ex = make_exporter(run_store=False)
    tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop", profiler=False)
    with tracer.workflow("checkout"):
        with tracer.step("database", "postgres", "SELECT orders"):
            pass
        series = ex.health_body()["series"]
    assert series.get(c.STEP_DURATION_SECONDS) == 1, series
