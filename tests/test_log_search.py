"""Searching application log lines as a person does: the query language (backend/logs/query.py), GET /api/v1/logs
and the logs page, and the run page's lines between its steps. Bad queries are 400s that point at the position;
no query, however hostile, is a 500 on SQLite or PostgreSQL."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backend.app import create_app
from backend.logs.query import MAX_QUERY, QueryError, parse
from exporter import conventions as c
from exporter.config import load_config
from exporter.model import LogLine
from exporter.runtime import build
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from exporter.store.logs import FieldFilter, LogQuery

NOW = time.time_ns()
T0 = NOW - 300 * 10**9
MS = 10**6
SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


@pytest.mark.parametrize(("q", "want"), [
    ('level:error service:checkout "card declined" -healthcheck',
     LogQuery(levels=("error", "fatal"), services=("checkout",), text=("card declined",), exclude=("healthcheck",))),
    ("order_id=123 http.status_code>=500 amount<9.5 logger!=root",
     LogQuery(fields=(FieldFilter("order_id", "=", "123"), FieldFilter("http.status_code", ">=", "500"),
                      FieldFilter("amount", "<", "9.5"), FieldFilter("logger", "!=", "root")))),
    ('cid:run-1 trace:abc workflow:"check out" -"GET /health" service:a service:b',
     LogQuery(correlation_ids=("run-1",), trace_ids=("abc",), workflows=("check out",), exclude=("GET /health",),
              services=("a", "b"))),
    ("level:ERROR level:Warn level=info", LogQuery(levels=("warn", "error", "fatal"),
                                                   fields=(FieldFilter("level", "=", "info"),))),
    ('"say ""hi""" 10:22:33 e-mail', LogQuery(text=('say "hi"', "10:22:33", "e-mail"))),
    ("", LogQuery()),
])
def test_a_query_as_typed_is_the_query_meant(q, want):
    assert parse(q) == want


@pytest.mark.parametrize(("q", "position", "says"), [
    ('service:checkout "card declined', 17, "unterminated quote"),
    ("level:eror", 6, "level must be one of"),
    ("servce:checkout", 0, "unknown key 'servce'"),
    ("amount>lots", 7, "compares numbers"),
    ("service>3", 7, "service is text"),
    ("ok service:", 11, "needs a value"),
    ("ok - x", 3, "'-' must be followed"),
    ('"a"b', 3, "a space must follow"),
    ('card"declined', 4, "a quote inside a word"),
    ("fine !!!", 5, "no letter or digit"),
    ("a __", 2, "no letter or digit"),
    ("x" * (MAX_QUERY + 1), MAX_QUERY, "longer than"),
])
def test_a_query_that_cannot_be_parsed_says_where(q, position, says):
    with pytest.raises(QueryError) as got:
        parse(q)
    assert got.value.position == position and says in got.value.message


@settings(max_examples=400, **SETTINGS)
@given(st.text(alphabet=st.sampled_from('ab :=<>!-"._\t1é²\x00'), max_size=40) | st.text(max_size=40))
@example('-"')
@example('k:"')
def test_any_text_parses_or_fails_at_a_position_inside_it(q):
    try:
        parse(q)
    except QueryError as e:
        assert 0 <= e.position <= len(q) and e.message


def _lines() -> list[LogLine]:
    return [
        LogLine(time_ns=T0, level="error", body="card declined for order 17", service="checkout",
                correlation_id="run-1", attributes={"order_id": 17}),
        LogLine(time_ns=T0 + MS, level="error", body="card declined for order 18", service="checkout",
                correlation_id="run-2", attributes={"order_id": 18}),
        LogLine(time_ns=T0 + 2 * MS, level="error", body="card declined for order 19", service="checkout",
                trace_id="b" * 32, attributes={"order_id": 19}),
        LogLine(time_ns=T0 + 3 * MS, level="info", body="healthcheck ok", service="checkout"),
        LogLine(time_ns=T0 + 4 * MS, level="warn", body="slow card network", service="payments",
                correlation_id="run 3/x"),
    ]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def logs_client(request, tmp_path_factory):
    """One store of :func:`_lines` per database for the module's read-only tests (a PostgreSQL database and its
    migrations cost a second or two: once, not per test)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('logs')}/store.db"
    else:
        url = request.getfixturevalue("postgres").fresh_database()
    ex = build(load_config({"database_url": url, "store_writer": "thread"}, environ={}))
    try:
        ex.pipeline.ingest_logs(_lines(), "sdk")
        assert ex.recorder.flush()
        yield create_app(ex).test_client()
    finally:
        ex.close()


def test_search_api_finds_links_runs_and_pages_by_cursor(logs_client):
    r = logs_client.get(c.LOGS_PATH, query_string={"q": 'level:error service:checkout "card declined" -healthcheck',
                                                   "limit": 2})
    assert r.status_code == 200, r.json
    assert [x["body"] for x in r.json["lines"]] == ["card declined for order 19", "card declined for order 18"]
    assert [x["run_page"] for x in r.json["lines"]] == [f"http://localhost:9464{c.RUN_PAGE_PATH}/{'b' * 32}",
                                                        f"http://localhost:9464{c.RUN_PAGE_PATH}/run-2"]
    assert isinstance(r.json["next_cursor"], str)
    r2 = logs_client.get(c.LOGS_PATH, query_string={"q": '"card declined"', "level": "error", "limit": 2,
                                                    "cursor": r.json["next_cursor"]})
    assert [x["body"] for x in r2.json["lines"]] == ["card declined for order 17"] and r2.json["next_cursor"] is None
    one = logs_client.get(c.LOGS_PATH, query_string={"q": "card", "correlation_id": "run 3/x"}).json["lines"]
    assert [x["run_page"].rsplit("/", 1)[1] for x in one] == ["run%203%2Fx"]  # the id escaped in the link
    assert logs_client.get(c.LOGS_PATH, query_string={"q": "order_id>17 order_id<=19"}).json["count"] == 2
    window = {"since": str((T0 + MS // 2) / 1e9), "until": str((T0 + 3 * MS + MS // 2) / 1e9)}  # lines 1 ms apart
    assert [x["body"] for x in logs_client.get(c.LOGS_PATH, query_string=window).json["lines"]] == [
        "healthcheck ok", "card declined for order 19", "card declined for order 18"]
    # a parameter narrows the text's filter: both must hold
    assert logs_client.get(c.LOGS_PATH, query_string={"q": "service:payments", "service": "checkout"}).json[
        "count"] == 0
    assert logs_client.get(c.LOGS_PATH, query_string={"q": "level:warn", "level": "error"}).json["count"] == 3


def test_repeated_lines_collapse_into_their_template_with_a_count(logs_client):
    r = logs_client.get(c.LOGS_PATH, query_string={"q": "card", "templates": "true"})
    assert r.status_code == 200
    top = r.json["templates"][0]
    assert (top["template"], top["count"], top["level"]) == ("card declined for order <NUM>", 3, "error")
    assert [x["id"] for x in top["runs"]] == ["b" * 32, "run-2", "run-1"]
    assert top["runs"][1]["run_page"].endswith(f"{c.RUN_PAGE_PATH}/run-2")
    assert r.json["scanned"] == 4 and r.json["truncated"] is False


BAD_PARAMETERS = [
    ({"q": "level:error card\"x"}, "q"), ({"level": "loud"}, "level"), ({"cursor": "12a"}, "cursor"),
    ({"cursor": str(2**64)}, "cursor"), ({"limit": "0"}, "limit"), ({"since": "yesterday"}, "since"),
    ({"since": "2000", "until": "1000"}, "since"), ({"templates": "maybe"}, "templates"),
    ({"service": "x" * 201}, "service"), ({"q": "a\x00b"}, "q"), ({"q": "n>1e999"}, "q"),
]


def test_a_bad_parameter_is_a_400_naming_it(client):
    for params, field in BAD_PARAMETERS:
        r = client.get(c.LOGS_PATH, query_string=params)
        assert r.status_code == 400 and r.json["error"]["field"] == field, (params, r.json)
        if "position" in r.json["error"]:
            assert f"at position {r.json['error']['position']}" in r.json["error"]["message"]


def test_a_query_that_cannot_be_parsed_is_a_400_with_the_position(logs_client):
    r = logs_client.get(c.LOGS_PATH, query_string={"q": 'service:checkout "card declined'})
    assert r.status_code == 400
    assert r.json["error"] == {"code": "invalid_query", "field": "q", "position": 17,
                               "message": "q: unterminated quote (close it with \") at position 17"}


@settings(max_examples=40, **SETTINGS)
@given(q=st.text(alphabet=st.sampled_from('ab :=<>!-"._*()^~\'+1é²\u0301ß'), max_size=30) | st.text(max_size=20))
@example(q='"_"')
@example(q="-ab -'")
@example(q='a OR b NOT c NEAR(d) "e" * ^f')
@example(q="x=1e999 y>-1e309")
def test_no_query_is_a_server_error(logs_client, q):
    r = logs_client.get(c.LOGS_PATH, query_string={"q": q})
    assert r.status_code in (200, 400), (q, r.status_code, r.data[:300])
    if r.status_code == 400:
        err = r.json["error"]
        assert err["field"] == "q" and err["code"] == "invalid_query"
        assert "position" in err or "NUL" in err["message"]


def test_the_logs_page_shows_lines_and_points_at_a_parse_error(logs_client):
    page = logs_client.get(c.LOGS_PAGE_PATH, query_string={"q": "network"})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    html = html[html.index('id="lines"'):]
    assert "slow card network" in html and "card declined" not in html
    assert f'href="http://localhost:9464{c.RUN_PAGE_PATH}/run%203%2Fx"' in html
    grouped = logs_client.get(c.LOGS_PAGE_PATH, query_string={"q": "card", "templates": "true"}).get_data(as_text=True)
    assert re.search(r'<td class="num">3</td>.*card declined for order &lt;NUM&gt;', grouped, re.S)
    bad = logs_client.get(c.LOGS_PAGE_PATH, query_string={"q": "level:eror"})
    assert bad.status_code == 400
    assert "level must be one of" in bad.get_data(as_text=True)
    assert re.search(r'id="error-position">level:eror\n {6}\^</pre>', bad.get_data(as_text=True))


def test_the_run_page_shows_its_log_lines_between_its_steps(ex):
    tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with tracer.workflow("checkout") as run:
        with tracer.step("api", "orders", "price"):
            time.sleep(0.002)
        mid = time.time_ns()
        time.sleep(0.002)
        with tracer.step("external", "stripe", "charge"):
            time.sleep(0.002)
    ex.pipeline.ingest_logs([LogLine(time_ns=mid, level="warn", body="retrying the price call", service="shop",
                                     correlation_id=run.correlation_id, logger="shop.orders"),
                             LogLine(time_ns=mid, level="info", body="someone else's line", service="shop",
                                     correlation_id="another-run")], "sdk")
    assert ex.recorder.flush()
    html = create_app(ex).test_client().get(f"{c.RUN_PAGE_PATH}/{run.correlation_id}").get_data(as_text=True)
    section = html[html.index('id="run-logs"'):]
    section = section[:section.index("</div>")]
    order = [m.group(1) or m.group(2) for m in re.finditer(r"· (price|charge)</a>|(retrying the price call)", section)]
    assert order == ["price", "retrying the price call", "charge"]
    assert "someone else" not in section and "shop.orders" in section
    assert "Logs and steps (1 line)" in html
