import base64
import copy
import threading

import pytest

from backend.app import create_app
from backend.ext import current_flowscope
from exporter import conventions as c

WEBHOOK = c.ALERTS_WEBHOOK_PATH


def payload(status="firing", ends="0001-01-01T00:00:00Z", **label_overrides):
    labels = {"alertname": "FlowscopeStepLatencyHigh", "severity": "critical", "workflow": "checkout", "layer": "api",
              **label_overrides}
    return {
        "version": "4", "groupKey": '{}:{alertname="FlowscopeStepLatencyHigh"}', "truncatedAlerts": 0,
        "status": status, "receiver": "flowscope-critical", "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{"status": status, "labels": labels,
                    "annotations": {"summary": "p95 step latency of checkout in the api layer is above 2s"},
                    "startsAt": "2026-11-23T10:00:00.123456789Z", "endsAt": ends,
                    "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "c6c3b2b2d5a0f1e4"}],
    }


def test_alerts_are_recorded_idempotently_and_resolution_is_a_state_change(client):
    r = client.post(WEBHOOK, json=payload())
    assert r.status_code == 200 and r.json == {"received": 1, "created": 1, "updated": 0, "unchanged": 0}
    r = client.post(WEBHOOK, json=payload())  # Alertmanager repeats notifications
    assert r.json == {"received": 1, "created": 0, "updated": 0, "unchanged": 1}
    r = client.post(WEBHOOK, json=payload("resolved", ends="2026-11-23T10:07:00Z"))
    assert r.json["updated"] == 1
    (alert,) = client.get(c.ALERTS_PATH).json["alerts"]
    assert (alert["status"], alert["severity"], alert["workflow"], alert["layer"]) == ("resolved", "critical",
                                                                                      "checkout", "api")
    assert alert["starts_at"] == "2026-11-23T10:00:00.123456Z" and alert["ends_at"] == "2026-11-23T10:07:00Z"
    assert [h["status"] for h in alert["history"]] == ["firing", "resolved"]
    assert alert["annotations"]["summary"].startswith("p95 step latency")


def test_list_filters(client):
    client.post(WEBHOOK, json=payload())
    other = payload(workflow="login", severity="warning")
    other["alerts"][0]["fingerprint"] = "aa"
    client.post(WEBHOOK, json=other)
    def get(**q):
        return [a["workflow"] for a in client.get(c.ALERTS_PATH, query_string=q).json["alerts"]]
    assert sorted(get()) == ["checkout", "login"]
    assert get(severity="warning") == ["login"]
    assert get(workflow="checkout") == ["checkout"]
    assert get(status="resolved") == []
    assert get(since="2000-01-01T00:00:00Z") != [] and get(since="2999-01-01T00:00:00Z") == []
    r = client.get(c.ALERTS_PATH, query_string={"status": "maybe"})
    assert r.status_code == 400 and r.json["error"]["field"] == "status"


def _broken(mutate):
    p = payload()
    mutate(p)
    return p


@pytest.mark.parametrize("body,field", [
    (_broken(lambda p: p.update(version="3")), "version"),
    (_broken(lambda p: p.pop("receiver")), "receiver"),
    (_broken(lambda p: p.update(alerts={})), "alerts"),
    (_broken(lambda p: p["alerts"][0].update(status="pending")), "alerts[0].status"),
    (_broken(lambda p: p["alerts"][0]["labels"].pop("alertname")), "alerts[0].labels.alertname"),
    (_broken(lambda p: p["alerts"][0]["labels"].update(n=1)), "alerts[0].labels"),
    (_broken(lambda p: p["alerts"][0].update(startsAt="yesterday")), "alerts[0].startsAt"),
    (_broken(lambda p: p["alerts"][0].update(fingerprint="not-hex!")), "alerts[0].fingerprint"),
    # the first alert is valid, the second is not: nothing of the notification is stored
    (_broken(lambda p: p["alerts"].append({**copy.deepcopy(p["alerts"][0]), "endsAt": 5})), "alerts[1].endsAt"),
])
def test_malformed_notifications_get_400_naming_the_field_and_change_nothing(client, body, field):
    r = client.post(WEBHOOK, json=body)
    assert r.status_code == 400 and r.json["error"]["field"] == field, r.json
    assert client.get(c.ALERTS_PATH).json["alerts"] == []


def test_not_json_and_wrong_type(client):
    assert client.post(WEBHOOK, data=b"{", content_type="application/json").status_code == 400
    assert client.post(WEBHOOK, data=b"x", content_type="text/plain").status_code == 415


@pytest.mark.parametrize("settings,good,bad", [
    ({"webhook_token": "am-secret"}, "Bearer am-secret", ["Bearer nope", "Basic YW06YW0tc2VjcmV0", ""]),
    ({"webhook_username": "am", "webhook_password": "pw"}, "Basic " + base64.b64encode(b"am:pw").decode(),
     ["Basic " + base64.b64encode(b"am:nope").decode(), "Bearer pw", ""]),
])
def test_webhook_auth_as_alertmanagers_http_config_sends_it(make_exporter, settings, good, bad):
    client = create_app(make_exporter(**settings)).test_client()
    for h in bad:
        r = client.post(WEBHOOK, json=payload(), headers={"Authorization": h} if h else {})
        assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    assert client.get(c.ALERTS_PATH).json["alerts"] == []
    r = client.post(WEBHOOK, json=payload(), headers={"Authorization": good})
    assert r.status_code == 200 and r.json["created"] == 1


# -- issue 9: no webhook input or list filter is a 500 ---------------------------------------------------------------

@pytest.fixture
def db_client(make_exporter, database_url):
    return create_app(make_exporter(database_url=database_url)).test_client()


def test_a_valid_time_past_datetimes_range_is_clamped_not_refused(db_client):
    p = payload(ends="9999-12-31T23:59:59-14:00")
    p["alerts"][0]["startsAt"] = "9999-12-31T23:59:59.999999999-14:00"
    r = db_client.post(WEBHOOK, json=p)
    assert r.status_code == 200 and r.json["created"] == 1, r.data
    (alert,) = db_client.get(c.ALERTS_PATH).json["alerts"]
    assert alert["starts_at"] == alert["ends_at"] == "9999-12-31T23:59:59.999999Z"
    assert db_client.post(WEBHOOK, json=p).json["unchanged"] == 1  # and it is still the same alert


def test_label_values_longer_than_their_column_or_holding_nul_are_stored(db_client):
    long = "w" * 5000
    r = db_client.post(WEBHOOK, json=payload(workflow=long, severity="s" * 300, layer="l\x00" * 40,
                                             alertname="A" * 201, instance="i\x00"))
    assert r.status_code == 200 and r.json["created"] == 1, r.data
    (alert,) = db_client.get(c.ALERTS_PATH).json["alerts"]
    assert alert["labels"]["workflow"] == long and alert["labels"]["instance"] == "i\x00"  # labels kept whole
    assert len(alert["workflow"]) == 200 and alert["workflow"].endswith("…") and len(alert["severity"]) == 50
    assert len(alert["alertname"]) == 200 and "\x00" not in alert["layer"]


def test_a_large_notification_is_a_fixed_handful_of_statements(ex, client):
    from sqlalchemy import event

    store = current_flowscope(client.application).alerts
    statements = []
    me = threading.get_ident()  # the test client runs the request on this thread; the exporter's own threads
    # (its tick's retention sweep, the run store's writer) share the engine and are not the webhook's statements
    event.listen(store.engine, "before_cursor_execute",
                 lambda *a: statements.append(a[2]) if threading.get_ident() == me else None)

    def notify(status: str, n: int):
        p = payload(status)
        first = p["alerts"][0]
        p["alerts"] = [{**first, "status": status, "fingerprint": f"{i:016x}"} for i in range(n)]
        statements.clear()
        r = client.post(WEBHOOK, json=p)
        assert r.status_code == 200, r.data
        return r.json, len(statements)

    body, n_sql = notify("firing", 2000)
    assert body["created"] == 2000 and n_sql <= 12, statements   # was 2 per alert
    body, n_sql = notify("resolved", 2000)
    assert body["updated"] == 2000 and n_sql <= 12
    alerts = client.get(c.ALERTS_PATH, query_string={"limit": 1000}).json["alerts"]
    assert all([h["status"] for h in a["history"]] == ["firing", "resolved"] for a in alerts)


def test_an_alert_repeated_within_one_notification_counts_as_if_sent_one_after_another(client):
    p = payload()
    resolved = {**p["alerts"][0], "status": "resolved", "endsAt": "2026-11-23T10:07:00Z"}
    p["alerts"] += [dict(p["alerts"][0]), resolved, dict(resolved)]
    assert client.post(WEBHOOK, json=p).json == {"received": 4, "created": 1, "updated": 1, "unchanged": 2}
    (alert,) = client.get(c.ALERTS_PATH).json["alerts"]
    assert alert["status"] == "resolved" and [h["status"] for h in alert["history"]] == ["firing", "resolved"]
    assert alert["ends_at"] == "2026-11-23T10:07:00Z"


@pytest.mark.parametrize("query, field", [("since=1e20", "since"), ("since=nan", "since"),
                                          ("since=10000-01-01T00:00:00Z", "since"), ("limit=%C2%B2", "limit"),
                                          ("limit=%D9%A1%D9%A2", "limit"), ("limit=1001", "limit"),
                                          ("workflow=a%00", "workflow"), ("severity=" + "x" * 1001, "severity")])
def test_alert_list_filters_out_of_range_get_400_naming_the_field(client, query, field):
    r = client.get(c.ALERTS_PATH + "?" + query)
    assert r.status_code == 400 and r.json["error"]["field"] == field, r.data
    assert client.get(c.ALERTS_PATH + "?since=9999-12-31T23:59:59Z").json == {"alerts": []}


def test_replicas_receiving_the_same_notifications_at_once_record_each_state_change_once(postgres):
    """Two backends on one PostgreSQL store (replicas, or an Alertmanager HA pair posting to both): the alert, its
    resolution and its history are written once whoever receives what, under the webhook's advisory lock."""
    from backend.alerts import validate
    from backend.store import AlertStore
    from exporter.store.schema import alert_events

    url = postgres.fresh_database()
    stores = [AlertStore(url), AlertStore(url)]
    try:
        for status in ("firing", "resolved"):
            ends = "2026-11-23T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z"
            doc = payload(status=status, ends=ends)
            receiver, incoming = validate(doc)
            barrier = threading.Barrier(8)

            def post(store, receiver=receiver, incoming=incoming, barrier=barrier):
                barrier.wait(10)
                store.record(incoming, receiver)
            threads = [threading.Thread(target=post, args=(stores[i % 2],)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        listed = stores[0].list()
        assert [a["status"] for a in listed] == ["resolved"]
        with stores[1].engine.connect() as conn:
            history = [r.status for r in conn.execute(alert_events.select().order_by(alert_events.c.id))]
        assert history == ["firing", "resolved"]
    finally:
        for s in stores:
            s.close()
