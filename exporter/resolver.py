"""Name the workflow of OTLP spans that don't carry ``flowscope.workflow``.

OpenTelemetry SDKs export child spans as they end, usually *before* the root span, and a trace that
crosses services reaches us in one request per service, in any order. A span without a workflow
attribute therefore waits here, bounded in count and time, until its trace's workflow is known.

The rule, in order (README, "Sending data"):

1. a span of the trace with ``flowscope.workflow`` / ``workflow.type`` names it, whichever request it
   comes in, before or after the spans it names;
2. else the trace's root span names it, by its name; the decoder has already given a span named by
   its HTTP method alone its semantic-convention name, ``GET /users/{id}``
   (:func:`exporter.semconv.span_name`). The first of 1 and 2 to arrive names the trace (in one
   batch, 1 goes first); a span with the attribute always keeps its own;
3. else, when ``timeout_s`` passes (or the pending bound forces it out, or at shutdown), the trace
   is named after its earliest local span (the earliest span whose parent did not arrive), and the
   guess is counted by reason (:data:`TIMEOUT`, :data:`PENDING_LIMIT`, :data:`SHUTDOWN`) in
   :attr:`WorkflowResolver.guessed`, which the pipeline folds into
   ``flowscope_workflow_names_guessed_total{reason}``.

A span that arrives after its trace was named (by any of the three) takes that name: the names of
the last ``max_known`` traces are remembered. Waiting spans are counted in
``flowscope_traces_pending_spans``.

**Replicas without trace affinity.** Behind a load balancer that does not route by trace id, a trace's
root may reach another replica, and rule 2 never fires here. With a ``lookup`` (the shared store's
:meth:`~exporter.store.runs.RunQueries.workflows_of_traces`: trace id → its stored run's workflow), a
trace whose root has not come ``lookup_after_s`` after its first span is looked up in the store, before
rule 3 guesses: the root another replica stored names it, so its spans take the root's name within the
trace timeout. Cheap by construction: one query per :meth:`~WorkflowResolver.expire` (the pipeline's
tick, once a second) for all the traces due, at most ``lookup_max`` ids, oldest first; a trace not found
is asked again after as long as it has waited, at most :data:`LOOKUP_MAX_INTERVAL_S`, so it costs a few
queries in its timeout, not one per tick. The query runs on a thread of its own (the pipeline calls
``expire`` under the metric store's lock, which a slow or unreachable database must not hold), and its
answer is applied at the next ``expire``; traces it names are counted in :attr:`WorkflowResolver.named_from_store`.

Example::

    r = WorkflowResolver(timeout_s=30)
    r.resolve([db_span], now=0)           # [] (waits: no name yet)
    r.resolve([root], now=1)              # [root, db_span], both named after root
    r.expire(now=31)                      # what waited 30 s, named by rule 3

    shared = WorkflowResolver(timeout_s=30, lookup=run_store.workflows_of_traces)
    shared.resolve([db_span], now=0)      # [] (its root went to another replica)
    shared.expire(now=2)                  # [] (asks the store for the trace, on the lookup thread)
    shared.expire(now=3)                  # [db_span], named after the root the other replica stored

Pure but for the lookup's thread: the caller passes the time (``now``); not thread-safe (the pipeline
calls it under its lock).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

from .model import Span

log = logging.getLogger("flowscope.resolver")

#: ``reason`` values of the guessed-names counter: why a trace was named without its root or a named span.
TIMEOUT, PENDING_LIMIT, SHUTDOWN = "timeout", "pending_limit", "shutdown"

#: A trace the store did not know is asked again after as long as it has waited, but at most this often.
LOOKUP_MAX_INTERVAL_S = 5.0

#: trace ids → the workflow of each one's stored run (those found; at most ``lookup_max`` ids a call).
TraceLookup = Callable[[list[str]], Mapping[str, str]]


def guess_workflow(spans: list[Span]) -> str:
    """Rule 3: the name of the earliest local span (a span whose parent is not among ``spans``)."""
    ids = {s.span_id for s in spans}
    local_roots = [s for s in spans if s.parent_span_id not in ids] or spans
    return min(local_roots, key=lambda s: s.start_ns).operation


class _LookupThread:
    """Runs a :data:`TraceLookup` on a daemon thread of its own, one call at a time: :meth:`ask` hands it ids
    (refused while a call is running), :meth:`take` returns the last answer once. A call that raises answers
    nothing; the failure is logged (once until a call succeeds again) and counted in ``errors``."""

    def __init__(self, lookup: TraceLookup):
        self.lookup = lookup
        self.errors = 0
        self._cond = threading.Condition()
        self._ids: list[str] | None = None
        self._answer: Mapping[str, str] | None = None
        self._busy = False
        self._closed = False
        self._failing = False
        self._thread: threading.Thread | None = None

    def ask(self, ids: list[str]) -> bool:
        with self._cond:
            if self._busy or self._closed:
                return False
            self._ids, self._busy = ids, True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="flowscope-trace-lookup", daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def take(self) -> Mapping[str, str] | None:
        with self._cond:
            answer, self._answer = self._answer, None
            return answer

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._ids is None and not self._closed:
                    self._cond.wait()
                ids = self._ids
                if self._closed or ids is None:
                    return
                self._ids = None
            answer = self.call(ids)
            with self._cond:
                self._answer, self._busy = answer, False

    def call(self, ids: list[str]) -> Mapping[str, str]:
        try:
            answer = self.lookup(ids)
        except Exception as e:  # noqa: BLE001 - a store that cannot answer leaves rule 3 to name the trace
            self.errors += 1
            if not self._failing:
                log.warning("could not look up the workflows of %d traces in the run store (rule 3 names them "
                            "if it stays down): %s", len(ids), str(e).splitlines()[0][:300] if str(e) else e)
            self._failing = True
            return {}
        if self._failing:
            log.info("the run store answers trace lookups again")
        self._failing = False
        return answer


class WorkflowResolver:
    def __init__(self, timeout_s: float = 30.0, max_pending_spans: int = 100_000, max_known: int = 100_000,
                 lookup: TraceLookup | None = None, lookup_after_s: float = 2.0, lookup_max: int = 1_000,
                 lookup_in_thread: bool = True):
        """``lookup``: the shared store's trace id → workflow read, for replicas without trace affinity (see
        the module's docstring); a trace is looked up once its first span waited ``lookup_after_s``, at most
        ``lookup_max`` traces a query. ``lookup_in_thread=False`` calls it inside :meth:`expire` (tests)."""
        self.timeout_s = timeout_s
        self.max_pending_spans = max_pending_spans
        self.max_known = max_known
        self._known: OrderedDict[str, str] = OrderedDict()
        #: trace_id → (when its first span began waiting, its waiting spans); insertion order is age order.
        self._pending: dict[str, tuple[float, list[Span]]] = {}
        self.pending_spans = 0
        #: Traces named by rule 3 since the pipeline last folded this into its counter, by reason.
        self.guessed: dict[str, int] = {}
        self.lookup_after_s = lookup_after_s
        self.lookup_max = lookup_max
        self._lookup = None if lookup is None else _LookupThread(lookup)
        self._lookup_in_thread = lookup_in_thread
        #: trace_id → when a waiting trace the store did not know may be asked again.
        self._next_ask: dict[str, float] = {}
        #: Traces named from the shared store (their root reached another replica), since the start.
        self.named_from_store = 0
        #: Store queries made (each for up to ``lookup_max`` traces), since the start.
        self.lookups = 0

    @property
    def lookup_errors(self) -> int:
        """Store lookups that raised, since the start."""
        return 0 if self._lookup is None else self._lookup.errors

    def workflow_of(self, trace_id: str) -> str | None:
        """The workflow of a trace this resolver has named recently, or None."""
        return self._known.get(trace_id)

    def _learn(self, trace_id: str, workflow: str) -> None:
        self._known[trace_id] = workflow
        if len(self._known) > self.max_known:
            self._known.popitem(last=False)

    def resolve(self, spans: list[Span], now: float) -> list[Span]:
        """The spans ready for the pipeline, workflow set, including any waiting spans this batch
        names; the rest wait. Give it every batch while :attr:`pending_spans` is non-zero or the
        batch has a span without a workflow; a batch that is all named costs one pass and no copy.
        """
        known = self._known
        pending = self._pending
        released: list[str] = []
        unnamed = False
        last = None
        for s in spans:  # rule 1: named spans name their trace, and release what waits for it
            wf = s.workflow
            if wf is None:
                unnamed = True
                continue
            tid = s.trace_id
            if tid == last:
                continue
            last = tid
            if tid not in known:
                self._learn(tid, wf)
                if tid in pending:
                    released.append(tid)
        if not unnamed and not released:
            return spans
        if unnamed:
            for s in spans:  # rule 2: a root without the attribute names its trace by its name
                if s.workflow is None and not s.parent_span_id and s.trace_id not in known:
                    self._learn(s.trace_id, s.operation)
                    if s.trace_id in pending:
                        released.append(s.trace_id)
            ready = []
            for s in spans:
                if s.workflow is None:
                    wf = known.get(s.trace_id)
                    if wf is None:
                        entry = pending.get(s.trace_id)
                        if entry is None:
                            pending[s.trace_id] = (now, [s])
                        else:
                            entry[1].append(s)
                        self.pending_spans += 1
                        continue
                    s.workflow = wf
                ready.append(s)
        else:
            ready = list(spans)
        for tid in released:
            entry = pending.pop(tid, None)
            if entry is not None:
                wf = known[tid]
                for s in entry[1]:
                    s.workflow = wf
                ready.extend(entry[1])
                self.pending_spans -= len(entry[1])
                if self._next_ask:
                    self._next_ask.pop(tid, None)
        if self.pending_spans > self.max_pending_spans:
            ready.extend(self.expire(now, force_over=self.max_pending_spans))
        return ready

    def expire(self, now: float, force_over: int | None = None) -> list[Span]:
        """Release, named by rule 3, the traces that waited ``timeout_s`` (oldest first), and while
        more than ``force_over`` spans wait, the oldest of the rest.

        ``expire(now=float('inf'))`` releases everything, for shutdown. Traces wait in the order they
        began waiting, so the scan stops at the first one still in time (a clock stepped back delays
        the ones behind it by at most that step).
        """
        pending = self._pending
        out: list[Span] = []
        if self._lookup is not None:
            if now == float("inf"):
                self._lookup.close()  # shutdown: rule 3 names what still waits, with no query to wait for
            else:
                out = self._from_store(now)
        if not pending:
            return out
        due: list[tuple[str, str]] = []
        left = self.pending_spans
        for tid, (first_seen, spans) in pending.items():
            if now - first_seen >= self.timeout_s:
                reason = SHUTDOWN if now == float("inf") else TIMEOUT
            elif force_over is not None and left > force_over:
                reason = PENDING_LIMIT
            else:
                break
            due.append((tid, reason))
            left -= len(spans)
        guessed = self.guessed
        next_ask = self._next_ask
        for tid, reason in due:
            spans = pending.pop(tid)[1]
            if next_ask:
                next_ask.pop(tid, None)
            wf = self._known.get(tid)  # named meanwhile (it releases at once, so only a safety net)
            if wf is None:
                wf = guess_workflow(spans)
                self._learn(tid, wf)
                guessed[reason] = guessed.get(reason, 0) + 1
            for s in spans:
                s.workflow = wf
            out.extend(spans)
        self.pending_spans = left
        return out

    # -- the shared store, for replicas without trace affinity -------------------------------------------

    def _from_store(self, now: float) -> list[Span]:
        """Apply the store's last answer (the spans of the traces it names), then ask about the traces due."""
        lookup = self._lookup
        assert lookup is not None
        out = self._named_by_store(lookup.take())
        ids = self._due_lookups(now)
        if ids:
            if not self._lookup_in_thread:
                self.lookups += 1
                out.extend(self._named_by_store(lookup.call(ids)))
            elif lookup.ask(ids):
                self.lookups += 1
            else:  # the last query is still running: these are asked again at the next tick
                for tid in ids:
                    self._next_ask.pop(tid, None)
        return out

    def _due_lookups(self, now: float) -> list[str]:
        """The waiting traces to look up now, oldest first: waited ``lookup_after_s``, not asked in the last
        ``min(their wait, LOOKUP_MAX_INTERVAL_S)``; at most ``lookup_max``. Marks each as asked."""
        after = self.lookup_after_s
        next_ask = self._next_ask
        out: list[str] = []
        for tid, (first_seen, _) in self._pending.items():
            waited = now - first_seen
            if waited < after:
                break  # age order: the rest waited less
            if next_ask.get(tid, now) > now:
                continue
            out.append(tid)
            next_ask[tid] = now + min(max(waited, after), LOOKUP_MAX_INTERVAL_S)
            if len(out) >= self.lookup_max:
                break
        return out

    def _named_by_store(self, answer: Mapping[str, str] | None) -> list[Span]:
        """Name the waiting traces the store knows after their stored run's workflow, and release them."""
        if not answer:
            return []
        out: list[Span] = []
        pending, known = self._pending, self._known
        for tid, wf in answer.items():
            if tid in known or not wf:
                continue  # named here meanwhile (its root came, or the timeout): that name stands
            entry = pending.pop(tid, None)
            self._next_ask.pop(tid, None)
            if entry is None:
                continue
            self._learn(tid, wf)
            for s in entry[1]:
                s.workflow = wf
            out.extend(entry[1])
            self.pending_spans -= len(entry[1])
            self.named_from_store += 1
        return out
