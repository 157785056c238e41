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

**Memory** (``FLOWSCOPE_MEMORY_PROFILE_WORKFLOWS``): a traced run runs under
``tracemalloc`` and gets two memory profiles attached (format ``alloc``: bytes each
stack allocated during the run; ``held``: bytes still held at its end), its peak and
net bytes, and each of its steps a ``flowscope.memory.growth_bytes`` attribute::

    profiler = SamplingProfiler(workflows=(), memory_workflows=("checkout",), memory_budget=0.02)

tracemalloc slows allocation-heavy Python code 9 to 20 times while it traces (it
records a traceback per allocation) and it has no sampling rate of its own, so the
profiler samples *runs*: a run is traced only while a token bucket has credit, which
refills at ``memory_budget`` seconds per second of the process's CPU time and is spent
by the CPU time of the traced runs (the profiler's snapshots included). Traced CPU time
is then at most ``memory_budget`` of the process's, whatever else runs on the machine,
and that bounds the slowdown: 2 % by default (``bench/profiler_overhead.py --memory``).
A process that mostly waits earns credit slowly, and its traced runs cost it little.
Run sampling was chosen over an allocation
sampling interval because tracemalloc cannot skip allocations, and over a fixed 1-in-N
because the cost of a traced run is its length, not its count. One run is traced at
a time, and none while the application runs tracemalloc itself; a trace longer than
``memory_max_trace_s`` is abandoned (the run gets no memory profile).

tracemalloc keeps only the blocks still allocated, so "allocated" is measured by
snapshots: whenever the traced bytes rise by a quarter (at least 256 KiB) since the
last snapshot (checked at every sampler tick and at every step's end) and at the
run's end, each stack's growth since the previous snapshot is added to its
allocated bytes. A buffer allocated and freed between two looks is not seen, so
``alloc`` is a lower bound of what the run allocated, weighted towards what it held
at its high points. The traced bytes are the process's: other threads' allocations
while a run is traced count in its peak and in its steps' growth.
"""

from __future__ import annotations

import ast
import linecache
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterable
from types import CodeType

from ..profiles import FORMAT_ALLOC, FORMAT_HELD, Profile

MAX_DEPTH = 128
#: Frames tracemalloc keeps per allocation: deeper stacks lose their root side (a ``[truncated]`` root frame).
MEMORY_FRAMES = 32
#: A snapshot is taken when the traced bytes rise by this fraction (and at least MIN_RISE) since the last one.
RISE_FRACTION, MIN_RISE = 0.25, 256 * 1024
#: Snapshots per traced run, the last one at its end included.
MAX_SNAPSHOTS = 16
#: Source files parsed for function names (each once); past it, frames are named by file and line.
MAX_SOURCE_FILES, MAX_SOURCE_BYTES = 2000, 2_000_000

#: tracemalloc is one per process: one profiler traces at a time
_TRACE_LOCK = threading.Lock()
_OWN_FILES = frozenset({__file__, tracemalloc.__file__})


class _MemRun:
    """The traced run: its stacks' bytes at the last snapshot, and their growth summed over snapshots."""

    __slots__ = ("abandoned", "alloc", "key", "last", "next_level", "snapshots", "t0", "wall0")

    def __init__(self, key: str, t0: float, wall0: float):
        self.key, self.t0, self.wall0 = key, t0, wall0
        self.last: dict[tuple[tuple[str, int], ...], int] = {}
        self.alloc: dict[tuple[tuple[str, int], ...], int] = {}
        self.next_level = MIN_RISE
        self.snapshots = 0
        self.abandoned = False


class SamplingProfiler:
    def __init__(self, hz: float = 100.0, workflows: tuple[str, ...] = ("*",), max_stacks: int = 5000, *,
                 memory_workflows: tuple[str, ...] = (), memory_budget: float = 0.02,
                 memory_burst_s: float = 0.05, memory_max_trace_s: float = 10.0,
                 clock: Callable[[], float] = time.process_time, wall_clock: Callable[[], float] = time.monotonic):
        if not hz > 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        if not 0 <= memory_budget <= 1:
            raise ValueError(f"memory_budget must be a fraction of time in [0, 1] (0: off), got {memory_budget}")
        self.hz = hz
        self.workflows = frozenset(workflows)
        self.max_stacks = max_stacks
        #: workflows whose runs may be traced by tracemalloc (``*``: all), sampled by ``memory_budget``
        self.memory_workflows = frozenset(memory_workflows)
        self.memory_budget = memory_budget
        self.memory_burst_s = memory_burst_s
        self.memory_max_trace_s = memory_max_trace_s
        self._clock = clock
        self._wall = wall_clock
        self._credit = memory_burst_s  # the first run of a memory workflow is traced
        self._refilled = clock()
        self._mem: _MemRun | None = None
        self._mem_lock = threading.Lock()
        self._names_by_line = _FunctionIndex()
        #: runs traced for memory, and runs of memory workflows left untraced by the budget or a busy tracemalloc
        self.memory_traced = self.memory_skipped = 0
        #: what traced runs cost, on ``clock`` (CPU seconds by default), snapshots and folding included
        self.memory_traced_s = 0.0
        self._lock = threading.Lock()
        #: thread id -> [(run key, Counter of folded stacks, start time)], the last one receives the samples
        self._active: dict[int, list[tuple[str, Counter[str], float]]] = {}
        self._names: dict[CodeType, str] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = False
        self.samples = 0

    def wants(self, workflow: str) -> bool:
        return self.wants_cpu(workflow) or self.wants_memory(workflow)

    def wants_cpu(self, workflow: str) -> bool:
        return "*" in self.workflows or workflow in self.workflows

    def wants_memory(self, workflow: str) -> bool:
        return self.memory_budget > 0 and ("*" in self.memory_workflows or workflow in self.memory_workflows)

    def start_run(self, key: str, workflow: str | None = None) -> bool:
        """Sample the calling thread for run ``key`` until :meth:`stop_run` (or :meth:`finish_run`).

        With ``workflow``, CPU sampling only if it is a CPU workflow, and tracemalloc too if it is a memory
        workflow and the budget has credit: returns whether the run is traced for memory.
        """
        with self._lock:
            if workflow is None or self.wants_cpu(workflow):
                self._active.setdefault(threading.get_ident(), []).append((key, Counter(), time.perf_counter()))
            traced = workflow is not None and self.wants_memory(workflow) and self._start_memory(key)
            if self._active or traced:
                self._ensure_thread()
        return traced

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._wake.clear()
            self._thread = threading.Thread(target=self._run, name="flowscope-profiler", daemon=True)
            self._thread.start()

    def finish_run(self, key: str, workflow: str) -> list[Profile]:
        """Stop run ``key``: its CPU profile (if sampled) and its ``alloc`` and ``held`` profiles (if traced)."""
        out = []
        if self.wants_cpu(workflow):
            cpu = self.profile_for(workflow, key, *self.stop_run(key))
            if cpu is not None:
                out.append(cpu)
        if self.wants_memory(workflow):
            out += self._finish_memory(key, workflow)
        return out

    # -- memory ---------------------------------------------------------------------------------

    def _start_memory(self, key: str) -> bool:
        now = self._clock()
        with self._mem_lock:
            self._credit = min(self.memory_burst_s, self._credit + (now - self._refilled) * self.memory_budget)
            self._refilled = now
            if self._mem is not None or self._credit <= 0:
                self.memory_skipped += 1
                return False
            with _TRACE_LOCK:
                if tracemalloc.is_tracing():  # another profiler, or the application itself
                    self.memory_skipped += 1
                    return False
                tracemalloc.start(MEMORY_FRAMES)
            self._mem = _MemRun(key, now, self._wall())
            self.memory_traced += 1
            return True

    def memory_now(self, key: str | None = None) -> int | None:
        """Bytes traced now, while a run (``key``: that run) is traced (a step's start); None otherwise."""
        run = self._mem
        if run is None or run.abandoned or (key is not None and run.key != key):
            return None
        return tracemalloc.get_traced_memory()[0]

    def step_growth(self, start_bytes: int, key: str | None = None) -> int | None:
        """Bytes traced now less ``start_bytes`` (a step's end), while the run (``key``: that run) that was traced at
        the step's start still is; takes a snapshot if memory rose enough."""
        run = self._mem
        if run is None or run.abandoned or (key is not None and run.key != key):
            return None
        now = tracemalloc.get_traced_memory()[0]
        if self._mem is not run:  # finished or abandoned meanwhile (``_mem`` is cleared before tracemalloc stops)
            return None
        if now >= run.next_level:
            self._observe_if_rising(run)
        return now - start_bytes

    def _observe_if_rising(self, run: _MemRun) -> None:
        with self._mem_lock:
            if self._mem is run and not run.abandoned and run.snapshots < MAX_SNAPSHOTS - 1 \
                    and tracemalloc.get_traced_memory()[0] >= run.next_level:
                self._observe(run)

    def _observe(self, run: _MemRun) -> None:
        """One snapshot (under ``_mem_lock``): each stack's growth since the last one counts as allocated."""
        current = stack_bytes(_raw_traces(tracemalloc.take_snapshot()))
        alloc, last = run.alloc, run.last
        for tb, n in current.items():
            grew = n - last.get(tb, 0)
            if grew > 0:
                alloc[tb] = alloc.get(tb, 0) + grew
        level = sum(current.values())
        run.last, run.snapshots = current, run.snapshots + 1
        run.next_level = level + max(MIN_RISE, int(level * RISE_FRACTION))

    def _finish_memory(self, key: str, workflow: str) -> list[Profile]:
        with self._mem_lock:
            run = self._mem
            if run is None or run.key != key:
                return []
            try:
                if run.abandoned:
                    return []
                if not tracemalloc.is_tracing():  # the application stopped it under the run: no profile, no raise
                    self._spend(run)
                    return []
                _, peak = tracemalloc.get_traced_memory()  # before the snapshot's own work adds to it
                self._observe(run)
            finally:
                self._mem = None
                if not run.abandoned:
                    tracemalloc.stop()
            name = self._names_by_line.name
            folded: dict[tuple[tuple[str, int], ...], str] = {}

            def stacks(by_tb: dict[tuple[tuple[str, int], ...], int]) -> dict[str, int]:
                out: dict[str, int] = {}
                for tb, n in by_tb.items():
                    f = folded.get(tb)
                    if f is None:
                        f = folded[tb] = fold(tb, name)
                    out[f] = out.get(f, 0) + n
                return out

            held = stacks(run.last)
            alloc = stacks(run.alloc)
            net = sum(held.values())
            self._spend(run)
        # an empty side is left out (the profiles endpoint refuses one); the other still carries peak and net
        return [Profile(workflow, {}, key, stacks, format=fmt, peak_bytes=peak, net_bytes=net)
                for fmt, stacks in ((FORMAT_ALLOC, alloc), (FORMAT_HELD, held)) if stacks]

    def _spend(self, run: _MemRun) -> None:
        cost = self._clock() - run.t0
        self._credit -= cost
        self.memory_traced_s += cost

    def _memory_tick(self) -> None:
        run = self._mem
        if run is None or run.abandoned:
            return
        if self._wall() - run.wall0 > self.memory_max_trace_s:
            with self._mem_lock:
                if self._mem is run and not run.abandoned:
                    run.abandoned = True  # its finish gives no profile; the budget pays what it cost
                    self._mem = None  # a run never completed must not keep every later run from being traced
                    tracemalloc.stop()
                    self._spend(run)
            return
        if tracemalloc.get_traced_memory()[0] >= run.next_level:
            self._observe_if_rising(run)

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
                if not self._active and self._mem is None:
                    self._thread = None
                    return
            if self._active:
                self._sample()
            if self._mem is not None:
                self._memory_tick()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()


_Traceback = tuple[tuple[str, int], ...]


def _raw_traces(snapshot: tracemalloc.Snapshot) -> Iterable[tuple[int, int, _Traceback, int]]:
    """The snapshot's traces as tracemalloc keeps them: the Trace objects of its public API cost 5x as much."""
    raw = getattr(snapshot.traces, "_traces", None)
    if isinstance(raw, list):
        return raw
    return [(t.domain, t.size, tuple((f.filename, f.lineno) for f in reversed(t.traceback)),
             t.traceback.total_nframe or len(t.traceback)) for t in snapshot.traces]


def stack_bytes(raw_traces: Iterable[tuple[int, int, _Traceback, int]]) -> dict[_Traceback, int]:
    """Bytes per traceback (root first, with a ``("[truncated]", 0)`` root past MEMORY_FRAMES) of tracemalloc's
    raw traces ``(domain, size, frames most recent first, total frames)``, the profiler's own left out."""
    by_raw: dict[tuple[_Traceback, int], int] = {}
    for _domain, size, frames, total in raw_traces:
        k = (frames, total)
        by_raw[k] = by_raw.get(k, 0) + size
    out: dict[_Traceback, int] = {}
    for (frames, total), n in by_raw.items():
        if any(f[0] in _OWN_FILES for f in frames):
            continue
        tb = frames[::-1] if total <= len(frames) else (("[truncated]", 0), *frames[::-1])
        out[tb] = out.get(tb, 0) + n
    return out


def fold(tb: _Traceback, name: Callable[[str, int], str]) -> str:
    """A traceback (root first) as a folded stack of ``module:function`` frames.

    A line holds both a call and a comprehension or lambda (``return [f(x) for x in xs]``): the caller's frame
    on it resolves to the comprehension too, so a frame named as its callee, in the same file, is named as the
    function around the comprehension (one cannot recurse into itself).
    """
    names = [f[0] if f[0] == "[truncated]" else name(f[0], f[1]) for f in tb]
    for i in range(len(names) - 2, -1, -1):
        if names[i] == names[i + 1] and names[i].endswith(">") and tb[i][0] == tb[i + 1][0]:
            head, sep, _ = names[i].rpartition(".<locals>.")
            names[i] = head if sep else names[i].split(":", 1)[0] + ":<module>"
    return ";".join(names)


class _FunctionIndex:
    """``module:qualname`` of a (file, line), as the CPU sampler names a frame: tracemalloc gives only the line.

    Each source file is parsed once (``ast``) into its functions' line ranges; a line outside every function is
    ``module:<module>``, a file that cannot be read or parsed gives ``module:line``.
    """

    def __init__(self) -> None:
        self._defs: dict[str, list[tuple[int, int, str]] | None] = {}
        self._cache: dict[tuple[str, int], str] = {}

    def name(self, filename: str, lineno: int) -> str:
        key = (filename, lineno)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        mod = os.path.splitext(os.path.basename(filename))[0]
        defs = self._defs.get(filename, ()) if filename in self._defs else self._parse(filename)
        best: tuple[int, int, str] | None = None
        for d in defs or ():
            if d[0] <= lineno <= d[1] and (best is None or d[0] >= best[0]):
                best = d
        if best is not None:
            qual = best[2]
        else:
            qual = "<module>" if defs is not None else str(lineno)
        out = f"{mod}:{qual}".replace(";", ":").replace(" ", "_")
        if len(self._cache) < 200_000:
            self._cache[key] = out
        return out

    def _parse(self, filename: str) -> list[tuple[int, int, str]] | None:
        defs: list[tuple[int, int, str]] | None = None
        if len(self._defs) < MAX_SOURCE_FILES:
            try:
                src = "".join(linecache.getlines(filename))
                if src and len(src) <= MAX_SOURCE_BYTES:
                    defs = _function_ranges(ast.parse(src))
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                defs = None
            self._defs[filename] = defs
        return defs


#: Nodes that are code objects of their own, with the name CPython gives them (3.11: comprehensions too).
_ANON = {ast.Lambda: "<lambda>", ast.GeneratorExp: "<genexpr>"}
if sys.version_info < (3, 12):  # PEP 709 inlines list, set and dict comprehensions from 3.12
    _ANON |= {ast.ListComp: "<listcomp>", ast.SetComp: "<setcomp>", ast.DictComp: "<dictcomp>"}


def _function_ranges(tree: ast.AST) -> list[tuple[int, int, str]]:
    """(first line, last line, qualname) of every function, lambda and comprehension, iteratively."""
    out: list[tuple[int, int, str]] = []
    work: list[tuple[ast.AST, str]] = [(tree, "")]
    while work:
        node, prefix = work.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = prefix + child.name
                out.append((child.lineno, child.end_lineno or child.lineno, q))
                work.append((child, q + ".<locals>."))
            elif isinstance(child, ast.ClassDef):
                work.append((child, prefix + child.name + "."))
            elif type(child) in _ANON:
                q = prefix + _ANON[type(child)]
                out.append((child.lineno, child.end_lineno or child.lineno, q))  # type: ignore[attr-defined]
                work.append((child, q + ".<locals>."))
            else:
                work.append((child, prefix))
    return out
