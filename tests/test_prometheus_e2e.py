"""Real Prometheus (Debian's 2.42) scrapes the real exporter after known spans arrive over OTLP."""

import time

import orjson
import pytest
import requests

from exporter import conventions as c
from tests.conftest import wait_until
from tests.otlp_data import request, span, to_json

pytestmark = pytest.mark.servers

N = 100
SEL = '{workflow="e2e_checkout",layer="database",component="postgresql",operation="SELECT orders",status="ok"}'


def _batch(start_ns, offset):
    """One trace: a SERVER root and N database children, 100..250 ms spread evenly."""
    root = span("e2e_checkout", kind=2, attrs={"http.request.method": "POST"}, start=start_ns,
                duration_ns=300_000_000)
    kids = [span("SELECT orders", trace_id=root["trace_id"], parent=root["span_id"], kind=3,
                 attrs={"db.system": "postgresql"}, start=start_ns,
                 duration_ns=int((0.1 + 0.15 * (i + offset + 0.5) / (2 * N)) * 1e9)) for i in range(0, 2 * N, 2)]
    return request(kids + [root]), root["trace_id"]


def test_prometheus_scrapes_exact_counts_quantiles_and_exemplars(ex, serve, prometheus):
    srv = serve(ex)
    now = time.time_ns()
    pb, tid_pb = _batch(now, 0)
    js, tid_js = _batch(now, 1)
    r = requests.post(srv.url + c.OTLP_TRACES_PATH, data=pb.SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf"}, timeout=10)
    assert r.status_code == 200
    r = requests.post(srv.url + c.OTLP_TRACES_PATH, data=orjson.dumps(to_json(js)),
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200

    prom = prometheus([srv.url.removeprefix("http://")])
    prom.wait_for('up{job="flowscope"}', lambda res: res and res[0]["value"][1] == "1")
    res = prom.wait_for(f"{c.STEP_DURATION_SECONDS}_count{SEL}", lambda res: bool(res))
    assert res[0]["value"][1] == str(2 * N)
    assert prom.query(f'{c.SPANS_RECEIVED_TOTAL}{{format="otlp_protobuf"}}')[0]["value"][1] == str(N + 1)
    assert prom.query(f'{c.SPANS_RECEIVED_TOTAL}{{format="otlp_json"}}')[0]["value"][1] == str(N + 1)
    runs = prom.query(f'{c.WORKFLOW_RUNS_TOTAL}{{workflow="e2e_checkout",status="ok"}}')
    assert runs[0]["value"][1] == "2"

    # 2N durations evenly spread over (0.1, 0.25]: the true p50 is 0.175 and p90 0.235
    for q, true in ((0.5, 0.175), (0.9, 0.235)):
        got = float(prom.query(f"histogram_quantile({q}, {c.STEP_DURATION_SECONDS}_bucket{SEL})")[0]["value"][1])
        assert got == pytest.approx(true, abs=0.005)

    def exemplars():
        r = requests.get(prom.url + "/api/v1/query_exemplars",
                         params={"query": f"{c.STEP_DURATION_SECONDS}_bucket{SEL}",
                                 "start": time.time() - 300, "end": time.time() + 60}, timeout=5)
        r.raise_for_status()
        return [e for series in r.json()["data"] for e in series["exemplars"]]

    ex_list = wait_until(exemplars, timeout=20, what="Prometheus to store an exemplar", interval=0.2)
    assert {e["labels"]["trace_id"] for e in ex_list} <= {tid_pb, tid_js}
    assert all(len(e["labels"]["span_id"]) == 16 and 0.1 < float(e["value"]) <= 0.25 for e in ex_list)
