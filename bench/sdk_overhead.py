"""SDK overhead per traced step, against an OpenTelemetry SDK span, in the same run.

Flowscope: ``with tracer.step(...)`` inside a workflow, aggregation into the
step histogram included (enter, exit, metrics). Two configurations: metrics
only (the in-process default), and with a Loki pusher attached, where every
step also becomes a queued log line.

Baseline: ``tracer.start_as_current_span`` on an OpenTelemetry TracerProvider
with a BatchSpanProcessor and an exporter that does nothing.

    .venv/bin/python bench/sdk_overhead.py [--steps 200000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

from common import pin
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from exporter.config import load_config
from exporter.runtime import build
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink


class NoopExporter(SpanExporter):
    def export(self, spans):
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


def per_step_us(fn, steps: int, rounds: int = 5, clock=time.perf_counter) -> float:
    times = []
    for _ in range(rounds):
        t = clock()
        fn(steps)
        times.append((clock() - t) / steps * 1e6)
    return statistics.median(times)


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200_000, help="steps per round x 10")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args([] if __name__ != "__main__" else None)
    pin(0)
    logging.getLogger("flowscope").setLevel(logging.CRITICAL)  # the Loki case pushes to a closed port on purpose

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NoopExporter(), max_queue_size=2 ** 20,
                                                   max_export_batch_size=512, schedule_delay_millis=1000))
    otel = provider.get_tracer("bench")

    def otel_steps(n):
        with otel.start_as_current_span("checkout"):
            for _ in range(n):
                with otel.start_as_current_span("SELECT orders"):
                    pass

    def steps_into(exporter):
        tracer = WorkflowTracer(InProcessSink(exporter.pipeline), service="bench")

        def run(n):
            with tracer.workflow("checkout"):
                for _ in range(n):
                    with tracer.step("database", "postgres", "SELECT orders"):
                        pass
        return run

    db = f"sqlite:///{tempfile.mkdtemp(prefix='flowscope-bench-sdk-')}/runs.db"
    ex = build(load_config({"series_limit": 100_000, "run_store": False}, environ={}))
    ours = steps_into(ex)
    # Every step also goes to the run store (a tuple on the hot path, a row in the writer thread).
    ex_store = build(load_config({"series_limit": 100_000, "database_url": db, "store_writer": "thread"},
                                 environ={}))
    store_steps = steps_into(ex_store)

    def ours_store(n):  # the writer's work is counted: each round waits until its rows are written
        store_steps(n)
        ex_store.pipeline.recorder.flush(60)
    # The default since issue 13: the rows are written by a writer process; the app pays the hot path and
    # handing the rows over (its CPU time, process_time, until they are written: the writer's own is not the app's).
    ex_proc = build(load_config({"series_limit": 100_000, "database_url": db + "-process"}, environ={}))
    assert ex_proc.pipeline.recorder is not None and ex_proc.pipeline.recorder.writer is not None
    proc_steps = steps_into(ex_proc)

    def ours_proc(n):
        proc_steps(n)
        ex_proc.pipeline.recorder.flush(60)
    # Loki attached: a real pusher to a closed port; lines queue (bounded) and are counted.
    ex_loki = build(load_config({"series_limit": 100_000, "loki_url": "http://127.0.0.1:9", "run_store": False,
                                 "loki_queue_lines": 10_000_000, "loki_batch_wait_s": 3600}, environ={}))
    ours_loki = steps_into(ex_loki)

    # Many short alternating rounds: this VM's speed drifts, so each ratio compares
    # measurements taken moments apart, and the median ratio is reported.
    chunk = max(args.steps // 10, 1000)
    times: dict[str, list] = {"otel": [], "flowscope": [], "flowscope_store": [], "flowscope_loki": [],
                              "otel_cpu": [], "flowscope_process_cpu": []}
    for _ in range(args.rounds):
        times["otel"].append(per_step_us(otel_steps, chunk, rounds=1))
        times["flowscope"].append(per_step_us(ours, chunk, rounds=1))
        times["flowscope_store"].append(per_step_us(ours_store, chunk, rounds=1))
        times["flowscope_loki"].append(per_step_us(ours_loki, chunk, rounds=1))
        times["otel_cpu"].append(per_step_us(otel_steps, chunk, rounds=1, clock=time.process_time))
        times["flowscope_process_cpu"].append(per_step_us(ours_proc, chunk, rounds=1, clock=time.process_time))
    res = {k: statistics.median(v) for k, v in times.items()}

    def ratio_of(key):
        return statistics.median(o / f for o, f in zip(times["otel"], times[key]))

    ratio, ratio_store, ratio_loki = ratio_of("flowscope"), ratio_of("flowscope_store"), ratio_of("flowscope_loki")
    ratio_proc = statistics.median(o / f for o, f in zip(times["otel_cpu"], times["flowscope_process_cpu"]))
    counted = ex.store.value("flowscope_step_duration_seconds_count", {
        "workflow": "checkout", "layer": "database", "component": "postgres", "operation": "SELECT orders",
        "status": "ok"})
    assert counted == args.rounds * chunk, counted
    stored = ex_store.store.value("flowscope_run_store_dropped_total", {"reason": "queue_full"})
    provider.shutdown()
    ex.close()
    ex_store.close()
    ex_proc.close()
    ex_loki.pipeline.loki.close(timeout_s=0.1)
    print("== SDK overhead per traced step (enter + exit + aggregation) ==")
    print(f"  OpenTelemetry span, BatchSpanProcessor, no-op exporter  {res['otel']:6.2f} us   (baseline)")
    print(f"  Flowscope step, metrics only (run store off)            {res['flowscope']:6.2f} us   "
          f"= {ratio:.1f}x cheaper (median of {args.rounds} paired rounds; target >= 8x)")
    print(f"  Flowscope step, metrics + run store, rows written       {res['flowscope_store']:6.2f} us   "
          f"= {ratio_store:.1f}x cheaper (steps dropped by a full store queue: {int(stored or 0)})")
    print(f"  Flowscope step, with the Loki pusher attached           {res['flowscope_loki']:6.2f} us   "
          f"= {ratio_loki:.1f}x cheaper")
    print(f"  app CPU per step (process_time): OpenTelemetry as above {res['otel_cpu']:6.2f} us; Flowscope, run store "
          f"on, rows written by the writer process (the default) {res['flowscope_process_cpu']:6.2f} us = "
          f"{ratio_proc:.1f}x cheaper (target >= 8x)")
    return {**res, "ratio": ratio, "ratio_store": ratio_store, "ratio_loki": ratio_loki, "ratio_process": ratio_proc}


if __name__ == "__main__":
    main()
