"""How long a 7-day debugging report takes over a large store (issue 15, point 4).

Fills a fresh SQLite store (or PostgreSQL with ``--database-url``) through the real ingest path with ``--runs``
runs spread over seven days: four workflows, each run an api root span with database, cache and external steps
(4 spans a run), 4 % of runs failing on one database replica and 1 % anywhere with one of five errors; plus
``--alerts`` alert notifications and 20 stored regression findings. Then builds the report over the last 7 days
``--repeat`` times per format and prints the median and the slowest, and the time of each section once.

    .venv/bin/python bench/reports.py [--runs 50000] [--repeat 3] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import insert

from backend.reports import make_report
from backend.reports.build import (
    Links,
    alert_section,
    bins_of,
    endpoint_section,
    error_section,
    parse_window,
    regression_section,
    slo_section,
    step_section,
)
from backend.rules.spec import load_spec
from backend.store import AlertStore, IncomingAlert
from exporter import conventions as c
from exporter.config import load_config
from exporter.model import Span
from exporter.runtime import build
from exporter.store.schema import regressions

DAY = 86400 * 10**9
WORKFLOWS = ("checkout", "login", "search", "cart_update")
ERRORS = (("DatabaseError", "connection to {replica} reset"), ("TimeoutError", "query timed out after {n} ms"),
          ("LockNotAvailable", "could not obtain lock on row {n} in relation orders"),
          ("IntegrityError", "duplicate key value violates unique constraint orders_pkey: {n}"),
          ("SerializationFailure", "could not serialize access due to concurrent update"))


def seed(ex, runs: int, n_alerts: int, now: int, seed_: int = 1) -> float:
    """Ingest ``runs`` runs over the 7 days before ``now``; returns the seconds it took."""
    rng = random.Random(seed_)
    started = time.perf_counter()
    batch: list[Span] = []
    for i in range(runs):
        end = now - 7 * DAY + (i + 1) * (7 * DAY // (runs + 1))
        wf = WORKFLOWS[i % len(WORKFLOWS)]
        cid, tid = f"r{i:08d}", f"{i:032x}"
        replica = f"replica-{rng.randrange(3)}"
        failed = (replica == "replica-2" and rng.random() < 0.12) or rng.random() < 0.01
        db_ms, cache_ms, ext_ms = rng.lognormvariate(3, 0.5), rng.lognormvariate(0.5, 0.4), rng.lognormvariate(4, .6)
        start = end - int((db_ms + cache_ms + ext_ms + 5) * 1e6)
        t1 = start + int(db_ms * 1e6)
        t2 = t1 + int(cache_ms * 1e6)
        kind = ERRORS[0] if replica == "replica-2" else rng.choice(ERRORS)
        err = {"error_type": kind[0], "error_message": kind[1].format(replica=replica, n=rng.randrange(10**6))} \
            if failed else {}
        root = f"{i:015x}0"
        batch += [
            Span(trace_id=tid, span_id=root, workflow=wf, layer="api", component="shop", operation=f"POST /{wf}",
                 start_ns=start, end_ns=end, status="error" if failed else "ok", correlation_id=cid, **err),
            Span(trace_id=tid, span_id=f"{i:015x}1", workflow=wf, layer="database", component="postgres",
                 operation="SELECT orders", start_ns=start, end_ns=t1, status="error" if failed else "ok",
                 parent_span_id=root, correlation_id=cid, attributes={"db.instance": replica}, **err),
            Span(trace_id=tid, span_id=f"{i:015x}2", workflow=wf, layer="cache", component="redis",
                 operation="GET cart", start_ns=t1, end_ns=t2, parent_span_id=root, correlation_id=cid,
                 attributes={"cache.hit": rng.random() < 0.9}),
            Span(trace_id=tid, span_id=f"{i:015x}3", workflow=wf, layer="external", component="payments",
                 operation="POST /charges", start_ns=t2, end_ns=end, parent_span_id=root, correlation_id=cid),
        ]
        if len(batch) >= 4000:
            ex.pipeline.ingest(batch, "native")
            batch = []
    if batch:
        ex.pipeline.ingest(batch, "native")
    assert ex.pipeline.recorder.flush(600)
    when = datetime.fromtimestamp(now / 1e9, UTC)
    store = AlertStore(ex.db)
    fired = [IncomingAlert(f"fp{i}", "firing", {"alertname": "FlowscopeStepLatencyHigh", "severity": "warning",
                                                "workflow": WORKFLOWS[i % 4], "layer": "database"},
                           {"summary": "p95 over threshold"}, when - timedelta(hours=i % 160), None, "")
             for i in range(n_alerts)]
    store.record(fired, "webhook")
    store.record([IncomingAlert(a.fingerprint, "resolved", a.labels, a.annotations, a.starts_at,
                                a.starts_at + timedelta(minutes=30), "") for a in fired[::2]], "webhook")
    with ex.db.begin() as conn:
        conn.execute(insert(regressions), [{
            "series": f"p95_step_latency{{workflow={WORKFLOWS[i % 4]},n={i}}}",
            "labels": json.dumps({"workflow": WORKFLOWS[i % 4]}),
            "change_time": (when - timedelta(hours=7 * i + 1)).strftime("%Y-%m-%dT%H:%M:%SZ"), "detector": "cusum",
            "direction": "regression" if i % 3 else "improvement", "before": 0.05, "after": 0.08,
            "relative_change": 0.6, "p_value": 1e-6, "p_adjusted": 1e-5, "first_seen": when, "last_seen": when,
            "kind": "step", "rate_per_s": 0.0} for i in range(20)])
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50_000)
    ap.add_argument("--alerts", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--database-url", default=None, help="default: a fresh SQLite file in a temporary directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        cfg = load_config({"database_url": url, "store_writer": "thread", "run_retention_s": 30 * 86400},
                          environ={})
        ex = build(cfg)
        try:
            now = time.time_ns()
            took = seed(ex, args.runs, args.alerts, now)
            print(f"store: {url.split('://')[0]}, {args.runs} runs ({4 * args.runs} spans) over 7 days, "
                  f"{args.alerts} alerts, 20 findings; seeded in {took:.1f} s")
            for fmt in ("json", "md", "html"):
                times, size = [], 0
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    body, _ = make_report(ex.runs, cfg, "7d", None, None, fmt, time.time_ns())
                    times.append(time.perf_counter() - t)
                    size = len(body)
                print(f"report --since 7d --format {fmt:4}: median {statistics.median(times):.2f} s, "
                      f"max {max(times):.2f} s over {args.repeat}; {size / 1024:.0f} KiB")
            t = time.perf_counter()
            make_report(ex.runs, cfg, "7d", None, "checkout", "html", time.time_ns())
            print(f"report --since 7d --workflow checkout --format html: {time.perf_counter() - t:.2f} s")
            w = parse_window("7d", None, time.time_ns())
            b = bins_of(w)
            links = Links(cfg.public_url, "http://localhost:3000")
            spec = load_spec("alert_rules/spec/flowscope.yaml")
            parts = {
                "slo": lambda: slo_section(ex.runs, spec, None, links, w, None, b),
                "regressions": lambda: regression_section(ex.db, links, w, None),
                "errors (with attribution of the top 3)": lambda: error_section(ex.runs, links, w, None, b,
                                                                                c.ATTRIBUTION_OUTCOME_KEYS),
                "steps": lambda: step_section(ex.runs, links, w, None, b),
                "alerts": lambda: alert_section(ex.db, links, w, None),
                "endpoints": lambda: endpoint_section(ex.runs, links, w, None),
            }
            for name, fn in parts.items():
                t = time.perf_counter()
                fn()
                print(f"  section {name}: {time.perf_counter() - t:.2f} s")
        finally:
            ex.close()


if __name__ == "__main__":
    main()
