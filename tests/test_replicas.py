"""Replicas without trace affinity on one PostgreSQL store: a child span whose root reached the other replica is
named after that root through the store (exporter/resolver.py), the metrics summed over the replicas are exactly
what was sent, and a run reads complete from either replica."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from exporter import conventions as c
from tests.conftest import ROOT, wait_until
from tests.otlp_data import request, span

PB = {"Content-Type": "application/x-protobuf"}


def _post(url: str, spans: list[dict]) -> None:
    r = requests.post(url + c.OTLP_TRACES_PATH, data=request(spans).SerializeToString(), headers=PB, timeout=10)
    assert r.status_code == 200, r.text


def _steps(ex, workflow: str) -> dict[str, float]:
    """The exporter's step counts of ``workflow``, by operation."""
    fam = ex.store.get(c.STEP_DURATION_SECONDS)
    with ex.store.lock:
        return {key[3]: sum(s.counts) for key, s in fam.series.items() if key[0] == workflow}


def _workflows_of_stored_spans(ex, trace_id: str) -> dict[str, str]:
    run = ex.runs.get_run(trace_id)
    return {} if run is None else {s.operation: s.workflow for s in run.spans}


def test_a_child_whose_root_went_to_the_other_exporter_is_named_after_it_through_the_store(
        make_exporter, serve, postgres):
    url = postgres.fresh_database()
    # a trace timeout far past the test's waits: rule 3 (a guess, by the child's own name) cannot be what names it
    a = make_exporter(database_url=url, trace_timeout_s=600)
    b = make_exporter(database_url=url, trace_timeout_s=600)
    sa, sb = serve(a), serve(b)
    now = time.time_ns()  # spans from today: the retention sweep keeps them
    root = span("POST /checkout", kind=2, start=now)
    child = span("SELECT orders", trace_id=root["trace_id"], parent=root["span_id"], kind=3,
                 attrs={"db.system": "postgresql"}, start=now)
    _post(sb.url, [child])  # as SDKs do, the child ends (and is exported) first, here to B
    assert b.pipeline.resolver.pending_spans == 1 and _steps(b, "POST /checkout") == {}
    _post(sa.url, [root])  # its root to A, which names the trace by it (rule 2) and stores the run
    assert a.recorder.flush()
    # B's tick asks the shared store for the traces still waiting, and names the child after A's root
    got = wait_until(lambda: _steps(b, "POST /checkout"), what="B to name the child after A's root")
    assert got == {"SELECT orders": 1}
    assert b.pipeline.resolver.named_from_store == 1 and b.pipeline.resolver.pending_spans == 0
    assert b.store.value(c.WORKFLOW_NAMES_GUESSED_TOTAL, {"reason": "timeout"}) == 0
    assert _steps(a, "POST /checkout") == {"POST /checkout": 1}
    assert b.recorder.flush()
    want = {"POST /checkout": "POST /checkout", "SELECT orders": "POST /checkout"}
    assert _workflows_of_stored_spans(a, root["trace_id"]) == want == _workflows_of_stored_spans(b, root["trace_id"])


# -- end to end: two `flowscope serve` processes, one PostgreSQL, a real Prometheus scraping both -----------------


class Serve:
    """``flowscope serve`` in a subprocess on 127.0.0.1; its log in a file, stopped with SIGTERM."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str]):
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - the process writes it until stop() closes it
        self.proc = subprocess.Popen([sys.executable, "-m", "flowscope.cli", "serve", "--port", "0", "--threads", "2"],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # blocks until serve prints where it listens, or exits
        if not line.startswith("flowscope serving on http://127.0.0.1:"):
            self.stop()
            raise AssertionError(f"{name} did not start: {line!r}\n" + self.log_path.read_text()[-3000:])
        self.url = line.split()[3]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture
def replicas(tmp_path, postgres):
    """Start ``flowscope serve`` replicas on one fresh PostgreSQL database; stopped on teardown."""
    started: list[Serve] = []
    url = postgres.fresh_database()
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}

    def start(n: int) -> list[Serve]:
        for i in range(n):
            env = base | {"FLOWSCOPE_DATABASE_URL": url, "FLOWSCOPE_LOG_LEVEL": "WARNING",
                          "FLOWSCOPE_SERVICE_NAME": f"flowscope-{i + 1}",
                          # far past the test's waits: only the shared store can name a child right in time
                          "FLOWSCOPE_TRACE_TIMEOUT_S": "600"}
            started.append(Serve(tmp_path, f"flowscope-{i + 1}", env))
        return started

    yield start
    for s in started:
        s.stop()


def _nodes(tree: list[dict]) -> list[dict]:
    out, work = [], list(tree)
    while work:
        node = work.pop()
        out.append(node)
        work.extend(node["children"])
    return out


@pytest.mark.servers
def test_two_replicas_without_affinity_sum_to_what_was_sent_and_serve_complete_runs(replicas, prometheus):
    a, b = replicas(2)
    n_traces, wf = 20, "e2e_split"
    # each trace: a root and three children; the children split across both replicas, the root to one of them
    to = {a.url: [], b.url: []}
    roots = {a.url: [], b.url: []}
    now = time.time_ns()  # spans from today: the retention sweep keeps them
    for i in range(n_traces):
        root = span(wf, kind=2, start=now, duration_ns=50_000_000)
        tid, rid = root["trace_id"], root["span_id"]
        kids = [span("SELECT orders", trace_id=tid, parent=rid, kind=3, attrs={"db.system": "postgresql"}, start=now),
                span("GET cart", trace_id=tid, parent=rid, kind=3, attrs={"db.system": "redis"}, start=now),
                span("charge", trace_id=tid, parent=rid, start=now)]
        home, away = (a.url, b.url) if i % 2 == 0 else (b.url, a.url)
        to[away] += kids[:2]
        to[home] += kids[2:]
        roots[home].append(root)
    for url, spans in to.items():  # children first, as SDKs export them; then the roots
        _post(url, spans)
    for url, spans in roots.items():
        _post(url, spans)
    sent = n_traces * 4

    prom = prometheus([a.url.removeprefix("http://"), b.url.removeprefix("http://")])
    prom.wait_for('count(up{job="flowscope"} == 1)', lambda res: res and res[0]["value"][1] == "2")
    steps = f'sum({c.STEP_DURATION_SECONDS}_count{{workflow="{wf}"}})'
    prom.wait_for(steps, lambda res: res and res[0]["value"][1] == str(sent), timeout=60)
    by_replica = prom.query(f'sum by (instance) ({c.STEP_DURATION_SECONDS}_count{{workflow="{wf}"}})')
    assert len(by_replica) == 2 and all(float(r["value"][1]) > 0 for r in by_replica)  # both did part of it
    # exactly what was sent: every span counted once, by one replica, under its root's workflow, none guessed
    assert prom.query(f"sum({c.SPANS_RECEIVED_TOTAL})")[0]["value"][1] == str(sent)
    assert prom.query(f'sum({c.WORKFLOW_RUNS_TOTAL}{{workflow="{wf}"}})')[0]["value"][1] == str(n_traces)
    others = prom.query(f'sum({c.STEP_DURATION_SECONDS}_count{{workflow!="{wf}"}}) or vector(0)')
    assert others[0]["value"][1] == "0"
    assert prom.query(f"sum({c.WORKFLOW_NAMES_GUESSED_TOTAL})")[0]["value"][1] == "0"
    assert prom.query(f"sum({c.TRACES_PENDING})")[0]["value"][1] == "0"

    def complete(url: str, trace_id: str) -> list[dict] | None:
        r = requests.get(url + c.RUNS_PATH + "/" + trace_id, timeout=10)
        if r.status_code != 200:
            return None
        body = r.json()
        spans = _nodes(body["tree"])
        return spans if body["run"]["status"] == "ok" and len(spans) == 4 else None

    for spans in roots.values():
        for root in spans:
            for url in (a.url, b.url):  # the same run, whole, from either replica
                got = wait_until(lambda u=url, t=root["trace_id"]: complete(u, t), timeout=60,
                                 what=f"run {root['trace_id']} complete on {url}")
                assert {s["workflow"] for s in got} == {wf}
                assert sorted(s["operation"] for s in got) == sorted([wf, "SELECT orders", "GET cart", "charge"])
