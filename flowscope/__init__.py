"""Flowscope's SDK: trace multi-layer workflows (login, checkout, search, …) from a Python app.

    import flowscope

    tracer = flowscope.WorkflowTracer()
    with tracer.workflow("checkout", user="u-42"):
        with tracer.step("database", "postgres", "SELECT orders"):
            ...

Spans go to a Flowscope server (``FLOWSCOPE_SDK_ENDPOINT``, default ``http://127.0.0.1:9464``) in
batches from one background thread, started by the first span; importing or configuring this package
creates no file, no thread and no server. ``flowscope.configure(mode="inprocess")`` runs the whole
pipeline inside the app instead (needs ``pip install 'flowscope[server]'``).

Names are imported on first use (as ``opentelemetry`` does for its API), so ``import flowscope`` stays
cheap; the server (``flowscope serve``) and the analyses are the ``server`` and ``analysis`` extras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker sees; at run time each name is imported on first use (``__getattr__``)
    from exporter.sdk import configure, current_correlation_id, current_ids, flush, shutdown
    from exporter.sdk.errors import ErrorLogger, classify_error
    from exporter.sdk.logging import JsonFormatter, LogHandler
    from exporter.sdk.middleware import CorrelationIdMiddleware, parse_traceparent
    from exporter.sdk.monitor import PerformanceMonitor
    from exporter.sdk.profiler import SamplingProfiler
    from exporter.sdk.routes import Route, discover_routes, register_endpoints, routes_from_openapi
    from exporter.sdk.sinks import RemoteSink
    from exporter.sdk.sqlalchemy import instrument_engine
    from exporter.sdk.tracer import WorkflowTracer, traced

#: Public name -> the module that defines it. The SDK's implementation lives in ``exporter.sdk``.
_HOME = {
    "configure": "exporter.sdk",
    "shutdown": "exporter.sdk",
    "flush": "exporter.sdk",
    "current_ids": "exporter.sdk",
    "current_correlation_id": "exporter.sdk",
    "WorkflowTracer": "exporter.sdk.tracer",
    "traced": "exporter.sdk.tracer",
    "PerformanceMonitor": "exporter.sdk.monitor",
    "ErrorLogger": "exporter.sdk.errors",
    "classify_error": "exporter.sdk.errors",
    "CorrelationIdMiddleware": "exporter.sdk.middleware",
    "parse_traceparent": "exporter.sdk.middleware",
    "JsonFormatter": "exporter.sdk.logging",
    "LogHandler": "exporter.sdk.logging",
    "RemoteSink": "exporter.sdk.sinks",
    "SamplingProfiler": "exporter.sdk.profiler",
    "instrument_engine": "exporter.sdk.sqlalchemy",
    "Route": "exporter.sdk.routes",
    "discover_routes": "exporter.sdk.routes",
    "register_endpoints": "exporter.sdk.routes",
    "routes_from_openapi": "exporter.sdk.routes",
}

__all__ = [
    "CorrelationIdMiddleware",
    "ErrorLogger",
    "JsonFormatter",
    "LogHandler",
    "PerformanceMonitor",
    "RemoteSink",
    "Route",
    "SamplingProfiler",
    "WorkflowTracer",
    "classify_error",
    "configure",
    "current_correlation_id",
    "current_ids",
    "discover_routes",
    "flush",
    "instrument_engine",
    "parse_traceparent",
    "register_endpoints",
    "routes_from_openapi",
    "shutdown",
    "traced",
]  # every key of _HOME (tests/test_sdk_package.py)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'flowscope' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
