"""Name the workflow of OTLP spans that don't carry ``flowscope.workflow``.

OpenTelemetry SDKs export child spans as they end, usually *before* the root
span that names the workflow. A span without a workflow attribute therefore
waits here, bounded in count and time, until its trace's workflow is known:
from any span of the trace with the attribute, or from the root span's name.
A trace whose root never comes (its parent lives in an uninstrumented
service) is named after its earliest local span when ``timeout_s`` passes.
Waiting spans are counted in ``flowscope_traces_pending_spans``.
"""

from __future__ import annotations

from collections import OrderedDict

from .model import Span


class WorkflowResolver:
    def __init__(self, timeout_s: float = 30.0, max_pending_spans: int = 100_000, max_known: int = 100_000):
        self.timeout_s = timeout_s
        self.max_pending_spans = max_pending_spans
        self.max_known = max_known
        self._known: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, tuple[float, list[Span]]] = {}
        self.pending_spans = 0

    def _learn(self, trace_id: str, workflow: str) -> None:
        if trace_id not in self._known:
            self._known[trace_id] = workflow
            if len(self._known) > self.max_known:
                self._known.popitem(last=False)

    def resolve(self, spans: list[Span], now: float) -> list[Span]:
        """Spans ready for the pipeline, workflow set; the rest wait. Not thread-safe: callers lock."""
        learned = []
        for s in spans:
            if s.workflow is not None:
                if s.trace_id not in self._known:
                    self._learn(s.trace_id, s.workflow)
                    learned.append(s.trace_id)
        for s in spans:
            if s.workflow is None and s.is_root and s.trace_id not in self._known:
                self._learn(s.trace_id, s.operation)
                learned.append(s.trace_id)
        ready = []
        for s in spans:
            if s.workflow is None:
                wf = self._known.get(s.trace_id)
                if wf is not None:
                    s.workflow = wf
                    ready.append(s)
                else:
                    entry = self._pending.get(s.trace_id)
                    if entry is None:
                        self._pending[s.trace_id] = (now, [s])
                    else:
                        entry[1].append(s)
                    self.pending_spans += 1
            else:
                ready.append(s)
        for tid in learned:
            entry = self._pending.pop(tid, None)
            if entry is not None:
                wf = self._known[tid]
                for s in entry[1]:
                    s.workflow = wf
                ready.extend(entry[1])
                self.pending_spans -= len(entry[1])
        if self.pending_spans > self.max_pending_spans:
            ready.extend(self.expire(now, force_over=self.max_pending_spans))
        return ready

    def expire(self, now: float, force_over: int | None = None) -> list[Span]:
        """Release traces that waited ``timeout_s`` (oldest first, or until under ``force_over``).

        ``expire(now=float('inf'))`` releases everything, for shutdown.
        """
        out = []
        for tid in list(self._pending):
            first_seen, spans = self._pending[tid]
            overfull = force_over is not None and self.pending_spans > force_over
            if not overfull and now - first_seen < self.timeout_s:
                continue
            del self._pending[tid]
            ids = {s.span_id for s in spans}
            local_roots = [s for s in spans if s.parent_span_id not in ids] or spans
            wf = min(local_roots, key=lambda s: s.start_ns).operation
            self._learn(tid, wf)
            for s in spans:
                s.workflow = wf
            out.extend(spans)
            self.pending_spans -= len(spans)
        return out
