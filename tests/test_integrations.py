"""Datadog and New Relic from the same spec: golden files, every threshold in all three outputs, and push.

Push runs against local HTTP servers that check the documented request shapes: Datadog's v1 API
(``DD-API-KEY``/``DD-APPLICATION-KEY`` headers; /api/v1/slo, /api/v1/monitor, /api/v1/dashboard) through the
real ``datadog-api-client``, and NerdGraph (``POST /graphql`` with an ``API-Key`` header) through requests.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from graphql import GraphQLError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from backend.integrations import IntegrationError, datadog, newrelic
from backend.integrations.build import (
    DATADOG_CHECK,
    DATADOG_MONITORS,
    NEWRELIC_AGENT,
    NEWRELIC_CONDITIONS,
    UNMAPPED,
    render_all,
)
from backend.integrations.push import DatadogConfig, DatadogPusher, NewRelicConfig, NewRelicPusher, secret
from backend.integrations.scrape import METRICS
from backend.rules.build import render_all as render_rules
from backend.rules.spec import load_spec, parse_spec
from exporter import conventions as c
from exporter.retry import RetryPolicy
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = "alert_rules/spec/flowscope.yaml"
SPEC = load_spec(str(ROOT / SPEC_PATH))
FAST = RetryPolicy(initial_backoff_s=0.0, max_backoff_s=0.0, deadline_s=5.0, max_attempts=4)
DD_KEYS = {"api": "dd-api-key-SECRET-1", "app": "dd-app-key-SECRET-2"}
NR_KEY = "NRAK-SECRET-3"


# --- generated files ---------------------------------------------------------------------------------------


def test_checked_in_files_are_current_and_deterministic(cli, tmp_path):
    files = render_all(SPEC_PATH)
    assert render_all(SPEC_PATH) == files
    for rel, text in files.items():
        assert (ROOT / "integrations" / rel).read_text() == text, f"integrations/{rel} is stale: " \
                                                                   "flowscope integrations build"
    assert cli("integrations", "build", "--check").returncode == 0
    r = cli("integrations", "build", "--out", str(tmp_path))
    assert r.returncode == 0 and "wrote" in r.stdout
    assert cli("integrations", "build", "--out", str(tmp_path)).stdout.strip() == "up to date"
    monitors = tmp_path / DATADOG_MONITORS
    monitors.write_text(monitors.read_text().replace("> 2", "> 3"))
    r = cli("integrations", "build", "--check", "--out", str(tmp_path))
    assert r.returncode == 1 and f"stale: {monitors}" in r.stderr


def test_build_for_another_target_and_a_bad_target_is_a_usage_error(cli, tmp_path):
    assert cli("integrations", "build", "--out", str(tmp_path), "--target", "https://10.1.2.3:9464/").returncode == 0
    conf = yaml.safe_load((tmp_path / DATADOG_CHECK).read_text())["instances"][0]
    assert conf["openmetrics_endpoint"] == "https://10.1.2.3:9464/metrics"
    agent = yaml.safe_load((tmp_path / NEWRELIC_AGENT).read_text())["scrape_configs"][0]
    assert agent["scheme"] == "https" and agent["static_configs"] == [{"targets": ["10.1.2.3:9464"]}]
    r = cli("integrations", "build", "--out", str(tmp_path / "x"), "--target", "flowscope:9464")
    assert r.returncode == 2 and "--target must be an http(s) URL" in r.stderr and not (tmp_path / "x").exists()


def test_a_bad_spec_is_refused_naming_its_field(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: flowscope/v1\nkind: AlertSpec\nthresholds:\n"
                   "  - {layer: api, metric: response_time, warning: 5%, critical: 2s}\n")
    r = cli("integrations", "build", "--spec", str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "thresholds[0].warning" in r.stderr and not (tmp_path / "out").exists()


OTHER = parse_spec({"apiVersion": "flowscope/v1", "kind": "AlertSpec", "grafana_url": "https://grafana.example",
                    "thresholds": [
                        {"layer": "queue", "metric": "response_time", "warning": "250ms", "critical": "750ms"},
                        {"layer": "worker", "metric": "error_rate", "warning": "2%", "critical": "7%"},
                        {"layer": "cache", "metric": "hit_rate", "warning": "90%", "critical": "70%"},
                        {"layer": "system", "metric": "cpu_usage", "warning": "60%", "critical": "85%",
                         "for": "10m"}],
                    "slos": [{"workflow": "checkout", "type": "availability", "objective": "99.5%"},
                             {"workflow": "checkout", "type": "latency", "objective": "99%", "threshold": "2.5s"}]})


@pytest.mark.parametrize("spec", [SPEC, OTHER], ids=["shipped", "other"])
def test_every_threshold_is_in_the_prometheus_rules_the_datadog_monitors_and_the_nrql_conditions(spec, tmp_path):
    rules = yaml.safe_load(render_rules(SPEC_PATH, spec)["flowscope-rules.yml"])["groups"][0]["rules"]
    monitors = {m.name: m.to_dict() for m in datadog.monitors(spec)}
    conditions = {x["name"]: x for x in newrelic.conditions(spec)}
    assert len(spec.thresholds) >= 4
    for t in spec.thresholds:
        prom = {r["labels"][c.L_SEVERITY]: r for r in rules
                if r["alert"] == t.metric.alert and r["labels"][c.L_LAYER] == t.layer}
        op = ">" if t.metric.higher_is_worse else "<"
        assert prom["warning"]["expr"].endswith(f"{op} {t.warning:.6g}")
        assert prom["critical"]["expr"].endswith(f"{op} {t.critical:.6g}")
        name = f"{c.INTEGRATION_NAME_PREFIX}{t.metric.alert} · {t.layer} {t.metric.name}"
        m = monitors[name]
        assert m["options"]["thresholds"] == {"warning": t.warning, "critical": t.critical}
        assert m["query"].endswith(f"{op} {t.critical:g}") and f"layer:{t.layer}" in m["query"]
        assert f"layer:{t.layer}" in m["tags"] and c.DATADOG_MANAGED_TAG in m["tags"]
        link = prom["critical"]["annotations"]["dashboard_url"].replace("{{ $labels.workflow }}", "{{workflow.name}}")
        assert f"Runbook: {link}" in m["message"] and "{{#is_warning}}[warning]" in m["message"]
        n = conditions[name]
        terms = {x["priority"]: x for x in n["terms"]}
        assert terms["WARNING"]["threshold"] == t.warning and terms["CRITICAL"]["threshold"] == t.critical
        assert {x["operator"] for x in n["terms"]} == {"ABOVE" if t.metric.higher_is_worse else "BELOW"}
        assert f"layer = '{t.layer}'" in n["nrql"]["query"]
        assert n["runbookUrl"] == link.split("&var-workflow")[0]
        assert n["terms"][0]["thresholdDuration"] >= int(t.for_[:-1]) * 60


def test_the_datadog_files_are_what_the_client_reads_back_and_bad_values_are_refused():
    from datadog_api_client import Configuration
    from datadog_api_client.exceptions import ApiTypeError
    from datadog_api_client.model_utils import validate_and_convert_types
    from datadog_api_client.v1.model.dashboard import Dashboard
    from datadog_api_client.v1.model.monitor import Monitor
    from datadog_api_client.v1.model.monitor_type import MonitorType
    from datadog_api_client.v1.model.service_level_objective_request import ServiceLevelObjectiveRequest
    from datadog_api_client.v1.model.slo_threshold import SLOThreshold

    files = render_all(SPEC_PATH)
    docs = [(Monitor, d) for d in json.loads(files[DATADOG_MONITORS])]
    docs += [(ServiceLevelObjectiveRequest, d) for d in json.loads(files["datadog/slos.json"])]
    docs += [(Dashboard, json.loads(t)) for rel, t in files.items() if rel.startswith("datadog/dashboards/")]
    assert len(docs) > 10
    for model, doc in docs:
        read = validate_and_convert_types(doc, (model,), ["body"], True, True, Configuration())
        assert read.to_dict() == doc
    with pytest.raises(ValueError, match="MonitorType: 'metric alarm' is not one of"):
        datadog.enum(MonitorType, "metric alarm")
    with pytest.raises(ApiTypeError, match="target"):
        SLOThreshold(target="99%", timeframe=datadog.enum(datadog.SLOTimeframe, "30d"))


def test_slos_become_datadog_slos_and_burn_rate_monitors_and_what_does_not_map_is_listed():
    slos = {s.name: s.to_dict() for s in datadog.slos(OTHER)}
    assert list(slos) == ["[Flowscope] SLO · checkout-availability"]
    s = slos["[Flowscope] SLO · checkout-availability"]
    assert s["target_threshold"] == 99.5 and s["type"] == "metric"
    assert s["query"]["numerator"] == "sum:flowscope.workflow_runs.count{workflow:checkout,!status:error," \
                                      "!status:timeout}.as_count()"
    burns = [m for m in datadog.monitors(OTHER) if m.to_dict()["type"] == "slo alert"]
    assert [m.to_dict()["query"].split(".over")[0] for m in burns] == \
        ['burn_rate("slo-ref:[Flowscope] SLO · checkout-availability")'] * 3  # 1h, 6h, 1d: 3d is over 48h
    assert [m.to_dict()["priority"] for m in burns] == [1, 1, 3]
    nr = [x for x in newrelic.conditions(OTHER) if "SLOErrorBudgetBurn" in x["name"]]
    assert [x["signal"]["aggregationWindow"] for x in nr] == [3600, 3600]  # availability and latency, 1h/5m
    assert nr[0]["terms"][0]["threshold"] == pytest.approx(14.4 * 0.005)
    table = render_all(SPEC_PATH, OTHER)[UNMAPPED]
    assert "checkout-latency" in table and "at most 48h" in table and "at most 2h" in table
    assert "panel “Flagged queries”" in table and "panel “SLO burn rate”" in table


def test_dashboards_carry_every_overview_and_layers_panel_or_list_it():
    from backend.dashboards.build import dashboards as grafana
    from backend.dashboards.build import panels

    dash, skipped = datadog.dashboards(SPEC, grafana(SPEC))
    titles = {uid: [w["definition"]["title"] for g in d.to_dict()["widgets"] for w in g["definition"]["widgets"]]
              for uid, d in dash.items()}
    for uid in datadog.DASHBOARDS:
        panel_titles = [p["title"] for p in panels(grafana(SPEC)[uid]) if p["type"] != "row"]
        left_out = [u.what for u in skipped if u.where.endswith(uid)]
        assert sorted(titles[uid] + [w[7:-1] for w in left_out]) == sorted(panel_titles)
    layers = json.dumps(dash[c.DASHBOARD_LAYERS].to_dict())
    assert '"y = 0.5"' in layers and '"y = 2"' in layers  # the api thresholds as markers
    assert "p95:flowscope.step_duration_seconds{$workflow,$layer}" in layers


def test_the_datadog_check_names_what_the_exporter_exposes_without_exemplars(ex):
    from backend.app import create_app

    conf = yaml.safe_load(render_all(SPEC_PATH)[DATADOG_CHECK])["instances"][0]
    assert conf["histogram_buckets_as_distributions"] and conf["use_latest_spec"] is False
    # What the Agent asks for when use_latest_spec is false: the Prometheus text format.
    r = create_app(ex).test_client().get(c.METRICS_PATH, headers={"Accept": "text/plain;version=0.0.4;q=1"})
    text = r.data.decode()
    assert "# {" not in text  # no exemplars
    exposed = {f.name: f.type for f in text_string_to_metric_families(text)}
    for entry in conf["metrics"]:
        (family, short), = entry.items()
        kind = next(m.kind for m in METRICS if m.family == family)
        if not family.startswith(c.CUSTOM_METRIC_PREFIX):  # those exist once an app records one
            assert exposed.get(family) == kind, family
        assert short == family.removeprefix("flowscope_")


#: A metric a Datadog query reads: ``p95:name{``, ``sum:name{``... and the tag keys of its ``by {...}``.
_DD_QUERY = re.compile(r"(?:p\d+|sum|avg|max|min):([a-z_.]+)\{([^}]*)\}(?: by \{([^}]*)\})?")


def test_the_real_datadog_check_submits_every_metric_and_tag_the_monitors_slos_and_dashboards_read(ex, serve):
    """The Agent's own OpenMetrics V2 check (datadog-checks-base) scrapes a live exporter with the generated conf."""
    from datadog_checks.base import OpenMetricsBaseCheckV2
    from datadog_checks.base.stubs import aggregator

    from exporter.sdk import WorkflowTracer
    from exporter.sdk.sinks import InProcessSink

    srv = serve(ex)
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with t.workflow("checkout"), t.step("api", "orders", "create"):
        pass
    with pytest.raises(ValueError), t.workflow("checkout"), t.step("database", "postgres", "insert"):
        raise ValueError("boom")
    instance = yaml.safe_load(render_all(SPEC_PATH, target=srv.url)[DATADOG_CHECK])["instances"][0]
    aggregator.reset()
    try:
        assert OpenMetricsBaseCheckV2("openmetrics", {}, [instance]).run() == ""
        submitted = {name: {tag.split(":")[0] for m in aggregator.metrics(name) for tag in m.tags}
                     for name in aggregator.metric_names}
        # the distributions histogram_buckets_as_distributions sends, one bucket at a time
        buckets = {m.datadog: aggregator.histogram_bucket(m.datadog) for m in METRICS if m.kind == "histogram"}
        for name, found in buckets.items():
            submitted[name] = {tag.split(":")[0] for b in found for tag in b.tags}
    finally:
        aggregator.reset()
    assert all(buckets.values()) and {"flowscope.step_duration_seconds", "flowscope.workflow_duration_seconds"} \
        <= set(buckets)
    files = render_all(SPEC_PATH)
    queries = [m["query"] for m in json.loads(files[DATADOG_MONITORS])]
    queries += [q for s in json.loads(files["datadog/slos.json"]) for q in s["query"].values()]
    queries += re.findall(r'"q": "([^"]+)"', "".join(t for rel, t in files.items()
                                                       if rel.startswith("datadog/dashboards/")))
    def keys(scope: str) -> tuple[str, ...]:  # layer:api,!status:error / $workflow AND status IN (a,b) / *
        terms = re.split(r",(?![^(]*\))| AND ", scope)
        return tuple(re.split(r":| IN ", t.strip().lstrip("!$"))[0] for t in terms if t.strip() not in ("", "*"))

    read = {(m, tuple(k.strip() for k in by.split(",") if k) + keys(scope)) for q in queries
            for m, scope, by in _DD_QUERY.findall(q)}
    # Families with no series until an app records one (custom gauges) or detection finds a regression.
    later = {c.CUSTOM_HIT_RATE, c.CUSTOM_MEMORY_USAGE, c.CUSTOM_CPU_USAGE, c.REGRESSION_ACTIVE, c.QUERY_PATTERNS_TOTAL}
    later_dd = {m.datadog for m in METRICS if m.name in later}
    assert len(read) > 10 and any("status" in tags for _, tags in read)
    for metric, by in sorted(read):
        base = metric.removesuffix(".count")
        if base in later_dd:
            continue
        assert metric in submitted, f"{metric} is read but the check does not submit it: {sorted(submitted)}"
        assert set(by) <= submitted[metric], (metric, by, submitted[metric])


def test_the_new_relic_agent_config_is_valid_for_prometheus_agent_mode(tmp_path):
    promtool = require_binary("promtool")
    key = tmp_path / "key"
    key.write_text("license")
    cfg = tmp_path / "agent.yml"
    cfg.write_text(render_all(SPEC_PATH)[NEWRELIC_AGENT].replace("/etc/prometheus/secrets/newrelic_license_key",
                                                                  str(key)))
    r = subprocess.run([promtool, "check", "config", "--agent", str(cfg)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load(cfg.read_text())
    assert doc["remote_write"][0]["send_exemplars"] is False
    assert "credentials" not in doc["remote_write"][0]["authorization"]
    assert json.loads(render_all(SPEC_PATH)[NEWRELIC_CONDITIONS])[0]["condition"]["enabled"] is True


def test_the_nerdgraph_documents_parse_and_declare_every_variable_the_files_give():
    from graphql import OperationType, parse

    files = render_all(SPEC_PATH)
    ops = {}
    for name in newrelic.DOCUMENTS:
        doc = parse(files[f"newrelic/nerdgraph/{name}.graphql"])
        (op,) = doc.definitions
        ops[name] = (op.operation, {v.variable.name.value for v in op.variable_definitions})
    assert ops["create-condition"] == (OperationType.MUTATION, {"accountId", "policyId", "condition"})
    assert ops["update-condition"] == (OperationType.MUTATION, {"accountId", "id", "condition"})
    assert ops["create-policy"] == (OperationType.MUTATION, {"accountId", "policy"})
    assert ops["find-policy"][0] == ops["find-conditions"][0] == OperationType.QUERY
    assert set(json.loads(files["newrelic/policy.json"])) == {"policy"}
    conditions = json.loads(files[NEWRELIC_CONDITIONS])
    assert {k for x in conditions for k in x} == {"condition"}
    # A named workflow's absent-data alert is in both tools, as in the Prometheus rules.
    absent = "[Flowscope] FlowscopeWorkflowDataAbsent · checkout"
    assert absent in {x["name"] for x in newrelic.conditions(OTHER)}
    assert absent in {m.name for m in datadog.monitors(OTHER)}


# --- fake vendor APIs -----------------------------------------------------------------------------------------


class _Server:
    """A loopback HTTP server; ``script`` holds (status, body) answers that replace the next requests'."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict | None, dict]] = []  # headers lower-cased
        self.script: list[tuple[int, object]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _go(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                with fake.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    fake.requests.append((self.command, self.path, body, headers))
                    scripted = fake.script.pop(0) if fake.script else None  # None: answer normally
                if scripted is not None:
                    status, out = scripted
                else:
                    try:
                        status, out = fake.handle(self.command, self.path, body, self.headers)
                    except (KeyError, TypeError, AssertionError, ValueError, GraphQLError) as e:
                        fake.errors.append(f"{self.command} {self.path}: {e!r}")
                        status, out = 400, {"errors": [repr(e)]}
                data = out if isinstance(out, bytes) else json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _go

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def writes(self) -> list[tuple[str, str]]:
        """Requests that change something: not GETs, and not NerdGraph queries (mutations are writes)."""
        return [(m, p.split("?")[0]) for m, p, b, _ in self.requests if m != "GET"
                and not (isinstance(b, dict) and str(b.get("query", "")).lstrip().startswith("query "))]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class FakeDatadog(_Server):
    """Datadog's v1 API for monitors (/api/v1/monitor), SLOs (/api/v1/slo) and dashboards (/api/v1/dashboard)."""

    def __init__(self):
        self.monitors: dict[int, dict] = {}
        self.slos: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        super().__init__()

    def handle(self, method, path, body, headers):
        if headers.get("DD-API-KEY") != DD_KEYS["api"] or headers.get("DD-APPLICATION-KEY") != DD_KEYS["app"]:
            return 401, {"errors": ["Unauthorized"]}
        url = urlsplit(path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        assert parts[:2] == ["api", "v1"], path
        kind, ident = parts[2], (parts[3] if len(parts) > 3 else None)
        if method in ("POST", "PUT"):
            assert headers.get("Content-Type", "").startswith("application/json")
            assert isinstance(body, dict) and "id" not in body
        if kind == "monitor":
            if method == "GET":
                assert q["monitor_tags"] == c.DATADOG_MANAGED_TAG and int(q["page_size"]) > 0
                return 200, [m for m in self.monitors.values() if c.DATADOG_MANAGED_TAG in m["tags"]]
            assert {"name", "type", "query", "message", "tags", "options"} <= set(body), body
            if "slo-ref:" in body["query"]:
                return 400, {"errors": ["burn_rate() names no SLO"]}
            mid = int(ident) if method == "PUT" else len(self.monitors) + 1
            assert method == "POST" or mid in self.monitors
            self.monitors[mid] = {**body, "id": mid}
            return 200, self.monitors[mid]
        if kind == "slo":
            if method == "GET":
                assert q["tags_query"] == c.DATADOG_MANAGED_TAG
                return 200, {"data": [s for s in self.slos.values() if c.DATADOG_MANAGED_TAG in s["tags"]]}
            assert {"name", "type", "thresholds", "query"} <= set(body), body
            sid = ident if method == "PUT" else f"slo{len(self.slos) + 1}"
            assert method == "POST" or sid in self.slos
            self.slos[sid] = {**body, "id": sid}
            return 200, {"data": [self.slos[sid]]}
        if kind == "dashboard":
            if method == "GET" and ident is None:
                return 200, {"dashboards": [{"id": i, "title": d["title"]} for i, d in self.dashboards.items()]}
            if method == "GET":
                return (200, self.dashboards[ident]) if ident in self.dashboards else (404, {"errors": ["Not found"]})
            assert {"title", "layout_type", "widgets"} <= set(body), body
            did = ident if method == "PUT" else f"abc-{len(self.dashboards) + 1}"
            self.dashboards[did] = {**body, "id": did}
            return 200, self.dashboards[did]
        raise KeyError(path)


class FakeNerdGraph(_Server):
    """NerdGraph: ``POST /graphql`` with ``API-Key``; the five documents Flowscope sends, checked by name."""

    def __init__(self):
        self.policies: dict[str, dict] = {}
        self.conditions: dict[str, dict] = {}
        super().__init__()

    def handle(self, method, path, body, headers):
        assert method == "POST" and path == "/graphql", (method, path)
        if headers.get("API-Key") != NR_KEY:
            return 401, {"errors": [{"message": "Invalid API key"}]}
        doc, v = body["query"], body["variables"]
        from graphql import parse

        (definition,) = parse(doc).definitions  # a document that does not parse is a GraphQLSyntaxError: a 400
        op = definition.name.value
        assert isinstance(v["accountId"], int)
        alerts = lambda x: {"data": {"actor": {"account": {"alerts": x}}}}  # noqa: E731
        if op == "FindPolicy":
            return 200, alerts({"policiesSearch": {"policies": [p for p in self.policies.values()
                                                                if p["name"] == v["name"]]}})
        if op == "CreatePolicy":
            assert set(v["policy"]) == {"name", "incidentPreference"}
            pid = str(100 + len(self.policies))
            self.policies[pid] = {**v["policy"], "id": pid}
            return 200, {"data": {"alertsPolicyCreate": self.policies[pid]}}
        if op == "FindConditions":
            assert v["policyId"] in self.policies
            return 200, alerts({"nrqlConditionsSearch": {"nextCursor": None, "nrqlConditions": [
                x for x in self.conditions.values() if x["policyId"] == v["policyId"]]}})
        cond = v["condition"]
        assert {"name", "enabled", "nrql", "terms", "signal", "runbookUrl"} <= set(cond), cond
        assert all(t["priority"] in ("CRITICAL", "WARNING") for t in cond["terms"])
        if op == "CreateCondition":
            cid = str(1000 + len(self.conditions))
            self.conditions[cid] = {**cond, "id": cid, "policyId": v["policyId"]}
            return 200, {"data": {"alertsNrqlConditionStaticCreate": {"id": cid, "name": cond["name"]}}}
        if op == "UpdateCondition":
            old = self.conditions[v["id"]]
            self.conditions[v["id"]] = {**cond, "id": v["id"], "policyId": old["policyId"]}
            return 200, {"data": {"alertsNrqlConditionStaticUpdate": {"id": v["id"], "name": cond["name"]}}}
        raise KeyError(op)


@pytest.fixture
def fake_dd():
    s = FakeDatadog()
    yield s
    s.stop()


@pytest.fixture
def fake_nr():
    s = FakeNerdGraph()
    yield s
    s.stop()


def _dd(url, api=DD_KEYS["api"]):
    return DatadogPusher(DatadogConfig(url, api_key=api, app_key=DD_KEYS["app"], retry=FAST, timeout_s=5),
                         sleep=lambda s: None)


def _nr(url, key=NR_KEY):
    return NewRelicPusher(NewRelicConfig(url + "/graphql", api_key=key, account_id=42, retry=FAST, timeout_s=5),
                          sleep=lambda s: None)


# --- push ------------------------------------------------------------------------------------------------------


def test_datadog_push_creates_then_changes_nothing_then_updates_what_changed(fake_dd):
    first = _dd(fake_dd.url).push(SPEC)
    assert not fake_dd.errors, fake_dd.errors
    assert set(first["slos"].values()) == set(first["monitors"].values()) == {"created"}
    assert len(first["monitors"]) == len(datadog.monitors(SPEC)) and len(first["dashboards"]) == 2
    burn = next(m for m in fake_dd.monitors.values() if m["type"] == "slo alert")
    assert burn["query"].startswith('burn_rate("slo1").over("30d")')  # the SLO's id, not its reference
    n = len(fake_dd.requests)
    second = _dd(fake_dd.url).push(SPEC)
    assert {v for k in ("slos", "monitors", "dashboards") for v in second[k].values()} == {"unchanged"}
    assert all(m == "GET" for m, *_ in fake_dd.requests[n:])  # no write at all
    changed = parse_spec({**yaml.safe_load((ROOT / SPEC_PATH).read_text()), "thresholds": [
        {"layer": "api", "metric": "response_time", "warning": "400ms", "critical": "2000ms"}],
        "default_slos": [{"type": "availability", "objective": "99.5%"}]})
    third = _dd(fake_dd.url).push(changed)
    assert third["monitors"]["[Flowscope] FlowscopeStepLatencyHigh · api response_time"] == "updated"
    assert third["slos"] == {"[Flowscope] SLO · default:availability": "updated"}
    assert third["dashboards"] == {"[Flowscope] Workflow overview": "unchanged",
                                   "[Flowscope] Layers & components": "updated"}  # the api markers moved
    assert {("PUT", "/api/v1/monitor/1"), ("PUT", "/api/v1/slo/slo1")} <= set(fake_dd.writes())
    assert fake_dd.slos["slo1"]["target_threshold"] == 99.5 and not fake_dd.errors
    assert "[Flowscope] FlowscopeCacheHitRateLow · cache hit_rate" in third["not_in_spec"]  # listed, not deleted
    assert not any(m == "DELETE" for m, *_ in fake_dd.requests)


def test_datadog_5xx_is_retried_and_401_is_a_clear_error_without_the_key(fake_dd, caplog):
    fake_dd.script = [(503, {"errors": ["unavailable"]}), (502, {"errors": ["bad gateway"]})]
    report = _dd(fake_dd.url).push(SPEC)
    assert report["retries"] == 2 and set(report["slos"].values()) == {"created"}
    with pytest.raises(IntegrationError, match="401 Unauthorized; check DD_API_KEY") as e:
        _dd(fake_dd.url, api="wrong-key").push(SPEC)
    assert "wrong-key" not in str(e.value) and DD_KEYS["app"] not in str(e.value)
    assert not any(k in caplog.text for k in (*DD_KEYS.values(), "wrong-key"))
    fake_dd.script = [(503, {})] * 10
    with pytest.raises(IntegrationError, match=r"Datadog unavailable \(HTTP 503\) after 4 attempts"):
        _dd(fake_dd.url).push(SPEC)


def test_newrelic_push_creates_the_policy_and_conditions_once(fake_nr):
    first = _nr(fake_nr.url).push(SPEC)
    assert not fake_nr.errors, fake_nr.errors
    assert first["policy"] == {c.NEWRELIC_POLICY: "created"}
    assert set(first["conditions"].values()) == {"created"}
    assert len(first["conditions"]) == len(newrelic.conditions(SPEC))
    writes = len(fake_nr.writes())
    second = _nr(fake_nr.url).push(SPEC)
    assert second["policy"] == {c.NEWRELIC_POLICY: "unchanged"} and set(second["conditions"].values()) == \
        {"unchanged"}
    assert len(fake_nr.writes()) == writes
    changed = parse_spec({**yaml.safe_load((ROOT / SPEC_PATH).read_text()), "thresholds": [
        {"layer": "cache", "metric": "hit_rate", "warning": "85%", "critical": "60%"}]})
    third = _nr(fake_nr.url).push(changed)
    assert third["conditions"]["[Flowscope] FlowscopeCacheHitRateLow · cache hit_rate"] == "updated"
    assert "[Flowscope] FlowscopeStepLatencyHigh · api response_time" in third["not_in_spec"]
    assert all(h["api-key"] == NR_KEY and h["content-type"] == "application/json"
               for _, _, _, h in fake_nr.requests)


def test_newrelic_5xx_is_retried_and_401_is_a_clear_error(fake_nr, caplog):
    fake_nr.script = [(503, b"")]
    assert _nr(fake_nr.url).push(SPEC)["retries"] == 1
    with pytest.raises(IntegrationError, match="New Relic answered 401; check NEW_RELIC_API_KEY") as e:
        _nr(fake_nr.url, key="NRAK-wrong").push(SPEC)
    assert "NRAK-wrong" not in str(e.value) and "NRAK" not in caplog.text
    fake_nr.script = [(200, {"errors": [{"message": "Field 'x' doesn't exist"}]})]
    with pytest.raises(IntegrationError, match="find policy: NerdGraph refused it: Field 'x'"):
        _nr(fake_nr.url).push(SPEC)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["data", "errors", "actor", "account", "alerts", "policiesSearch",
                                          "policies", "id", "name", "message"]), inner, max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=_json, status=st.sampled_from([200, 200, 200, 400, 404, 409]))
def test_any_nerdgraph_answer_is_a_result_or_a_named_error(fake_nr, answer, status):
    fake_nr.script = [(status, answer)]
    with fake_nr.lock:
        fake_nr.policies.clear()
        fake_nr.conditions.clear()
    try:
        _nr(fake_nr.url).push(SPEC)
    except IntegrationError as e:
        assert str(e).split(":")[0] in ("find policy", "create policy", "list conditions") or "condition" in str(e)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["data", "id", "name", "type", "query", "thresholds", "dashboards",
                                                "title", "widgets", "errors"]), inner, max_size=4), max_leaves=12),
       which=st.integers(0, 3))
def test_any_datadog_answer_is_a_result_or_a_named_error(fake_dd, answer, which):
    with fake_dd.lock:
        fake_dd.monitors.clear()
        fake_dd.slos.clear()
        fake_dd.dashboards.clear()
        fake_dd.script = [None] * which + [(200, answer)]  # None: answer normally
    try:
        _dd(fake_dd.url).push(SPEC)
    except IntegrationError as e:
        assert re.match(r"(list|create|update|get) (SLOs?|monitors?|dashboards?)", str(e)), str(e)


def test_cli_push_reads_keys_from_files_and_reports_a_second_run_unchanged(cli, fake_dd, fake_nr, tmp_path,
                                                                            monkeypatch, caplog):
    for k in ("DD_API_KEY", "DD_APP_KEY", "NEW_RELIC_API_KEY", "NEW_RELIC_API_KEY_FILE", "DD_API_KEY_FILE",
              "DD_APP_KEY_FILE", "NEW_RELIC_ACCOUNT_ID"):
        monkeypatch.delenv(k, raising=False)
    r = cli("integrations", "push", "--datadog", "--datadog-url", fake_dd.url)
    assert r.returncode == 1 and "DD_API_KEY_FILE" in r.stderr
    assert cli("integrations", "push").returncode == 2
    for name, value in (("DD_API_KEY", DD_KEYS["api"]), ("DD_APP_KEY", DD_KEYS["app"]),
                        ("NEW_RELIC_API_KEY", NR_KEY)):
        (tmp_path / name).write_text(value + "\n")
        monkeypatch.setenv(f"{name}_FILE", str(tmp_path / name))
    monkeypatch.setenv("NEW_RELIC_ACCOUNT_ID", "42")
    args = ("integrations", "push", "--datadog", "--newrelic", "--datadog-url", fake_dd.url,
            "--newrelic-url", fake_nr.url + "/graphql")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    second = cli(*args)
    assert second.returncode == 0 and "Datadog: up to date, nothing changed" in second.stdout
    assert "New Relic: up to date, nothing changed" in second.stdout
    out = first.stdout + first.stderr + second.stdout + second.stderr + caplog.text
    assert not any(k in out for k in (*DD_KEYS.values(), NR_KEY))


def test_secrets_come_from_a_file_or_the_environment_and_an_empty_file_is_refused(tmp_path):
    (tmp_path / "k").write_text("  key-from-file \n")
    assert secret("X", {"X_FILE": str(tmp_path / "k"), "X": "from-env"}) == "key-from-file"
    assert secret("X", {"X": "from-env"}) == "from-env"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(IntegrationError, match=r"X_FILE: .* is empty"):
        secret("X", {"X_FILE": str(tmp_path / "empty")})
    with pytest.raises(IntegrationError, match="cannot read"):
        secret("X", {"X_FILE": str(tmp_path / "missing")})


def test_the_endpoint_no_traffic_alert_is_in_a_vendor_output_or_listed_as_not_mapped():
    assert SPEC.endpoint_no_traffic_for is not None
    names = [m.name for m in datadog.monitors(SPEC)] + [x["name"] for x in newrelic.conditions(SPEC)]
    if not any(c.ALERT_ENDPOINT_NO_TRAFFIC in n for n in names):
        assert c.ALERT_ENDPOINT_NO_TRAFFIC in render_all(SPEC_PATH, SPEC)[UNMAPPED]


def test_a_burn_monitor_names_its_own_slo_when_one_slo_name_begins_another(fake_dd):
    spec = parse_spec({"apiVersion": "flowscope/v1", "kind": "AlertSpec", "grafana_url": "https://grafana.example",
                       "slos": [{"workflow": "pay", "type": "availability", "objective": "99.5%"},
                                {"workflow": "pay-availability-eu", "type": "availability", "objective": "99%"}]})
    report = _dd(fake_dd.url).push(spec)
    assert not fake_dd.errors, fake_dd.errors
    by_name = {s["name"]: sid for sid, s in fake_dd.slos.items()}
    assert set(report["slos"]) == set(by_name)
    burns = [m for m in fake_dd.monitors.values() if m["type"] == "slo alert"]
    assert burns
    for m in burns:
        wf = next(v.split(":", 1)[1] for v in m["tags"] if v.startswith(f"{c.L_SLO}:"))
        assert m["query"].startswith(f'burn_rate("{by_name["[Flowscope] SLO · " + wf]}")'), (wf, m["query"])
