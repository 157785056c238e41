"""One exporter instance: the store, the pipeline, the Loki pusher and the OTel bridge.

Use :func:`build` to make one from a :class:`~exporter.config.Config`; tests
build as many as they like, each with its own registries.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from .config import Config, load_config
from .db import make_engine
from .loki import LokiConfig, LokiPusher, RetryPolicy
from .metrics import MetricStore
from .pipeline import Pipeline
from .redact import Redactor, mask_url
from .resolver import WorkflowResolver
from .runstore import RunRecorder, RunStore

log = logging.getLogger("flowscope")


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
        if config.run_store:
            self.runs = RunStore(self.db, self.redactor, config.state_max_bytes)
            self.pipeline.attach_recorder(RunRecorder(self.runs, self.store, retention_s=config.run_retention_s,
                                                      sweep_interval_s=min(3600.0, config.run_retention_s / 10)))
        self._meter_provider = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="flowscope-tick", daemon=True)
        self._ticker.start()

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

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.pipeline.tick()
            except Exception:
                log.exception("periodic pipeline tick failed")

    def close(self) -> None:
        """Release waiting spans and flush Loki. Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.pipeline.close()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()
        self.db.dispose()


def build(config: Config | None = None) -> Exporter:
    return Exporter(config or load_config())
