"""Breakpoints and watches in replay (issue 14): the expression language, the API, `flowscope replay`, the page."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.runs.breakpoints import (
    MAX_EXPRESSION_CHARS,
    MAX_NESTING,
    BreakpointError,
    parse,
    parse_path,
)
from backend.runs.replay import debug, next_break, steps_of, watch
from exporter.model import Span
from tests.conftest import require_binary

SETTINGS = {"deadline": None, "derandomize": True, "database": None, "print_blob": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
MS = 1_000_000

# the run every test here steps through: (layer, component, operation, start ms, end ms, status, state)
CHECKOUT = [
    ("cache", "redis", "load_cart", 10, 20, "ok", {"user": {"id": "u1"}, "cart": {"items": 1, "total": 30}}),
    ("database", "postgres", "SELECT prices", 20, 320, "ok", {"cart": {"total": 45}}),
    ("api", "pricing", "apply_coupon", 330, 340, "ok", {"cart": {"total": 120, "coupon": "BIG"}}),
    ("external", "stripe", "charge", 340, 400, "error", None),
    ("api", "auth", "relogin", 400, 410, "ok", {"user": {"id": "u2"}}),
    ("database", "postgres", "INSERT order", 410, 430, "ok", {"order": {"id": 9, "lines": [{"sku": "A"}]}}),
]


def _spans(t0: int = 0) -> list[dict]:
    out = []
    for i, (layer, comp, op, start, end, status, state) in enumerate(CHECKOUT):
        out.append({"span_id": f"{i + 2:016x}", "parent_span_id": f"{1:016x}", "layer": layer, "component": comp,
                    "operation": op, "start_ns": t0 + start * MS, "end_ns": t0 + end * MS, "status": status,
                    "error_type": "ConnectionRefusedError" if status == "error" else None,
                    "error_message": "refused" if status == "error" else None, "state": state, "is_step": True})
    return out


STEPS = steps_of(_spans())


# -- the expression language ------------------------------------------------------------------------------------

@pytest.mark.parametrize("expr, hits", [
    ("layer=database", [1, 5]),
    ("layer == 'database' and operation = \"INSERT order\"", [5]),
    ("component=stripe", [3]),
    ("error", [3]),
    ("status != ok", [3]),
    ("duration > 250", [1]),
    ("duration<=10 and step >= 4", [4]),
    ("cart.total > 100", [2, 3, 4, 5]),
    ("cart.total >= 45 and cart.total < 100", [1]),
    ("user.id changed", [0, 4]),
    ("cart.total changed or order changed", [0, 1, 2, 5]),
    ("order.lines.0.sku == A", [5]),
    ("cart.coupon", [2, 3, 4, 5]),                       # a path alone: present and truthy
    ("not cart.coupon", [0, 1]),
    ("not (layer = database or layer = cache) and cart.coupon == 'BIG'", [2, 3, 4]),
    ("layer = api or layer = cache and cart.total = 30", [0, 2, 4]),   # and binds tighter than or
    ("(layer = api or layer = cache) and cart.total = 30", [0]),
    ("state.cart.items = 1", [0, 1, 2, 3, 4, 5]),         # state.PATH: the state, whatever the key's name
    ("nope.deeper > 1 or nope == null", []),              # an absent path equals nothing
    ("nope != 1", [0, 1, 2, 3, 4, 5]),                    # ... so != holds
    ("cart.total > 'a' or user.id > 5", []),              # orderings across types never hold, never fail
    ("cart.items == true", []),                           # 1 is not true
    ("cart.total == 30.0", [0]),                          # but 30 is 30.0
    ("user.id >= u2", [4, 5]),                            # strings order as strings; a bare word is a string
])
def test_each_condition_holds_at_the_steps_a_reader_expects(expr, hits):
    cond = parse(expr)
    got, before = [], {}
    for i, s in enumerate(STEPS):
        after = debug(STEPS, i)["state"]
        if cond.holds(s, before, after, i):
            got.append(i)
        before = after
    assert got == hits


@pytest.mark.parametrize("expr, position, words", [
    ("", 0, "empty"),
    ("cart.total >", 12, "expected a value"),
    ("cart.total > > 3", 13, "expected a value"),
    ("layer", 5, "layer needs a comparison"),
    ("duration changed", 9, "'changed' follows a state path"),
    ("error = 1", 6, "error stands alone"),
    ("(cart.total > 1", 15, "expected ')' to close the '(' at position 0"),
    ("cart.total > 1)", 14, "without its '('"),
    ("x == 'abc", 5, "not closed"),
    ("x == 'a\\n'", 7, "escapes"),
    ("x > 1 y", 6, "join conditions with and / or"),
    ("and x", 0, "expected a step field"),
    ("x > 1 and", 9, "ends where a condition was expected"),
    ("x > 1e999", 4, "too large"),
    ("x ~ 1", 2, "unexpected character '~'"),
    ("x > 1; import os", 5, "unexpected character ';'"),
    ("__import__('os').system('id')", 10, "no function calls"),
    ("open('/etc/passwd')", 4, "no function calls"),
    ("x[0] > 1", 1, "unexpected character '['"),
    ("x == a\x00b", 6, "NUL"),
    ("not " * (MAX_NESTING + 1) + "x", 4 * MAX_NESTING, f"deeper than {MAX_NESTING}"),
    ("(" * (MAX_NESTING + 1) + "x" + ")" * (MAX_NESTING + 1), MAX_NESTING, f"deeper than {MAX_NESTING}"),
    ("x = " + "y" * MAX_EXPRESSION_CHARS, MAX_EXPRESSION_CHARS, f"longer than {MAX_EXPRESSION_CHARS}"),
])
def test_bad_expressions_are_refused_at_their_position(expr, position, words):
    with pytest.raises(BreakpointError) as e:
        parse(expr)
    assert e.value.position == position and words in str(e.value), str(e.value)


def test_nesting_up_to_the_limit_parses_and_a_path_never_reaches_python_attributes():
    assert parse("(" * MAX_NESTING + "x > 1" + ")" * MAX_NESTING).holds(STEPS[0], {}, {"x": 2})
    # dotted names are dict keys, nothing else: no attribute, no method, whatever the segment's name
    cond = parse("cart.__class__ or cart.items.__len__ or cart.total.real > 0")
    assert not cond.holds(STEPS[0], {}, {"cart": {"items": [1], "total": 3}})
    assert parse("cart.__class__ = x").holds(STEPS[0], {}, {"cart": {"__class__": "x"}})


def test_watches_give_every_steps_value_and_where_it_changed():
    by = {w["path"]: w for w in watch(STEPS, ["cart.total", "user.id", "order.lines.0.sku", "nope.x", "cart"])}
    assert [v["value"] for v in by["cart.total"]["values"]] == [30, 45, 120, 120, 120, 120]
    assert by["cart.total"]["changed_at"] == [0, 1, 2]
    assert by["user.id"]["changed_at"] == [0, 4] and by["user.id"]["values"][4] == {"present": True, "value": "u2"}
    assert by["order.lines.0.sku"]["values"][:5] == [{"present": False}] * 5
    assert by["order.lines.0.sku"]["values"][5] == {"present": True, "value": "A"}
    assert by["nope.x"] == {"path": "nope.x", "values": [{"present": False}] * 6, "changed_at": []}
    assert by["cart"]["values"][2]["value"] == {"items": 1, "total": 120, "coupon": "BIG"}
    assert by["cart"]["changed_at"] == [0, 1, 2]
    with pytest.raises(BreakpointError, match="empty segment"):
        watch(STEPS, ["cart..total"])
    # a watched sub-tree too big to repeat at every step is in full at the step shown, sized elsewhere
    big = [{**s, "state": {"blob": {"text": "x" * 5000, "n": i // 2}}} for i, s in enumerate(STEPS)]
    (w,) = debug(big, 3, ["blob"])["watches"]
    assert w["changed_at"] == [0, 2, 4] and w["values"][3] == {"present": True, "value": {"text": "x" * 5000, "n": 1}}
    assert w["values"][2] == {"present": True, "elided": True, "bytes": 5000 + len('{"text":"","n":1}')}


def test_a_breakpoint_runs_to_the_next_matching_step_after_from():
    dbs = [parse("layer=database")]
    assert next_break(STEPS, dbs) == {"step": 1, "matched": ["layer=database"]}
    assert next_break(STEPS, dbs, 1)["step"] == 5
    assert next_break(STEPS, dbs, 5) is None
    both = [parse("error"), parse("user.id changed")]
    assert next_break(STEPS, both, 2) == {"step": 3, "matched": ["error"]}
    assert next_break(STEPS, both, 3) == {"step": 4, "matched": ["user.id changed"]}
    body = debug(STEPS, None, ["cart.total"], dbs, 1)
    assert body["step"] == 5 and body["breakpoint"] == {"expressions": ["layer=database"], "from": 1, "hit": 5,
                                                        "matched": ["layer=database"]}
    assert body["watches"][0]["values"][5]["value"] == 120
    stay = debug(STEPS, None, (), dbs, 5)  # no later step matches: the response stays where it was
    assert stay["step"] == 5 and stay["breakpoint"]["hit"] is None


# -- any text: a condition or a BreakpointError pointing inside it; never anything else ------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from("abc0"), kids,
                                                                                     max_size=3), max_leaves=10)
states = st.dictionaries(st.sampled_from(["a", "b", "c", "cart", "0"]), json_values, max_size=4)
tokens = st.sampled_from(["a", "b.c", "cart.total", "0", "-1.5", "1e3", "'x'", '"y\\"z"', "(", ")", "and", "or",
                          "not", "changed", "error", "layer", "duration", "step", "state.a", "=", "==", "!=", "<",
                          "<=", ">", ">=", "true", "null", "'", "\\", ".", "..", "\x00", "é", "😀", " ", "\n"])
expressions = st.one_of(st.text(max_size=80), st.lists(tokens, max_size=25).map(" ".join),
                        st.lists(tokens, max_size=25).map("".join))


@settings(**SETTINGS, max_examples=300)
@given(text=expressions, before=states, after=states)
@example(text="not " * 40 + "a", before={}, after={})
@example(text="a > 1" + " or a > 1" * 60, before={}, after={"a": 2})
def test_any_text_parses_or_is_refused_with_a_position_inside_it(text, before, after):
    try:
        cond = parse(text)
    except BreakpointError as e:
        assert 0 <= e.position <= min(len(text), MAX_EXPRESSION_CHARS) and e.reason
        return
    for i, s in enumerate(STEPS):
        assert cond.holds(s, before, after, i) in (True, False)


@settings(**SETTINGS, max_examples=200)
@given(path=st.one_of(st.text(max_size=40), st.lists(st.sampled_from(["a", "0", "", "é", "\x00", "b c"]),
                                                     max_size=40).map(".".join)))
def test_any_watch_path_is_watched_or_refused_with_a_position(path):
    try:
        segs = parse_path(path)
    except BreakpointError as e:
        assert 0 <= e.position <= len(path)
        return
    assert ".".join(segs) == path
    (w,) = watch(STEPS, [path])
    assert len(w["values"]) == len(STEPS)


# -- over HTTP, on a real store (SQLite and PostgreSQL) ----------------------------------------------------------

def _store_checkout(ex, cid: str = "run-debug") -> str:
    t0 = time.time_ns() - 5_000_000_000
    root = Span(trace_id="ab" * 16, span_id=f"{1:016x}", workflow="checkout", layer="api", component="shop",
                operation="POST /checkout", start_ns=t0, end_ns=t0 + 450 * MS, correlation_id=cid, is_step=False,
                status="error", error_type="ConnectionRefusedError", error_message="refused")
    spans = [Span(trace_id="ab" * 16, workflow="checkout", correlation_id=cid, service="shop",
                  **{k: s[k] for k in ("span_id", "parent_span_id", "layer", "component", "operation", "start_ns",
                                       "end_ns", "status", "error_type", "error_message", "state")})
             for s in _spans(t0)]
    ex.runs.write([root, *spans])
    assert ex.pipeline.recorder.flush()
    return cid


@pytest.fixture
def debug_client(make_exporter, database_url):
    from backend.app import create_app

    ex = make_exporter(database_url=database_url)
    return create_app(ex).test_client(), _store_checkout(ex)


def test_the_replay_api_watches_and_runs_to_breakpoints(debug_client):
    client, cid = debug_client
    url = f"/api/v1/runs/{cid}/replay"
    body = client.get(url, query_string={"step": 2, "watch": ["cart.total", "nope.x"]}).json
    assert body["step"] == 2 and body["state"]["cart"]["total"] == 120
    total, nope = body["watches"]
    assert [v["value"] for v in total["values"]] == [30, 45, 120, 120, 120, 120] and total["changed_at"] == [0, 1, 2]
    assert nope["values"] == [{"present": False}] * 6 and nope["changed_at"] == []

    r = client.get(url, query_string={"break": "layer=database", "from": 1}).json
    assert r["step"] == 5 and r["span"]["operation"] == "INSERT order" and r["breakpoint"]["hit"] == 5
    assert client.get(url, query_string={"break": "cart.total > 100"}).json["step"] == 2  # from the start
    r = client.get(url, query_string={"break": ["error", "user.id changed"], "from": 2}).json
    assert r["step"] == 3 and r["breakpoint"]["matched"] == ["error"] and r["span"]["status"] == "error"
    r = client.get(url, query_string={"break": "duration > 1000", "from": 4, "watch": "user.id"}).json
    assert r["breakpoint"]["hit"] is None and r["step"] == 4 and r["watches"][0]["values"][4]["value"] == "u2"


BAD_QUERIES = [
    ({"step": 0, "break": "cart.total >"}, "invalid_breakpoint", "break", 12),
    ({"break": "__import__('os')"}, "invalid_breakpoint", "break", 10),
    ({"break": ["error", "(x"]}, "invalid_breakpoint", "break", 2),
    ({"break": "x" * 501}, "invalid_breakpoint", "break", 500),
    ({"step": 0, "watch": "cart..total"}, "invalid_watch", "watch", 5),
    ({"step": 0, "watch": ""}, "invalid_watch", "watch", 0),
    ({"step": 0, "watch": [f"w{i}" for i in range(17)]}, "invalid_watch", "watch", None),
    ({"break": ["error"] * 17}, "invalid_breakpoint", "break", None),
    ({"break": "error", "step": 1}, "invalid_query", "step", None),
    ({"break": "error", "from": 6}, "invalid_query", "from", None),
    ({"break": "error", "from": -2}, "invalid_query", "from", None),
    ({"break": "error", "from": "²"}, "invalid_query", "from", None),
    ({"step": 1, "from": 0}, "invalid_query", "from", None),
    ({"watch": "cart.total"}, "invalid_query", "step", None),
]


def test_bad_watches_and_breakpoints_are_400s_that_say_what_and_where(ex, client):
    cid = _store_checkout(ex)  # checked before the store is read: one database shows it
    for query, code, field, position in BAD_QUERIES:
        r = client.get(f"/api/v1/runs/{cid}/replay", query_string=query)
        assert r.status_code == 400, (query, r.data)
        err = r.json["error"]
        assert (err["code"], err["field"], err.get("position")) == (code, field, position), (query, err)
        assert err["message"]


@settings(**{**SETTINGS, "max_examples": 75})
@given(exprs=st.lists(expressions, max_size=3), watches=st.lists(st.text(max_size=30), max_size=3),
       frm=st.one_of(st.none(), st.text(max_size=4), st.integers(-3, 8).map(str)))
def test_no_watch_or_break_parameter_gets_a_5xx(client, ex, exprs, watches, frm):
    cid = "fuzz-run"
    if ex.runs.get_run(cid) is None:
        _store_checkout(ex, cid)
    query = {"break": exprs, "watch": watches, **({"from": frm} if frm is not None else {})}
    if not exprs:
        query["step"] = "3"
    r = client.get(f"/api/v1/runs/{cid}/replay", query_string=query)
    assert r.status_code in (200, 400), r.data
    if r.status_code == 400:
        assert set(r.json) == {"error"} and r.json["error"]["message"] and r.json["error"]["field"]
    else:
        assert 0 <= r.json["step"] < len(CHECKOUT) and len(r.json.get("watches", [])) == len(watches)


# -- flowscope replay --watch --break --from ----------------------------------------------------------------------

def _replay(*args: str, stdin: str = "q\n") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowscope.cli", "replay", *args], input=stdin, check=False,
                          capture_output=True, text=True, timeout=60)


def test_flowscope_replay_watches_and_breaks_in_the_terminal(ex):
    cid = _store_checkout(ex)
    db = ex.config.database_url
    r = _replay(cid, "--database-url", db, "--watch", "cart.total", "--watch", "nope", "--break", "layer=database",
                stdin="c\nc\nb error\nb\nj 2\nc\nbd 1\nw user.id\nwd nope\nw\nb x >\nc\nq\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    i = out.index("breakpoint: layer=database")       # --break: starts at the first match
    assert out[i + 1].startswith("[1/5] database/postgres/SELECT prices ok 300.00 ms")
    assert "  watch cart.total = 45 (changed here)" in out and "  watch nope = (absent)" in out
    assert sum(x.startswith("[5/5] database/postgres/INSERT order ok 20.00 ms") for x in out) == 2  # c, twice
    assert "no step after 5 matches layer=database" in out                       # c: none left, stays
    assert "  1: error" in out                                                    # b lists them
    j = out.index("breakpoint: error")                                            # after j 2, c stops at the error
    assert out[j + 1].startswith("[3/5] external/stripe/charge error")
    assert "deleted breakpoint 1: error" in out and "no longer watching nope" in out
    assert "  user.id = \"u1\" · changed at steps 0, 4" in out and "  nope = (absent) · absent at every step" in out
    k = out.index("not a breakpoint: expected a value (number, 'string', true, false, null or a word) after '>'")
    assert out[k + 1:k + 3] == ["  x >", "     ^ expected a value (number, 'string', true, false, null or a word) "
                                         "after '>'"]


def test_flowscope_replay_against_a_backend_and_its_bad_arguments(ex, serve, cli):
    cid = _store_checkout(ex)
    srv = serve(ex)
    r = _replay(cid, "--url", srv.url, "--break", "user.id changed", "--from", "0", "--watch", "user.id",
                stdin="c\nq\n")
    assert r.returncode == 0, r.stderr
    assert "breakpoint: user.id changed" in r.stdout and "[4/5] api/auth/relogin ok" in r.stdout
    assert '  watch user.id = "u2" (changed here)' in r.stdout and "no step after 4 matches" in r.stdout
    r = cli("replay", cid, "--url", srv.url, "--break", "cart.total > > 1")
    assert r.returncode == 2 and "--break 'cart.total > > 1': expected a value" in r.stderr
    assert "  cart.total > > 1\n               ^ expected" in r.stderr
    r = cli("replay", cid, "--url", srv.url, "--from", "2")
    assert r.returncode == 2 and "--from goes with --break" in r.stderr
    r = cli("replay", cid, "--url", srv.url, "--watch", "a..b")
    assert r.returncode == 2 and "empty segment" in r.stderr


# -- the run page, in Chromium ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    chromium = require_binary("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                              "--no-first-run", "--disable-background-networking"])
        yield b
        b.close()


def test_the_run_page_watches_breaks_and_browses_the_state(ex, serve, browser):
    cid = _store_checkout(ex)
    srv = serve(ex)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{srv.url}/runs/{cid}")
    page.wait_for_selector("body[data-step='0']")

    # the state tree: nested values open two levels down, fold and unfold, and the raw JSON is still there
    assert json.loads(page.text_content("#state")) == {"user": {"id": "u1"}, "cart": {"items": 1, "total": 30}}
    cart = "#state-tree .node[data-path='cart']"
    assert page.is_visible(f"{cart} .node[data-path='cart.total']")
    page.click(f"{cart} > .line .tog")
    assert not page.is_visible(f"{cart} .node[data-path='cart.total']")
    page.click(f"{cart} > .line .tog")
    assert page.inner_text(f"{cart} .node[data-path='cart.total']").startswith("total: 30")
    page.click("#state-as-json")  # the same state as JSON text, and back
    assert json.loads(page.inner_text("#state"))["cart"] == {"items": 1, "total": 30}
    assert not page.is_visible("#state-tree")
    page.click("#state-as-json")
    assert page.is_visible("#state-tree") and not page.is_visible("#state")

    # watches: add two paths (one never set), values follow the steps, change points are links
    page.fill("#watch-input", "cart.total")
    page.press("#watch-input", "Enter")
    page.wait_for_selector("#watch-list li[data-path='cart.total'] .wv")
    page.fill("#watch-input", "nope.x")
    page.click("#watch-form button")
    page.wait_for_selector("#watch-list li[data-path='nope.x'] .absent")
    total = "#watch-list li[data-path='cart.total']"
    assert page.inner_text(f"{total} .wv") == "30" and "changed here" in page.inner_text(total)
    links = page.eval_on_selector_all(f"{total} .at a", "as => as.map(a => [a.textContent, a.dataset.step])")
    assert links == [["1", "0"], ["2", "1"], ["3", "2"]]  # the page counts steps from 1, as its title does
    assert "never set in this run" in page.inner_text("#watch-list li[data-path='nope.x']")
    page.click("#next")
    page.wait_for_selector("body[data-step='1']")
    assert page.inner_text(f"{total} .wv") == "45"
    page.click(f"{total} .at a[data-step='2']")
    page.wait_for_selector("body[data-step='2']")
    assert page.inner_text(f"{total} .wv") == "120"
    # a bad watch path is refused where it goes wrong, and not added
    page.fill("#watch-input", "cart..total")
    page.press("#watch-input", "Enter")
    page.wait_for_selector("#watch-error:not([hidden])")
    assert "empty segment" in page.inner_text("#watch-error")
    assert page.locator("#watch-list li").count() == 2

    # run to the next breakpoint, from where we are, then from the start; a bad expression shows its position
    page.fill("#break-input", "layer=database")
    page.click("#run-to-break")
    page.wait_for_selector("body[data-step='5']")
    assert page.inner_text("#break-status") == "stopped at step 6 of 6" and "INSERT order" in page.inner_text(
        "#step-title")
    page.click("#run-to-break")
    page.wait_for_selector("body[data-break-hit='none']")
    assert page.inner_text("#break-status") == "no step after step 6 matches"
    page.fill("#break-input", "user.id changed and step > 0")
    page.click("#run-from-start")
    page.wait_for_selector("body[data-step='4']")
    assert "relogin" in page.inner_text("#step-title")
    page.fill("#break-input", "cart.total >")
    page.press("#break-input", "Enter")
    page.wait_for_selector("#break-error:not([hidden])")
    lines = page.inner_text("#break-error").splitlines()
    assert lines[0] == "cart.total >" and lines[1].startswith(" " * 12 + "^ ") and "expected a value" in lines[1]

    # the state viewer's key search: matching keys marked, their ancestors open, the rest filtered out
    page.click("#watch-list li[data-path='nope.x'] .rm")
    assert page.locator("#watch-list li").count() == 1
    page.click(".row[data-step='5']")  # the last step: the whole state
    page.wait_for_selector("body[data-step='5']")
    page.click("#state-collapse")
    assert not page.is_visible("#state-tree .node[data-path='order.lines']")
    page.fill("#state-search", "sku")
    assert page.inner_text("#state-search-count") == "1 key matches"
    assert page.is_visible("#state-tree .node[data-path='order.lines.0.sku'] mark")
    assert not page.is_visible("#state-tree .node[data-path='cart']")
    page.fill("#state-search", "")
    page.click("#state-expand")
    assert page.is_visible("#state-tree .node[data-path='order.lines.0.sku']")
    page.hover("#state-tree .node[data-path='user.id'] > .line")  # a key's own "watch" button, shown on hover
    page.click("#state-tree .node[data-path='user.id'] .watch-this")
    page.wait_for_selector("#watch-list li[data-path='user.id'] .wv")
    assert page.inner_text("#watch-list li[data-path='user.id'] .wv") == '"u2"'

    shots = Path("/tmp/replay-shots")
    shots.mkdir(exist_ok=True)
    page.fill("#state-search", "id")
    page.locator("h2", has_text="Time travel").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "replay-debugger.png"), full_page=True)
    page.close()


def test_a_nested_number_turning_into_a_boolean_is_a_change():
    """JSON equality at every depth: ``[1]`` → ``[true]`` and ``{"n": 0}`` → ``{"n": false}`` are changes that a
    watch and ``changed`` report, as ``1`` → ``true`` at the top is."""
    states = [{"flags": [1], "cfg": {"n": 0}}, {"flags": [True]}, {"cfg": {"n": False}}, {"flags": [1.0]}]
    steps = [{**s, "state": st_} for s, st_ in zip(STEPS, states, strict=False)]
    by = {w["path"]: w for w in watch(steps, ["flags", "cfg"])}
    assert by["flags"]["changed_at"] == [0, 1, 3] and by["cfg"]["changed_at"] == [0, 2]
    assert [i for i, _ in enumerate(steps) if next_break(steps, [parse("flags changed")], i - 1) == {
        "step": i, "matched": ["flags changed"]}] == [0, 1, 3]
