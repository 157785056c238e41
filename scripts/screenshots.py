#!/usr/bin/env python3
"""Screenshots of the run page, as a person sees it, into ``docs/screenshots/``.

Use this after changing ``backend/runs/templates/run.html`` or the run-page view, then look at the pictures:
they are how the page was checked by eye (issue 10). Three runs are ingested over HTTP into a fresh server
with a temporary SQLite store, then opened in headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright):

- ``demo-run.png``: a failing ``checkout`` run of ``flowscope demo`` (seeded) with its CPU profile, the
  failing payment span selected; ``demo-run-lower.png``: its time travel, errors and flame graph.
- ``otlp-two-services.png``: a Python frontend calling an inventory service that queries PostgreSQL,
  exported by two OpenTelemetry SDK providers (two resources) in separate requests, the inventory
  service's first; the database span selected.
- ``run-1000-spans.png``: a 1,000-span batch job (199 accounts reconciled, one bank call failing), as it
  opens (folded); ``run-1000-spans-failure.png``: the same after "Next failed span" twice.

Everything is fixed (times, ids, seeds, the viewport), so the same checkout gives the same pictures::

    .venv/bin/python scripts/screenshots.py                  # writes docs/screenshots/*.png
    .venv/bin/python scripts/screenshots.py --out /tmp/shots

Each PNG is a 256-colour palette (Pillow), about 50 KB, and must stay under :data:`MAX_BYTES`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from werkzeug.serving import make_server

from backend.app import create_app
from exporter import conventions as c
from exporter.config import load_config
from exporter.demo import generate_profile, generate_run
from exporter.runtime import build

OUT = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}
MAX_BYTES = 200_000
T0_S = 1_748_856_600  # 2025-06-02 09:30:00 UTC: every run starts here (the store keeps them: see main)
T0 = T0_S * 10**9
MS = 1_000_000
DEMO_SEED = 58  # a checkout whose card is declined (exporter.demo.generate_run)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--font-render-hinting=none", "--force-color-profile=srgb"]


class SeededIds(IdGenerator):
    """Trace and span ids from a seeded RNG, so each picture shows the same ids every time."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.rng.getrandbits(128) or 1


def _provider(url: str, seed: int, **resource) -> TracerProvider:
    p = TracerProvider(resource=Resource(resource), id_generator=SeededIds(seed))
    p.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url + c.OTLP_TRACES_PATH, timeout=10),
                                            max_export_batch_size=1000, max_queue_size=4096,
                                            schedule_delay_millis=60_000))
    return p


def _span(tracer, name, parent, start_ms, end_ms, kind=SpanKind.INTERNAL, attrs=None, events=(), error=None):
    """One finished span at fixed offsets from :data:`T0`; ``parent`` is a span or a SpanContext."""
    ctx = None
    if parent is not None:
        ctx = trace.set_span_in_context(parent if not isinstance(parent, SpanContext) else NonRecordingSpan(parent))
    s = tracer.start_span(name, context=ctx, kind=kind, attributes=attrs or {}, start_time=T0 + int(start_ms * MS))
    for ev_name, ev_ms, ev_attrs in events:
        s.add_event(ev_name, ev_attrs, timestamp=T0 + int(ev_ms * MS))
    if error is not None:
        s.set_status(Status(StatusCode.ERROR, error))
    s.end(end_time=T0 + int(end_ms * MS))
    return s


def ingest_demo(url: str) -> str:
    """A seeded ``checkout`` run of the demo generator, posted as native JSON with its profile."""
    rng = random.Random(DEMO_SEED)
    batch = generate_run(rng, T0_S, "checkout")
    ids: dict[str, str] = {}
    for s in batch["steps"]:  # the generator draws span ids from os.urandom: make them fixed
        ids[s["span_id"]] = f"{DEMO_SEED:04x}{len(ids) + 1:012x}"
    for s in batch["steps"]:
        s["span_id"] = ids[s["span_id"]]
        if s.get("parent_span_id"):
            s["parent_span_id"] = ids[s["parent_span_id"]]
    cid = batch["workflows"][0]["correlation_id"]
    r = requests.post(url + c.NATIVE_SPANS_PATH, data=orjson.dumps(batch),
                      headers={"Content-Type": "application/json"}, timeout=10)
    r.raise_for_status()
    r = requests.post(url + c.PROFILES_PATH, params={"workflow": "checkout", "correlation_id": cid},
                      data=generate_profile(rng, "checkout").encode(), headers={"Content-Type": "text/plain"},
                      timeout=10)
    r.raise_for_status()
    return cid


def ingest_two_services(url: str) -> str:
    """A Python frontend calling a Node inventory service: two providers, two requests, inventory's first."""
    frontend = _provider(url, 1, **{"service.name": "shop-frontend", "service.version": "1.4.2",
                                    "telemetry.sdk.language": "python", "deployment.environment.name": "prod",
                                    "k8s.pod.name": "shop-frontend-7d9c5-x2kq4"})
    inventory = _provider(url, 2, **{"service.name": "inventory", "service.version": "2.3.1",
                                     "telemetry.sdk.language": "nodejs", "deployment.environment.name": "prod",
                                     "k8s.pod.name": "inventory-5b8f6-qm7zl"})
    ft, it = frontend.get_tracer("flask"), inventory.get_tracer("@opentelemetry/instrumentation-http")
    root = ft.start_span("GET", kind=SpanKind.SERVER, start_time=T0, attributes={
        "http.request.method": "GET", "http.route": "/checkout", "url.path": "/checkout", "url.scheme": "https",
        "http.response.status_code": 200, "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64) Firefox/139.0",
        "enduser.id": "ana@example.com", "client.address": "203.0.113.24"})
    ctx = trace.set_span_in_context(root)
    _span(ft, "GET", root, 4, 7, SpanKind.CLIENT, {"db.system.name": "redis", "db.operation.name": "GET",
                                                   "server.address": "redis-cart", "server.port": 6379},
          events=[("cache miss", 6.8, {"cache.key": "cart:ana"})])
    call = ft.start_span("GET", context=ctx, kind=SpanKind.CLIENT, start_time=T0 + 9 * MS, attributes={
        "http.request.method": "GET", "server.address": "inventory.shop.svc", "server.port": 8080,
        "url.full": "http://inventory.shop.svc:8080/items?ids=1042,1043,2210", "http.response.status_code": 200,
        "network.protocol.version": "1.1"})
    server = _span(it, "GET", call.get_span_context(), 12, 141, SpanKind.SERVER, {
        "http.request.method": "GET", "http.route": "/items", "url.path": "/items", "url.query": "ids=1042,1043,2210",
        "http.response.status_code": 200, "server.address": "inventory.shop.svc"},
        events=[("stock checked", 139, {"items.requested": 3, "items.available": 3})])
    ictx = server.get_span_context()
    _span(it, "pg.connect", ictx, 14, 21, SpanKind.CLIENT, {"db.system.name": "postgresql",
                                                           "server.address": "pg-inventory", "server.port": 5432})
    _span(it, "SELECT inventory.items", ictx, 22, 118, SpanKind.CLIENT, {
        "db.system.name": "postgresql", "db.namespace": "inventory", "db.operation.name": "SELECT",
        "db.collection.name": "items", "server.address": "pg-inventory", "server.port": 5432,
        "db.query.text": "SELECT id, sku, name, stock, reserved FROM items WHERE id = ANY($1) AND warehouse_id = $2"
                         " ORDER BY id"})
    _span(it, "SELECT inventory.reservations", ictx, 119, 135, SpanKind.CLIENT, {
        "db.system.name": "postgresql", "db.namespace": "inventory", "db.operation.name": "SELECT",
        "db.collection.name": "reservations", "server.address": "pg-inventory",
        "db.query.text": "SELECT item_id, sum(quantity) FROM reservations WHERE item_id = ANY($1) GROUP BY item_id"})
    inventory.force_flush()  # the second service's request arrives first: its spans wait for their root
    call.end(end_time=T0 + 146 * MS)
    _span(ft, "render checkout.html", root, 148, 171, attrs={"template.name": "checkout.html"})
    root.end(end_time=T0 + 176 * MS)
    frontend.force_flush()
    frontend.shutdown()
    inventory.shutdown()
    return f"{root.get_span_context().trace_id:032x}"


def ingest_big_run(url: str) -> str:
    """A nightly batch job of exactly 1,000 spans: 199 accounts × 5 spans, plus the root and 4 more."""
    rng = random.Random(1000)
    p = _provider(url, 3, **{"service.name": "ledger-worker", "service.version": "3.0.0",
                             "telemetry.sdk.language": "python"})
    t = p.get_tracer("worker")
    root = t.start_span("reconcile ledgers", start_time=T0, attributes={"flowscope.workflow": "reconcile_ledgers",
                                                                         "job.batch": "2025-06-01"})
    _span(t, "SET lock:reconcile", root, 0.2, 1.1, SpanKind.CLIENT, {"db.system.name": "redis"})
    _span(t, "SELECT accounts", root, 1.3, 18.6, SpanKind.CLIENT, {
        "db.system.name": "postgresql",
        "db.query.text": "SELECT id FROM accounts WHERE reconciled_on < $1"})
    now = 20.0
    for i in range(199):
        acct = f"acct-{10_000 + i * 7}"
        start = now
        a = t.start_span(f"reconcile {acct}", context=trace.set_span_in_context(root),
                         start_time=T0 + int(start * MS), attributes={"account.id": acct})
        now += 0.3
        q = rng.uniform(3, 9) * (6 if i == 57 else 1)  # one slow query
        _span(t, "SELECT ledger_entries", a, now, now + q, SpanKind.CLIENT, {
            "db.system.name": "postgresql",
            "db.query.text": "SELECT amount, currency FROM ledger_entries WHERE account_id = $1 AND day = $2"})
        now += q + 0.2
        b = rng.uniform(12, 40)
        failed = i == 137
        _span(t, "POST", a, now, now + b, SpanKind.CLIENT, {
            "http.request.method": "POST", "server.address": "api.bank.example", "url.template": "/v2/balances",
            "url.full": "https://api.bank.example/v2/balances", "http.response.status_code": 503 if failed else 200},
            error="503 Service Unavailable" if failed else None)
        now += b + 0.2
        u = rng.uniform(2, 6)
        _span(t, "UPDATE balances", a, now, now + u, SpanKind.CLIENT, {
            "db.system.name": "postgresql", "db.query.text": "UPDATE balances SET amount = $1 WHERE account_id = $2"})
        now += u + 0.2
        _span(t, "SET balance", a, now, now + 0.6, SpanKind.CLIENT, {"db.system.name": "redis"})
        now += 0.8
        if failed:
            a.set_status(Status(StatusCode.ERROR, "bank balance unavailable"))
        a.end(end_time=T0 + int(now * MS))
        now += rng.uniform(0.1, 0.6)
    _span(t, "INSERT reconcile_reports", root, now, now + 11, SpanKind.CLIENT, {
        "db.system.name": "postgresql",
        "db.query.text": "INSERT INTO reconcile_reports (day, accounts) VALUES ($1, $2)"})
    _span(t, "publish ledger.reconciled", root, now + 11.5, now + 14, SpanKind.PRODUCER, {
        "messaging.system": "kafka", "messaging.destination.name": "ledger.reconciled"})
    root.end(end_time=T0 + int((now + 15) * MS))
    p.force_flush()
    p.shutdown()
    return f"{root.get_span_context().trace_id:032x}"


def _save(png: bytes, path: Path) -> int:
    """Write a screenshot as a 256-colour PNG: a UI has few colours, so each pixel stays within a few levels
    of the original (max-coverage quantising keeps small swatches' colours; median cut turned blue to teal),
    at about a quarter of the size."""
    from PIL import Image  # matplotlib's dependency

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    path.write_bytes(buf.getvalue())
    return len(buf.getvalue())


def shoot(browser, url: str, out: Path) -> dict[str, int]:
    """Open each run page, select the span worth seeing, and save the useful part of the page."""
    sizes = {}

    def page_for(run_id: str, height: int = VIEWPORT["height"]):
        page = browser.new_page(viewport={"width": VIEWPORT["width"], "height": height})
        page.goto(f"{url}{c.RUN_PAGE_PATH}/{run_id}")
        page.wait_for_selector("body[data-step]")
        page.add_style_tag(content="*, *::before, *::after { transition: none !important; caret-color: transparent; }")
        return page

    def save(page, name: str, clip: dict | None = None):
        sizes[name] = _save(page.screenshot(clip=clip, full_page=clip is not None), out / name)

    demo = page_for(RUNS["demo"])
    demo.click(".row[data-layer='external']")
    demo.wait_for_selector("#details .full-name")
    save(demo, "demo-run.png")
    top = demo.evaluate("() => document.querySelector('main > h2:nth-of-type(2)').getBoundingClientRect().top"
                        " + window.scrollY - 8")
    bottom = demo.evaluate("() => document.querySelector('#db-findings').getBoundingClientRect().bottom"
                           " + window.scrollY + 16")
    save(demo, "demo-run-lower.png", {"x": 0, "y": top, "width": VIEWPORT["width"], "height": bottom - top})
    demo.close()

    two = page_for(RUNS["two"])
    two.click(".row:has-text('SELECT inventory.items')")
    two.wait_for_selector("#details .full-name")
    save(two, "otlp-two-services.png")
    two.close()

    big = page_for(RUNS["big"])
    save(big, "run-1000-spans.png")
    big.click("#next-failure")  # the failing account, open among 200 folded ones
    big.click("#next-failure")  # and the bank call that failed it
    big.wait_for_selector("#details .error")
    big.evaluate("() => window.scrollTo(0, 0)")
    save(big, "run-1000-spans-failure.png")
    big.close()

    # is the long run responsive? (figures printed, not asserted: they depend on the machine)
    big = page_for(RUNS["big"])
    nav = big.evaluate("""() => { const n = performance.getEntriesByType("navigation")[0];
        return {html_kb: n.transferSize / 1000, server_ms: n.responseEnd - n.requestStart,
                dom_ready_ms: n.domContentLoadedEventEnd - n.startTime, load_ms: n.loadEventEnd - n.startTime}; }""")
    fold = big.evaluate("""() => { const click = id => { const t = performance.now();
        document.getElementById(id).click(); document.body.offsetHeight; return performance.now() - t; };
        return {expand_all_ms: click("expand-all"), collapse_all_ms: click("collapse-all")}; }""")
    big.close()
    print("1,000-span run page: " + ", ".join(f"{k} {v:.0f}" for k, v in {**nav, **fold}.items()))
    return sizes


RUNS: dict[str, str] = {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="directory for the PNG files (default docs/screenshots)")
    args = ap.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium is not installed (scripts/bootstrap installs it from Debian)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    with tempfile.TemporaryDirectory() as tmp:
        # the runs start at a fixed past time: keep them ~100 years so the store's first sweep leaves them
        ex = build(load_config({"database_url": f"sqlite:///{tmp}/screens.db", "run_retention_s": 100 * 365 * 86400},
                               environ={}))
        server = make_server("127.0.0.1", 0, create_app(ex), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            RUNS["demo"] = ingest_demo(url)
            RUNS["two"] = ingest_two_services(url)
            RUNS["big"] = ingest_big_run(url)
            if not ex.pipeline.recorder.flush():
                print("the run store did not flush", file=sys.stderr)
                return 1
            for name, run_id in RUNS.items():
                got = requests.get(f"{url}{c.RUNS_PATH}/{run_id}", timeout=10)
                got.raise_for_status()
                print(f"{name}: {url}{c.RUN_PAGE_PATH}/{run_id} ({len(json.dumps(got.json()['tree']))} B of tree)")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    sizes = shoot(browser, url, args.out)
                finally:
                    browser.close()
        finally:
            server.shutdown()
            thread.join(5)
            ex.close()
    for name, size in sizes.items():
        print(f"{args.out / name}: {size / 1000:.0f} KB")
    return 0 if all(s < MAX_BYTES for s in sizes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
