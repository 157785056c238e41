"""The run page in a real headless Chromium (Debian's package), driven by Playwright."""

import re
import time

import pytest
import requests

from exporter.model import Span
from exporter.profiles import Profile
from exporter.sdk import ErrorLogger, WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from tests.conftest import require_binary

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

    def span(sid, parent, layer, comp, op, start, end, **kw):
        return Span(trace, sid, "checkout", layer, comp, op, t0 + start * ms, t0 + end * ms, kw.pop("status", "ok"),
                    parent, "run-debugger", "shop", **kw)  # every span a step, as OTLP's are

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
    page.close()
