"""The endpoint inventory's join: how long ``GET /api/v1/endpoints`` (and each refresh of the endpoint gauges) takes
to read N server spans from the store and join them with an inventory.

Spans are OpenTelemetry-instrumentation-shaped (``bench.common.otlp_batch``: a SERVER root with ``http.route`` and
the usual HTTP server attributes, CLIENT children), decoded by the OTLP decoder and written by the store's writer,
on SQLite in a temporary directory; the inventory lists the four routes the spans use plus 46 never called.

    .venv/bin/python bench/endpoints.py [--spans 20000 200000] [--repeat 3]

Prints, per size: server spans in the store, the report's median time over ``--repeat`` runs, and spans read per
second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import otlp_batch
from exporter import conventions as c
from exporter.config import load_config
from exporter.decode import otlp
from exporter.runtime import build
from exporter.store.endpoints import EndpointEntry


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spans", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'spans':>8} {'server spans':>12} {'report (median)':>16} {'server spans/s':>15}")
    for n in args.spans:
        with tempfile.TemporaryDirectory() as tmp:
            ex = build(load_config({"database_url": f"sqlite:///{tmp}/bench.db", "store_writer": "thread",
                                    "loki_url": None}, environ={}))
            try:
                entries = [EndpointEntry("POST", f"/api/{wf}", None, False, "openapi")
                           for wf in ("login", "product_search", "cart_update", "checkout")]
                entries += [EndpointEntry("GET", f"/api/unused/{i}", None, True, "openapi") for i in range(46)]
                ex.runs.register_endpoints("shop", entries, time.time_ns())
                for i in range(0, n, 1000):  # 1000-span batches, as a Collector sends them
                    raw = otlp_batch(min(1000, n - i), spans_per_trace=2, seed=i).SerializeToString()
                    ex.pipeline.ingest(otlp.decode_protobuf(raw).spans, c.FORMAT_OTLP_PROTOBUF)
                assert ex.pipeline.recorder.flush(600), "the writer did not catch up"
                times = []
                report = None
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    report = ex.runs.endpoint_report(0, time.time_ns() + 3600 * 10**9)
                    times.append(time.perf_counter() - t)
                assert report is not None
                med = statistics.median(times)
                print(f"{n:>8} {report.spans_read:>12} {med * 1000:>13.0f} ms {report.spans_read / med:>15,.0f}"
                      f"{'  (truncated)' if report.truncated else ''}")
            finally:
                ex.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
