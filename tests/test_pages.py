"""The home page and the runs list: where a person starts, server-rendered, from the run store."""

import re

import pytest

from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from tests.test_run_page import browser  # noqa: F401 - the fixture: Debian's Chromium through Playwright


def _traffic(ex, n=30):
    """n runs alternating checkout/login; every 7th times out in the database, with an http.route attribute."""
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    for i in range(n):
        try:
            with t.workflow("checkout" if i % 2 else "login"), \
                    t.step("database", "pg", "select", metadata={"http.route": "/checkout", "n": i}):
                if i % 7 == 0:
                    raise TimeoutError("db timed out after 5s")
        except TimeoutError:
            pass
    assert ex.pipeline.recorder.flush()


def _cids(html: str) -> list[str]:
    return re.findall(r'<tr class="run[^"]*" data-cid="([^"]+)"', html)


def test_home_shows_each_workflow_with_rate_errors_and_p95_and_the_failing_runs(ex, client):
    _traffic(ex)
    html = client.get("/").get_data(as_text=True)
    rows = dict(re.findall(r'<tr data-workflow="([^"]+)">\s*<td><a[^>]*>[^<]*</a></td>\s*<td class="num">(\d+)</td>',
                           html))
    assert rows == {"checkout": "15", "login": "15"}
    assert "TimeoutError" in html and 'data-fingerprint="' in html  # the failing runs and their open group
    failed_section = html.split("Newest failed runs")[1].split("Slowest runs")[0]
    assert len(_cids(failed_section)) == 5


@pytest.mark.parametrize("query,count", [
    ("", 30), ("?status=failed", 5), ("?status=ok", 25), ("?workflow=login", 15), ("?q=TIMED+OUT", 5),
    ("?attr=http.route=/checkout", 30), ("?attr=n=7", 1), ("?attr=n=70", 0), ("?min_duration_ms=100000", 0),
])
def test_the_runs_list_filters_like_a_person_types_them(ex, client, query, count):
    _traffic(ex)
    r = client.get("/runs" + query)
    assert r.status_code == 200
    assert len(_cids(r.get_data(as_text=True))) == count


def test_the_runs_list_pages_newest_first(ex, client):
    _traffic(ex, 60)
    first = client.get("/runs").get_data(as_text=True)
    second = client.get("/runs?page=2").get_data(as_text=True)
    a, b = _cids(first), _cids(second)
    assert len(a) == 50 and len(b) == 10 and not set(a) & set(b)
    assert 'id="next"' in first and 'id="next"' not in second and 'id="prev"' in second


@pytest.mark.parametrize("query,field", [("?window=3d", "window"), ("?status=done", "status"), ("?attr=x", "attr"),
                                         ("?min_duration_ms=abc", "min_duration_ms"), ("?page=0", "page")])
def test_a_bad_filter_is_shown_on_the_page_with_400(ex, client, query, field):
    r = client.get("/runs" + query)
    assert r.status_code == 400
    assert 'id="filter-error"' in r.get_data(as_text=True) and field in r.get_data(as_text=True)


def test_from_the_home_page_to_a_failed_run_in_a_browser(ex, serve, browser):  # noqa: F811
    _traffic(ex)
    srv = serve(ex)
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(srv.url + "/")
    page.click("#workflows a:text('login')")
    page.wait_for_url("**/runs?*workflow=login*")
    assert page.locator("tr.run").count() == 15
    page.select_option("select[name=status]", "failed")
    page.click("form.filters button")
    page.wait_for_url("**status=failed**")
    failed = page.locator("tr.run.failed")
    assert failed.count() == page.locator("tr.run").count() == 3  # i = 0, 14, 28
    failed.first.locator("a").click()
    page.wait_for_selector("body[data-step]")
    assert "TimeoutError" in page.content()


def test_an_error_group_page_shows_its_trend_the_runs_it_hit_and_what_to_try(ex, client):
    _traffic(ex)
    link = re.search(r'href="(/errors/[0-9a-f]+)"', client.get("/").get_data(as_text=True)).group(1)
    html = client.get(link).get_data(as_text=True)
    assert re.search(r'id="total">5<', html)  # i = 0, 7, 14, 21, 28
    assert len(_cids(html)) == 5 and "db timed out after &lt;NUM&gt;" in html
    assert 'id="suggestions"' in html and "too slowly" in html  # the knowledge base's advice for timeouts
    assert client.get("/errors/0000000000000000").status_code == 404
