"""A sampling CPU profiler for workflow runs: a thread reads ``sys._current_frames()`` at a fixed rate.

Switch it on per workflow (``FLOWSCOPE_PROFILE_WORKFLOWS=checkout,login`` or
``*``; ``FLOWSCOPE_PROFILE_HZ``, default 100) and every profiled run gets its
folded stacks attached: the exporter turns them into
``flowscope_profile_cpu_seconds_total`` and the run page's flame graph.

    tracer = WorkflowTracer(profiler=SamplingProfiler(hz=100, workflows=("checkout",)))
    with tracer.workflow("checkout"):
        ...   # sampled while the run is open on this thread

The sampler reads stacks on the wall clock, like ``py-spy --idle``: time a run's
thread spends blocked in I/O shows under the frame that blocked.
Only threads with an open profiled run are walked, and frame names are cached
per code object, so a sample costs a few microseconds per profiled thread
(``bench/profiler_overhead.py``). A thread that runs several runs at once (asyncio)
attributes its samples to the run that started last there.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from types import CodeType

from ..profiles import Profile

MAX_DEPTH = 128


class SamplingProfiler:
    def __init__(self, hz: float = 100.0, workflows: tuple[str, ...] = ("*",), max_stacks: int = 5000):
        if not hz > 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        self.hz = hz
        self.workflows = frozenset(workflows)
        self.max_stacks = max_stacks
        self._lock = threading.Lock()
        #: thread id -> [(run key, Counter of folded stacks, start time)], the last one receives the samples
        self._active: dict[int, list[tuple[str, Counter[str], float]]] = {}
        self._names: dict[CodeType, str] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = False
        self.samples = 0

    def wants(self, workflow: str) -> bool:
        return "*" in self.workflows or workflow in self.workflows

    def start_run(self, key: str) -> None:
        """Sample the calling thread for run ``key`` until :meth:`stop_run`."""
        tid = threading.get_ident()
        with self._lock:
            self._active.setdefault(tid, []).append((key, Counter(), time.perf_counter()))
            if self._thread is None or not self._thread.is_alive():
                self._stopped = False
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="flowscope-profiler", daemon=True)
                self._thread.start()

    def stop_run(self, key: str) -> tuple[Counter[str], float]:
        """Stop sampling run ``key`` (from any thread): its folded stacks with sample counts, and seconds sampled."""
        with self._lock:
            for tid, runs in list(self._active.items()):
                for i, (k, counts, t0) in enumerate(runs):
                    if k == key:
                        del runs[i]
                        if not runs:
                            del self._active[tid]
                        return counts, time.perf_counter() - t0
        return Counter(), 0.0

    def profile_for(self, workflow: str, correlation_id: str, counts: Counter[str], seconds: float) -> Profile | None:
        """The run's samples as a Profile (self time per leaf, folded stacks), or None with no samples.

        Each sample stands for ``seconds / samples``: the *achieved* rate, not the requested
        one. A busy thread holds the GIL for up to ``sys.getswitchinterval()`` (5 ms) before the
        sampler gets in, so 100 Hz requested is about 65 Hz achieved on CPU-bound code, and
        weighting by the requested rate would under-count its time by a third.
        """
        n = sum(counts.values())
        if not n:
            return None
        rate = n / seconds if seconds > 0 else self.hz
        self_s: dict[str, float] = {}
        for stack, k in counts.items():
            leaf = stack.rsplit(";", 1)[-1]
            self_s[leaf] = self_s.get(leaf, 0.0) + k / rate
        return Profile(workflow, self_s, correlation_id, dict(counts), rate)

    def _name(self, code: CodeType) -> str:
        name = self._names.get(code)
        if name is None:
            mod = os.path.splitext(os.path.basename(code.co_filename))[0]
            name = f"{mod}:{code.co_qualname}".replace(";", ":").replace(" ", "_")
            if len(self._names) < 100_000:
                self._names[code] = name
        return name

    def _sample(self) -> None:
        with self._lock:
            targets = [(tid, runs[-1][1]) for tid, runs in self._active.items() if runs]
        if not targets:
            return
        frames = sys._current_frames()
        name = self._name
        for tid, counts in targets:
            f = frames.get(tid)
            if f is None:
                continue
            stack = []
            depth = 0
            while f is not None and depth < MAX_DEPTH:
                stack.append(name(f.f_code))
                f = f.f_back
                depth += 1
            stack.reverse()
            key = ";".join(stack)
            if key in counts or len(counts) < self.max_stacks:
                counts[key] += 1
            else:
                counts["[other stacks]"] += 1
        self.samples += 1

    def _run(self) -> None:
        # Sleep 1/hz *between* samples rather than keep a fixed schedule: each sample needs the GIL,
        # and handing it over costs the sampled thread far more than the sample itself (~0.3 ms on
        # this VM). On a CPU-bound thread the handover wait stretches the period to ~15 ms, so the
        # sampler backs off exactly when it is most expensive (bench/profiler_overhead.py: 1.8 % at
        # 100 Hz requested, ~65 Hz achieved; a fixed 100 Hz schedule cost 3.0 %).
        interval = 1.0 / self.hz
        while not self._stopped:
            self._wake.wait(interval)
            with self._lock:
                if not self._active:
                    self._thread = None
                    return
            self._sample()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
