"""One exporter instance (the store, the pipeline, the Loki pusher and the OTel bridge) and the
:class:`Lifecycle` that starts and stops what a command owns.

Use :func:`build` to make a started one from a :class:`~exporter.config.Config`, and
:meth:`Exporter.close` to stop it; tests build as many as they like, each with its own registries.
``Exporter(config)`` itself opens the store but starts no thread of its own: :meth:`Exporter.start`
does (the Loki pusher, the run store's writer, the tick). The pipeline's sinks (:mod:`exporter.sinks`) are
the Loki pusher and the run store's recorder; :meth:`Exporter.close` closes them through the pipeline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from .config import Config, load_config
from .db import make_engine
from .loki import LokiConfig, LokiPusher, RetryPolicy
from .metrics import MetricStore
from .pipeline import Pipeline
from .redact import Redactor, mask_url
from .resolver import WorkflowResolver
from .store import RunRecorder, RunStore

log = logging.getLogger("flowscope")

#: How long ``flowscope serve`` takes, at most, to stop everything it runs after SIGTERM: the HTTP
#: server drains, then the Loki and run-store queues flush; what is still queued then is counted as dropped.
STOP_TIMEOUT_S = 20.0


class Exporter:
    def __init__(self, config: Config):
        self.config = config
        self.store = MetricStore(series_limit=config.series_limit, buckets=config.buckets)
        # Metrics that come through the OpenTelemetry metrics API (PerformanceMonitor)
        # and the process's own metrics live in a prometheus_client registry appended to /metrics.
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.redactor = Redactor(config.redact_keys)
        self.loki: LokiPusher | None = None
        if config.loki_url:
            self.loki = LokiPusher(LokiConfig(
                url=config.loki_url, tenant=config.loki_tenant, username=config.loki_username,
                password=config.loki_password, bearer_token=config.loki_token, encoding=config.loki_encoding,
                batch_lines=config.loki_batch_lines, batch_wait_s=config.loki_batch_wait_s,
                queue_lines=config.loki_queue_lines, retry=RetryPolicy(deadline_s=config.loki_retry_deadline_s),
                queue_policy=config.loki_queue_policy, redact=self.redactor.text,
            ), self.store)
            log.info("pushing log streams to %s", mask_url(self.loki.config.push_url))
        else:
            log.info("FLOWSCOPE_LOKI_URL is not set: log streams are not pushed to Loki")
        self.pipeline = Pipeline(self.store, self.loki, WorkflowResolver(timeout_s=config.trace_timeout_s),
                                 redactor=self.redactor)
        self.db = make_engine(config.database_url)
        self.runs: RunStore | None = None
        self.recorder: RunRecorder | None = None
        if config.run_store:
            self.runs = RunStore(self.db, self.redactor, config.state_max_bytes)
            self.recorder = RunRecorder(self.runs, self.store, retention_s=config.run_retention_s,
                                        sweep_interval_s=min(3600.0, config.run_retention_s / 10))
            self.pipeline.attach_recorder(self.recorder)
        self._meter_provider = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> Exporter:
        """Start the Loki pusher, the run store's writer and the tick (once). Whoever calls this calls :meth:`close`."""
        if self._ticker is None and not self._stop.is_set():
            if self.loki is not None:
                self.loki.start()
            if self.recorder is not None:
                self.recorder.start()
            self._ticker = threading.Thread(target=self._tick, name="flowscope-tick", daemon=True)
            self._ticker.start()
        return self

    def meter_provider(self):
        """An OpenTelemetry MeterProvider whose metrics appear on this exporter's /metrics."""
        if self._meter_provider is None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.resources import Resource

            reader = PrometheusMetricReader(registry=self.registry, disable_target_info=True)
            self._meter_provider = MeterProvider(metric_readers=[reader],
                                                 resource=Resource.create({"service.name": self.config.service_name}))
        return self._meter_provider

    def tick(self) -> None:
        """Once a second, on the tick thread: release OTLP spans whose root never came, and sweep the run
        store past its retention when the sweep is due (every ``sweep_interval_s``, the first at the first tick)."""
        try:
            self.pipeline.tick()
        except Exception:
            log.exception("periodic pipeline tick failed")
        if self.recorder is not None:
            self.recorder.sweep_if_due()  # logs and counts its own failures

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    def close(self, timeout_s: float = 10.0) -> bool:
        """Stop the tick, release waiting spans, flush and close every sink (Loki, the run store) within
        ``timeout_s``, close the database. What cannot be flushed in time is counted as dropped, and then
        this returns False (a :class:`Lifecycle` logs it). Idempotent."""
        if self._stop.is_set():
            return True
        end = time.monotonic() + timeout_s
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(max(0.0, end - time.monotonic()))
        flushed = self.pipeline.close(max(0.0, end - time.monotonic()))
        if self._meter_provider is not None:
            self._meter_provider.shutdown()
        self.db.dispose()
        return flushed


def build(config: Config | None = None) -> Exporter:
    """An exporter, started; the caller closes it."""
    return Exporter(config or load_config()).start()


@dataclass(frozen=True, slots=True)
class Service:
    """One thing a command owns: how to start it, and how to stop it within a number of seconds."""

    name: str
    start: Callable[[], object]
    stop: Callable[[float], object]


class Lifecycle:
    """Starts services in order and stops them in reverse, each within what is left of one deadline.

    The owner of a command (``flowscope serve``) adds what it runs, the store and workers first and
    the HTTP server last, so the server stops taking requests before the queues it feeds are flushed::

        life = Lifecycle()
        life.add(Service("exporter", ex.start, ex.close))
        life.add(Service("http", http.start, http.stop))
        life.start()            # a failure stops what already started, in reverse, and re-raises
        ...
        life.stop(timeout_s=20)
    """

    def __init__(self) -> None:
        self.services: list[Service] = []
        self._started: list[Service] = []

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def start(self) -> None:
        for svc in self.services:
            try:
                svc.start()
            except BaseException:
                log.error("could not start %s; stopping what was started", svc.name)
                self.stop()
                raise
            self._started.append(svc)
            log.debug("started %s", svc.name)

    def stop(self, timeout_s: float = 20.0) -> bool:
        """Stop what was started, last first; True if each stopped within the deadline. Idempotent."""
        end = time.monotonic() + timeout_s
        ok = True
        while self._started:
            svc = self._started.pop()
            try:
                result = svc.stop(max(0.0, end - time.monotonic()))
            except Exception:  # one service failing to stop must not keep the others running
                log.exception("stopping %s failed", svc.name)
                ok = False
                continue
            if result is False:
                log.warning("%s did not stop cleanly within the deadline", svc.name)
                ok = False
        return ok and time.monotonic() <= end
