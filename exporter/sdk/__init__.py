"""Instrument a Python app in-process.

Choose the mode once, at start-up (or let ``FLOWSCOPE_SDK_MODE`` choose)::

    from exporter import sdk
    sdk.configure(mode="remote", endpoint="http://127.0.0.1:9464")   # batches to an exporter
    sdk.configure(exporter=my_exporter)                               # in-process pipeline

then use :class:`WorkflowTracer`, :func:`traced`, :class:`PerformanceMonitor`,
:class:`ErrorLogger`, :class:`CorrelationIdMiddleware`, :class:`JsonFormatter` and :class:`LogHandler`
(the app's log records to Flowscope, batched like its spans).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .context import current_correlation_id, current_ids

if TYPE_CHECKING:  # the in-process exporter is the server's: a remote-only app never loads it
    from ..runtime import Exporter
    from .sinks import InProcessSink, RemoteSink

_lock = threading.Lock()
_sink: InProcessSink | RemoteSink | None = None
#: the in-process exporter the sink feeds (None in remote mode)
_exporter: Exporter | None = None
#: the exporter configure() built (and so shutdown() closes); None when it was given one, or in remote mode
_owned: Exporter | None = None


def configure(mode: str | None = None, endpoint: str | None = None, exporter: Exporter | None = None,
              token: str | None = None, queue_size: int | None = None) -> InProcessSink | RemoteSink:
    """Set where the default tracer sends spans; returns the sink. Replaces any earlier one.

    In-process mode without ``exporter`` builds and starts one (its threads, its store), which
    :func:`shutdown`, or the next ``configure``, closes; an exporter passed in stays its owner's to close.
    """
    global _sink, _exporter, _owned
    from ..config import load_config
    from .sinks import InProcessSink, RemoteSink
    from .tracer import WorkflowTracer

    cfg = load_config({"sdk_mode": mode, "sdk_endpoint": endpoint, "sdk_queue_size": queue_size})
    sink: InProcessSink | RemoteSink
    owned: Exporter | None
    with _lock:
        old, old_owned = _sink, _owned
        if exporter is not None or cfg.sdk_mode == "inprocess":
            if exporter is None:
                from ..runtime import build
                exporter = _owned = build(cfg)
            elif exporter is not old_owned:
                _owned = None
            _exporter = exporter
            _sink = sink = InProcessSink(exporter.pipeline)
        else:
            _exporter = _owned = None
            _sink = sink = RemoteSink(cfg.sdk_endpoint, queue_size=cfg.sdk_queue_size,
                                      token=token or cfg.ingest_token)
        owned = _owned
    if old is not None and old is not sink:
        old.close()
    if old_owned is not None and old_owned is not owned:
        old_owned.close()
    WorkflowTracer.set_default(None)
    return sink


def default_sink() -> InProcessSink | RemoteSink:
    sink = _sink
    if sink is None:
        sink = configure()
    return sink


def default_exporter() -> Exporter | None:
    """The in-process exporter the SDK feeds (None in remote mode)."""
    default_sink()
    return _exporter


def flush(timeout_s: float = 10.0) -> bool:
    """Deliver what the SDK recorded so far; True once it is, False at ``timeout_s`` (it never waits longer).

    Use it where an app must know its spans got out before it goes on: at the end of a batch job, before a
    serverless handler returns, in a test. Remote mode: waits until every span queued before the call is
    accepted by the server or given up on (and counted); a server that is down makes it return False at the
    deadline, the spans stay queued and keep being retried. In-process mode: waits for the run store's
    writer. Nothing configured yet: True, there is nothing to deliver. ::

        flowscope.configure(mode="remote", endpoint="http://flowscope:9464")
        ...
        if not flowscope.flush(5):
            log.warning("spans not delivered yet")
    """
    sink = _sink
    return True if sink is None else sink.flush(timeout_s)


def shutdown() -> None:
    """Flush what the SDK queued and stop what :func:`configure` started. Call at exit; idempotent.

    Remote mode: the sender's queue is flushed within its timeout, then its thread stops. In-process mode
    with the exporter ``configure`` built: that exporter is closed (waiting spans released, its Loki and
    run-store queues flushed, its threads stopped, its database closed). An exporter passed to ``configure``
    is left running. A tracer made before this keeps the closed sink: what it records afterwards is dropped
    (and counted as ``shutdown``).
    """
    global _sink, _exporter, _owned
    with _lock:
        s, _sink = _sink, None
        owned, _owned = _owned, None
        _exporter = None
    if s is not None:
        s.close()
    if owned is not None:
        owned.close()


from .errors import ErrorLogger, classify_error  # noqa: E402
from .logging import JsonFormatter, LogHandler  # noqa: E402
from .middleware import CorrelationIdMiddleware, parse_traceparent  # noqa: E402
from .monitor import PerformanceMonitor  # noqa: E402
from .routes import Route, discover_routes, register_endpoints, routes_from_openapi  # noqa: E402
from .tracer import WorkflowTracer, traced  # noqa: E402

__all__ = [
    "CorrelationIdMiddleware",
    "ErrorLogger",
    "JsonFormatter",
    "LogHandler",
    "PerformanceMonitor",
    "Route",
    "WorkflowTracer",
    "classify_error",
    "configure",
    "current_correlation_id",
    "current_ids",
    "default_exporter",
    "default_sink",
    "discover_routes",
    "flush",
    "parse_traceparent",
    "register_endpoints",
    "routes_from_openapi",
    "shutdown",
    "traced",
]
