"""The batch worker and the retry policy: real threads, a real HTTP server on 127.0.0.1, bounded waits."""

from __future__ import annotations

import random
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter

from exporter import conventions as c
from exporter.model import Span
from exporter.retry import RetriesExhausted, RetryInterrupted, RetryPolicy, SendError
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import RemoteSink
from exporter.worker import BatchWorker

FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02, deadline_s=5)
WAIT_S = 10  # upper bound on any wait for a background thread; a pass takes a small fraction of it


class Scripted:
    """An HTTP server on 127.0.0.1 answering POSTs from a script of (status, headers), then 200."""

    def __init__(self, script=()):
        self.script = list(script)
        self.bodies: list[bytes] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with fake.lock:
                    status, headers = fake.script.pop(0) if fake.script else (200, {})
                    if status < 300:
                        fake.bodies.append(body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def post(self, body: bytes = b"x") -> None:
        """One attempt, raising :class:`SendError` the way the project's senders do."""
        try:
            r = requests.post(self.url + "/push", data=body, timeout=5)
        except requests.RequestException as e:
            raise SendError(str(e)) from None
        if r.status_code >= 300:
            raise SendError(f"HTTP {r.status_code}", status=r.status_code, retry_after=r.headers.get("Retry-After"))

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http():
    made = []

    def start(script=()):
        s = Scripted(script)
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


class Drops:
    """The owner's counter: drops by reason."""

    def __init__(self):
        self.by_reason: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, reason: str, n: int) -> None:
        with self.lock:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n


def _worker(export, drops=None, **kw):
    kw.setdefault("policy", FAST)
    return BatchWorker("flowscope-test-worker", export, on_drop=drops, **kw)


def _threads(name="flowscope-test-worker"):
    return [t for t in threading.enumerate() if t.name == name]


# -- the retry policy -------------------------------------------------------------------------------------------

def test_call_retries_5xx_and_transport_errors_then_returns(http):
    srv = http([(503, {}), (500, {})])
    seen = []
    FAST.call(srv.post, on_retry=lambda e, n, d: seen.append((e.reason, n)))
    assert seen == [("http_503", 1), ("http_500", 2)] and len(srv.bodies) == 1
    port = srv.server.server_address[1]
    srv.stop()
    with pytest.raises(RetriesExhausted) as e:  # nothing listens now: connection refused, retried, given up on
        RetryPolicy(initial_backoff_s=0.01, max_attempts=3).call(
            lambda: Scripted.post(type("S", (), {"url": f"http://127.0.0.1:{port}"})()))
    assert e.value.attempts == 3 and e.value.last.reason == "connection"


def test_call_does_not_retry_other_4xx_or_a_bug(http):
    srv = http([(403, {})])
    with pytest.raises(SendError) as e:
        FAST.call(srv.post)
    assert e.value.status == 403 and srv.script == [] and srv.bodies == []
    calls = []

    def bug():
        calls.append(1)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        FAST.call(bug)
    assert calls == [1]


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_call_waits_at_least_retry_after_in_seconds_or_as_an_http_date(http, form):
    retry_after = "3600" if form == "seconds" else formatdate(time.time() + 3600, usegmt=True)
    srv = http([(429, {"Retry-After": retry_after})])
    waits = []
    policy = RetryPolicy(initial_backoff_s=0.01, max_retry_after_s=7200, deadline_s=86400)
    policy.call(srv.post, wait=lambda delay, error: waits.append(delay) or True)  # record the wait, skip it
    assert len(waits) == 1 and 3000 < waits[0] <= 3600  # the policy's own backoff is 0.01 s
    assert len(srv.bodies) == 1


def test_retry_after_is_capped_and_the_deadline_gives_up():
    policy = RetryPolicy(initial_backoff_s=0.01, max_retry_after_s=2, deadline_s=60)
    err = SendError("busy", status=429, retry_after=3600)
    assert policy.delay(0, err) == 2
    attempts, now = [], [0.0]

    def fail():
        attempts.append(now[0])
        raise SendError("busy", status=503, retry_after=25)

    def wait(delay, error):  # an injected clock: each wait moves it on by the delay
        now[0] += delay
        return True

    # Retry-After capped at 2 s; no wait may end past the 60 s deadline. The jitter's generator is seeded: with the
    # shared one, the last attempt's time varied from run to run (a soak caught it at 36 s)
    with pytest.raises(RetriesExhausted) as e:
        policy.call(fail, wait=wait, clock=lambda: now[0], rng=random.Random(7))
    assert attempts[:3] == [0.0, 2.0, 4.0] and 40 < attempts[-1] <= 60 and e.value.attempts == len(attempts)
    with pytest.raises(RetriesExhausted):  # many tries, no overflow in the exponential
        RetryPolicy(initial_backoff_s=1e-300, deadline_s=1e9, max_attempts=2000).call(fail, wait=lambda d, e: True)


def test_call_is_interrupted_by_its_event():
    stop = threading.Event()
    attempts = []

    def fail():
        attempts.append(1)
        stop.set()  # the owner shuts down while this attempt runs
        raise SendError("down")

    with pytest.raises(RetryInterrupted):
        RetryPolicy(initial_backoff_s=30).call(fail, interrupt=stop)
    assert attempts == [1]


# -- the batch worker -------------------------------------------------------------------------------------------

def test_a_full_batch_goes_at_once_and_a_partial_one_after_the_linger():
    batches, got = [], threading.Event()

    def export(batch):
        batches.append(list(batch))
        got.set()

    w = _worker(export, max_batch=3, linger_s=3600).start()
    try:
        w.submit_many([1, 2, 3, 4])
        assert got.wait(WAIT_S) and batches == [[1, 2, 3]]  # full: not held for the hour's linger
        assert w.queued() == 1
    finally:
        assert w.shutdown(WAIT_S)
    assert batches == [[1, 2, 3], [4]]  # shutdown exported the partial batch
    short = _worker(export, max_batch=100, linger_s=0.05).start()
    got.clear()
    short.submit(5)
    assert got.wait(WAIT_S) and batches[-1] == [5]  # the linger passed: a partial batch goes
    assert short.shutdown(WAIT_S)


def test_submit_never_blocks_and_a_full_queue_drops_by_policy():
    release = threading.Event()
    drops = Drops()
    w = _worker(lambda batch: release.wait(WAIT_S), drops, max_queue=5, max_batch=100, linger_s=3600).start()
    assert w.submit_many(range(8)) == 5 and drops.by_reason == {"queue_full": 3}
    assert not w.submit(9) and drops.by_reason == {"queue_full": 4}
    release.set()
    assert w.shutdown(WAIT_S)
    kept = []
    oldest = _worker(kept.extend, drops, max_queue=5, max_batch=100, linger_s=3600, queue_policy="drop_oldest")
    assert oldest.submit_many(range(8)) == 5  # the last five offered are queued, the oldest three dropped
    assert all(oldest.submit(i) for i in (8, 9))
    oldest.start()
    assert oldest.shutdown(WAIT_S)
    assert kept == [5, 6, 7, 8, 9] and drops.by_reason == {"queue_full": 9}
    with pytest.raises(ValueError, match="queue_policy"):
        _worker(kept.extend, queue_policy="drop_random")


def test_force_flush_waits_for_what_was_queued_and_says_when_it_could_not():
    release, exported = threading.Event(), []

    def export(batch):
        release.wait(WAIT_S)
        exported.extend(batch)

    w = _worker(export, max_batch=2, linger_s=3600)
    w.submit_many([1, 2, 3])
    assert not w.force_flush(0.05)  # not started: nobody drains the queue
    w.start()
    assert not w.force_flush(0.05)  # the export is held
    release.set()
    assert w.force_flush(WAIT_S) and exported == [1, 2, 3]  # the partial batch did not wait for the linger
    assert w.shutdown(WAIT_S)


def test_export_failures_are_retried_and_what_cannot_go_is_counted_by_reason(http):
    srv = http([(503, {}), (403, {})])
    drops = Drops()
    w = _worker(lambda batch: srv.post(b",".join(batch)), drops, max_batch=2, linger_s=3600).start()
    w.submit_many([b"a", b"b"])  # 503 then 403: retried, then refused
    assert w.force_flush(WAIT_S)
    assert drops.by_reason == {"rejected": 2} and srv.bodies == []
    w.submit_many([b"c", b"d"])
    assert w.force_flush(WAIT_S) and srv.bodies == [b"c,d"]
    calls = []

    def bug(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise KeyError("a bug in the export")

    buggy = _worker(bug, drops, max_batch=1, linger_s=3600).start()
    buggy.submit_many([1, 2])
    assert buggy.shutdown(WAIT_S)
    assert calls == [[1], [2]] and drops.by_reason == {"rejected": 2, "internal_error": 1}  # the thread survived
    assert w.shutdown(WAIT_S)


def test_shutdown_interrupts_a_backoff_counts_the_rest_and_leaves_no_thread(http):
    srv = http([(503, {"Retry-After": "3600"})])
    drops = Drops()
    w = _worker(lambda batch: srv.post(), drops, max_batch=2, linger_s=3600,
                policy=RetryPolicy(initial_backoff_s=30, deadline_s=86400, max_retry_after_s=3600)).start()
    w.submit_many([1, 2, 3])
    deadline = time.monotonic() + WAIT_S
    while srv.script and time.monotonic() < deadline:  # until the first attempt was answered
        time.sleep(0.01)
    assert not w.shutdown(0.1)  # the batch is in an hour's backoff: not everything got out
    assert not w.alive() and _threads() == []  # the backoff was cut short, the thread returned
    assert drops.by_reason == {"shutdown": 3}  # the batch in its backoff and the item still queued
    assert not w.submit(4) and drops.by_reason == {"shutdown": 4}  # after shutdown: refused, counted
    w.shutdown(0)  # idempotent: nothing more is counted
    assert drops.by_reason == {"shutdown": 4}


def test_the_thread_starts_when_asked_or_with_the_first_item_and_never_after_shutdown():
    exported = []
    w = _worker(exported.extend, max_batch=1)
    assert not w.started and _threads() == []
    lazy = _worker(exported.extend, max_batch=1, autostart=True)
    assert not lazy.started
    lazy.submit(1)
    assert lazy.started and lazy.force_flush(WAIT_S) and exported == [1]
    assert lazy.shutdown(WAIT_S) and w.shutdown(WAIT_S)
    w.start()
    assert not w.started and _threads() == []


# -- offer: the lock-free path (the run store's per-step append) -------------------------------------------------

def test_offer_is_bounded_exported_and_flushed_like_submit():
    batches, got = [], threading.Event()

    def export(batch):
        batches.append(list(batch))
        got.set()

    drops = Drops()
    w = _worker(export, drops, max_queue=5, max_batch=3, linger_s=3600)
    assert [w.offer(i) for i in range(1, 7)] == [1, 2, 3, 4, 5, 0]  # how many wait; 0: dropped when full
    assert drops.by_reason == {"queue_full": 1} and w.queued() == 5
    w.start()
    assert got.wait(WAIT_S) and batches[0] == [1, 2, 3]  # a full batch goes at once, not after the hour's linger
    assert w.force_flush(WAIT_S) and batches == [[1, 2, 3], [4, 5]] and w.queued() == 0
    got.clear()
    assert [w.offer(i) for i in (6, 7, 8)] == [1, 2, 3]
    assert got.wait(WAIT_S) and batches[-1] == [6, 7, 8]  # the offer that makes a full batch wakes the thread
    assert w.shutdown(WAIT_S)
    assert w.offer(9) == 0 and drops.by_reason == {"queue_full": 1, "shutdown": 1}  # after shutdown: counted
    lazy = _worker(export, max_batch=100, linger_s=3600, autostart=True)
    assert not lazy.started and lazy.offer(10) == 1 and lazy.started  # the first offer starts the thread
    assert lazy.force_flush(WAIT_S) and batches[-1] == [10]
    assert lazy.shutdown(WAIT_S) and _threads() == []


def test_offered_items_racing_a_shutdown_are_each_exported_once_or_counted():
    """Producers offer while the owner shuts down: nothing is lost uncounted, nothing goes twice."""
    exported: list[int] = []
    drops = Drops()
    w = _worker(exported.extend, drops, max_queue=1_000_000, max_batch=500, linger_s=0.01).start()
    per_producer, producers = 20_000, 4
    started = threading.Barrier(producers + 1)

    def produce(base):
        started.wait(WAIT_S)
        for i in range(base, base + per_producer):
            w.offer(i)

    threads = [threading.Thread(target=produce, args=(k * per_producer,)) for k in range(producers)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns every few bytecodes: offers interleave with each step of shutdown
    try:
        for t in threads:
            t.start()
        started.wait(WAIT_S)
        w.shutdown(WAIT_S)  # while they offer
        for t in threads:
            t.join(WAIT_S)
    finally:
        sys.setswitchinterval(switch)
    assert not any(t.is_alive() for t in threads)
    total = per_producer * producers
    assert len(set(exported)) == len(exported)  # nothing exported twice
    assert len(exported) + drops.by_reason.get("shutdown", 0) == total, (len(exported), drops.by_reason)
    assert set(drops.by_reason) <= {"shutdown"} and w.queued() == 0 and _threads() == []


# -- the remote SDK sink on the worker --------------------------------------------------------------------------

def _span() -> Span:
    return Span(trace_id="ab" * 16, span_id="cd" * 8, workflow="w", layer="api", component="x", operation="op",
                start_ns=1, end_ns=2)


def test_remote_sink_retries_after_retry_after_and_counts_in_any_number_of_sinks(ex, serve):
    srv = serve(ex)
    reg = CollectorRegistry()
    first = RemoteSink(srv.url, batch_wait_s=0.05, registry=reg)
    second = RemoteSink("http://127.0.0.1:9", queue_size=1, batch_size=2, batch_wait_s=3600, registry=reg,
                        retry=RetryPolicy(initial_backoff_s=30))
    t = WorkflowTracer(first, service="shop")
    with t.workflow("cart_update"), t.step("api", "cart", "add"):
        pass
    assert first.close(WAIT_S) and first.sent == 2
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "cart_update", "status": "ok"}) == 1
    span = _span()
    second.emit(span)
    second.emit(span)  # the queue holds one: counted in the registry's one counter, shared by both sinks
    assert not second.close(0.1)  # the item in its 30 s backoff is counted as shutdown
    assert reg.get_sample_value("flowscope_sdk_spans_dropped_total", {"reason": "queue_full"}) == 1
    assert reg.get_sample_value("flowscope_sdk_spans_dropped_total", {"reason": "shutdown"}) == 1
    assert not first._worker.alive() and not second._worker.alive()  # closed sinks leave no thread


def test_remote_sink_honours_retry_after_from_the_exporter(http):
    srv = http([(429, {"Retry-After": "0"}), (503, {})])
    sink = RemoteSink(srv.url, batch_wait_s=0.01, registry=None, retry=FAST)
    sink.emit(_span())
    assert sink.close(WAIT_S) and sink.sent == 1 and sink.dropped == 0 and len(srv.bodies) == 1


def test_remote_sink_works_when_the_name_is_taken_in_the_registry(http):
    reg = CollectorRegistry()
    Counter("flowscope_sdk_spans_dropped", "someone else's", registry=reg)
    srv = http()
    sink = RemoteSink(srv.url, batch_wait_s=0.01, registry=reg)
    sink.emit(_span())
    assert sink.close(WAIT_S) and sink.sent == 1
