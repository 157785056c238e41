"""Where SDK spans go: straight into a pipeline, or to a remote exporter in batches.

:class:`RemoteSink` never blocks the application: spans go into a bounded
queue that a background thread drains to ``POST /api/v1/spans``; when the
queue is full the span is dropped and counted
(``flowscope_sdk_spans_dropped_total`` in the app's prometheus_client registry).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from urllib.parse import urlencode

import orjson
import requests
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from .. import conventions as c
from ..model import ErrorRecord, Span
from ..profiles import Profile
from ..pipeline import Pipeline
from ..retry import DEFAULT_RETRY, RetryPolicy

log = logging.getLogger("flowscope.sdk")


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


def to_native(s: Span) -> tuple[str, dict]:
    """(\"steps\"|\"workflows\", record) in the native JSON shape."""
    rec = {"correlation_id": s.correlation_id, "workflow_type": s.workflow, "status": s.status,
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


def error_to_native(e: ErrorRecord) -> tuple[str, dict]:
    rec = {"error_type": e.error_type, "message": e.message, "layer": e.layer, "component": e.component,
           "workflow_type": e.workflow, "category": e.category, "service": e.service, "context": e.context}
    if e.time_ns:
        rec["time"] = e.time_ns / 1e9
    for k in ("correlation_id", "trace_id", "span_id", "stack_trace"):
        v = getattr(e, k)
        if v:
            rec[k] = v
    return "errors", rec


class RemoteSink:
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
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._session = requests.Session()
        self._rng = random.Random()
        self.dropped = 0
        self.sent = 0
        self._dropped_metric = None
        if registry is not None:
            try:
                self._dropped_metric = Counter(c.SDK_SPANS_DROPPED_TOTAL.removesuffix("_total"),
                                               "Spans the SDK gave up on, by reason.", [c.L_REASON],
                                               registry=registry)
            except ValueError:  # already registered by another sink in this process
                self._dropped_metric = registry._names_to_collectors.get(c.SDK_SPANS_DROPPED_TOTAL)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowscope-sdk-remote", daemon=True)
        self._thread.start()

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        if self._dropped_metric is not None:
            self._dropped_metric.labels(reason).inc(n)

    pipeline = None  # remote: every step is sent as a Span

    def emit(self, s: Span) -> None:
        try:
            self._q.put_nowait(s)
        except queue.Full:
            self._drop("queue_full")

    def started(self, workflow: str) -> None:
        pass

    def ended(self, workflow: str) -> None:
        pass

    def error(self, e: ErrorRecord) -> None:
        try:
            self._q.put_nowait(e)
        except queue.Full:
            self._drop("queue_full")

    def profile(self, p: Profile) -> None:
        try:
            self._q.put_nowait(p)
        except queue.Full:
            self._drop("queue_full")

    def _take(self) -> list[Span | ErrorRecord]:
        batch: list[Span] = []
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            if self._closing.is_set():
                left = 0
            try:
                batch.append(self._q.get(timeout=left) if left > 0 else self._q.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._send(batch)
            elif self._closing.is_set():
                return

    def _send(self, batch: list) -> None:
        body: dict[str, list] = {"steps": [], "workflows": [], "errors": []}
        profiles = []
        for s in batch:
            if isinstance(s, Profile):
                profiles.append(s)
                continue
            kind, rec = to_native(s) if isinstance(s, Span) else error_to_native(s)
            body[kind].append(rec)
        if len(profiles) < len(batch):
            self._post(self.url, orjson.dumps(body), "application/json", len(batch) - len(profiles))
        for p in profiles:
            params = {"format": "folded", "workflow": p.workflow, "sample_rate": p.sample_rate_hz}
            if p.correlation_id:
                params["correlation_id"] = p.correlation_id
            folded = "\n".join(f"{stack} {n}" for stack, n in p.stacks.items()).encode()
            self._post(self.profiles_url + "?" + urlencode(params), folded, "text/plain", 1)

    def _post(self, url: str, data: bytes, ctype: str, n: int) -> None:
        headers = {"Content-Type": ctype}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        started, attempt = time.monotonic(), 0
        while True:
            try:
                r = self._session.post(url, data=data, headers=headers, timeout=self.timeout_s)
                if r.status_code < 300:
                    self.sent += n
                    return
                if r.status_code not in self.retry.retry_statuses:
                    log.error("exporter refused %d items: HTTP %d %s", n, r.status_code, r.text[:200])
                    self._drop("rejected", n)
                    return
            except requests.RequestException as e:
                log.warning("exporter unreachable: %s", e)
            wait = self.retry.backoff(attempt, self._rng)
            attempt += 1
            if time.monotonic() - started + wait > self.retry.deadline_s or self._closing.is_set():
                self._drop("retries_exhausted", n)
                return
            time.sleep(wait)

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (bounded by ``timeout_s``), then stop."""
        self._closing.set()
        self._thread.join(timeout_s)
        left = self._q.qsize()
        if left:
            self._drop("shutdown", left)
