"""What the pipeline hands finished records to: the :class:`Sink` protocol.

The pipeline turns every input into metrics itself, then passes the same records on to each sink it
holds: the Loki pusher (:class:`~exporter.loki.LokiPusher`), the run store's writer
(:class:`~exporter.store.RunRecorder`), and whatever else an owner adds (a forwarder, a test's list).
A sink implements the protocol structurally; nothing subclasses it::

    class Forwarder:                      # a Sink: the pipeline needs nothing else from it
        def spans(self, batch): ...
        def error(self, rec): ...
        def profile(self, profile): ...
        def flush(self, timeout_s=10.0): return True
        def close(self, timeout_s=10.0, wait=True): return True

    pipeline.add_sink(Forwarder())

Calls come from the caller's thread (a request, a traced step): a sink queues and returns, it never
blocks on I/O and never raises; what it cannot keep it counts. Its owner starts it (if it has a thread)
and the pipeline closes it: first every sink with ``wait=False`` so all drain side by side, then each
with what is left of one deadline.

A sink that also implements ``logs`` (a :class:`LogSink`: the Loki pusher, the run store) takes the
application's log lines (:class:`~exporter.model.LogLine`) too; the others never see them.

A sink that also implements ``fast`` (a :class:`FastSink`, the run store) takes the in-process SDK's
successful plain steps as a :data:`FastStep` tuple, no :class:`~exporter.model.Span` built; while every
sink is a FastSink the SDK builds no Span for such a step (``Pipeline.metrics_only``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .model import ErrorRecord, LogLine, Span
    from .profiles import Profile

__all__ = ["FastSink", "FastStep", "LogSink", "Sink", "SpanCallback"]

#: One successful SDK step with no state or metadata: ``(run, layer, component, operation, start_ns, end_ns,
#: span_id, parent_span_id)``, where ``run`` carries ``workflow``, ``trace_id``, ``correlation_id``, ``service``.
FastStep = tuple[Any, str, str, str, int, int, str, str]


@runtime_checkable
class Sink(Protocol):
    """Takes finished spans, logged errors and profiles from the pipeline (see the module docstring)."""

    def spans(self, batch: Sequence[Span]) -> None:
        """Queue finished spans (names already redacted, metrics already counted)."""

    def error(self, rec: ErrorRecord) -> None:
        """Queue one logged error."""

    def profile(self, profile: Profile) -> None:
        """Queue one profile (a sink that keeps none ignores it)."""

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until what was queued before the call is delivered or counted; False at the deadline."""

    def close(self, timeout_s: float = 10.0, wait: bool = True) -> bool:
        """Take nothing more, deliver what is queued within ``timeout_s``, count the rest; True if all went.
        ``wait=False``: start draining and return at once (the pipeline then calls it again to wait)."""


@runtime_checkable
class FastSink(Sink, Protocol):
    """A sink that also takes the SDK's fast-path steps as tuples."""

    def fast(self, step: FastStep) -> None:
        """Queue one fast-path step. The pipeline hands them over in batches, after folding them into its metrics
        (:meth:`~exporter.pipeline.Pipeline.fast_step`): a sink that also has ``fast_many(steps)`` gets each batch
        in one call."""


@runtime_checkable
class LogSink(Sink, Protocol):
    """A sink that also takes application log lines."""

    def logs(self, lines: Sequence[LogLine]) -> None:
        """Queue log lines (workflow filled where the trace is known, text already redacted)."""


class SpanCallback:
    """A plain ``callable(list_of_spans)`` as a :class:`Sink` that takes spans only (errors and profiles
    are not its business, and it has nothing to flush)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[list[Span]], object]):
        self.fn = fn

    def spans(self, batch: Sequence[Span]) -> None:
        self.fn(list(batch))

    def error(self, rec: ErrorRecord) -> None:
        pass

    def profile(self, profile: Profile) -> None:
        pass

    def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def close(self, timeout_s: float = 10.0, wait: bool = True) -> bool:
        return True
