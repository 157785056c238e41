"""Debugging reports (issue 15, point 4): ``GET /api/v1/reports`` and ``flowscope report``.

A store with three days of checkout and search runs (checkout's database replica-2 failing, its SELECT slower in
the second half), an alert fired and resolved, one still firing, and stored regression findings in and out of the
window; the report is read as JSON (what each section found), Markdown (a ticket's text) and HTML in a real
headless Chromium with every request recorded.
"""

from __future__ import annotations

import json
import random
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from backend.app import create_app
from backend.reports.build import ReportError, parse_window
from backend.store import AlertStore, IncomingAlert
from exporter import conventions as c
from exporter.model import Span
from exporter.store.endpoints import EndpointEntry
from exporter.store.schema import regressions
from tests.test_run_page import browser  # noqa: F401 - the fixture: Debian's Chromium through Playwright

SHOTS = Path("/tmp/report-shots")
DAY = 86400 * 10**9
FUZZ = {"deadline": None, "derandomize": True, "database": None, "max_examples": 60,
        "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


def _seed(ex, now: int, n: int = 240, seed: int = 3) -> None:
    """Runs over the last three days: checkout (api → database → cache) fails mostly on replica-2 and its SELECT
    doubles in the second half; search never fails."""
    rng = random.Random(seed)
    batch = []
    for i in range(n):
        end = now - 3 * DAY + (i + 1) * (3 * DAY // (n + 1))
        wf = "checkout" if i % 3 else "search"
        cid = f"{wf}-{i:04d}"
        replica = rng.choice(["replica-1", "replica-2", "replica-3"])
        failed = wf == "checkout" and replica == "replica-2" and rng.random() < 0.6
        db_ms = (40 if i < n // 2 else 90) * rng.uniform(0.8, 1.2)
        start = end - int((db_ms + 20) * 1e6)
        root, db, cache = f"{i:015x}0", f"{i:015x}1", f"{i:015x}2"
        batch += [
            Span(trace_id=f"{i:032x}", span_id=root, workflow=wf, layer="api", component="shop",
                 operation=f"POST /{wf}", start_ns=start, end_ns=end, status="error" if failed else "ok",
                 correlation_id=cid, error_type="DatabaseError" if failed else None,
                 error_message="connection to replica-2 reset" if failed else None, service="shop",
                 attributes={"http.route": f"/{wf}", "http.request.method": "POST",
                             "http.response.status_code": 500 if failed else 200}),
            Span(trace_id=f"{i:032x}", span_id=db, workflow=wf, layer="database", component="postgres",
                 operation="SELECT orders", start_ns=start, end_ns=start + int(db_ms * 1e6),
                 status="error" if failed else "ok", parent_span_id=root, correlation_id=cid,
                 error_type="DatabaseError" if failed else None,
                 error_message="connection to replica-2 reset" if failed else None,
                 attributes={"db.instance": replica}, service="shop"),
            Span(trace_id=f"{i:032x}", span_id=cache, workflow=wf, layer="cache", component="redis",
                 operation="GET cart", start_ns=start + int(db_ms * 1e6), end_ns=end, parent_span_id=root,
                 correlation_id=cid, service="shop"),
        ]
    ex.pipeline.ingest(batch, "native")
    assert ex.pipeline.recorder.flush()
    # the inventory documents checkout and a health check; search is served but not documented
    ex.runs.register_endpoints("shop", [EndpointEntry("POST", "/checkout", "views.checkout", True, "flask"),
                                        EndpointEntry("GET", "/health", "views.health", False, "flask")],
                               now - 4 * DAY)
    when = datetime.fromtimestamp(now / 1e9, UTC)
    alerts = AlertStore(ex.db)
    alerts.record([
        IncomingAlert("fp-latency", "firing", {"alertname": "FlowscopeStepLatencyHigh", "severity": "warning",
                                               "workflow": "checkout", "layer": "database"},
                      {"summary": "checkout database p95 over 100ms",
                       "dashboard_url": "http://grafana.test/d/flowscope-layers?var-layer=database"},
                      when - timedelta(days=1), None, "http://prometheus.test/graph?g0.expr=x"),
        IncomingAlert("fp-errors", "firing", {"alertname": "FlowscopeErrorBudgetBurn", "severity": "critical",
                                              "workflow": "checkout"}, {"summary": "checkout burns its budget"},
                      when - timedelta(hours=30), None, "")], "webhook")
    alerts.record([IncomingAlert("fp-errors", "resolved", {"alertname": "FlowscopeErrorBudgetBurn",
                                                          "severity": "critical", "workflow": "checkout"},
                                 {"summary": "checkout burns its budget"}, when - timedelta(hours=30),
                                 when - timedelta(hours=20), "")], "webhook")
    with ex.db.begin() as conn:
        for days_ago, series in ((1, "p95_step_latency"), (20, "old_shift")):
            conn.execute(insert(regressions).values(
                series=f"{series}{{workflow=checkout}}", labels=json.dumps({"workflow": "checkout", "layer":
                                                                            "database"}),
                change_time=(when - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ"), detector="cusum",
                direction="regression", before=0.045, after=0.095, relative_change=1.11, p_value=1e-9,
                p_adjusted=1e-8, first_seen=when, last_seen=when, kind="step", rate_per_s=0.0))


@pytest.fixture
def seeded(ex, client):
    now = time.time_ns()
    _seed(ex, now)
    return client, now


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_json_report_finds_what_the_window_holds(make_exporter, database_url):
    ex = make_exporter(database_url=database_url)
    client, now = create_app(ex).test_client(), time.time_ns()
    _seed(ex, now)
    r = client.get(f"{c.REPORTS_PATH}?since=7d&until={_iso(now + 10**9)}&format=json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    s = r.json["sections"]

    slo = {(x["workflow"], x["type"]): x for x in s["slo"]["rows"]}
    assert slo[("checkout", "availability")]["status"] == "breached"  # ~20 % of runs failed against a 99 % objective
    assert slo[("checkout", "availability")]["budget_consumed"] > 1
    assert slo[("search", "availability")]["status"] == "met" and slo[("search", "availability")]["bad"] == 0
    assert "run store" in s["slo"]["method"] and "Prometheus recording rules" in s["slo"]["method"]

    reg = s["regressions"]
    assert [f["series"] for f in reg["rows"]] == ["p95_step_latency{workflow=checkout}"]  # the 20-day-old one: out
    assert reg["rows"][0]["links"]["dashboard"].startswith("http://localhost:3000/d/flowscope-overview?")

    top = s["errors"]["rows"][0]
    assert top["error_type"] == "DatabaseError" and top["workflows"] == ["checkout"]
    finding = top["attribution"]["findings"][0]
    assert (finding["dimension"], finding["value"]) == ("attr.db.instance", "replica-2")
    assert top["suggestions"] and top["links"]["error page"] == f"http://localhost:9464/errors/{top['fingerprint']}"
    assert all(x["link"] == f"http://localhost:9464/runs/{x['id']}" for x in top["sample_runs"])

    steps = {(x["workflow"], x["operation"]): x for x in s["steps"]["rows"]}
    select = steps[("checkout", "SELECT orders")]
    assert select["trend"] == "slower" and select["half_over_half"] > 0.5
    assert select["slowest_run"]["link"].startswith("http://localhost:9464/runs/checkout-")
    assert "select=slow" in select["links"]["what slow runs share"]

    al = s["alerts"]
    assert (al["fired"], al["resolved"], al["still_firing"]) == (2, 1, 1)
    latency = next(a for a in al["rows"] if a["alertname"] == "FlowscopeStepLatencyHigh")
    assert latency["links"]["rule (Prometheus)"] == "http://prometheus.test/graph?g0.expr=x"
    assert latency["links"]["dashboard"].startswith("http://grafana.test/d/flowscope-layers")

    ep = s["endpoints"]
    assert [(e["method"], e["path"]) for e in ep["never_called"]] == [("GET", "/health")]
    assert [(e["method"], e["path"], e["workflows"]) for e in ep["undocumented"]] == [("POST", "/search", ["search"])]
    assert ep["undocumented"][0]["calls"] == 80 and ep["never_called"][0]["links"]["inventory"].startswith(
        "http://localhost:9464/endpoints?service=shop&since=")
    assert all(not sec["empty"] for sec in s.values())


def test_a_workflow_narrows_every_section(seeded):
    client, _ = seeded
    s = client.get(f"{c.REPORTS_PATH}?since=7d&workflow=search&format=json").json["sections"]
    assert {x["workflow"] for x in s["slo"]["rows"]} == {"search"}
    assert {x["workflow"] for x in s["steps"]["rows"]} == {"search"}
    assert s["errors"]["rows"] == [] and "No error of workflow 'search'" in s["errors"]["empty"]
    assert s["alerts"]["rows"] == [] and s["regressions"]["rows"] == []
    assert [e["path"] for e in s["endpoints"]["undocumented"]] == ["/search"]
    assert [e["path"] for e in s["endpoints"]["never_called"]] == ["/health"]  # not a workflow's: listed anyway


def test_markdown_is_a_ticket_text_and_the_same_for_the_same_data(seeded):
    client, now = seeded
    url = f"{c.REPORTS_PATH}?since=3d&until={_iso(now + 10**9)}&format=md"
    first, second = client.get(url), client.get(url)
    assert first.status_code == 200 and first.mimetype == "text/markdown"
    assert first.data == second.data
    md = first.data.decode()
    assert md.startswith("# Flowscope debugging report\n")
    for heading in ("## SLOs and error budget", "## Regressions found", "## Top error groups", "## Slowest steps",
                    "## Alerts fired and resolved", "## Endpoint inventory gaps"):
        assert f"\n{heading}\n" in md
    assert "| workflow | objective | type | runs | bad | good | budget spent | status | links |" in md
    assert "| checkout | 99.00 % | availability |" in md and "breached" in md
    assert "- `attr.db.instance = replica-2`" in md
    assert "| shop | POST | `/search` | 80 | 0 |" in md
    assert "[error page](http://localhost:9464/errors/" in md and "(http://localhost:9464/runs/checkout-" in md
    assert "<svg" not in md


def test_a_window_with_no_data_says_so_in_each_section_and_draws_nothing(seeded):
    client, _ = seeded
    body = client.get(f"{c.REPORTS_PATH}?since=2020-01-01T00:00:00Z&until=2020-01-08T00:00:00Z&format=json").json
    empties = {k: s["empty"] for k, s in body["sections"].items() if k != "endpoints"}
    assert all(empties.values()), empties
    assert empties["slo"].startswith("No runs in this window")
    # no traffic: every documented endpoint is a gap, which is the one thing such a window does say
    assert [e["path"] for e in body["sections"]["endpoints"]["never_called"]] == ["/checkout", "/health"]
    html = client.get(f"{c.REPORTS_PATH}?since=2020-01-01T00:00:00Z&until=2020-01-08T00:00:00Z").data.decode()
    assert "<svg" not in html
    assert "No runs in this window" in html and "No step finished in this window." in html
    md = client.get(f"{c.REPORTS_PATH}?since=2020-01-01T00:00:00Z&until=2020-01-08T00:00:00Z&format=md").data
    assert b"_No alert fired or resolved in this window._" in md


def test_hostile_names_stay_text_in_html_and_inside_their_markdown_cells(ex, client):
    wf, msg = '<img src="http://evil.test/x">|*w*', "bad | `tick` </code><script>alert(1)</script>\nline 2"
    end = time.time_ns() - 10**9
    ex.pipeline.ingest([Span(trace_id="e" * 32, span_id="1" * 16, workflow=wf, layer="api", component="c|d",
                             operation="op | <b>", start_ns=end - 10**7, end_ns=end, status="error",
                             correlation_id="cid|<x>", error_type="Bad|Type", error_message=msg)], "native")
    assert ex.pipeline.recorder.flush()
    html = client.get(f"{c.REPORTS_PATH}?since=1h").data.decode()
    assert "<img" not in html and "<script>" not in html and "op | <b>" not in html and "op | &lt;b&gt;" in html
    assert "&lt;img src=&#34;http://evil.test/x&#34;&gt;|*w*" in html
    md = client.get(f"{c.REPORTS_PATH}?since=1h&format=md").data.decode()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "\\|" in line]
    assert len(rows) == 3, rows  # the SLO, error group and step rows of the hostile run
    for line in rows:  # a row holding an escaped pipe keeps its column count
        header = next(h for h in reversed(md[:md.index(line)].splitlines()) if h.startswith("|---"))
        assert len(re.split(r"(?<!\\)\|", line)) - 1 == header.count("|"), line
        assert not re.search(r"(?<!\\)<", re.sub(r"`[^`]*`", "", line)), line  # no HTML outside code spans
    assert '| \\<img src="http://evil.test/x"\\>\\|*w* |' in md  # the workflow, as text


def test_without_an_inventory_the_endpoint_section_says_how_to_register_one(client):
    ep = client.get(f"{c.REPORTS_PATH}?format=json").json["sections"]["endpoints"]
    assert ep["never_called"] == ep["undocumented"] == []
    assert ep["empty"].startswith("No endpoint inventory is registered (POST /api/v1/endpoints")


@pytest.mark.parametrize("query, field", [
    ("since=yesterday", "since"), ("since=0d", "since"), ("since=400d", "since"), ("until=soon", "until"),
    ("since=2030-01-01T00:00:00Z&until=2029-01-01T00:00:00Z", "since"), ("format=pdf", "format"),
    ("workflow=" + "w" * 201, "workflow"), ("until=1e400", "until")])
def test_a_bad_parameter_is_a_400_naming_it(client, query, field):
    r = client.get(f"{c.REPORTS_PATH}?{query}")
    assert r.status_code == 400, r.data
    assert r.json["error"]["field"] == field and r.json["error"]["code"] == "invalid_query"


@settings(**FUZZ)
@given(since=st.one_of(st.none(), st.text(max_size=24), st.from_regex(r"-?[0-9]{1,9}[smhdw]?", fullmatch=True)),
       until=st.one_of(st.none(), st.text(max_size=24), st.integers(-(2**70), 2**70).map(str)))
def test_any_window_is_a_report_or_a_report_error(since, until):
    now = 1_790_000_000 * 10**9
    try:
        w = parse_window(since, until, now)
    except ReportError as e:
        assert e.field in ("since", "until") and e.message
        return
    assert 0 <= w.since_ns < w.until_ns and w.until_ns - w.since_ns <= 366 * DAY


@settings(**FUZZ)
@given(params=st.dictionaries(st.sampled_from(["since", "until", "workflow", "format"]),
                              st.one_of(st.text(max_size=30), st.sampled_from(
                                  ["7d", "1m", "2w", "0", "1e20", "nan", "html", "md", "json", "a\x00b",
                                   "9999-12-31T23:59:59-14:00", "2262-04-11T23:47:16Z"])), max_size=4))
def test_no_query_gets_a_5xx_and_every_4xx_names_its_field(client, params):
    r = client.get(c.REPORTS_PATH, query_string=params)
    assert r.status_code in (200, 400), (params, r.status_code, r.data[:300])
    if r.status_code == 400:
        err = orjson.loads(r.data)["error"]
        assert err["field"] in params, (params, err)


def test_the_cli_writes_the_report_and_refuses_a_bad_window_with_exit_2(ex, cli, tmp_path):
    _seed(ex, time.time_ns(), n=30)
    url = ex.config.database_url
    out = tmp_path / "report.md"
    r = cli("report", "--since", "7d", "--format", "md", "--out", out, "--database-url", url)
    assert r.returncode == 0, r.stderr
    md = out.read_text()
    assert md.startswith("# Flowscope debugging report") and "| checkout |" in md
    r = cli("report", "--since", "7d", "--workflow", "search", "--format", "json", "--database-url", url)
    assert r.returncode == 0 and json.loads(r.stdout)["workflow"] == "search"
    bad = cli("report", "--since", "lastweek", "--database-url", url)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("flowscope: --since: since must be a duration")


def test_the_html_report_renders_in_chromium_with_nothing_loaded(ex, serve, browser):  # noqa: F811
    _seed(ex, time.time_ns())
    srv = serve(ex)
    SHOTS.mkdir(parents=True, exist_ok=True)
    url = f"{srv.url}{c.REPORTS_PATH}?since=7d"
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    requested: list[str] = []

    def only_the_report(route):
        requested.append(route.request.url)
        if route.request.url == url:
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_the_report)
    failed: list[str] = []
    page.on("requestfailed", lambda req: failed.append(req.url))
    assert page.goto(url).status == 200
    page.wait_for_load_state("load")
    assert requested == [url] and failed == []
    assert page.locator("h1").inner_text() == "Flowscope debugging report"
    assert page.locator("#slo ~ .card .pill.breached").count() >= 1
    assert page.locator("svg").count() >= 5  # budget bars, error-rate bars, a regression, occurrences, step trends
    assert page.locator("a[href^='http://localhost:9464/runs/checkout-']").count() >= 3
    page.screenshot(path=str(SHOTS / "report.png"), full_page=True)

    empty = f"{srv.url}{c.REPORTS_PATH}?since=2020-01-01T00:00:00Z&until=2020-01-02T00:00:00Z"
    requested.clear()
    page.unroute("**/*")
    page.route("**/*", lambda route: (requested.append(route.request.url), route.continue_() if
                                      route.request.url == empty else route.abort()))
    page.goto(empty)
    assert requested == [empty] and page.locator("svg").count() == 0
    assert page.locator(".empty").count() == 5
    page.screenshot(path=str(SHOTS / "report-empty.png"), full_page=True)
    page.close()


def test_links_an_alert_carried_stay_links_and_only_http_ones(ex, client):
    """An alert's generator_url and dashboard_url are client data: a ``)`` cannot end the Markdown link and start
    an image a ticket would load, and a ``javascript:`` URL is never a link."""
    when = datetime.now(UTC) - timedelta(minutes=5)
    AlertStore(ex.db).record([IncomingAlert(
        "fp-hostile", "firing", {"alertname": "Hostile", "severity": "warning", "workflow": "checkout"},
        {"summary": "s", "dashboard_url": "javascript:alert(1)"}, when, None,
        "http://prometheus.test/graph) ![t](http://evil.test/p.png")], "webhook")
    md = client.get(f"{c.REPORTS_PATH}?since=1h&format=md").data.decode()
    assert "Hostile" in md and "](http://evil.test/p.png" not in md
    assert "[rule (Prometheus)](http://prometheus.test/graph%29%20!%5Bt%5D%28http://evil.test/p.png)" in md
    html = client.get(f"{c.REPORTS_PATH}?since=1h").data.decode()
    assert "Hostile" in html and "javascript:" not in html and "javascript:" not in md
