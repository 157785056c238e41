"""The run page in a real headless Chromium (Debian's package), driven by Playwright."""

import pytest
import requests

from exporter.profiles import Profile
from exporter.sdk import ErrorLogger, WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from tests.conftest import require_binary

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(tmp_path):
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _run_with_everything(ex):
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with pytest.raises(ConnectionRefusedError):
        with t.workflow("checkout", user="ana") as run:
            with t.step("frontend", "web-app", "checkout_page"):
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

    rows = page.locator(".row")
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
    assert "external / stripe: connection to 10.0.0.7:443 refused" in errors
    assert "Then failed its callers too: frontend / web-app" in errors
    page.click("#errors details summary")
    assert "Traceback" in page.inner_text("#errors details pre")

    # the run's flame graph is on the page: the SVG document inside it has a frame per function
    titles = """() => {
        const doc = document.querySelector('#flamegraph object').contentDocument;
        return doc ? Array.from(doc.querySelectorAll('g.frame title')).map(t => t.textContent) : []; }"""
    page.wait_for_function(f"({titles})().length > 0")
    frames = page.evaluate(titles)
    assert frames and any(f.startswith("charge\n") for f in frames) and any(f.startswith("price\n") for f in frames)
    logs = page.get_attribute("#logs-link", "href")
    assert "/explore?" in logs and cid in requests.utils.unquote(logs)
    svg = requests.get(srv.url + page.get_attribute("#flamegraph-link", "href"), timeout=5)
    assert svg.status_code == 200 and svg.headers["Content-Type"].startswith("image/svg+xml")
    assert "charge" in svg.text and "price" in svg.text
    shot = tmp_path / "run.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
