"""Alert rules as code: spec validation, generated files, and the real promtool/amtool on them."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from backend.rules.alertmanager import alertmanager_config
from backend.rules.build import ALERTMANAGER_FILE, RULES_FILE, SLO_TESTS_FILE, TESTS_FILE, render_all
from backend.rules.generate import to_yaml
from backend.rules.spec import load_spec, parse_spec
from exporter import conventions as c
from exporter.config import load_config
from exporter.demo import DEMO_RULES_DIR, DEMO_RUN_RETENTION_S, DEMO_SPEC, WORKFLOWS, demo_defaults
from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "alert_rules/spec/flowscope.yaml"
BAD = sorted((ROOT / "alert_rules/spec/bad").glob("*.yaml"))


def test_there_are_known_bad_specs():
    assert len(BAD) >= 10


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_each_known_bad_spec_is_refused_naming_its_field(path, tmp_path, cli):
    expect = re.match(r"# expect: (.*)", path.read_text()).group(1)
    r = cli("rules", "build", "--spec", str(path), "--out", str(tmp_path))
    assert r.returncode == 1
    assert expect in r.stderr and str(path) in r.stderr
    assert not any(tmp_path.iterdir())  # nothing written


#: (spec, output directory): the shipped generic rules, and the demo's own.
BUILT = [("alert_rules/spec/flowscope.yaml", "alert_rules"), (DEMO_SPEC, DEMO_RULES_DIR)]


@pytest.mark.parametrize("spec,out", BUILT, ids=["shipped", "demo"])
def test_checked_in_rules_are_generated_from_the_spec_and_current(spec, out, cli):
    files = render_all(spec)
    for rel, text in files.items():
        assert (ROOT / out / rel).read_text() == text, f"{out}/{rel} is stale: run flowscope rules build --spec {spec}"
    assert render_all(spec) == files  # the same bytes every run
    r = cli("rules", "build", "--check", "--spec", spec, "--out", out)
    assert r.returncode == 0, r.stderr


def test_stale_files_are_detected(tmp_path, cli):
    r = cli("rules", "build", "--out", str(tmp_path))
    assert r.returncode == 0
    (tmp_path / RULES_FILE).write_text((tmp_path / RULES_FILE).read_text() + "\n# edited by hand\n")
    r = cli("rules", "build", "--check", "--out", str(tmp_path))
    assert r.returncode == 1 and "stale" in r.stderr


def test_every_alert_has_labels_annotations_and_a_firing_and_a_quiet_test():
    rules = yaml.safe_load((ROOT / "alert_rules" / RULES_FILE).read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == {c.ALERT_STEP_LATENCY_HIGH, c.ALERT_STEP_ERROR_RATE_HIGH,
                                            c.ALERT_CACHE_HIT_RATE_LOW, c.ALERT_MEMORY_USAGE_HIGH,
                                            c.ALERT_CPU_USAGE_HIGH, c.ALERT_SLO_BURN_RATE, c.ALERT_WORKFLOW_DATA_ABSENT,
                                            c.ALERT_REGRESSION_DETECTED, c.ALERT_ENDPOINT_NO_TRAFFIC,
                                            c.ALERT_RUN_STORE_DROPPING, c.ALERT_LOKI_DROPPING,
                                            c.ALERT_FORWARD_DROPPING}
    for a in alerts:
        assert a["labels"][c.L_SEVERITY] in (c.SEVERITY_WARNING, c.SEVERITY_CRITICAL)
        assert {"summary", "description", "dashboard_url"} <= set(a["annotations"])
        assert a["annotations"]["dashboard_url"].startswith("http://localhost:3000/d/flowscope-")
    tests = [t for f in (TESTS_FILE, SLO_TESTS_FILE)
             for t in yaml.safe_load((ROOT / "alert_rules" / f).read_text())["tests"]]
    firing, quiet = set(), set()
    for t in tests:
        for art in t.get("alert_rule_test", []):  # some cases test a recording rule (promql_expr_test)
            names = {e["exp_labels"].get(c.L_SEVERITY) for e in art["exp_alerts"]}
            (firing if art["exp_alerts"] else quiet).add(art["alertname"])
            firing.update(f"{art['alertname']}/{s}" for s in names)
    for a in alerts:
        assert a["alert"] in firing and a["alert"] in quiet, a["alert"]
        assert f"{a['alert']}/{a['labels'][c.L_SEVERITY]}" in firing, a


@pytest.mark.parametrize("out", [o for _, o in BUILT], ids=["shipped", "demo"])
def test_promtool_checks_and_unit_tests_pass(out):
    require_binary("promtool")
    d = ROOT / out
    r = subprocess.run(["promtool", "check", "rules", str(d / RULES_FILE)], check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "test", "rules", str(d / TESTS_FILE), str(d / SLO_TESTS_FILE)],
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_can_fail(tmp_path):
    """A threshold changed in the rules but not in the tests must fail promtool: the tests have teeth."""
    require_binary("promtool")
    spec = tmp_path / "spec.yaml"
    spec.write_text("apiVersion: flowscope/v1\nkind: AlertSpec\nthresholds:\n"
                    "  - {layer: api, metric: response_time, warning: 500ms, critical: 2000ms}\n")
    files = render_all(str(spec))
    (tmp_path / "tests").mkdir()
    (tmp_path / TESTS_FILE).write_text(files[TESTS_FILE])
    (tmp_path / RULES_FILE).write_text(files[RULES_FILE])
    ok = subprocess.run(["promtool", "test", "rules", str(tmp_path / TESTS_FILE)], check=False, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / RULES_FILE).write_text(files[RULES_FILE].replace("> 0.5\n", "> 1.5\n", 1))
    r = subprocess.run(["promtool", "test", "rules", str(tmp_path / TESTS_FILE)], check=False, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "FAILED" in (r.stdout + r.stderr)


def test_alertmanager_config_is_valid_and_routes_by_severity():
    require_binary("amtool")
    cfg = ROOT / "alert_rules" / ALERTMANAGER_FILE
    r = subprocess.run(["amtool", "check-config", str(cfg)], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for labels, receiver in ((["severity=critical", "workflow=checkout"], "flowscope-critical"),
                             (["severity=warning", "workflow=login"], "flowscope-warning"),
                             (["alertname=Other"], "flowscope-webhook")):
        r = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={cfg}", *labels],
                           check=False, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == receiver, (labels, r.stdout, r.stderr)
    doc = yaml.safe_load(cfg.read_text())
    assert doc["inhibit_rules"][0]["equal"] == ["alertname", "workflow", "layer"]


def test_receivers_switched_on_keep_secrets_in_files(tmp_path):
    require_binary("amtool")
    secrets = {}
    for name in ("slack_url", "smtp_password", "pagerduty_key", "webhook_token"):
        p = tmp_path / name
        p.write_text("s3cr3t-" + name)
        secrets[name] = str(p)
    spec = parse_spec({
        "apiVersion": "flowscope/v1", "kind": "AlertSpec",
        "routing": {"webhook_url": "http://127.0.0.1:9464/api/v1/alerts/webhook",
                    "webhook_credentials_file": secrets["webhook_token"],
                    "slack": {"api_url_file": secrets["slack_url"], "channel": "#alerts"},
                    "email": {"to": "oncall@example.com", "from": "am@example.com", "smarthost": "smtp.example.com:587",
                              "auth_username": "am", "auth_password_file": secrets["smtp_password"]},
                    "pagerduty": {"routing_key_file": secrets["pagerduty_key"]}}})
    text = to_yaml(alertmanager_config(spec.routing), "test")
    assert "s3cr3t" not in text
    cfg = tmp_path / "am.yml"
    cfg.write_text(text)
    r = subprocess.run(["amtool", "check-config", str(cfg)], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load(text)
    crit = next(rc for rc in doc["receivers"] if rc["name"] == "flowscope-critical")
    warn = next(rc for rc in doc["receivers"] if rc["name"] == "flowscope-warning")
    assert {"webhook_configs", "slack_configs", "email_configs", "pagerduty_configs"} <= set(crit)
    assert "pagerduty_configs" not in warn  # warnings never page


# --- defaults that fit any deployment; the demo's own spec -------------------------------------------


def test_shipped_rules_name_no_workflow_and_cover_every_workflow_seen():
    spec = load_spec(str(SPEC))
    assert spec.named_workflows == () and spec.has_defaults
    text = (ROOT / "alert_rules" / RULES_FILE).read_text()
    assert 'workflow="' not in text and "absent(" not in text  # no alert about a workflow nobody has
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    (absent,) = [r for r in rules if r.get("alert") == c.ALERT_WORKFLOW_DATA_ABSENT]
    assert "max_over_time(flowscope_workflow_runs_total[6h])" in absent["expr"] and "unless" in absent["expr"]
    assert {r["labels"][c.L_SLO] for r in rules if "record" in r} == {"default:availability"}


def test_the_demo_spec_names_exactly_the_demo_workflows_in_the_old_per_workflow_form():
    spec = load_spec(str(ROOT / DEMO_SPEC))
    assert set(spec.named_workflows) == set(WORKFLOWS) and not spec.has_defaults
    assert spec.thresholds == load_spec(str(SPEC)).thresholds  # the same thresholds as the shipped spec
    text = (ROOT / DEMO_RULES_DIR / RULES_FILE).read_text()
    for wf in WORKFLOWS:  # a spec that still lists per-workflow SLOs generates what it always did
        assert f'absent(flowscope_workflow_runs_total{{workflow="{wf}"}})' in text
    assert "max_over_time" not in text


def _mixed_spec(tmp_path):
    """Defaults of both types, named SLOs replacing them for some workflows, names PromQL must escape."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "apiVersion": "flowscope/v1", "kind": "AlertSpec",
        "default_slos": [{"type": "latency", "objective": "95%", "threshold": "1s", "min_events": 5},
                         {"type": "availability", "objective": "99%", "min_events": 5}],
        "slos": [{"workflow": "GET /users/{id}", "type": "availability", "objective": "99.5%"},
                 {"workflow": 'odd"name\\x|y.*', "type": "latency", "objective": "99%", "threshold": "2.5s"},
                 {"workflow": "checkout", "type": "availability", "objective": "99.9%", "min_events": 3}]}))
    return spec


def test_defaults_and_named_slos_together_pass_promtool_and_never_overlap(tmp_path, cli):
    require_binary("promtool")
    spec = _mixed_spec(tmp_path)
    parsed = load_spec(str(spec))
    assert [s.name for s in parsed.slos][:2] == ["default:availability", "default:latency"]
    assert parsed.slos[0].except_workflows == ("GET /users/{id}", "checkout")
    assert parsed.slos[1].except_workflows == ('odd"name\\x|y.*',)
    r = cli("rules", "build", "--spec", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    r = cli("rules", "test", "--spec", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    rules = (tmp_path / "out" / RULES_FILE).read_text()
    # the seen-rule leaves out every named workflow, whatever its SLO type: their absent() covers them
    assert r'max_over_time(flowscope_workflow_runs_total{workflow!~"GET\\ /users/\\{id\\}|checkout|odd' in rules


def test_the_seen_rule_tests_have_teeth(tmp_path):
    """A lookback too short to remember a stopped workflow fails its generated promtool case."""
    require_binary("promtool")
    files = render_all(str(_mixed_spec(tmp_path)))
    (tmp_path / "tests").mkdir()
    (tmp_path / TESTS_FILE).write_text(files[TESTS_FILE])
    (tmp_path / RULES_FILE).write_text(files[RULES_FILE].replace("[6h]))\n", "[1m]))\n"))
    assert files[RULES_FILE] != (tmp_path / RULES_FILE).read_text()
    r = subprocess.run(["promtool", "test", "rules", str(tmp_path / TESTS_FILE)], check=False, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and c.ALERT_WORKFLOW_DATA_ABSENT in (r.stdout + r.stderr)


def test_the_demo_keeps_runs_an_hour_unless_told_otherwise(tmp_path):
    assert load_config(environ={}, base=demo_defaults()).run_retention_s == DEMO_RUN_RETENTION_S == 3600
    assert load_config(environ={"FLOWSCOPE_RUN_RETENTION_S": "60"}, base=demo_defaults()).run_retention_s == 60
    conf = tmp_path / "flowscope.yaml"
    conf.write_text("run_retention_s: 7200\n")
    assert load_config(environ={}, file=str(conf), base=demo_defaults()).run_retention_s == 7200
    assert load_config(environ={}).run_retention_s == 30 * 86400  # without --demo, the default stands


def test_the_generated_cases_pass_for_a_spec_whose_for_is_0s(tmp_path):
    """``defaults.for: 0s`` is a valid spec: every generated case holds for it too (the self alerts' "pending before
    ``for`` has held" case has nothing to be pending in)."""
    from backend.rules.generate import rule_groups
    from backend.rules.promtool_tests import promtool_tests

    require_binary("promtool")
    spec = parse_spec({"apiVersion": "flowscope/v1", "kind": "AlertSpec", "defaults": {"for": "0s"},
                       "thresholds": [{"layer": "api", "metric": "response_time", "warning": "500ms",
                                       "critical": "2000ms"}]})
    (tmp_path / "rules.yml").write_text(to_yaml(rule_groups(spec), "test"))
    (tmp_path / "test.yml").write_text(to_yaml(promtool_tests(spec, "rules.yml"), "test"))
    r = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
