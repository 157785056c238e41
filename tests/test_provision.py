import logging

import pytest

from backend.dashboards.build import dashboards
from backend.provision import FOLDER_UID, GrafanaConfig, GrafanaProvisioner, ProvisionError
from backend.rules.spec import load_spec
from exporter.retry import RetryPolicy
from tests.fake_grafana import FakeGrafana

SPEC = load_spec("alert_rules/spec/flowscope.yaml")
DASHBOARDS = dashboards(SPEC)
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.02, deadline_s=0.5)


@pytest.fixture
def grafana():
    g = FakeGrafana()
    yield g
    g.stop()


def provisioner(g, token=None, **kw):
    return GrafanaProvisioner(GrafanaConfig(url=g.url, token=token or g.token, retry=FAST, **kw))


def test_first_run_creates_everything_and_second_changes_nothing(grafana, caplog):
    caplog.set_level(logging.DEBUG)
    report = provisioner(grafana).provision(DASHBOARDS)
    assert grafana.errors == []
    assert report["folder"] == "created"
    assert report["datasources"] == {"flowscope-prometheus": "created", "flowscope-loki": "created"}
    assert set(report["dashboards"].values()) == {"created"} and len(report["dashboards"]) == 5
    saved = grafana.dashboards["flowscope-overview"]
    assert saved["meta"]["folderUid"] == FOLDER_UID and saved["meta"]["message"].startswith("flowscope dashboards push")
    prom = grafana.datasources["flowscope-prometheus"]
    assert prom["jsonData"]["exemplarTraceIdDestinations"][0]["name"] == "trace_id"
    loki = grafana.datasources["flowscope-loki"]
    assert loki["jsonData"]["derivedFields"][0]["name"] == "correlation_id"

    writes_before = len(grafana.writes())
    again = provisioner(grafana).provision(DASHBOARDS)
    assert again["folder"] == "unchanged" and set(again["datasources"].values()) == {"unchanged"}
    assert set(again["dashboards"].values()) == {"unchanged"}
    assert len(grafana.writes()) == writes_before  # nothing written the second time
    # the token went only into the Authorization header, never into a body or a log
    assert all(grafana.token not in repr(body) for _, _, body, _ in grafana.requests)
    assert grafana.token not in caplog.text and grafana.token not in repr(report)


def test_a_changed_dashboard_is_updated_with_overwrite(grafana):
    provisioner(grafana).provision(DASHBOARDS)
    changed = {uid: dict(d) for uid, d in DASHBOARDS.items()}
    changed["flowscope-errors"]["description"] = "edited"
    report = provisioner(grafana).provision(changed)
    assert report["dashboards"]["flowscope-errors"] == "updated"
    assert list(report["dashboards"].values()).count("unchanged") == 4
    _method, path, body, _ = [r for r in grafana.requests if r[0] == "POST"][-1]
    assert path == "/api/dashboards/db" and body["overwrite"] is True and body["folderUid"] == FOLDER_UID
    assert grafana.dashboards["flowscope-errors"]["dashboard"]["version"] == 2


def test_a_wrong_token_is_a_clear_error_and_not_retried(grafana):
    with pytest.raises(ProvisionError, match="401 Unauthorized"):
        provisioner(grafana, token="wrong").provision(DASHBOARDS)
    assert len(grafana.requests) == 1


def test_5xx_is_retried_with_backoff_and_counted(grafana):
    grafana.script = [(503, {"message": "unavailable"}), (502, {"message": "bad gateway"})]
    report = provisioner(grafana).provision(DASHBOARDS)
    assert report["retries"] == 2 and report["folder"] == "created"


def test_a_lasting_outage_gives_up_with_a_clear_error(grafana):
    grafana.script = [(500, {"message": "down"})] * 1000
    with pytest.raises(ProvisionError, match="Grafana unavailable \\(HTTP 500\\)"):
        provisioner(grafana).provision(DASHBOARDS)


def test_a_version_conflict_names_the_dashboard(grafana):
    p = provisioner(grafana)
    p.provision({})  # folder and datasources exist now
    # folder, two datasources and the dashboard are looked up normally; the save gets 412
    grafana.script = [None, None, None, None, (412, {"message": "version-mismatch", "status": "version-mismatch"})]
    with pytest.raises(ProvisionError, match="save dashboard flowscope-alerts: Grafana answered 412"):
        p.provision({"flowscope-alerts": DASHBOARDS["flowscope-alerts"]})


def test_cli_push_twice_reports_what_changed(grafana, monkeypatch, capsys):
    import json

    from flowscope.cli import main
    monkeypatch.setenv("FLOWSCOPE_GRAFANA_TOKEN", grafana.token)  # from the environment, not argv
    assert main(["dashboards", "push", "--grafana-url", grafana.url]) == 0
    first = json.loads(capsys.readouterr().out)
    assert set(first["dashboards"].values()) == {"created"}
    assert main(["dashboards", "push", "--grafana-url", grafana.url]) == 0
    second = json.loads(capsys.readouterr().out)
    assert set(second["dashboards"].values()) == {"unchanged"} and second["folder"] == "unchanged"
    monkeypatch.setenv("FLOWSCOPE_GRAFANA_TOKEN", "wrong")
    assert main(["dashboards", "push", "--grafana-url", grafana.url]) == 1
    assert "401 Unauthorized" in capsys.readouterr().err


def test_provision_endpoint(grafana, make_exporter):
    from backend.app import create_app
    client = create_app(make_exporter(grafana_url=grafana.url, grafana_token=grafana.token,
                                      admin_token="adm")).test_client()
    assert client.post("/api/v1/provision/dashboards").status_code == 401
    r = client.post("/api/v1/provision/dashboards", headers={"Authorization": "Bearer adm"})
    assert r.status_code == 200 and r.json["folder"] == "created"
    r = client.post("/api/v1/provision/dashboards", headers={"Authorization": "Bearer adm"})
    assert set(r.json["dashboards"].values()) == {"unchanged"}
    unconfigured = create_app(make_exporter()).test_client()
    r = unconfigured.post("/api/v1/provision/dashboards")  # loopback, no admin token: allowed, but no Grafana
    assert r.status_code == 409 and r.json["error"]["code"] == "grafana_not_configured"
    r = unconfigured.post("/api/v1/provision/dashboards", environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert r.status_code == 403
    for loopback in ("127.0.0.2", "::ffff:127.0.0.1"):  # all of 127.0.0.0/8 is this host
        r = unconfigured.post("/api/v1/provision/dashboards", environ_base={"REMOTE_ADDR": loopback})
        assert r.status_code == 409
    broken = create_app(make_exporter(grafana_url=grafana.url, grafana_token="nope")).test_client()
    r = broken.post("/api/v1/provision/dashboards")
    assert r.status_code == 502 and "401" in r.json["error"]["message"]
