import math
import random

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import conventions as c
from exporter.exposition import finish, render
from exporter.metrics import MetricStore
from exporter.model import Span
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink


def samples(text: str, om: bool) -> set:
    fams = parse_om(text) if om else parse_text(text)
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in fams for s in f.samples}


def _build(n_series: int, seed: int = 1):
    rng = random.Random(seed)
    store = MetricStore(series_limit=n_series + 10)
    h = store.histogram(c.STEP_DURATION_SECONDS, "Step latency.", c.STEP_DURATION_LABELS)
    cnt = store.counter(c.STEP_ERRORS_TOTAL, "Errors.", c.STEP_ERRORS_LABELS)
    prometheus_client.disable_created_metrics()
    reg = CollectorRegistry()
    ph = Histogram(c.STEP_DURATION_SECONDS, "Step latency.", c.STEP_DURATION_LABELS, registry=reg,
                   buckets=c.DEFAULT_BUCKETS)
    pc = Counter(c.STEP_ERRORS_TOTAL, "Errors.", c.STEP_ERRORS_LABELS, registry=reg)
    for i in range(n_series):
        key = (f"wf{i % 7}", c.LAYERS[i % 9], f'comp "{i % 3}"\\x', f"op{i}", "ok")
        for _ in range(rng.randint(1, 5)):
            v = rng.choice([rng.expovariate(20), 0.001, 60.0, 100.0])
            h.observe(key, v, "ab" * 16, "cd" * 8, 1.7e9)
            ph.labels(*key).observe(v)
        ekey = key[:3] + ("Timeout\n",)
        cnt.inc(ekey, 2)
        pc.labels(*ekey).inc(2)
    return store, reg


@pytest.mark.parametrize("om", [False, True])
def test_exposition_parses_to_exactly_prometheus_clients_samples(om):
    store, reg = _build(200)
    ours = (render(store, om) + finish(om)).decode()
    if om:
        theirs = prometheus_client.openmetrics.exposition.generate_latest(reg).decode()
    else:
        theirs = prometheus_client.generate_latest(reg).decode()
    mine = {s for s in samples(ours, om) if not s[0].startswith(c.SERIES_OVERFLOW_TOTAL.removesuffix("_total"))}
    assert mine == samples(theirs, om)
    assert len(mine) > 200 * 18


def test_openmetrics_carries_exemplars_and_text_does_not():
    store = MetricStore()
    h = store.histogram("x_seconds", "x", ("workflow",))
    h.observe(("login",), 0.2, "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 1700000000.5)
    om = (render(store, True) + finish(True)).decode()
    fam = next(f for f in parse_om(om) if f.name == "x_seconds")
    ex = [s.exemplar for s in fam.samples if s.exemplar]
    assert len(ex) == 1
    assert ex[0].labels == {"trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331"}
    assert ex[0].value == 0.2 and float(ex[0].timestamp) == pytest.approx(1700000000.5)
    assert om.endswith("# EOF\n") and om.count("# EOF") == 1
    assert "# {" not in render(store, False).decode()


def test_bucket_boundaries_are_inclusive_upper_bounds():
    store = MetricStore(buckets=(0.1, 1.0))
    h = store.histogram("x_seconds", "x")
    for v in (0.1, 0.10001, 1.0, 5.0):
        h.observe((), v)
    got = {s.labels.get("le"): s.value for f in parse_text(render(store).decode()) for s in f.samples
           if s.name == "x_seconds_bucket"}
    assert got == {"0.1": 1, "1.0": 3, "+Inf": 4}


def test_series_past_the_cap_become_overflow_and_are_counted():
    store = MetricStore(series_limit=3)
    cnt = store.counter("x_total", "x", ("workflow",))
    for wf in ("a", "b", "c", "d", "e", "a"):
        cnt.inc((wf,))
    assert len(cnt) == 4  # 3 real + the overflow series
    assert cnt.get(("a",)) == 2
    assert cnt.get((c.OVERFLOW,)) == 2
    assert store.value(c.SERIES_OVERFLOW_TOTAL, {"metric": "x_total"}) == 2


def test_counters_refuse_to_go_down_and_names_need_total():
    store = MetricStore()
    cnt = store.counter("x_total", "x")
    with pytest.raises(ValueError):
        cnt.inc((), -1)
    with pytest.raises(ValueError, match="must end in _total"):
        store.counter("x", "x")
    with pytest.raises(ValueError, match="registered twice"):
        store.counter("x_total", "x")


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (0, 1), (-1, 2), (math.nan,)])
def test_bad_buckets_are_refused(buckets):
    with pytest.raises(ValueError, match="buckets"):
        MetricStore().histogram("x_seconds", "x", buckets=buckets)


# --- exemplars: a bucket's timestamp never goes backwards ------------------------------------------------
# Prometheus keeps exemplars per series (each _bucket line with its le) and refuses one whose millisecond
# timestamp is <= the newest it holds, unless it is that same exemplar.


def _scraped_exemplars(store, family: str) -> dict:
    """``{(labels..., le): (trace_id, span_id, timestamp)}`` as a scraper parses the OpenMetrics exposition."""
    om = (render(store, True) + finish(True)).decode()
    return {tuple(sorted(s.labels.items())): (s.exemplar.labels["trace_id"], s.exemplar.labels.get("span_id"),
                                             float(s.exemplar.timestamp))
            for f in parse_om(om) if f.name == family for s in f.samples if s.exemplar}


def _assert_only_forward(before: dict, after: dict) -> None:
    """Every exemplar Prometheus scraped before is still there, or replaced by one it would accept."""
    for series, (tid, sid, ts) in before.items():
        new_tid, new_sid, new_ts = after[series]
        if (new_tid, new_sid) == (tid, sid):
            assert new_ts == ts, series
        else:
            assert new_ts > ts, (series, (tid, sid, ts), after[series])


def test_an_older_span_never_replaces_a_bucket_exemplar():
    store = MetricStore(buckets=(0.1, 1.0))
    h = store.histogram("x_seconds", "x", ("workflow",))
    seen = []
    for tid, end in (("a" * 32, 1700000000.5), ("b" * 32, 1700000000.2), ("c" * 32, 1700000000.5004),
                     ("d" * 32, 1700000000.4996), ("e" * 32, 1700000001.0), ("f" * 32, 1699999990.0)):
        before = _scraped_exemplars(store, "x_seconds")
        h.observe(("login",), 0.5, tid, "12" * 8, end)
        seen.append(tid)
        after = _scraped_exemplars(store, "x_seconds")
        _assert_only_forward(before, after)
        assert {e[0] for e in after.values()} <= set(seen)
    # .5004 and .4996 render as the same millisecond as .5: another exemplar there would be refused
    assert after == {(("le", "1.0"), ("workflow", "login")): ("e" * 32, "12" * 8, 1700000001.0)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.05, 0.5, 5.0]), st.integers(0, 5_000_000)), min_size=1, max_size=30))
def test_bucket_exemplars_keep_the_newest_span_whatever_the_arrival_order(obs):
    store = MetricStore(buckets=(0.1, 1.0))
    h = store.histogram("x_seconds", "x", ("workflow",))
    newest: dict[str, float] = {}
    observed: dict[str, set] = {}
    scraped = {}
    for n, (value, end_us) in enumerate(obs):
        end = 1_700_000_000 + end_us / 1e6
        tid = f"{n:032x}"
        h.observe(("w",), value, tid, "ab" * 8, end)
        le = "0.1" if value <= 0.1 else "1.0" if value <= 1.0 else "+Inf"
        newest[le] = max(newest.get(le, 0.0), round(end, 3))
        observed.setdefault(le, set()).add(tid)
        now = _scraped_exemplars(store, "x_seconds")
        _assert_only_forward(scraped, now)
        scraped = now
    got = {dict(k)["le"]: v for k, v in scraped.items()}
    assert set(got) == set(newest)
    for le, (tid, _, ts) in got.items():
        assert tid in observed[le]  # a real span of that bucket, at its own time
        assert ts == pytest.approx(newest[le], abs=1e-6)


def test_sdk_fast_path_never_moves_a_bucket_exemplar_backwards(ex):
    pipeline = ex.pipeline
    tracer = WorkflowTracer(InProcessSink(pipeline), service="shop")
    key = {"workflow": c.UNKNOWN_WORKFLOW, "layer": "database", "component": "postgres", "operation": "SELECT 1",
           "status": "ok"}
    t0 = 1_700_000_000_000_000_000
    ends = [t0 + 900_000_000, t0 + 100_000_000, t0 + 900_000_400, t0 + 899_999_700, t0 + 950_000_000, t0]
    trace_ids, scraped = [], {}
    for n, end in enumerate(ends):
        run = tracer._implicit_run()  # a run of its own, so a trace of its own
        trace_ids.append(run.trace_id)
        if n == 3:  # the span path (record_step) shares the series and the rule
            pipeline.record_step(Span(trace_id=run.trace_id, span_id=f"{n + 1:016x}", workflow=run.workflow,
                                      layer="database", component="postgres", operation="SELECT 1",
                                      start_ns=end - 20_000_000, end_ns=end, status="ok", parent_span_id=run.span_id,
                                      correlation_id=run.correlation_id, service=run.service))
        else:
            pipeline.fast_step(run, "database", "postgres", "SELECT 1", end - 20_000_000, end, f"{n + 1:016x}",
                               run.span_id)
        now = {k: v for k, v in _scraped_exemplars(ex.store, c.STEP_DURATION_SECONDS).items()
               if {name: val for name, val in k if name != "le"} == key}
        _assert_only_forward(scraped, now)
        assert {e[0] for e in now.values()} <= set(trace_ids)
        scraped = now
    assert ex.store.value(c.STEP_DURATION_SECONDS + "_count", key) == len(ends)
    # every step took 20 ms: one bucket, whose exemplar is the step that ended last
    assert list(scraped.values()) == [(trace_ids[4], f"{5:016x}", 1700000000.95)]
