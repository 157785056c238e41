import math
import random

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import conventions as c
from exporter.exposition import finish, render
from exporter.metrics import MetricStore


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
