"""The SDK's cost to the app in remote mode, against the OpenTelemetry SDK sending to the same server.

Remote mode is how production apps run the SDK: steps go to a Flowscope server from a background
sender thread. What the app pays is its process's CPU time per step, the sender's encoding and HTTP
posts included, until everything is delivered: ``time.process_time()`` (every thread of this
process) around a round of N steps and the flush that delivers them.

- Flowscope: ``sdk.configure(mode="remote")`` with its default settings and a ``WorkflowTracer``
  (a ``RemoteSink``), ``with tracer.workflow(...)`` around N ``with tracer.step(...)``; then
  ``sdk.flush()``.
- OpenTelemetry: a ``TracerProvider`` with a ``BatchSpanProcessor`` and the OTLP/HTTP protobuf
  ``OTLPSpanExporter`` posting to the server's ``/v1/traces``; a root span around N child spans;
  then ``provider.force_flush()``. Its queue is raised to hold a whole round (its default, 2,048,
  would drop most of a round, and a dropped span costs nothing to send).

The server (``flowscope serve``, metrics only: the run store off, so it is not the bottleneck) runs
pinned to CPU 0, this process to CPU 1. The two alternate round by round (this VM's speed drifts);
the medians and the median of the paired ratios are printed. Every span is checked to have arrived
(the server's ``flowscope_spans_received_total``).

    .venv/bin/python bench/sdk_remote.py [--steps 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import time

import requests
from common import pin, start_server
from prometheus_client.parser import text_string_to_metric_families

from exporter import conventions as c
from exporter import sdk

TARGET = 8.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def received(base: str) -> dict[str, float]:
    """The server's ``flowscope_spans_received_total`` by format."""
    text = requests.get(base + c.METRICS_PATH, timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == c.SPANS_RECEIVED_TOTAL.removesuffix("_total"):
            for s in fam.samples:
                if s.name == c.SPANS_RECEIVED_TOTAL:
                    out[s.labels.get(c.L_FORMAT, "")] = out.get(s.labels.get(c.L_FORMAT, ""), 0.0) + s.value
    return out


def wait_received(base: str, fmt: str, want: float, timeout_s: float = 30.0) -> float:
    """The count for ``fmt`` once it reaches ``want`` (the server may still be decoding the last post)."""
    end = time.monotonic() + timeout_s
    got = received(base).get(fmt, 0.0)
    while got < want and time.monotonic() < end:
        time.sleep(0.05)
        got = received(base).get(fmt, 0.0)
    return got


def main() -> dict[str, float]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10_000, help="child steps per round")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds of each; medians reported")
    args = ap.parse_args([] if __name__ != "__main__" else None)
    pin(1)  # before any thread starts: the sender threads inherit it
    logging.getLogger("flowscope").setLevel(logging.ERROR)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port, cpu=0, env={"FLOWSCOPE_RUN_STORE": "false", "FLOWSCOPE_LOKI_URL": ""})
    try:
        return _measure(base, args.steps, args.rounds)
    finally:
        server.terminate()
        server.wait(30)


def _measure(base: str, steps: int, rounds: int) -> dict[str, float]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=base + c.OTLP_TRACES_PATH),
                                                   max_queue_size=max(2048, 2 * steps)))
    otel = provider.get_tracer("bench")

    def otel_round() -> float:
        t = time.process_time()
        with otel.start_as_current_span("checkout", attributes={"flowscope.workflow": "checkout"}):
            for _ in range(steps):
                with otel.start_as_current_span("SELECT orders"):
                    pass
        provider.force_flush(60_000)
        return time.process_time() - t

    sink = sdk.configure(mode="remote", endpoint=base)  # the defaults an app gets
    tracer = sdk.WorkflowTracer(service="bench")

    def flowscope_round() -> float:
        t = time.process_time()
        with tracer.workflow("checkout"):
            for _ in range(steps):
                with tracer.step("database", "postgres", "SELECT orders"):
                    pass
        ok = sdk.flush(60)
        took = time.process_time() - t
        assert ok, "flush did not finish"
        return took

    # one warm-up round each: imports, connections, first-use caches
    otel_round()
    flowscope_round()
    times: dict[str, list[float]] = {"otel": [], "flowscope": []}
    for _ in range(rounds):
        times["otel"].append(otel_round() / (steps + 1) * 1e6)
        times["flowscope"].append(flowscope_round() / (steps + 1) * 1e6)
    total = (rounds + 1) * (steps + 1)
    got_native = wait_received(base, c.FORMAT_NATIVE, total)
    got_otlp = wait_received(base, c.FORMAT_OTLP_PROTOBUF, total)
    dropped = getattr(sink, "dropped", 0)
    sdk.shutdown()
    provider.shutdown()
    res = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(o / f for o, f in zip(times["otel"], times["flowscope"], strict=True))
    print("== Remote mode: the app's CPU per step, sender thread and delivery (flush) included ==")
    print(f"  {rounds} alternating rounds of a workflow root + {steps:,} child steps; server pinned to CPU 0, app to 1")
    print(f"  OpenTelemetry SDK, BatchSpanProcessor + OTLP/HTTP protobuf  {res['otel']:6.2f} us/step   (baseline)")
    print(f"  Flowscope WorkflowTracer, remote (RemoteSink)               {res['flowscope']:6.2f} us/step   "
          f"= {ratio:.1f}x cheaper (median of paired rounds; target >= {TARGET:g}x)")
    print("  per round, OTel / Flowscope us/step: "
          + ", ".join(f"{o:.1f}/{f:.2f}" for o, f in zip(times["otel"], times["flowscope"], strict=True)))
    print(f"  spans the server received: Flowscope {int(got_native):,} of {total:,} (SDK drops: {dropped}), "
          f"OTel {int(got_otlp):,} of {total:,}")
    return {**res, "ratio": ratio, "lost_flowscope": total - got_native, "lost_otel": total - got_otlp}


if __name__ == "__main__":
    main()
