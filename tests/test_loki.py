import orjson
import pytest

from exporter import conventions as c
from exporter.loki import LokiConfig, LokiPusher, parse_retry_after, span_entry
from exporter.metrics import MetricStore
from exporter.model import Span
from exporter.retry import RetryPolicy
from tests.fake_loki import FakeLoki

FAST = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=5)


@pytest.fixture
def loki():
    f = FakeLoki()
    yield f
    f.stop()


def _span(i, status="ok", wf="checkout"):
    return Span("ab" * 16, f"{i + 1:016x}", wf, "database", "postgres", "INSERT orders",
                1_795_000_000_000_000_000 + i, 1_795_000_000_003_000_000 + i, status,
                "cd" * 8, f"corr-{i}", "shop", "DeadlockDetected" if status == "error" else None,
                "deadlock detected" if status == "error" else None)


def _pusher(url, store=None, **kw):
    kw.setdefault("retry", FAST)
    kw.setdefault("batch_wait_s", 0.05)
    return LokiPusher(LokiConfig(url=url, **kw), store or MetricStore())


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
    assert store.value(c.LOKI_LINES_DROPPED_TOTAL, {"reason": "retries_exhausted"}) is None


def test_other_4xx_is_not_retried_and_the_drop_is_counted(loki):
    store = MetricStore()
    loki.script = [(400, {}, 0)]
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
    import time
    assert 8 < parse_retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10
