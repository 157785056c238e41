"""Where SDK spans (and log lines) go: straight into a pipeline, or to a remote exporter in batches.

:class:`RemoteSink` never blocks the application: spans go into a bounded
queue that a background thread (a :class:`~exporter.worker.BatchWorker`) drains
to ``POST /api/v1/spans``, retrying under a :class:`~exporter.retry.RetryPolicy`
(``Retry-After`` honoured; ``close`` interrupts a backoff at its deadline). What
is given up on is counted by reason (``queue_full``, ``rejected``,
``retries_exhausted``, ``shutdown``) in ``flowscope_sdk_spans_dropped_total``
in the app's prometheus_client registry. ``flush`` waits, up to its timeout,
until what was recorded is delivered.

Log lines (:class:`~exporter.sdk.logging.LogHandler`) take the same queue and thread: the sender posts
them as native JSON lines to ``POST /api/v1/logs``, retried and counted like the spans.

The app's cost per step is what ``bench/sdk_remote.py`` measures (its CPU, the
sender's included): a plain step is queued as a tuple, not a Span, and the
sender builds its JSON record inline.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlencode

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from .. import conventions as c
from ..model import ErrorRecord, LogLine, Span
from ..profiles import Profile
from ..retry import DEFAULT_RETRY, RetryPolicy
from ..validate import MAX_ID_CHARS, clean_label, clean_text, clean_value
from ..worker import BatchWorker
from .transport import transport_for

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

    def logs(self, lines: Sequence[LogLine]) -> None:
        """Application log lines (:class:`~exporter.sdk.logging.LogHandler`); never blocks, never raises."""

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Deliver what was recorded before the call; False at ``timeout_s``."""

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

    def logs(self, lines: Sequence[LogLine]) -> None:
        """Lines through the boundary check (no decoder runs in-process), then the pipeline's sinks."""
        self.pipeline.ingest_logs([clean_line(line) for line in lines], c.FORMAT_SDK)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Folds the fast-path steps still queued (:meth:`Pipeline.fold_fast`); waits for the run store's writer,
        if there is one."""
        self.pipeline.fold_fast()
        recorder = self.pipeline.recorder
        return True if recorder is None else bool(recorder.flush(timeout_s))

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


_HEX32 = re.compile(r"[0-9a-f]{32}").fullmatch
_HEX16 = re.compile(r"[0-9a-f]{16}").fullmatch


def _name(v: str | None) -> str | None:
    return None if v is None or v == "" else clean_label(v)[0]


def clean_line(line: LogLine) -> LogLine:
    """``line`` cut to what every sink holds, as a decoder would have cut it (in place; returned): bounded
    names, text and attributes, and ids a W3C id is (another ``trace_id`` / ``span_id`` is left out)."""
    line.body = clean_text(line.body) or ""
    line.exception = clean_text(line.exception)
    line.service = _name(line.service) or "unknown_service"
    line.logger, line.workflow = _name(line.logger), _name(line.workflow)
    cid = _name(line.correlation_id)
    line.correlation_id = cid[:MAX_ID_CHARS] if cid else None
    if line.trace_id is not None and not _HEX32(line.trace_id):
        line.trace_id = None
    if line.span_id is not None and not _HEX16(line.span_id):
        line.span_id = None
    attrs = clean_value(line.attributes)[0] if line.attributes else {}
    line.attributes = attrs if type(attrs) is dict else {}
    return line


def line_to_native(line: LogLine) -> dict[str, object]:
    """One line in the native JSON shape ``POST /api/v1/logs`` takes (:mod:`exporter.decode.otlp_logs`)."""
    line = clean_line(line)
    rec: dict[str, object] = {"time_ns": line.time_ns, "level": line.level, "body": line.body,
                              "service": line.service}
    if line.severity_number:
        rec["severity_number"] = line.severity_number
    for k in ("logger", "workflow", "correlation_id", "trace_id", "span_id", "exception"):
        v = getattr(line, k)
        if v:
            rec[k] = v
    if line.attributes:
        rec["attributes"] = line.attributes
    return rec


def error_to_native(e: ErrorRecord) -> tuple[str, dict[str, object]]:
    rec: dict[str, object] = {"error_type": e.error_type, "message": e.message, "layer": e.layer,
                              "component": e.component, "workflow_type": e.workflow, "category": e.category,
                              "service": e.service, "context": e.context}
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


#: A plain successful step, as the tracer's hot path queues it in remote mode (no Span is made):
#: ``(run, layer, component, operation, start_ns, end_ns, span_id, parent_span_id)``; ``run`` has the
#: run's ``workflow``, ``correlation_id``, ``trace_id`` and ``service``.
StepTuple = tuple[Any, str, str, str, int, int, str, str]
_Item = StepTuple | Span | ErrorRecord | Profile | LogLine


class RemoteSink:
    """Sends spans, errors and profiles to a remote exporter from a :class:`~exporter.worker.BatchWorker`.

    The worker's thread starts with the first item sent (a sink that is never used starts nothing);
    :meth:`flush` waits until what was recorded is delivered, :meth:`close` (``sdk.shutdown()``)
    flushes what is queued within its timeout and stops it.

    The application's side of a step is a tuple appended to the queue without a lock
    (:meth:`offer_step`, the tracer's hot path); the sender thread turns a batch into native JSON and
    posts it (:mod:`~exporter.sdk.transport`), a body of at most ``max_body_bytes`` at a time. The
    defaults hold a burst of tens of thousands of steps while the sender catches up (``queue_size``,
    ``FLOWSCOPE_SDK_QUEUE_SIZE``); past it, steps are dropped and counted, never waited for.
    """

    def __init__(self, endpoint: str, queue_size: int = 50_000, batch_size: int = 5_000, batch_wait_s: float = 1.0,
                 token: str | None = None, retry: RetryPolicy = DEFAULT_RETRY,
                 registry: CollectorRegistry | None = REGISTRY, timeout_s: float = 10.0,
                 max_body_bytes: int = 4 * 1024 * 1024):
        self.url = endpoint.rstrip("/") + c.NATIVE_SPANS_PATH
        self.profiles_url = endpoint.rstrip("/") + c.PROFILES_PATH
        self.token = token
        self.retry = retry
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.timeout_s = timeout_s
        #: a body is split in halves until it is at most this long (or one record); the server's default
        #: limit is twice this (``FLOWSCOPE_MAX_BODY_BYTES``)
        self.max_body_bytes = max_body_bytes
        self._post = transport_for(endpoint, token, timeout_s)
        self.dropped = 0
        self.sent = 0
        self._dropped_metric = _dropped_counter(registry) if registry is not None else None
        self._worker: BatchWorker[_Item] = BatchWorker(
            "flowscope-sdk-remote", self._send, on_drop=self._drop, max_queue=queue_size, max_batch=batch_size,
            linger_s=batch_wait_s, policy=retry, autostart=True, on_retry=self._on_retry)
        #: the tracer's hot path: queue a :data:`StepTuple` without a lock (dropped and counted when full)
        self.offer_step: Callable[[StepTuple], int] = self._worker.offer

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped += n
        if self._dropped_metric is not None:
            self._dropped_metric.labels(reason).inc(n)

    pipeline = None  # remote: a step is a StepTuple (offer_step) or a Span (emit)

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

    def logs(self, lines: Sequence[LogLine]) -> None:
        """Queue log lines for the sender thread (dropped and counted when the queue is full)."""
        if len(lines) == 1:
            self._worker.submit(lines[0])
        else:
            self._worker.submit_many(list(lines))

    def queued(self) -> int:
        return self._worker.queued()

    def _send(self, batch: list[_Item]) -> None:
        """One batch: its spans and errors in one POST (split when too long), each profile in its own."""
        steps: list[dict[str, object]] = []
        workflows: list[dict[str, object]] = []
        errors: list[dict[str, object]] = []
        profiles: list[Profile] = []
        lines: list[dict[str, object]] = []
        add_step = steps.append
        last = None
        cid = wf = tid = svc = None
        for item in batch:
            if type(item) is tuple:  # the hot path's step: the dict built inline (a call per step costs)
                run, layer, component, operation, start, end, sid, parent = item
                if run is not last:
                    last = run
                    cid, wf, tid, svc = run.correlation_id, run.workflow, run.trace_id, run.service
                add_step({"correlation_id": cid, "workflow_type": wf, "status": "ok", "started_at": start / 1e9,
                          "duration_ms": (end - start) / 1e6, "trace_id": tid, "service": svc, "layer": layer,
                          "component": component, "operation": operation, "span_id": sid,
                          "parent_span_id": parent})
            elif isinstance(item, Span):
                kind, rec = to_native(item)
                (steps if kind == "steps" else workflows).append(rec)
            elif isinstance(item, ErrorRecord):
                errors.append(error_to_native(item)[1])
            elif isinstance(item, LogLine):
                try:
                    lines.append(line_to_native(item))
                except Exception:  # one line that cannot be encoded costs itself, not its batch
                    self._drop("internal_error", 1)
                    log.exception("dropped a log line that cannot be encoded")
            else:
                profiles.append(cast("Profile", item))
        if steps or workflows or errors:
            self._send_records(steps, workflows, errors)
        if lines:
            self._send_lines(lines)
        for p in profiles:
            params: dict[str, str | float | None] = {"format": "folded", "workflow": p.workflow,
                                                     "sample_rate": p.sample_rate_hz}
            if p.is_memory:  # alloc / held: folded stacks of bytes, with the run's peak and net bytes
                if not p.stacks:
                    continue  # nothing to post: the endpoint refuses an empty profile
                params = {"format": p.format, "workflow": p.workflow}
                params |= {k: v for k, v in (("peak_bytes", p.peak_bytes), ("net_bytes", p.net_bytes)) if v is not None}
            if p.correlation_id:
                params["correlation_id"] = p.correlation_id
            folded = "\n".join(f"{stack} {k}" for stack, k in p.stacks.items()).encode()
            target = c.PROFILES_PATH + "?" + urlencode(params)
            self._worker.deliver(partial(self._attempt, target, folded, "text/plain", 1), 1)

    def _send_records(self, steps: list[dict[str, object]], workflows: list[dict[str, object]],
                      errors: list[dict[str, object]]) -> None:
        """Post the records in one body, or, past ``max_body_bytes``, in halves (each delivered apart)."""
        body: dict[str, list[dict[str, object]]] = {"steps": steps}
        if workflows:
            body["workflows"] = workflows
        if errors:
            body["errors"] = errors
        data = orjson.dumps(body)
        n = len(steps) + len(workflows) + len(errors)
        if len(data) > self.max_body_bytes and n > 1:
            if max(len(steps), len(workflows), len(errors)) > 1:  # halve every list
                hs, hw, he = len(steps) // 2, len(workflows) // 2, len(errors) // 2
                parts = [(steps[:hs], workflows[:hw], errors[:he]), (steps[hs:], workflows[hw:], errors[he:])]
            else:  # at most one record of each kind: each on its own
                parts = [(steps, [], []), ([], workflows, []), ([], [], errors)]
            for part in parts:
                if any(part):
                    self._send_records(*part)
            return
        self._worker.deliver(partial(self._attempt, c.NATIVE_SPANS_PATH, data, "application/json", n), n)

    def _send_lines(self, lines: list[dict[str, object]]) -> None:
        """Post log lines in one body, or, past ``max_body_bytes``, in halves (each delivered apart)."""
        data = orjson.dumps({"lines": lines})
        if len(data) > self.max_body_bytes and len(lines) > 1:
            half = len(lines) // 2
            self._send_lines(lines[:half])
            self._send_lines(lines[half:])
            return
        self._worker.deliver(partial(self._attempt, c.LOGS_PATH, data, "application/json", len(lines)), len(lines))

    def _attempt(self, target: str, data: bytes, ctype: str, n: int) -> None:
        """One attempt; raises :class:`SendError` (its status and ``Retry-After``) for the retry policy to judge."""
        self._post(target, data, ctype)
        self.sent += n

    @staticmethod
    def _on_retry(error: BaseException, attempt: int, wait: float) -> None:
        log.warning("sending to the exporter failed (%s); retry %d in %.2fs", error, attempt, wait)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until what is queued now is delivered or given up on (counted); False at the deadline.

        It never waits past ``timeout_s``: with the server down it returns False, and what is queued stays
        queued (retried under the policy, or counted when given up on).
        """
        return self._worker.force_flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Send what is queued (bounded by ``timeout_s``), then stop; what is left is counted (shutdown)."""
        ok = self._worker.shutdown(timeout_s)
        self._post.close()
        return ok
