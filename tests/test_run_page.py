"""The run page in a real headless Chromium (Debian's package), driven by Playwright."""

import json
import re
import time

import pytest
import requests

from exporter import conventions as c
from exporter.model import Span
from exporter.profiles import Profile
from exporter.sdk import ErrorLogger, WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from tests.conftest import require_binary
from tests.otlp_data import sdk_provider

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _run_with_everything(ex):
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with (pytest.raises(ConnectionRefusedError), t.workflow("checkout", user="ana") as run,
          t.step("frontend", "web-app", "checkout_page")):
        with t.step("cache", "redis", "load_cart", state={"cart": {"items": 2}}):
            pass
        with t.step("api", "orders", "price", state={"cart": {"items": 2, "total": 30}}):
            pass
        with t.step("external", "stripe", "charge"):
            raise ConnectionRefusedError("connection to 10.0.0.7:443 refused")
    ErrorLogger(InProcessSink(ex.pipeline)).log_error("PaymentFailed", "payment failed", "api", "orders",
                                                      correlation_id=run.correlation_id)
    ex.pipeline.record_profile(Profile(
        "checkout", {"charge": 0.3}, run.correlation_id, {"main;checkout;charge": 30, "main;checkout;price": 10},
        100.0), "folded")
    assert ex.pipeline.recorder.flush()
    return run.correlation_id


def test_run_page_waterfall_replay_errors_and_links(ex, serve, browser, tmp_path):
    cid = _run_with_everything(ex)
    srv = serve(ex)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{srv.url}/runs/{cid}")
    page.wait_for_selector("body[data-step='0']")

    rows = page.locator(".row[data-span-id]")
    assert rows.count() == 5  # the run and its four steps
    assert page.locator(".row[data-layer='external'].failed").count() == 1
    assert page.locator(".row.failed .bar.failed").count() >= 1
    crit = page.eval_on_selector_all(".row[data-critical='true'] .name", "els => els.map(e => e.textContent.trim())")
    assert any("charge" in n for n in crit) and any("checkout_page" in n for n in crit)
    assert "checkout_page" in page.inner_text("#step-title")  # step 0: the frontend step, no state yet
    assert page.inner_text("#state").strip() == "{}"

    page.click("#next")
    page.wait_for_selector("body[data-step='1']")
    assert "load_cart" in page.inner_text("#step-title")
    assert '"items": 2' in page.inner_text("#state")
    page.click("#next")
    page.wait_for_selector("body[data-step='2']")
    assert "price" in page.inner_text("#step-title")
    diff = page.inner_text("#diff")
    assert "cart.total" in diff and "added" in diff and "30" in diff

    page.click(".row[data-layer='external']")   # clicking a waterfall row jumps to its step
    page.wait_for_selector("body[data-step='3']")
    assert "stripe" in page.inner_text("#step-title") and "error" in page.inner_text("#step-title")
    assert page.locator("#next").is_disabled()
    assert "did not change" in page.inner_text("#diff")

    page.keyboard.press("ArrowLeft")
    page.wait_for_selector("body[data-step='2']")
    assert page.locator(".row.selected").get_attribute("data-step") == "2"

    errors = page.inner_text("#errors")
    assert "ConnectionRefusedError" in errors and "PaymentFailed" in errors
    assert "seen 1×" in errors and "Try: Connection refused or reset" in errors   # the knowledge base's advice
    # the refused connection failed the stripe step, then its caller and the run: one entry, where it started
    assert page.locator("#errors .error").count() == 2
    assert "external / stripe · charge: connection to 10.0.0.7:443 refused" in errors
    assert "Then failed its callers too: frontend / web-app · checkout_page" in errors
    page.click("#errors details summary")
    assert "Traceback" in page.inner_text("#errors details pre")

    # the run's flame graph is on the page: the SVG document inside it has a frame per function
    frames = page.eval_on_selector_all("#flamegraph svg g.frame title", "ts => ts.map(t => t.textContent)")
    assert frames and any(f.startswith("charge\n") for f in frames) and any(f.startswith("price\n") for f in frames)
    logs = page.get_attribute("#logs-link", "href")
    assert "/explore?" in logs and cid in requests.utils.unquote(logs)
    svg = requests.get(srv.url + page.get_attribute("#flamegraph-link", "href"), timeout=5)
    assert svg.status_code == 200 and svg.headers["Content-Type"].startswith("image/svg+xml")
    assert "charge" in svg.text and "price" in svg.text
    shot = tmp_path / "run.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


LONG_OP = "reconcile_" + "ledger_entries_for_settlement_batch_" * 8
LONG_OP = LONG_OP[:300]


def _stored_run(ex) -> str:
    """A run written straight to the store (past ingest's 200-character name cap): a database span with its
    statement, a 300-character operation, and a refused connection in a client span that its callers report
    as their own exceptions (the root's error_type is the caller's wrapper)."""
    trace, t0 = "ab" * 16, time.time_ns() - 5_000_000_000
    ms = 1_000_000

    def span(sid, parent, layer, comp, op, start, end, **kw):  # every span a step, as OTLP's are
        return Span(trace_id=trace, span_id=sid, workflow="checkout", layer=layer, component=comp, operation=op,
                    start_ns=t0 + start * ms, end_ns=t0 + end * ms, status=kw.pop("status", "ok"),
                    parent_span_id=parent, correlation_id="run-debugger", service="shop", **kw)

    spans = [
        span("a000000000000001", None, "api", "shop", "POST /checkout", 0, 730, status="error",
             error_type="CheckoutFailed", error_message="checkout failed: payment"),
        span("a000000000000002", "a000000000000001", "database", "postgres", "SELECT carts", 10, 60,
             attributes={"db.statement": "SELECT * FROM carts WHERE user_id = $1", "db.system": "postgresql"}),
        span("a000000000000003", "a000000000000001", "api", "payments", "pay", 70, 700, status="error",
             error_type="PaymentError", error_message="payment failed"),
        span("a000000000000004", "a000000000000003", "external", "stripe", "POST /v1/charges", 80, 690,
             status="error", error_type="ConnectionRefusedError", error_message="connection to 10.0.0.7:443 refused"),
        span("a000000000000005", "a000000000000001", "worker", "ledger", LONG_OP, 600, 720),
    ]
    ex.runs.write([*spans, Profile("checkout", {"pay": 0.3}, "run-debugger",
                                   {"main;checkout;pay": 30, "main;checkout;load_cart": 10}, 100.0, t0)])
    return "run-debugger"


def test_run_page_is_a_debugger(ex, serve, browser):
    cid = _stored_run(ex)
    srv = serve(ex)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{srv.url}/runs/{cid}")
    page.wait_for_selector("body[data-step='0']")

    # a time axis with round, labelled ticks, aligned with the bars' track
    labels = page.eval_on_selector_all("#axis .tick span", "els => els.map(e => e.textContent.trim())")
    assert labels[:3] == ["0 ms", "100 ms", "200 ms"] and labels[-1] == "700 ms"
    box = """sel => { const r = document.querySelector(sel).getBoundingClientRect(); return [r.left, r.width]; }"""
    axis_track = page.evaluate(box, "#axis .track")
    row_track = page.evaluate(box, ".row[data-span-id='a000000000000001'] .track")
    assert axis_track == pytest.approx(row_track, abs=0.5)
    tick = page.evaluate(box, "#axis .tick:nth-child(2)")  # 100 ms of 730 ms
    assert tick[0] == pytest.approx(axis_track[0] + axis_track[1] * 100 / 730, abs=1)
    bar = page.evaluate(box, ".row[data-span-id='a000000000000002'] .bar")  # starts at 10 ms
    assert bar[0] == pytest.approx(axis_track[0] + axis_track[1] * 10 / 730, abs=1)

    # clicking a database span (not a step of the replay's choosing) shows its attributes
    page.click(".row[data-layer='database']")
    page.wait_for_selector("#details[data-span-id='a000000000000002']")
    pane = page.inner_text("#details")
    assert "db.statement" in pane and '"SELECT * FROM carts WHERE user_id = $1"' in pane
    assert pane.index("db.statement") < pane.index("db.system")  # sorted keys

    # a 300-character name is whole in the row's title and in the details pane
    long_row = ".row[data-span-id='a000000000000005']"
    assert LONG_OP in page.get_attribute(f"{long_row} .name", "title")
    page.click(long_row)
    page.wait_for_selector("#details[data-span-id='a000000000000005']")
    assert page.inner_text("#details-name") == f"worker / ledger / {LONG_OP}"

    # one failure, once: the refused connection, failing through payments and the root (named differently)
    assert page.locator("#errors .error").count() == 1
    errors = page.inner_text("#errors")
    assert "ConnectionRefusedError in external / stripe · POST /v1/charges" in errors
    chain = r"callers too: api / payments · pay \(as PaymentError\) → api / shop · POST /checkout \(as Checkout"
    assert re.search(chain, errors), errors
    page.click("#errors .span-link[data-span-id='a000000000000001']")
    page.wait_for_selector("#details[data-span-id='a000000000000001']")
    assert "CheckoutFailed" in page.inner_text("#details")

    # the flame graph has a viewBox and fills its container, at any page width
    svg = "#flamegraph svg"
    assert page.get_attribute(svg, "viewBox").startswith("0 0 ")
    widths = "() => [document.querySelector('#flamegraph svg').getBoundingClientRect().width," \
             " document.querySelector('#flamegraph').clientWidth]"
    for vw in (1400, 800):
        page.set_viewport_size({"width": vw, "height": 900})
        svg_w, box_w = page.evaluate(widths)
        assert svg_w == pytest.approx(box_w, abs=1) and box_w > vw / 2
    href = page.get_attribute("#errors .attribution-link", "href")  # what the runs this error hit share
    assert href.startswith(c.ERROR_PAGE_PATH + "/") and href.endswith("#what-they-share")
    page.click("#errors .attribution-link")  # the error group's page, at its attribution
    page.wait_for_selector("#what-they-share")
    page.close()


def test_an_otlp_consumer_shows_its_events_link_resource_and_linked_producer(ex, serve, browser):
    """A queue consumer whose span starts a new trace linked to its producer, sent by the real OpenTelemetry SDK
    over HTTP: its page shows the span's events, link and resource, and the producer as a linked run."""
    from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags

    srv = serve(ex)
    shop = sdk_provider(srv, {"service.name": "shop", "service.version": "1.4.2"})
    worker = sdk_provider(srv, {"service.name": "worker", "service.version": "0.9.0", "k8s.pod.name": "worker-7d9"})
    tracer = shop.get_tracer("t")
    with (tracer.start_as_current_span("checkout", kind=SpanKind.SERVER,
                                       attributes={"flowscope.workflow": "checkout"}) as root,
          tracer.start_as_current_span("orders publish", kind=SpanKind.PRODUCER,
                                       attributes={"messaging.system": "kafka"}) as pub):
        produced = pub.get_span_context()
    gone = SpanContext(int("ee" * 16, 16), int("ff" * 8, 16), is_remote=True, trace_flags=TraceFlags(1))
    with worker.get_tracer("t").start_as_current_span(
            "orders process", kind=SpanKind.CONSUMER, attributes={"flowscope.workflow": "fulfil"},
            links=[Link(produced, {"messaging.operation": "publish"}), Link(gone)]) as cons:  # one never stored
        cons.add_event("retry", {"attempt": 2, "reason": "broker busy"})
    shop.shutdown()
    worker.shutdown()
    assert ex.pipeline.recorder.flush()
    producer, consumer = f"{root.get_span_context().trace_id:032x}", f"{cons.get_span_context().trace_id:032x}"
    cons_id = f"{cons.get_span_context().span_id:016x}"

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{srv.url}{c.RUN_PAGE_PATH}/{consumer}")
    page.wait_for_selector("body[data-step='0']")
    page.click(f".row[data-span-id='{cons_id}']")
    page.wait_for_selector(f"#details[data-span-id='{cons_id}']")
    assert page.inner_text("#details-name") == "queue / worker / orders process"
    ids = page.inner_text("#details table.ids")
    assert re.search(r"kind\s+consumer", ids) and re.search(r"service\s+worker", ids)
    event = page.inner_text("#details .event")  # the event's name, its time and its attributes
    assert event.startswith("retry") and re.search(r'attempt\s+2', event) and re.search(r'reason\s+"broker busy"',
                                                                                         event)
    resource = page.inner_text("#details table.resource")
    assert re.search(r'service\.version\s+"0\.9\.0"', resource) and re.search(r'k8s\.pod\.name\s+"worker-7d9"',
                                                                              resource)
    links = page.locator("#details .link")
    assert links.count() == 2
    assert producer in links.nth(0).inner_text() and re.search(r'messaging\.operation\s+"publish"',
                                                                links.nth(0).inner_text())
    assert page.get_attribute("#details .link >> nth=0 >> a", "href") == f"{c.RUN_PAGE_PATH}/{producer}"

    # the header names the producer's run (stored runs only), as a link to its page
    header = page.locator("#linked-runs a")
    assert header.count() == 1 and header.inner_text() == f"→ checkout · {producer}"
    header.click()
    page.wait_for_url(f"**{c.RUN_PAGE_PATH}/{producer}")
    page.wait_for_selector("body[data-step]")
    assert page.inner_text("#title") == "checkout"
    assert page.inner_text("#linked-runs a") == f"← fulfil · {consumer}"  # and the producer points back

    # the link to a trace never stored is kept as given; following it is the not-found page, not an error
    page.go_back()
    page.wait_for_selector("body[data-step]")
    page.click(f".row[data-span-id='{cons_id}']")
    with page.expect_navigation() as nav:
        page.click("#details .link >> nth=1 >> a")
    assert nav.value.status == 404 and "ee" * 16 in page.inner_text("#message")
    page.close()


def test_an_otlp_run_with_flowscope_state_events_travels_in_time(ex, serve, browser):
    """``flowscope.state`` events sent by the OpenTelemetry SDK feed the time-travel panel like the SDK's state."""
    srv = serve(ex)
    provider = sdk_provider(srv, {"service.name": "importer"})
    tracer = provider.get_tracer("t")
    t0 = time.time_ns() - 10_000_000_000
    ms = 1_000_000
    root = tracer.start_span("import", attributes={"flowscope.workflow": "import"}, start_time=t0)
    from opentelemetry import trace

    ctx = trace.set_span_in_context(root)
    steps = [("read csv", {"rows": 10, "stage": "read"}),
             ("validate", {"stage": "validated", "rejected": ["row 7"]}),
             ("write", {"stage": "written"})]
    for i, (name, state) in enumerate(steps):
        s = tracer.start_span(name, context=ctx, start_time=t0 + (1 + 10 * i) * ms)
        s.add_event("flowscope.state", {"state": json.dumps(state)}, timestamp=t0 + (5 + 10 * i) * ms)
        s.end(end_time=t0 + (9 + 10 * i) * ms)
    root.end(end_time=t0 + 40 * ms)
    provider.shutdown()
    assert ex.pipeline.recorder.flush()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{srv.url}{c.RUN_PAGE_PATH}/{root.get_span_context().trace_id:032x}")
    page.wait_for_selector("body[data-step='0']")
    assert page.inner_text("#state").strip() == "{}"  # step 0 is the root: no state yet
    page.click("#next")
    page.wait_for_selector("body[data-step='1']")
    assert "read csv" in page.inner_text("#step-title")
    assert json.loads(page.inner_text("#state")) == {"rows": 10, "stage": "read"}
    page.click("#next")
    page.wait_for_selector("body[data-step='2']")
    assert json.loads(page.inner_text("#state")) == {"rows": 10, "stage": "validated", "rejected": ["row 7"]}
    changes = {r.split("\t")[0]: r.split("\t")[1:] for r in page.inner_text("#diff").splitlines()[1:]}
    assert changes == {"stage": ["changed", '"read"', '"validated"'], "rejected": ["added", "", '["row 7"]']}
    page.close()


def test_a_long_run_opens_folded_with_its_failure_open(ex, serve, browser):
    """451 spans: the root, 150 batches of 2 queries, one query failed. The page opens on the root and its batches,
    the failing batch open; a toggle, "Next failed span", the errors list and "Expand all" show the rest."""
    trace, t0, ms = "cd" * 16, time.time_ns() - 5_000_000_000, 1_000_000
    spans = [Span(trace_id=trace, span_id=f"{1:016x}", workflow="nightly", layer="worker", component="ledger",
                  operation="reconcile", start_ns=t0, end_ns=t0 + 1000 * ms, correlation_id="long-run")]
    for b in range(150):
        bid = f"{0x100 + b:016x}"
        spans.append(Span(trace_id=trace, span_id=bid, workflow="nightly", layer="worker", component="ledger",
                          operation=f"batch {b}", start_ns=t0 + (1 + 6 * b) * ms, end_ns=t0 + (6 + 6 * b) * ms,
                          parent_span_id=f"{1:016x}", correlation_id="long-run"))
        for q in range(2):
            bad = b == 100 and q == 1
            spans.append(Span(trace_id=trace, span_id=f"{0x10000 + 2 * b + q:016x}", workflow="nightly",
                              layer="database", component="postgres", operation=f"query {b}.{q}",
                              start_ns=t0 + (2 + 6 * b + 2 * q) * ms, end_ns=t0 + (3 + 6 * b + 2 * q) * ms,
                              status="error" if bad else "ok", parent_span_id=bid, correlation_id="long-run",
                              error_type="DeadlockDetected" if bad else None,
                              error_message="deadlock detected" if bad else None))
    ex.runs.write(spans)
    assert ex.pipeline.recorder.flush()
    failing = f"{0x10000 + 201:016x}"
    srv = serve(ex)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{srv.url}{c.RUN_PAGE_PATH}/long-run")
    page.wait_for_selector("body[data-step='0']")
    shown = ".row[data-span-id]:not(.hidden)"

    assert page.locator(shown).count() == 1 + 150 + 2  # the root, its batches, and the failing batch's queries
    assert page.inner_text("#fold-note").startswith("153 of 451 spans shown")
    assert page.locator(f".row[data-span-id='{failing}']").is_visible()
    assert page.locator(f".row[data-span-id='{0x100:016x}'] .hidden-count").inner_text() == "+2"
    assert not page.locator(f".row[data-span-id='{0x10000:016x}']").is_visible()

    page.click(f".row[data-span-id='{0x100:016x}'] .fold")  # unfold batch 0: its queries, and nothing selected
    assert page.locator(f".row[data-span-id='{0x10000:016x}']").is_visible()
    assert page.locator(shown).count() == 155 and page.inner_text("#fold-note") == "155 of 451 spans shown"
    assert page.get_attribute("#details", "data-span-id") != f"{0x100:016x}"

    page.click("#next-failure")
    page.wait_for_selector(f"#details[data-span-id='{failing}']")
    assert "DeadlockDetected" in page.inner_text("#details")

    page.click("#collapse-all")
    assert page.locator(shown).count() == 151 and not page.locator(f".row[data-span-id='{failing}']").is_visible()
    page.click(f"#errors .span-link[data-span-id='{failing}']")  # the errors list opens the way to its span
    page.wait_for_selector(f".row.selected[data-span-id='{failing}']", state="visible")
    assert page.locator(shown).count() == 153

    page.click("#expand-all")
    assert page.locator(shown).count() == 451 and page.inner_text("#fold-note") == "all 451 spans shown"
    page.close()
