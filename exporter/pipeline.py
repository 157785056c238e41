"""Turn finished spans into metrics, then hand them to the sinks: the Loki pusher, the run store, any other.

``Pipeline.ingest`` is the one entry point every input path uses (OTLP,
native JSON, the in-process SDK). It holds the store's lock once per batch.
Every sink is optional and implements :class:`~exporter.sinks.Sink`; without
any, spans only become metrics::

    pipeline = Pipeline(store, loki=loki_pusher)   # a sink; kept as ``pipeline.loki`` for its owner
    pipeline.attach_recorder(run_recorder)         # a sink too; kept as ``pipeline.recorder``
    pipeline.add_sink(forwarder)                   # any Sink, or a plain callable taking a list of spans
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from . import conventions as c
from .metrics import MetricStore
from .model import ErrorRecord, LogLine, Span
from .redact import Redactor
from .resolver import PENDING_LIMIT, SHUTDOWN, TIMEOUT, WorkflowResolver
from .sinks import FastSink, FastStep, LogSink, Sink, SpanCallback
from .validate import clean_text, clean_value

#: SDK fast-path steps queued before :meth:`Pipeline.fast_step` folds them into the metrics (one hold of the metric
#: store's lock) and hands them to the run store (one batch).
FAST_FOLD = 256

if TYPE_CHECKING:
    from .loki import LokiPusher
    from .profiles import Profile
    from .store import RunRecorder


class Pipeline:
    def __init__(self, store: MetricStore, loki: LokiPusher | None = None,
                 resolver: WorkflowResolver | None = None, clock: Callable[[], float] = time.time,
                 sinks: Iterable[Sink | Callable[[list[Span]], object]] = (), redactor: Redactor | None = None):
        self.store = store
        redactor = redactor or Redactor()
        #: Scrubs secrets out of free text (error messages, stacks) before it leaves the process.
        self.redact = redactor.text
        #: Scrubs names (workflow, component, operation) before they become labels, lines or rows.
        self.name = redactor.name
        self._names = redactor.names  # its memo: one dict lookup per name on the hot paths
        self.resolver = resolver or WorkflowResolver()
        self.clock = clock
        #: Every sink, in the order added: each gets every span, error and profile (see :mod:`exporter.sinks`).
        self.sinks: list[Sink] = []
        #: The ``fast_many`` of every sink that takes the SDK's fast-path tuples (:class:`~exporter.sinks.FastSink`),
        #: and one callable that hands a folded batch to all of them (None without any).
        self._fast: list[Callable[[list[FastStep]], None]] = []
        self._fast_many: Callable[[list[FastStep]], None] | None = None
        # SDK fast-path steps are queued as tuples and folded into the metrics in batches (fast_step)
        self._fast_queue: deque[FastStep] = deque()
        self._fast_held: list[FastStep] = []  # folded, not yet handed to the fast sinks
        self._fast_renamed: list[FastStep] = []  # folded in a collect hook, a name to redact: for record_step
        #: Held from taking folded steps until they are handed over (and their renamed ones recorded): a fold that
        #: finds nothing left waits for one in progress, so a run's root never overtakes its steps and a flush
        #: never returns before them. Reentrant: a renamed step's record_step folds again.
        self._handover = threading.RLock()
        #: True while every sink takes fast-path tuples: the SDK may then skip building Span objects.
        self.metrics_only = True
        #: The Loki pusher among the sinks, if any, for its owner (flush, close, counters).
        self.loki: LokiPusher | None = None
        #: The run store's writer among the sinks, if any, for its owner and tests (``recorder.flush()``).
        self.recorder: RunRecorder | None = None
        if loki is not None:
            self.loki = loki
            self.add_sink(loki)
        for sink in sinks:
            self.add_sink(sink)
        s = store
        self.runs = s.counter(c.WORKFLOW_RUNS_TOTAL, "Finished workflow runs.", c.WORKFLOW_RUNS_LABELS)
        self.run_duration = s.histogram(c.WORKFLOW_DURATION_SECONDS, "Duration of finished workflow runs.",
                                        c.WORKFLOW_DURATION_LABELS)
        self.step_duration = s.histogram(c.STEP_DURATION_SECONDS,
                                         "Duration of finished workflow steps, by layer, component and operation.",
                                         c.STEP_DURATION_LABELS)
        self.step_errors = s.counter(c.STEP_ERRORS_TOTAL, "Failed workflow steps and logged errors.",
                                     c.STEP_ERRORS_LABELS)
        self.in_progress = s.gauge(c.WORKFLOWS_IN_PROGRESS, "Workflow runs started and not yet finished (SDK).",
                                   c.WORKFLOWS_IN_PROGRESS_LABELS)
        self.received = s.counter(c.SPANS_RECEIVED_TOTAL, "Spans received, valid or not, by input format.",
                                  (c.L_FORMAT,))
        self.rejected = s.counter(c.SPANS_REJECTED_TOTAL, "Spans refused, by input format and reason.",
                                  (c.L_FORMAT, c.L_REASON))
        self.truncated = s.counter(c.VALUES_TRUNCATED_TOTAL, "Accepted names and nested values cut to the input "
                                   "limits (label length, nesting depth, size), by input format.", (c.L_FORMAT,))
        self.requests_rejected = s.counter(c.REQUESTS_REJECTED_TOTAL,
                                           "Ingest requests refused whole, by input format and reason.",
                                           (c.L_FORMAT, c.L_REASON))
        # SDK spans are counted in a plain int on the hot path and folded into the
        # counter when the store is rendered.
        self._sdk_received = 0
        s.collect_hooks.append(self._fold_fast_hook)  # before the SDK count is folded: it counts them
        s.collect_hooks.append(self._fold_sdk_count)
        self.profile_cpu = s.counter(c.PROFILE_CPU_SECONDS_TOTAL,
                                     "CPU self time by function from posted profiles; past the top N "
                                     "functions per workflow, as function=\"other\".", (c.L_WORKFLOW, c.L_FUNCTION))
        self.query_patterns = s.counter(c.QUERY_PATTERNS_TOTAL, "Database steps flagged by the SDK's SQL "
                                        "instrumentation, by workflow and kind (slow_query, n_plus_one).",
                                        (c.L_WORKFLOW, c.L_KIND))
        self.profile_alloc = s.counter(c.PROFILE_ALLOC_BYTES_TOTAL,
                                       "Bytes allocated by function from memory profiles (format alloc); past the "
                                       "top N functions per workflow, as function=\"other\".",
                                       (c.L_WORKFLOW, c.L_FUNCTION))
        self.profile_top_n = c.PROFILE_TOP_FUNCTIONS
        self._profile_functions: dict[str, set[str]] = {}
        self._alloc_functions: dict[str, set[str]] = {}
        self.log_lines_received = s.counter(c.LOG_LINES_RECEIVED_TOTAL, "Application log lines accepted, by input "
                                            "format.", (c.L_FORMAT,))
        self.log_lines_rejected = s.counter(c.LOG_LINES_REJECTED_TOTAL, "Application log lines refused, by input "
                                            "format and reason.", (c.L_FORMAT, c.L_REASON))
        self.profiles_received = s.counter(c.PROFILES_RECEIVED_TOTAL, "Profiles accepted, by format.",
                                           (c.L_FORMAT,))
        pending = s.gauge(c.TRACES_PENDING, "OTLP spans waiting for their trace's root span to name the workflow.")
        pending.set_function((), lambda: self.resolver.pending_spans)
        self.names_guessed = s.counter(c.WORKFLOW_NAMES_GUESSED_TOTAL,
                                       "OTLP traces named after their earliest local span because neither their root "
                                       "span nor a span with flowscope.workflow arrived in time, by reason.",
                                       (c.L_REASON,))
        for reason in (TIMEOUT, PENDING_LIMIT, SHUTDOWN):
            self.names_guessed.inc((reason,), 0)
        s.collect_hooks.append(self._fold_guesses)

    # -- input ----------------------------------------------------------------------------

    def ingest(self, spans: list[Span], fmt: str, rejected: Iterable[tuple[str, int]] = (),
               truncated: int = 0) -> None:
        """Record a decoded batch: metrics first, then the log stream and other sinks.

        ``truncated`` counts the values the decoder cut to the input limits (:mod:`exporter.validate`).
        """
        store = self.store
        with store.lock:
            if truncated:
                self.truncated.inc((fmt,), truncated)
            rej = 0
            for reason, n in rejected:
                self.rejected.inc((fmt, reason), n)
                rej += n
            self.received.inc((fmt,), len(spans) + rej)
            # Every batch: a named span (or a root) names the spans of its trace that wait and those still
            # to come, whichever request they arrive in; a batch that is all named costs the resolver one pass.
            spans = self.resolver.resolve(spans, self.clock())
            self._apply(spans)
        self._fan_out(spans)

    def ingest_logs(self, lines: list[LogLine], fmt: str, rejected: Iterable[tuple[str, int]] = (),
                    truncated: int = 0) -> None:
        """Record decoded application log lines: count them (and ``rejected``, the lines the decoder refused, by
        reason; ``truncated``, the values it cut), name their workflow where their trace's is known, scrub secrets
        from their text, and hand them to every sink that takes logs (:class:`LogSink`)."""
        known = self.resolver.workflow_of
        redact = self.redact
        name = self.name
        for line in lines:
            if line.workflow is None and line.trace_id:
                line.workflow = known(line.trace_id)
            elif line.workflow is not None:  # a name like any span's: a label in Loki, never a secret
                line.workflow = name(line.workflow)
            line.body = redact(line.body) or ""
            if line.exception is not None:
                line.exception = redact(line.exception)
        with self.store.lock:
            self.log_lines_received.inc((fmt,), len(lines))
            for reason, n in rejected:
                self.log_lines_rejected.inc((fmt, reason), n)
            if truncated:
                self.truncated.inc((fmt,), truncated)
        if lines:
            for sink in self.sinks:
                if isinstance(sink, LogSink):
                    sink.logs(lines)

    def _fold_sdk_count(self) -> None:
        n, self._sdk_received = self._sdk_received, 0
        if n:
            self.received.inc((c.FORMAT_SDK,), n)

    def _fold_guesses(self) -> None:
        guessed = self.resolver.guessed
        if guessed:
            for reason, n in guessed.items():
                self.names_guessed.inc((reason,), n)
            guessed.clear()

    def reject_request(self, fmt: str, reason: str) -> None:
        with self.store.lock:
            self.requests_rejected.inc((fmt, reason))

    def _scrub(self, spans: Iterable[Span]) -> None:
        """Redact the names of spans in place, before any metric, Loki line or row sees them."""
        get, name = self._names.get, self.name
        for s in spans:
            wf = s.workflow
            assert wf is not None  # named before the pipeline sees it: by the resolver, the native decoder or the SDK
            s.workflow = get(wf) or name(wf)
            s.component = get(s.component) or name(s.component)
            s.operation = get(s.operation) or name(s.operation)
            if s.error_type is not None:
                s.error_type = name(s.error_type)

    def _apply(self, spans: list[Span]) -> None:
        self._scrub(spans)
        step = self.step_duration.observe
        err = self.step_errors.inc
        for s in spans:
            wf = s.workflow
            assert wf is not None  # _scrub checked it
            dur = (s.end_ns - s.start_ns) / 1e9
            if s.is_step:
                step((wf, s.layer, s.component, s.operation, s.status), dur, s.trace_id, s.span_id, s.end_ns / 1e9)
                if s.status == "error" or s.status == "timeout":
                    err((wf, s.layer, s.component, s.error_type or s.status))
                if s.layer == "database":
                    kind = s.loaded_attribute(c.ATTR_DB_PATTERN)
                    if kind == c.QUERY_SLOW or kind == c.QUERY_N_PLUS_ONE:
                        self.query_patterns.inc((wf, kind))
            if not s.parent_span_id:
                self._apply_run(s, wf)

    def _apply_run(self, s: Span, workflow: str) -> None:
        self.runs.inc((workflow, s.status))
        self.run_duration.observe((workflow, s.status), (s.end_ns - s.start_ns) / 1e9, s.trace_id, s.span_id,
                                  s.end_ns / 1e9)

    def _fan_out(self, spans: list[Span]) -> None:
        if not spans:
            return
        for sink in self.sinks:
            sink.spans(spans)

    def record_step(self, s: Span) -> None:
        """The SDK's path for one span (same effect as ``ingest([s], "sdk")``).

        The in-process SDK has no decoder, so its values pass the boundary check here: metadata and
        state are cut to what the sinks hold (:func:`~exporter.validate.clean_value`), messages are
        cleaned; names are capped by the redactor's :meth:`~exporter.redact.Redactor.name`.
        """
        self.fold_fast()  # the fast-path steps recorded before: a run's steps reach the sinks before its root
        if s.state is not None:
            s.state = clean_value(s.state)[0]
        attrs = s.loaded_attribute_dict()
        if attrs is not None:
            s.attributes = clean_value(attrs)[0]
        if s.error_message is not None or s.stack_trace is not None:
            s.error_message, s.stack_trace = clean_text(s.error_message), clean_text(s.stack_trace)
        with self.store.lock:
            self._sdk_received += 1
            self._apply((s,))
        one = (s,)
        for sink in self.sinks:
            sink.spans(one)

    def add_sink(self, sink: Sink | Callable[[list[Span]], object]) -> Sink:
        """Also hand every span, error and profile to ``sink`` from now on; returns it.

        ``sink`` is a :class:`~exporter.sinks.Sink`, or a plain callable that takes a list of spans
        (wrapped in a :class:`~exporter.sinks.SpanCallback`). The pipeline closes it in :meth:`close`;
        its owner starts it.
        """
        if not isinstance(sink, Sink):
            if not callable(sink):
                raise TypeError(f"a sink implements exporter.sinks.Sink or is a callable, not {type(sink).__name__}")
            sink = SpanCallback(sink)
        self.sinks.append(sink)
        if isinstance(sink, FastSink):
            many = getattr(sink, "fast_many", None)
            if many is None:
                one = sink.fast

                def many(steps: list[FastStep]) -> None:
                    for step in steps:
                        one(step)
            self._fast.append(many)
            fast = tuple(self._fast)

            def each(steps: list[FastStep]) -> None:
                for f in fast:
                    f(steps)
            self._fast_many = fast[0] if len(fast) == 1 else each
        else:
            self.metrics_only = False
        return sink

    def attach_recorder(self, recorder: RunRecorder) -> None:
        """Also write every span, error and profile to the run store through ``recorder`` (a sink)."""
        self.recorder = recorder
        self.add_sink(recorder)

    def fast_step(self, run, layer: str, component: str, operation: str, start_ns: int, end_ns: int,
                  span_id: str, parent_span_id: str) -> None:
        """A successful SDK step with no state or metadata. Same effect as ``record_step`` of the equivalent Span.

        ``run`` is the SDK's run (workflow, trace_id, correlation_id, service). This is the hot path of every traced
        step, so the step is only queued (a ``deque.append``, atomic under the GIL); every :data:`FAST_FOLD` steps
        the queue is folded into the metrics under one hold of the metric store's lock and handed to the run store
        as one batch of tuples (:meth:`fold_fast`). Every read of the metrics (a scrape, ``MetricStore.value``)
        folds it first, so what Prometheus sees is exact; so do ``record_step`` (a run's root after its steps),
        ``tick``, ``close`` and the SDK sink's ``flush``.

        Names are redacted for free: a series exists only under redacted names, so a known key is
        clean; a new key is checked once (memoised) and, if a redaction changes it, the step takes
        ``record_step``, which redacts.
        """
        queue = self._fast_queue
        queue.append((run, layer, component, operation, start_ns, end_ns, span_id, parent_span_id))
        if len(queue) >= FAST_FOLD:
            self.fold_fast()

    def fold_fast(self) -> None:
        """Fold the queued fast-path steps into the metrics, then hand them to the fast sinks (the run store) in
        one batch, and take a step whose name a redaction changes through ``record_step``. Returns once every
        step queued before the call has been handed over, by this call or by one in progress in another thread."""
        with self._handover:
            if not (self._fast_queue or self._fast_held or self._fast_renamed):
                return
            with self.store.lock:
                renamed = self._fast_renamed + self._fold_fast_locked()
                held, self._fast_held, self._fast_renamed = self._fast_held, [], []
            if held and self._fast_many is not None:
                self._fast_many(held)
            for run, layer, component, operation, start_ns, end_ns, span_id, parent in renamed:  # a secret in a name
                self.record_step(Span(trace_id=run.trace_id, span_id=span_id, workflow=run.workflow, layer=layer,
                                      component=component, operation=operation, start_ns=start_ns, end_ns=end_ns,
                                      status="ok", parent_span_id=parent, correlation_id=run.correlation_id,
                                      service=run.service))

    def _fold_fast_locked(self) -> list[FastStep]:
        """Under the metric store's lock (also a collect hook): the queued steps into the step histogram, held for
        the fast sinks; returns those a redaction would rename, which must go through ``record_step`` once the
        lock is let go (a collect hook keeps them for the next :meth:`fold_fast`)."""
        queue = self._fast_queue
        n = len(queue)  # steps appended meanwhile wait for the next fold
        if not n:
            return []
        h = self.step_duration
        series, observe, renamed_key = h.series, h.observe, self._renamed
        held = self._fast_held if self._fast_many is not None else None
        renamed: list[FastStep] = []
        pop = queue.popleft
        clean = 0
        for _ in range(n):
            step = pop()
            run, layer, component, operation, start_ns, end_ns, span_id, _ = step
            key = (run.workflow, layer, component, operation, "ok")
            if key in series or not renamed_key(key):
                observe(key, (end_ns - start_ns) / 1e9, run.trace_id, span_id, end_ns / 1e9)
                clean += 1
                if held is not None:
                    held.append(step)
            else:
                renamed.append(step)
        self._sdk_received += clean
        return renamed

    def _fold_fast_hook(self) -> None:
        self._fast_renamed += self._fold_fast_locked()

    def _renamed(self, key: tuple) -> bool:
        """Whether redaction changes a step key's workflow, component or operation."""
        name = self.name
        return name(key[0]) != key[0] or name(key[2]) != key[2] or name(key[3]) != key[3]

    def record_profile(self, profile: Profile, fmt: str) -> None:
        """Add a profile's self time to the per-function counter.

        Each workflow keeps at most ``profile_top_n`` function series: a profile's
        functions are admitted hottest first while there is room; the rest of its
        time goes to ``function="other"``. Cardinality stays bounded whatever the code.
        A memory profile of format ``alloc`` adds its bytes per leaf function to
        ``flowscope_profile_alloc_bytes_total`` the same way (``held`` is stored only).
        """
        other = 0.0
        profile.workflow = self.name(profile.workflow)
        if profile.is_memory:
            values: dict[str, float] = dict(profile.self_bytes()) if profile.format == "alloc" else {}
            counter, functions = self.profile_alloc, self._alloc_functions
        else:
            values, counter, functions = profile.self_seconds, self.profile_cpu, self._profile_functions
        with self.store.lock:
            known = functions.setdefault(profile.workflow, set())
            for fn, v in sorted(values.items(), key=lambda kv: -kv[1]):
                if fn not in known and len(known) < self.profile_top_n:
                    known.add(fn)
                if fn in known:
                    counter.inc((profile.workflow, fn), v)
                else:
                    other += v
            if other:
                counter.inc((profile.workflow, "other"), other)
            self.profiles_received.inc((fmt,))
        for sink in self.sinks:
            sink.profile(profile)

    def record_error(self, e: ErrorRecord) -> None:
        name = self.name
        e.workflow, e.component, e.error_type = name(e.workflow), name(e.component), name(e.error_type)
        with self.store.lock:
            self.step_errors.inc((e.workflow, e.layer, e.component, e.error_type))
        for sink in self.sinks:
            sink.error(e)

    def workflow_started(self, workflow: str) -> None:
        workflow = self.name(workflow)
        with self.store.lock:
            self.in_progress.inc((workflow,))

    def workflow_ended(self, workflow: str) -> None:
        workflow = self.name(workflow)
        with self.store.lock:
            self.in_progress.dec((workflow,))

    # -- housekeeping ---------------------------------------------------------------------

    def tick(self) -> None:
        """Release OTLP spans whose trace root never came, and hand over the SDK's fast-path steps (call every
        second or so)."""
        self.fold_fast()
        with self.store.lock:
            spans = self.resolver.expire(self.clock())
            self._apply(spans)
        self._fan_out(spans)

    def close(self, timeout_s: float = 10.0) -> bool:
        """Release every waiting span, then flush and close every sink, side by side, within ``timeout_s``.

        True if every sink delivered everything in time (what one could not is counted by that sink).
        """
        end = time.monotonic() + timeout_s
        self.fold_fast()
        with self.store.lock:
            spans = self.resolver.expire(float("inf"))
            self._apply(spans)
        self._fan_out(spans)
        for sink in self.sinks:
            sink.close(timeout_s, wait=False)  # each starts draining while the others do
        ok = True
        for sink in self.sinks:
            ok = sink.close(max(0.0, end - time.monotonic())) is not False and ok
        return ok
