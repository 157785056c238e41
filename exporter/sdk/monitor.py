"""Custom per-layer values (cache hit rate, queue depth, pool size) as OpenTelemetry gauges.

``record_metric`` goes through the OpenTelemetry metrics API. In-process, the
exporter's MeterProvider feeds opentelemetry-exporter-prometheus, so the
values appear on the same ``/metrics`` as ``flowscope_custom_<name>{layer, component}``.
The correlation_id is never a label (it would explode cardinality); it is only
stamped on the debug log line.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING

from .. import conventions as c

if TYPE_CHECKING:  # the API is imported when a monitor is made, not with the SDK
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.metrics import _Gauge as Gauge  # the synchronous gauge (the API still marks it new)

log = logging.getLogger("flowscope.sdk.monitor")
_NAME = re.compile(r"[^a-zA-Z0-9_]")


class PerformanceMonitor:
    def __init__(self, meter_provider: MeterProvider | None = None):
        if meter_provider is None:
            from . import default_exporter
            ex = default_exporter()
            if ex is not None:
                meter_provider = ex.meter_provider()
            else:
                from opentelemetry import metrics
                meter_provider = metrics.get_meter_provider()
        self._meter = meter_provider.get_meter("flowscope.sdk")
        self._gauges: dict[str, Gauge] = {}
        self._lock = threading.Lock()

    @staticmethod
    def metric_name(metric_name: str) -> str:
        name = _NAME.sub("_", metric_name.strip()).strip("_").lower()
        if not name:
            raise ValueError(f"metric_name {metric_name!r} has no usable characters")
        return c.CUSTOM_METRIC_PREFIX + name

    def record_metric(self, layer: str, component: str, metric_name: str, value: float,
                      correlation_id: str | None = None) -> None:
        """Set the current value of ``metric_name`` for this layer/component."""
        if layer not in c.LAYERS:
            raise ValueError(f"layer must be one of {list(c.LAYERS)}, got {layer!r}")
        name = self.metric_name(metric_name)
        with self._lock:
            g = self._gauges.get(name)
            if g is None:
                g = self._gauges[name] = self._meter.create_gauge(
                    name, description=f"Custom value {metric_name!r} recorded with PerformanceMonitor.")
        g.set(float(value), {c.L_LAYER: layer, c.L_COMPONENT: component})
        if correlation_id:
            log.debug("%s=%s layer=%s component=%s correlation_id=%s", name, value, layer, component, correlation_id)
