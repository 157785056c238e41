"""Context variables that carry the current run, step and request IDs."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .tracer import _Run


class RequestContext(NamedTuple):
    correlation_id: str
    trace_id: str | None
    parent_span_id: str | None


#: (run, current span_id) of the innermost workflow/step on this task or thread. A run completed from
#: another thread or task (or evicted, never completed) can still sit here: its ``closed`` is then True,
#: and every reader treats it as no run at all (:func:`active_step`).
current_step: ContextVar[tuple[_Run, str] | None] = ContextVar("flowscope_step", default=None)
#: Set by CorrelationIdMiddleware for the duration of one request.
current_request: ContextVar[RequestContext | None] = ContextVar("flowscope_request", default=None)


def active_step() -> tuple[_Run, str] | None:
    """(run, span_id) of the innermost open run or step here, or None (a closed run is none)."""
    cur = current_step.get()
    return None if cur is None or cur[0].closed else cur


def current_ids() -> tuple[str | None, str | None, str | None]:
    """(correlation_id, trace_id, span_id) of whatever is running now, else Nones."""
    cur = active_step()
    if cur is not None:
        run, span_id = cur
        return run.correlation_id, run.trace_id, span_id
    req = current_request.get()
    if req is not None:
        return req.correlation_id, req.trace_id, req.parent_span_id
    return None, None, None


def current_correlation_id() -> str | None:
    return current_ids()[0]
