"""Where SDK spans go: straight into a pipeline, or to a remote exporter in batches.

:class:`RemoteSink` never blocks the application: spans go into a bounded
queue that a background thread (a :class:`~exporter.worker.BatchWorker`) drains
to ``POST /api/v1/spans``, retrying under a :class:`~exporter.retry.RetryPolicy`
(``Retry-After`` honoured; ``close`` interrupts a backoff at its deadline). What
is given up on is counted by reason (``queue_full``, ``rejected``,
``retries_exhausted``, ``shutdown``) in ``flowscope_sdk_spans_dropped_total``
in the app's prometheus_client registry.
"""

from __future__ import annotations

import logging
import threading
import weakref
from functools import partial
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlencode

import orjson
import requests
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from .. import conventions as c
from ..model import ErrorRecord, Span
from ..profiles import Profile
from ..retry import DEFAULT_RETRY, RetryPolicy, SendError, parse_retry_after
from ..worker import BatchWorker

if TYPE_CHECKING:  # the in-process pipeline is the server's: a remote-only app never loads it
    from ..pipeline import Pipeline

log = logging.getLogger("flowscope.sdk")


class SdkSink(Protocol):
    """Where a :class:`~exporter.sdk.tracer.WorkflowTracer` and an :class:`~exporter.sdk.errors.ErrorLogger` send
    what they record: :class:`InProcessSink` or :class:`RemoteSink`."""

    @property
    def pipeline(self) -> Pipeline | None:
        """The in-process pipeline (its fast path takes a plain successful step), or None: every step is a Span."""

    def emit(self, s: Span) -> None: ...

    def started(self, workflow: str) -> None: ...

    def ended(self, workflow: str) -> None: ...

    def error(self, e: ErrorRecord) -> None: ...

    def profile(self, p: Profile) -> None: ...

    def close(self) -> object: ...


class InProcessSink:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.emit = pipeline.record_step

    def started(self, workflow: str) -> None:
        self.pipeline.workflow_started(workflow)

    def ended(self, workflow: str) -> None:
        self.pipeline.workflow_ended(workflow)

    def error(self, e: ErrorRecord) -> None:
        self.pipeline.record_error(e)

    def profile(self, p: Profile) -> None:
        self.pipeline.record_profile(p, c.FORMAT_SDK)

    def close(self) -> None:
        pass


def _iso_ns(ns: int) -> float:
    return ns / 1e9


def to_native(s: Span) -> tuple[str, dict[str, object]]:
    """(\"steps\"|\"workflows\", record) in the native JSON shape."""
    rec: dict[str, object] = {"correlation_id": s.correlation_id, "workflow_type": s.workflow, "status": s.status,
           "started_at": _iso_ns(s.start_ns), "duration_ms": (s.end_ns - s.start_ns) / 1e6,
           "trace_id": s.trace_id, "service": s.service}
    for k in ("error_type", "error_message"):
        v = getattr(s, k)
        if v:
            rec[k] = v
    if s.attributes:
        rec["metadata"] = s.attributes
    if not s.is_step:
        if s.user:
            rec["user"] = s.user
        return "workflows", rec
    rec.update(layer=s.layer, component=s.component, operation=s.operation, span_id=s.span_id)
    if s.parent_span_id:
        rec["parent_span_id"] = s.parent_span_id
    if s.state is not None:
        rec["state"] = s.state
    if s.stack_trace:
        rec["stack_trace"] = s.stack_trace
    return "steps", rec


def error_to_native(e: ErrorRecord) -> tuple[str, dict[str, object]]:
    rec: dict[str, object] = {"error_type": e.error_type, "message": e.message, "layer": e.layer, "component": e.component,
           "workflow_type": e.workflow, "category": e.category, "service": e.service, "context": e.context}
    if e.time_ns:
        rec["time"] = e.time_ns / 1e9
    for k in ("correlation_id", "trace_id", "span_id", "stack_trace"):
        v = getattr(e, k)
        if v:
            rec[k] = v
    return "errors", rec


_DROPPED_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_DROPPED_LOCK = threading.Lock()


def _dropped_counter(registry: CollectorRegistry) -> Counter | None:
    """``flowscope_sdk_spans_dropped_total`` in ``registry``: one per registry, shared by every sink in it.

    None (and a warning) when something else already registered that name there.
    """
    with _DROPPED_LOCK:
        counter = _DROPPED_COUNTERS.get(registry)
        if counter is None:
            try:
                counter = Counter(c.SDK_SPANS_DROPPED_TOTAL.removesuffix("_total"),
                                  "Spans the SDK gave up on, by reason.", [c.L_REASON], registry=registry)
            except ValueError as e:  # the name is taken in this registry by a collector that is not ours
                log.warning("not counting SDK drops in this registry: %s", e)
                return None
            _DROPPED_COUNTERS[registry] = counter
        return counter


class RemoteSink:
    """Sends spans, errors and profiles to a remote exporter from a :class:`~exporter.worker.BatchWorker`.

    The worker's thread starts with the first item sent (a sink that is never used starts nothing);
    :meth:`close` (``sdk.shutdown()``) flushes what is queued within its timeout and stops it.
    """

    def __init__(self, endpoint: str, queue_size: int = 10_000, batch_size: int = 500, batch_wait_s: float = 1.0,
                 token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                 registry: CollectorRegistry | None = REGISTRY, timeout_s: float = 10.0):
        self.url = endpoint.rstrip("/") + c.NATIVE_SPANS_PATH
        self.profiles_url = endpoint.rstrip("/") + c.PROFILES_PATH
        self.token = token
        self.retry = retry
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self.dropped = 0
        self.sent = 0
        self._dropped_metric = _dropped_counter(registry) if registry is not None else None
        self._worker: BatchWorker[Span | ErrorRecord | Profile] = BatchWorker(
            "flowscope-sdk-remote", self._send, on_drop=self._drop, max_queue=queue_size, max_batch=batch_size,
            linger_s=batch_wait_s, policy=retry, autostart=True, on_retry=self._on_retry)

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        if self._dropped_metric is not None:
            self._dropped_metric.labels(reason).inc(n)

    pipeline = None  # remote: every step is sent as a Span

    def emit(self, s: Span) -> None:
        self._worker.submit(s)

    def started(self, workflow: str) -> None:
        pass

    def ended(self, workflow: str) -> None:
        pass

    def error(self, e: ErrorRecord) -> None:
        self._worker.submit(e)

    def profile(self, p: Profile) -> None:
        self._worker.submit(p)

    def queued(self) -> int:
        return self._worker.queued()

    def _send(self, batch: list[Span | ErrorRecord | Profile]) -> None:
        """One batch: its spans and errors in one POST, each profile in its own; each retried apart."""
        body: dict[str, list[dict[str, object]]] = {"steps": [], "workflows": [], "errors": []}
        profiles: list[Profile] = []
        for s in batch:
            if isinstance(s, Profile):
                profiles.append(s)
                continue
            kind, rec = to_native(s) if isinstance(s, Span) else error_to_native(s)
            body[kind].append(rec)
        n = len(batch) - len(profiles)
        if n:
            data = orjson.dumps(body)
            self._worker.deliver(partial(self._post, self.url, data, "application/json", n), n)
        for p in profiles:
            params: dict[str, str | float | None] = {"format": "folded", "workflow": p.workflow, "sample_rate": p.sample_rate_hz}
            if p.correlation_id:
                params["correlation_id"] = p.correlation_id
            folded = "\n".join(f"{stack} {k}" for stack, k in p.stacks.items()).encode()
            url = self.profiles_url + "?" + urlencode(params)
            self._worker.deliver(partial(self._post, url, folded, "text/plain", 1), 1)

    def _post(self, url: str, data: bytes, ctype: str, n: int) -> None:
        """One attempt; raises :class:`SendError` for the retry policy to judge."""
        headers = {"Content-Type": ctype}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            r = self._session.post(url, data=data, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as e:
            raise SendError(f"exporter unreachable: {e}") from None
        if r.status_code >= 300:
            raise SendError(f"exporter answered HTTP {r.status_code}: {r.text[:200]}", status=r.status_code,
                            retry_after=parse_retry_after(r.headers.get("Retry-After")))
        self.sent += n

    @staticmethod
    def _on_retry(error: BaseException, attempt: int, wait: float) -> None:
        log.warning("sending to the exporter failed (%s); retry %d in %.2fs", error, attempt, wait)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until what is queued now is sent or counted; False at the deadline."""
        return self._worker.force_flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Send what is queued (bounded by ``timeout_s``), then stop; what is left is counted (shutdown)."""
        ok = self._worker.shutdown(timeout_s)
        self._session.close()
        return ok
