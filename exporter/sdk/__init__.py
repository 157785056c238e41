"""Instrument a Python app in-process.

Choose the mode once, at start-up (or let ``FLOWSCOPE_SDK_MODE`` choose)::

    from exporter import sdk
    sdk.configure(mode="remote", endpoint="http://127.0.0.1:9464")   # batches to an exporter
    sdk.configure(exporter=my_exporter)                               # in-process pipeline

then use :class:`WorkflowTracer`, :func:`traced`, :class:`PerformanceMonitor`,
:class:`ErrorLogger`, :class:`CorrelationIdMiddleware` and :class:`JsonFormatter`.
"""

from __future__ import annotations

import threading

from .context import current_correlation_id, current_ids

_lock = threading.Lock()
_sink = None
_exporter = None


def configure(mode: str | None = None, endpoint: str | None = None, exporter=None, token: str | None = None,
              queue_size: int | None = None):
    """Set where the default tracer sends spans; returns the sink. Replaces any earlier one."""
    global _sink, _exporter
    from ..config import load_config
    from .sinks import InProcessSink, RemoteSink
    from .tracer import WorkflowTracer

    cfg = load_config({"sdk_mode": mode, "sdk_endpoint": endpoint, "sdk_queue_size": queue_size})
    with _lock:
        old = _sink
        if exporter is not None or cfg.sdk_mode == "inprocess":
            if exporter is None:
                from ..runtime import build
                exporter = build(cfg)
            _exporter = exporter
            _sink = InProcessSink(exporter.pipeline)
        else:
            _exporter = None
            _sink = RemoteSink(cfg.sdk_endpoint, queue_size=cfg.sdk_queue_size, token=token or cfg.ingest_token)
    if old is not None and old is not _sink:
        old.close()
    WorkflowTracer.set_default(None)
    return _sink


def default_sink():
    if _sink is None:
        configure()
    return _sink


def default_exporter():
    """The in-process exporter the SDK feeds (None in remote mode)."""
    default_sink()
    return _exporter


def shutdown() -> None:
    """Flush the remote queue (if any). Call at exit."""
    global _sink
    with _lock:
        s, _sink = _sink, None
    if s is not None:
        s.close()


from .errors import ErrorLogger, classify_error  # noqa: E402
from .logging import JsonFormatter  # noqa: E402
from .middleware import CorrelationIdMiddleware, parse_traceparent  # noqa: E402
from .monitor import PerformanceMonitor  # noqa: E402
from .tracer import WorkflowTracer, traced  # noqa: E402

__all__ = [
    "CorrelationIdMiddleware",
    "ErrorLogger",
    "JsonFormatter",
    "PerformanceMonitor",
    "WorkflowTracer",
    "classify_error",
    "configure",
    "current_correlation_id",
    "current_ids",
    "default_exporter",
    "default_sink",
    "parse_traceparent",
    "shutdown",
    "traced",
]
