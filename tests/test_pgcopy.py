"""PostgreSQL's bulk insert of the big tables (exporter/store/pgcopy.py), on a real PostgreSQL.

The COPY path (the default) and the unnest path must store exactly what the old row-at-a-time ``executemany``
stored (same rows, same redaction, the first of two rows with one key), store nothing twice when a batch is sent
again after an outage, and leave the recorder's poison isolation as it was: what the database refuses costs
only its own item, and a dropped connection is an outage, not poison.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from exporter.db import make_engine
from exporter.model import ErrorRecord, Span
from exporter.store.pgcopy import METHOD_ENV, METHODS, BulkInsert, bulk_method_from_env
from exporter.store.recorder import RunWriter, is_outage, write_isolating
from exporter.store.schema import spans

T0 = 1_795_000_000_000_000_000
TABLES = {"spans": "correlation_id, span_id", "span_details": "correlation_id, span_id",
          "span_links": "correlation_id, span_id, link_trace_id, link_span_id", "runs": "correlation_id",
          "errors": "correlation_id, span_id, time_ns"}
#: what a stored error row is compared by (its id is the database's)
ERROR_COLUMNS = "fingerprint, correlation_id, span_id, workflow, service, layer, component, error_type, message, " \
                "stack_trace, time_ns, cause_fingerprint"


@pytest.fixture(scope="module")
def writers(postgres):
    """A writer per method, each on a database of its own (shared by this module's tests: each test uses run ids
    of its own)."""
    made = {m: RunWriter(make_engine(postgres.fresh_database()), pg_method=m) for m in METHODS}
    yield made
    for w in made.values():
        w.engine.dispose()


def _span(cid: str, sid: str, parent: str | None, **kw) -> Span:
    kw.setdefault("start_ns", T0)
    kw.setdefault("end_ns", T0 + 5_000_000)
    kw.setdefault("operation", "POST /orders")
    return Span(trace_id=cid.encode().hex()[:32].ljust(32, "0"), span_id=sid, workflow="checkout", layer="api",
                component="orders", parent_span_id=parent, correlation_id=cid, service="shop", **kw)


def _batch(tag: str) -> list:
    """Roots with resources, secrets, users and state; children with events and links; failed steps; an SDK
    fast-path step; a logged error; and a span sent twice in one batch with different content."""
    items: list = []
    resource = {"service.name": "shop", "host.name": "node-3", "api_key": "sk-live-123"}
    for i in range(30):
        cid = f"{tag}-{i}"
        root = _span(cid, f"{i:016x}", None, attributes={"http.route": "/orders", "password": "hunter2",
                                                          "user.id": f"user-{i}"},
                     state={"cart": [1, 2, 3], "token": "secret-token"}, user=f"user-{i}", kind="SERVER",
                     resource=resource)
        child = _span(cid, f"{i:015x}c", root.span_id, kind="CLIENT", resource=resource,
                      events=[{"name": "retry", "time_ns": T0 + 1, "attributes": {"authorization": "Bearer x"}}],
                      links=[{"trace_id": "b" * 32, "span_id": "c" * 16, "attributes": {"why": "batch"}},
                             {"trace_id": "d" * 32, "span_id": "e" * 16}])
        items += [child, root]
        if i % 7 == 0:
            items.append(_span(cid, f"{i:015x}e", root.span_id, status="error", error_type="KeyError",
                               error_message=f"user {i} not found", stack_trace="Traceback ...\nKeyError"))
            items.append(ErrorRecord("TimeoutError", f"upstream {i} timed out after 30 s", "external", "payments",
                                     "checkout", correlation_id=cid, time_ns=T0 + 7))
    run = SimpleNamespace(correlation_id=f"{tag}-0", trace_id="a" * 32, workflow="checkout", service="shop")
    items.append((run, "database", "postgres", "SELECT orders", T0 + 10, T0 + 20, "f" * 16, "0" * 16))
    # one key twice in a batch: the first is kept, as the one-row statement's DO NOTHING kept it
    items.append(_span(f"{tag}-1", f"{1:016x}", None, operation="second copy of the root"))
    return items


def _rows(writer: RunWriter, tag: str) -> dict[str, list]:
    out = {}
    with writer.engine.connect() as conn:
        for table, key in TABLES.items():
            cols = ERROR_COLUMNS if table == "errors" else "*"
            out[table] = [tuple(r) for r in conn.execute(text(
                f"SELECT {cols} FROM {table} WHERE correlation_id LIKE :tag ORDER BY {key}"), {"tag": f"{tag}-%"})]
    return out


def test_copy_and_unnest_store_exactly_the_rows_executemany_stored(writers):
    got = {}
    for method, w in writers.items():
        left, error, counts, poisoned = write_isolating(w, _batch("same"))
        assert (left, error, poisoned) == ([], None, []), method
        assert counts["runs"] == 31, method  # 30 roots, and the second copy of one of them
        got[method] = _rows(w, "same")
    base = got["executemany"]
    assert [len(base[t]) for t in TABLES] == [66, 30, 60, 30, 10]
    for method in METHODS:
        assert got[method] == base, method
    root = next(r for r in got["copy"]["spans"] if r[0] == "same-1" and r[1] == f"{1:016x}")
    assert root[8] == "POST /orders"  # the first of the two rows with its key
    text_of_copy = repr(got["copy"])
    for secret in ("hunter2", "sk-live-123", "secret-token", "Bearer x"):
        assert secret not in text_of_copy  # redacted (or hashed) before COPY, as before


def test_a_batch_sent_again_after_an_outage_stores_nothing_twice(writers):
    """The writer resends what it could not confirm: part of a batch, then all of it, then all of it again."""
    w = writers["copy"]
    batch = _batch("again")
    assert write_isolating(w, batch[: len(batch) // 2])[:2] == ([], None)
    once = _rows(w, "again")
    for _ in range(2):
        left, error, _counts, poisoned = write_isolating(w, batch)
        assert (left, error, poisoned) == ([], None, [])
    twice = _rows(w, "again")
    assert {t: len(rows) for t, rows in twice.items() if t != "errors"} == \
        {"spans": 66, "span_details": 30, "span_links": 60, "runs": 30}
    assert all(set(once[t]) <= set(twice[t]) for t in TABLES)
    writers["executemany"].write(batch)
    assert {t: rows for t, rows in twice.items() if t != "errors"} == \
        {t: rows for t, rows in _rows(writers["executemany"], "again").items() if t != "errors"}


def test_what_postgresql_refuses_costs_only_its_own_item(writers):
    """A NUL in text (refused by the COPY itself) and a span id over 16 characters (refused by the INSERT from
    the staging table): each item alone is dropped as poison, the rest of the batch is stored."""
    got = {}
    for method, w in writers.items():
        batch = [_span(f"poison-{i}", f"{i:016x}", None) for i in range(200)]
        batch[50].operation = "SELECT\x00 1"
        batch[120].span_id = "1" * 40
        left, error, counts, poisoned = write_isolating(w, batch)
        assert (left, error) == ([], None), method
        assert sorted(it.correlation_id for it, _ in poisoned) == ["poison-120", "poison-50"], method
        assert all(isinstance(e, sa_exc.DataError) for _, e in poisoned), method  # SQLAlchemy's, as before
        got[method] = _rows(w, "poison")
        assert len(got[method]["spans"]) == 198 and counts["runs"] == 198, method
    assert got["copy"] == got["unnest"] == got["executemany"]


def test_a_refused_copy_leaves_the_connection_usable(writers):
    w = writers["copy"]
    with pytest.raises(sa_exc.DataError, match=r"NUL|0x00"):
        w.write([_span("refused-0", "0" * 16, None, operation="a\x00b")])
    w.write([_span("refused-1", "1" * 16, None)])
    assert [r[0] for r in _rows(w, "refused")["spans"]] == ["refused-1"]


def test_a_connection_cut_under_the_bulk_insert_is_an_outage_not_poison(postgres, writers):
    w = writers["copy"]
    bulk = BulkInsert(spans, "copy")
    row = w.span_row(_span("cut-0", "0" * 16, None), {})[0]
    with w.engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(sa_exc.DBAPIError) as got:
            bulk.insert(conn, [row])
    assert is_outage(got.value)
    w.write([_span("cut-1", "1" * 16, None)])  # the pool hands out a live connection again
    assert len(_rows(w, "cut")["spans"]) == 1


def test_a_role_that_may_not_create_temporary_tables_still_stores_every_span(postgres):
    """A hardened database revokes TEMPORARY from its application role: the staging table cannot be made, and the
    default COPY path must not turn every batch into poison (the row-at-a-time path stored them): it stores the
    same rows by unnest, which needs no table."""
    url = postgres.fresh_database()
    owner = RunWriter(make_engine(url), pg_method="executemany")  # the schema, made by its owner
    db = url.rsplit("/", 1)[1]
    role = f"notemp_{db}"  # roles are the cluster's: one per database
    with psycopg.connect(postgres.admin_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC")
    with owner.engine.begin() as conn:
        conn.exec_driver_sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        conn.exec_driver_sql(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    w = RunWriter(make_engine(url.replace("flowscope@", f"{role}@")), pg_method="copy")
    try:
        left, error, counts, poisoned = write_isolating(w, _batch("notemp"))
        assert (left, error, poisoned) == ([], None, [])
        assert counts["runs"] == 31
        got = _rows(owner, "notemp")
        assert [len(got[t]) for t in TABLES] == [66, 30, 60, 30, 10]
    finally:
        w.engine.dispose()
        owner.engine.dispose()


def test_the_method_is_chosen_by_the_environment_for_benchmarks_only():
    assert bulk_method_from_env({}) == "copy"
    assert bulk_method_from_env({METHOD_ENV: "executemany"}) == "executemany"
    with pytest.raises(ValueError, match=METHOD_ENV):
        bulk_method_from_env({METHOD_ENV: "fastest"})
    with pytest.raises(ValueError, match="one of copy, unnest, executemany"):
        BulkInsert(spans, "fastest")


# -- hostile values: whatever one path stores or refuses, the others store or refuse the same ----------------

_hostile_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=30),   # NULs, lone surrogates, control characters
    st.text("ab\x00\\\t\n\"',{}", max_size=30),                  # what COPY's text format would have to escape
    st.integers(190, 520).map(lambda n: "x" * n),                   # around every column's length cap
)
_hostile_span = st.fixed_dictionaries({
    "operation": _hostile_text, "component": _hostile_text, "workflow": _hostile_text, "service": _hostile_text,
    "error_message": st.none() | _hostile_text, "kind": st.none() | _hostile_text,
    "span_id": st.text("0123456789abcdef", min_size=1, max_size=20),
    "start_ns": st.integers(-(2**64), 2**64),
    "attributes": st.none() | st.dictionaries(_hostile_text, _hostile_text | st.integers(-(2**65), 2**65), max_size=3),
    "links": st.none() | st.lists(st.fixed_dictionaries({"trace_id": _hostile_text, "span_id": _hostile_text}),
                                  max_size=2),
    "root": st.booleans(),
})
_n = iter(range(10**9))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(_hostile_span, min_size=1, max_size=6))
def test_hostile_values_are_stored_or_refused_alike_by_every_method(writers, specs):
    tag = f"fuzz{next(_n)}"
    got = {}
    for method, w in writers.items():
        batch = []
        for i, sp in enumerate(specs):
            s = _span(f"{tag}-{i % 3}", sp["span_id"], None if sp["root"] else "p" * 16, start_ns=sp["start_ns"],
                      status="error" if sp["error_message"] is not None else "ok", error_type="Boom",
                      error_message=sp["error_message"], attributes=sp["attributes"], kind=sp["kind"],
                      links=sp["links"])
            s.operation, s.component, s.workflow, s.service = (sp["operation"], sp["component"], sp["workflow"],
                                                               sp["service"])
            batch.append(s)
        left, error, _counts, poisoned = write_isolating(w, batch)
        assert (left, error) == ([], None), method  # never taken for an outage
        got[method] = ({next(k for k, b in enumerate(batch) if b is it) for it, _ in poisoned}, _rows(w, tag))
    assert got["copy"] == got["executemany"]
    assert got["unnest"] == got["executemany"]



def test_replicas_writing_spans_of_the_same_processes_at_once_store_every_span(postgres):
    """Two writers on one database (two replicas) write batches naming the same three resources, in opposite
    orders, at once: the resources' rows must not deadlock them (a deadlock would be taken for poison and drop
    spans), and each resource is stored once."""
    url = postgres.fresh_database()
    writers = [RunWriter(make_engine(url)) for _ in range(2)]
    resources = [{"service.name": f"svc-{k}", "host.name": "node-1"} for k in range(3)]
    results: list = []

    def write(w: int) -> None:
        order = resources if w == 0 else resources[::-1]
        for b in range(20):
            end = T0 + b * 7200 * 10**9  # each batch two hours on: every batch raises each resource's last_seen_ns
            batch = [_span(f"rep{w}-{b}-{k}", f"{k + 1:016x}", None, resource=res, start_ns=end - 1000, end_ns=end)
                     for k, res in enumerate(order)]
            left, error, _counts, poisoned = write_isolating(writers[w], batch)
            results.append((left, error, len(poisoned)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert results == [([], None, 0)] * 40
        with writers[0].engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM spans WHERE correlation_id LIKE 'rep%'")).scalar_one() == 120
            assert conn.execute(text("SELECT count(*) FROM resources")).scalar_one() == 3
    finally:
        for w in writers:
            w.engine.dispose()
