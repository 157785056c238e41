"""``ErrorLogger``: log errors with their stack trace, classified, into metrics and Loki."""

from __future__ import annotations

import traceback
from time import time_ns
from typing import TYPE_CHECKING, Any

from .. import conventions as c
from ..classify import classify_error
from ..model import ErrorRecord
from .context import current_ids, current_step

if TYPE_CHECKING:
    from .sinks import SdkSink

__all__ = ["ErrorLogger", "classify_error"]  # classify_error: re-exported for the SDK's public names


class ErrorLogger:
    def __init__(self, sink: SdkSink | None = None, service: str | None = None):
        if sink is None:
            from . import default_sink
            sink = default_sink()
        self._sink = sink
        from .tracer import _default_service
        self.service = service or _default_service()

    def log_error(self, error_type: str, message: str, layer: str = "other", component: str = "unknown",
                  correlation_id: str | None = None, stack_trace: str | None = None,
                  context: dict[str, Any] | None = None, workflow: str | None = None) -> ErrorRecord:
        """Record one error. IDs default to the current run/step; returns the record."""
        if layer not in c.LAYERS:
            raise ValueError(f"layer must be one of {list(c.LAYERS)}, got {layer!r}")
        cid, tid, sid = current_ids()
        cur = current_step.get()
        rec = ErrorRecord(error_type=error_type, message=message, layer=layer, component=component,
                          workflow=workflow or (cur[0].workflow if cur else c.UNKNOWN_WORKFLOW),
                          correlation_id=correlation_id or cid, trace_id=tid, span_id=sid,
                          category=classify_error(error_type, message), stack_trace=stack_trace,
                          time_ns=time_ns(), service=self.service, context=dict(context or {}))
        self._sink.error(rec)
        return rec

    def log_exception(self, exc: BaseException, layer: str = "other", component: str = "unknown",
                      correlation_id: str | None = None, context: dict[str, Any] | None = None,
                      workflow: str | None = None) -> ErrorRecord:
        """Record an exception with its full stack trace."""
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return self.log_error(type(exc).__name__, str(exc), layer, component, correlation_id, stack, context,
                              workflow)
