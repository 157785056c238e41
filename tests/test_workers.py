"""``flowscope serve --workers 2``: two HTTP worker processes share the socket and this process aggregates, so the
metrics a real Prometheus scrapes are exactly what was sent (no double counting, no loss, one series cap across the
workers, exemplars kept), runs read from either worker, and a worker that dies is started again and counted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from exporter import conventions as c
from tests.conftest import ROOT, wait_until
from tests.otlp_data import request, span

PB = {"Content-Type": "application/x-protobuf"}


class Serve:
    """``flowscope serve --workers 2`` in a subprocess on 127.0.0.1; its log in a file, stopped with SIGTERM."""

    def __init__(self, tmp: Path, env: dict[str, str], *args: str):
        self.log_path = tmp / "serve.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - the process writes it until stop() closes it
        self.proc = subprocess.Popen([sys.executable, "-m", "flowscope.cli", "serve", "--port", "0", "--workers", "2",
                                      "--threads", "4", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # blocks until serve prints where it listens (workers ready), or exits
        if not line.startswith("flowscope serving on http://127.0.0.1:"):
            self.stop()
            raise AssertionError(f"serve did not start: {line!r}\n" + self.log_path.read_text()[-3000:])
        self.url = line.split()[3]

    def worker_pids(self, tries: int = 40) -> set[int]:
        """The worker pids that answered ``tries`` health calls, each on a new connection."""
        return {requests.get(self.url + c.HEALTH_PATH, timeout=10).json()["worker"]["pid"] for _ in range(tries)}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def serve2(tmp_path):
    started: list[Serve] = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}

    def start(**settings: str) -> Serve:
        env = base | {"FLOWSCOPE_DATABASE_URL": f"sqlite:///{tmp_path / 'flowscope.db'}",
                      "FLOWSCOPE_LOG_LEVEL": "INFO"} | {f"FLOWSCOPE_{k.upper()}": v for k, v in settings.items()}
        started.append(Serve(tmp_path, env))
        return started[-1]

    yield start
    for s in started:
        s.stop()


def _post(url: str, spans: list[dict]) -> None:
    # a new connection per request: the kernel hands connections, not requests, to the workers
    r = requests.post(url + c.OTLP_TRACES_PATH, data=request(spans).SerializeToString(), headers=PB, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.servers
def test_two_workers_count_exactly_what_was_sent_under_one_series_cap(serve2, prometheus):
    s = serve2(series_limit="4")
    assert len(s.worker_pids()) == 2  # both workers serve the socket
    now = time.time_ns()
    # 60 traces of a root and two children over 10 workflows, each trace's spans in two requests (children
    # first, as SDKs export them), 8 clients at once: spans of one trace reach both workers
    batches: list[list[dict]] = []
    roots = []
    for i in range(60):
        root = span(f"flow-{i % 10}", kind=2, start=now, duration_ns=30_000_000)
        kids = [span("SELECT orders", trace_id=root["trace_id"], parent=root["span_id"], kind=3,
                     attrs={"db.system": "postgresql"}, start=now),
                span("GET cart", trace_id=root["trace_id"], parent=root["span_id"], kind=3,
                     attrs={"db.system": "redis"}, start=now)]
        batches.append(kids)
        roots.append(root)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda b: _post(s.url, b), batches))
        list(pool.map(lambda r: _post(s.url, [r]), roots))
    sent, runs = 60 * 3, 60

    prom = prometheus([s.url.removeprefix("http://")])
    prom.wait_for(f"sum({c.WORKFLOW_RUNS_TOTAL})", lambda res: res and res[0]["value"][1] == str(runs), timeout=60)
    assert prom.query(f"sum({c.SPANS_RECEIVED_TOTAL})")[0]["value"][1] == str(sent)
    assert prom.query(f"sum({c.STEP_DURATION_SECONDS}_count)")[0]["value"][1] == str(sent)
    # the cap is one cap: 4 workflows keep their own series, the rest share the overflow series
    named = prom.query(f'count({c.WORKFLOW_RUNS_TOTAL}{{workflow!="{c.OVERFLOW}"}})')
    assert named[0]["value"][1] == "4"
    assert prom.query(f"sum({c.SERIES_OVERFLOW_TOTAL})")[0]["value"][1] != "0"
    assert prom.query(f"sum({c.WORKFLOW_NAMES_GUESSED_TOTAL})")[0]["value"][1] == "0"
    assert prom.query(f"sum({c.TRACES_PENDING})")[0]["value"][1] == "0"
    # exemplars survive the channel: an OpenMetrics scrape links latency buckets to traces that were sent
    om = requests.get(s.url + c.METRICS_PATH, headers={"Accept": "application/openmetrics-text"}, timeout=10).text
    linked = {line.split('trace_id="')[1][:32] for line in om.splitlines()
              if line.startswith(c.WORKFLOW_DURATION_SECONDS + "_bucket") and 'trace_id="' in line}
    assert linked and linked <= {r["trace_id"] for r in roots}
    # a run stored by the aggregator reads whole from whichever worker answers
    for root in roots[:3]:
        def whole(tid=root["trace_id"]):
            r = requests.get(s.url + c.RUNS_PATH + "/" + tid, timeout=10)
            return r.status_code == 200 and r.json()["run"]["status"] == "ok" and r.json()
        body = wait_until(whole, timeout=30, what=f"run {root['trace_id']}")
        assert body["run"]["workflow"] == root["name"]


def test_a_worker_that_dies_is_started_again_and_counted_and_sigterm_stops_all(serve2):
    s = serve2()
    pids = s.worker_pids()
    assert len(pids) == 2
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)

    def restarted():
        text = requests.get(s.url + c.METRICS_PATH, timeout=10).text
        line = next((ln for ln in text.splitlines() if ln.startswith(c.HTTP_WORKER_RESTARTS_TOTAL + " ")), "")
        return line and float(line.split()[-1]) == 1
    wait_until(restarted, timeout=30, what="the restart to be counted")
    def replaced():
        pids = s.worker_pids()
        return len(pids) == 2 and victim not in pids and pids
    now = wait_until(replaced, timeout=60, what="a new worker to serve")
    _post(s.url, [span("after-restart", kind=2)])  # and ingest goes on
    assert s.stop() == 0
    for pid in now:  # SIGTERM to the aggregator stops its workers too
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_metrics_answer_that_fails_midway_is_cut_not_hung(make_exporter):
    """/metrics from a worker is streamed from the aggregator. A collector that raises once the stream has begun
    (its header sent) must end the worker's read with an error, as a cut answer, not leave the worker's request
    thread waiting for a frame that never comes (nor yield the error as metrics text); the next call works."""
    import threading

    from exporter.prefork import Aggregator, AggregatorClient, AggregatorGone

    ex = make_exporter()

    class Broken:
        def describe(self) -> list:
            return []

        def collect(self):
            raise RuntimeError("collector broke")

    ex.registry.register(Broken())
    agg = Aggregator(ex).start()
    try:
        client = AggregatorClient(agg.address, agg.key)
        got: dict[str, object] = {}

        def scrape() -> None:
            try:
                got["chunks"] = list(client.stream("exporter", "metrics_bytes", False))
            except AggregatorGone as e:
                got["error"] = e

        t = threading.Thread(target=scrape, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "the worker's read hung"
        assert isinstance(got.get("error"), AggregatorGone), got
        assert client.call("exporter", "closing_now") is False  # a fresh connection serves the next call
    finally:
        agg.close()


def test_a_stuck_aggregator_costs_a_worker_a_503_not_its_threads(make_exporter, monkeypatch):
    """An aggregator that does not answer (stuck in a call) is given up on after CALL_TIMEOUT_S: the call raises
    AggregatorGone (a 503 to the client), and the late answer never reaches the thread's next call."""
    import threading

    from exporter import prefork
    from exporter.prefork import Aggregator, AggregatorClient, AggregatorGone

    ex = make_exporter()
    release = threading.Event()
    real = ex.health_body
    ex.health_body = lambda: (release.wait(30), real())[1]  # stuck until released
    monkeypatch.setattr(prefork, "CALL_TIMEOUT_S", 0.5)
    agg = Aggregator(ex).start()
    try:
        client = AggregatorClient(agg.address, agg.key)
        with pytest.raises(AggregatorGone, match="no answer to health_body"):
            client.call("exporter", "health_body")
        release.set()
        assert client.call("exporter", "closing_now") is False  # not the stuck call's late answer
    finally:
        release.set()
        agg.close()


#: A worker that says it serves, then waits for a signal: what the pool supervises, without an HTTP server.
IDLE_WORKER = ("import os, signal\n"
               "from exporter.prefork import AggregatorClient\n"
               "c = AggregatorClient(os.environ['FLOWSCOPE_WORKER_AGGREGATOR'], "
               "bytes.fromhex(os.environ['FLOWSCOPE_WORKER_KEY']))\n"
               "c.call('exporter', 'worker_ready', int(os.environ['FLOWSCOPE_WORKER_INDEX']), os.getpid())\n"
               "signal.pause()\n")


def test_a_worker_that_cannot_be_started_again_at_once_is_started_later(make_exporter, tmp_path, monkeypatch, caplog):
    """A restart that fails (here the directory the server runs in was removed, as a fork refused for memory would)
    must not end the supervision: the worker is started once it can be, and counted once."""
    import logging

    from exporter.prefork import Aggregator, WorkerPool, listen

    caplog.set_level(logging.INFO, logger="flowscope.workers")
    ex = make_exporter()
    agg = Aggregator(ex).start()
    sock = listen("127.0.0.1", 0)
    gone = tmp_path / "release-1"
    gone.mkdir()
    monkeypatch.chdir(gone)
    pool = WorkerPool(1, sock, agg, ex.store, main=IDLE_WORKER).start()
    try:
        (victim,) = pool.pids()
        gone.rmdir()  # the cwd a new worker would be started in no longer exists
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: "could not be started" in caplog.text, timeout=30, what="the failed restart")
        monkeypatch.chdir(tmp_path)  # the directory is back (a new release)
        wait_until(lambda: agg.ready.get(0) not in (None, victim), timeout=60, what="the worker started again")
        assert ex.store.value(c.HTTP_WORKER_RESTARTS_TOTAL, {}) == 1
    finally:
        pool.stop(5)
        agg.close()
        sock.close()


def test_auto_leaves_a_core_each_to_the_aggregator_and_the_writer():
    from exporter.prefork import auto_workers

    assert [auto_workers(n) for n in (1, 2, 3, 4, 8)] == [1, 1, 1, 2, 6]


def test_a_streamed_answer_whose_last_chunks_are_empty_ends_once(make_exporter):
    """The text format ends with an empty chunk: a stream that flushed a full frame just before it must still end
    with one terminator, so the connection's next call reads its own answer."""
    from exporter.prefork import Aggregator, AggregatorClient

    ex = make_exporter()
    big = b"# HELP x y\n" * ((1 << 20) // 11 + 1)  # one chunk past the frame size: flushed on its own
    ex.metrics_body = lambda om: iter([big, b"", b""])
    agg = Aggregator(ex).start()
    try:
        client = AggregatorClient(agg.address, agg.key)
        assert b"".join(client.stream("exporter", "metrics_bytes", False)) == big
        assert client.call("exporter", "closing_now") is False  # the same connection, in step
    finally:
        agg.close()


def test_close_returns_when_the_accepting_thread_already_saw_the_stop(make_exporter):
    """The race a fresh clone's suite hung on: the accepting thread ends between two accepts, then close() wakes
    it. The wake-up must not wait for an answer that thread will never give."""
    import socket as sock
    import threading

    from exporter.prefork import Aggregator

    agg = Aggregator(make_exporter()).start()
    agg._stop.set()
    with sock.socket(sock.AF_UNIX, sock.SOCK_STREAM) as s:  # the thread wakes, sees the stop, ends
        s.connect(agg.address)
    for t in agg._threads:
        t.join(10)
    closer = threading.Thread(target=agg.close, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "Aggregator.close() hung"
