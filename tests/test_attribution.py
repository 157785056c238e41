"""Root-cause attribution (issue 11, point 4): causes, not symptoms; any selection against its baseline.

The statistics are checked against scipy; everything else goes through the real ingest paths (native JSON,
the real OpenTelemetry SDK over OTLP/HTTP) into a real store (SQLite; the store's reads on PostgreSQL too)
and out of the HTTP API and the error page.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from backend.analysis import attribution as at
from backend.app import create_app
from exporter import conventions as c
from exporter.config import load_config
from exporter.db import make_engine
from exporter.model import Span
from exporter.runstore import AttributionRows, RunStore
from exporter.runtime import build

OUTCOME_DIMS = ("attr.error.type", "attr.http.response.status_code", "attr.exception.message",
                "attr.rpc.grpc.status_code")


def _top(body: dict) -> tuple:
    f = body["findings"][0]
    return tuple((x["dimension"], x["op"], x["value"]) for x in f["conditions"])


# -- statistics ----------------------------------------------------------------------------------------------


def test_log_fisher_is_scipys_exact_tail_and_never_underflows():
    rng = np.random.default_rng(3)
    for total in (40, 700, 20_000, 300_000):
        for _ in range(60):
            k_sel, n_with = int(rng.integers(1, total)), int(rng.integers(1, total))
            a = int(rng.integers(max(0, n_with - (total - k_sel)), min(n_with, k_sel) + 1))
            got = at.log_fisher_greater([a], [n_with], k_sel, total)[0]
            want = stats.hypergeom.logsf(a - 1, total, k_sel, n_with)
            assert got == pytest.approx(want, rel=1e-7, abs=1e-6), (total, k_sel, n_with, a)
    # 1,800 of 2,000 selected runs carry a value that 2,000 of 20,000 runs carry: p ~ 1e-2065, not 0
    deep = at.log_fisher_greater([1800, 1700], [2000, 2000], 2000, 20_000)
    assert np.all(np.isfinite(deep)) and deep[0] < deep[1] < -700 * math.log(10)
    assert stats.hypergeom.sf(1799, 20_000, 2000, 2000) == 0.0  # what the old ranking saw


def test_bh_in_log_space_is_benjamini_hochberg():
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.uniform(0, 1, 80), 10.0 ** -rng.uniform(2, 8, 20)])
    order = np.argsort(p)
    q = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    want = np.empty_like(q)
    want[order] = np.minimum(q, 1)
    assert np.allclose(np.exp(at.bh_log(np.log(p))), want)


def _memory_rows(n: int, seed: int = 1) -> AttributionRows:
    """A large store's rows without a database: two strong causes of different strength, noise, IDs."""
    rng = random.Random(seed)
    rows = AttributionRows()
    for i in range(n):
        region = rng.choice(["eu", "us", "ap"])
        pod = rng.choice([f"pod-{k}" for k in range(8)])
        p = 0.9 if pod == "pod-3" else 0.6 if region == "eu" else 0.01
        rows.run_ids.append(f"r{i}")
        rows.status.append("error" if rng.random() < p else "ok")
        rows.duration_ms.append(rng.uniform(10, 20))
        rows.start_ns.append(i)
        for layer, comp, attrs in (("api", "shop", {"region": region, "request.id": f"q{i}",
                                                     "noise": rng.random() < .5}),
                                   ("database", "pg", {"pod": pod})):
            rows.span_run.append(i)
            rows.layer.append(layer)
            rows.component.append(comp)
            rows.operation.append("op")
            rows.service.append("shop")
            rows.span_ms.append(1.0)
            rows.attributes.append(orjson.dumps(attrs).decode())
    return rows


def test_ranking_uses_log_p_values_so_strong_findings_never_tie_at_zero():
    f = at.build(_memory_rows(20_000))
    sel, pop, _ = at.select(f, at.Selection("failed"))
    body = at.attribute(f, sel, pop)
    by = {(x["dimension"], x["value"]): x for x in body["findings"]}
    eu, pod = by[("attr.region", "eu")], by[("attr.pod", "pod-3")]
    assert eu["log10_p"] < -308 and pod["log10_p"] < -308            # both below what a float holds
    assert eu["log10_p"] != pod["log10_p"] and eu["p_value"] == 0.0  # ... and still ordered
    assert body["findings"][0]["log10_p"] <= body["findings"][1]["log10_p"]
    assert not any(x["dimension"] == "attr.request.id" for x in body["findings"])  # an ID is never a cause


# -- one shop, many selections ------------------------------------------------------------------------------

N_RUNS = 900
WINDOW_FROM = 780  # runs from here on are the canary deploy


def _shop_docs(now_s: float, seed: int = 7) -> list[dict]:
    """Native batches: replica-2 fails half its runs (DBError, with every outcome attribute on the span);
    adyen times out a quarter of its payments (another error group); a cache miss makes a run slow; the
    enterprise tier's charge step is slow, and enterprise customers mostly use edge (a confounder of the
    step); the last runs are a canary deploy (run metadata)."""
    rng = random.Random(seed)
    wfs, steps = [], []
    for i in range(N_RUNS):
        cid = f"shop-{i:04d}"
        tier = rng.choices(["free", "pro", "enterprise"], [60, 25, 15])[0]
        browser = ("edge" if rng.random() < 0.7 else "chrome") if tier == "enterprise" else \
            rng.choice(["chrome", "safari", "firefox"])
        replica, provider = rng.choice(["replica-1", "replica-2", "replica-3"]), rng.choice(["stripe", "adyen"])
        hit = rng.random() < 0.85
        db_fail = rng.random() < (0.5 if replica == "replica-2" else 0.03)
        pay_fail = not db_fail and provider == "adyen" and rng.random() < 0.25
        start = now_s - (N_RUNS - i) * 3
        db_ms, cache_ms = rng.uniform(5, 15), rng.uniform(1, 3) + (0 if hit else 300)
        pay_ms = rng.uniform(50, 90) + (200 if tier == "enterprise" else 0)
        t = start + 0.001
        for layer, comp, op, ms, attrs, err in (
                ("database", "postgres", "SELECT orders", db_ms, {"db.instance": replica}, db_fail),
                ("cache", "redis", "GET cart", cache_ms, {"cache.hit": hit}, False),
                ("external", "payments", "charge", pay_ms, {"payment.provider": provider, "customer.tier": tier,
                                                            "browser.name": browser}, pay_fail)):
            rec = {"correlation_id": cid, "workflow_type": "checkout", "layer": layer, "component": comp,
                   "operation": op, "status": "failed" if err else "success", "started_at": t, "duration_ms": ms,
                   "metadata": dict(attrs)}
            if err:
                etype = "DBError" if layer == "database" else "TimeoutError"
                rec.update(error_type=etype, error_message=f"{op} failed on {replica}" if etype == "DBError"
                           else "payment timed out after 30 s")
                rec["metadata"].update({"error.type": etype, "http.response.status_code": 503,
                                        "exception.message": rec["error_message"], "rpc.grpc.status_code": 14})
            steps.append(rec)
            t += ms / 1000
        wfs.append({"correlation_id": cid, "workflow_type": "checkout", "status": "failed" if db_fail or pay_fail
                    else "success", "started_at": start, "duration_ms": (t - start) * 1000 + 1,
                    "metadata": {"deploy": "canary" if i >= WINDOW_FROM else "stable", "request.id": f"req-{i}"}})
    return [{"workflows": wfs[k:k + 300], "steps": steps[3 * k:3 * k + 900]} for k in range(0, N_RUNS, 300)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attribution")
    ex = build(load_config({"database_url": f"sqlite:///{tmp}/shop.db"}, environ={}))
    client = create_app(ex, {"TESTING": True}).test_client()
    now_s = time.time()
    for doc in _shop_docs(now_s):
        r = client.post(c.NATIVE_SPANS_PATH, data=orjson.dumps(doc), content_type="application/json")
        assert r.status_code == 200, r.data[:300]
    assert ex.pipeline.recorder.flush(60)
    groups = client.get(c.ERRORS_PATH).json["groups"]
    yield client, {"now_s": now_s, "groups": {g["error_type"]: g["fingerprint"] for g in groups}}
    ex.close()


def _get(client, query: str) -> dict:
    r = client.get(f"{c.ATTRIBUTION_PATH}?workflow=checkout&{query}")
    assert r.status_code == 200, r.data[:500]
    return r.json


def test_failed_runs_name_the_replica_not_their_symptoms(shop):
    client, _ = shop
    body = _get(client, "select=failed")
    assert _top(body) == (("attr.db.instance", "=", "replica-2"),)
    top = body["findings"][0]
    assert top["significant"] and top["log10_q"] < -6 and top["lift"] > 2 and len(top["sample_runs"]) == 3
    assert top["sample_pages"][0].endswith(f"{c.RUN_PAGE_PATH}/{top['sample_runs'][0]}")
    dims = {x["dimension"] for f in body["findings"] for x in f["conditions"]}
    assert not dims & set(OUTCOME_DIMS), dims          # every failed span carries them: symptoms, never causes
    assert body["selected_runs"] + body["baseline_runs"] == N_RUNS and body["outcome_keys"]
    # the old spelling still works
    assert _top(_get(client, "by=failed")) == (("attr.db.instance", "=", "replica-2"),)


def test_the_outcome_list_is_settable_per_query(shop):
    client, _ = shop
    found = {f["dimension"] for f in _get(client, "select=failed&outcome_keys=&top=200")["findings"]}
    assert "attr.http.response.status_code" in found and "attr.error.type" in found   # no list: symptoms win
    found = {f["dimension"] for f in _get(client, "select=failed&outcome_keys=db.*,error.*,http.*,exception.*,"
                                                  "rpc.*&top=200")["findings"]}
    assert "attr.db.instance" not in found and "attr.error.type" not in found


def test_outcome_keys_come_from_the_config(make_exporter):
    ex = make_exporter(attribution_outcome_keys="db.instance")
    client = create_app(ex).test_client()
    for doc in _shop_docs(time.time()):
        client.post(c.NATIVE_SPANS_PATH, data=orjson.dumps(doc), content_type="application/json")
    assert ex.pipeline.recorder.flush(60)
    body = _get(client, "select=failed&top=200")
    assert body["outcome_keys"] == ["db.instance"]
    assert "attr.db.instance" not in {f["dimension"] for f in body["findings"]}


def test_slow_runs_per_run_and_per_step(shop):
    client, _ = shop
    body = _get(client, "select=slow")  # the population's p90
    assert _top(body) == (("attr.cache.hit", "=", "False"),) and body["threshold_ms"] > 0
    body = _get(client, "select=slow&threshold_ms=330")
    assert _top(body) == (("attr.cache.hit", "=", "False"),) and body["threshold_ms"] == 330
    # the charge step alone: the enterprise tier, not edge (the browser enterprise customers mostly use)
    body = _get(client, "select=slow&operation=charge&threshold_ms=150")
    assert _top(body) == (("attr.customer.tier", "=", "enterprise"),)
    assert _top(_get(client, "select=slow&operation=payments/charge&percentile=80")) == \
        (("attr.customer.tier", "=", "enterprise"),)


def test_a_time_window_names_the_deploy_in_the_run_metadata(shop):
    client, info = shop
    start = info["now_s"] - (N_RUNS - WINDOW_FROM) * 3 - 0.5
    body = _get(client, f"select=window&from={start}")
    assert _top(body) == (("metadata.deploy", "=", "canary"),)
    assert body["selected_runs"] == N_RUNS - WINDOW_FROM


def test_one_error_group_against_the_other_runs(shop):
    client, info = shop
    fp = info["groups"]["TimeoutError"]
    body = client.get(f"{c.ATTRIBUTION_PATH}?select=error&fingerprint={fp}").json  # workflow: the one it hit
    assert body["workflow"] == "checkout" and _top(body) == (("attr.payment.provider", "=", "adyen"),)


def test_a_filter_selection_and_a_narrowed_population(shop):
    client, _ = shop
    body = _get(client, "select=filter&where=attr.customer.tier:enterprise")
    assert _top(body) == (("attr.browser.name", "=", "edge"),)
    assert "attr.customer.tier" not in {f["dimension"] for f in body["findings"]}   # the filter is not a finding
    chrome = _get(client, "select=failed&where=attr.browser.name:chrome")
    assert _top(chrome) == (("attr.db.instance", "=", "replica-2"),)
    dist = next(d for d in chrome["dimensions"] if d["dimension"] == "attr.browser.name")
    assert [v["value"] for v in dist["values"]] == ["chrome"]                         # only chrome runs compared


def test_each_dimension_comes_with_its_distribution_in_selection_and_baseline(shop):
    client, _ = shop
    body = _get(client, "select=failed&dimensions=50")
    first = body["dimensions"][0]
    assert first["dimension"] == "attr.db.instance"                 # the findings' dimensions come first
    sel = {v["value"]: v for v in first["values"]}
    assert sum(v["selection"] for v in first["values"]) == body["selected_runs"]
    assert sum(v["baseline"] for v in first["values"]) == body["baseline_runs"]
    assert sel["replica-2"]["share_of_selection"] > 0.5 and sel["replica-2"]["share_of_baseline"] < 0.3
    names = {d["dimension"] for d in body["dimensions"]}
    assert {"attr.payment.provider", "metadata.deploy", "layer", "operation"} <= names
    assert not names & set(OUTCOME_DIMS)


def test_the_error_page_shows_what_the_runs_it_hit_share(shop):
    client, info = shop
    page = client.get(f"/errors/{info['groups']['TimeoutError']}").get_data(as_text=True)
    table = page.split('id="attribution"')[1].split("</table>")[0]
    first = table.split("<tbody>")[1].split("</tr>")[0]
    assert "attr.payment.provider" in first and "adyen" in first
    assert 'id="distributions"' in page and 'data-dimension="attr.payment.provider"' in page


@pytest.mark.parametrize("query, field", [
    ("select=failed", "workflow"), ("workflow=checkout&select=odd", "select"), ("workflow=checkout&by=odd", "by"),
    ("workflow=checkout&select=failed&by=slow", "by"),
    ("workflow=nope", "workflow"),                                                  # matches no run
    ("workflow=checkout&select=slow&threshold_ms=-1", "threshold_ms"),
    ("workflow=checkout&select=slow&threshold_ms=1e12", "threshold_ms"),            # slower than every run
    ("workflow=checkout&select=slow&threshold_ms=abc", "threshold_ms"),
    ("workflow=checkout&select=slow&percentile=100", "percentile"),
    ("workflow=checkout&select=slow&percentile=0", "percentile"),
    ("workflow=checkout&select=slow&percentile=50&threshold_ms=10", "percentile"),
    ("workflow=checkout&select=slow&operation=nope", "operation"),
    ("workflow=checkout&select=failed&threshold_ms=5", "threshold_ms"),             # belongs to select=slow
    ("workflow=checkout&select=window", "from"), ("workflow=checkout&select=window&from=yesterday", "from"),
    ("workflow=checkout&select=window&from=2000-01-01T00:00:00Z&to=1999-01-01T00:00:00Z", "from"),
    ("workflow=checkout&select=window&from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z", "from"),  # no run
    ("workflow=checkout&select=error", "fingerprint"),
    ("workflow=checkout&select=error&fingerprint=0000", "fingerprint"),
    ("workflow=checkout&select=filter", "where"), ("workflow=checkout&select=filter&where=attr.nope:1", "where"),
    ("workflow=checkout&select=filter&where=noop", "where"), ("workflow=checkout&select=filter&where=:x", "where"),
    ("workflow=checkout&select=filter&where=attr.db.instance:replica-9", "where"),  # matches nothing
    ("workflow=checkout&select=filter&where=layer:database", "where"),             # matches everything
    ("workflow=checkout&select=filter&where=attr.payment.provider>x", "where"),
    ("workflow=checkout&select=filter&where=attr.payment.provider>5", "where"),    # not a number attribute
    ("workflow=checkout&since=2030-01-01T00:00:00Z", "since"), ("workflow=checkout&q=2", "q"),
    ("workflow=checkout&top=0", "top"), ("workflow=checkout&pairs=maybe", "pairs"),
    ("workflow=checkout&max_runs=10000000", "max_runs"), ("workflow=checkout&sample=5", "sample"),
])
def test_bad_queries_get_a_400_naming_the_parameter(shop, query, field):
    client, _ = shop
    r = client.get(f"{c.ATTRIBUTION_PATH}?{query}")
    assert r.status_code == 400, (query, r.status_code, r.data[:300])
    assert r.json["error"]["field"] == field, (query, r.json)


_PARAMS = ["select", "by", "threshold_ms", "percentile", "operation", "from", "to", "fingerprint", "where",
           "outcome_keys", "since", "until", "q", "top", "dimensions", "max_values", "pairs", "max_runs", "sample"]
_GOOD = {"select": ["failed", "slow", "window", "error", "filter"], "by": ["failed", "slow"],
         "operation": ["charge", "payments/charge", "GET cart"], "where": ["attr.browser.name:edge",
                                                                       "attr.cache.hit:False", "layer:cache",
                                                                       "metadata.deploy:canary", "attr.db.instance>1"],
         "pairs": ["true", "false"], "outcome_keys": ["", "db.*", "error.type,exception.*"]}
_NASTY = st.sampled_from(["", "0", "-1", "1e400", "nan", "inf", "²", "a\x00b", "9" * 40, ":", ">", "<", "a:b:c",
                          "2262-04-11T23:47:16Z", "1970-01-01T00:00:00Z", "99.9999", "100", "1", "50", ".5"])


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_query_is_a_200_or_a_400_naming_a_parameter(shop, data):
    client, info = shop
    good = {**_GOOD, "fingerprint": list(info["groups"].values()),
            "from": [str(info["now_s"] - 600)], "to": [str(info["now_s"])]}
    query = [("workflow", data.draw(st.sampled_from(["checkout", "checkout", "other", "x\x00"]), label="workflow"))]
    for name in data.draw(st.lists(st.sampled_from(_PARAMS), max_size=5, unique=True), label="params"):
        options = [_NASTY, st.text(max_size=20)] + ([st.sampled_from(good[name])] * 3 if name in good else [])
        query.append((name, data.draw(st.one_of(*options), label=name)))
    r = client.get(c.ATTRIBUTION_PATH, query_string=query)
    assert r.status_code in (200, 400), (query, r.status_code, r.data[:300])
    if r.status_code == 400:
        err = r.json["error"]
        assert err["field"] in {"workflow", *_PARAMS}, (query, err)
    else:
        assert isinstance(r.json["findings"], list) and isinstance(r.json["dimensions"], list)


# -- causes the shop above does not have ------------------------------------------------------------------------


def _native_runs(client, runs: list[dict], now_s: float) -> None:
    """Each run: its status, the attributes of its one step, and its run metadata."""
    wfs, steps = [], []
    for i, r in enumerate(runs):
        start = now_s - (len(runs) - i)
        cid = f"run-{i:05d}"
        steps.append({"correlation_id": cid, "workflow_type": "checkout", "layer": "external", "component": "pay",
                      "operation": "charge", "status": "failed" if r["fail"] else "success", "started_at": start,
                      "duration_ms": 5, "metadata": r["attrs"], **({"error_type": "Declined"} if r["fail"] else {})})
        wfs.append({"correlation_id": cid, "workflow_type": "checkout", "status": "failed" if r["fail"] else "success",
                    "started_at": start, "duration_ms": 6, "metadata": r.get("meta", {})})
    r = client.post(c.NATIVE_SPANS_PATH, data=orjson.dumps({"workflows": wfs, "steps": steps}),
                    content_type="application/json")
    assert r.status_code == 200, r.data[:300]


def test_a_pair_is_reported_when_it_explains_more_than_either_value(ex, client):
    rng = random.Random(11)
    runs = []
    for _ in range(1200):
        browser, provider = rng.choice(["safari", "chrome", "firefox"]), rng.choice(["adyen", "stripe", "braintree"])
        bad = (browser, provider) == ("safari", "adyen")
        runs.append({"fail": rng.random() < (0.7 if bad else 0.03),
                     "attrs": {"browser.name": browser, "payment.provider": provider,
                               "tier": rng.choice(["free", "pro"])}})
    _native_runs(client, runs, time.time())
    assert ex.pipeline.recorder.flush(60)
    body = _get(client, "select=failed")
    top = body["findings"][0]
    assert top["kind"] == "pair" and top["significant"]
    assert _top(body) == (("attr.browser.name", "=", "safari"), ("attr.payment.provider", "=", "adyen"))
    assert top["dimension"] == "attr.browser.name & attr.payment.provider" and top["value"] == "safari & adyen"
    singles = {(f["dimension"], f["value"]): f for f in body["findings"] if f["kind"] == "value"}
    assert top["log10_p"] < singles[("attr.browser.name", "safari")]["log10_p"]
    assert top["log10_p"] < singles[("attr.payment.provider", "adyen")]["log10_p"]
    assert body["pairs_tested"] > 0
    assert _top(_get(client, "select=failed&pairs=false")) in ((("attr.browser.name", "=", "safari"),),
                                                               (("attr.payment.provider", "=", "adyen"),))


def test_a_single_cause_is_not_reported_as_a_pair(ex, client):
    rng = random.Random(12)
    runs = [{"fail": rng.random() < (0.6 if provider == "adyen" else 0.03),
             "attrs": {"payment.provider": provider, "browser.name": rng.choice(["safari", "chrome"]),
                       "tier": rng.choice(["free", "pro", "team"])}}
            for provider in (rng.choice(["adyen", "stripe", "braintree"]) for _ in range(1200))]
    _native_runs(client, runs, time.time())
    assert ex.pipeline.recorder.flush(60)
    body = _get(client, "select=failed")
    assert _top(body) == (("attr.payment.provider", "=", "adyen"),)
    assert not [f for f in body["findings"] if f["kind"] == "pair"]  # adyen & anything explains no more than adyen


def test_a_numeric_attribute_is_split_into_a_range(ex, client):
    rng = random.Random(13)
    runs = []
    for _ in range(1500):
        size = int(10 ** rng.uniform(3, 7))
        runs.append({"fail": rng.random() < (0.5 if size > 1_000_000 else 0.03),
                     "attrs": {"payload.bytes": size, "retries": rng.randrange(3)}})
    _native_runs(client, runs, time.time())
    assert ex.pipeline.recorder.flush(60)
    body = _get(client, "select=failed")
    top = body["findings"][0]
    ((dim, op, value),) = _top(body)
    assert (dim, op, top["kind"]) == ("attr.payload.bytes", ">", "range")
    assert 1e6 / 1.4 < value < 1e6 * 1.4 and top["value"] == f"> {value:g}"
    assert body["ranges_tested"] > 2 * 10                   # every cut in both directions counts as a test
    dist = next(d for d in body["dimensions"] if d["dimension"] == "attr.payload.bytes")
    assert dist["kind"] == "numeric" and len(dist["values"]) >= 8
    # the range can be the selection too
    assert _get(client, "select=filter&where=attr.payload.bytes>1000000")["selected_runs"] > 100


def test_run_metadata_is_a_candidate(ex, client):
    rng = random.Random(14)
    runs = []
    for _ in range(600):
        tenant = rng.choice(["acme", "globex", "initech", "umbrella"])
        runs.append({"fail": rng.random() < (0.5 if tenant == "globex" else 0.03), "meta": {"tenant": tenant},
                     "attrs": {"tier": rng.choice(["free", "pro"])}})
    _native_runs(client, runs, time.time())
    assert ex.pipeline.recorder.flush(60)
    assert _top(_get(client, "select=failed")) == (("metadata.tenant", "=", "globex"),)


def test_resource_attributes_of_the_real_otel_sdk_name_a_bad_deploy(ex, serve):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    srv = serve(ex)
    providers = []  # a bad deploy (1.2.4) on two pods in two regions; 1.2.3 alongside it in both
    for version, region in (("1.2.3", "eu-west-1"), ("1.2.4", "eu-west-1"), ("1.2.3", "us-east-1"),
                            ("1.2.4", "us-east-1")):
        p = TracerProvider(resource=Resource.create({"service.name": "shop", "service.version": version,
                                                     "cloud.region": region,
                                                     "k8s.pod.name": f"shop-{version}-{region}"}))
        p.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=srv.url + c.OTLP_TRACES_PATH)))
        providers.append(p)
    for i in range(160):
        p = providers[i % 4]
        bad = (i % 2 == 1 and (i // 4) % 3 != 0) or i == 32   # 1.2.4 fails 2 runs in 3; 1.2.3 once
        tracer = p.get_tracer("shop")
        with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER, attributes={
                "flowscope.workflow": "checkout", "http.request.method": "POST", "http.route": "/checkout"}) as root:
            with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT, attributes={
                    "server.address": "pay.example", "http.request.method": "POST"}) as charge:
                charge.set_attribute("http.response.status_code", 502 if bad else 200)
                if bad:
                    charge.set_attribute("error.type", "BadGateway")
                    charge.record_exception(RuntimeError("upstream said 502"))
                    charge.set_status(Status(StatusCode.ERROR, "bad gateway"))
            root.set_attribute("http.response.status_code", 500 if bad else 200)
            if bad:
                root.set_status(Status(StatusCode.ERROR, "checkout failed"))
    for p in providers:
        p.shutdown()
    assert ex.pipeline.recorder.flush(60)
    body = requests.get(f"{srv.url}{c.ATTRIBUTION_PATH}", params={"workflow": "checkout"}, timeout=30).json()
    assert body["selected_runs"] == 53 and body["baseline_runs"] == 107
    assert _top(body) == (("resource.service.version", "=", "1.2.4"),)
    dims = {f["dimension"] for f in body["findings"]}
    assert not dims & {"attr.http.response.status_code", "attr.error.type"}
    dist = next(d for d in body["dimensions"] if d["dimension"] == "resource.service.version")
    assert {v["value"]: (v["selection"], v["baseline"]) for v in dist["values"]} == {"1.2.4": (52, 28),
                                                                                     "1.2.3": (1, 79)}


def test_store_reads_for_attribution_on_sqlite_and_postgresql(database_url):
    store = RunStore(make_engine(database_url))
    try:
        now = time.time_ns()
        res = {"service.name": "shop", "service.version": "1.2.4"}
        batch = []
        for i in range(5):
            cid, root = f"r{i}", f"{i + 1:016x}"
            batch += [Span(trace_id="a" * 31 + str(i), span_id=root, workflow="checkout", layer="api", component="shop",
                           operation="POST /checkout", start_ns=now - 10**9, end_ns=now,
                           status="error" if i == 0 else "ok", parent_span_id=None, correlation_id=cid, service="shop",
                           error_type="Boom" if i == 0 else None, error_message="boom", attributes={"k": i},
                           resource=res, kind="server"),
                      Span(trace_id="a" * 31 + str(i), span_id=f"{i + 11:016x}", workflow="checkout", layer="database",
                           component="pg", operation="SELECT", start_ns=now - 10**9,
                           end_ns=now - 10**9 + (i + 1) * 10**6, status="error" if i == 0 else "ok",
                           parent_span_id=root, correlation_id=cid, service="shop",
                           error_type="Boom" if i == 0 else None, error_message="boom", attributes={"db": "x"})]
        store.write(batch)
        rows = store.attribution_runs("checkout", now - 3600 * 10**9, now + 1)
        assert sorted(rows.run_ids) == [f"r{i}" for i in range(5)] and rows.status.count("error") == 1
        store.attribution_spans(rows, [rows.run_ids.index("r0"), rows.run_ids.index("r3")])
        assert sorted(rows.run_ids[i] for i in rows.span_run) == ["r0", "r0", "r3", "r3"]
        assert [orjson.loads(x) for x in rows.resource] == [res, res]
        steps = store.attribution_step_ms(rows.run_ids, "pg/SELECT")
        assert steps == {f"r{i}": pytest.approx(i + 1.0) for i in range(5)}
        assert store.attribution_step_ms(rows.run_ids, "SELECT") == steps
        fp = store.error_groups(now - 3600 * 10**9)[0].group.fingerprint
        assert {r.correlation_id for r in store.error_runs(fp, now - 3600 * 10**9, now + 1)} == {"r0"}
    finally:
        store.close()
