"""More than one HTTP worker process: ``flowscope serve --workers N`` (``FLOWSCOPE_WORKERS``, default the cores).

One **aggregator** and N **HTTP workers**:

- The aggregator is the ``flowscope serve`` process. It keeps everything that must be one per server for the
  metrics Prometheus scrapes to be exactly right: the metric store (its series caps and exemplars), the workflow
  resolver (one trace's spans may reach different workers), the run store's recorder and writer, the Loki pusher,
  the leases and scheduled detection. It binds the listening socket and answers no HTTP itself.
- Each worker is a fresh interpreter (never a fork: the aggregator has threads by then) running the bounded waitress
  server (:mod:`exporter.server`) on the inherited listening socket; the kernel hands each connection to one of
  them. A worker reads, authenticates and **decodes** request bodies, the CPU-heavy part of ingest, then hands the
  decoded records to the aggregator (:class:`AggregatorClient`) and waits for its answer before it answers its
  client: a 200 means the aggregator has counted the spans. ``/metrics`` and ``/api/v1/health`` are answered by the
  aggregator the same way. The backend's reads (runs, errors, pages) go straight to the store from the worker.
- The channel is a Unix socket in a private directory, one connection per worker thread, authenticated with a
  random key (``multiprocessing.connection``); spans cross it as the run store's writer process sends them
  (:func:`exporter.store.process.encode`: plain tuples, OTLP attributes still as protobuf bytes).
- The aggregator restarts a worker that exits (``flowscope_http_worker_restarts_total``) and stops the workers
  first on SIGTERM, so they finish their requests before the queues they feed are flushed.

Why an aggregator rather than one scrape target per worker or a merging collector: per-worker targets would make
every query ``sum()`` over worker labels that change with each restart, and neither design can keep a series cap
or an exemplar across workers (each worker would cap its own share and choose its own exemplars); a merging
collector (prometheus_client's multiprocess mode) drops exemplars and gauges' meaning. The aggregator keeps today's
single-process semantics exactly, at the cost of one local round trip per request.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from multiprocessing.connection import Client, Connection, Listener
from types import GeneratorType
from typing import TYPE_CHECKING, Any

from . import conventions as c
from .metrics import MetricStore
from .store.process import _import_path, decode, encode

if TYPE_CHECKING:
    from .config import Config
    from .runtime import Exporter

log = logging.getLogger("flowscope.workers")

#: What a worker may call on the aggregator's pipeline (the ingest routes' calls) and exporter (the
#: routes the aggregator answers). Anything else is refused: the channel runs no arbitrary method.
PIPELINE_CALLS = frozenset({"ingest", "ingest_logs", "reject_request", "record_profile", "record_error"})
EXPORTER_CALLS = frozenset({"health_body", "metrics_bytes", "store_error", "closing_now", "worker_config",
                            "worker_ready", "forward"})
#: Seconds a worker may take to start (import, open the store) before the aggregator counts it as failed.
WORKER_START_TIMEOUT_S = 60.0
#: Seconds a worker is given to finish its requests after SIGTERM before it is killed.
WORKER_STOP_TIMEOUT_S = 10.0
#: Longest wait between two restarts of a worker that keeps exiting at once.
MAX_RESTART_BACKOFF_S = 10.0
#: Seconds a worker waits for the aggregator's answer (or for the next frame of a streamed one) before it gives the
#: connection up and answers its client 503: a stuck aggregator must not hold every worker thread for good.
CALL_TIMEOUT_S = 60.0

_ENV_FD, _ENV_ADDRESS, _ENV_KEY, _ENV_INDEX = ("FLOWSCOPE_WORKER_LISTEN_FD", "FLOWSCOPE_WORKER_AGGREGATOR",
                                               "FLOWSCOPE_WORKER_KEY", "FLOWSCOPE_WORKER_INDEX")
_LAZY = (ItemsView, KeysView, ValuesView, GeneratorType, map, filter, zip)


class AggregatorGone(ConnectionError):
    """The aggregator did not answer: the server is stopping (or its aggregator died)."""


# -- the aggregator's side -----------------------------------------------------------------------------------------

class Aggregator:
    """Answers the workers' calls on the aggregator's exporter (see the module docstring)."""

    def __init__(self, ex: Exporter):
        self.ex = ex
        self._dir = tempfile.mkdtemp(prefix="flowscope-agg-")  # mode 0700: only this user may connect
        self.address = os.path.join(self._dir, "aggregator.sock")
        self.key = secrets.token_bytes(32)
        self._listener: Listener | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.calls = 0
        #: pid of each worker that is serving, by index (a restarted worker replaces its entry)
        self.ready: dict[int, int] = {}
        self._ready_changed = threading.Condition()

    def wait_ready(self, n: int, timeout_s: float) -> bool:
        """Wait until ``n`` workers have said they serve; False at the deadline."""
        with self._ready_changed:
            return self._ready_changed.wait_for(lambda: len(self.ready) >= n, timeout_s)

    def start(self) -> Aggregator:
        self._listener = Listener(self.address, family="AF_UNIX", backlog=128, authkey=self.key)
        t = threading.Thread(target=self._accept, name="flowscope-aggregator", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                conn = listener.accept()
            except (OSError, EOFError):
                if self._stop.is_set():
                    return
                continue  # a client that failed authentication or went away while connecting
            except Exception:  # noqa: BLE001 - AuthenticationError and the like: refuse that one, keep serving
                log.warning("refused a connection to the aggregator that did not authenticate")
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="flowscope-aggregator-conn", daemon=True)
            t.start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    return
                try:
                    request = pickle.loads(data)
                    if request[:2] == ("exporter", "metrics_bytes"):  # streamed: no 300 MB body copied whole
                        try:
                            self._stream(conn, self.ex.metrics_body(*request[2]))
                        except OSError:
                            return
                        except Exception:  # past the header no reply fits: closing cuts the answer (the worker
                            log.exception("a streamed answer to a worker failed")  # sees EOF), never a hang
                            return
                        continue
                    reply: tuple[bool, Any] = (True, self.call(*request))
                except OSError:
                    return
                except Exception as e:
                    log.exception("a worker's call failed")
                    reply = (False, f"{type(e).__name__}: {e}")
                try:
                    conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
                except OSError:
                    return

    @staticmethod
    def _stream(conn: Connection, chunks: Iterator[bytes]) -> None:
        """A streamed answer: a header, the chunks as frames of their own, an empty frame to end."""
        conn.send_bytes(pickle.dumps((True, "stream")))
        buf: list[bytes] = []
        size = 0
        for chunk in chunks:
            if not chunk:  # an empty frame is the end: never send one before it (text format's finish() is b"")
                continue
            buf.append(chunk)
            size += len(chunk)
            if size >= 1 << 20:  # frames of about a megabyte: few syscalls, bounded memory
                conn.send_bytes(b"".join(buf))
                buf, size = [], 0
        if size:
            conn.send_bytes(b"".join(buf))
        conn.send_bytes(b"")

    def call(self, target: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        ex = self.ex
        if target == "pipeline" and method in PIPELINE_CALLS:
            if method == "ingest":
                spans, *rest = args
                return ex.pipeline.ingest(decode(spans), *rest, **kwargs)
            return getattr(ex.pipeline, method)(*args, **kwargs)
        if target == "exporter" and method in EXPORTER_CALLS:
            if method == "metrics_bytes":  # not over the channel (streamed by _serve): for callers in-process
                return b"".join(ex.metrics_body(*args))
            if method == "closing_now":
                return ex.closing
            if method == "worker_config":
                return ex.config
            if method == "worker_ready":
                index, pid = args
                with self._ready_changed:
                    self.ready[index] = pid
                    self._ready_changed.notify_all()
                return None
            return getattr(ex, method)(*args, **kwargs)
        raise ValueError(f"{target}.{method} is not a call workers may make")

    def close(self) -> None:
        """Stop answering (after the workers stopped): the accepting thread ends, the socket's directory goes."""
        self._stop.set()
        if self._listener is not None:
            # accept() does not return when its socket closes under it: wake it with a bare connection, never a
            # Client, whose handshake would wait for ever if the thread saw _stop first and accepts no more
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as wake:
                    wake.settimeout(2.0)
                    wake.connect(self.address)
            except OSError:
                pass
            for t in self._threads:
                t.join(2.0)
            try:
                self._listener.close()
            except OSError:
                pass
        shutil.rmtree(self._dir, ignore_errors=True)


class WorkerPool:
    """Starts N worker processes on the listening socket, restarts those that exit, stops them on request."""

    def __init__(self, n: int, sock: socket.socket, aggregator: Aggregator, metrics: MetricStore, main: str):
        """``main``: the Python a worker runs (``python -c main``), which calls :func:`serve_worker` with the app
        factory; the command line passes its own, so this module never imports the backend."""
        self.n = n
        self.main = main
        self.sock = sock
        self.aggregator = aggregator
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = metrics.counter(c.HTTP_WORKER_RESTARTS_TOTAL, "HTTP worker processes that exited and were "
                                        "started again by the aggregator.")
        self.restarts.inc((), 0)
        self._metrics = metrics
        self._failures = [0] * n

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        fd = self.sock.fileno()
        env = {**os.environ, "PYTHONPATH": _import_path(), _ENV_FD: str(fd), _ENV_ADDRESS: self.aggregator.address,
               _ENV_KEY: self.aggregator.key.hex(), _ENV_INDEX: str(i)}
        proc = subprocess.Popen([sys.executable, "-c", self.main], pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                cwd=os.getcwd(), env=env)
        log.info("HTTP worker %d started (pid %d)", i, proc.pid)
        return proc

    def start(self) -> WorkerPool:
        """Start the workers and wait until each serves; raises RuntimeError (having stopped them) if one cannot."""
        for i in range(self.n):
            self._procs[i] = self._spawn(i)
        end = time.monotonic() + WORKER_START_TIMEOUT_S
        while not self.aggregator.wait_ready(self.n, 0.2):
            dead = [(i, code) for i, p in enumerate(self._procs) if p is not None and (code := p.poll()) is not None]
            if dead or time.monotonic() > end:
                self.stop(2.0)
                raise RuntimeError(f"HTTP worker {dead[0][0]} exited with status {dead[0][1]}" if dead else
                                   f"the HTTP workers did not start in {WORKER_START_TIMEOUT_S:g} s")
        self._watcher = threading.Thread(target=self._watch, name="flowscope-workers", daemon=True)
        self._watcher.start()
        return self

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.poll() is None]

    def _watch(self) -> None:
        next_try = [0.0] * self.n
        while not self._stop.wait(0.2):
            now = time.monotonic()
            for i, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None or now < next_try[i]:
                    continue
                if self._stop.is_set():
                    return
                code = proc.returncode
                self._failures[i] += 1
                wait = min(MAX_RESTART_BACKOFF_S, 0.5 * 2 ** min(self._failures[i] - 1, 5))
                next_try[i] = now + wait
                log.warning("HTTP worker %d (pid %d) exited with status %s: starting it again", i, proc.pid, code)
                try:
                    self._procs[i] = self._spawn(i)
                except (OSError, ValueError) as e:  # fork refused (EAGAIN, ENOMEM), the directory gone: not the end
                    log.error("HTTP worker %d could not be started: %s; trying again in %g s", i, e, wait)
                    continue
                with self._metrics.lock:
                    self.restarts.inc(())

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> bool:
        """SIGTERM every worker (each stops accepting and finishes its requests), wait, kill what is left."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(2.0)
        procs = [p for p in self._procs if p is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout_s
        clean = True
        for p in procs:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("HTTP worker pid %d did not stop in %g s: killed", p.pid, timeout_s)
                p.kill()
                p.wait(5)
                clean = False
        return clean


# -- the worker's side ---------------------------------------------------------------------------------------------

class AggregatorClient:
    """A worker's calls to the aggregator: one connection per thread, opened on first use."""

    def __init__(self, address: str, key: bytes):
        self.address, self.key = address, key
        self._local = threading.local()

    def _recv(self, conn: Connection, what: str) -> bytes:
        if not conn.poll(CALL_TIMEOUT_S):
            raise TimeoutError(f"no answer to {what} in {CALL_TIMEOUT_S:g} s")
        return conn.recv_bytes()

    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = Client(self.address, family="AF_UNIX", authkey=self.key)
            except OSError as e:
                raise AggregatorGone(f"the aggregator does not answer: {e}") from None
            self._local.conn = conn
        return conn

    def stream(self, target: str, method: str, *args: Any) -> Iterator[bytes]:
        """A streamed answer's chunks. A caller that stops early costs this thread its connection (the rest of
        the answer is still on it), so the next call opens a new one."""
        conn = self._conn()
        done = False
        try:
            conn.send_bytes(pickle.dumps((target, method, args, {}), protocol=pickle.HIGHEST_PROTOCOL))
            ok, result = pickle.loads(self._recv(conn, method))
            if not ok:
                done = True
                raise RuntimeError(f"the aggregator failed {target}.{method}: {result}")
            while chunk := self._recv(conn, method):
                yield chunk
            done = True
        except (EOFError, OSError) as e:  # TimeoutError is an OSError
            raise AggregatorGone(f"the aggregator does not answer: {e or type(e).__name__}") from None
        finally:
            if not done:
                self._local.conn = None
                conn.close()

    def call(self, target: str, method: str, *args: Any, **kwargs: Any) -> Any:
        args = tuple(list(a) if isinstance(a, _LAZY) else a for a in args)
        data = pickle.dumps((target, method, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        conn = self._conn()
        try:
            conn.send_bytes(data)
            ok, result = pickle.loads(self._recv(conn, method))
        except (EOFError, OSError) as e:  # TimeoutError is an OSError: the late answer must not meet the next call
            self._local.conn = None
            conn.close()
            raise AggregatorGone(f"the aggregator does not answer: {e or type(e).__name__}") from None
        if not ok:
            raise RuntimeError(f"the aggregator failed {target}.{method}: {result}")
        return result


class PipelineProxy:
    """The aggregator's pipeline as the ingest routes call it, from a worker."""

    def __init__(self, client: AggregatorClient):
        self._client = client

    def ingest(self, spans: list[Any], fmt: str, rejected: Any = (), truncated: int = 0) -> None:
        data, _kept, bad = encode(spans)
        counts = list(rejected)
        if bad:  # spans that cannot cross (the writer process would refuse them the same way): counted, not lost
            counts.append(("unencodable", len(bad)))
        self._client.call("pipeline", "ingest", data, fmt, counts, truncated)

    def __getattr__(self, method: str) -> Any:
        if method not in PIPELINE_CALLS:
            raise AttributeError(method)
        return lambda *args, **kwargs: self._client.call("pipeline", method, *args, **kwargs)


class WorkerExporter:
    """What a worker's app sees as its exporter: the aggregator's pipeline, metrics and health through the channel,
    the store's reads on the worker's own engine. Duck-types the parts of :class:`~exporter.runtime.Exporter` the
    routes and :func:`backend.app.create_app` use."""

    def __init__(self, config: Config, client: AggregatorClient):
        from prometheus_client import CollectorRegistry

        from .db import make_engine, probe
        from .lease import Leases
        from .redact import Redactor
        from .store import RunStore

        self.config = config
        self.client = client
        self.pipeline = PipelineProxy(client)
        self.db = make_engine(config.database_url)
        self._probe = lambda: probe(self.db)
        self.runs = RunStore(self.db, Redactor(config.redact_keys), config.state_max_bytes) \
            if config.run_store else None
        #: The worker's own: what the backend's views record here (detection outcomes of a manual run) is not
        #: scraped; the scheduled detection runs in the aggregator.
        self.store = MetricStore(series_limit=config.series_limit, buckets=config.buckets)
        self.registry = CollectorRegistry(auto_describe=True)
        self.leases = Leases(self.db, retry_s=config.lease_retry_s, metrics=self.store)  # never started here
        self.loki = None
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing or self.client.call("exporter", "closing_now")

    def store_error(self) -> str | None:
        return self.client.call("exporter", "store_error")  # type: ignore[no-any-return]

    def health_body(self) -> dict[str, Any]:
        body: dict[str, Any] = self.client.call("exporter", "health_body")
        body["worker"] = {"pid": os.getpid(), "index": int(os.environ.get(_ENV_INDEX, "0"))}
        return body

    def forward(self, fmt: str, body: bytes) -> None:
        """Hand an accepted OTLP body to the aggregator's forward destinations (exporter.forward)."""
        if self.config.forward_destinations:
            self.client.call("exporter", "forward", fmt, body)

    def metrics_body(self, om: bool) -> Iterator[bytes]:
        return self.client.stream("exporter", "metrics_bytes", om)

    def start(self) -> WorkerExporter:
        return self

    def close(self, timeout_s: float = 0.0) -> bool:
        self._closing = True
        self.db.dispose()
        return True


def serve_worker(make_app: Callable[[WorkerExporter], Any]) -> None:
    """A worker process's life: ask the aggregator for the settings, build the app with ``make_app`` (the backend's
    ``create_app``), serve the inherited socket until SIGTERM (then finish the requests in flight) or until the
    aggregator is gone."""
    from .server import ServerLimits, make_server

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the group: the aggregator decides
    index = os.environ.get(_ENV_INDEX, "?")
    client = AggregatorClient(os.environ[_ENV_ADDRESS], bytes.fromhex(os.environ[_ENV_KEY]))
    try:
        cfg: Config = client.call("exporter", "worker_config")
    except AggregatorGone as e:
        print(f"flowscope: HTTP worker {index}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    logging.basicConfig(level=cfg.log_level, format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: "
                                                    "%(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    sock = socket.socket(fileno=int(os.environ[_ENV_FD]))
    wex = WorkerExporter(cfg, client)
    app = make_app(wex)  # its services (detection) are the aggregator's to run: never started here
    app.register_error_handler(AggregatorGone, _unavailable)
    server = make_server(cfg.host, cfg.port, app, ServerLimits.from_config(cfg), sock=sock)
    parent = os.getppid()

    def stop(*_: object) -> None:
        wex._closing = True
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)

    def orphaned() -> None:  # the aggregator died without stopping us: stop rather than serve a dead channel
        while os.getppid() == parent:
            time.sleep(1.0)
        stop()

    threading.Thread(target=orphaned, name="flowscope-orphan-watch", daemon=True).start()
    client.call("exporter", "worker_ready", int(index), os.getpid())
    try:
        server.serve_forever()
    finally:
        wex.close()


def _unavailable(e: AggregatorGone) -> Any:
    from .web import error_response

    return error_response(503, "unavailable", f"{e}; retry", headers={"Retry-After": "1"})


def auto_workers(cores: int | None = None) -> int:
    """``FLOWSCOPE_WORKERS=auto``: the cores left once the aggregator and the run store's writer have one each, and
    one worker (no aggregator: the single-process server) when that leaves fewer than two. Measured on 2 cores
    (``bench/workers.py``), two workers beside an aggregator and a writer ingest about half what one process does:
    four processes share two cores, and a span costs 12.5 µs of CPU across the channel against 6.7 µs in one
    process."""
    n = (cores if cores is not None else (os.cpu_count() or 1)) - 2
    return n if n >= 2 else 1


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The listening socket the workers share (inheritable, so a worker can serve it). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
