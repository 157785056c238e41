"""Application log lines in the run store (exporter/store/logs.py), on SQLite and a real PostgreSQL: what the
pipeline hands the recorder is stored, searched by every filter, paged newest first, redacted, and swept with
the runs; the writer process stores them too."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from exporter.model import LogLine, hash_user
from exporter.store import logs as log_store
from exporter.store.logs import FIELD_COLUMNS, FieldFilter, LogQuery, delete_logs_before, levels_from
from exporter.store.recorder import USER_KEYS
from exporter.store.schema import log_fields, logs

NOW = time.time_ns()
T0 = NOW - 600 * 10**9
MS = 10**6


def _line(i: int, body: str, **kw) -> LogLine:
    kw.setdefault("service", "checkout")
    kw.setdefault("level", "info")
    return LogLine(time_ns=kw.pop("time_ns", T0 + i * MS), body=body, **kw)


LINES = [
    _line(0, "card declined by the bank", level="error", correlation_id="run-1", trace_id="a" * 32,
          workflow="checkout", attributes={"order_id": 123, "http": {"status_code": 402}, "amount": "19.90"}),
    _line(1, "declined card, retrying", level="warn", correlation_id="run-1", trace_id="a" * 32, workflow="checkout",
          attributes={"order_id": 123, "http": {"status_code": 500}}),
    _line(2, "healthcheck ok", service="cart", attributes={"route": "/health"}),
    _line(3, "card declined: insufficient funds", level="fatal", service="cart", correlation_id="run-2",
          workflow="cart", attributes={"order_id": "124", "http": {"status_code": 503}},
          exception="Traceback: PaymentDeclined at charge()"),
    _line(4, "cart loaded in 12 ms", level="debug", service="cart", correlation_id="run-2", workflow="cart",
          attributes={"items": 3, "gift": True}),
]


def _bodies(store, **q) -> list[str]:
    return [e.body for e in store.search_logs(LogQuery(**q)).lines]


def test_every_filter_finds_its_lines_newest_first(make_exporter, database_url):
    ex = make_exporter(database_url=database_url)
    ex.pipeline.ingest_logs([LogLine(**{k: getattr(x, k) for k in x.__slots__}) for x in LINES], "sdk")
    assert ex.recorder.flush()
    s = ex.runs
    b = [x.body for x in LINES]
    assert _bodies(s) == b[::-1]  # newest first
    assert _bodies(s, text=("card declined",)) == [b[3], b[0]]  # a phrase: the words in that order
    assert _bodies(s, text=("declined", "card")) == [b[3], b[1], b[0]]  # words: all of them, any order
    assert _bodies(s, text=("card",), exclude=("funds", "retrying")) == [b[0]]
    assert _bodies(s, exclude=("card",)) == [b[4], b[2]]
    assert _bodies(s, text=("paymentdeclined",)) == [b[3]]  # the exception is searched too, in any case
    assert _bodies(s, levels=levels_from("warn")) == [b[3], b[1], b[0]]
    assert _bodies(s, services=("cart",)) == [b[4], b[3], b[2]]
    assert _bodies(s, workflows=("checkout",)) == [b[1], b[0]]
    assert _bodies(s, correlation_ids=("run-2",)) == [b[4], b[3]]
    assert _bodies(s, trace_ids=("a" * 32,)) == [b[1], b[0]]
    assert _bodies(s, fields=(FieldFilter("order_id", "=", "123"),)) == [b[1], b[0]]
    assert _bodies(s, fields=(FieldFilter("order_id", "=", "124"),)) == [b[3]]  # a number sent as a string
    assert _bodies(s, fields=(FieldFilter("order_id", "!=", "123"),)) == [b[4], b[3], b[2]]
    assert _bodies(s, fields=(FieldFilter("http.status_code", ">=", "500"),)) == [b[3], b[1]]  # nested: dotted
    assert _bodies(s, fields=(FieldFilter("amount", "<", "20"),)) == [b[0]]
    assert _bodies(s, fields=(FieldFilter("route", "=", "/health"),)) == [b[2]]
    assert _bodies(s, fields=(FieldFilter("gift", "=", "true"),)) == [b[4]]
    assert _bodies(s, fields=(FieldFilter("service", "=", "cart"), FieldFilter("level", "!=", "debug"))) == [b[3], b[2]]
    assert _bodies(s, since_ns=T0 + MS, until_ns=T0 + 3 * MS) == [b[3], b[2], b[1]]  # both ends inclusive
    # everything at once: the run's errors about the card, but not the retry
    assert _bodies(s, since_ns=T0, levels=levels_from("error"), services=("checkout", "cart"), text=("card",),
                   exclude=("funds",), fields=(FieldFilter("http.status_code", ">", "400"),)) == [b[0]]
    (e,) = s.search_logs(LogQuery(correlation_ids=("run-1",), levels=("error",))).lines
    assert (e.time_ns, e.level, e.service, e.workflow, e.trace_id, e.source) == (T0, "error", "checkout", "checkout",
                                                                                 "a" * 32, "app")
    assert e.attributes == {"order_id": 123, "http": {"status_code": 402}, "amount": "19.90"}
    assert [x.body for x in s.run_logs("run-2")] == [b[3], b[4]]  # a run's lines, oldest first


@pytest.mark.parametrize("few", [1, 10**9], ids=["each-line-looks-up", "gathered-set"])
def test_an_attribute_filter_answers_the_same_gathered_or_looked_up(make_exporter, monkeypatch, few):
    """A filter on an attribute with many rows is checked line by line (EXISTS), with few is gathered (IN): the
    threshold between them moved to either end, the answers stay those of the other test."""
    monkeypatch.setattr(log_store, "FEW_FIELD_ROWS", few)
    ex = make_exporter()
    ex.pipeline.ingest_logs([LogLine(**{k: getattr(x, k) for k in x.__slots__}) for x in LINES], "sdk")
    assert ex.recorder.flush()
    b = [x.body for x in LINES]
    for f, want in ((FieldFilter("order_id", "=", "123"), [b[1], b[0]]),
                    (FieldFilter("order_id", "!=", "123"), [b[4], b[3], b[2]]),
                    (FieldFilter("http.status_code", ">=", "500"), [b[3], b[1]]),
                    (FieldFilter("route", "=", "/health"), [b[2]])):
        assert _bodies(ex.runs, fields=(f,)) == want, f


def test_pages_by_cursor_hold_every_line_once_even_lines_of_one_nanosecond(make_exporter, database_url):
    ex = make_exporter(database_url=database_url)
    same = T0 + 5 * MS  # twelve lines share this nanosecond, over two batches
    first = [_line(i, f"line {i}", time_ns=same if i % 2 else T0 + i * MS) for i in range(12)]
    second = [_line(i, f"line {i}", time_ns=same if i % 2 else T0 + i * MS) for i in range(12, 24)]
    for batch in (first, second):
        ex.pipeline.ingest_logs(batch, "sdk")
        assert ex.recorder.flush()
    seen, cursor = [], None
    for _ in range(10):  # 24 lines, 5 a page: 5 pages
        page = ex.runs.search_logs(LogQuery(text=("line",)), limit=5, cursor=cursor)
        seen += page.lines
        cursor = page.next_cursor
        if cursor is None:
            break
    assert cursor is None and len(seen) == 24
    assert sorted(e.body for e in seen) == sorted(x.body for x in first + second)
    times = [e.time_ns for e in seen]
    assert times == sorted(times, reverse=True) and times.count(same) == 12
    assert len({e.id for e in seen}) == 24


def test_attribute_secrets_are_redacted_users_hashed_and_not_searchable(make_exporter, database_url):
    ex = make_exporter(database_url=database_url)
    ex.pipeline.ingest_logs([_line(0, "login with password=hunter2 ok",
                                   attributes={"password": "hunter2", "user_id": "ana", "card": {"token": "tok_9"}})],
                            "sdk")
    assert ex.recorder.flush()
    (e,) = ex.runs.search_logs(LogQuery()).lines
    assert "hunter2" not in e.body and e.attributes["password"] != "hunter2" and "tok_9" not in str(e.attributes)
    assert e.attributes["user_id"] == hash_user("ana")
    assert _bodies(ex.runs, text=("hunter2",)) == []
    assert _bodies(ex.runs, fields=(FieldFilter("password", "=", "hunter2"),)) == []
    assert _bodies(ex.runs, fields=(FieldFilter("card.token", "=", "tok_9"),)) == []
    assert _bodies(ex.runs, fields=(FieldFilter("user_id", "=", hash_user("ana")),)) == [e.body]


def test_the_sweep_deletes_lines_past_the_run_retention_with_their_index(make_exporter, database_url):
    ex = make_exporter(database_url=database_url, run_retention_s=3600)
    day = 86400 * 10**9
    old = [_line(i, f"stale payment {i}", time_ns=NOW - day + i, attributes={"k": i}) for i in range(30)]
    new = [_line(i, f"fresh payment {i}", time_ns=NOW - 60 * 10**9 + i, attributes={"k": i}) for i in range(3)]
    ex.pipeline.ingest_logs(old + new, "sdk")
    assert ex.recorder.flush()
    ex.recorder.sweep(now=NOW / 1e9)
    assert sorted(_bodies(ex.runs, text=("payment",))) == sorted(x.body for x in new)
    assert len(_bodies(ex.runs, fields=(FieldFilter("k", "<", "100"),))) == 3
    with ex.runs.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(log_fields)).scalar() == 3
        assert conn.execute(select(func.count()).select_from(logs)).scalar() == 3
        if conn.dialect.name == "sqlite":  # the FTS5 index holds exactly what the table does
            conn.exec_driver_sql("INSERT INTO logs_fts(logs_fts) VALUES ('integrity-check')")


def test_the_sweep_goes_in_chunks(make_exporter):
    ex = make_exporter()
    ex.pipeline.ingest_logs([_line(i, f"old {i}", time_ns=T0 + i) for i in range(25)], "sdk")
    assert ex.recorder.flush()
    assert delete_logs_before(ex.runs.engine, T0 + 20, chunk=6) == 20
    assert _bodies(ex.runs) == [f"old {i}" for i in range(24, 19, -1)]


def test_lines_cross_the_writer_process(make_exporter):
    ex = make_exporter(store_writer="process")
    ex.start()
    ex.pipeline.ingest_logs([_line(i, f"from the app {i}", attributes={"n": i}) for i in range(5)], "sdk")
    assert ex.recorder.flush()
    got = _bodies(ex.runs, text=("app",), fields=(FieldFilter("n", ">=", "3"),))
    assert got == ["from the app 4", "from the app 3"]


_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=30),
                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                       max_leaves=10)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.text(max_size=200), attrs=st.dictionaries(st.text(max_size=20), _values, max_size=6),
       level=st.sampled_from(["info", "error", "nonsense"]))
def test_any_line_the_boundary_passes_is_stored_and_found_again(ex, body, attrs, level):
    tag = f"zq{time.perf_counter_ns()}"  # a word no other example's line holds
    ex.pipeline.ingest_logs([_line(0, f"{tag} {body}", level=level, attributes=attrs)], "sdk")
    assert ex.recorder.flush()
    (e,) = ex.runs.search_logs(LogQuery(text=(tag,))).lines
    assert e.body.startswith(tag) and e.level in ("info", "error")
    for name, value in attrs.items():  # each top-level string attribute is a field filter's hit
        if (isinstance(value, str) and "." not in name and name not in FIELD_COLUMNS and name not in USER_KEYS
                and ex.runs.redactor.value({name: value}) == {name: value}):
            assert e.id in {x.id for x in ex.runs.search_logs(
                LogQuery(text=(tag,), fields=(FieldFilter(name, "=", value),))).lines}, (name, value)


def test_attributes_that_flatten_to_one_name_keep_the_first(ex):
    ex.pipeline.ingest_logs([_line(0, "dotted", attributes={"a.b": "x", "a": {"b": "y", "c": 2}, "n": " 7 "})], "sdk")
    assert ex.recorder.flush()
    assert _bodies(ex.runs, fields=(FieldFilter("a.b", "=", "x"),)) == ["dotted"]
    assert _bodies(ex.runs, fields=(FieldFilter("a.b", "=", "y"),)) == []
    assert _bodies(ex.runs, fields=(FieldFilter("a.c", ">", "1"), FieldFilter("n", "=", "7"))) == ["dotted"]
    (e,) = ex.runs.search_logs(LogQuery()).lines
    assert e.attributes == {"a.b": "x", "a": {"b": "y", "c": 2}, "n": " 7 "}  # stored as sent


def test_the_id_is_the_time(make_exporter):
    ex = make_exporter()
    ex.pipeline.ingest_logs([_line(0, "x")], "sdk")
    assert ex.recorder.flush()
    (e,) = ex.runs.search_logs(LogQuery()).lines
    assert e.id == e.time_ns == T0


@pytest.mark.parametrize("bad", [FieldFilter("service", ">", "3"), FieldFilter("order_id", ">", "abc")])
def test_a_comparison_a_field_cannot_take_is_a_value_error(ex, bad):
    with pytest.raises(ValueError, match="compare"):
        ex.runs.search_logs(LogQuery(fields=(bad,)))
