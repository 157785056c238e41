"""The whole alerting chain on real servers, all on 127.0.0.1:

exporter (fed traffic) → Prometheus (scrapes, evaluates the generated rules) →
Alertmanager (routes with the generated config) → the backend's webhook (records).
"""

import threading
import time
import uuid

import orjson
import pytest
import requests

from backend.rules.alertmanager import alertmanager_config
from backend.rules.generate import rule_groups, to_yaml
from backend.rules.spec import parse_spec
from exporter import conventions as c
from tests.conftest import wait_until
from tests.fake_loki import FakeLoki

pytestmark = pytest.mark.servers


def _spec(webhook_url: str):
    # The production thresholds, with windows short enough for a test: 10s rates (ten scrapes: a stall of a few
    # seconds in the traffic does not resolve the alert early), 1s `for`. Recovery takes about one window.
    return parse_spec({
        "apiVersion": "flowscope/v1", "kind": "AlertSpec",
        "defaults": {"for": "1s", "rate_window": "10s"},
        "thresholds": [{"layer": "api", "metric": "response_time", "warning": "500ms", "critical": "2000ms"}],
        "slos": [{"workflow": "checkout", "type": "availability", "objective": "99.5%", "min_events": 5}],
        "routing": {"webhook_url": webhook_url, "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"},
    })


class Traffic:
    """Posts checkout runs every 200 ms: slow and failing, or fast and healthy."""

    def __init__(self, url: str):
        self.url = url + c.NATIVE_SPANS_PATH
        self.slow = True
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _batch(self) -> dict:
        now = time.time()
        steps, runs = [], []
        for _ in range(5):
            cid = uuid.uuid4().hex
            api_ms = 3000 if self.slow else 40
            steps.append({"correlation_id": cid, "workflow_type": "checkout", "layer": "api",
                          "component": "order-service", "operation": "POST /api/checkout",
                          "status": "error" if self.slow else "ok", "started_at": now - api_ms / 1000,
                          "duration_ms": api_ms})
            runs.append({"correlation_id": cid, "workflow_type": "checkout", "status": "failed" if self.slow else "ok",
                         "started_at": now - api_ms / 1000, "duration_ms": api_ms + 5})
        return {"steps": steps, "workflows": runs}

    def _run(self):
        s = requests.Session()
        while not self.stop.wait(0.2):
            s.post(self.url, data=orjson.dumps(self._batch()), headers={"Content-Type": "application/json"},
                   timeout=5).raise_for_status()


def _wait(pred, what: str, timeout: float = 60.0):
    return wait_until(pred, timeout=timeout, what=what, interval=0.25)


def _chain(srv, prometheus, alertmanager, tmp_path):
    """Prometheus scraping ``srv`` with the generated rules, and Alertmanager routing to its webhook; returns
    ``(alerts, firing)``: the webhook's record, all or by status, and the firing alerts of one name and labels."""
    spec = _spec(srv.url + c.ALERTS_WEBHOOK_PATH)
    rules = tmp_path / "rules.yml"
    rules.write_text(to_yaml(rule_groups(spec), "test"))
    am = alertmanager(to_yaml(alertmanager_config(spec.routing), "test"))
    prom = prometheus([srv.url.removeprefix("http://")], rule_files=[str(rules)],
                      extra_config=f"alerting:\n  alertmanagers:\n    - static_configs:\n"
                                   f"        - targets: ['127.0.0.1:{am.port}']\n")
    prom.wait_for('up{job="flowscope"}', lambda r: r and r[0]["value"][1] == "1")

    def alerts(**q):
        return requests.get(srv.url + c.ALERTS_PATH, params=q, timeout=5).json()["alerts"]

    def firing(name, **labels):
        return [a for a in alerts(status="firing") if a["alertname"] == name
                and all(a["labels"].get(k) == v for k, v in labels.items())]
    return alerts, firing


def test_threshold_and_slo_alerts_reach_the_webhook_and_resolve(ex, serve, prometheus, alertmanager, tmp_path):
    srv = serve(ex)
    alerts, firing = _chain(srv, prometheus, alertmanager, tmp_path)
    traffic = Traffic(srv.url)
    breach = time.monotonic()
    traffic.thread.start()
    try:
        (latency,) = _wait(lambda: firing(c.ALERT_STEP_LATENCY_HIGH, severity="critical"), "the latency alert")
        breach_to_webhook = time.monotonic() - breach
        assert latency["labels"]["workflow"] == "checkout" and latency["labels"]["layer"] == "api"
        assert latency["receiver"] == "flowscope-critical"
        assert latency["annotations"]["dashboard_url"].endswith("var-layer=api&var-workflow=checkout")
        slo = _wait(lambda: firing(c.ALERT_SLO_BURN_RATE, slo="checkout-availability", burn="page"),
                    "the SLO page")
        assert slo[0]["severity"] == "critical" and slo[0]["workflow"] == "checkout"

        traffic.slow = False  # recovery: fast, healthy checkouts
        recovered = time.monotonic()
        _wait(lambda: [a for a in alerts(status="resolved", severity="critical")
                       if a["alertname"] == c.ALERT_STEP_LATENCY_HIGH], "the latency alert to resolve", timeout=90)
        recovery_to_resolved = time.monotonic() - recovered
    finally:
        traffic.stop.set()
        traffic.thread.join(5)
    (resolved,) = [a for a in alerts(severity="critical") if a["alertname"] == c.ALERT_STEP_LATENCY_HIGH]
    assert [h["status"] for h in resolved["history"]] == ["firing", "resolved"]
    print(f"\nbreach -> webhook: {breach_to_webhook:.1f}s; recovery -> resolved: {recovery_to_resolved:.1f}s")


def test_flowscope_losing_log_lines_reaches_the_webhook(make_exporter, serve, prometheus, alertmanager, tmp_path):
    """Loki refusing every line, as its distributor refuses entries past its limits: each push's lines are dropped
    and counted, and the self-monitoring alert goes from the real Prometheus through the real Alertmanager to the
    webhook, naming the process and the reason."""
    loki = FakeLoki(refuse=lambda line: "line too long")
    ex = make_exporter(loki_url=loki.url, loki_batch_wait_s=0.2)
    srv = serve(ex)
    _, firing = _chain(srv, prometheus, alertmanager, tmp_path)
    traffic = Traffic(srv.url)
    traffic.slow = False  # healthy checkouts: only the log lines are lost
    traffic.thread.start()
    try:
        (lost,) = _wait(lambda: firing(c.ALERT_LOKI_DROPPING), "the Loki alert")
    finally:
        traffic.stop.set()
        traffic.thread.join(5)
        ex.close()  # before Loki goes: its last lines are refused, not retried against a closed port
        loki.stop()
    assert lost["labels"]["instance"] == srv.url.removeprefix("http://")
    # the lines Loki refused while up (its 400 names each): poison, as the exporter's counter says
    assert lost["labels"]["reason"] == "poison" and lost["severity"] == "warning"
    assert loki.accepted == [] and loki.attempts
