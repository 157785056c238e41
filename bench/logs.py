"""Application log lines in the run store (issue 14): how fast each kind of search answers at 100k and 1M stored
lines, and what sustained ingest costs, on SQLite and on PostgreSQL.

**Data.** Synthetic but shaped like an app's logs, from a fixed seed: 8 services, levels 70 % info, 10 % debug,
12 % warn, 7 % error, 1 % fatal; 40 message templates with variable parts (ids, durations, names), each line also
carrying 0-6 words of a Zipf-distributed 5,000-word vocabulary (so words range from every other line to a few
hundred lines in a million); 3-5 attributes (``order_id``, ``http.status_code``, ``duration_ms``, ``user_id``,
``region``); runs of 10 lines under one correlation_id and trace_id. Times spread over the last hour (1M lines in
an hour: the issue's rate). Lines are written through the real write path (``RunWriter.write``: ``log_row`` and
``insert_logs``, the FTS5 triggers / the generated tsvector and the GIN index) in batches of 5,000.

**Queries** go through the Flask app (``GET /api/v1/logs``: parse, SQL, JSON; the in-process test client, no
socket), ``limit=100`` (the default page), each kind ``--queries`` times with parameters drawn per run:

- ``text_common``: one word in ~30 % of lines; ``text_rare``: a word in ~0.01 % (about 100 lines a million);
  ``text_phrase``: a two-word phrase and an exclusion (``"card declined" -insufficient``);
- ``field_eq``: ``order_id=N`` (one run's lines); ``field_range``: ``http.status_code>=500`` (~4 %);
- ``correlation_id``: ``cid:X``;
- ``combination``: ``level:error service:payments "gateway" duration_ms>500`` over the last 15 minutes;
- ``templates``: the newest 2,000 lines (the default ``scan``) of ``level:warn`` collapsed into templates.

**Ingest.** An exporter (writer process, as ``flowscope serve`` runs) takes a steady span load (native steps,
decoded and through ``Pipeline.ingest``, ``--span-rate`` a second), in rounds of two phases of ``--ingest-seconds``:
spans only, then spans plus ``--log-rate`` lines a second through ``Pipeline.ingest_logs`` (built before the phase:
the bench's generator is not measured). CPU is this process plus the writer process, and on PostgreSQL the
database server's processes apart; the lines' extra CPU is the median over rounds of phase 2 minus phase 1. Every
line sent must be stored. Then the write path's closed-loop rate: ``RunWriter.write`` of 100k lines.

    .venv/bin/python bench/logs.py [--sizes 100000,1000000] [--databases sqlite,postgresql] [--queries 40]
                                   [--ingest-seconds 20] [--rounds 3] [--span-rate 1000] [--log-rate 280]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.app import create_app
from exporter import conventions as c
from exporter.config import load_config
from exporter.db import make_engine
from exporter.decode import native
from exporter.model import LogLine
from exporter.runtime import build
from exporter.store import RunStore

SERVICES = ("checkout", "payments", "cart", "catalog", "search", "auth", "shipping", "notifications")
LEVELS = (("info", 70), ("debug", 10), ("warn", 12), ("error", 7), ("fatal", 1))
TEMPLATES = {
    "info": ["request completed in {ms} ms", "user {user} logged in from {ip}", "cart {cart} updated with {n} items",
             "GET /api/products/{n} 200 in {ms} ms", "order {order} created for user {user}",
             "sent confirmation email for order {order}", "search for {word} returned {n} results",
             "healthcheck ok", "shipment {order} handed to carrier", "token refreshed for session {cart}",
             "inventory synced: {n} products", "payment authorised for order {order}"],
    "debug": ["cache hit for key product:{n}", "cache miss for key product:{n}", "sql: select * from orders where "
              "id = {order}", "feature flag {word} evaluated to true", "retry budget {n} of 10 left"],
    "warn": ["slow query on orders took {ms} ms", "retrying payment call, attempt {k}", "deprecated endpoint "
             "/v1/cart called by {ip}", "queue depth {n} above threshold", "rate limit close for user {user}",
             "certificate expires in {k} days"],
    "error": ["card declined for order {order}: insufficient funds", "card declined for order {order}: expired card",
              "payment gateway timeout after {ms} ms", "failed to reserve inventory for order {order}",
              "connection refused by {ip}:5432", "null pointer in cart service for cart {cart}",
              "KeyError: '{word}' while pricing order {order}"],
    "fatal": ["database connection pool exhausted", "out of memory in worker {k}", "unhandled exception: {word}"],
}


def _vocabulary(n: int, rng: random.Random) -> list[str]:
    syll = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "da", "go", "hi", "fu", "ba", "ye"]
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        w = "".join(rng.choice(syll) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class Lines:
    """A deterministic stream of realistic log lines (see the module docstring)."""

    def __init__(self, seed: int = 7):
        self.rng = random.Random(seed)
        self.vocab = _vocabulary(5000, random.Random(seed + 1))
        # Zipf weights over the vocabulary: rank 1 in ~30 % of lines, rank ~3000 in a few hundred per million
        self.cum = []
        total = 0.0
        for r in range(1, len(self.vocab) + 1):
            total += 1.0 / r
            self.cum.append(total)
        self.levels = [lv for lv, w in LEVELS for _ in range(w)]
        self.run = 0

    def word(self) -> str:
        x = self.rng.random() * self.cum[-1]
        lo, hi = 0, len(self.cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cum[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return self.vocab[lo]

    def batch(self, n: int, t_start: int, t_step: int) -> list[LogLine]:
        return self.at([t_start + i * t_step for i in range(n)])

    def at(self, times: list[int]) -> list[LogLine]:
        """One line at each of ``times``."""
        rng = self.rng
        out = []
        for i, t in enumerate(times):
            if i % 10 == 0:
                self.run += 1
                cid, tid = f"run-{self.run:09d}", f"{self.run:032x}"
                service = SERVICES[rng.randrange(len(SERVICES))]
                order = 100000 + self.run
            level = self.levels[rng.randrange(100)]
            body = rng.choice(TEMPLATES[level]).format(
                ms=rng.randint(1, 3000), user=f"u{rng.randint(1, 50000)}",
                ip=f"10.0.{rng.randrange(255)}.{rng.randrange(255)}", cart=f"c-{rng.randint(1, 10**6)}",
                n=rng.randint(1, 500), order=order, word=self.word(), k=rng.randint(1, 9))
            extra = " ".join(self.word() for _ in range(rng.randint(0, 6)))
            attrs = {"order_id": order, "http.status_code": 500 + rng.randrange(4) if rng.random() < 0.04 else 200,
                     "duration_ms": rng.randint(1, 2000)}
            if rng.random() < 0.5:
                attrs["user_id"] = f"u{rng.randint(1, 50000)}"
            if rng.random() < 0.5:
                attrs["region"] = rng.choice(("eu-west-1", "us-east-1", "ap-south-1"))
            out.append(LogLine(time_ns=t, level=level, body=f"{body} {extra}".strip(),
                               service=service, correlation_id=cid, trace_id=tid, span_id=f"{i % 10:016x}",
                               logger=f"{service}.app", attributes=attrs))
        return out


def _fill(store: RunStore, gen: Lines, slots: list[int]) -> float:
    """Write one line at each time of ``slots`` (5,000 a batch); returns lines/s of the write path."""
    t0 = time.perf_counter()
    for i in range(0, len(slots), 5000):
        store.write(gen.at(slots[i:i + 5000]))
    return len(slots) / (time.perf_counter() - t0)


def _queries(gen: Lines, stored: int, rng: random.Random, now: int) -> dict[str, list[dict]]:
    runs = stored // 10
    common, rare = gen.vocab[0], gen.vocab[2999]
    out: dict[str, list[dict]] = {k: [] for k in ("text_common", "text_rare", "text_phrase", "field_eq",
                                                  "field_range", "correlation_id", "combination", "templates")}
    for _ in range(200):
        r = rng.randint(1, runs)
        out["text_common"].append({"q": rng.choice([common, gen.vocab[1], gen.vocab[2]])})
        out["text_rare"].append({"q": rng.choice([rare, gen.vocab[3500], gen.vocab[4200]])})
        out["text_phrase"].append({"q": rng.choice(['"card declined" -insufficient', '"payment gateway" -healthcheck',
                                                    f'"slow query" -{common}'])})
        out["field_eq"].append({"q": f"order_id={100000 + r}"})
        out["field_range"].append({"q": rng.choice(["http.status_code>=500", "http.status_code>502"])})
        out["correlation_id"].append({"q": f"cid:run-{r:09d}"})
        out["combination"].append({"q": 'level:error service:payments "gateway" duration_ms>500',
                                   "since": str((now - 900 * 10**9) / 1e9)})
        out["templates"].append({"q": "level:warn", "templates": "true"})
    return out


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def query_bench(url: str, sizes: list[int], n_queries: int) -> list[tuple]:
    ex = build(load_config({"database_url": url, "store_writer": "thread", "loki_url": ""}, environ={}))
    store = ex.runs
    client = create_app(ex).test_client()
    gen = Lines()
    rng = random.Random(3)
    rows = []
    stored, stride_before = 0, 0
    now = time.time_ns()
    top = max(sizes)
    step = 3600 * 10**9 // top  # the biggest store holds one line at each step of the last hour
    for size in sizes:
        # a smaller store holds every (top/size)-th of those lines, so each size spreads over the same hour
        stride = top // size
        slots = [now - 3600 * 10**9 + i * step for i in range(top)
                 if i % stride == 0 and not (stride_before and i % stride_before == 0)]
        rate = _fill(store, gen, slots)
        stored, stride_before = size, stride
        if store.engine.dialect.name == "postgresql":
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE logs; ANALYZE log_fields")
        else:
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE")
        print(f"  {size:>9,} lines stored (write path {rate:,.0f} lines/s while filling)", flush=True)
        for kind, params in _queries(gen, stored, rng, now).items():
            times, counts = [], []
            for p in params[:n_queries]:
                t0 = time.perf_counter()
                r = client.get(c.LOGS_PATH, query_string=p)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.json
                counts.append(r.json["count"])
            rows.append((size, kind, statistics.median(times), _pct(times, 95), max(times), statistics.mean(counts)))
            print(f"    {kind:15s} p50 {statistics.median(times):7.1f} ms  p95 {_pct(times, 95):7.1f} ms  "
                  f"max {max(times):7.1f} ms  ({statistics.mean(counts):.0f} lines a page)", flush=True)
    ex.close()
    return rows


def _cpu(pid: int | None, children: bool = False) -> float:
    """CPU seconds of process ``pid`` (and, with ``children``, of its children it has waited for)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int | None) -> float:
    """CPU seconds of ``root`` (with its exited children) and of every live process below it: a PostgreSQL
    server's postmaster and its backends."""
    if root is None:
        return 0.0
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    below, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [k for k, pp in parent.items() if pp == p]
        below += kids
        todo += kids
    return _cpu(root, children=True) + sum(_cpu(k) for k in below)


def _self_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _steps(k: int, n: int, now_s: float) -> dict:
    return {"steps": [{"correlation_id": f"bench-{k}-{i // 5}", "workflow_type": "checkout", "layer": "api",
                       "component": "orders", "operation": "price", "started_at": now_s, "duration_ms": 3,
                       "status": "success"} for i in range(n)]}


def ingest_bench(url: str, seconds: float, span_rate: int, log_rate: int, rounds: int,
                 db_pid: int | None) -> dict:
    """Rounds of (spans only, spans + lines), ``seconds`` each, at a fixed pace; CPU of this process and the
    writer process (and of the database server, ``db_pid``'s process tree, when it is PostgreSQL). The lines are
    built before each phase, so what is measured is the pipeline and the store, not the bench's generator."""
    ex = build(load_config({"database_url": url, "store_writer": "process", "loki_url": ""}, environ={}))
    ex.start()
    gen = Lines(seed=11)
    phases: dict[str, list[dict]] = {"spans": [], "spans+logs": []}
    sent_lines = 0
    try:
        pid = ex.recorder.writer.pid if ex.recorder.writer is not None else None
        for _ in range(rounds):
            for phase, lines_per_s in (("spans", 0), ("spans+logs", log_rate)):
                ticks = int(seconds * 10)
                per_tick = lines_per_s // 10
                t_base = time.time_ns()
                batches = [gen.batch(per_tick, t_base + k * 10**8, 10**8 // max(per_tick, 1)) for k in range(ticks)]
                sent = {"spans": 0, "lines": 0}
                cpu0 = _self_cpu() + _cpu(pid), _tree_cpu(db_pid)
                t0 = time.perf_counter()
                due = t0
                for k in range(ticks):
                    res = native.decode(_steps(k, span_rate // 10, time.time() - 0.01))
                    ex.pipeline.ingest(res.spans, c.FORMAT_NATIVE)
                    sent["spans"] += len(res.spans)
                    if per_tick:
                        ex.pipeline.ingest_logs(batches[k], c.FORMAT_SDK)
                        sent["lines"] += per_tick
                    due += 0.1
                    time.sleep(max(0.0, due - time.perf_counter()))
                assert ex.recorder.flush(60)
                wall = time.perf_counter() - t0
                cpu = _self_cpu() + _cpu(pid) - cpu0[0]
                db = _tree_cpu(db_pid) - cpu0[1]
                sent_lines += sent["lines"]
                phases[phase].append({"cpu_pct": 100 * cpu / wall, "db_pct": 100 * db / wall,
                                      "lines_per_s": sent["lines"] / wall, "spans_per_s": sent["spans"] / wall})
        with ex.runs.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM logs").scalar_one()
    finally:
        ex.close()
    med = {ph: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for ph, rs in phases.items()}
    extra = [b["cpu_pct"] - a["cpu_pct"] for a, b in zip(phases["spans"], phases["spans+logs"], strict=True)]
    extra_db = [b["db_pct"] - a["db_pct"] for a, b in zip(phases["spans"], phases["spans+logs"], strict=True)]
    out: dict = {"median": med, "extra_pct_of_a_core": statistics.median(extra),
                 "extra_db_pct_of_a_core": statistics.median(extra_db), "stored": stored, "sent_lines": sent_lines}
    out["extra_pct_of_span_load"] = 100 * out["extra_pct_of_a_core"] / med["spans"]["cpu_pct"]
    out["us_per_line"] = out["extra_pct_of_a_core"] / 100 / max(med["spans+logs"]["lines_per_s"], 1) * 1e6
    # closed loop: the write path alone (RunWriter.write: log_row, insert_logs), 100k lines in batches of 5,000
    store = RunStore(make_engine(url))
    gen = Lines(seed=13)
    batches = [gen.batch(5000, time.time_ns() + i * 5000 * 1000, 1000) for i in range(20)]
    t0 = time.perf_counter()
    for b in batches:
        store.write(b)
    out["closed_loop_lines_per_s"] = 100_000 / (time.perf_counter() - t0)
    store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--databases", default="sqlite,postgresql")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--ingest-seconds", type=float, default=20.0)
    ap.add_argument("--span-rate", type=int, default=1000)
    ap.add_argument("--log-rate", type=int, default=280)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-queries", action="store_true")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    pg = None
    try:
        for db in args.databases.split(","):
            if db == "sqlite":
                tmp = tempfile.mkdtemp(prefix="flowscope-bench-logs-")
                q_url, i_url = f"sqlite:///{tmp}/q.db", f"sqlite:///{tmp}/i.db"
            else:
                if pg is None:
                    from tests.conftest import Postgres
                    pg = Postgres()
                q_url, i_url = pg.fresh_database(), pg.fresh_database()
            print(f"== {db}", flush=True)
            if not args.skip_queries:
                print(f"  queries through GET {c.LOGS_PATH} (limit 100), {args.queries} of each kind:", flush=True)
                query_bench(q_url, sizes, args.queries)
            if not args.skip_ingest:
                r = ingest_bench(i_url, args.ingest_seconds, args.span_rate, args.log_rate, args.rounds,
                                 pg.proc.pid if pg is not None and db != "sqlite" else None)
                a, b = r["median"]["spans"], r["median"]["spans+logs"]
                print(f"  ingest, writer process, {args.rounds} rounds of {args.ingest_seconds:g} s a phase (medians):")
                print(f"    spans only      {a['spans_per_s']:7,.0f} spans/s             CPU {a['cpu_pct']:5.1f} % "
                      f"of a core (database server {a['db_pct']:.1f} %)")
                print(f"    spans + logs    {b['spans_per_s']:7,.0f} spans/s {b['lines_per_s']:5,.0f} lines/s  CPU "
                      f"{b['cpu_pct']:5.1f} % of a core (database server {b['db_pct']:.1f} %)")
                print(f"    the lines' extra CPU: {r['extra_pct_of_a_core']:+.2f} % of a core ({r['us_per_line']:.0f} "
                      f"µs a line; {r['extra_pct_of_span_load']:+.0f} % of this span load's), database server "
                      f"{r['extra_db_pct_of_a_core']:+.2f} % of a core; stored {r['stored']:,} of {r['sent_lines']:,}")
                print(f"    write path closed loop: {r['closed_loop_lines_per_s']:,.0f} lines/s (100k lines, batches "
                      "of 5,000)", flush=True)
            if db == "sqlite":
                shutil.rmtree(tmp, ignore_errors=True)  # a million lines are a gigabyte
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    main()
