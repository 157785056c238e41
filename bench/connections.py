"""Health and /metrics latency with 1,000 idle sockets open, under a 1,024 open-files limit (systemd's default).

Issue 9's target: with 1,000 idle sockets against the server, /api/v1/health and /metrics answer in < 100 ms.
Each server runs in its own process with ``RLIMIT_NOFILE`` soft limit 1024; this process opens N sockets that
connect and never send a byte (a slowloris attacker's cheapest move), and keeps them open: any the server
closes is reopened before each measured request, as an attacker would. Then it times 20 health and 20 /metrics
requests, each on a new connection, with a per-request timeout (a timeout counts as a failure).

The baseline, in the same run, is the server ``flowscope serve`` used before: werkzeug's threaded development
server (one thread per connection, no timeouts) on the same application and settings.

    .venv/bin/python bench/connections.py [--idle 1000,1100] [--requests 20] [--nofile 1024] [--timeout 1]
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time

import requests
from common import ROOT, wait_healthy

TARGET_MS = 100.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _werkzeug_child(port: int) -> None:
    """The baseline server: werkzeug's threaded server on the same app, as `flowscope serve` ran it before."""
    from werkzeug.serving import make_server

    from backend.app import create_app
    from exporter.config import load_config
    from exporter.runtime import build
    from flowscope.cli import tune_gc

    ex = build(load_config({"port": port}))
    server = make_server("127.0.0.1", port, create_app(ex), threaded=True)
    tune_gc()
    try:
        server.serve_forever()
    finally:
        ex.close()


def _start(kind: str, port: int, nofile: int, db_dir: str) -> subprocess.Popen:
    env = {**os.environ, "FLOWSCOPE_LOG_LEVEL": "ERROR", "FLOWSCOPE_DATABASE_URL": f"sqlite:///{db_dir}/{kind}.db",
           "PYTHONPATH": str(ROOT)}
    if kind == "flowscope":
        cmd = [sys.executable, "-m", "flowscope", "serve", "--port", str(port)]
    else:
        cmd = [sys.executable, __file__, "--werkzeug-child", str(port)]

    # util-linux's prlimit sets the soft open-files limit systemd gives a service by default (hard unchanged).
    p = subprocess.Popen(["prlimit", f"--nofile={nofile}:", *cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return wait_healthy(p, port, 60, f"{kind} server")


def server_side_established(port: int) -> int:
    """Connections the kernel holds ESTABLISHED on the server's side of ``port`` (accepted or in its backlog).

    Counted from /proc/net/tcp rather than from the client's side: when a backlog overflows, the client's
    connect() succeeds but the server drops the handshake's last ACK, so the client's view overstates.
    """
    hexport = f"{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        return sum(1 for line in f if (fields := line.split())[1].endswith(":" + hexport) and fields[3] == "01")


class IdleSockets:
    """N sockets that connect and never send; ``refill()`` reopens the ones the server closed.

    They are opened in batches of :data:`BATCH`, each given up to 2 s to reach the server, so that a server
    that can accept them all (werkzeug: a thread each) is not credited with a backlog overflow.
    """

    BATCH = 50

    def __init__(self, port: int, n: int):
        self.port, self.socks, self.reopened = port, [], 0
        while len(self.socks) < n:
            before = server_side_established(port)
            batch = min(self.BATCH, n - len(self.socks))
            self.socks += [self._open() for _ in range(batch)]
            end = time.monotonic() + 2
            while time.monotonic() < end and server_side_established(port) < before + batch:
                time.sleep(0.02)

    def _open(self) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, os.strerror(err))
        return s

    def refill(self) -> None:
        poller = select.poll()
        by_fd = {s.fileno(): i for i, s in enumerate(self.socks)}
        for fd in by_fd:
            poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        for fd, _ in poller.poll(0):
            i = by_fd[fd]
            try:
                closed = self.socks[i].recv(1) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                self.socks[i].close()
                self.socks[i] = self._open()
                self.reopened += 1

    def close(self) -> None:
        for s in self.socks:
            s.close()


def _time(url: str, timeout: float, idle: IdleSockets | None) -> float:
    if idle is not None:
        idle.refill()
    t = time.perf_counter()
    try:
        r = requests.get(url, timeout=timeout, headers={"Connection": "close"})
        r.raise_for_status()
    except requests.RequestException:
        return float("inf")
    return (time.perf_counter() - t) * 1000


def _stats(ms: list[float]) -> str:
    done = sorted(x for x in ms if x != float("inf"))
    failed = len(ms) - len(done)
    if not done:
        return f"all {failed} failed (timeout)"

    def rank(q):  # nearest rank, failures counted as slowest
        i = max(0, math.ceil(len(ms) * q) - 1)
        return "timeout" if i >= len(done) else f"{done[i]:.1f}"
    worst = "timeout" if failed else f"{done[-1]:.1f}"
    return f"p50 {rank(0.5)} · p95 {rank(0.95)} · max {worst} ms" + (f" · {failed} failed" if failed else "")


def _proc(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def run(kind: str, args, db_dir: str) -> dict:
    port = _free_port()
    p = _start(kind, port, args.nofile, db_dir)
    base = f"http://127.0.0.1:{port}"
    out = {}
    try:
        for n in (0, *args.idle):
            label = f"{n} idle sockets"
            idle = IdleSockets(port, n) if n else None
            try:
                if idle:
                    idle.refill()
                est = server_side_established(port)
                threads, fds = _proc(p.pid)
                health = [_time(base + "/api/v1/health", args.timeout, idle) for _ in range(args.requests)]
                metrics = [_time(base + "/metrics", args.timeout, idle) for _ in range(args.requests)]
                out[label] = (health, metrics)
                extra = (f", {est} connections established; {idle.reopened} sockets reopened after the server "
                         f"closed them" if idle else "")
                print(f"  {kind:9} {label:17} health {_stats(health):42} /metrics {_stats(metrics):42}"
                      f" server: {threads} threads, {fds} fds{extra}", flush=True)
            finally:
                if idle:
                    idle.close()
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", default="1000,1100", type=lambda v: [int(x) for x in v.split(",")],
                    help="idle sockets held open during the measurement (comma-separated: one round each)")
    ap.add_argument("--requests", type=int, default=20, help="timed requests per endpoint")
    ap.add_argument("--nofile", type=int, default=1024, help="the servers' soft open-files limit")
    ap.add_argument("--timeout", type=float, default=1.0, help="per-request timeout, seconds (then: failed)")
    ap.add_argument("--werkzeug-child", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.werkzeug_child:
        _werkzeug_child(args.werkzeug_child)
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.idle) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print(f"servers: RLIMIT_NOFILE soft {args.nofile}; {args.requests} requests per endpoint, new connection each, "
          f"timeout {args.timeout:g} s; target < {TARGET_MS:.0f} ms")
    results = {}
    with tempfile.TemporaryDirectory() as db_dir:
        for kind in ("flowscope", "werkzeug"):
            results[kind] = run(kind, args, db_dir)
    ok = True
    for n in args.idle:
        health, metrics = results["flowscope"][f"{n} idle sockets"]
        worst = max(health + metrics)
        ok &= worst < TARGET_MS
        print(f"flowscope with {n} idle sockets: worst health or /metrics {worst:.1f} ms "
              f"({'meets' if worst < TARGET_MS else 'misses'} the {TARGET_MS:.0f} ms target)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
