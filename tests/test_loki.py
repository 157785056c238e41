import time

import orjson
import pytest

from exporter import conventions as c
from exporter.loki import MAX_SPLITS, LokiConfig, LokiPusher, span_entry
from exporter.metrics import MetricStore
from exporter.model import Span
from exporter.retry import RetryPolicy, parse_retry_after
from tests.conftest import wait_until
from tests.fake_loki import FakeLoki

FAST = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=5)


@pytest.fixture
def loki():
    f = FakeLoki()
    yield f
    f.stop()


def _span(i, status="ok", wf="checkout"):
    return Span(trace_id="ab" * 16, span_id=f"{i + 1:016x}", workflow=wf, layer="database", component="postgres",
                operation="INSERT orders", start_ns=1_795_000_000_000_000_000 + i, end_ns=1_795_000_000_003_000_000 + i,
                status=status, parent_span_id="cd" * 8, correlation_id=f"corr-{i}", service="shop",
                error_type="DeadlockDetected" if status == "error" else None,
                error_message="deadlock detected" if status == "error" else None)


def _pusher(url, store=None, **kw):
    kw.setdefault("retry", FAST)
    kw.setdefault("batch_wait_s", 0.05)
    return LokiPusher(LokiConfig(url=url, **kw), store or MetricStore()).start()


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_push_matches_lokis_api_exactly(encoding):
    loki = FakeLoki(tenant="team-a", auth="Basic dTpw")
    try:
        p = _pusher(loki.url, encoding=encoding, tenant="team-a", username="u", password="p")
        p.enqueue_many([span_entry(_span(0)), span_entry(_span(1, status="error"))])
        p.close()
        assert loki.errors == []
        got = sorted(loki.accepted, key=lambda e: e["ts"])
        assert [e["labels"] for e in got] == [
            {"service": "shop", "workflow": "checkout", "layer": "database", "level": "info"},
            {"service": "shop", "workflow": "checkout", "layer": "database", "level": "error"}]
        assert got[0]["ts"] == "1795000000003000000"  # the step's end, in ns, as a string
        assert got[1]["meta"] == {"correlation_id": "corr-1", "trace_id": "ab" * 16, "span_id": f"{2:016x}"}
        line = orjson.loads(got[1]["line"])
        assert line == {"correlation_id": "corr-1", "trace_id": "ab" * 16, "span_id": f"{2:016x}",
                        "component": "postgres", "operation": "INSERT orders", "status": "error",
                        "duration_ms": 3.0, "message": "deadlock detected", "error_type": "DeadlockDetected"}
    finally:
        loki.stop()


def test_429_is_retried_after_retry_after_and_delivered_once(loki):
    store = MetricStore()
    loki.script = [(429, {"Retry-After": "1"}, 0)]
    p = _pusher(loki.url, store)
    p.enqueue_many([span_entry(_span(i)) for i in range(5)])
    assert len(loki.wait_accepted(5)) == 5
    p.close()
    assert len(loki.attempts) == 2 and loki.attempts[1] - loki.attempts[0] >= 0.95
    assert store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "http_429"}) == 1
    assert store.value(c.LOKI_LINES_SENT_TOTAL) == 5
    assert len({e["ts"] for e in loki.accepted}) == 5  # nothing duplicated


def test_5xx_and_a_hung_connection_are_retried_without_loss_or_duplicates(loki):
    store = MetricStore()
    loki.script = [(500, {}, 0), (503, {}, 0), (204, {}, 3.0)]  # the third attempt hangs past the read timeout
    p = _pusher(loki.url, store, read_timeout_s=0.5)
    p.enqueue_many([span_entry(_span(i)) for i in range(3)])
    assert len(loki.wait_accepted(3)) == 3
    p.close()
    assert len(loki.attempts) == 4
    assert sorted(e["ts"] for e in loki.accepted) == sorted({e["ts"] for e in loki.accepted})
    assert store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "http_500"}) == 1
    assert store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "http_503"}) == 1
    assert store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "timeout"}) == 1
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "retries_exhausted"}) == 0


def test_other_4xx_is_not_retried_and_the_drop_is_counted(loki):
    store = MetricStore()
    loki.script = [(403, {}, 0)]  # a refusal of the sender, not of the lines: splitting would not help
    p = _pusher(loki.url, store)
    p.enqueue_many([span_entry(_span(i)) for i in range(4)])
    p.flush(5)
    p.enqueue(span_entry(_span(9)))
    p.close()
    assert len(loki.attempts) == 2  # the 400 batch once, then the next batch
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "rejected"}) == 4
    assert store.value(c.LOKI_LINES_SENT_TOTAL) == 1


def test_a_full_queue_drops_and_counts_and_never_blocks(loki):
    store = MetricStore()
    p = _pusher(loki.url, store, queue_lines=10, batch_lines=1000, batch_wait_s=30)
    accepted = p.enqueue_many([span_entry(_span(i)) for i in range(25)])
    assert accepted == 10 and p.queued() == 10
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "queue_full"}) == 15
    assert store.value(c.LOKI_QUEUE_LINES) == 10
    p.close()  # flushes the queue even though batch_wait_s has not passed
    assert len(loki.accepted) == 10 and store.value(c.LOKI_QUEUE_LINES) == 0


def test_an_outage_longer_than_the_deadline_drops_and_counts(loki):
    store = MetricStore()
    loki.stop()
    p = _pusher(loki.url, store, retry=RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.1, deadline_s=0.5),
                connect_timeout_s=0.2)
    p.enqueue_many([span_entry(_span(i)) for i in range(3)])
    p.close(timeout_s=5)
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "retries_exhausted"}) == 3
    assert store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "connection"}) >= 2


def test_exporter_pushes_ingested_steps_with_bounded_stream_labels(loki, make_exporter):
    from exporter.decode import native
    ex = make_exporter(loki_url=loki.url, loki_batch_wait_s=0.05)
    batch = native.decode({"steps": [{"correlation_id": "c-9", "workflow_type": "login", "layer": "cache",
                                      "component": "redis", "operation": "GET", "status": "timeout",
                                      "started_at": 1795000000, "duration_ms": 3000, "service": "auth"}]})
    ex.pipeline.ingest(batch.spans, "native")
    (entry,) = loki.wait_accepted(1)
    assert entry["labels"] == {"service": "auth", "workflow": "login", "layer": "cache", "level": "error"}
    assert set(entry["labels"]) == set(c.STREAM_LABELS)
    assert entry["meta"]["correlation_id"] == "c-9"


@pytest.mark.parametrize("value,expected", [("3", 3.0), ("0", 0.0), (None, None), ("soon", None)])
def test_retry_after_parsing(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_http_date_is_honoured():
    from email.utils import formatdate
    assert 8 < parse_retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10


# -- poison: one line Loki cannot take must not cost its batch ---------------------------------------------------

def _lines(loki) -> set[str]:
    return {orjson.loads(e["line"])["correlation_id"] for e in loki.distinct()}


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_entries_that_cannot_be_encoded_cost_only_themselves(loki, encoding):
    store = MetricStore()
    p = _pusher(loki.url, store, encoding=encoding)
    odd_span = _span(3)
    odd_span.operation = {"not", "text"}  # no JSON for a set: its line cannot be built
    odd_entry = span_entry(_span(7))
    if encoding == "json":
        odd_entry = (*odd_entry[:3], {"span_id": {1, 2}})   # metadata no JSON encoder takes
    else:
        odd_entry = (odd_entry[0], 2**100, *odd_entry[2:])  # past protobuf's int64 Timestamp.seconds
    p.enqueue_many([span_entry(_span(i)) for i in range(3)] + [odd_span]
                   + [span_entry(_span(i)) for i in range(4, 7)] + [odd_entry]
                   + [span_entry(_span(i)) for i in range(8, 10)])
    p.close()
    assert loki.errors == []
    assert _lines(loki) == {f"corr-{i}" for i in range(10)} - {"corr-3", "corr-7"}
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "poison"}) == 2
    assert store.value(c.LOKI_LINES_SENT_TOTAL) == 8


def test_lines_loki_refuses_with_400_cost_only_themselves_and_are_logged_once(caplog):
    """Loki keeps a push's valid entries and names the others in its 400; the pusher drops only those."""
    loki = FakeLoki(refuse=lambda line: "line too long" if len(line) > 400 else None)
    try:
        store = MetricStore()
        p = _pusher(loki.url, store, batch_lines=100, batch_wait_s=30)
        spans = [_span(i) for i in range(100)]
        for i in (13, 50, 77):
            spans[i].error_message = "x" * 500
            spans[i].status = "error"
        with caplog.at_level("ERROR", logger="flowscope.loki"):
            p.enqueue_many(spans)
            p.close()
        assert _lines(loki) == {f"corr-{i}" for i in range(100)} - {"corr-13", "corr-50", "corr-77"}
        assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "poison"}) == 3
        assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "rejected"}) == 0
        logged = [r.getMessage() for r in caplog.records if "cannot take" in r.getMessage()]
        assert len(logged) == 1 and "line too long" in logged[0]  # Loki's reason, once for the three lines
    finally:
        loki.stop()


def test_a_batch_loki_refuses_whole_costs_tens_of_requests_not_one_per_line():
    """Every line too old after an outage: the pusher gives up splitting after its budget, drops the batch as
    poison (counted), and does not post 2N-1 times."""
    loki = FakeLoki(refuse=lambda line: "entry too far behind")
    try:
        store = MetricStore()
        p = _pusher(loki.url, store, batch_lines=1000, batch_wait_s=30)
        p.enqueue_many([_span(i) for i in range(1000)])
        p.close()
        assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "poison"}) == 1000
        assert len(loki.attempts) <= 2 * MAX_SPLITS + 1
    finally:
        loki.stop()


# -- recovery: once Loki is back, push at once --------------------------------------------------------------------

def test_after_an_outage_lines_are_pushed_as_soon_as_loki_is_ready(loki):
    """The backoff is 30 s, yet the lines arrive within a few seconds of Loki's return: /ready ended the wait."""
    store = MetricStore()
    port = loki.port
    loki.stop()
    p = _pusher(loki.url, store, retry=RetryPolicy(initial_backoff_s=30, max_backoff_s=30, deadline_s=300),
                connect_timeout_s=0.5, probe_interval_s=0.2)
    back = None
    try:
        p.enqueue_many([span_entry(_span(i)) for i in range(5)])
        wait_until(lambda: store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "connection"}), timeout=10,
                   what="the first failed push")
        assert store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "connection"}) == 1  # now in a 24-36 s backoff
        back = FakeLoki(port=port)
        # within 20 s, under the 24 s the backoff would take however loaded the machine: only /ready ends it
        assert len(back.wait_accepted(5, timeout=20)) == 5
        # the pusher counts once Loki's answer is back, a moment after Loki has the lines (the full suite beside
        # another one caught the gap)
        wait_until(lambda: store.value(c.LOKI_LINES_SENT_TOTAL) == 5, timeout=10, what="the lines counted as sent")
        assert back.probes >= 1
    finally:
        p.close(timeout_s=1)
        if back is not None:
            back.stop()


def test_a_429_keeps_its_retry_after_even_when_loki_is_ready(loki):
    store = MetricStore()
    loki.script = [(429, {"Retry-After": "30"}, 0)]
    p = _pusher(loki.url, store, probe_interval_s=0.05, retry=RetryPolicy(initial_backoff_s=0.05, deadline_s=300))
    p.enqueue(span_entry(_span(0)))
    wait_until(lambda: store.value(c.LOKI_PUSH_FAILURES_TOTAL, {"reason": "http_429"}), timeout=10,
               what="the 429 to be counted")
    assert not p.flush(0.5)          # still waiting out Loki's Retry-After, though /ready would say 200
    assert loki.accepted == [] and loki.probes == 0
    p.close(timeout_s=0.2)           # closing cuts the wait short and counts the line
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "shutdown"}) == 1


# -- a full queue: drop the newest or the oldest, by setting -----------------------------------------------------

def test_a_full_queue_under_drop_oldest_keeps_the_newest_lines(loki):
    store = MetricStore()
    p = _pusher(loki.url, store, queue_lines=10, batch_lines=1000, batch_wait_s=30, queue_policy="drop_oldest")
    assert p.enqueue_many([span_entry(_span(i)) for i in range(10)]) == 10
    assert all(p.enqueue(span_entry(_span(i))) for i in range(10, 25))  # each one queued, an older one dropped
    assert p.queued() == 10 and store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "queue_full"}) == 15
    p.close()
    assert _lines(loki) == {f"corr-{i}" for i in range(15, 25)}


def test_the_queue_policy_is_a_setting(loki, make_exporter):
    from exporter.config import load_config
    from exporter.errors import ConfigError

    assert load_config({}, environ={}).loki_queue_policy == "drop_newest"
    with pytest.raises(ConfigError, match="loki_queue_policy"):
        load_config({"loki_queue_policy": "drop_random"}, environ={})
    ex = make_exporter(loki_url=loki.url, loki_queue_policy="drop_oldest")
    assert ex.loki.config.queue_policy == "drop_oldest"


# -- lifecycle: the owner starts the pusher, and closing it accounts for every line --------------------------------

def test_nothing_is_pushed_before_start_and_close_counts_what_never_went(loki):
    store = MetricStore()
    p = LokiPusher(LokiConfig(url=loki.url, batch_wait_s=0.01, retry=FAST), store)  # built, not started
    assert p.enqueue_many([span_entry(_span(i)) for i in range(3)]) == 3
    assert not p.worker.alive() and not p.flush(0.05)  # no thread: nothing drains the queue
    assert not p.close(1)  # not everything went out
    assert loki.attempts == [] and store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "shutdown"}) == 3
    assert not p.enqueue(span_entry(_span(9)))  # after close: refused and counted, never silently queued
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "shutdown"}) == 4


def test_close_within_its_deadline_sends_everything_and_says_so(loki):
    store = MetricStore()
    p = _pusher(loki.url, store, batch_wait_s=3600)  # the batch would wait an hour: only close sends it
    p.enqueue_many([span_entry(_span(i)) for i in range(5)])
    assert p.close(10) and len(loki.accepted) == 5 and not p.worker.alive()
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "shutdown"}) == 0
