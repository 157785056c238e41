"""``flowscope serve --workers N``: what the aggregator design costs and buys (exporter/prefork.py).

1. **Scrape cost at 100,000 series**, today's single process (the metric store rendered in the serving process)
   against the same scrape answered through the aggregator channel (rendered in the aggregator, pickled, sent over
   the Unix socket, unpickled in the worker: what a worker's /metrics does), same store, same run; text format and
   OpenMetrics, median of ``--repeat``.
2. **Ingest over HTTP on the whole machine**, ``--workers 1`` against ``--workers 2``: OTLP protobuf, 1,000-span
   batches over ``--connections`` keep-alive connections for ``--seconds``, metrics only and with the run store
   (SQLite, writer process); spans/s wall clock, and what the store kept.

    .venv/bin/python bench/workers.py [--series 100000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import threading
import time

import requests
from common import otlp_batch, start_server
from ingest import _metric, blast
from scrape import build_ours

from exporter import conventions as c
from exporter.config import load_config
from exporter.prefork import Aggregator, AggregatorClient
from exporter.runtime import Exporter


def scrape(series: int, repeat: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-workers-")
    ex = Exporter(load_config({"database_url": f"sqlite:///{tmp}/runs.db", "run_store": "false",
                               "series_limit": str(series + 1)}, environ={}))
    ex.store = build_ours(series)  # the step histogram with ``series`` series, 3 observations and exemplars each
    agg = Aggregator(ex).start()
    client = AggregatorClient(agg.address, agg.key)
    out = {}
    try:
        for om in (False, True):
            direct, channel = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                a = b"".join(ex.metrics_body(om))
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = b"".join(client.stream("exporter", "metrics_bytes", om))
                channel.append(time.perf_counter() - t)
                assert a.split(b"\n# HELP process_")[0] == b.split(b"\n# HELP process_")[0]  # the same series
            fmt = "openmetrics" if om else "text"
            out[fmt] = {"direct_ms": statistics.median(direct) * 1e3, "channel_ms": statistics.median(channel) * 1e3,
                        "bytes": len(a)}
    finally:
        agg.close()
        ex.close(0)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ingest(workers: int, store: bool, seconds: float, connections: int, body: bytes) -> dict:
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-workers-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"FLOWSCOPE_DATABASE_URL": f"sqlite:///{tmp}/runs.db", "FLOWSCOPE_WORKERS": str(workers)}
    if not store:
        env["FLOWSCOPE_RUN_STORE"] = "false"
    server = start_server(port, cpu="0,1", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(5):
            requests.post(url + c.OTLP_TRACES_PATH, data=body, headers={"Content-Type": "application/x-protobuf"},
                          timeout=30).raise_for_status()
        t = time.perf_counter()
        n = blast(url + c.OTLP_TRACES_PATH, body, "application/x-protobuf", seconds, connections)
        rate = n / (time.perf_counter() - t)
        text = requests.get(url + c.METRICS_PATH, timeout=60).text
        out = {"spans_per_s": rate, "received": int(_metric(text, c.SPANS_RECEIVED_TOTAL))}
        if store:
            deadline = time.monotonic() + 300
            while _metric(text, c.RUN_STORE_QUEUE_SPANS) > 0 and time.monotonic() < deadline:
                time.sleep(0.5)
                text = requests.get(url + c.METRICS_PATH, timeout=60).text
            out["dropped"] = int(_metric(text, c.RUN_STORE_DROPPED_TOTAL))
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def print_scrape(series: int, repeat: int) -> dict:
    """Measure and print :func:`scrape`: one process against the aggregator channel."""
    s = scrape(series, repeat)
    print(f"== scrape of {series:,} step-histogram series: one process against the aggregator channel (rendered by "
          "the aggregator, streamed to the worker that was scraped) ==")
    for fmt, r in s.items():
        print(f"  {fmt:12s} {r['bytes'] / 1e6:6.1f} MB   one process {r['direct_ms']:7.0f} ms   through the "
              f"aggregator {r['channel_ms']:7.0f} ms   = {r['channel_ms'] / r['direct_ms']:.2f}x")
    return s


def scaling(counts: list[int], seconds: float, connections: int, body: bytes) -> dict:
    """Measure and print :func:`ingest` for each worker count, metrics only and with the run store; each row
    against the first count's."""
    out: dict = {}
    print(f"== OTLP protobuf ingest over HTTP, whole machine, {connections} connections, {seconds:g} s each ==")
    for store in (False, True):
        rows = {w: ingest(w, store, seconds, connections, body) for w in counts}
        label = "metrics + run store (SQLite, writer process)" if store else "metrics only"
        for w, r in rows.items():
            kept = "" if not store else f"; store kept {1 - r['dropped'] / max(1, r['received']):.1%}"
            ratio = (f"  ({r['spans_per_s'] / rows[counts[0]]['spans_per_s']:.2f}x --workers {counts[0]})"
                     if w != counts[0] else "")
            print(f"  {label:45s} --workers {w}: {r['spans_per_s']:9,.0f} spans/s{kept}{ratio}")
        out["store" if store else "metrics"] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    print_scrape(args.series, args.repeat)
    scaling([1, 2], args.seconds, args.connections, otlp_batch(1000).SerializeToString())


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
