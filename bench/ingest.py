"""Ingest throughput: OTLP protobuf and OTLP JSON through the real HTTP endpoint.

The server (`flowscope serve`) runs pinned to CPU 0; this client, pinned to
CPU 1, posts 1,000-span batches over ``--connections`` keep-alive connections
(so the server never waits on the client) for a fixed time per format. Both
wall-clock throughput and spans per second of *server CPU time* (from
/proc/<pid>/stat) are printed: the second is "sustained on one core".
Also prints the pure decode cost per span and, as the named
reference, what parsing the same OTLP JSON with orjson alone costs.
Then (issue 13) the run store on the whole machine: spans/s accepted and the
fraction stored, SQLite and with ``--postgres`` PostgreSQL (bench/store_ingest.py
has the offered-rate sweeps), and ``--workers`` scaling (bench/workers.py).

    .venv/bin/python bench/ingest.py [--seconds 5] [--store-seconds 20] [--postgres] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import orjson
import requests
from common import cpu_seconds, otlp_batch, pin, start_server

from exporter import conventions as c
from exporter.decode import otlp
from tests.otlp_data import to_json

TARGET = 100_000


def per_span_us(fn, n_spans: int, repeat: int = 20) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best / n_spans * 1e6


def blast(url: str, body: bytes, ctype: str, seconds: float, connections: int) -> int:
    sent = [0] * connections
    stop = time.perf_counter() + seconds

    def worker(i):
        sess = requests.Session()
        while time.perf_counter() < stop:
            sess.post(url, data=body, headers={"Content-Type": ctype}, timeout=30).raise_for_status()
            sent[i] += 1000

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent)


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per format; the median is reported")
    ap.add_argument("--store-seconds", type=float, default=20.0,
                    help="then the run store on the whole machine (bench/store_ingest.py's run, writer process, "
                         "as fast as the server answers) for this long per database; 0 skips it")
    ap.add_argument("--postgres", action="store_true",
                    help="the store-on run on a throwaway PostgreSQL too (as the tests start one)")
    ap.add_argument("--workers", default="1,2",
                    help="then --workers N scaling on the whole machine (bench/workers.py's ingest), metrics only "
                         "and store on, for these counts; empty skips it")
    args = ap.parse_args([] if __name__ != "__main__" else None)
    pin(1)
    from flowscope.cli import tune_gc
    tune_gc()  # measure decoding as `flowscope serve` runs it
    batch = otlp_batch(1000)
    pb = batch.SerializeToString()
    js = orjson.dumps(to_json(batch))
    out = {}
    out["orjson_parse_us_per_span"] = per_span_us(lambda: orjson.loads(js), 1000)
    out["decode_json_us_per_span"] = per_span_us(lambda: otlp.decode_json(js), 1000)
    out["decode_protobuf_us_per_span"] = per_span_us(lambda: otlp.decode_protobuf(pb), 1000)

    # One core: the store's writer as a thread here (a writer process would share the pinned core anyway);
    # bench/store_ingest.py measures the writer process on the whole machine, with what the store keeps.
    modes = (("metrics only (FLOWSCOPE_RUN_STORE=false)", {"FLOWSCOPE_RUN_STORE": "false"}),
             ("metrics + run store (SQLite, writer thread, one core)", {"FLOWSCOPE_STORE_WRITER": "thread"}))
    for mode, env in modes:
        out[mode] = measure(args, pb, js, env)
    print("== ingest (server pinned to one core, 1,000-span batches, end to end over HTTP) ==")
    print(f"  orjson.loads alone (reference)     {out['orjson_parse_us_per_span']:6.2f} us/span")
    print(f"  decode OTLP JSON (msgspec + map)   {out['decode_json_us_per_span']:6.2f} us/span")
    print(f"  decode OTLP protobuf               {out['decode_protobuf_us_per_span']:6.2f} us/span")
    for mode, _ in modes:
        r = out[mode]
        print(f"  -- {mode}")
        for name in ("otlp_protobuf", "otlp_json"):
            v, c = r[f"{name}_spans_per_s"], r[f"{name}_spans_per_cpu_s"]
            print(f"  {name:14s} end to end  {v:10,.0f} spans/s wall, {c:10,.0f} spans per server CPU-second"
                  f" = {c / TARGET:.2f}x the 100,000 spans/s target  (rounds: {r[name + '_rounds_per_cpu_s']})")
        if "stored" in r:
            print(f"  stored {r['stored']:,} of {r['received']:,} spans; not stored under load: {r['dropped']:,} "
                  f"({r['shed']:,} as whole runs shed, the rest at a full queue); the writer drained "
                  f"{r['drain_s']:.1f} s after the last request")
    if args.store_seconds:
        out["store"] = store_on(args)
    if args.workers:
        out["workers"] = worker_scaling(args, pb)
    return out


def store_on(args) -> dict:
    """The run store on (the default), on the whole machine: spans/s accepted and the fraction stored, SQLite and
    (``--postgres``) PostgreSQL; :mod:`store_ingest` has the offered-rate sweeps and the writer alone."""
    import store_ingest

    os.sched_setaffinity(0, range(os.cpu_count() or 1))  # unpinned again: the server takes this process's CPUs
    out = {}
    print(f"== run store on (writer process), whole machine, as fast as it answers, {args.store_seconds:g} s ==")
    dbs = [("sqlite", None)]
    pg = None
    if args.postgres:
        from tests.conftest import Postgres
        pg = Postgres()
        dbs.append(("postgresql", pg))
    try:
        for name, server in dbs:
            url = server.fresh_database() if server is not None else None
            r = out[name] = store_ingest.run("process", args.store_seconds, args.connections, url)
            print(f"  {name:10s} {r['spans_per_s']:9,.0f} spans/s accepted; stored {r['stored']:,} of "
                  f"{r['accepted']:,} = {r['stored_fraction']:.2%} ({r['stored_per_s']:,.0f} spans/s); the rest shed "
                  f"as whole runs ({r['shed']:,}), counted")
    finally:
        if pg is not None:
            pg.stop()
    return out


def worker_scaling(args, pb: bytes) -> dict:
    """``--workers N`` for each N of ``args.workers`` on the whole machine, metrics only and store on."""
    import workers

    return workers.scaling([int(w) for w in args.workers.split(",")], args.store_seconds or 10, args.connections, pb)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith(name + "_created"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def measure(args, pb: bytes, js: bytes, env: dict) -> dict:
    """One server with ``env``: spans/s wall and per server CPU-second, alternating formats."""
    out: dict = {}
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-ingest-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(port, cpu=0, env={"FLOWSCOPE_DATABASE_URL": f"sqlite:///{tmp}/runs.db", **env})
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    server_pid = int(children[0]) if children else server.pid
    try:
        url = f"http://127.0.0.1:{port}/v1/traces"
        sess = requests.Session()
        formats = (("otlp_protobuf", pb, "application/x-protobuf"), ("otlp_json", js, "application/json"))
        for _, body, ctype in formats:  # warm up
            for _ in range(5):
                sess.post(url, data=body, headers={"Content-Type": ctype}, timeout=30).raise_for_status()
        runs: dict[str, list] = {name: [] for name, _, _ in formats}
        for _ in range(args.rounds):  # alternate, so noise on this shared VM hits both formats alike
            for name, body, ctype in formats:
                cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
                n = blast(url, body, ctype, args.seconds, args.connections)
                dt, cpu = time.perf_counter() - t0, cpu_seconds(server_pid) - cpu0
                runs[name].append((n / dt, n / cpu))
        t_end = time.perf_counter()
        metrics = sess.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        assert "flowscope_step_duration_seconds_bucket" in metrics
        if env.get("FLOWSCOPE_RUN_STORE") != "false":  # wait (bounded) for the writer to catch up, then count
            deadline = time.monotonic() + 300
            while _metric(metrics, c.RUN_STORE_QUEUE_SPANS) > 0 and time.monotonic() < deadline:
                time.sleep(0.5)
                metrics = sess.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
            out["drain_s"] = time.perf_counter() - t_end
            out["received"] = int(_metric(metrics, c.SPANS_RECEIVED_TOTAL))
            out["dropped"] = int(_metric(metrics, c.RUN_STORE_DROPPED_TOTAL))
            out["shed"] = int(_metric(metrics, c.RUN_STORE_DROPPED_TOTAL + '{reason="shed_runs"}'))
            out["stored"] = out["received"] - out["dropped"]
        for name, rs in runs.items():
            out[f"{name}_spans_per_s"] = statistics.median(r[0] for r in rs)
            out[f"{name}_spans_per_cpu_s"] = statistics.median(r[1] for r in rs)
            out[f"{name}_rounds_per_cpu_s"] = [round(r[1]) for r in rs]
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
