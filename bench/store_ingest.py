"""Sustained ingest with the run store on (issue 13): what `flowscope serve` takes over HTTP for a fixed time,
and what fraction of it the store keeps, per writer.

The server is not pinned: it and its writer process may use every core of the machine, as in production; the
client posts 1,000-span OTLP protobuf batches over ``--connections`` keep-alive connections as fast as the
server answers (closed loop). Every batch has trace ids of its own, so each span is a new row: 16 random bytes a
trace as OpenTelemetry's SDKs make them (``--trace-ids counting``: the request's number in their first 4 bytes, so
each request's rows follow the last one's in the store's index, as the figures before 2026-11-28 were measured).
After the run the writer is given time to drain (bounded), then the spans table is counted in the database itself.

Figures per writer: spans/s accepted (wall), spans stored / spans accepted, spans shed (whole runs) and dropped,
drain time, CPU seconds of the server and of its writer process per 1,000 spans. The named baseline is the
in-thread writer (``FLOWSCOPE_STORE_WRITER=thread``) in the same run.

On PostgreSQL (``--postgres`` starts a throwaway server as the tests do, a fresh database per run; or
``--database-url``), ``--pg-methods`` names how the writer inserts the big tables (:mod:`exporter.store.pgcopy`:
``copy``, the default, against ``executemany``, the old path, as the baseline in the same run), and ``--rates``
several offered rates; a table of stored spans/s and the stored fraction per method and rate closes the run, with
the database server's CPU per 1,000 spans. ``--closed-loop N`` measures the writer alone instead (no HTTP, no
writer process: ``write_isolating`` on N batches of 5,000 decoded spans per method and round, interleaved): its
CPU and PostgreSQL's per span, which hold on a machine busy with other work where the wall figures do not.

    .venv/bin/python bench/store_ingest.py [--seconds 60] [--writers process,thread] [--database-url URL]
    .venv/bin/python bench/store_ingest.py --postgres --writers process --pg-methods copy,executemany \
        --rates 20000,25000,30000,0
    .venv/bin/python bench/store_ingest.py --postgres --pg-methods copy,unnest,executemany --closed-loop 6
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time

import requests
from common import cpu_seconds, otlp_batch, start_server

from exporter import conventions as c
from exporter.db import make_engine
from exporter.store.pgcopy import DEFAULT_METHOD, METHOD_ENV, METHODS

PREFIX = b"\xfa\xce\xb0\x0c"


def unique_batches(n_spans: int = 1000, trace_ids: str = "random"):
    """``body(i)``: the same 1,000-span request with trace ids of its own for each ``i``.

    ``random`` (the default): each trace gets 16 random bytes, as OpenTelemetry's SDKs make them, so the rows of a
    request land all over the store's (correlation_id, span_id) index. ``counting``: the first 4 bytes of every
    trace id are the request's number, so each request's rows go right after the last one's (the figures before
    2026-11-28 were measured this way, and flattered a B-tree store)."""
    req = otlp_batch(n_spans)
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                sp.trace_id = PREFIX + sp.trace_id[4:]
    body = req.SerializeToString()
    assert body.count(PREFIX) == n_spans, "the prefix must appear once per span"
    if trace_ids == "counting":
        def body_for(i: int) -> bytes:
            return body.replace(PREFIX, (0x10000000 + i).to_bytes(4, "big"))
        return body_for
    if trace_ids != "random":
        raise ValueError(f"trace ids: random or counting, not {trace_ids!r}")
    where: dict[bytes, list[int]] = {}  # each trace's id -> where it starts in the body, once per span
    at = body.find(PREFIX)
    while at >= 0:
        where.setdefault(body[at:at + 16], []).append(at)
        at = body.find(PREFIX, at + 1)
    traces = list(where.values())

    def random_body_for(i: int) -> bytes:
        out = bytearray(body)
        rand = random.Random(i).randbytes
        for starts in traces:
            tid = rand(16)
            for at in starts:
                out[at:at + 16] = tid
        return bytes(out)
    return random_body_for


def _metric(text: str, name: str, label: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and label in line and not line.startswith(name + "_created"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster with its exited children, and its live children."""
    with open(f"/proc/{postmaster}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != postmaster:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile: its time is in the postmaster's children's now
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def count_spans(url: str) -> int:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not os.path.exists(path):
            return 0
        with sqlite3.connect(path) as db:
            return db.execute("SELECT count(*) FROM spans").fetchone()[0]
    from sqlalchemy import text

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM spans")).scalar_one()
    except Exception:  # noqa: BLE001 - no spans table yet: a fresh database
        return 0
    finally:
        engine.dispose()


def run(writer: str, seconds: float, connections: int, database_url: str | None, rate: float = 0.0,
        pg_method: str | None = None, postmaster: int | None = None, trace_ids: str = "random") -> dict:
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-store-")
    url = database_url or f"sqlite:///{tmp}/runs.db"
    before = count_spans(url)  # a --database-url used again: count only this run's spans
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cpus = ",".join(str(i) for i in sorted(os.sched_getaffinity(0)))
    env = {"FLOWSCOPE_DATABASE_URL": url, "FLOWSCOPE_STORE_WRITER": writer}
    if pg_method:
        env[METHOD_ENV] = pg_method
    server = start_server(port, cpu=cpus, env=env)
    base = f"http://127.0.0.1:{port}"
    body_for = unique_batches(trace_ids=trace_ids)
    counter = iter(range(10**9))
    lock = threading.Lock()
    sent = [0] * connections
    out: dict = {"writer": writer, "pg_method": pg_method, "rate": rate}
    try:
        health = requests.get(base + c.HEALTH_PATH, timeout=10).json()
        proc = health["components"]["writer"].get("process")
        writer_pid = proc["pid"] if proc else None
        stop = time.perf_counter() + seconds
        cpu0 = cpu_seconds(server.pid), cpu_seconds(writer_pid) if writer_pid else 0.0
        db0 = postgres_cpu_seconds(postmaster) if postmaster else 0.0

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
        db1 = postgres_cpu_seconds(postmaster) if postmaster else 0.0
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
        out["db_cpu_ms_per_1k"] = (db1 - db0) / accepted * 1e6
        out["wall_s"] = wall
    finally:
        server.terminate()
        server.wait(60)
    out["stored"] = count_spans(url) - before
    shutil.rmtree(tmp, ignore_errors=True)  # a minute at the store's pace is a gigabyte of SQLite
    out["stored_fraction"] = out["stored"] / accepted if accepted else float("nan")
    out["stored_per_s"] = out["stored"] / wall
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--connections", type=int, default=3)
    ap.add_argument("--writers", default="process,thread")
    ap.add_argument("--database-url", default=None, help="default: a new SQLite file per writer")
    ap.add_argument("--postgres", action="store_true",
                    help="start a throwaway PostgreSQL (as the tests do), a fresh database per run")
    ap.add_argument("--pg-methods", default=DEFAULT_METHOD,
                    help=f"PostgreSQL only: how the big tables are inserted, comma-separated of {', '.join(METHODS)}")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="offered spans/s (paced); 0 (default): as fast as the server answers")
    ap.add_argument("--rates", default=None,
                    help="several offered rates, comma-separated (0: as fast as it answers)")
    ap.add_argument("--closed-loop", type=int, default=0, metavar="BATCHES",
                    help="instead of HTTP, the writer alone writing BATCHES batches of 5,000 spans per round "
                         "(on PostgreSQL, per method and round)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --closed-loop")
    ap.add_argument("--trace-ids", choices=("random", "counting"), default="random",
                    help="random (default): as OpenTelemetry makes them; counting: each request's after the last's")
    args = ap.parse_args([] if __name__ != "__main__" else None)
    if args.postgres or (args.database_url or "").startswith("postgres"):
        return main_postgres(args)
    if args.closed_loop:
        return closed_loop_sqlite(args)
    results = {}
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    for rate in rates:
        offered = f"offered {rate:,.0f} spans/s" if rate else "as fast as the server answers"
        print(f"== store ingest: {args.seconds:g} s of 1,000-span OTLP protobuf batches, {args.connections} "
              f"connections, {offered}, {os.cpu_count()} cores, server unpinned ==", flush=True)
        for writer in args.writers.split(","):
            r = results[writer] = run(writer, args.seconds, args.connections, args.database_url, rate,
                                          trace_ids=args.trace_ids)
            print(f"  writer={writer:8s} {r['spans_per_s']:9,.0f} spans/s accepted; stored {r['stored']:,} of "
                  f"{r['accepted']:,} = {r['stored_fraction']:.4%} ({r['stored_per_s']:,.0f} spans/s); shed "
                  f"{r['shed']:,}, dropped in all {r['dropped']:,}; drained {r['drain_s']:.1f} s after the last "
                  f"request; CPU per 1,000 spans: server {r['server_cpu_ms_per_1k']:.1f} ms, writer process "
                  f"{r['writer_cpu_ms_per_1k']:.1f} ms", flush=True)
    if len(rates) == 1 and "thread" in results and "process" in results:
        p, t = results["process"], results["thread"]
        print(f"  process/thread: {p['spans_per_s'] / t['spans_per_s']:.2f}x accepted, stored fraction "
              f"{p['stored_fraction']:.4f} against {t['stored_fraction']:.4f}")
    return results


def closed_loop(url: str, method: str, batches: int, per_batch: int, postmaster: int | None, seed: int,
                trace_ids: str = "random") -> dict:
    """The writer alone, as fast as it goes: ``batches`` batches of ``per_batch`` decoded OTLP spans (new trace
    ids each) through ``write_isolating`` in this process, by ``method``. CPU times (this process, the PostgreSQL
    server) say what a span costs whatever else the machine runs; the wall time is the throughput."""
    from exporter.decode.otlp import decode_protobuf
    from exporter.store import pgcopy
    from exporter.store.recorder import RunWriter, write_isolating

    engine = make_engine(url, bulk_writer=True)  # as the writer process makes it
    writer = RunWriter(engine, pg_method=method)
    body_for = unique_batches(trace_ids=trace_ids)
    work = [[sp for j in range(per_batch // 1000) for sp in decode_protobuf(body_for(seed + i * 1000 + j)).spans]
            for i in range(batches)]
    inserting = [0.0]
    insert = pgcopy.BulkInsert.insert

    def timed(self, conn, rows) -> None:
        t = time.perf_counter()
        insert(self, conn, rows)
        inserting[0] += time.perf_counter() - t

    pgcopy.BulkInsert.insert = timed  # the big tables' share of the wall time
    try:
        db0 = postgres_cpu_seconds(postmaster) if postmaster else 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in work:
            left, error, _, poisoned = write_isolating(writer, batch)
            assert not left and not poisoned, error
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        db = (postgres_cpu_seconds(postmaster) - db0) if postmaster else float("nan")
    finally:
        pgcopy.BulkInsert.insert = insert
        engine.dispose()
    n = batches * per_batch
    return {"spans_per_s": n / wall, "writer_us": cpu / n * 1e6, "db_us": db / n * 1e6,
            "insert_us": inserting[0] / n * 1e6}


def main_postgres(args) -> dict:
    """Each writer x method x offered rate against PostgreSQL; a table of what the store kept closes the run."""
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    methods = args.pg_methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--pg-methods: {m!r} is not one of {', '.join(METHODS)}")
    pg = None
    results: dict = {}
    if args.closed_loop:
        print(f"== the writer alone on PostgreSQL, closed loop: {args.closed_loop} batches of 5,000 decoded OTLP "
              f"spans per method, {args.rounds} rounds (medians) ==", flush=True)
    else:
        print(f"== store ingest on PostgreSQL: {args.seconds:g} s a run of 1,000-span OTLP protobuf batches, "
          f"{args.connections} connections, {os.cpu_count()} cores, server unpinned ==", flush=True)
    try:
        if args.postgres:
            from tests.conftest import Postgres
            pg = Postgres()
            postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        else:
            postmaster = None
        if args.closed_loop:
            return closed_loop_table(args, methods, pg, postmaster)
        for rate in rates:
            for writer in args.writers.split(","):
                for m in methods:
                    url = pg.fresh_database() if pg is not None else args.database_url
                    r = results[(rate, writer, m)] = run(writer, args.seconds, args.connections, url, rate, m,
                                                         postmaster, args.trace_ids)
                    offered = f"{rate:,.0f}/s" if rate else "max"
                    print(f"  offered {offered:>8s} writer={writer:7s} method={m:11s} {r['spans_per_s']:8,.0f} spans/s "
                          f"accepted; stored {r['stored']:,} of {r['accepted']:,} = {r['stored_fraction']:.4%} "
                          f"({r['stored_per_s']:,.0f} spans/s); shed {r['shed']:,}, dropped in all {r['dropped']:,}; "
                          f"drained {r['drain_s']:.1f} s; CPU per 1,000 spans: server "
                          f"{r['server_cpu_ms_per_1k']:.1f} ms, writer process {r['writer_cpu_ms_per_1k']:.1f} ms, "
                          f"PostgreSQL {r['db_cpu_ms_per_1k']:.1f} ms",
                          flush=True)
    finally:
        if pg is not None:
            pg.stop()
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")
    print()
    print("| offered | writer | " + " | ".join(f"{m}: stored" for m in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for rate in rates:
        for writer in args.writers.split(","):
            cells = []
            for m in methods:
                r = results[(rate, writer, m)]
                cells.append(f"{r['stored_fraction']:.1%} ({r['stored_per_s']:,.0f} spans/s; PostgreSQL "
                             f"{r['db_cpu_ms_per_1k']:.0f} ms CPU per 1k)")
            offered = (f"{rate:,.0f} spans/s, paced" if rate else
                       "as fast as it answers: " + " / ".join(f"{results[(rate, writer, m)]['spans_per_s']:,.0f}"
                                                              for m in methods) + " spans/s accepted")
            print(f"| {offered} | {writer} | " + " | ".join(cells) + " |")
    return results


def closed_loop_table(args, methods: list[str], pg, postmaster: int | None) -> dict:
    import statistics

    got: dict[str, list[dict]] = {m: [] for m in methods}
    for rnd in range(args.rounds):
        for m in methods:  # interleaved, so a busy moment of the machine falls on every method alike
            url = pg.fresh_database() if pg is not None else args.database_url
            got[m].append(closed_loop(url, m, args.closed_loop, 5000, postmaster, seed=rnd * 10**6,
                                      trace_ids=args.trace_ids))
    out = {}
    print("| method | spans/s | writer CPU µs/span | PostgreSQL CPU µs/span | big tables' insert µs/span (wall) |")
    print("|---|---|---|---|---|")
    for m in methods:
        med = out[m] = {k: statistics.median(r[k] for r in got[m]) for k in got[m][0]}
        print(f"| {m} | {med['spans_per_s']:,.0f} | {med['writer_us']:.1f} | {med['db_us']:.1f} | "
              f"{med['insert_us']:.1f} |", flush=True)
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")
    return out


def closed_loop_sqlite(args) -> dict:
    """The writer alone on SQLite (a fresh file per round): its CPU per span, robust to other load."""
    import statistics

    print(f"== the writer alone on SQLite, closed loop: {args.closed_loop} batches of 5,000 decoded OTLP spans, "
          f"{args.rounds} rounds (medians) ==", flush=True)
    got = []
    for rnd in range(args.rounds):
        tmp = tempfile.mkdtemp(prefix="flowscope-bench-store-")
        got.append(closed_loop(f"sqlite:///{tmp}/runs.db", DEFAULT_METHOD, args.closed_loop, 5000, None,
                               seed=rnd * 10**6, trace_ids=args.trace_ids))
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in got) for k in ("spans_per_s", "writer_us")}
    print(f"  {med['spans_per_s']:,.0f} spans/s, writer CPU {med['writer_us']:.1f} µs per span "
          f"(rounds: {', '.join(format(r['writer_us'], '.1f') for r in got)})")
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")
    return med


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
