"""The endpoint inventory as Prometheus gauges, on the exporter's /metrics: what the dashboard row and the
``FlowscopeEndpointNoTraffic`` alert read.

Per documented endpoint (``service``, ``method``, ``route``), from the store's join over the last
``FLOWSCOPE_ENDPOINTS_WINDOW_S`` of server spans (:meth:`~exporter.store.endpoints.EndpointQueries.endpoint_report`):

- ``flowscope_endpoint_last_call_timestamp_seconds``: its last call, floored at its registration and at the
  window's start (an endpoint never called reads as quiet since then, so ``time() - it`` is how long it has had no
  traffic, as far as the store can tell); when the window holds more server spans than one read takes (200,000,
  newest first), the floor is the oldest span read, so a busy store gives a late alert, never a false one;
- ``flowscope_endpoint_calls``: its calls in the window.

And per service ``flowscope_endpoints_undocumented`` (routes called that the inventory does not list). At most
``FLOWSCOPE_SERIES_LIMIT`` endpoints get series (sorted by service, route, method); the rest are counted in
``flowscope_endpoint_series_dropped``. The last read serves for ``FLOWSCOPE_ENDPOINTS_REFRESH_S``, then is
refreshed behind a scrape; a store that fails is logged and the last good read served (the exporter never fails
a scrape over it).

    ex.registry.register(EndpointCollector(ex.runs, window_s=7 * 86400, refresh_s=60, series_limit=10_000))
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from exporter import conventions as c
from exporter.runtime import Exporter
from exporter.store import RunStore
from exporter.store.endpoints import EndpointReport

log = logging.getLogger("flowscope.endpoints")
LABELS = (c.L_SERVICE, c.L_METHOD, c.L_ROUTE)


def families(report: EndpointReport, series_limit: int) -> list[GaugeMetricFamily]:
    """The gauges of one report (pure)."""
    last = GaugeMetricFamily(c.ENDPOINT_LAST_CALL_TIMESTAMP, "Last call of a documented endpoint seen in server "
                             "spans, floored at its registration and the window's start (Unix seconds).",
                             labels=LABELS)
    calls = GaugeMetricFamily(c.ENDPOINT_CALLS, "Calls of a documented endpoint in the window read.", labels=LABELS)
    kept = report.endpoints[:series_limit]
    for e in kept:
        floor = max(report.covered_since_ns or report.since_ns, e.registered_at_ns or 0)
        labels = [e.service, e.method, e.path]
        last.add_metric(labels, max(floor, e.last_seen_ns or 0) / 1e9)
        calls.add_metric(labels, float(e.calls))
    undocumented = GaugeMetricFamily(c.ENDPOINTS_UNDOCUMENTED, "Routes seen in server spans that the service's "
                                     "inventory does not list.", labels=[c.L_SERVICE])
    per_service: dict[str, int] = {e.service: 0 for e in report.endpoints}
    for u in report.undocumented:
        per_service[u.service] = per_service.get(u.service, 0) + 1
    for svc, n in sorted(per_service.items())[:series_limit]:
        undocumented.add_metric([svc], float(n))
    dropped = GaugeMetricFamily(c.ENDPOINT_SERIES_DROPPED, "Documented endpoints without series past the cap.",
                                value=float(len(report.endpoints) - len(kept)))
    return [last, calls, undocumented, dropped]


class EndpointCollector(Collector):
    """Reads the store at most once per ``refresh_s``. The first scrape reads it itself; a later one that finds the
    read stale serves it and starts one background read, so a scrape never waits on the store's join again."""

    def __init__(self, store: RunStore, window_s: int, refresh_s: float, series_limit: int,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.store, self.window_ns, self.refresh_ns = store, window_s * 10**9, int(refresh_s * 1e9)
        self.series_limit, self.clock = series_limit, clock
        self._lock = threading.Lock()
        self._read_at: int | None = None
        self._reading = False
        self._families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            now = self.clock()
            first = self._read_at is None
            stale = first or now - self._read_at >= self.refresh_ns  # type: ignore[operator]
            if stale and not self._reading:
                self._reading, self._read_at = True, now
                if not first:
                    threading.Thread(target=self._read, args=(now,), name="flowscope-endpoint-gauges",
                                     daemon=True).start()
        if first and self._reading:
            self._read(now)
        with self._lock:
            return iter(list(self._families))

    def _read(self, now: int) -> None:
        try:
            report = self.store.endpoint_report(max(0, now - self.window_ns), now + 1)
            got = families(report, self.series_limit)
        except Exception:  # a scrape never fails over the store: the last read is served
            log.warning("endpoint gauges: reading the store failed; serving the last read", exc_info=True)
            got = None
        with self._lock:
            if got is not None:
                self._families = got
            self._reading = False

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The names, without reading the store (the registry asks when the collector is registered)."""
        return iter(families(EndpointReport(0, 0, [], [], [], 0, False), 0))


_REGISTERED: weakref.WeakKeyDictionary[object, EndpointCollector] = weakref.WeakKeyDictionary()


def init_metrics(exporter: Exporter) -> EndpointCollector | None:
    """Register the gauges on the exporter's registry (once per registry) when it has a run store; None otherwise."""
    store = exporter.runs
    if store is None:
        return None
    got = _REGISTERED.get(exporter.registry)
    if got is None:
        cfg = exporter.config
        got = _REGISTERED[exporter.registry] = EndpointCollector(store, cfg.endpoints_window_s,
                                                                 cfg.endpoints_refresh_s, cfg.series_limit)
        exporter.registry.register(got)
    return got
