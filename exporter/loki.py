"""Push step and error records to Loki: batched, compressed, retried, bounded.

- Stream labels are bounded values only (``service, workflow, layer, level``);
  correlation, trace and span IDs go in the line *and* in structured metadata.
- Bodies are gzip JSON (default) or snappy protobuf, per Loki's push API
  (https://grafana.com/docs/loki/latest/reference/loki-http-api/#ingest-logs).
- :data:`DEFAULT_RETRY` is the retry policy: 429/500/502/503/504 and transport
  errors are retried with jittered exponential backoff, honouring
  ``Retry-After``, up to one overall deadline per batch; any other 4xx is not
  retried. Every line ends up either sent or counted as dropped, by reason.
- The queue is bounded; lines offered to a full queue are dropped and counted.
  :meth:`LokiPusher.close` flushes what is queued before the process exits.

Why not loki-logger-handler: it has no retries and an unbounded queue, so an
outage either loses lines silently or grows memory without limit.
"""

from __future__ import annotations

import gzip
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import cramjam
import orjson
import requests

from . import conventions as c
from .metrics import MetricStore
from .model import ErrorRecord, Span
from .retry import RetryPolicy

log = logging.getLogger("flowscope.loki")

LEVELS = {"ok": c.LEVEL_INFO, "cancelled": c.LEVEL_WARN, "error": c.LEVEL_ERROR, "timeout": c.LEVEL_ERROR}


def _same(text):
    return text


@dataclass(slots=True)
class LokiConfig:
    url: str
    tenant: str | None = None
    username: str | None = None
    password: str | None = None
    bearer_token: str | None = None
    encoding: str = "json"  # json (gzip) | protobuf (snappy)
    batch_lines: int = 1000
    batch_wait_s: float = 1.0
    queue_lines: int = 100_000
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    flush_timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: scrubs secrets out of messages before they are pushed (``Redactor.text``)
    redact: Any = _same

    @property
    def push_url(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith(c.LOKI_PUSH_PATH) else u + c.LOKI_PUSH_PATH


# An entry: (stream label values in STREAM_LABELS order, time ns, line, structured metadata)
Entry = tuple[tuple[str, str, str, str], int, str, dict[str, str]]


def span_entry(s: Span, redact=_same) -> Entry:
    """The Loki entry of one finished step (pure); ``redact`` scrubs secrets out of the message."""
    rec: dict[str, Any] = {
        "correlation_id": s.correlation_id, "trace_id": s.trace_id, "span_id": s.span_id,
        "component": s.component, "operation": s.operation, "status": s.status,
        "duration_ms": round((s.end_ns - s.start_ns) / 1e6, 3),
        "message": redact(s.error_message) if s.error_message else f"{s.operation} {s.status}",
    }
    if s.error_type:
        rec["error_type"] = s.error_type
    level = LEVELS.get(s.status, "info")
    if s.layer == "database":
        pattern = s.loaded_attribute(c.ATTR_DB_PATTERN)
        if pattern:  # a slow query or an N+1 pattern the SDK flagged: a warning with the (literal-free) statement
            rec["db_pattern"] = pattern
            rec["statement"] = redact(s.loaded_attribute(c.ATTR_DB_STATEMENT) or "")
            if level == c.LEVEL_INFO:
                level = c.LEVEL_WARN
    meta = {"correlation_id": s.correlation_id, "trace_id": s.trace_id, "span_id": s.span_id}
    return ((s.service or "unknown_service", s.workflow or c.UNKNOWN_WORKFLOW, s.layer, level),
            s.end_ns, orjson.dumps(rec).decode(), meta)


def error_entry(e: ErrorRecord, redact=_same) -> Entry:
    rec = {"correlation_id": e.correlation_id, "trace_id": e.trace_id, "span_id": e.span_id,
           "component": e.component, "error_type": e.error_type, "category": e.category,
           "message": redact(e.message)}
    if e.stack_trace:
        rec["stack_trace"] = redact(e.stack_trace)
    meta = {k: v for k, v in (("correlation_id", e.correlation_id), ("trace_id", e.trace_id),
                              ("span_id", e.span_id)) if v}
    return ((e.service or "unknown_service", e.workflow, e.layer, c.LEVEL_ERROR),
            e.time_ns or time.time_ns(), orjson.dumps(rec).decode(), meta)


def _group(entries: list[Entry]) -> dict[tuple, list]:
    streams: dict[tuple, list] = {}
    for labels, ts, line, meta in entries:
        streams.setdefault(labels, []).append((ts, line, meta))
    return streams


def encode_json(entries: list[Entry]) -> bytes:
    """Loki JSON push body (uncompressed): ``{"streams":[{"stream":{..},"values":[[ns,line,meta]]}]}``."""
    body = {"streams": [
        {"stream": dict(zip(c.STREAM_LABELS, labels)),
         "values": [[str(ts), line, meta] if meta else [str(ts), line] for ts, line, meta in vals]}
        for labels, vals in _group(entries).items()]}
    return orjson.dumps(body)


def _selector(labels: tuple) -> str:
    return "{" + ", ".join(f'{k}="{orjson.dumps(v).decode()[1:-1]}"'
                           for k, v in zip(c.STREAM_LABELS, labels)) + "}"


def encode_protobuf(entries: list[Entry]) -> bytes:
    """Loki protobuf push body (uncompressed ``logproto.PushRequest``)."""
    from .lokiproto import PushRequest

    req = PushRequest()
    for labels, vals in _group(entries).items():
        st = req.streams.add(labels=_selector(labels))
        for ts, line, meta in vals:
            e = st.entries.add(line=line)
            e.timestamp.seconds, e.timestamp.nanos = divmod(ts, 1_000_000_000)
            for k, v in meta.items():
                e.structuredMetadata.add(name=k, value=v)
    return req.SerializeToString()


def encode(entries: list[Entry], encoding: str) -> tuple[bytes, dict[str, str]]:
    """Body and content headers for one push."""
    if encoding == "protobuf":
        return bytes(cramjam.snappy.compress_raw(encode_protobuf(entries))), {
            "Content-Type": "application/x-protobuf"}
    return gzip.compress(encode_json(entries), compresslevel=5), {
        "Content-Type": "application/json", "Content-Encoding": "gzip"}


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class LokiPusher:
    """A bounded queue of entries and one thread that pushes them in batches.

    ``enqueue`` never blocks and never raises: on a full queue the entry is
    dropped and counted (``reason="queue_full"``). The queue holds Spans or
    ready entries; a Span's line is built by the pusher thread when its batch is
    taken, so the traced application never pays for JSON encoding.
    """

    def __init__(self, config: LokiConfig, store: MetricStore, session: requests.Session | None = None,
                 rng: random.Random | None = None):
        self.config = config
        self.session = session or requests.Session()
        self.rng = rng or random.Random()
        self._queue: deque[Entry] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._stop_now = threading.Event()
        self._busy = False
        self.failures = store.counter(c.LOKI_PUSH_FAILURES_TOTAL, "Failed push attempts to Loki (each retry counts).",
                                      (c.L_REASON,))
        self.sent = store.counter(c.LOKI_LINES_SENT_TOTAL, "Log lines Loki accepted.")
        self.dropped = store.counter(c.LOKI_LINES_DROPPED_TOTAL, "Log lines given up on, by reason.", (c.L_REASON,))
        store.gauge(c.LOKI_QUEUE_LINES, "Log lines queued for Loki.").set_function((), lambda: len(self._queue))
        self._store = store
        self._thread = threading.Thread(target=self._run, name="flowscope-loki", daemon=True)
        self._thread.start()

    # -- producer side --------------------------------------------------------------------

    def enqueue(self, entry: Entry | Span) -> bool:
        """Queue one entry or Span; False if it was dropped because the queue is full."""
        return self.enqueue_many([entry]) == 1

    def enqueue_many(self, entries: list[Entry | Span]) -> int:
        with self._cv:
            room = self.config.queue_lines - len(self._queue)
            if self._closing:
                room = 0
            take = entries if room >= len(entries) else entries[:max(room, 0)]
            self._queue.extend(take)
            if len(self._queue) >= self.config.batch_lines:
                self._cv.notify()
        lost = len(entries) - len(take)
        if lost:
            self._count(self.dropped, ("queue_full",), lost)
        return len(take)

    def queued(self) -> int:
        return len(self._queue)

    def _count(self, counter, key, n=1) -> None:
        with self._store.lock:
            counter.inc(key, n)

    # -- consumer side --------------------------------------------------------------------

    def _run(self) -> None:
        cfg = self.config
        while True:
            with self._cv:
                deadline = time.monotonic() + cfg.batch_wait_s
                while not self._closing and len(self._queue) < cfg.batch_lines:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if not self._queue:
                    if self._closing:
                        return
                    continue
                if self._stop_now.is_set():  # closing past the flush deadline: count the rest once
                    left = len(self._queue)
                    self._queue.clear()
                    self._cv.notify_all()
                    self._count(self.dropped, ("shutdown",), left)
                    log.error("shutting down: %d Loki lines not sent", left)
                    return
                n = min(cfg.batch_lines, len(self._queue))
                batch = [self._queue.popleft() for _ in range(n)]
                self._busy = True
            try:
                redact = cfg.redact
                self._push([e if type(e) is tuple else span_entry(e, redact) for e in batch])
            except Exception:  # never let the thread die: count and go on
                log.exception("unexpected error pushing to Loki")
                self._count(self.dropped, ("internal_error",), len(batch))
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _push(self, batch: list[Entry]) -> None:
        cfg, policy = self.config, self.config.retry
        body, headers = encode(batch, cfg.encoding)
        if cfg.tenant:
            headers[c.LOKI_TENANT_HEADER] = cfg.tenant
        if cfg.bearer_token:
            headers["Authorization"] = f"Bearer {cfg.bearer_token}"
        auth = (cfg.username, cfg.password or "") if cfg.username else None
        started = time.monotonic()
        attempt = 0
        while True:
            retry_after = None
            try:
                r = self.session.post(cfg.push_url, data=body, headers=headers, auth=auth,
                                      timeout=(cfg.connect_timeout_s, cfg.read_timeout_s))
                if 200 <= r.status_code < 300:
                    self._count(self.sent, (), len(batch))
                    return
                reason = f"http_{r.status_code}"
                if r.status_code not in policy.retry_statuses:
                    self._count(self.failures, (reason,))
                    self._count(self.dropped, ("rejected",), len(batch))
                    log.error("Loki refused %d lines with HTTP %d (not retried): %s", len(batch), r.status_code,
                              r.text[:300])
                    return
                retry_after = parse_retry_after(r.headers.get("Retry-After"))
            except requests.Timeout:
                reason = "timeout"
            except requests.RequestException:
                reason = "connection"
            self._count(self.failures, (reason,))
            wait = policy.backoff(attempt, self.rng)
            if retry_after is not None:
                wait = max(wait, min(retry_after, policy.max_retry_after_s))
            attempt += 1
            elapsed = time.monotonic() - started
            if self._stop_now.is_set():
                self._count(self.dropped, ("shutdown",), len(batch))
                return
            if elapsed + wait > policy.deadline_s:
                self._count(self.dropped, ("retries_exhausted",), len(batch))
                log.error("giving up on %d Loki lines after %d attempts (%s)", len(batch), attempt, reason)
                return
            log.warning("Loki push failed (%s), retry %d in %.2fs", reason, attempt, wait)
            if self._stop_now.wait(wait):
                self._count(self.dropped, ("shutdown",), len(batch))
                return

    # -- lifecycle ----------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until the queue is empty and no push is in flight. True if it got there."""
        end = time.monotonic() + (self.config.flush_timeout_s if timeout_s is None else timeout_s)
        with self._cv:
            self._cv.notify()
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
                self._cv.notify()
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Flush, then stop. Lines still queued at the deadline are counted as dropped (shutdown)."""
        timeout = self.config.flush_timeout_s if timeout_s is None else timeout_s
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop_now.set()
            self._thread.join(5)
        with self._cv:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._count(self.dropped, ("shutdown",), left)
