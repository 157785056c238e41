"""Start-up survives its dependencies: an unreachable store is retried then refused in one line, an unwritable
SQLite path is one line, and health and readiness say what is up.

The database "goes away" through :class:`Relay`, a loopback TCP relay in front of the real PostgreSQL that can be
cut and restored, as a restarting server or a network would.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import requests

from backend.app import create_app
from exporter import conventions as c
from exporter.runtime import CachedProbe
from tests.conftest import free_port, wait_until
from tests.fake_loki import FakeLoki

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60  # upper bound on any wait here; a pass takes a fraction of it
NOBODY = "nobody"


class Relay:
    """127.0.0.1:``port`` relayed to 127.0.0.1:``target``. Cut (the start state), it accepts and closes every
    connection and closes the ones it relayed; restored, it relays again."""

    def __init__(self, target: int):
        self.target = target
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.open = threading.Event()
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="test-relay", daemon=True).start()

    def url(self, database_url: str) -> str:
        return database_url.replace(f":{self.target}/", f":{self.port}/")

    def restore(self) -> None:
        self.open.set()

    def cut(self) -> None:
        self.open.clear()
        with self._lock:
            live, self._live = self._live, set()
        for s in live:
            _close(s)

    def close(self) -> None:
        self.cut()
        _close(self.sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return  # closed
            if not self.open.is_set():
                _close(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._live |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), name="test-relay-pump", daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            _close(a)
            _close(b)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or accept on it
    except OSError:
        pass
    s.close()


@pytest.fixture
def relay(postgres):
    """A cut relay to the session's PostgreSQL, and a fresh database's URL through it."""
    r = Relay(postgres.port)
    r.database_url = r.url(postgres.fresh_database())
    yield r
    r.close()


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWSCOPE_")}
    return env | {"FLOWSCOPE_" + k.upper(): v for k, v in settings.items()}


class Serve:
    """``flowscope serve`` in a subprocess; its stderr lines are collected by a thread as they come."""

    def __init__(self, env: dict[str, str], argv: list[str] | None = None, cwd: Path = ROOT):
        argv = argv or [sys.executable, "-m", "flowscope.cli", "serve", "--port", "0", "--threads", "2"]
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line.rstrip("\n"))
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, fragment: str) -> str:
        while True:
            line = self.lines.get(timeout=WAIT_S)
            assert line is not None, f"serve exited without logging {fragment!r}:\n" + "\n".join(self.err)
            if fragment in line:
                return line

    def url(self) -> str:
        line = self.proc.stdout.readline()  # blocks until serve prints where it listens, or exits
        assert line.startswith("flowscope serving on http://127.0.0.1:"), (line, self.err)
        return line.split()[3]

    def finish(self) -> tuple[int, list[str]]:
        rc = self.proc.wait(timeout=WAIT_S)
        self._reader.join(WAIT_S)
        return rc, self.err

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


# -- an unreachable store at start-up --------------------------------------------------------------------


def test_serve_retries_a_closed_postgres_port_then_exits_1_in_one_line_per_attempt():
    port = free_port()  # nothing listens there
    url = f"postgresql://flowscope:hunter2@127.0.0.1:{port}/flowscope"
    serve = Serve(_env(database_url=url, store_connect_timeout_s="2", log_level="INFO"))
    try:
        rc, err = serve.finish()
        out = serve.proc.stdout.read()
    finally:
        serve.stop()
    assert rc == 1, err
    assert out == ""  # it never served
    text = "\n".join(err)
    assert "Traceback" not in text and "hunter2" not in text, text
    attempts = [ln for ln in err if "not reachable (attempt" in ln]
    assert len(attempts) >= 2, text
    for n, line in enumerate(attempts, 1):
        assert f"(attempt {n}):" in line and f"127.0.0.1:{port}/flowscope" in line and "flowscope:****@" in line
        assert "Connection refused" in line and "retrying in" in line and "deadline left" in line
    assert err[-1].startswith("flowscope: store postgresql") and "not reachable after" in err[-1], text
    assert "FLOWSCOPE_STORE_CONNECT_TIMEOUT_S=2" in err[-1] and "Connection refused" in err[-1]
    # every line is one of those: the attempts, and the last one
    assert all(ln in attempts or ln == err[-1] or " INFO " in ln for ln in err), text


def test_serve_waits_for_a_late_postgres_then_serves_and_readiness_follows_the_store(relay):
    serve = Serve(_env(database_url=relay.database_url, store_connect_timeout_s="60", log_level="INFO"))
    try:
        first = serve.wait_for_line("not reachable (attempt 1)")
        assert f"127.0.0.1:{relay.port}/" in first
        relay.restore()  # PostgreSQL is "up" now
        url = serve.url()
        serve.wait_for_line("reachable after")
        with requests.Session() as s:
            r = s.get(url + c.READY_PATH, timeout=10)
            assert r.status_code == 200 and r.json() == {"status": "ready"}
            assert s.get(url + c.HEALTH_PATH, timeout=10).json()["components"]["store"]["state"] == "ok"
            relay.cut()  # the database goes away under a running server

            def not_ready():
                r = s.get(url + c.READY_PATH, timeout=10)
                return (r,) if r.status_code == 503 else None  # a tuple: a 503 Response is falsy

            (r,) = wait_until(not_ready, timeout=WAIT_S, what="readiness to answer 503")
            assert r.headers["Content-Type"] == "application/json" and r.headers["Retry-After"] == "1"
            body = r.json()
            assert body["status"] == "not_ready" and body["error"]["code"] == "store_unreachable"
            assert "does not answer" in body["error"]["message"]
            health = s.get(url + c.HEALTH_PATH, timeout=10)
            assert health.status_code == 200  # alive, though not ready
            assert health.json()["status"] == "down" and health.json()["components"]["store"]["state"] == "down"
            relay.restore()
            wait_until(lambda: s.get(url + c.READY_PATH, timeout=10).status_code == 200, timeout=WAIT_S,
                       what="readiness to answer 200 again")
        serve.proc.send_signal(signal.SIGTERM)
        rc, err = serve.finish()
    finally:
        serve.stop()
    assert rc == 0 and "Traceback" not in "\n".join(err), err


def test_sigterm_while_waiting_for_the_store_exits_0_without_a_traceback():
    port = free_port()
    serve = Serve(_env(database_url=f"postgresql://flowscope@127.0.0.1:{port}/flowscope",
                       store_connect_timeout_s="60", log_level="INFO"))
    try:
        serve.wait_for_line("not reachable (attempt 1)")
        serve.proc.send_signal(signal.SIGTERM)
        rc, err = serve.finish()
    finally:
        serve.stop()
    assert rc == 0 and "Traceback" not in "\n".join(err), err
    assert any("stopped while waiting for the store" in ln for ln in err), err


def test_a_store_that_refuses_for_good_is_not_retried(cli, postgres, monkeypatch, caplog):
    """An unknown database will not appear by waiting: one line at once, not a minute of retries."""
    monkeypatch.setenv("FLOWSCOPE_DATABASE_URL", postgres.url("no_such_database"))
    monkeypatch.setenv("FLOWSCOPE_STORE_CONNECT_TIMEOUT_S", "60")
    caplog.set_level(logging.INFO, logger="flowscope")
    r = cli("serve", "--port", "0")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("flowscope: store postgresql") and 'database "no_such_database" does not exist' \
        in lines[0] and "not retried" in lines[0]
    assert not [rec for rec in caplog.records if "not reachable" in rec.getMessage()]


# -- an unwritable SQLite path ---------------------------------------------------------------------------


def test_a_sqlite_path_under_a_file_is_one_line_naming_it(cli, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "flowscope.db"
    monkeypatch.setenv("FLOWSCOPE_DATABASE_URL", f"sqlite:///{path}")
    r = cli("serve", "--port", "0")
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(path) in lines[0] and "is not a directory" in lines[0] and "FLOWSCOPE_DATABASE_URL" in lines[0]


@pytest.fixture
def shared_dir():
    """A directory other users can enter (pytest's tmp_path is private to its user), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="flowscope-startup-"))
    d.chmod(0o755)
    yield d
    for p in (d, *d.rglob("*")):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


def _unprivileged() -> str | None:
    """Who runs ``serve`` in a permission test: ``nobody`` under root (root may write anywhere), else this user."""
    return NOBODY if os.geteuid() == 0 else None


#: ``flowscope serve`` in a process that drops from root to ``user`` first, as a container's USER runs it. It
#: imports what serve needs while it may still read the interpreter's files (under /root here), then drops.
_AS_USER = """
import os, pwd, sys
import backend.app, exporter.db, exporter.demo, exporter.redact, exporter.runtime, exporter.server, sqlalchemy.exc
from flowscope.cli import main
pw = pwd.getpwnam(sys.argv[1])
os.setgroups([])
os.setgid(pw.pw_gid)
os.setuid(pw.pw_uid)
sys.exit(main(["serve", "--port", "0"]))
"""


def _serve_once(database_url: str, user: str | None) -> tuple[int, list[str]]:
    argv = [sys.executable, "-c", _AS_USER, user] if user else None
    serve = Serve(_env(database_url=database_url, log_level="INFO"), argv=argv)
    try:
        rc, err = serve.finish()
    finally:
        serve.stop()
    return rc, err


@pytest.mark.parametrize("case", ["directory not writable", "directory not creatable", "file read-only"])
def test_an_unwritable_sqlite_path_is_one_line_naming_it(shared_dir, case):
    user = _unprivileged()
    if case == "file read-only":
        store = shared_dir / "data"
        store.mkdir()
        path = store / "flowscope.db"
        path.write_bytes(b"")
        if user is None:
            path.chmod(0o444)
        else:  # the directory is the user's, the file root's
            import pwd
            pw = pwd.getpwnam(user)
            os.chown(store, pw.pw_uid, pw.pw_gid)
            path.chmod(0o644)
        expect = f"the SQLite store {path} is not writable by this user"
    else:
        store = shared_dir / "ro"
        store.mkdir()
        store.chmod(0o555)  # nobody (and root's other users) may enter it, not write in it
        if case == "directory not writable":
            path = store / "flowscope.db"
            expect = f"the directory {store} of the SQLite store {path} is not writable by this user"
        else:
            path = store / "sub" / "flowscope.db"
            expect = f"cannot create the directory {store / 'sub'} for the SQLite store {path}: Permission denied"
    rc, err = _serve_once(f"sqlite:///{path}", user)
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("flowscope: ") and expect in err[0] and "FLOWSCOPE_DATABASE_URL" in err[0], err


# -- health and readiness ----------------------------------------------------------------------------------


def test_health_reports_every_component_and_readiness_answers_200(make_exporter, prometheus):
    loki = FakeLoki()
    prom = prometheus(["127.0.0.1:1"])
    grafana = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    try:
        ex = make_exporter(loki_url=loki.url, detect_prometheus_url=prom.url, grafana_url=grafana)
        client = create_app(ex).test_client()
        r = client.get(c.HEALTH_PATH)
        assert r.status_code == 200
        body = r.json
        comp = body["components"]
        assert set(comp) == {"store", "writer", "loki", "prometheus", "grafana"}
        assert comp["store"]["state"] == "ok" and comp["store"]["url"].startswith("sqlite:///")
        assert comp["writer"]["state"] == "ok" and comp["writer"]["capacity"] > 0
        assert comp["writer"]["queued"] == 0 and comp["writer"]["dropped"] == {}
        assert comp["loki"]["state"] == "ok" and comp["loki"]["url"].startswith(loki.url)
        assert comp["prometheus"]["state"] == "ok" and comp["prometheus"]["error"] is None
        assert comp["grafana"]["state"] == "down" and grafana in comp["grafana"]["error"]
        assert comp["grafana"]["last_error"] == comp["grafana"]["error"] and comp["grafana"]["last_ok_at"] is None
        assert body["status"] == "degraded"  # Grafana is down; the store is up
        r = client.get(c.READY_PATH)
        assert r.status_code == 200 and r.json == {"status": "ready"}
    finally:
        loki.stop()


def test_health_with_nothing_configured_is_ok_and_says_what_is_disabled(make_exporter):
    client = create_app(make_exporter(run_store=False)).test_client()
    body = client.get(c.HEALTH_PATH).json
    assert body["status"] == "ok"
    comp = body["components"]
    assert comp["store"]["state"] == "ok"
    for name, setting in (("writer", "FLOWSCOPE_RUN_STORE"), ("loki", "FLOWSCOPE_LOKI_URL"),
                          ("prometheus", "FLOWSCOPE_DETECT_PROMETHEUS_URL"), ("grafana", "FLOWSCOPE_GRAFANA_URL")):
        assert comp[name]["state"] == "disabled" and setting in comp[name]["reason"], comp[name]


STEP = {"correlation_id": "h-1", "workflow_type": "checkout", "layer": "database", "component": "postgres",
        "operation": "INSERT", "status": "success", "started_at": 1_700_000_000, "duration_ms": 3}
RUN = {"correlation_id": "h-1", "workflow_type": "checkout", "status": "success", "started_at": 1_700_000_000,
       "duration_ms": 5}


def test_an_unreachable_loki_is_down_with_its_last_error(make_exporter):
    ex = make_exporter(loki_url=f"http://127.0.0.1:{free_port()}", loki_batch_wait_s=0.05)
    client = create_app(ex).test_client()
    assert client.post(c.NATIVE_SPANS_PATH, json={"steps": [STEP]}).status_code == 200

    def loki_down():
        comp = client.get(c.HEALTH_PATH).json["components"]["loki"]
        return comp if comp["state"] == "down" else None

    comp = wait_until(loki_down, timeout=WAIT_S, what="the Loki component to be down")
    assert "unreachable" in comp["last_error"] and comp["last_error_at"] and comp["last_ok_at"] is None
    assert client.get(c.READY_PATH).status_code == 200  # Loki is not what readiness waits for
    ex.close(0.5)  # the line can never be pushed: no need to wait out the flush


def test_a_loki_given_up_on_stays_down_until_a_push_is_accepted(make_exporter):
    """The pusher gives up on a batch past its retry deadline (counted as dropped): that is not a success."""
    ex = make_exporter(loki_url=f"http://127.0.0.1:{free_port()}", loki_batch_wait_s=0.05,
                       loki_retry_deadline_s=0.2)
    client = create_app(ex).test_client()
    assert client.post(c.NATIVE_SPANS_PATH, json={"steps": [STEP]}).status_code == 200
    wait_until(lambda: any(v.value for v in ex.store.get(c.LOKI_LINES_DROPPED_TOTAL).series.values()),
               timeout=WAIT_S, what="the line to be given up on")
    comp = client.get(c.HEALTH_PATH).json["components"]["loki"]
    assert comp["state"] == "down" and comp["last_ok_at"] is None, comp
    ex.close(0.5)


def test_the_writer_and_the_store_follow_the_database_out_and_back(make_exporter, relay):
    relay.restore()
    ex = make_exporter(database_url=relay.database_url)
    client = create_app(ex).test_client()
    assert client.get(c.READY_PATH).status_code == 200
    relay.cut()
    assert client.post(c.NATIVE_SPANS_PATH, json={"workflows": [RUN], "steps": [STEP]}).status_code == 200

    def writer_down():
        body = client.get(c.HEALTH_PATH).json
        return body if body["components"]["writer"]["state"] == body["status"] == "down" else None

    body = wait_until(writer_down, timeout=WAIT_S, what="the writer and the store to be down")
    assert body["components"]["store"]["state"] == "down" and body["components"]["writer"]["last_error"]
    (r,) = wait_until(lambda: (r := client.get(c.READY_PATH)).status_code == 503 and (r,), timeout=WAIT_S,
                      what="readiness 503")
    assert r.json["error"]["code"] == "store_unreachable"
    relay.restore()

    def recovered():
        body = client.get(c.HEALTH_PATH).json
        return body if body["components"]["writer"]["state"] == "ok" and body["status"] == "ok" else None

    body = wait_until(recovered, timeout=WAIT_S, what="the writer to write again")
    assert body["components"]["writer"]["last_ok_at"] >= body["components"]["writer"]["last_error_at"]
    assert client.get(c.READY_PATH).status_code == 200
    assert ex.runs is not None and ex.recorder.flush(WAIT_S)
    assert client.get(c.RUNS_PATH + "/h-1").status_code == 200  # what was queued during the outage is stored


def test_readiness_is_503_once_the_exporter_is_closing(make_exporter):
    ex = make_exporter()
    client = create_app(ex).test_client()
    assert client.get(c.READY_PATH).status_code == 200
    ex.close()
    r = client.get(c.READY_PATH)
    assert r.status_code == 503 and r.json["error"]["code"] == "stopping"


def test_a_cached_probe_runs_once_per_ttl_and_never_makes_a_second_caller_wait():
    now = [0.0]
    calls: list[int] = []
    gate = threading.Event()
    answer: list[str | None] = [None]

    def fn():
        calls.append(1)
        if len(calls) > 1:
            gate.wait(WAIT_S)
        return answer[0]

    p = CachedProbe(fn, ttl_s=1.5, clock=lambda: now[0])
    assert [p() for _ in range(100)] == [None] * 100 and len(calls) == 1  # one round trip for 100 health calls
    now[0] = 2.0
    answer[0] = "connection refused"
    t = threading.Thread(target=p)
    t.start()
    wait_until(lambda: len(calls) == 2, what="the second probe to start")
    assert p() is None  # while one thread probes, another gets the last answer at once
    gate.set()
    t.join(WAIT_S)
    assert p() == "connection refused" and p.last_error == "connection refused" and len(calls) == 2
