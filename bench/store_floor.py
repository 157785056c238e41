"""What one stored OTLP span costs the SQLite run store, in parts, as the store grows (issue 13, point 2).

``bench/store_ingest.py`` says how fast the whole server stores spans; this says where the writer's time goes, and
so where the ceiling of a row-per-span SQLite store is on this machine. It runs the store's own code in this
process, with the writer process's settings (``make_engine(url, bulk_writer=True)``, its background WAL
checkpoints) and its chunks of ``CHUNK_ITEMS`` decoded OTLP spans, one transaction each:

- **rows**: building the chunk's rows (attributes decoded, redacted, JSON), ``RunWriter.span_row`` and the rest,
  timed on a copy of the chunk that is not written;
- **SQLite**: the rest of ``write_isolating`` on the chunk: the inserts and the commit, through SQLAlchemy's
  connection (so its small share per statement is in it);
- **checkpoint**: the CPU of the thread that copies the WAL into the database after each commit.

Per span, at each quarter of ``--spans``, for trace ids ``random`` (16 random bytes a trace, as OpenTelemetry
makes them: a request's rows land all over the (correlation_id, span_id) index) and ``counting`` (each request's
after the last one's). The writer process also unpickles each chunk and decodes the spans' protobuf bytes (about
2 µs a span, not counted here), and the serving process decodes and counts every span first:
``--server-us`` (default: the figure ``bench/ingest.py`` reports with the store off, as µs of server CPU per span)
gives the ceiling ``cores / (server + writer)``, with both cores busy all the time and nothing else running.

    .venv/bin/python bench/store_floor.py [--spans 2000000] [--trace-ids random,counting] [--server-us 8.1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import common  # noqa: F401 - puts the project on sys.path
from store_ingest import unique_batches

from exporter.db import make_engine
from exporter.decode.otlp import decode_protobuf
from exporter.store import RunStore
from exporter.store.process import CHUNK_ITEMS, checkpoint_in_background
from exporter.store.recorder import write_isolating


def chunks(trace_ids: str, n_spans: int, chunk: int = CHUNK_ITEMS):
    """Pairs of the same chunk of decoded spans, decoded twice: one to build rows from, one to write."""
    body_for = unique_batches(trace_ids=trace_ids)
    per_request = 1000
    for first in range(0, n_spans, chunk):
        bodies = [body_for(first // per_request + j) for j in range(chunk // per_request)]
        yield ([s for b in bodies for s in decode_protobuf(b).spans],
               [s for b in bodies for s in decode_protobuf(b).spans])


def rows_only(store: RunStore, spans: list) -> None:
    resources: dict[int, tuple] = {}
    for s in spans:
        store.span_row(s, resources)
        store.detail_rows(s)


def thread_cpu(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(trace_ids: str, n_spans: int, chunk: int = CHUNK_ITEMS) -> list[dict]:
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-floor-")
    url = f"sqlite:///{tmp}/runs.db"
    RunStore(make_engine(url)).close()  # the schema, as the server makes it
    store = RunStore(make_engine(url, bulk_writer=True))
    before = set(threading.enumerate())
    due = checkpoint_in_background(url)
    assert due is not None
    checkpointer = next(t for t in threading.enumerate() if t not in before).native_id  # this store's
    assert checkpointer is not None
    out: list[dict] = []
    acc = {"rows": 0.0, "sql": 0.0, "checkpoint": 0.0, "n": 0}
    mark = n_spans // 4
    checkpointed = 0.0
    try:
        for built, written in chunks(trace_ids, n_spans, chunk):
            t0 = time.thread_time()
            rows_only(store, built)
            t1 = time.thread_time()
            left, error, _, poisoned = write_isolating(store, written)
            t2 = time.thread_time()
            assert not left and not poisoned, error
            due.set()
            acc["rows"] += t1 - t0
            acc["sql"] += (t2 - t1) - (t1 - t0)  # write_isolating builds the rows again, then writes them
            acc["n"] += len(written)
            stored = (len(out) + 1) * mark
            if sum(r["n"] for r in out) + acc["n"] >= stored:
                cpu = thread_cpu(checkpointer)  # the checkpoints run beside the next chunk's decoding and rows
                acc["checkpoint"], checkpointed = cpu - checkpointed, cpu
                out.append(dict(acc, stored=stored))
                acc = {"rows": 0.0, "sql": 0.0, "checkpoint": 0.0, "n": 0}
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spans", type=int, default=2_000_000)
    ap.add_argument("--trace-ids", default="random,counting")
    ap.add_argument("--chunk", type=int, default=CHUNK_ITEMS, help="spans a transaction (the writer process's chunk)")
    ap.add_argument("--server-us", type=float, default=8.1,
                    help="the serving process's CPU per span with the store off (bench/ingest.py: 122-124k spans "
                         "per server CPU-second on this machine)")
    args = ap.parse_args()
    if args.chunk < 1000 or args.chunk % 1000:
        ap.error("--chunk: whole requests of 1,000 spans (1000, 2000, ...)")
    cores = os.cpu_count() or 1
    results = {}
    print(f"== the SQLite run store's cost per span, in chunks of {args.chunk:,} decoded OTLP spans, "
          f"to {args.spans:,} stored; µs of CPU per span over each quarter ==")
    print("| trace ids | stored | rows | SQLite | checkpoint | writer in all | ceiling: "
          f"{cores} cores / (server {args.server_us:g} + writer) |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.trace_ids.split(","):
        results[mode] = got = run(mode, args.spans, args.chunk)
        for r in got:
            us = {k: r[k] / r["n"] * 1e6 for k in ("rows", "sql", "checkpoint")}
            total = sum(us.values())
            print(f"| {mode} | {r['stored']:,} | {us['rows']:.1f} | {us['sql']:.1f} | {us['checkpoint']:.1f} | "
                  f"{total:.1f} | {cores / (args.server_us + total) * 1e6:,.0f} spans/s |", flush=True)
    print(f"(load average at the end: {os.getloadavg()[0]:.1f})")
    return results


if __name__ == "__main__":
    main()
