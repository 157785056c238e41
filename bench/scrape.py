"""Scrape cost and memory: /metrics with 10,000 and 100,000 step-histogram series.

Against prometheus_client's ``generate_latest`` on the same series (same
label values, same observations, same buckets) in the same run, for the text
format and OpenMetrics. The outputs are checked to parse, with
prometheus_client's own parsers, to identical samples. RSS is measured in a
fresh process per implementation (series built, one scrape rendered).

    .venv/bin/python bench/scrape.py [--sizes 10000,100000] [--verify-max 100000] [--workers-series 100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

import prometheus_client
from common import ROOT, pin, rss_mb
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import conventions as c
from exporter.exposition import finish, render_iter
from exporter.metrics import MetricStore

WFS = ["login", "product_search", "cart_update", "checkout", "search", "signup", "refund", "export"]


def series_keys(n: int):
    for i in range(n):
        yield (WFS[i % 8], c.LAYERS[(i // 8) % 9], f"component-{(i // 72) % 50}", f"operation-{i // 3600}-{i % 97}",
               "ok" if i % 5 else "error")


def observations(i: int):
    # deterministic, spread over the buckets, 3 observations per series
    return (0.0007 * (1 + i % 11), 0.03 * (1 + i % 7), 1.7 * (1 + i % 5))


def build_ours(n: int) -> MetricStore:
    store = MetricStore(series_limit=n + 1)
    h = store.histogram(c.STEP_DURATION_SECONDS, "Duration of finished workflow steps.", c.STEP_DURATION_LABELS)
    with store.lock:
        for i, key in enumerate(series_keys(n)):
            for j, v in enumerate(observations(i)):
                h.observe(key, v, f"{i:032x}", f"{j + 1:016x}", 1.7e9)
    return store


def build_theirs(n: int) -> CollectorRegistry:
    prometheus_client.disable_created_metrics()
    reg = CollectorRegistry()
    h = Histogram(c.STEP_DURATION_SECONDS, "Duration of finished workflow steps.", c.STEP_DURATION_LABELS,
                  registry=reg, buckets=c.DEFAULT_BUCKETS)
    for i, key in enumerate(series_keys(n)):
        child = h.labels(*key)
        for j, v in enumerate(observations(i)):
            child.observe(v, {"trace_id": f"{i:032x}", "span_id": f"{j + 1:016x}"})
    return reg


def render_ours(store, om: bool) -> bytes:
    return b"".join(render_iter(store, om)) + finish(om)


def timed(fn, repeat=3):
    best, out = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def sample_set(text: str, om: bool) -> set:
    """Every sample as (name, labels, value, exemplar labels and value); exemplar timestamps are not compared."""
    fams = parse_om(text) if om else parse_text(text)
    return {(s.name, tuple(sorted(s.labels.items())), float(s.value),
             (tuple(sorted(s.exemplar.labels.items())), s.exemplar.value) if s.exemplar else None)
            for f in fams for s in f.samples}


def memory_child(impl: str, n: int) -> None:
    gc.collect()
    before = rss_mb()
    if impl == "flowscope":
        obj = build_ours(n)
        render_ours(obj, False)
    else:
        obj = build_theirs(n)
        prometheus_client.generate_latest(obj)
    gc.collect()
    print(json.dumps({"rss_mb": rss_mb(), "delta_mb": rss_mb() - before}))


def memory(impl: str, n: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--memory-child", impl, str(n)], capture_output=True, text=True,
                       cwd=ROOT / "bench", timeout=900)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--verify-max", type=int, default=100_000,
                    help="parse-and-compare outputs up to this many series (parsing is slow)")
    ap.add_argument("--workers-series", type=int, default=100_000,
                    help="then the scrape of this many series through `serve --workers`' aggregator channel against "
                         "the single process (bench/workers.py's scrape); 0 skips it")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args([] if __name__ != "__main__" else None)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return {}
    pin(0)
    results = {}
    print("== scrape: step-histogram series, Flowscope vs prometheus_client.generate_latest, same run ==")
    for n in (int(x) for x in args.sizes.split(",")):
        ours, theirs = build_ours(n), build_theirs(n)
        for om in (False, True):
            fmt = "openmetrics" if om else "text"
            t_ours, out_ours = timed(lambda ours=ours, om=om: render_ours(ours, om))
            gen = om_latest if om else prometheus_client.generate_latest
            t_theirs, out_theirs = timed(lambda gen=gen, theirs=theirs: gen(theirs),
                                         repeat=1 if n > 20_000 else 3)
            verified = "not checked"
            if n <= args.verify_max:
                a = sample_set(out_ours.decode(), om)
                b = sample_set(out_theirs.decode(), om)
                a = {s for s in a if not s[0].startswith(c.SERIES_OVERFLOW_TOTAL.removesuffix("_total"))}
                verified = f"identical ({len(a):,} samples)" if a == b else f"DIFFERENT ({len(a ^ b)} differ)"
            results[f"{n}_{fmt}"] = {"flowscope_s": t_ours, "prometheus_client_s": t_theirs,
                                     "speedup": t_theirs / t_ours, "bytes": len(out_ours), "verified": verified}
            print(f"  {n:>7,} series {fmt:11s}  flowscope {t_ours:6.2f} s   prometheus_client {t_theirs:6.2f} s"
                  f"   = {t_theirs / t_ours:5.1f}x faster   {len(out_ours) / 1e6:6.1f} MB   samples {verified}")
        ours = theirs = None  # free both before the next size
        gc.collect()
    n = max(int(x) for x in args.sizes.split(","))
    m_ours, m_theirs = memory("flowscope", n), memory("prometheus_client", n)
    results["memory"] = {"flowscope": m_ours, "prometheus_client": m_theirs}
    print(f"  RSS with {n:,} series: flowscope {m_ours['rss_mb']:.0f} MB (+{m_ours['delta_mb']:.0f} MB for the series)"
          f", prometheus_client {m_theirs['rss_mb']:.0f} MB (+{m_theirs['delta_mb']:.0f} MB)"
          f" = {m_theirs['delta_mb'] / m_ours['delta_mb']:.1f}x less memory for the series")
    if args.workers_series:
        import workers

        results["workers"] = workers.print_scrape(args.workers_series, repeat=3)
    return results


if __name__ == "__main__":
    main()
