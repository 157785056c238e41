"""Flowscope watching itself: the counters the ``flowscope-self`` alerts divide, as a scrape sees them.

Each alert is ``dropped / (kept + dropped)`` per process and reason (``backend/rules/generate.py``). That holds only
if every item handed over ends up counted in exactly one of the two, and if every reason is exported before its
first drop (``rate()`` cannot see a counter's first sample as an increase).
"""

import time

from backend.rules.generate import SELF_ALERTS
from exporter import conventions as c
from exporter.model import ErrorRecord, LogLine, Span
from tests.conftest import ROOT
from tests.fake_loki import FakeLoki


def _total(ex, name: str) -> float:
    ex.store.value(name)  # runs the collect hooks (the recorder folds its drops in at collection)
    return sum(s.value for s in ex.store.get(name).series.values())


def _entry(alert: str):
    (entry,) = [e for e in SELF_ALERTS if e.alert == alert]
    return entry


def test_everything_the_run_store_is_handed_is_counted_written_or_dropped(ex):
    """Spans, log lines and error records, one span its database refuses: the alert's denominator (written plus
    dropped) is what the store was handed, and its numerator the one item lost."""
    now = time.time_ns()
    spans = [Span(trace_id=f"{i:032x}", span_id=f"{i + 1:016x}", workflow="checkout", layer="api", component="shop",
                  operation="POST /checkout", start_ns=now - 1000, end_ns=now, correlation_id=f"run-{i}")
             for i in range(20)]
    spans.append(Span(trace_id="e" * 32, span_id="e" * 16, workflow="checkout", layer="api", component="shop",
                      operation="POST /checkout", start_ns=now - 1000, end_ns=now, correlation_id="poison",
                      attributes={"retries": 2**65}))  # orjson refuses it: poison
    ex.pipeline.ingest(spans, c.FORMAT_NATIVE)
    ex.pipeline.ingest_logs([LogLine(time_ns=now + i, level="info", body=f"line {i}", service="shop")
                             for i in range(7)], "otlp")
    for i in range(3):
        ex.pipeline.record_error(ErrorRecord("ValueError", f"boom {i}", "api", "shop", "checkout",
                                             correlation_id=f"run-{i}", time_ns=now))
    assert ex.pipeline.recorder is not None and ex.pipeline.recorder.flush(30)
    entry = _entry(c.ALERT_RUN_STORE_DROPPING)
    handed = sum(_total(ex, name) for name in entry.came_in)
    assert (handed, _total(ex, entry.dropped)) == (21 + 7 + 3, 1)


def test_every_drop_reason_is_exported_at_0_before_the_first_drop(make_exporter):
    loki = FakeLoki()
    try:
        ex = make_exporter(loki_url=loki.url)
        for name, reasons in ((c.RUN_STORE_DROPPED_TOTAL, c.RUN_STORE_DROP_REASONS),
                              (c.LOKI_LINES_DROPPED_TOTAL, c.LOKI_DROP_REASONS)):
            ex.store.value(name)
            assert {k[0]: s.value for k, s in ex.store.get(name).series.items()} == dict.fromkeys(reasons, 0)
        for kept in (c.RUN_STORE_WRITTEN_TOTAL, c.LOKI_LINES_SENT_TOTAL):
            assert ex.store.value(kept) == 0
    finally:
        loki.stop()


def test_the_self_alerts_are_listed_as_not_mapped_to_datadog_and_new_relic():
    from backend.integrations.build import UNMAPPED, render_all
    from backend.rules.spec import load_spec

    spec_path = "alert_rules/spec/flowscope.yaml"
    table = render_all(spec_path, load_spec(str(ROOT / spec_path)))[UNMAPPED]
    assert [e.alert for e in SELF_ALERTS if e.alert not in table] == []
