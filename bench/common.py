"""Helpers shared by the benchmarks: OTLP batch building, processes, RSS."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import contextlib

from tests.otlp_data import request, span


def otlp_batch(n_spans: int = 1000, spans_per_trace: int = 10, seed: int = 1):
    """An ExportTraceServiceRequest of ``n_spans`` realistic spans, as OTel's HTTP/DB instrumentations write them.

    Each trace: one SERVER root with the usual ~11 HTTP server attributes and
    CLIENT children (database, cache, HTTP client, messaging) with 6-8 each.
    """
    rng = random.Random(seed)
    spans = []
    ops = [
        ("SELECT orders", {"db.system": "postgresql", "db.name": "shop", "db.operation": "SELECT",
                           "db.statement": "SELECT id, total, status FROM orders WHERE customer_id = $1",
                           "server.address": "db-1.internal", "server.port": 5432,
                           "network.peer.address": "10.0.3.7"}),
        ("GET", {"db.system": "redis", "db.operation": "GET", "db.statement": "GET cart:*",
                 "server.address": "cache-1.internal", "server.port": 6379, "network.peer.address": "10.0.4.2"}),
        ("POST", {"http.request.method": "POST", "url.full": "https://payments.example.com/v1/charges",
                  "server.address": "payments.example.com", "server.port": 443,
                  "http.response.status_code": 200, "network.protocol.version": "1.1", "peer.service": "payments"}),
        ("orders publish", {"messaging.system": "kafka", "messaging.destination.name": "orders",
                            "messaging.operation": "publish", "server.address": "kafka-1.internal",
                            "server.port": 9092, "messaging.kafka.message.key": "order-42"}),
    ]
    wfs = ["login", "product_search", "cart_update", "checkout"]
    now = time.time_ns()
    while len(spans) < n_spans:
        wf = rng.choice(wfs)
        root = span(f"POST /api/{wf}", kind=2, attrs={
            "http.request.method": "POST", "http.route": f"/api/{wf}", "url.path": f"/api/{wf}", "url.scheme": "https",
            "server.address": "shop.example.com", "server.port": 443, "network.protocol.version": "1.1",
            "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0",
            "client.address": f"203.0.113.{rng.randrange(255)}", "http.response.status_code": 200,
            "flowscope.workflow": wf}, start=now, duration_ns=rng.randint(10**7, 10**9))
        kids = []
        for _ in range(spans_per_trace - 1):
            name, attrs = rng.choice(ops)
            kids.append(span(name, trace_id=root["trace_id"], parent=root["span_id"], kind=3, attrs=attrs,
                             start=now, duration_ns=rng.randint(10**5, 10**8)))
        spans += kids + [root]
    return request(spans[:n_spans], service="shop", resource={
        "service.version": "1.4.2", "service.instance.id": "shop-7c9f", "deployment.environment": "prod",
        "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.27.0", "host.name": "node-3", "process.pid": 4242})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})


def start_server(port: int, cpu: int | str = 0, env: dict | None = None) -> subprocess.Popen:
    """`flowscope serve` in its own process, pinned to ``cpu`` (one CPU, or a taskset list such as "0,1").
    One HTTP worker (the serving process itself) unless ``env`` says otherwise: the benches read its CPU time."""
    e = {**os.environ, "FLOWSCOPE_LOG_LEVEL": "WARNING", "FLOWSCOPE_WORKERS": "1", **(env or {})}
    p = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "flowscope", "serve", "--port",
                          str(port), "--series-limit", "100000"], cwd=ROOT, env=e,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return wait_healthy(p, port)


def wait_healthy(p: subprocess.Popen, port: int, timeout_s: float = 30.0, what: str = "server") -> subprocess.Popen:
    """``p`` once its /api/v1/health answers on ``port``; killed and RuntimeError after ``timeout_s``."""
    import requests
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).ok:
                return p
        except requests.RequestException:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError(f"{what} did not start")
