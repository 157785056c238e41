"""One exporter instance (the store, the pipeline, the Loki pusher and the OTel bridge) and the
:class:`Lifecycle` that starts and stops what a command owns.

Use :func:`build` to make a started one from a :class:`~exporter.config.Config`, and
:meth:`Exporter.close` to stop it; tests build as many as they like, each with its own registries.
``Exporter(config)`` itself opens the store but starts no thread of its own: :meth:`Exporter.start`
does (the Loki pusher, the run store's writer, the leases' keeper, the tick). The retention sweep runs only
while this process holds the ``retention-sweep`` lease (:mod:`exporter.lease`: once across replicas). The
pipeline's sinks (:mod:`exporter.sinks`) are the Loki pusher and the run store's recorder; :meth:`Exporter.close`
closes them through the pipeline.

:func:`open_store` waits for the store at start-up (``flowscope serve`` builds the exporter on its engine), and
:meth:`Exporter.health` / :meth:`Exporter.store_error` are what the health and readiness endpoints report,
each probe cached for :data:`PROBE_TTL_S`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import requests
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_latest_om
from sqlalchemy import Engine

from . import conventions as c
from .config import Config, load_config
from .db import first_line, make_engine, probe, sqlite_path, wait_for_store
from .exposition import finish, render_iter
from .forward import Forwarders
from .lease import Lease, Leases
from .loki import LokiConfig, LokiPusher, RetryPolicy
from .metrics import MetricStore
from .pipeline import Pipeline
from .redact import Redactor, mask_url
from .resolver import WorkflowResolver
from .store import RunRecorder, RunStore
from .store.process import WriterProcess

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider

log = logging.getLogger("flowscope")

#: How long ``flowscope serve`` takes, at most, to stop everything it runs after SIGTERM: the HTTP
#: server drains, then the Loki and run-store queues flush; what is still queued then is counted as dropped.
STOP_TIMEOUT_S = 20.0

#: How long one probe's answer (the store's ``SELECT 1``, Prometheus' and Grafana's health URLs) serves the
#: health and readiness endpoints: a liveness check costs no round trip per call, and readiness follows an
#: outage within this long.
PROBE_TTL_S = 1.5
#: Seconds a probe of Prometheus or Grafana may take (connect and read, each).
HTTP_PROBE_TIMEOUT_S = 1.0
#: A drop within this many seconds makes a queue's component ``degraded``.
RECENT_S = 60.0

#: Component states in the health report.
OK, DEGRADED, DOWN, DISABLED = "ok", "degraded", "down", "disabled"


def open_store(config: Config, interrupt: threading.Event | None = None) -> Engine:
    """The engine on ``config.database_url``, once the store answers: an unreachable one is retried for
    ``config.store_connect_timeout_s`` (:func:`~exporter.db.wait_for_store`), a SQLite path this user
    cannot write is refused at once. Raises :class:`~exporter.db.StoreUnavailable` (one line).
    ``flowscope serve`` calls it before it builds the :class:`Exporter` on the engine."""
    engine = make_engine(config.database_url)
    try:
        wait_for_store(engine, config.store_connect_timeout_s, interrupt=interrupt)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class CachedProbe:
    """``fn() -> error line or None``, run at most once per ``ttl_s``: callers in between, and callers while
    another thread probes, get the last answer. Every health request may call it.

        store = CachedProbe(lambda: probe(engine))
        store()          # None while the store answers, else the error's first line
    """

    def __init__(self, fn: Callable[[], str | None], ttl_s: float = PROBE_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.fn, self.ttl_s, self.clock = fn, ttl_s, clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._error: str | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall time
        self.last_ok_at: float | None = None

    def __call__(self) -> str | None:
        if self._at is not None and self.clock() - self._at < self.ttl_s:
            return self._error
        if not self._lock.acquire(blocking=self._at is None):
            return self._error  # another thread is probing now: its previous answer stands
        try:
            if self._at is None or self.clock() - self._at >= self.ttl_s:
                try:
                    error = self.fn()
                except Exception as e:  # noqa: BLE001 - a probe that raises is a failed probe
                    error = first_line(e)
                if error is None:
                    self.last_ok_at = time.time()
                else:
                    self.last_error, self.last_error_at = error, time.time()
                self._error, self._at = error, self.clock()
            return self._error
        finally:
            self._lock.release()


def http_probe(url: str, timeout_s: float = HTTP_PROBE_TIMEOUT_S) -> Callable[[], str | None]:
    """A probe of a health URL (Prometheus ``/-/ready``, Grafana ``/api/health``): None on a 2xx answer."""
    def check() -> str | None:
        try:
            r = requests.get(url, timeout=(timeout_s, timeout_s))
        except requests.RequestException as e:
            return f"{mask_url(url)}: {first_line(e)}"
        return None if 200 <= r.status_code < 300 else f"{mask_url(url)}: HTTP {r.status_code}"
    return check


class _Recent:
    """When each counter last went up, to tell a recent drop from an old one (counters carry no time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, float]] = {}  # key -> (value, monotonic time it last changed)

    def within(self, key: str, value: float, window_s: float) -> bool:
        """Whether ``value`` (the counter ``key`` now) went up within ``window_s``; a first look at a count above
        zero counts as going up now (nothing says it is old)."""
        now = time.monotonic()
        with self._lock:
            old = self._seen.get(key)
            if old is None:
                changed = now if value else float("-inf")
            else:
                changed = now if value > old[0] else old[1]
            self._seen[key] = (value, changed)
        return now - changed <= window_s


def _counts(store: MetricStore, name: str) -> dict[str, int]:
    """A counter's nonzero values by its labels (``reason``), pending folds included."""
    with store.lock:
        for hook in store.collect_hooks:
            hook()
        try:
            fam = store.get(name)
        except KeyError:
            return {}
        return {",".join(k) or "total": int(v.value) for k, v in fam.series.items() if v.value}


class Exporter:
    def __init__(self, config: Config, engine: Engine | None = None):
        """``engine``: the store's engine, when the caller opened it (:func:`open_store`); else one is made
        on ``config.database_url``. The exporter disposes of it in :meth:`close` either way."""
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
        #: OTLP/HTTP receivers every accepted /v1/traces body is forwarded to (exporter.forward); empty when none is set
        self.forwarders = Forwarders.from_config(config, self.store)
        # replicas without trace affinity: a waiting span's root may be in the PostgreSQL store they share
        shared = config.run_store and not config.database_url.startswith("sqlite")
        self.pipeline = Pipeline(self.store, self.loki, WorkflowResolver(
            timeout_s=config.trace_timeout_s,
            lookup=(lambda ids: {} if self.runs is None else self.runs.workflows_of_traces(ids)) if shared else None),
            redactor=self.redactor)
        self.db = engine if engine is not None else make_engine(config.database_url)
        self._store_probe = CachedProbe(lambda: probe(self.db))
        self._probes = {name: CachedProbe(http_probe(url)) for name, url in (
            ("prometheus", config.detect_prometheus_url and config.detect_prometheus_url.rstrip("/") + "/-/ready"),
            ("grafana", config.grafana_url and config.grafana_url.rstrip("/") + "/api/health")) if url}
        self._recent = _Recent()
        self.runs: RunStore | None = None
        self.recorder: RunRecorder | None = None
        if config.run_store:
            self.runs = RunStore(self.db, self.redactor, config.state_max_bytes)
            writer = None
            url = self.db.url.render_as_string(hide_password=False)
            # a backend replica takes no ingest: its recorder only sweeps, so no writer process for it
            if config.store_writer == "process" and config.role != c.ROLE_BACKEND and (
                    self.db.dialect.name != "sqlite" or sqlite_path(url)):
                writer = WriterProcess(url, self.redactor.fragments, config.state_max_bytes)
            self.recorder = RunRecorder(self.runs, self.store, retention_s=config.run_retention_s,
                                        sweep_interval_s=min(3600.0, config.run_retention_s / 10), writer=writer)
            self.pipeline.attach_recorder(self.recorder)
        # Work that must run once across replicas sharing a PostgreSQL store runs under a lease (exporter.lease);
        # the backend registers its own duties (detection) on the same object. An ingest-only replica sweeps nothing.
        self.leases = Leases(self.db, retry_s=config.lease_retry_s, metrics=self.store)
        self.sweep_lease: Lease | None = None
        if self.recorder is not None and config.role != c.ROLE_INGEST:
            self.sweep_lease = self.leases.lease(c.DUTY_RETENTION_SWEEP)
        #: Ticks run so far (the tick thread's, or a caller's).
        self.ticks = 0
        self._meter_provider: MeterProvider | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> Exporter:
        """Start the Loki pusher, the run store's writer, the leases' keeper and the tick (once). Whoever calls this
        calls :meth:`close`."""
        if self._ticker is None and not self._stop.is_set():
            if self.loki is not None:
                self.loki.start()
            if self.recorder is not None:
                self.recorder.start()
            self.forwarders.start()
            self.leases.start()
            self._ticker = threading.Thread(target=self._tick, name="flowscope-tick", daemon=True)
            self._ticker.start()
        return self

    def meter_provider(self) -> MeterProvider:
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
        store past its retention when the sweep is due (every ``sweep_interval_s``, the first at the first tick
        this process holds the sweep's lease). Only the holder of the ``retention-sweep`` lease sweeps, confirmed
        (``SELECT 1`` on the lock's connection) when a sweep is due, not every tick; on SQLite this process always
        does."""
        self.ticks += 1
        try:
            self.pipeline.tick()
        except Exception:
            log.exception("periodic pipeline tick failed")
        rec = self.recorder
        if rec is not None and self.sweep_lease is not None and rec.sweep_due() and self.sweep_lease.confirm():
            rec.sweep_if_due()  # logs and counts its own failures

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    # -- health and readiness (exporter.http serves them) ----------------------------------------------

    @property
    def closing(self) -> bool:
        """True once :meth:`close` has begun."""
        return self._stop.is_set()

    def store_error(self) -> str | None:
        """None while the store answers ``SELECT 1`` (probed at most every :data:`PROBE_TTL_S`), else why not."""
        return self._store_probe()

    def health(self) -> dict:
        """Each component's state (``ok``, ``degraded``, ``down``, ``disabled``) and detail, and the overall
        status: ``down`` when the store is, ``degraded`` when any component is not ``ok`` or ``disabled``.
        Cheap enough for every liveness call: the store is probed at most every :data:`PROBE_TTL_S`."""
        components = {"store": self._store_health(), "writer": self._writer_health(), "loki": self._loki_health(),
                      "prometheus": self._probe_health("prometheus", "FLOWSCOPE_DETECT_PROMETHEUS_URL"),
                      "grafana": self._probe_health("grafana", "FLOWSCOPE_GRAFANA_URL")}
        if self.forwarders:  # listed when FLOWSCOPE_FORWARD_DESTINATIONS names any: each destination's state
            components["forward"] = self.forwarders.health()
        states = {v["state"] for v in components.values()}
        status = DOWN if components["store"]["state"] == DOWN else (
            DEGRADED if states - {OK, DISABLED} else OK)
        # a lease held elsewhere is a replica's normal state, not a degradation: leases sit beside the components
        return {"status": status, "role": self.config.role, "components": components, "leases": self.leases.health()}

    def forward(self, fmt: str, body: bytes) -> None:
        """Hand an accepted OTLP traces body to every forward destination's queue (never blocks, never raises)."""
        self.forwarders.forward(fmt, body)

    def health_body(self) -> dict:
        """What ``GET /api/v1/health`` answers: :meth:`health` with the Loki queue, the series per metric
        and the OTLP spans waiting for their root."""
        loki = self.loki
        self.pipeline.fold_fast()  # the SDK's queued steps: their series count too
        return self.health() | {
            "loki": {"enabled": loki is not None, "queued_lines": loki.queued() if loki else 0},
            "series": {f.name: len(f) for f in self.store.families if len(f)},
            "pending_otlp_spans": self.pipeline.resolver.pending_spans,
        }

    def metrics_body(self, om: bool) -> Iterator[bytes]:
        """What ``GET /metrics`` answers, in chunks: the metric store, then the process's own registry (the
        OpenTelemetry bridge, process and GC metrics); OpenMetrics when ``om``, else Prometheus' text format."""
        extra = generate_latest_om(self.registry).removesuffix(b"# EOF\n") if om else generate_latest(self.registry)
        yield from render_iter(self.store, om)
        yield extra
        yield finish(om)

    def _store_health(self) -> dict:
        error = self.store_error()
        p = self._store_probe
        return {"state": DOWN if error else OK, "url": mask_url(self.db.url.render_as_string(hide_password=True)),
                "error": error, "last_error": p.last_error, "last_error_at": _iso(p.last_error_at),
                "last_ok_at": _iso(p.last_ok_at)}

    def _queue_health(self, name: str, worker, dropped_metric: str) -> dict:
        """A background sender's state: its thread, its queue, its drops and its last failed attempt."""
        dropped = _counts(self.store, dropped_metric)
        total = sum(dropped.values())
        queued, capacity = worker.queued(), worker.max_queue
        last = worker.last_error
        failing = last is not None and (worker.last_ok_at is None or last[0] > worker.last_ok_at)
        unreachable = failing and getattr(last[1], "reason", None) in ("connection", "timeout", "outage")
        if worker.started and not worker.alive() and not self.closing:
            state = DOWN  # its thread ended: nothing is sent any more
        elif unreachable:
            state = DOWN
        elif failing or queued > capacity // 2 or self._recent.within(name, total, RECENT_S):
            state = DEGRADED
        else:
            state = OK
        return {"state": state, "queued": queued, "capacity": capacity, "dropped": dropped,
                "last_error": first_line(last[1]) if last else None, "last_error_at": _iso(last[0]) if last else None,
                "last_ok_at": _iso(worker.last_ok_at)}

    def _writer_health(self) -> dict:
        if self.recorder is None:
            return {"state": DISABLED, "reason": "FLOWSCOPE_RUN_STORE is false"}
        out = self._queue_health("writer", self.recorder.worker, c.RUN_STORE_DROPPED_TOTAL)
        process = self.recorder.writer
        if process is None:
            out["process"] = None  # FLOWSCOPE_STORE_WRITER=thread, or an in-memory store
        else:
            out["process"] = {"pid": process.pid, "alive": process.alive(), "restarts": process.restarts}
            if not process.alive() and out["state"] == OK and self.recorder.worker.started:
                out["state"] = DEGRADED
        return out

    def _loki_health(self) -> dict:
        if self.loki is None:
            return {"state": DISABLED, "reason": "FLOWSCOPE_LOKI_URL is not set"}
        out = self._queue_health("loki", self.loki.worker, c.LOKI_LINES_DROPPED_TOTAL)
        out["url"] = mask_url(self.loki.config.push_url)
        return out

    def _probe_health(self, name: str, setting: str) -> dict:
        p = self._probes.get(name)
        if p is None:
            return {"state": DISABLED, "reason": f"{setting} is not set"}
        error = p()
        return {"state": DOWN if error else OK, "error": error, "last_error": p.last_error,
                "last_error_at": _iso(p.last_error_at), "last_ok_at": _iso(p.last_ok_at)}

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
        self.leases.stop(max(0.0, end - time.monotonic()))  # another replica takes the duties at its next try
        self.forwarders.close(0.0, wait=False)  # drains beside the sinks, then gets what is left of the deadline
        flushed = self.pipeline.close(max(0.0, end - time.monotonic()))
        flushed = self.forwarders.close(max(0.0, end - time.monotonic())) and flushed
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
