"""What forwarding costs ingest: OTLP protobuf throughput with 0, 1 and 2 forward destinations (one of them dead).

Three `flowscope serve` processes run side by side, all pinned to CPU 0, metrics only (FLOWSCOPE_RUN_STORE=false,
so that forwarding is the largest share of the work it can be: the ratio is a worst case) and one HTTP worker:

- ``none``: no destination;
- ``one``: one destination, a local receiver that reads each request and answers 200 (in this process, CPU 1);
- ``one, no gzip``: the same with FLOWSCOPE_FORWARD_COMPRESSION=none (what gzip costs of it);
- ``two``: that receiver and a dead one (a port where nothing listens: every attempt is refused and retried).

This client, pinned to CPU 1, posts 1,000-span batches over ``--connections`` keep-alive connections for
``--seconds`` per round, the servers in turn, ``--rounds`` times; between rounds it waits until the live
destination has sent all it was given, so one server's forwarding never runs during another's round. Printed:
spans/s wall and per server CPU-second (from /proc/<pid>/stat), each as a ratio to ``none``, and what each
destination got.

    .venv/bin/python bench/forward.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from common import cpu_seconds, otlp_batch, pin, start_server
from ingest import blast

from exporter import conventions as c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """An OTLP/HTTP receiver that keeps only counts: requests and bytes as sent (it shares this client's CPU, so it
    decodes nothing)."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        self.lock = threading.Lock()
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                n = len(raw)
                with rx.lock:
                    rx.requests += 1
                    rx.bytes += n
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args([] if __name__ != "__main__" else None)
    pin(1)
    body = otlp_batch(1000).SerializeToString()
    live = Receiver()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused
    base = {"FLOWSCOPE_RUN_STORE": "false", "FLOWSCOPE_WORKERS": "1", "FLOWSCOPE_LOG_LEVEL": "ERROR"}
    configs = {
        "none": {},
        "one": {"FLOWSCOPE_FORWARD_DESTINATIONS": "live", "FLOWSCOPE_FORWARD_LIVE_URL": live.url,
                "FLOWSCOPE_FORWARD_LIVE_HEADERS": "api-key=bench"},
        "one, no gzip": {"FLOWSCOPE_FORWARD_DESTINATIONS": "live", "FLOWSCOPE_FORWARD_LIVE_URL": live.url,
                         "FLOWSCOPE_FORWARD_LIVE_HEADERS": "api-key=bench", "FLOWSCOPE_FORWARD_COMPRESSION": "none"},
        "two": {"FLOWSCOPE_FORWARD_DESTINATIONS": "live,dead", "FLOWSCOPE_FORWARD_LIVE_URL": live.url,
                "FLOWSCOPE_FORWARD_LIVE_HEADERS": "api-key=bench", "FLOWSCOPE_FORWARD_DEAD_URL": dead},
    }
    servers, ports, pids = {}, {}, {}
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-forward-")
    try:
        for name, env in configs.items():
            ports[name] = free_port()
            servers[name] = p = start_server(ports[name], cpu=0, env={
                **base, **env, "FLOWSCOPE_DATABASE_URL": f"sqlite:///{tmp}/{name}.db"})
            children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()  # taskset execs; be safe
            pids[name] = int(children[0]) if children else p.pid
        sess = requests.Session()
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        posted = dict.fromkeys(configs, 0)
        for name in configs:  # warm up
            for _ in range(5):
                sess.post(f"http://127.0.0.1:{ports[name]}{c.OTLP_TRACES_PATH}", data=body,
                          headers={"Content-Type": "application/x-protobuf"}, timeout=30).raise_for_status()
                posted[name] += 1
        for _ in range(args.rounds):
            for name in configs:
                url = f"http://127.0.0.1:{ports[name]}"
                cpu0, t0 = cpu_seconds(pids[name]), time.perf_counter()
                n = blast(url + c.OTLP_TRACES_PATH, body, "application/x-protobuf", args.seconds,
                          args.connections) // 1000  # requests of 1,000 spans
                dt, cpu = time.perf_counter() - t0, cpu_seconds(pids[name]) - cpu0
                posted[name] += n
                runs[name].append((n * 1000 / dt, n * 1000 / cpu))
                if name != "none":  # the live destination has sent everything before the next round (bounded wait)
                    deadline = time.monotonic() + 120
                    def sent() -> float:
                        text = sess.get(url + c.METRICS_PATH, timeout=30).text  # noqa: B023 - called in this loop
                        return metric(text, c.FORWARD_SENT_TOTAL, destination="live")

                    while time.monotonic() < deadline and sent() < posted[name]:
                        time.sleep(0.1)
        out: dict = {}
        print(f"== forward: ingest with 0, 1 and 2 destinations (server pinned to one core, metrics only, "
              f"{len(body):,}-byte 1,000-span protobuf batches, {args.rounds} rounds of {args.seconds:g} s) ==")
        ref_wall = statistics.median(r[0] for r in runs["none"])
        ref_cpu = statistics.median(r[1] for r in runs["none"])
        for name in configs:
            wall = statistics.median(r[0] for r in runs[name])
            cpu = statistics.median(r[1] for r in runs[name])
            out[name] = {"spans_per_s": wall, "spans_per_cpu_s": cpu, "wall_ratio": wall / ref_wall,
                         "cpu_ratio": cpu / ref_cpu}
            text = sess.get(f"http://127.0.0.1:{ports[name]}{c.METRICS_PATH}", timeout=30).text
            detail = ""
            for dest in ("live", "dead"):
                if dest in configs[name].get("FLOWSCOPE_FORWARD_DESTINATIONS", ""):
                    sent = metric(text, c.FORWARD_SENT_TOTAL, destination=dest)
                    dropped = metric(text, c.FORWARD_DROPPED_TOTAL, destination=dest)
                    detail += f"; {dest}: {sent:,.0f} of {posted[name]:,} requests sent, {dropped:,.0f} dropped"
            print(f"  {name:12s} {wall:10,.0f} spans/s wall ({wall / ref_wall:4.2f}x none), {cpu:10,.0f} spans per "
                  f"server CPU-second ({cpu / ref_cpu:4.2f}x none){detail}")
        print(f"  the live receiver got {live.requests:,} requests, {live.bytes / 1e6:,.1f} MB as sent")
        return out
    finally:
        for p in servers.values():
            p.terminate()
        for p in servers.values():  # a dead destination holds its server until the stop deadline (20 s)
            p.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
