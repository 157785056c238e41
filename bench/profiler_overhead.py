"""Overhead of the SDK's sampling profiler on a CPU-bound workload (target: < 2 % at 100 Hz), and of its
memory profiler on an allocation-heavy one (``--memory``; target: < 5 %).

The same workload (recursive calls, JSON encoding, sorting: a deep and varied
Python stack) runs inside a workflow run with the profiler off and on,
alternating rounds so drift in the machine's speed hits both alike. Reported:
the median slowdown in process CPU time (the workload's and the sampler's: on one
core, what the sampler burns is taken from the workload), the same in wall time,
and the samples taken.

    .venv/bin/python bench/profiler_overhead.py [--hz 100] [--rounds 12] [--seconds 1.0]

``--memory``: short workflow runs (a few ms each, like requests) that build dicts, lists and
strings and serialise them, with tracemalloc switched on for the runs the memory budget admits
(``--budget``, default 0.02 of wall time), against the same runs with no profiler. Also printed:
the slowdown of a run that *is* traced (budget 1: every run), which is why runs are sampled.
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


def alloc_unit() -> int:
    """Allocation-heavy: thousands of small dicts, lists and strings, serialised and parsed back."""
    rows = [{"id": i, "name": f"customer-{i}", "tags": [str(i % 7), "x" * (i % 40)], "total": i * 1.5}
            for i in range(300)]
    back = json.loads(json.dumps(rows))
    index = {r["name"]: r for r in back}
    return len(index)


def alloc_run(tracer: WorkflowTracer, units: int) -> None:
    with tracer.workflow("alloc_heavy"), tracer.step("api", "handler", "build"):
        for _ in range(units):
            alloc_unit()


def timed_runs(tracer: WorkflowTracer, runs: int, units: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(runs):
        alloc_run(tracer, units)
    return time.perf_counter() - t0, time.process_time() - c0


def memory_main(a: argparse.Namespace) -> None:
    ex = build(load_config({"run_store": False}, environ={}))
    sink = InProcessSink(ex.pipeline)
    off = WorkflowTracer(sink, profiler=False)
    # The budget is a share of the process's CPU time; this process also runs the rounds without the profiler
    # (and the always-traced runs), whose CPU time would earn it credit: its clock counts the profiled rounds only.
    elsewhere = [0.0]
    prof = SamplingProfiler(hz=a.hz, workflows=(), memory_workflows=("*",), memory_budget=a.budget,
                            clock=lambda: time.process_time() - elsewhere[0])
    on = WorkflowTracer(sink, profiler=prof)
    every = SamplingProfiler(hz=a.hz, workflows=(), memory_workflows=("*",), memory_budget=1.0,
                             memory_burst_s=1e9)
    traced = WorkflowTracer(sink, profiler=every)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.05:  # units per ~5 ms run
        alloc_unit()
        n += 1
    units = max(1, n // 10)
    t0 = time.perf_counter()
    alloc_run(off, units)
    run_s = time.perf_counter() - t0
    runs = max(1, int(a.seconds / run_s))
    for tr in (off, traced, on):  # warm: imports, caches, the profiler's source index
        cpu_s = timed_runs(tr, max(1, runs // 10), units)[1]
        elsewhere[0] += cpu_s if tr is not on else 0.0
    t_off, t_on = [], []
    traced0, skipped0, spent0 = prof.memory_traced, prof.memory_skipped, prof.memory_traced_s
    for r in range(a.rounds):
        pair = [(off, t_off), (on, t_on)] if r % 2 == 0 else [(on, t_on), (off, t_off)]
        for tracer, out in pair:
            out.append(timed_runs(tracer, runs, units))
            if tracer is off:
                elsewhere[0] += out[-1][1]
    n_traced, n_skipped = prof.memory_traced - traced0, prof.memory_skipped - skipped0
    spent = prof.memory_traced_s - spent0
    t_every = [timed_runs(traced, max(1, runs // 20), units) for _ in range(3)]
    cpu = [b[1] / a_[1] - 1 for a_, b in zip(t_off, t_on)]
    wall = [b[0] / a_[0] - 1 for a_, b in zip(t_off, t_on)]
    med_off = statistics.median(t[1] for t in t_off)
    per_run_off = med_off / runs
    per_run_every = statistics.median(t[1] for t in t_every) / max(1, runs // 20)
    print(f"memory workload: {runs} runs of {units} units ≈ {per_run_off * 1000:.1f} ms CPU each per round, "
          f"{a.rounds} rounds, budget {a.budget:g} of CPU time, {'one core' if a.cores == 1 else 'two cores'}")
    on_cpu = sum(t[1] for t in t_on)
    slow = per_run_every / per_run_off
    print(f"runs traced in the measured rounds: {n_traced} of {n_traced + n_skipped} "
          f"({n_traced / max(1, n_traced + n_skipped) * 100:.2f} %), costing {spent:.3f} s CPU "
          f"= {spent / on_cpu * 100:.2f} % of the profiled rounds' CPU time")
    print(f"a traced run (tracemalloc on, {every.memory_traced} runs): {slow:.1f}x the CPU time of an untraced one"
          f" → expected slowdown {spent * (1 - 1 / slow) / (on_cpu - spent * (1 - 1 / slow)) * 100:.2f} %")
    total = sum(t[1] for t in t_on) / sum(t[1] for t in t_off) - 1
    # a traced run's cost lands in one round: the total over all rounds is the average, the median the typical
    print(f"slowdown, CPU time: all rounds {total * 100:+.2f} % · target < 5 % · median of paired rounds "
          f"{statistics.median(cpu) * 100:+.2f} % (min {min(cpu) * 100:+.2f} %, max {max(cpu) * 100:+.2f} %)")
    print(f"slowdown, wall time: median {statistics.median(wall) * 100:+.2f} % "
          f"(min {min(wall) * 100:+.2f} %, max {max(wall) * 100:+.2f} %: this VM's noise)")
    ex.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hz", type=float, default=100.0)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    ap.add_argument("--cores", type=int, choices=(1, 2), default=1,
                    help="1: workload and sampler share one core (the worst case); 2: the sampler may use the other")
    ap.add_argument("--memory", action="store_true", help="the memory profiler on an allocation-heavy workload")
    ap.add_argument("--budget", type=float, default=0.02, help="--memory: share of wall time traced")
    a = ap.parse_args()
    if a.cores == 1:
        pin(0)
    if a.memory:
        memory_main(a)
        return
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
