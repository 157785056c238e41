"""Sustained ingest with the run store on (issue 13): what `flowscope serve` takes over HTTP for a fixed time,
and what fraction of it the store keeps, per writer.

The server is not pinned: it and its writer process may use every core of the machine, as in production; the
client posts 1,000-span OTLP protobuf batches over ``--connections`` keep-alive connections as fast as the
server answers (closed loop). Every batch has trace ids of its own (a 4-byte prefix shared by all its spans'
trace ids is rewritten per request), so each span is a new row. After the run the writer is given time to
drain (bounded), then the spans table is counted in the database itself.

Figures per writer: spans/s accepted (wall), spans stored / spans accepted, spans shed (whole runs) and dropped,
drain time, CPU seconds of the server and of its writer process per 1,000 spans. The named baseline is the
in-thread writer (``FLOWSCOPE_STORE_WRITER=thread``) in the same run.

    .venv/bin/python bench/store_ingest.py [--seconds 60] [--writers process,thread] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import sys
import tempfile
import threading
import time

import requests
from common import otlp_batch, start_server

from exporter import conventions as c

PREFIX = b"\xfa\xce\xb0\x0c"


def unique_batches(n_spans: int = 1000):
    """``body(i)``: the same 1,000-span request with trace ids of its own for each ``i``."""
    req = otlp_batch(n_spans)
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                sp.trace_id = PREFIX + sp.trace_id[4:]
    body = req.SerializeToString()
    assert body.count(PREFIX) == n_spans, "the prefix must appear once per span"

    def body_for(i: int) -> bytes:
        return body.replace(PREFIX, (0x10000000 + i).to_bytes(4, "big"))
    return body_for


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith(name + "_created"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(writer: str, seconds: float, connections: int, database_url: str | None, rate: float = 0.0) -> dict:
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-store-")
    url = database_url or f"sqlite:///{tmp}/runs.db"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cpus = ",".join(str(i) for i in sorted(os.sched_getaffinity(0)))
    server = start_server(port, cpu=cpus, env={"FLOWSCOPE_DATABASE_URL": url, "FLOWSCOPE_STORE_WRITER": writer})
    base = f"http://127.0.0.1:{port}"
    body_for = unique_batches()
    counter = iter(range(10**9))
    lock = threading.Lock()
    sent = [0] * connections
    out: dict = {"writer": writer}
    try:
        health = requests.get(base + c.HEALTH_PATH, timeout=10).json()
        proc = health["components"]["writer"].get("process")
        writer_pid = proc["pid"] if proc else None
        stop = time.perf_counter() + seconds
        cpu0 = cpu_seconds(server.pid), cpu_seconds(writer_pid) if writer_pid else 0.0

        interval = connections * 1000 / rate if rate else 0.0  # seconds between one connection's batches

        def post(k: int) -> None:
            sess = requests.Session()
            due = time.perf_counter() + interval * k / connections
            while time.perf_counter() < stop:
                if interval:
                    time.sleep(max(0.0, due - time.perf_counter()))
                    due += interval
                with lock:
                    i = next(counter)
                r = sess.post(base + c.OTLP_TRACES_PATH, data=body_for(i),
                              headers={"Content-Type": "application/x-protobuf"}, timeout=60)
                r.raise_for_status()
                sent[k] += 1000

        t0 = time.perf_counter()
        threads = [threading.Thread(target=post, args=(k,)) for k in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        cpu1 = cpu_seconds(server.pid), cpu_seconds(writer_pid) if writer_pid else 0.0
        t_end = time.perf_counter()
        deadline = t_end + 600
        metrics = requests.get(base + "/metrics", timeout=60).text
        while _metric(metrics, c.RUN_STORE_QUEUE_SPANS) > 0 and time.perf_counter() < deadline:
            time.sleep(0.5)
            metrics = requests.get(base + "/metrics", timeout=60).text
        out["drain_s"] = time.perf_counter() - t_end
        time.sleep(1.0)  # the last batch: queue empty is taken before the writer commits it
        metrics = requests.get(base + "/metrics", timeout=60).text
        accepted = sum(sent)
        out["accepted"] = accepted
        out["spans_per_s"] = accepted / wall
        out["received_metric"] = int(_metric(metrics, c.SPANS_RECEIVED_TOTAL))
        out["shed"] = int(_metric(metrics, c.RUN_STORE_DROPPED_TOTAL, 'reason="shed_runs"'))
        out["dropped"] = int(_metric(metrics, c.RUN_STORE_DROPPED_TOTAL))
        out["server_cpu_ms_per_1k"] = (cpu1[0] - cpu0[0]) / accepted * 1e6
        out["writer_cpu_ms_per_1k"] = (cpu1[1] - cpu0[1]) / accepted * 1e6
    finally:
        server.terminate()
        server.wait(60)
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            out["stored"] = db.execute("SELECT count(*) FROM spans").fetchone()[0]
    else:
        from sqlalchemy import create_engine, text
        with create_engine(url).connect() as conn:
            out["stored"] = conn.execute(text("SELECT count(*) FROM spans")).scalar_one()
    out["stored_fraction"] = out["stored"] / accepted if accepted else float("nan")
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=3)
    ap.add_argument("--writers", default="process,thread")
    ap.add_argument("--database-url", default=None, help="default: a new SQLite file per writer")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered spans/s (paced); 0 (default): as fast as the server answers")
    args = ap.parse_args([] if __name__ != "__main__" else None)
    results = {}
    offered = f"offered {args.rate:,.0f} spans/s" if args.rate else "as fast as the server answers"
    print(f"== store ingest: {args.seconds:g} s of 1,000-span OTLP protobuf batches, {args.connections} connections, "
          f"{offered}, {os.cpu_count()} cores, server unpinned ==")
    for writer in args.writers.split(","):
        r = results[writer] = run(writer, args.seconds, args.connections, args.database_url, args.rate)
        print(f"  writer={writer:8s} {r['spans_per_s']:9,.0f} spans/s accepted; stored {r['stored']:,} of "
              f"{r['accepted']:,} = {r['stored_fraction']:.4%}; shed {r['shed']:,}, dropped in all {r['dropped']:,}; "
              f"drained {r['drain_s']:.1f} s after the last request; CPU per 1,000 spans: server "
              f"{r['server_cpu_ms_per_1k']:.1f} ms, writer process {r['writer_cpu_ms_per_1k']:.1f} ms")
    if "thread" in results and "process" in results:
        p, t = results["process"], results["thread"]
        print(f"  process/thread: {p['spans_per_s'] / t['spans_per_s']:.2f}x accepted, stored fraction "
              f"{p['stored_fraction']:.4f} against {t['stored_fraction']:.4f}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
