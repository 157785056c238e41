"""Fixtures: a fresh exporter per test, the Flask app on it, a real server on 127.0.0.1, and real Prometheus."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from backend.app import create_app
from exporter.config import load_config
from exporter.runtime import build

IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout: float = 30.0, what: str = "the condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy, and return that; fail after ``timeout`` seconds.

    The timeout is a bound for a broken run, never the expected wait: a passing test returns as soon as the
    condition holds, so a loaded machine only makes it slower, not red."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {got!r}")
        time.sleep(interval)


@dataclass
class CliResult:
    """What a ``flowscope`` command did, shaped like ``subprocess.run``'s result."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``flowscope ARGS`` in this process: ``flowscope.cli.main`` with its output captured.

    A subprocess costs an interpreter start and the imports (0.1-0.6 s on an idle machine, seconds on a busy one)
    and checks nothing more, unless the test is about the process itself (signals, a broken pipe, a real
    ``serve``, replicas, stdin at a terminal): those keep one.
    ``cwd`` is where the command runs (the repository by default, as the relative spec paths expect)."""
    from flowscope.cli import main

    def run(*args: str, cwd: Path = ROOT) -> CliResult:
        monkeypatch.chdir(cwd)
        capsys.readouterr()  # drop what the test printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help exits 0, a usage error 2
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_exporter(tmp_path):
    made = []

    def factory(**settings):
        settings.setdefault("database_url", f"sqlite:///{tmp_path}/flowscope-{len(made)}.db")
        # a writer process per test would cost the suite a second each: tests/test_writer_process.py covers it
        settings.setdefault("store_writer", "thread")
        ex = build(load_config(settings, environ={}))
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.close()


@pytest.fixture
def ex(make_exporter):
    return make_exporter()


@pytest.fixture
def client(ex):
    return create_app(ex).test_client()


class LiveServer:
    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # shutdown() returns when the loop next wakes: every 50 ms, not the default 500 ms each test paid
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def serve():
    servers = []

    def start(exporter) -> LiveServer:
        s = LiveServer(create_app(exporter))
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (scripts/bootstrap installs it from Debian)"
        if IN_CI:
            pytest.fail(msg)  # under CI a server test must run, never skip
        pytest.skip(msg)
    return path


class _Process:
    """A real server binary on 127.0.0.1, waited on until ``/-/ready``, stopped on teardown."""

    name = ""

    def _start(self, tmp: Path, argv: list[str]) -> None:
        self.log_path = tmp / f"{self.name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - the process writes it until stop() closes it
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready:\n" + self.log_path.read_text()[-3000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Prometheus(_Process):
    """A real Prometheus process on 127.0.0.1 with its own config and data dir."""

    name = "prometheus"

    def __init__(self, tmp: Path, targets: list[str], rule_files: list[str] = (), interval: str = "1s",
                 extra_config: str = ""):
        self.binary = require_binary("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "prometheus.yml"
        rules = "".join(f"\n  - {r}" for r in rule_files)
        cfg.write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            + (f"rule_files:{rules}\n" if rule_files else "")
            + "scrape_configs:\n  - job_name: flowscope\n    static_configs:\n"
            + f"      - targets: [{', '.join(repr(t) for t in targets)}]\n" + extra_config)
        self._start(tmp, [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'data'}",
                          f"--web.listen-address=127.0.0.1:{self.port}", "--enable-feature=exemplar-storage",
                          "--rules.alert.resend-delay=1s"])

    def query(self, q: str) -> list:
        r = requests.get(self.url + "/api/v1/query", params={"query": q}, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def wait_for(self, q: str, predicate, timeout: float = 30.0):
        """Poll a query until predicate(result) holds; bounded in time."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.query(q)
            if predicate(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting on {q!r}; last result {last!r}")

    def wait_for_scrape(self, after: float, job: str = "flowscope", timeout: float = 30.0) -> float:
        """Wait until Prometheus has scraped ``job`` at a time after ``after`` (epoch seconds), so that scrape saw
        everything the target held at ``after``; returns the scrape's timestamp."""
        def scraped() -> float | None:
            res = self.query(f'timestamp(up{{job="{job}"}})')
            last = float(res[0]["value"][1]) if res else 0.0
            return last if last > after else None

        return wait_until(scraped, timeout=timeout, what=f"a scrape of {job} after {after}", interval=0.1)


@pytest.fixture
def prometheus(tmp_path):
    started = []

    def start(targets, **kw) -> Prometheus:
        p = Prometheus(tmp_path, targets, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


class Alertmanager(_Process):
    """A real Alertmanager (Debian's prometheus-alertmanager) on 127.0.0.1, no clustering."""

    name = "alertmanager"

    def __init__(self, tmp: Path, config_text: str):
        self.binary = require_binary("prometheus-alertmanager")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "alertmanager.yml"
        cfg.write_text(config_text)
        self._start(tmp, [self.binary, f"--config.file={cfg}", f"--storage.path={tmp / 'am-data'}",
                          f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="])


@pytest.fixture
def alertmanager(tmp_path):
    started = []

    def start(config_text: str) -> Alertmanager:
        a = Alertmanager(tmp_path, config_text)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


class Postgres(_Process):
    """A real PostgreSQL server (Debian's ``postgresql``) on 127.0.0.1 with its own data dir, for the session.

    PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` user
    the Debian package creates.
    """

    def __init__(self):
        import glob
        import pwd
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not found:
            require_binary("postgresql-initdb (Debian package postgresql)")
        bindir = Path(found[-1]).parent
        self.port = free_port()
        # not under pytest's tmp dir: that is private to root, and the server runs as postgres
        self.tmp = tmp = Path(tempfile.mkdtemp(prefix="flowscope-pg-"))
        self.data = tmp / "pgdata"
        self.data.mkdir()
        run_as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(tmp, pw.pw_uid, pw.pw_gid)
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "flowscope",
                                 "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
        self.log = open(tmp / "postgres.log", "wb")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(run_as + [str(bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                                               "-p", str(self.port), "-k", str(self.data), "-c", "fsync=off",
                                               "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.admin_dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    log_tail = (tmp / "postgres.log").read_text()[-3000:]
                    raise RuntimeError("PostgreSQL did not start:\n" + log_tail) from None
                time.sleep(0.2)
        self._n = 0

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://flowscope@127.0.0.1:{self.port}/{db}"

    @property
    def admin_dsn(self) -> str:
        """libpq connection string of the maintenance database (for psycopg directly)."""
        return f"postgresql://flowscope@127.0.0.1:{self.port}/postgres"

    def fresh_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._n += 1
        name = f"t{self._n}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self):
        # SIGINT, PostgreSQL's fast shutdown, to the server itself: signalled, runuser would wait 2 s before passing
        # it on, and SIGTERM's smart shutdown waits for every client to leave
        try:
            os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
            self.proc.wait(10)
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            pass  # not running, or not stopping: _Process.stop terminates it
        super().stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    pg = Postgres()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each store test runs against SQLite and against a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("postgres").fresh_database()
