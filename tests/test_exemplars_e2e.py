"""Real Prometheus (Debian's 2.42, exemplar storage on) accepts every exemplar we expose, in order.

Spans arrive out of order in real deployments (batches from many services, OTLP retries): here the
batches of every other second ended seconds before the ones posted just before them, and inside a
batch the spans that share a bucket come newest first. Prometheus's exemplar storage refuses, per
series, an exemplar whose timestamp is not after the last one it stored, and logs "Error on
ingesting out-of-order exemplars". The exporter is scraped live (the ``prometheus`` fixture already
runs with ``--enable-feature=exemplar-storage`` and keeps Prometheus's output in ``log_path``).
"""

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter import conventions as c
from tests.otlp_data import request, span

pytestmark = pytest.mark.servers

WF = "e2e_exemplars"
SEL = f'{{workflow="{WF}",layer="database",component="postgresql",operation="SELECT items",status="ok"}}'
DURATIONS_S = (0.15, 0.2, 0.04, 0.03)  # two spans in the le="0.25" bucket, two in le="0.05"
# 7 s of posts scraped every second: 1 s of on-time batches, then 1 s of batches that ended 4 s ago, ...
POSTS, EVERY_S, PHASE, LATE_S = 28, 0.25, 4, 4.0


def _batch(end_ns: int) -> tuple:
    """One trace: a SERVER root ending at ``end_ns`` and database children, the newest first."""
    root = span(WF, kind=2, attrs={"http.request.method": "GET"}, start=end_ns - 400_000_000,
                duration_ns=400_000_000)
    kids = []
    for k, d in enumerate(DURATIONS_S):
        child_end = end_ns - (k + 1) * 10_000_000
        kids.append(span("SELECT items", trace_id=root["trace_id"], parent=root["span_id"], kind=3,
                         attrs={"db.system": "postgresql"}, start=child_end - int(d * 1e9), duration_ns=int(d * 1e9)))
    return request(kids + [root]), root["trace_id"]


def _exemplar_series(prom) -> list:
    r = requests.get(prom.url + "/api/v1/query_exemplars",
                     params={"query": f"{c.STEP_DURATION_SECONDS}_bucket{SEL}",
                             "start": time.time() - 600, "end": time.time() + 60}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]


def _own_counter(prom, name: str) -> float:
    """A counter from Prometheus's own /metrics (it does not scrape itself here)."""
    text = requests.get(prom.url + "/metrics", timeout=5).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_prometheus_ingests_every_exemplar_when_spans_end_out_of_order(ex, serve, prometheus):
    srv = serve(ex)
    prom = prometheus([srv.url.removeprefix("http://")], interval="1s")
    prom.wait_for('up{job="flowscope"}', lambda res: res and res[0]["value"][1] == "1")

    on_time = set()
    for i in range(POSTS):
        now = time.time_ns()
        is_late = (i // PHASE) % 2 == 1
        body, tid = _batch(now - int(LATE_S * 1e9) if is_late else now)
        if not is_late:
            on_time.add(tid)
        r = requests.post(srv.url + c.OTLP_TRACES_PATH, data=body.SerializeToString(),
                          headers={"Content-Type": "application/x-protobuf"}, timeout=10)
        assert r.status_code == 200, r.text
        time.sleep(EVERY_S)  # pacing: the posts span 7 s of scrapes, on time and late by turns
    prom.wait_for_scrape(prom.wait_for_scrape(time.time()))  # two more scrapes see the last batches

    log = prom.log_path.read_text(errors="replace")
    bad = [line for line in log.splitlines() if "out-of-order exemplar" in line.lower()]
    assert not bad, f"Prometheus refused exemplars ({len(bad)} log lines), first: {bad[0]}"
    assert _own_counter(prom, "prometheus_target_scrapes_exemplar_out_of_order_total") == 0

    series = _exemplar_series(prom)
    les = {s["seriesLabels"]["le"] for s in series}
    assert {"0.25", "0.05"} <= les, series
    for s in series:
        exs = s["exemplars"]
        stamps = [float(e["timestamp"]) for e in exs]
        assert stamps == sorted(stamps)
        # an exemplar is a real span of ours; a late span never displaces the newer one already shown
        assert {e["labels"]["trace_id"] for e in exs} <= on_time, (s["seriesLabels"], exs)
        # and it kept moving forward: Prometheus stored a new one scrape after scrape
        assert len(exs) >= 3, (s["seriesLabels"], exs)
