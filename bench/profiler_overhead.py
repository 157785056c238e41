"""Overhead of the SDK's sampling profiler on a CPU-bound workload (target: < 2 % at 100 Hz).

The same workload (recursive calls, JSON encoding, sorting: a deep and varied
Python stack) runs inside a workflow run with the profiler off and on,
alternating rounds so drift in the machine's speed hits both alike. Reported:
the median slowdown in process CPU time (the workload's and the sampler's: on one
core, what the sampler burns is taken from the workload), the same in wall time,
and the samples taken.

    .venv/bin/python bench/profiler_overhead.py [--hz 100] [--rounds 12] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import pin

from exporter.config import load_config
from exporter.runtime import build
from exporter.sdk import WorkflowTracer
from exporter.sdk.profiler import SamplingProfiler
from exporter.sdk.sinks import InProcessSink


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def unit() -> None:
    fib(18)
    doc = [{"id": i, "name": f"item-{i}", "tags": ["a", "b", str(i % 7)]} for i in range(200)]
    json.loads(json.dumps(doc))
    sorted(doc, key=lambda d: (d["tags"][2], -d["id"]))


def calibrate(seconds: float) -> int:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        unit()
        n += 1
    return n


def timed(tracer: WorkflowTracer, units: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds): CPU time counts the sampler thread's work and is blind to
    the time this VM's neighbours steal, which swings wall time by ±10 % from round to round."""
    t0, c0 = time.perf_counter(), time.process_time()
    with tracer.workflow("cpu_bound"):
        for _ in range(units):
            unit()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hz", type=float, default=100.0)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    ap.add_argument("--cores", type=int, choices=(1, 2), default=1,
                    help="1: workload and sampler share one core (the worst case); 2: the sampler may use the other")
    a = ap.parse_args()
    if a.cores == 1:
        pin(0)
    ex = build(load_config({"run_store": False}, environ={}))
    sink = InProcessSink(ex.pipeline)
    off = WorkflowTracer(sink, profiler=False)
    prof = SamplingProfiler(hz=a.hz, workflows=("*",))
    on = WorkflowTracer(sink, profiler=prof)
    units = calibrate(a.seconds)
    timed(off, units // 4)
    timed(on, units // 4)  # warm both
    t_off, t_on = [], []
    for r in range(a.rounds):
        pair = [(off, t_off), (on, t_on)] if r % 2 == 0 else [(on, t_on), (off, t_off)]
        for tracer, out in pair:
            out.append(timed(tracer, units))
    wall = [b[0] / a_[0] - 1 for a_, b in zip(t_off, t_on)]
    cpu = [b[1] / a_[1] - 1 for a_, b in zip(t_off, t_on)]
    med_off = statistics.median(t[0] for t in t_off)
    med_on = statistics.median(t[0] for t in t_on)
    expected = a.hz * sum(t[0] for t in t_on) + a.rounds + 1
    print(f"workload: {units} units ≈ {med_off:.2f} s per round, {a.rounds} rounds, profiler at {a.hz:g} Hz, "
          f"{'one core' if a.cores == 1 else 'two cores'}")
    print(f"profiler off: median {med_off * 1000:.1f} ms · on: median {med_on * 1000:.1f} ms (wall)")
    print(f"slowdown, CPU time (workload + sampler): median of paired rounds {statistics.median(cpu) * 100:+.2f} % "
          f"(min {min(cpu) * 100:+.2f} %, max {max(cpu) * 100:+.2f} %) · target < 2 %")
    print(f"slowdown, wall time: median {statistics.median(wall) * 100:+.2f} % "
          f"(min {min(wall) * 100:+.2f} %, max {max(wall) * 100:+.2f} %: this VM's noise)")
    print(f"samples taken: {prof.samples} (≈ {prof.samples / expected * 100:.0f} % of {a.hz:g} Hz × run time)")
    ex.close()


if __name__ == "__main__":
    main()
