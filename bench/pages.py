"""The home page and the runs list on 100,000 stored runs: how long a person waits.

Fills a fresh SQLite run store with ``--runs`` finished runs (a root and two steps each, spread over the
last 24 hours, 5 % failing), then times the pages through the Flask app, median of ``--repeat``:

    .venv/bin/python bench/pages.py [--runs 100000] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backend.app import create_app
from exporter.config import load_config
from exporter.model import Span
from exporter.runtime import build

TARGET_MS = 300


def fill(ex, n: int) -> None:
    now = time.time_ns()
    batch = []
    for i in range(n):
        cid = f"run-{i:07d}"
        tid = f"{i:032x}"
        start = now - int(86400e9 * (1 - i / n)) + 1
        dur = 20_000_000 + (i * 7919) % 400_000_000
        failed = i % 20 == 0
        status = "error" if failed else "ok"
        wf = ("checkout", "login", "search", "browse")[i % 4]
        batch.append(Span(trace_id=tid, span_id=f"{i + 1:016x}", workflow=wf, layer="system", component="workflow",
                          operation=wf, start_ns=start, end_ns=start + dur, status=status, parent_span_id=None,
                          correlation_id=cid, service="shop", error_type="PaymentDeclined" if failed else None,
                          error_message="card declined" if failed else None, is_step=False))
        for k, layer in enumerate(("api", "database")):
            batch.append(Span(trace_id=tid, span_id=f"{(i + 1) * 4 + k:016x}", workflow=wf, layer=layer,
                              component="svc", operation=f"op{k}", start_ns=start, end_ns=start + dur // 2,
                              status=status if k else "ok", parent_span_id=f"{i + 1:016x}", correlation_id=cid,
                              service="shop", attributes={"http.route": f"/{wf}", "n": i % 100}))
        if len(batch) >= 30_000:
            ex.runs.write(batch)
            batch = []
    if batch:
        ex.runs.write(batch)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--database-url")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    url = args.database_url or f"sqlite:///{tmp}/pages.db"
    ex = build(load_config({"database_url": url}, environ={}))
    try:
        t = time.perf_counter()
        fill(ex, args.runs)
        stored = len(ex.runs.list_runs(limit=10**9, offset=0))
        print(f"== pages on {stored:,} stored runs ({url.split(':')[0]}; filled in {time.perf_counter() - t:.0f} s) ==")
        client = create_app(ex).test_client()
        for path in ("/", "/?window=24h", "/runs", "/runs?page=50", "/runs?status=failed", "/runs?workflow=login",
                     "/runs?min_duration_ms=400", "/runs?q=declined", "/runs?attr=n=42", "/runs?q=nothing-matches"):
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = client.get(path)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (path, r.status_code)
            med = statistics.median(times)
            print(f"  {path:32s} {med:8.1f} ms  ({'under' if med < TARGET_MS else 'OVER'} the {TARGET_MS} ms target)")
    finally:
        ex.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
