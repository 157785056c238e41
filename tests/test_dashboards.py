"""Dashboards as code: deterministic JSON, Grafana's schema via the SDK, and every PromQL checked twice."""

import json
import time
from pathlib import Path

import promql_parser
import pytest

from backend.dashboards.build import dashboards, panels, promql_targets, render_all
from backend.rules.build import render_all as render_rules
from backend.rules.spec import load_spec, parse_spec
from exporter import conventions as c
from exporter.decode import native
from exporter.demo import DemoTraffic

ROOT = Path(__file__).resolve().parent.parent
SPEC = load_spec(str(ROOT / "alert_rules/spec/flowscope.yaml"))
ALL = dashboards(SPEC)
#: Metrics that only exist in some states; the test makes those states happen (a regression finding).
PENDING: dict[str, str] = {}


def concrete(expr: str) -> str:
    """Substitute Grafana's template variables the way Grafana would for 'All'."""
    return (expr.replace("$workflow", ".*").replace("$layer", ".*").replace("$__rate_interval", "1m")
            .replace("$__interval", "15s"))


QUERIES = [(uid, title, expr) for uid, d in sorted(ALL.items()) for title, expr in promql_targets(d)]


def test_checked_in_dashboards_are_current_and_deterministic():
    files = render_all(SPEC)
    assert render_all(SPEC) == files
    assert set(files) == {f"{uid}.json" for uid, _ in
                          [(c.DASHBOARD_OVERVIEW, 0), (c.DASHBOARD_LAYERS, 0), (c.DASHBOARD_ERRORS, 0),
                           (c.DASHBOARD_PROFILES, 0), (c.DASHBOARD_ALERTS, 0)]}
    for name, text in files.items():
        stale = f"dashboards/{name} is stale: flowscope dashboards build"
        assert (ROOT / "dashboards" / name).read_text() == text, stale
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


@pytest.mark.parametrize("uid", sorted(ALL))
def test_every_dashboard_has_a_fixed_uid_and_the_variables(uid):
    d = ALL[uid]
    assert d["uid"] == uid and d["title"].startswith("Flowscope")
    names = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "workflow", "layer"} <= set(names)
    assert names["datasource"]["query"] == "prometheus" and names["workflow"]["includeAll"] is True
    for p in panels(d):
        for t in p.get("targets", []):
            assert t["refId"]


def test_latency_panels_request_exemplars_and_thresholds_come_from_the_spec():
    latency = [t for d in ALL.values() for p in panels(d) for t in p.get("targets", [])
               if "histogram_quantile" in t.get("expr", "") and "topk" not in t["expr"]]
    assert latency and all(t.get("exemplar") is True for t in latency)
    layers = ALL[c.DASHBOARD_LAYERS]
    api = next(p for p in panels(layers) if p.get("title") == "api: p95 step latency vs thresholds")
    steps = api["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.5, 2.0]
    assert api["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
    changed = parse_spec({"apiVersion": "flowscope/v1", "kind": "AlertSpec", "thresholds": [
        {"layer": "api", "metric": "response_time", "warning": "300ms", "critical": "900ms"}]})
    api2 = next(p for p in panels(dashboards(changed)[c.DASHBOARD_LAYERS]) if p.get("title", "").startswith("api:"))
    assert [s["value"] for s in api2["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.3, 0.9]


def test_errors_dashboard_links_correlation_ids_to_the_run_page_and_reads_loki():
    d = ALL[c.DASHBOARD_ERRORS]
    loki_exprs = [t["expr"] for p in panels(d) for t in p.get("targets", []) if t["datasource"]["type"] == "loki"]
    assert '{level="error", workflow=~"$workflow", layer=~"$layer"}' in loki_exprs
    links = [prop["value"][0]["url"] for p in panels(d) for o in p["fieldConfig"]["overrides"]
             for prop in o["properties"] if prop["id"] == "links"]
    assert links == ["${backend_url}/runs/${__value.raw}"]


def test_profiles_dashboard_links_to_the_flame_graphs(ex, client):
    d = ALL[c.DASHBOARD_PROFILES]
    urls = [link["url"] for p in panels(d) for link in p.get("links", [])]
    assert urls == ["${backend_url}/api/v1/flamegraph?workflow=${workflow}&format=svg",
                    "${backend_url}/api/v1/flamegraph/diff?workflow=${workflow}&window_s=3600&format=svg"]
    from exporter.profiles import Profile
    ex.runs.write([Profile("checkout", {"f": 1.0}, None, {"main;f": 100}, 100.0)])
    for url in urls:  # as Grafana fills them in with the workflow variable at "All" (.*)
        r = client.get(url.replace("${backend_url}", "").replace("${workflow}", ".*"))
        assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    assert b"main" in client.get(urls[0].replace("${backend_url}", "").replace("${workflow}", ".*")).data


@pytest.mark.parametrize("uid,title,expr", QUERIES, ids=[f"{u}:{t}" for u, t, _ in QUERIES])
def test_every_promql_expression_parses(uid, title, expr):
    promql_parser.parse(concrete(expr))


def test_burn_panel_follows_the_spec_default_or_named():
    """The shipped spec's default objective gives one burn series per workflow; the demo's names its own."""
    def burn(spec):
        panel = next(p for p in panels(dashboards(spec)[c.DASHBOARD_OVERVIEW]) if p.get("title") == "SLO burn rate")
        return [t["expr"] for t in panel["targets"]]
    shipped = burn(SPEC)
    assert shipped[0] == 'flowscope:slo_errors:ratio_rate5m{slo="default:availability",workflow=~"$workflow"} / 0.01'
    demo = burn(load_spec(str(ROOT / "alert_rules/spec/demo.yaml")))
    assert 'slo="checkout-latency"' in demo[0] and "default" not in demo[0]
    for expr in shipped + demo:
        promql_parser.parse(concrete(expr))


def test_promql_parser_rejects_a_broken_expression():
    with pytest.raises(ValueError):
        promql_parser.parse(concrete("sum by (workflow (rate(x[$__rate_interval]))"))


@pytest.mark.servers
def test_every_panel_query_returns_data_from_prometheus_scraping_a_demo_fed_exporter(make_exporter, serve, prometheus,
                                                                                      tmp_path):
    import requests

    from exporter.model import Span
    from exporter.store.endpoints import EndpointEntry
    from tests.fake_loki import FakeLoki
    from tests.otlp_data import request, span
    from tests.test_forward import OtlpReceiver

    # Flowscope losing data, so the "Flowscope itself" row has series: Loki refuses every line, the forward
    # destination refuses the first requests, and the run store gets a span its database refuses
    loki, rx = FakeLoki(refuse=lambda line: "line too long"), OtlpReceiver()
    rx.script += [(400, {})] * 2
    ex = make_exporter(loki_url=loki.url, loki_batch_wait_s=0.2, forward_destinations={"sink": {"url": rx.url}})
    srv = serve(ex)
    for i in range(4):
        requests.post(srv.url + c.OTLP_TRACES_PATH, data=request([span(f"GET /item/{i}")]).SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf"}, timeout=10).raise_for_status()
    assert ex.pipeline.recorder is not None
    ex.pipeline.recorder.spans([Span(trace_id="e" * 32, span_id="e" * 16, workflow="checkout", layer="api",
                                     component="shop", operation="POST /checkout", start_ns=1, end_ns=2,
                                     correlation_id="poison", attributes={"retries": 2**65})])

    # an endpoint inventory, so the endpoint gauges (the overview's Endpoints row) have series
    ex.runs.register_endpoints("shop", [EndpointEntry("GET", "/api/search", None, None, "manual")], time.time_ns())
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(str(ROOT / "alert_rules/spec/flowscope.yaml"))["flowscope-rules.yml"]
                     .replace("for: 5m", "for: 1s"))  # alerts fire within the test, so ALERTS has data
    from exporter.profiles import Profile, parse_folded

    def profile(wf, folded, correlation_id):
        ex.pipeline.record_profile(Profile(wf, parse_folded(folded, 100.0)[0], correlation_id), "folded")

    demo = DemoTraffic(lambda b: ex.pipeline.ingest(native.decode(b).spans, c.FORMAT_NATIVE), rate=300, seed=7,
                       on_start=ex.pipeline.workflow_started, on_end=ex.pipeline.workflow_ended, tick_s=0.1,
                       on_profile=profile).start()
    # a regression finding, recorded through the detection service's own path, so its gauges exist
    from backend.ext import current_flowscope
    from backend.regression.analyze import Finding
    current_flowscope(srv.server.app).regressions._expose([Finding(
        series="p95 step latency workflow=checkout", time="2026-11-23T10:00:00Z", before=0.2, after=0.25,
        ci_before=(0.19, 0.21), ci_after=(0.24, 0.26), relative_change=0.25, p_value=1e-9, p_adjusted=1e-8,
        detector="change_point", direction="regression",
        labels={"query": "p95 step latency", "workflow": "checkout", "layer": "api", "component": "orders"})])
    try:
        prom = prometheus([srv.url.removeprefix("http://")], rule_files=[str(rules)])
        prom.wait_for('up{job="flowscope"}', lambda r: r and r[0]["value"][1] == "1")
        later = [q for q in QUERIES if any(m in q[2] for m in PENDING)]
        todo = [q for q in QUERIES if q not in later]
        deadline = time.monotonic() + 45
        while todo and time.monotonic() < deadline:
            time.sleep(0.5)  # Prometheus scrapes and evaluates every second
            todo = [(u, t, e) for u, t, e in todo if not prom.query(concrete(e))]
        still_empty = [q for q in later if not prom.query(concrete(q[2]))]
    finally:
        demo.stop()
        ex.close()  # before Loki and the receiver go
        loki.stop()
        rx.stop()
    assert not todo, "panels with no data:\n" + "\n".join(f"{u} / {t}: {e}" for u, t, e in todo)
    assert later == [] and still_empty == []
