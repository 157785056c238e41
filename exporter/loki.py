"""Push step and error records to Loki: batched, compressed, retried, bounded.

- Stream labels are bounded values only (``service, workflow, layer, level``);
  correlation, trace and span IDs go in the line *and* in structured metadata.
- Bodies are gzip JSON (default) or snappy protobuf, per Loki's push API
  (https://grafana.com/docs/loki/latest/reference/loki-http-api/#ingest-logs).
- :class:`~exporter.retry.RetryPolicy` is the retry policy: 429/500/502/503/504 and transport
  errors are retried with jittered exponential backoff, honouring
  ``Retry-After``, up to one overall deadline per batch; any other 4xx is not
  retried. Every line ends up either sent or counted as dropped, by reason.
- During a long backoff Loki's ``/ready`` is probed about once a second; once
  Loki is back the backoff ends and the batch is pushed at once.
- Poison costs only itself: an entry that cannot be encoded, or that Loki
  refuses with 400/413, is found by splitting its batch; the rest is sent and
  the refused entries are counted (``reason="poison"``) and logged once.
- The queue is bounded; on a full queue the newest lines (those offered) or the
  oldest queued ones are dropped (``queue_policy``), and counted. The queue and
  its thread are a :class:`~exporter.worker.BatchWorker`: :meth:`LokiPusher.start`
  starts it, :meth:`LokiPusher.close` flushes what is queued (with a deadline)
  and stops it.

Why not loki-logger-handler: it has no retries and an unbounded queue, so an
outage either loses lines silently or grows memory without limit.
"""

from __future__ import annotations

import gzip
import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cramjam
import orjson
import requests

from . import conventions as c
from .metrics import MetricStore
from .model import ErrorRecord, LogLine, Span
from .retry import RetriesExhausted, RetryInterrupted, RetryPolicy, SendError, parse_retry_after
from .worker import BatchWorker

if TYPE_CHECKING:
    from .profiles import Profile

log = logging.getLogger("flowscope.loki")

#: :meth:`LokiPusher._push`'s answer when the pusher is stopping mid-retry
_STOPPED = object()
#: Splits one batch may take to isolate the lines Loki refuses: enough to find a few bad lines in a
#: 1,000-line batch (about 2·log2(1000) requests each), few enough that a Loki refusing a whole batch
#: (every line too old after an outage) costs tens of requests, not 2N-1.
MAX_SPLITS = 64
_DIGITS = re.compile(r"\d+")

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
    #: on a full queue, drop the lines offered (``drop_newest``) or the oldest queued ones (``drop_oldest``)
    queue_policy: str = "drop_newest"
    #: how often ``/ready`` is probed during a backoff longer than this
    probe_interval_s: float = 1.0
    #: scrubs secrets out of messages before they are pushed (``Redactor.text``)
    redact: Any = _same

    @property
    def push_url(self) -> str:
        u = self.url.rstrip("/")
        return u if u.endswith(c.LOKI_PUSH_PATH) else u + c.LOKI_PUSH_PATH

    @property
    def ready_url(self) -> str:
        return self.url.rstrip("/").removesuffix(c.LOKI_PUSH_PATH) + c.LOKI_READY_PATH


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


def _value_redactor(redact):
    """The structure-aware redaction of the Redactor whose ``text`` method ``redact`` is (``Redactor.value``:
    secret keys' values replaced), else ``redact`` applied to every string inside a value."""
    value = getattr(getattr(redact, "__self__", None), "value", None)
    if value is not None:
        return value

    def walk(v, depth=0):
        if isinstance(v, str):
            return redact(v)
        if depth < 64 and isinstance(v, dict):
            return {k: walk(x, depth + 1) for k, x in v.items()}
        if depth < 64 and isinstance(v, list):
            return [walk(x, depth + 1) for x in v]
        return v
    return walk


def log_entry(line: LogLine, redact=_same, redact_value=None) -> Entry:
    """The Loki entry of one application log line (pure): its stream is the same bounded labels as the steps'
    (service, workflow, layer: ``frontend`` for a browser's, else :data:`~exporter.conventions.LOG_LAYER`, and
    its level); its ids go in the line and in structured metadata. ``redact`` scrubs the message and the
    exception, ``redact_value`` the attributes (default: :func:`_value_redactor` of ``redact``)."""
    rec: dict[str, Any] = {"message": redact(line.body) or "", "level": line.level, "source": line.source}
    for k in ("logger", "correlation_id", "trace_id", "span_id"):
        v = getattr(line, k)
        if v:
            rec[k] = v
    if line.exception:
        rec["exception"] = redact(line.exception)
    if line.attributes:
        rec["attributes"] = (redact_value or _value_redactor(redact))(line.attributes)
    meta = {k: v for k, v in (("correlation_id", line.correlation_id), ("trace_id", line.trace_id),
                              ("span_id", line.span_id)) if v}
    layer = "frontend" if line.source == c.LOG_SOURCE_BROWSER else c.LOG_LAYER
    level = line.level if line.level in c.LOG_LEVELS else c.LEVEL_INFO
    return ((line.service or "unknown_service", line.workflow or c.UNKNOWN_WORKFLOW, layer, level),
            line.time_ns, orjson.dumps(rec, default=str).decode(), meta)


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


class LokiPusher:
    """A bounded queue of entries and one thread that pushes them in batches (a :class:`BatchWorker`).

    ``enqueue`` never blocks and never raises: on a full queue the entry offered
    (``drop_newest``) or the oldest queued one (``drop_oldest``) is dropped and
    counted (``reason="queue_full"``). The queue holds Spans or ready entries; a
    Span's line is built by the pusher thread when its batch is taken, so the
    traced application never pays for JSON encoding. Nothing is pushed until
    :meth:`start`; :meth:`close` flushes and stops. It is one of the pipeline's sinks
    (:class:`~exporter.sinks.Sink`: :meth:`spans`, :meth:`error`, :meth:`profile`, :meth:`flush`, :meth:`close`).
    """

    def __init__(self, config: LokiConfig, store: MetricStore, session: requests.Session | None = None,
                 rng: random.Random | None = None):
        self.config = config
        self._own_session = session is None
        self.session = session or requests.Session()
        self.rng = rng or random.Random()
        self._down = False  # Loki was seen unreachable or not ready during the current push's retries
        self._poison_seen: dict[str, int] = {}  # kind of refusal -> lines dropped with it, so each is logged once
        self.failures = store.counter(c.LOKI_PUSH_FAILURES_TOTAL, "Failed push attempts to Loki (each retry counts).",
                                      (c.L_REASON,))
        self.sent = store.counter(c.LOKI_LINES_SENT_TOTAL, "Log lines Loki accepted.")
        self.dropped = store.counter(c.LOKI_LINES_DROPPED_TOTAL, "Log lines given up on, by reason: queue_full, "
                                     "poison (an entry that cannot be encoded or that Loki refused; the rest of its "
                                     "batch was sent), rejected, retries_exhausted, shutdown, internal_error.",
                                     (c.L_REASON,))
        with store.lock:  # every reason present from the start, at 0, for rate() and the FlowscopeLokiDropping alert
            self.sent.inc((), 0)
            for reason in c.LOKI_DROP_REASONS:
                self.dropped.inc((reason,), 0)
        self._store = store
        self._redact_value = _value_redactor(config.redact)
        self.worker: BatchWorker[Entry | Span | LogLine] = BatchWorker(
            "flowscope-loki", self._send_batch, on_drop=lambda reason, n: self._count(self.dropped, (reason,), n),
            max_queue=config.queue_lines, max_batch=config.batch_lines, linger_s=config.batch_wait_s,
            policy=config.retry, queue_policy=config.queue_policy)
        store.gauge(c.LOKI_QUEUE_LINES, "Log lines queued for Loki.").set_function((), self.worker.queued)

    # -- producer side --------------------------------------------------------------------

    def enqueue(self, entry: Entry | Span) -> bool:
        """Queue one entry or Span; False if it was dropped because the queue is full."""
        return self.worker.submit(entry)

    def enqueue_many(self, entries: list[Entry | Span]) -> int:
        """Queue entries or Spans; returns how many of them were queued. Under ``drop_oldest`` a full queue
        makes room by dropping its oldest lines, so every entry offered is queued (the last
        ``queue_lines`` of them, if more are offered at once)."""
        return self.worker.submit_many(entries)

    def queued(self) -> int:
        return self.worker.queued()

    # -- the pipeline's sink (exporter.sinks.Sink) ------------------------------------------

    def spans(self, batch: Sequence[Span]) -> None:
        """Queue finished steps; each becomes a line on the pusher thread."""
        if len(batch) == 1:
            self.worker.submit(batch[0])
        else:
            self.worker.submit_many(batch)

    def error(self, rec: ErrorRecord) -> None:
        """Queue a logged error as a line (its message redacted with ``config.redact``)."""
        self.worker.submit(error_entry(rec, self.config.redact))

    def profile(self, profile: Profile) -> None:
        """Loki keeps no profiles."""

    def logs(self, lines: Sequence[LogLine]) -> None:
        """Queue application log lines (:class:`~exporter.sinks.LogSink`); each becomes an entry on the pusher
        thread (:func:`log_entry`), queued and dropped like the steps' lines."""
        self.worker.submit_many(lines)

    def _count(self, counter, key, n=1) -> None:
        with self._store.lock:
            counter.inc(key, n)

    # -- consumer side (the worker's thread) ------------------------------------------------

    def _send_batch(self, batch: list) -> None:
        self._send(self._entries(batch))

    def _entries(self, batch: list) -> list[Entry]:
        """The entries of a taken batch; a Span whose line cannot be built is dropped as poison."""
        redact = self.config.redact
        out = []
        for e in batch:
            if type(e) is tuple:
                out.append(e)
                continue
            try:
                out.append(log_entry(e, redact, self._redact_value) if type(e) is LogLine else span_entry(e, redact))
            except Exception as err:  # noqa: BLE001 - one span's odd values must not cost its batch
                self._poison(f"cannot encode a line: {type(err).__name__}: {err}")
        return out

    def _send(self, batch: list[Entry]) -> None:
        """Push ``batch``; entries that cannot be encoded or that Loki refuses are isolated by splitting.

        A chunk whose body cannot be encoded, or that Loki answers with one of the policy's
        ``split_statuses``, is halved until the refused entries stand alone: those are dropped as
        poison, the rest is sent. Loki keeps the valid entries of a push it answers 400 and
        drops exact duplicates (same stream, time and line), so resending them is harmless.
        """
        started = time.monotonic()  # one retry deadline for the whole batch, however it is split
        pending = [batch] if batch else []  # chunks still to send, the next one last
        splits = 0
        while pending:
            if self.worker.stopping.is_set():  # past the close deadline: what is left is counted, not sent
                self._count(self.dropped, ("shutdown",), sum(len(ch) for ch in pending))
                return
            chunk = pending.pop()
            try:
                body, headers = encode(chunk, self.config.encoding)
                refused = None
            except Exception as e:  # noqa: BLE001 - an entry no encoder takes: isolated below
                refused = f"cannot encode: {type(e).__name__}: {e}"
            else:
                refused = self._push(chunk, body, headers, started)
                if refused is _STOPPED:
                    self._count(self.dropped, ("shutdown",), len(chunk) + sum(len(ch) for ch in pending))
                    return
            if refused is None:
                continue
            if len(chunk) > 1 and splits < MAX_SPLITS:
                splits += 1
                mid = len(chunk) // 2
                pending += (chunk[mid:], chunk[:mid])
            else:  # one line, or past the split budget (Loki refusing nearly everything): drop it whole
                self._poison(refused, len(chunk))

    def _auth(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        cfg = self.config
        headers = {c.LOKI_TENANT_HEADER: cfg.tenant} if cfg.tenant else {}
        if cfg.bearer_token:
            headers["Authorization"] = f"Bearer {cfg.bearer_token}"
        return headers, ((cfg.username, cfg.password or "") if cfg.username else None)

    def _push(self, batch: list[Entry], body: bytes, headers: dict[str, str], started: float) -> str | object | None:
        """Push one encoded chunk under the retry policy. None when it was sent or given up on (counted);
        Loki's message when it refused the content (a split status), for :meth:`_send` to split on;
        :data:`_STOPPED` when the pusher is stopping (not counted here)."""
        cfg, policy = self.config, self.config.retry
        extra, auth = self._auth()
        headers.update(extra)

        def attempt() -> str | None:
            try:
                r = self.session.post(cfg.push_url, data=body, headers=headers, auth=auth,
                                      timeout=(cfg.connect_timeout_s, cfg.read_timeout_s))
            except requests.Timeout:
                self._down = True
                self._count(self.failures, ("timeout",))
                raise SendError("Loki timed out", reason="timeout") from None
            except requests.RequestException as e:
                self._down = True
                self._count(self.failures, ("connection",))
                raise SendError(f"Loki unreachable: {e}", reason="connection") from None
            if 200 <= r.status_code < 300:
                self._count(self.sent, (), len(batch))
                return None
            self._count(self.failures, (f"http_{r.status_code}",))
            if r.status_code in policy.split_statuses:
                return f"HTTP {r.status_code}: {r.text[:300]}"
            raise SendError(f"HTTP {r.status_code}: {r.text[:300]}", status=r.status_code,
                            retry_after=parse_retry_after(r.headers.get("Retry-After")))

        def on_retry(error: BaseException, n: int, wait: float) -> None:
            log.warning("Loki push failed (%s), retry %d in %.2fs", getattr(error, "reason", error), n, wait)

        def wait_out(wait: float, error: BaseException) -> bool:
            # a 429 says Loki is up and wants us to wait: its Retry-After is honoured in full, never probed away
            return self._wait_out(wait, probe=getattr(error, "status", None) != 429)

        self._down = False
        try:
            return self.worker.retry(attempt, started=started, wait=wait_out, on_retry=on_retry)
        except RetryInterrupted:
            return _STOPPED
        except RetriesExhausted as e:
            self._count(self.dropped, ("retries_exhausted",), len(batch))
            log.error("giving up on %d Loki lines after %d attempts (%s)", len(batch), e.attempts,
                      getattr(e.last, "reason", e.last))
            return None
        except SendError as e:  # a status the policy does not retry (403, 404, ...): the sender's fault, not the lines'
            self._count(self.dropped, ("rejected",), len(batch))
            log.error("Loki refused %d lines with %s (not retried)", len(batch), e)
            return None

    def _wait_out(self, wait: float, probe: bool) -> bool:
        """Wait out one backoff; False if the pusher is stopping.

        With ``probe``, a wait longer than ``probe_interval_s`` asks Loki's ``/ready`` every interval
        and ends as soon as Loki, having been unreachable or not ready, answers 200: lines pushed the
        moment it is back are lines a full queue does not drop. A Loki that is ready but still
        failing pushes (a 5xx) keeps its full backoff.
        """
        end = time.monotonic() + wait
        step = self.config.probe_interval_s
        stopping = self.worker.stopping
        while (left := end - time.monotonic()) > 0:
            if stopping.wait(min(left, step) if probe else left):
                return False
            if probe and end - time.monotonic() > 0:
                if self._ready():
                    if self._down:
                        log.info("Loki is ready again: pushing now")
                        return True
                else:
                    self._down = True
        return not stopping.is_set()

    def _ready(self) -> bool:
        """Whether Loki's ``/ready`` answers 200, within a short timeout."""
        cfg = self.config
        headers, auth = self._auth()
        limit = min(cfg.probe_interval_s, 1.0)
        try:
            r = self.session.get(cfg.ready_url, headers=headers, auth=auth,
                                 timeout=(min(cfg.connect_timeout_s, limit), min(cfg.read_timeout_s, limit)))
        except requests.RequestException:
            return False
        return r.status_code == 200

    def _poison(self, why: str, n_lines: int = 1) -> None:
        """Drop lines Loki will not take; log each kind of refusal once (then at 10, 100, ...)."""
        self._count(self.dropped, ("poison",), n_lines)
        # Loki's messages carry timestamps and sizes: without digits, one kind of refusal is one key
        kind = _DIGITS.sub("N", why)[:80]
        seen = self._poison_seen
        if kind not in seen and len(seen) >= 1000:  # bounded: past a thousand kinds, count without logging
            return
        n = seen[kind] = seen.get(kind, 0) + 1
        if str(n).rstrip("0") == "1":
            log.error("dropped a Loki line it cannot take (%d so far with this error; the rest of its batch was "
                      "sent): %s", n, why[:500])

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> LokiPusher:
        """Start the pushing thread; the owner that calls this calls :meth:`close`."""
        self.worker.start()
        return self

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every line queued so far is pushed or counted. True if it got there in time."""
        return self.worker.force_flush(self.config.flush_timeout_s if timeout_s is None else timeout_s)

    def close(self, timeout_s: float | None = None, wait: bool = True) -> bool:
        """Flush, then stop; lines still queued at the deadline are counted as dropped (shutdown).
        True if every line was pushed before the deadline. ``wait=False``: start draining, return at once."""
        done = self.worker.shutdown(self.config.flush_timeout_s if timeout_s is None else timeout_s, wait=wait)
        if wait and self._own_session and not self.worker.alive():
            self.session.close()  # its connection pools (and any keep-alive thread they run) go with it
        return done
