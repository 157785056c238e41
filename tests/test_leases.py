"""Work that must happen once happens once across replicas: leader leases on PostgreSQL advisory locks
(exporter/lease.py), the retention sweep and scheduled detection under them, failover when the holder's
connection dies, and ``flowscope serve --role``.

Every PostgreSQL test runs against the real server of ``tests/conftest.py``; a holder "dies" the realistic way,
``pg_terminate_backend`` from a third connection, or its process is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import requests

from backend.app import create_app, services
from backend.ext import current_flowscope
from backend.regression.analyze import Finding
from exporter import conventions as c
from exporter.db import make_engine
from exporter.lease import Leases, lock_key
from exporter.metrics import MetricStore
from exporter.model import Span
from tests.conftest import ROOT, free_port, wait_until

WAIT_S = 60  # the bound of every wait: a passing test returns as soon as its condition holds
RETRY_S = 0.25  # lease retry interval in these tests (the default is 5 s)
DAY_NS = 86400 * 10**9


def _held(*exporters, duty: str) -> list[bool]:
    return [ex.leases.lease(duty).held for ex in exporters]


def _pg_locks(url: str) -> dict[int, int]:
    """The advisory locks granted in ``url``'s database, from a connection of the test's own: key -> server pid
    (a bigint key shows as classid, its high 32 bits, and objid, its low ones, with objsubid 1)."""
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT classid::bigint, objid::bigint, pid FROM pg_locks "
                            "WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
        return {int.from_bytes(((hi << 32) | lo).to_bytes(8, "big"), "big", signed=True): pid for hi, lo, pid in rows}


def _terminate(postgres, pid: int) -> None:
    """Kill one server process (a session) as an operator or a failing network would, and wait until it is gone."""
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()[0]


def _seed_old_runs(ex, prefix: str, n: int) -> set[str]:
    """``n`` runs that ended two days ago, stored through ``ex`` (an ingest-only exporter: it never sweeps)."""
    end = time.time_ns() - 2 * DAY_NS
    spans = [Span(trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", workflow="checkout", layer="api",
                  component="svc", operation="op", start_ns=end - 1_000_000, end_ns=end, correlation_id=f"{prefix}-{i}")
             for i in range(n)]
    ex.pipeline.ingest(spans, "native")
    assert ex.recorder.flush(WAIT_S)
    return {s.correlation_id for s in spans}


def _swept(ex) -> float:
    return ex.store.value(c.RUN_STORE_SWEPT_TOTAL) or 0


def _stored(ex, ids: set[str]) -> set[str]:
    return {cid for cid in ids if ex.runs.get_run(cid) is not None}


# -- the lease itself ------------------------------------------------------------------------------------------


def test_two_exporters_on_one_database_hold_each_duty_exactly_once(make_exporter, postgres):
    url = postgres.fresh_database()
    a = make_exporter(database_url=url, lease_retry_s=RETRY_S, detect_prometheus_url="http://127.0.0.1:9")
    b = make_exporter(database_url=url, lease_retry_s=RETRY_S, detect_prometheus_url="http://127.0.0.1:9")
    create_app(a)  # registers the detection duty on A's running keeper, which takes it at once
    wait_until(lambda: a.leases.lease(c.DUTY_DETECTION).held, WAIT_S, "A to take the detection lease")
    create_app(b)
    wait_until(lambda: b.leases.lease(c.DUTY_DETECTION).attempts, WAIT_S, "B to try the detection lease")
    for duty in c.DUTIES:
        assert _held(a, b, duty=duty) == [True, False], duty
        assert a.store.value(c.LEASE_HELD, {c.L_DUTY: duty}) == 1 and b.store.value(c.LEASE_HELD, {c.L_DUTY: duty}) == 0
    # the locks are PostgreSQL's, under the documented keys, held by A's lease connection
    locks = _pg_locks(url)
    assert {k: locks.get(k) for k in map(lock_key, c.DUTIES)} == dict.fromkeys(map(lock_key, c.DUTIES),
                                                                               a.leases.backend_pid)
    health = a.health()["leases"]
    assert health["mode"] == "advisory_lock" and health["duties"][c.DUTY_RETENTION_SWEEP]["held"] is True
    assert health["duties"][c.DUTY_RETENTION_SWEEP]["since"] is not None
    assert b.health()["leases"]["duties"][c.DUTY_DETECTION] == {
        "held": False, "since": None, "lock_key": lock_key(c.DUTY_DETECTION), "taken": 0, "lost": 0}
    # a replica that closes releases its leases: the other takes them at its next try
    a.close()
    wait_until(lambda: all(_held(b, duty=d)[0] for d in c.DUTIES), WAIT_S, "B to take every duty")
    assert set(_pg_locks(url).values()) == {b.leases.backend_pid}


def test_a_holder_whose_connection_is_killed_stops_at_once_and_the_other_takes_over(postgres):
    url = postgres.fresh_database()
    engines = [make_engine(url), make_engine(url)]
    a, b = (Leases(e, retry_s=RETRY_S, metrics=MetricStore()) for e in engines)
    try:
        la, lb = a.lease(c.DUTY_DETECTION), b.lease(c.DUTY_DETECTION)
        a.start()
        b.start()
        assert (la.held, lb.held) == (True, False) and la.confirm() and not lb.confirm()
        _terminate(postgres, a.backend_pid)
        assert not la.confirm()  # the check right before acting finds the session gone: A stops now, not later
        assert la.lost == 1 and a.health()["last_error"]
        wait_until(lambda: lb.held, WAIT_S, "B to take the lease over")
        assert lb.confirm() and not la.held and _pg_locks(url) == {lb.key: b.backend_pid}
        # A keeps trying, and is refused while B holds it; once B stops, A takes it back
        tried = la.attempts
        wait_until(lambda: la.attempts >= tried + 2, WAIT_S, "A to try again")
        assert not la.held and lb.held
        assert b.stop(WAIT_S)
        wait_until(lambda: la.held, WAIT_S, "A to take the lease back")
        assert la.taken == 2 and lb.lost == 0 and _pg_locks(url) == {la.key: a.backend_pid}
    finally:
        assert a.stop(WAIT_S) and b.stop(WAIT_S)
        for e in engines:
            e.dispose()
    assert not any(t.name == "flowscope-leases" and t.is_alive() for t in threading.enumerate())


def test_on_sqlite_every_lease_is_held_without_a_connection(make_exporter):
    ex = make_exporter(detect_prometheus_url="http://127.0.0.1:9")
    app = create_app(ex)
    assert current_flowscope(app).regressions.lease is ex.leases.lease(c.DUTY_DETECTION)
    for duty in c.DUTIES:
        lease = ex.leases.lease(duty)
        assert lease.held and lease.confirm() and ex.store.value(c.LEASE_HELD, {c.L_DUTY: duty}) == 1
    health = app.test_client().get(c.HEALTH_PATH).json
    assert health["role"] == c.ROLE_ALL and health["leases"]["mode"] == "single_process"
    assert health["leases"]["backend_pid"] is None
    assert {d: v["held"] for d, v in health["leases"]["duties"].items()} == dict.fromkeys(c.DUTIES, True)
    assert not any(t.name == "flowscope-leases" for t in threading.enumerate())


# -- the duties under them ---------------------------------------------------------------------------------------


def test_the_sweep_deletes_once_on_the_holder_and_moves_with_the_lease(make_exporter, postgres):
    url = postgres.fresh_database()
    seed = make_exporter(database_url=url, role=c.ROLE_INGEST)  # stores runs, sweeps nothing, holds no lease
    first = _seed_old_runs(seed, "first", 12)
    a = make_exporter(database_url=url, lease_retry_s=RETRY_S, run_retention_s=86400)
    b = make_exporter(database_url=url, lease_retry_s=RETRY_S, run_retention_s=86400)
    assert _held(a, b, duty=c.DUTY_RETENTION_SWEEP) == [True, False] and seed.leases.leases == {}
    wait_until(lambda: _swept(a) == 12, WAIT_S, "A's tick to sweep the first runs")
    assert _stored(a, first) == set()
    # B's tick runs too, but not its sweep: old runs stored now stay while A holds the lease
    second = _seed_old_runs(seed, "second", 5)
    ticks = b.ticks
    wait_until(lambda: b.ticks >= ticks + 2, WAIT_S, "two more ticks of B")
    assert _swept(b) == 0 and _stored(b, second) == second
    # A's lease connection dies: A stops sweeping, B takes the lease and sweeps at its first tick as holder
    _terminate(postgres, a.leases.backend_pid)
    wait_until(lambda: _swept(b) == 5, WAIT_S, "B to take the sweep over")
    assert _stored(b, second) == set() and _swept(a) == 12 and _swept(seed) == 0
    assert a.sweep_lease.lost == 1 and b.sweep_lease.held


@pytest.mark.servers
def test_scheduled_detection_runs_on_one_replica_and_fails_over(make_exporter, postgres, prometheus):
    url = postgres.fresh_database()
    prom = prometheus([])  # a real Prometheus to detect from (an empty one: each run is "ok", with no finding)
    settings = {"database_url": url, "lease_retry_s": RETRY_S, "detect_prometheus_url": prom.url,
                "detect_interval_s": 0.1, "detect_since_s": 60, "detect_step_s": 1}
    a, b = make_exporter(**settings), make_exporter(**settings)
    app_a = create_app(a)
    wait_until(lambda: a.leases.lease(c.DUTY_DETECTION).held, WAIT_S, "A to take the detection lease")
    app_b = create_app(b)
    lives = [services(app_a)[0], services(app_b)[0]]
    for detection in lives:
        detection.start()

    def runs(ex, outcome="ok") -> float:
        return ex.store.value(c.REGRESSION_RUNS_TOTAL, {"outcome": outcome}) or 0

    try:
        wait_until(lambda: runs(a) >= 3 and runs(b, "standby") >= 3, WAIT_S, "three turns on each replica")
        assert runs(b) == 0 and runs(b, "source_error") == 0 and runs(a, "standby") == 0  # A ran them, B waited
        _terminate(postgres, a.leases.backend_pid)
        wait_until(lambda: runs(b) >= 3, WAIT_S, "B to run detection")
        # A's loop is one turn at a time: once it has waited a turn, no run of its own is still going
        wait_until(lambda: runs(a, "standby") >= 1, WAIT_S, "A to wait a turn")
        stopped_at, waited = runs(a), runs(a, "standby")
        wait_until(lambda: runs(a, "standby") >= waited + 3, WAIT_S, "A to wait three more turns")
        assert runs(a) == stopped_at and runs(a, "source_error") == 0  # A runs no more once it lost the lease
        assert not a.leases.lease(c.DUTY_DETECTION).held and b.leases.lease(c.DUTY_DETECTION).held
    finally:
        for detection in lives:
            assert detection.stop(WAIT_S)


def test_a_finding_two_replicas_record_at_once_is_new_and_annotated_in_one_of_them(make_exporter, postgres):
    """Findings are recorded under a transaction advisory lock: two replicas detecting the same change at the same
    moment (one scheduled, one asked through the API) both complete, store it once, and only one of them has it
    new (run_once annotates the new ones). Without the lock, one of them fails on the unique constraint."""
    url = postgres.fresh_database()
    replicas = [current_flowscope(create_app(make_exporter(database_url=url))).regressions for _ in range(2)]
    findings = [Finding(series=f"p95 step {i}", time="2026-11-28T10:00:00Z", before=1.0, after=2.0,
                        ci_before=(0.9, 1.1), ci_after=(1.9, 2.1), relative_change=1.0, p_value=1e-6, p_adjusted=1e-5,
                        detector="change_point", direction="regression", labels={"query": f"p95 step {i}"})
                for i in range(20)]
    barrier = threading.Barrier(2)
    new: list[list] = [[], []]
    errors: list[BaseException] = []

    def record(i: int) -> None:
        barrier.wait(WAIT_S)
        try:
            new[i] = replicas[i]._record(findings)  # what run_once annotates: the findings new to this run
        except Exception as e:  # noqa: BLE001 - without the lock, one run dies on the unique constraint
            errors.append(e)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert errors == []  # both runs completed
    assert sorted(f.series for f in new[0] + new[1]) == sorted(f.series for f in findings)
    assert len(replicas[0].list(limit=100)) == len(findings)


# -- roles ------------------------------------------------------------------------------------------------------


def test_a_backend_replica_refuses_ingest_with_a_json_404_naming_its_role(make_exporter):
    ex = make_exporter(role=c.ROLE_BACKEND)
    client = create_app(ex).test_client()
    for path, kw, fmt in ((c.NATIVE_SPANS_PATH, {"json": {"steps": []}}, "native"),
                          (c.OTLP_TRACES_PATH, {"data": b"", "content_type": "application/x-protobuf"}, "otlp"),
                          (c.PROFILES_PATH + "?workflow=w", {"data": b"a;b 1", "content_type": "text/plain"},
                           "profile")):
        r = client.post(path, **kw)
        assert r.status_code == 404 and r.json["error"]["code"] == "wrong_role", (path, r.json)
        assert "role is backend" in r.json["error"]["message"] and path.split("?")[0] in r.json["error"]["message"]
        assert ex.store.value(c.REQUESTS_REJECTED_TOTAL, {c.L_FORMAT: fmt, c.L_REASON: "wrong_role"}) == 1
    assert client.get(c.RUNS_PATH).status_code == 200  # the backend API, /metrics and health answer
    assert client.get(c.METRICS_PATH).status_code == 200
    assert client.get(c.HEALTH_PATH).json["role"] == c.ROLE_BACKEND
    assert ex.sweep_lease is ex.leases.lease(c.DUTY_RETENTION_SWEEP)  # and it does the scheduled work



def test_a_backend_replica_sweeps_the_store_but_starts_no_writer_process(make_exporter):
    backend = make_exporter(role=c.ROLE_BACKEND, store_writer="process")
    assert backend.recorder is not None and backend.recorder.writer is None  # nothing to write: no process
    assert backend.sweep_lease is not None
    assert make_exporter(role=c.ROLE_ALL, store_writer="process").recorder.writer is not None


def test_an_ingest_replica_takes_spans_and_serves_no_backend_and_no_scheduled_work(make_exporter):
    ex = make_exporter(role=c.ROLE_INGEST, detect_prometheus_url="http://127.0.0.1:9")
    app = create_app(ex)
    client = app.test_client()
    r = client.post(c.NATIVE_SPANS_PATH, json={"steps": [
        {"correlation_id": "c-1", "workflow_type": "checkout", "layer": "api", "component": "svc",
         "operation": "op", "status": "success", "started_at": time.time(), "duration_ms": 2}]})
    assert r.status_code == 200 and r.json["accepted"] == 1, r.json
    for path in (c.RUNS_PATH, c.REGRESSIONS_PATH, c.RUN_PAGE_PATH + "/x", c.OPENAPI_PATH):
        r = client.get(path)
        assert r.status_code == 404 and "role is ingest" in r.json["error"]["message"], (path, r.json)
    assert client.get(c.METRICS_PATH).status_code == 200 and client.get(c.READY_PATH).status_code == 200
    assert services(app) == [] and ex.sweep_lease is None  # no detection schedule, no sweep
    assert client.get(c.HEALTH_PATH).json["leases"]["duties"] == {}


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_role_that_is_not_one_of_the_three_is_a_one_line_configuration_error(cli, monkeypatch, how):
    if how == "argument":
        r = cli("serve", "--role", "leader", "--port", "0")
    else:
        monkeypatch.setenv("FLOWSCOPE_ROLE", "leader")
        r = cli("serve", "--port", "0")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "role" in r.stderr and "ingest, backend, all" in r.stderr, r.stderr
    assert "'leader'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.servers
def test_two_serve_processes_share_the_duties_and_a_killed_holder_hands_them_over(tmp_path, postgres):
    """Two real ``flowscope serve`` processes on one PostgreSQL, one ``--role backend``: each duty is held by
    one of them, the backend one refuses ingest over HTTP, and SIGKILL of the holder moves its duties."""
    url = postgres.fresh_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")} | {
        "FLOWSCOPE_DATABASE_URL": url, "FLOWSCOPE_STORE_WRITER": "thread", "FLOWSCOPE_LEASE_RETRY_S": str(RETRY_S),
        "FLOWSCOPE_DETECT_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}", "FLOWSCOPE_DETECT_INTERVAL_S": "3600"}
    procs, urls = [], []
    try:
        for role in ("all", "backend"):
            log = open(tmp_path / f"{role}.log", "w")  # noqa: SIM115 - closed below
            p = subprocess.Popen([sys.executable, "-m", "flowscope.cli", "serve", "--port", "0", "--role", role],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            procs.append((p, log))
            line = p.stdout.readline()
            assert line.startswith("flowscope serving on http://127.0.0.1:"), (tmp_path / f"{role}.log").read_text()
            urls.append(line.split()[3])

        def duties(u: str) -> dict[str, bool]:
            body = requests.get(u + c.HEALTH_PATH, timeout=10).json()
            return {d: v["held"] for d, v in body["leases"]["duties"].items()}

        first = wait_until(lambda: [duties(u) for u in urls], WAIT_S, "both to report their leases")
        assert first == [dict.fromkeys(c.DUTIES, True), dict.fromkeys(c.DUTIES, False)]  # the first started holds
        r = requests.post(urls[1] + c.NATIVE_SPANS_PATH, json={"steps": []}, timeout=10)
        assert r.status_code == 404 and "role is backend" in r.json()["error"]["message"]
        r = requests.post(urls[0] + c.NATIVE_SPANS_PATH, json={"steps": []}, timeout=10)
        assert r.status_code != 404 and "wrong_role" not in r.text
        procs[0][0].send_signal(signal.SIGKILL)  # the holder dies without a word: PostgreSQL ends its session
        procs[0][0].wait(WAIT_S)
        wait_until(lambda: duties(urls[1]) == dict.fromkeys(c.DUTIES, True), WAIT_S, "the backend to take over")
        procs[1][0].send_signal(signal.SIGTERM)
        assert procs[1][0].wait(WAIT_S) == 0
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            p.stdout.close()
            log.close()
