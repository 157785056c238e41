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

Example::

    r = WorkflowResolver(timeout_s=30)
    r.resolve([db_span], now=0)           # [] (waits: no name yet)
    r.resolve([root], now=1)              # [root, db_span], both named after root
    r.expire(now=31)                      # what waited 30 s, named by rule 3

Pure: the caller passes the time (``now``); not thread-safe (the pipeline calls it under its lock).
"""

from __future__ import annotations

from collections import OrderedDict

from .model import Span

#: ``reason`` values of the guessed-names counter: why a trace was named without its root or a named span.
TIMEOUT, PENDING_LIMIT, SHUTDOWN = "timeout", "pending_limit", "shutdown"


def guess_workflow(spans: list[Span]) -> str:
    """Rule 3: the name of the earliest local span (a span whose parent is not among ``spans``)."""
    ids = {s.span_id for s in spans}
    local_roots = [s for s in spans if s.parent_span_id not in ids] or spans
    return min(local_roots, key=lambda s: s.start_ns).operation


class WorkflowResolver:
    def __init__(self, timeout_s: float = 30.0, max_pending_spans: int = 100_000, max_known: int = 100_000):
        self.timeout_s = timeout_s
        self.max_pending_spans = max_pending_spans
        self.max_known = max_known
        self._known: OrderedDict[str, str] = OrderedDict()
        #: trace_id → (when its first span began waiting, its waiting spans); insertion order is age order.
        self._pending: dict[str, tuple[float, list[Span]]] = {}
        self.pending_spans = 0
        #: Traces named by rule 3 since the pipeline last folded this into its counter, by reason.
        self.guessed: dict[str, int] = {}

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
        if not pending:
            return []
        out: list[Span] = []
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
        for tid, reason in due:
            spans = pending.pop(tid)[1]
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
