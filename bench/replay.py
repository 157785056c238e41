"""Time travel on a 1,000-step run: how long reconstructing a step takes (target: well under 2 s).

The run is written by the SDK into a real store (SQLite file, or PostgreSQL with
--database-url), each step with a state snapshot of ~20 keys. Measured per step
index: the full API request (load the run, critical path, fold the snapshots,
diff, JSON) through Flask, and the pure fold alone. Then the debugger's costs
over the whole run: a watch (one path, and four), and a breakpoint scan that
matches no step (the worst case: every step folded and tested), pure and
through the API.

    .venv/bin/python bench/replay.py [--steps 1000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from common import pin  # also puts the project on sys.path

from backend.app import create_app
from backend.runs.breakpoints import parse
from backend.runs.replay import next_break, replay, steps_of, watch
from exporter.config import load_config
from exporter.runtime import build
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    pin(0)  # one core, as the server would give one request
    tmp = tempfile.mkdtemp(prefix="flowscope-bench-replay-")
    url = a.database_url or f"sqlite:///{tmp}/runs.db"
    ex = build(load_config({"database_url": url}, environ={}))
    client = create_app(ex).test_client()
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="bench")
    with t.workflow("batch_import") as run:
        for i in range(a.steps):
            layer = ("api", "database", "cache", "queue")[i % 4]
            state = {f"field_{k}": (i * k) % 97 for k in range(16)}
            state.update({"row": i, "batch": {"done": i + 1, "left": a.steps - i - 1}, "last_layer": layer,
                          "ids": list(range(i % 7))})
            with t.step(layer, f"{layer}-svc", f"op_{i % 25}", state=state):
                pass
    assert ex.pipeline.recorder.flush(60)
    cid = run.correlation_id
    print(f"run {cid}: {a.steps} steps stored in {ex.db.dialect.name}")
    steps = steps_of([s._asdict() for s in ex.runs.get_run(cid).spans])
    for n in (0, a.steps // 2, a.steps - 1):
        api, pure = [], []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            r = client.get(f"/api/v1/runs/{cid}/replay?step={n}")
            api.append(time.perf_counter() - t0)
            assert r.status_code == 200 and r.json["state"]["row"] == n, r.json
            t0 = time.perf_counter()
            replay(steps, n)
            pure.append(time.perf_counter() - t0)
        print(f"step {n:>5}: API request {statistics.median(api) * 1000:7.1f} ms (max {max(api) * 1000:.1f}) · "
              f"fold+diff alone {statistics.median(pure) * 1000:6.2f} ms · target < 2000 ms → "
              f"{2000 / (statistics.median(api) * 1000):.0f}× under")
    debug_costs(client, cid, steps, a.repeat)
    t0 = time.perf_counter()
    page = client.get(f"/runs/{cid}")
    print(f"run page ({a.steps} waterfall rows): {(time.perf_counter() - t0) * 1000:.0f} ms, "
          f"{len(page.data) / 1024:.0f} KiB")
    ex.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def debug_costs(client, cid: str, steps: list[dict], repeat: int) -> None:
    """Watches and breakpoint scans over every step of the run: pure, then the API request with them."""
    n = len(steps)
    one, four = ["batch.done"], ["batch.done", "field_3", "ids.2", "no.such.path"]
    never = [parse("batch.left < 0 or (layer = database and duration > 60000) or last_layer = nowhere")]
    changed = [parse("field_5 changed and row > 100000")]
    base = _median_ms(lambda: replay(steps, n - 1), repeat)
    print(f"debugger over {n} steps (median of {repeat}; pure, one core):")
    print(f"  {f'step {n - 1} alone (fold + diff)':<46} {base:8.2f} ms")
    for label, paths in (("watch, 1 path (every step's value)", one), ("watch, 4 paths (every step's value)", four)):
        ms = _median_ms(lambda paths=paths: watch(steps, paths), repeat)
        print(f"  {label:<46} {ms:8.2f} ms  ({ms * 1000 / n:.1f} µs a step)")
    for label, conds in (("3-clause condition", never), ("'changed' condition", changed)):
        ms = _median_ms(lambda conds=conds: next_break(steps, conds, -1), repeat)
        assert next_break(steps, conds, -1) is None
        print(f"  {f'breakpoint scan, {label}, no hit':<46} {ms:8.2f} ms  ({ms * 1000 / n:.1f} µs a step)")
    url = f"/api/v1/runs/{cid}/replay"
    plain = _median_ms(lambda: client.get(url, query_string={"step": n - 1}), repeat)
    watched = _median_ms(lambda: client.get(url, query_string={"step": n - 1, "watch": four}), repeat)
    scan = _median_ms(lambda: client.get(url, query_string={"break": never[0].text}), repeat)
    print(f"API request: step {n - 1} {plain:.1f} ms · with 4 watches {watched:.1f} ms (+{watched - plain:.1f}) · "
          f"breakpoint scan with no hit {scan:.1f} ms (+{scan - plain:.1f})")


if __name__ == "__main__":
    main()
