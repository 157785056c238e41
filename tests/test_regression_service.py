"""Scheduled detection in the backend: real Prometheus in, gauges, stored findings, annotations and the API out."""

import time

import numpy as np
import pytest

from backend.app import create_app
from backend.ext import current_flowscope
from exporter import conventions as c
from exporter.sdk import PerformanceMonitor
from tests.fake_grafana import FakeGrafana

pytestmark = pytest.mark.servers


@pytest.fixture
def grafana():
    g = FakeGrafana()
    yield g
    g.stop()


def test_detection_run_exposes_gauges_stores_findings_and_annotates_once(make_exporter, serve, prometheus, grafana):
    ex = make_exporter()
    prom = prometheus([serve(ex).url.removeprefix("http://")])
    prom.wait_for('up{job="flowscope"}', lambda r: r and r[0]["value"][1] == "1")
    mon = PerformanceMonitor(ex.meter_provider())
    rng = np.random.default_rng(9)
    for i in range(40):  # the cache hit rate drops from 0.9 to 0.6 halfway through
        mon.record_metric("cache", "redis", "hit_rate", float(rng.normal(0.9 if i < 20 else 0.6, 0.01)))
        time.sleep(0.5)
    backend = make_exporter(detect_prometheus_url=prom.url, detect_since_s=30, detect_step_s=1,
                            grafana_url=grafana.url, grafana_token=grafana.token)
    app = create_app(backend, test_config={"TESTING": True})
    client = app.test_client()
    r = client.post(c.REGRESSIONS_PATH + "/detect")
    assert r.status_code == 200 and r.json["new"] >= 1, r.json
    rows = client.get(c.REGRESSIONS_PATH, query_string={"direction": "regression"}).json["regressions"]
    hit = [x for x in rows if x["labels"].get("query") == "cache hit rate"]
    assert hit and hit[0]["relative_change"] < -0.2 and hit[0]["p_adjusted"] < 0.05 and hit[0]["kind"] == "step"
    metrics = client.get(c.METRICS_PATH).data.decode()
    assert 'flowscope_regression_active{query="cache hit rate"' in metrics and 'direction="regression"} 1' in metrics
    assert len(grafana.annotations) == r.json["new"]
    assert "regression" in grafana.annotations[0]["tags"] and "change_point" in grafana.annotations[0]["tags"]
    again = client.post(c.REGRESSIONS_PATH + "/detect").json
    assert again["new"] == 0 and len(grafana.annotations) == r.json["new"]  # known findings are not re-announced


def test_runs_never_overlap_and_unconfigured_detection_is_a_clear_409(make_exporter):
    app = create_app(make_exporter(), test_config={"TESTING": True})
    r = app.test_client().post(c.REGRESSIONS_PATH + "/detect")
    assert r.status_code == 409 and "FLOWSCOPE_DETECT_PROMETHEUS_URL" in r.json["error"]["message"]
    ex = make_exporter(detect_prometheus_url="http://127.0.0.1:9")
    app = create_app(ex, test_config={"TESTING": True})
    service = current_flowscope(app).regressions
    assert service._run_lock.acquire()
    try:
        r = app.test_client().post(c.REGRESSIONS_PATH + "/detect")
        assert r.status_code == 409 and "already in progress" in r.json["error"]["message"]
    finally:
        service._run_lock.release()
    assert ex.store.value(c.REGRESSION_RUNS_TOTAL, {"outcome": "skipped_overlap"}) == 1
    r = app.test_client().post(c.REGRESSIONS_PATH + "/detect")  # Prometheus unreachable: clear, counted
    assert r.status_code == 409 and "unreachable" in r.json["error"]["message"]
    assert ex.store.value(c.REGRESSION_RUNS_TOTAL, {"outcome": "source_error"}) == 1


def test_a_store_from_before_drifts_gets_the_new_columns_and_keeps_its_findings(make_exporter, tmp_path):
    import sqlalchemy as sa
    url = f"sqlite:///{tmp_path}/old.db"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the regressions table as the first release made it
        conn.exec_driver_sql(
            "CREATE TABLE regressions (id INTEGER PRIMARY KEY, series VARCHAR(500) NOT NULL, labels TEXT NOT NULL, "
            "change_time VARCHAR(40) NOT NULL, detector VARCHAR(40) NOT NULL, direction VARCHAR(20) NOT NULL, "
            "before FLOAT NOT NULL, after FLOAT NOT NULL, relative_change FLOAT NOT NULL, p_value FLOAT NOT NULL, "
            "p_adjusted FLOAT NOT NULL, first_seen DATETIME NOT NULL, last_seen DATETIME NOT NULL)")
        conn.exec_driver_sql(
            "INSERT INTO regressions VALUES (1, 'p95', '{}', '2026-11-01T00:00:00Z', 'change_point', 'regression', "
            "1.0, 1.5, 0.5, 1e-9, 1e-8, '2026-11-01 00:00:00', '2026-11-01 00:00:00')")
    engine.dispose()
    app = create_app(make_exporter(database_url=url), test_config={"TESTING": True})
    (row,) = app.test_client().get(c.REGRESSIONS_PATH).json["regressions"]
    assert (row["series"], row["kind"], row["rate_per_s"], row["relative_change"]) == ("p95", "step", 0.0, 0.5)
