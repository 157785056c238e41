"""What ``flowscope serve`` starts it stops: SIGTERM flushes every queue, and no thread is left behind."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from backend.app import create_app, services
from exporter import conventions as c
from exporter.runtime import Lifecycle, Service
from flowscope.cli import main
from tests.conftest import free_port
from tests.fake_loki import FakeLoki

ROOT = Path(__file__).resolve().parent.parent
N_RUNS = 20
WAIT_S = 30  # upper bound on any wait here; a pass takes a small fraction of it


def _batch(tag: str) -> dict:
    now = time.time()
    runs = [{"correlation_id": f"{tag}-{i}", "workflow_type": "checkout", "status": "success", "started_at": now,
             "duration_ms": 5, "service": "shop"} for i in range(N_RUNS)]
    steps = [{"correlation_id": f"{tag}-{i}", "workflow_type": "checkout", "layer": "database",
              "component": "postgres", "operation": "INSERT orders", "status": "success", "started_at": now,
              "duration_ms": 2, "service": "shop"} for i in range(N_RUNS)]
    return {"workflows": runs, "steps": steps}


def _settings(tmp_path: Path, loki: FakeLoki) -> dict[str, str]:
    # Loki batches wait an hour: every line is still queued when SIGTERM comes, so only the shutdown flush sends it
    return {"FLOWSCOPE_DATABASE_URL": f"sqlite:///{tmp_path}/fs.db", "FLOWSCOPE_LOKI_URL": loki.url,
            "FLOWSCOPE_LOKI_BATCH_WAIT_S": "3600", "FLOWSCOPE_LOG_LEVEL": "WARNING"}


def _feed(url: str, tag: str) -> int:
    """Send the runs, check they are queued for Loki and not sent yet; returns the lines queued."""
    with requests.Session() as s:
        r = s.post(url + c.NATIVE_SPANS_PATH, json=_batch(tag), timeout=10)
        assert r.status_code == 200, r.text
        health = s.get(url + c.HEALTH_PATH, timeout=10).json()
    queued = health["loki"]["queued_lines"]
    assert queued >= N_RUNS, health
    return queued


def _stored_runs(make_exporter, tmp_path: Path, tag: str) -> set[str]:
    ex = make_exporter(database_url=f"sqlite:///{tmp_path}/fs.db")
    rows = create_app(ex).test_client().get(c.RUNS_PATH, query_string={"limit": 1000}).json["runs"]
    return {r["correlation_id"] for r in rows if r["correlation_id"].startswith(tag)}


def _lines(loki: FakeLoki, tag: str) -> set[str]:
    import orjson
    return {orjson.loads(e["line"])["correlation_id"] for e in loki.distinct()
            if orjson.loads(e["line"])["correlation_id"].startswith(tag)}


def test_sigterm_flushes_every_queue_and_exits_0(tmp_path, make_exporter):
    loki = FakeLoki()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")} | _settings(tmp_path, loki)
    p = subprocess.Popen([sys.executable, "-m", "flowscope.cli", "serve", "--port", "0", "--threads", "2"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()  # blocks until the server prints it, or exits
        assert line.startswith("flowscope serving on http://127.0.0.1:"), (line, p.stderr.read() if p.poll() else "")
        queued = _feed(line.split()[3], "sub")
        assert loki.accepted == []  # nothing pushed yet: the lines wait in the queue
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=WAIT_S) == 0
        err = p.stderr.read()
        assert "Traceback" not in err and "not exported" not in err, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        p.stdout.close()
        p.stderr.close()
        loki.stop()
    assert len(loki.distinct()) == queued  # every queued line reached Loki, once
    assert _lines(loki, "sub") == {f"sub-{i}" for i in range(N_RUNS)}
    assert _stored_runs(make_exporter, tmp_path, "sub") == {f"sub-{i}" for i in range(N_RUNS)}


def test_serve_in_process_stops_everything_it_started(tmp_path, make_exporter, monkeypatch):
    """``main(["serve"])`` on this thread; another thread feeds it, then sends this process SIGTERM."""
    loki = FakeLoki()
    for k, v in _settings(tmp_path, loki).items():
        monkeypatch.setenv(k, v)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fed: dict = {}
    before = set(threading.enumerate())
    gc_threshold = gc.get_threshold()

    def feed_then_stop():
        try:
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                try:
                    if requests.get(url + c.HEALTH_PATH, timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    time.sleep(0.05)
            fed["queued"] = _feed(url, "inproc")
            fed["pushed_before"] = len(loki.accepted)
        except Exception as e:  # noqa: BLE001 - whatever failed, the main thread reports it
            fed["error"] = e
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # always: the serving main thread waits for it

    helper = threading.Thread(target=feed_then_stop, name="test-feeder")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        helper.start()
        rc = main(["serve", "--port", str(port), "--threads", "2"])
        helper.join(WAIT_S)
    finally:
        gc.unfreeze()  # serve tunes the collector for a dedicated process; give this one its settings back
        gc.set_threshold(*gc_threshold)
        loki.stop()
    assert "error" not in fed, fed.get("error")
    assert rc == 0 and signal.getsignal(signal.SIGTERM) is previous  # the handler was put back
    left = [t for t in threading.enumerate() if t not in before and t is not helper and t.is_alive()]
    assert left == [], [t.name for t in left]  # no thread serve started is still running
    assert fed["pushed_before"] == 0 and len(loki.distinct()) == fed["queued"]
    assert _stored_runs(make_exporter, tmp_path, "inproc") == {f"inproc-{i}" for i in range(N_RUNS)}


def test_an_app_built_in_a_test_starts_no_thread_and_its_services_stop(make_exporter):
    before = set(threading.enumerate())
    ex = make_exporter(detect_prometheus_url="http://127.0.0.1:9", detect_interval_s=3600)
    app = create_app(ex)
    new = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert "flowscope-detect" not in new  # create_app starts nothing; the owner starts what services() lists
    life = Lifecycle()
    for svc in services(app):
        life.add(svc)
    assert [s.name for s in life.services] == ["detection"]
    life.start()
    assert any(t.name == "flowscope-detect" for t in threading.enumerate())
    assert life.stop(WAIT_S)
    assert not any(t.name == "flowscope-detect" for t in threading.enumerate())
    ex.close()
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == []  # the exporter's own threads (Loki, tick, run store) stopped with it too


def test_lifecycle_starts_in_order_stops_in_reverse_and_unwinds_a_failed_start():
    events = []

    def svc(name, fail=False):
        def start():
            if fail:
                raise RuntimeError(f"{name} cannot start")
            events.append(f"start {name}")

        return Service(name, start, lambda timeout_s: events.append(f"stop {name}"))

    life = Lifecycle()
    for name in ("store", "workers", "http"):
        life.add(svc(name))
    life.start()
    assert life.stop(5) and life.stop(5)  # the second stop has nothing left to stop
    assert events == ["start store", "start workers", "start http", "stop http", "stop workers", "stop store"]
    events.clear()
    broken = Lifecycle()
    for s in (svc("store"), svc("workers"), svc("http", fail=True)):
        broken.add(s)
    with pytest.raises(RuntimeError, match="http cannot start"):
        broken.start()
    assert events == ["start store", "start workers", "stop workers", "stop store"]
    slow = Lifecycle()
    slow.add(Service("stuck", lambda: None, lambda timeout_s: False))  # a service that says it did not finish
    slow.start()
    assert not slow.stop(5)
