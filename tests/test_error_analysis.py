"""Error fingerprints, groups with trends, resolution memory, the knowledge base and attribution."""

import hashlib
import random
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, Table, insert, inspect

from backend.analysis.trend import trend
from exporter.classify import KNOWLEDGE, classify_error
from exporter.db import make_engine
from exporter.fingerprint import MAX_TEMPLATE, fingerprint, legacy_mask, mask, normalize_type
from exporter.model import ErrorRecord, Span
from exporter.runstore import RunStore, error_groups, errors, resolutions

H = 3600 * 10**9


def test_only_variable_parts_are_masked_and_a_different_word_is_a_different_error():
    a = fingerprint("TimeoutError", "timeout after 5012 ms on 10.0.0.7")
    b = fingerprint("TimeoutError", "timeout after 4988 ms on 10.0.0.9:5432")
    assert a[0] == b[0] and b[1] == "timeout after <NUM> ms on <IP>"
    u1, u2 = fingerprint("KeyError", "user alice not found"), fingerprint("KeyError", "user bob42 not found")
    assert u1[0] == u2[0] and u1[1] == "user <NAME> not found"
    inventory = fingerprint("OrderError", "failed to reserve inventory for order 123")
    payment = fingerprint("OrderError", "failed to capture payment for order 654")
    assert inventory[1] == "failed to reserve inventory for order <NUM>" and inventory[0] != payment[0]
    assert fingerprint("OrderError", "failed to reserve inventory for order 77")[0] == inventory[0]
    assert fingerprint("KeyError", "user not found")[0] != fingerprint("KeyError", "user account locked")[0]
    assert fingerprint("ValueError", "timeout after 5012 ms on 10.0.0.7")[0] != a[0]  # other type: another group
    for message, template in [
            ("order 7d444840-9dc0-11d1-b245-5ffdce74fad2 by a@b.io", "order <UUID> by <EMAIL>"),
            ("order ord_8f3k2 already shipped", "order <ID> already shipped"),
            ("refund of ord_fkxqz failed, ref ord_abc12", "refund of ord_fkxqz failed, ref ord_<ID>"),
            ("pod checkout-7d9f8b6c4-x2k9p OOMKilled on node7", "pod <NAME> OOMKilled on node<NUM>"),
            ("open /var/lib/app/cache/x.db: permission denied", "open <PATH>: permission denied"),
            ("GET https://api.example.com/v1/orders/12?x=1 returned 502", "GET <URL> returned <NUM>"),
            ("value 'abc def' is not a valid sku", "value <STR> is not a valid sku"),
            ("session 3f2a9c1b77 expired at 2024-05-01T10:22:33Z", "session <HEX> expired at <TIME>"),
            ("connect to [2001:db8::1]:5432 refused, tenant=acme", "connect to [<IP>]:<NUM> refused, tenant=<NAME>"),
            ("latency 1.5s over 250ms for 0x7f3a", "latency <NUM> over <NUM> for <HEX>"),
            ("can't decode user's utf8 cart", "can't decode user's utf<NUM> cart")]:
        assert mask(message) == template, message


@pytest.mark.parametrize("names", [
    ("__main__.PaymentDeclined", "app.errors.PaymentDeclined", "PaymentDeclined", "com.shop.PaymentDeclinedException",
     "App\\Errors\\PaymentDeclined", "Shop::PaymentDeclined", "PaymentDeclinedError"),
    ("builtins.ValueError", "ValueError"),
    ("requests.exceptions.ConnectionError", "ConnectionError", "System.Net.ConnectionException"),
])
def test_one_exception_under_every_sdks_name_is_one_fingerprint(names):
    assert len({fingerprint(n, "card declined for order 123")[0] for n in names}) == 1
    assert len({normalize_type(n) for n in names}) == 1


def test_exception_types_that_differ_stay_apart():
    assert len({normalize_type(t) for t in ("ValueError", "TypeError", "KeyError", "HTTP 502", "Outer.Timeout")}) == 5
    assert normalize_type("HTTP 502") == "http 502"      # not a dotted name: nothing stripped


_VARIABLE = st.one_of(
    st.integers(-10**12, 10**12).map(str), st.uuids().map(str), st.ip_addresses().map(str), st.emails(),
    st.from_regex(r"\A(/[a-z0-9_.]{1,8}){1,4}\Z"), st.from_regex(r"\A[a-z]{2,4}_[a-z0-9]{3,8}\Z"),
    st.text(max_size=20).map(lambda t: f"'{t}'"), st.text(max_size=20).map(lambda t: f'"{t}"'),
    st.sampled_from(["user", "host", "tenant=", "@", "<NUM>", "<*>", "`", "::", "0x", "ms", "''", "\\"]),
    st.text(max_size=12))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=3000), st.lists(_VARIABLE, max_size=40).map(" ".join)))
@example("''a''")
@example("x" * 5000)
@example("1 " * 1500)
def test_mask_is_idempotent_total_and_bounded(message):
    once = mask(message)
    assert isinstance(once, str) and len(once) <= MAX_TEMPLATE
    assert mask(once) == once
    assert fingerprint("E", message)[1] == once


@pytest.mark.parametrize("etype, msg, category", [
    ("TimeoutError", "read timed out", "timeout"), ("ConnectionRefusedError", "connection refused", "connection"),
    ("OperationalError", "deadlock detected", "deadlock"), ("HTTPError", "401 Unauthorized", "auth"),
    ("HTTPError", "403 Forbidden", "auth"), ("HTTPError", "404 Not Found", "not_found"),
    ("HTTPError", "429 Too Many Requests", "rate_limit"), ("ValidationError", "invalid email", "validation"),
    ("MemoryError", "out of memory", "resource"), ("NPlusOneQuery", "N+1 query pattern", "n_plus_one")])
def test_every_knowledge_base_class_has_advice(etype, msg, category):
    assert classify_error(etype, msg) == category and KNOWLEDGE[category]


def test_trend_labels():
    now = 1000 * H
    assert trend([now - 60 * 10**9], now - 60 * 10**9, now)["trend"] == "new"
    steady = [now - k * H // 2 for k in range(1, 48)]            # two an hour, all day
    assert trend(steady, steady[-1], now)["trend"] == "steady"
    spike = [now - k * 10**9 for k in range(1, 40)] + [now - k * 2 * H for k in range(1, 12)]
    t = trend(spike, min(spike), now)
    assert t["trend"] == "spiking" and t["recent_count"] == 39 and t["expected_recent_count"] < 1


def _err(cid, sid, t_ns, etype, msg, layer="external", workflow="checkout"):
    return Span(trace_id="a" * 32, span_id=sid, workflow=workflow, layer=layer, component="payments",
                operation="charge", start_ns=t_ns - 10**6, end_ns=t_ns, status="error", parent_span_id="f" * 16,
                correlation_id=cid, error_type=etype, error_message=msg)


@pytest.fixture
def ex_db(make_exporter, database_url):
    """An exporter on SQLite and on PostgreSQL, with a test client."""
    from backend.app import create_app

    ex = make_exporter(database_url=database_url)
    return ex, create_app(ex).test_client()


def test_error_groups_api_with_trend_and_resolution_memory(ex_db):
    ex, client = ex_db
    now = time.time_ns()
    spans = [_err(f"run{i}", f"{i:016x}", now - i * 10**9, "PaymentTimeout",
                  f"timeout after {5000 + i} ms on 10.0.0.{i % 9}") for i in range(12)]
    spans += [_err("old", "e" * 16, now - 20 * H, "CardDeclined", "card declined: insufficient funds",
                   layer="api", workflow="login")]
    ex.pipeline.ingest(spans, "native")
    assert ex.pipeline.recorder.flush()
    groups = {g["error_type"]: g for g in client.get("/api/v1/errors").json["groups"]}
    g = groups["PaymentTimeout"]
    assert g["count"] == 12 and g["runs"] == 12 and g["template"] == "timeout after <NUM> ms on <IP>"
    assert g["trend"] == "new" and g["status"] == "open" and g["layers"] == ["external"]
    assert g["workflows"] == ["checkout"] and len(g["sample_correlation_ids"]) == 5
    assert g["suggestions"][0]["source"] == "knowledge_base" and g["category"] == "timeout"
    assert groups["CardDeclined"]["trend"] == "steady"
    assert [x["error_type"] for x in client.get("/api/v1/errors?workflow=login").json["groups"]] == ["CardDeclined"]

    fp = g["fingerprint"]
    r = client.post(f"/api/v1/errors/{fp}/resolve",
                    json={"note": "raised the gateway pool to 50", "resolved_by": "ana"})
    assert r.status_code == 200 and r.json["status"] == "resolved"
    assert client.get(f"/api/v1/errors/{fp}").json["status"] == "resolved"
    # the same fingerprint comes back: a regression, and the note is the first suggestion
    ex.pipeline.ingest([_err("again", "d" * 16, time.time_ns() + 10**6, "PaymentTimeout",
                             "timeout after 7001 ms on 10.0.0.3")], "native")
    assert ex.pipeline.recorder.flush()
    back = client.get(f"/api/v1/errors/{fp}").json
    assert back["status"] == "regressed"
    assert back["suggestions"][0] == {"source": "resolution", "note": "raised the gateway pool to 50",
                                      "resolved_by": "ana", "resolved_at_ns": back["resolutions"][0]["resolved_at_ns"]}
    listed = {x["fingerprint"]: x for x in client.get("/api/v1/errors").json["groups"]}[fp]
    assert listed["status"] == "regressed" and listed["suggestions"][0]["source"] == "resolution"
    page = client.get("/runs/again").get_data(as_text=True)   # the run page offers the earlier fix too
    assert "Fixed before:" in page and "raised the gateway pool to 50" in page and ">regressed<" in page


@pytest.mark.parametrize("body, field", [(b"{", None), (b"[]", None), (b'{"note": ""}', "note"),
                                         (b'{"note": 5}', "note"), (b'{"note": "x", "resolved_by": 3}', "resolved_by")])
def test_resolve_rejects_bad_bodies(ex, client, body, field):
    ex.pipeline.ingest([_err("r", "1" * 16, time.time_ns(), "Boom", "boom")], "native")
    assert ex.pipeline.recorder.flush()
    fp = client.get("/api/v1/errors").json["groups"][0]["fingerprint"]
    r = client.post(f"/api/v1/errors/{fp}/resolve", data=body, content_type="application/json")
    assert r.status_code == 400 and r.json["error"].get("field") == field
    assert client.get(f"/api/v1/errors/{fp}").json["status"] == "open"  # nothing was recorded


def test_unknown_fingerprints_are_404(client):
    assert client.get("/api/v1/errors/0123456789abcdef").status_code == 404
    r = client.post("/api/v1/errors/0123456789abcdef/resolve", json={"note": "x"})
    assert r.status_code == 404 and r.json["error"]["code"] == "fingerprint_not_found"


def test_fingerprints_survive_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    s1 = RunStore(make_engine(url))
    now = time.time_ns()
    s1.write([_err("a", "1" * 16, now, "KeyError", "user alice not found"),
              _err("b", "2" * 16, now, "KeyError", "user bob not found")])
    [g1] = s1.error_groups(now - H)
    s1.close()
    s2 = RunStore(make_engine(url))
    s2.write([_err("c", "3" * 16, now, "builtins.KeyError", "user carol not found")])
    [g] = s2.error_groups(now - H)
    assert g.group.fingerprint == g1.group.fingerprint and len(g.times) == 3 and g.group.count == 3
    assert g.group.template == "user <NAME> not found" and g.group.error_type == "KeyError"
    s2.close()


def _chain(cid, i, t_ns, caller=("HTTPError", "upstream returned 502"),
           origin=("PaymentDeclined", "card declined for order {i}")):
    """One failed run: the root (a caller) fails because its child, the origin, failed."""
    root, child = f"{i:015x}a", f"{i:015x}b"
    return [Span(trace_id="b" * 32, span_id=root, workflow="checkout", layer="api", component="orders",
                 operation="POST /checkout", start_ns=t_ns - 10**7, end_ns=t_ns, status="error", correlation_id=cid,
                 error_type=caller[0], error_message=caller[1]),
            Span(trace_id="b" * 32, span_id=child, workflow="checkout", layer="external", component="payments",
                 operation="charge", start_ns=t_ns - 9 * 10**6, end_ns=t_ns - 10**6, status="error",
                 parent_span_id=root, correlation_id=cid, error_type=origin[0], error_message=origin[1].format(i=i))]


def test_an_error_that_propagates_is_counted_once_under_the_error_that_started_it(ex_db):
    ex, client = ex_db
    now = time.time_ns()
    for i in range(3):
        ex.pipeline.ingest(_chain(f"p{i}", i, now - (10 - i) * 10**9), "native")
    assert ex.pipeline.recorder.flush()
    [g] = client.get("/api/v1/errors").json["groups"]        # the 502 is not a group of its own: a symptom
    assert g["error_type"] == "PaymentDeclined" and g["count"] == 3 and g["runs"] == 3 and g["total_count"] == 3
    [prop] = g["propagated_to"]
    assert (prop["error_type"], prop["template"], prop["count"]) == ("HTTPError", "upstream returned <NUM>", 3)
    caller = client.get(f"/api/v1/errors/{prop['fingerprint']}").json
    assert caller["count"] == 0 and caller["status"] == "open"
    assert [(c["fingerprint"], c["count"]) for c in caller["caused_by"]] == [(g["fingerprint"], 3)]
    assert {r["cause_fingerprint"] for r in caller["recent"]} == {g["fingerprint"]}
    origin = client.get(f"/api/v1/errors/{g['fingerprint']}").json
    assert {r["cause_fingerprint"] for r in origin["recent"]} == {None} and origin["propagated_to"][0]["count"] == 3

    # the caller arrives first (it is an origin until then), its cause later: the counts move to the cause
    late = _chain("late", 7, now - 10**9)
    ex.pipeline.ingest(late[:1], "native")
    assert ex.pipeline.recorder.flush()
    listed = {x["error_type"]: x for x in client.get("/api/v1/errors").json["groups"]}
    assert listed["HTTPError"]["count"] == 1 and listed["PaymentDeclined"]["count"] == 3
    ex.pipeline.ingest(late[1:], "native")
    assert ex.pipeline.recorder.flush()
    [g] = client.get("/api/v1/errors").json["groups"]
    assert g["error_type"] == "PaymentDeclined" and g["count"] == 4 and g["propagated_to"][0]["count"] == 4
    assert client.get(f"/api/v1/errors/{prop['fingerprint']}").json["count"] == 0

    # the 502 resolved; a new exception fails through it: the new one is the news, the 502's note is not served
    r = client.post(f"/api/v1/errors/{prop['fingerprint']}/resolve", json={"note": "restarted payments"})
    assert r.status_code == 200
    ex.pipeline.ingest(_chain("inv", 8, time.time_ns() + 10**6, origin=("InventoryError", "no stock for sku {i}")),
                       "native")
    assert ex.pipeline.recorder.flush()
    assert client.get(f"/api/v1/errors/{prop['fingerprint']}").json["status"] == "resolved"
    inv = {x["error_type"]: x for x in client.get("/api/v1/errors").json["groups"]}["InventoryError"]
    assert inv["status"] == "open" and all(s["source"] != "resolution" for s in inv["suggestions"])
    assert inv["propagated_to"][0]["fingerprint"] == prop["fingerprint"]


def test_an_exception_raised_through_nested_steps_counts_once_per_run(ex, client):
    from exporter.sdk import WorkflowTracer
    from exporter.sdk.sinks import InProcessSink

    class PaymentDeclined(Exception):
        pass

    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    for i in range(2):
        with (pytest.raises(PaymentDeclined), t.workflow("checkout"), t.step("api", "orders", "create"),
              t.step("external", "payments", "charge"), t.step("external", "gateway", "authorize")):
            raise PaymentDeclined(f"card declined for order {i}")
    assert ex.pipeline.recorder.flush()
    [g] = client.get("/api/v1/errors").json["groups"]
    assert g["count"] == 2 and g["runs"] == 2 and g["total_count"] == 2 and g["propagated_to"] == []
    assert g["layers"] == ["external"] and g["components"] == ["gateway"]       # where it started


def test_a_logged_error_is_the_cause_of_the_step_that_failed_after_it(ex, client):
    now = time.time_ns()
    root, child = "c" * 15 + "1", "c" * 15 + "2"
    ex.pipeline.ingest([Span(trace_id="c" * 32, span_id=root, workflow="checkout", layer="api", component="orders",
                             operation="POST /checkout", start_ns=now - 10**7, end_ns=now, status="error",
                             correlation_id="logged", error_type="HTTPError", error_message="500 internal error"),
                        Span(trace_id="c" * 32, span_id=child, workflow="checkout", layer="external",
                             component="payments", operation="charge", start_ns=now - 9 * 10**6, end_ns=now - 10**6,
                             status="ok", parent_span_id=root, correlation_id="logged")], "native")
    ex.pipeline.record_error(ErrorRecord("app.errors.PaymentDeclined", "card declined for order 7", "external",
                                         "payments", "checkout", correlation_id="logged", trace_id="c" * 32,
                                         span_id=child, time_ns=now - 2 * 10**6))
    assert ex.pipeline.recorder.flush()
    [g] = client.get("/api/v1/errors").json["groups"]
    assert g["error_type"] == "app.errors.PaymentDeclined" and g["count"] == 1
    assert [p["error_type"] for p in g["propagated_to"]] == ["HTTPError"]


def test_one_exception_from_two_sdks_is_one_group(ex, client):
    now = time.time_ns()
    names = ("__main__.PaymentDeclined", "PaymentDeclined", "com.shop.PaymentDeclinedException")
    ex.pipeline.ingest([_err(f"s{i}", f"{i + 1:016x}", now - (2 - i) * 10**9, name, "card declined: do_not_honor")
                        for i, name in enumerate(names)], "native")
    assert ex.pipeline.recorder.flush()
    [g] = client.get("/api/v1/errors").json["groups"]
    assert g["count"] == 3 and g["error_type"] == "__main__.PaymentDeclined"   # the name it was first seen under


def test_a_different_constant_word_is_a_new_group_not_a_regression(ex_db):
    """The issue's case: the inventory fix must not be served for a payment failure."""
    ex, client = ex_db
    now = time.time_ns()
    ex.pipeline.ingest([_err("inv", "1" * 16, now - 10**9, "OrderError", "failed to reserve inventory for order 123")],
                       "native")
    assert ex.pipeline.recorder.flush()
    [inv] = client.get("/api/v1/errors").json["groups"]
    assert client.post(f"/api/v1/errors/{inv['fingerprint']}/resolve",
                       json={"note": "restocked the warehouse feed"}).status_code == 200
    ex.pipeline.ingest([_err("pay", "2" * 16, time.time_ns() + 10**6, "OrderError",
                             "failed to capture payment for order 654")], "native")
    assert ex.pipeline.recorder.flush()
    groups = {g["fingerprint"]: g for g in client.get("/api/v1/errors").json["groups"]}
    assert len(groups) == 2 and groups[inv["fingerprint"]]["status"] == "resolved"
    [pay] = [g for fp, g in groups.items() if fp != inv["fingerprint"]]
    assert pay["template"] == "failed to capture payment for order <NUM>" and pay["status"] == "open"
    assert not any("warehouse" in s["note"] for s in pay["suggestions"])


def _old_fingerprint(error_type, message):
    """What the Drain-style miner gave a group: sha1(raw type, old template of its first message)."""
    return hashlib.sha1(f"{error_type}\x00{legacy_mask(message)}".encode()).hexdigest()[:16]


def _old_store(url, now):
    """A store as the code before type + template fingerprints wrote it: no cause_fingerprint column, groups
    keyed by the old fingerprint, templates generalised with <*>, resolved with notes."""
    engine = make_engine(url)
    old = MetaData()
    Table("errors", old, *[c._copy() for c in errors.columns if c.name != "cause_fingerprint"])
    error_groups.to_metadata(old)
    resolutions.to_metadata(old)
    old.create_all(engine)
    day = now - 24 * H
    inv = _old_fingerprint("OrderError", "failed to reserve inventory for order 123")
    tmo = _old_fingerprint("PaymentTimeout", "timeout after 5012 ms on 10.0.0.7")
    usr = _old_fingerprint("KeyError", "user alice not found")
    groups = [(inv, "OrderError", "failed to <*> <*> for order <NUM>", "restocked the warehouse feed"),
              (tmo, "PaymentTimeout", "timeout after <NUM> ms on <IP>", "raised the gateway pool to 50"),
              (usr, "KeyError", "user <*> not found", "reindexed the users table")]
    with engine.begin() as conn:
        for fp, etype, template, note in groups:
            conn.execute(insert(error_groups).values(fingerprint=fp, error_type=etype, template=template,
                                                     category="unknown", first_seen_ns=day, last_seen_ns=day + 10,
                                                     count=2, resolved_at_ns=day + H))
            conn.execute(insert(resolutions).values(fingerprint=fp, note=note, resolved_by="ana",
                                                    resolved_at_ns=day + H))
        # the merged group's occurrences are kept; the other two groups' were swept, their notes stay
        for i, msg in enumerate(("failed to reserve inventory for order 123",
                                 "failed to capture payment for order 654")):
            conn.execute(insert(old.tables["errors"]).values(
                fingerprint=inv, correlation_id=f"old{i}", span_id=None, workflow="checkout", service="",
                layer="api", component="orders", error_type="OrderError", message=msg, time_ns=day + i))
    engine.dispose()
    return inv, tmo, usr


def test_groups_stored_by_the_old_miner_keep_their_notes_after_the_upgrade(make_exporter, database_url):
    now = time.time_ns()
    inv, tmo, usr = _old_store(database_url, now)
    from backend.app import create_app

    ex = make_exporter(database_url=database_url)
    client = create_app(ex).test_client()
    assert "cause_fingerprint" in {c["name"] for c in inspect(ex.runs.engine).get_columns("errors")}
    sent = [("OrderError", "failed to reserve inventory for order 999"),
            ("OrderError", "failed to capture payment for order 777"),
            ("PaymentTimeout", "timeout after 7001 ms on 10.0.0.3"),
            ("KeyError", "user alice not found"), ("KeyError", "user bob not found")]
    ex.pipeline.ingest([_err(f"new{i}", f"{i + 1:016x}", now + i * 10**6, t, m) for i, (t, m) in enumerate(sent)],
                       "native")
    assert ex.pipeline.recorder.flush()
    groups = {g["fingerprint"]: g for g in client.get("/api/v1/errors").json["groups"]}
    for fp, note in ((inv, "restocked the warehouse feed"), (tmo, "raised the gateway pool to 50"),
                     (usr, "reindexed the users table")):
        g = client.get(f"/api/v1/errors/{fp}").json
        assert g["status"] == "regressed" and g["suggestions"][0]["note"] == note, g
        assert groups[fp]["status"] == "regressed"
    assert groups[usr]["count"] == 2                              # alice and bob: one error, as before
    assert groups[inv]["template"] == "failed to reserve inventory for order <NUM>"   # <*> is gone
    [pay] = [g for g in groups.values() if g["template"] == "failed to capture payment for order <NUM>"]
    assert pay["fingerprint"] not in (inv, tmo, usr) and pay["status"] == "open"
    assert not any(s["source"] == "resolution" for s in pay["suggestions"])
    # and after one more restart, the same errors still find the same groups (the aliases are stored)
    fps = set(groups)
    ex.close()
    ex2 = make_exporter(database_url=database_url)
    ex2.pipeline.ingest([_err(f"again{i}", f"{i + 9:016x}", now + (10 + i) * 10**6, t, m)
                         for i, (t, m) in enumerate(sent)], "native")
    assert ex2.pipeline.recorder.flush()
    again = {g["fingerprint"]: g for g in create_app(ex2).test_client().get("/api/v1/errors").json["groups"]}
    assert set(again) == fps and again[usr]["count"] == 4


def test_error_group_paths_reject_bad_fingerprints(client):
    for path in ("/api/v1/errors/" + "a" * 65, "/api/v1/errors/a%00b"):
        r = client.get(path)
        assert r.status_code == 400 and r.json["error"]["field"] == "fingerprint", r.data
    r = client.post("/api/v1/errors/" + "a" * 65 + "/resolve", json={"note": "x"})
    assert r.status_code == 400 and r.json["error"]["field"] == "fingerprint"


def _runs_for_attribution(ex, n=300, seed=5):
    """Runs where the database replica-2 fails 60% of the time and everything else 5%; slow runs miss the cache."""
    rng = random.Random(seed)
    now = time.time_ns()
    spans = []
    for i in range(n):
        cid = f"run-{i}"
        replica = rng.choice(["replica-1", "replica-2", "replica-3"])
        hit = rng.random() < 0.85
        failed = rng.random() < (0.6 if replica == "replica-2" else 0.05)
        dur = (rng.uniform(300, 500) if not hit else rng.uniform(50, 150)) * 10**6
        end = now - (n - i) * 10**9
        root, db, cache = f"{i:015x}0", f"{i:015x}1", f"{i:015x}2"
        spans += [
            Span(trace_id="a" * 32, span_id=root, workflow="checkout", layer="api", component="orders",
                 operation="POST /checkout", start_ns=int(end - dur), end_ns=end, status="error" if failed else "ok",
                 correlation_id=cid, error_type="DBError" if failed else None),
            Span(trace_id="a" * 32, span_id=db, workflow="checkout", layer="database", component="postgres",
                 operation="SELECT", start_ns=int(end - dur), end_ns=int(end - dur / 2),
                 status="error" if failed else "ok", parent_span_id=root, correlation_id=cid,
                 attributes={"db.instance": replica,
                                                                      "request.id": f"req-{i}"}),
            Span(trace_id="a" * 32, span_id=cache, workflow="checkout", layer="cache", component="redis",
                 operation="GET cart", start_ns=int(end - dur / 2), end_ns=end, status="ok", parent_span_id=root,
                 correlation_id=cid, attributes={"cache.hit": hit, "client.version": rng.choice(["1.2", "1.3"])}),
        ]
    ex.pipeline.ingest(spans, "native")
    assert ex.pipeline.recorder.flush()


def test_attribution_ranks_the_values_that_fail_together(ex_db):
    ex, client = ex_db
    _runs_for_attribution(ex)
    body = client.get("/api/v1/attribution?workflow=checkout&by=failed").json
    top = body["findings"][0]
    assert (top["dimension"], top["value"]) == ("attr.db.instance", "replica-2")
    assert top["significant"] and top["q_value"] < 1e-6 and top["lift"] > 3
    assert len(top["sample_runs"]) == 3 and top["sample_pages"][0].endswith("/runs/" + top["sample_runs"][0])
    found = {(f["dimension"], f["value"]): f for f in body["findings"]}
    assert not any(f["significant"] for (d, _), f in found.items() if d == "attr.client.version")
    assert not any(d == "attr.request.id" for d, _ in found)       # an ID is never an explanation
    slow = client.get("/api/v1/attribution?workflow=checkout&by=slow").json
    assert (slow["findings"][0]["dimension"], slow["findings"][0]["value"]) == ("attr.cache.hit", "False")
    assert slow["threshold_ms"] > 0


@pytest.mark.parametrize("query, field", [("", "workflow"), ("workflow=checkout&by=odd", "by"),
                                          ("workflow=checkout&since=2030-01-01T00:00:00Z", "since")])
def test_attribution_rejects_bad_queries(client, query, field):
    r = client.get("/api/v1/attribution?" + query)
    assert r.status_code == 400 and r.json["error"]["field"] == field


def test_resolve_caps_its_body_like_ingest_does(ex, client):
    import gzip

    from backend.analysis.api import MAX_RESOLVE_BODY

    ex.pipeline.ingest([_err("r", "1" * 16, time.time_ns(), "Boom", "boom")], "native")
    assert ex.pipeline.recorder.flush()
    fp = client.get("/api/v1/errors").json["groups"][0]["fingerprint"]
    big = b'{"note": "' + b"x" * MAX_RESOLVE_BODY + b'"}'
    for body, headers in ((big, {}), (gzip.compress(big), {"Content-Encoding": "gzip"})):
        r = client.post(f"/api/v1/errors/{fp}/resolve", data=body, content_type="application/json", headers=headers)
        assert r.status_code == 413 and r.json["error"]["code"] == "too_large", r.data
    # the largest valid note, every character escaped, still fits
    note = "\\u00e9" * 4000
    r = client.post(f"/api/v1/errors/{fp}/resolve", data=f'{{"note": "{note}"}}', content_type="application/json")
    assert r.status_code == 200 and r.json["status"] == "resolved"


@pytest.mark.parametrize("addr, status", [("127.0.0.1", 404), ("127.0.0.2", 404), ("127.255.0.9", 404), ("::1", 404),
                                          ("::ffff:127.0.0.3", 404), ("10.0.0.5", 403), ("::ffff:10.0.0.5", 403),
                                          ("128.0.0.1", 403), ("", 403)])
def test_admin_endpoints_take_every_loopback_address(client, addr, status):
    r = client.post("/api/v1/errors/0123456789abcdef/resolve", json={"note": "x"}, environ_base={"REMOTE_ADDR": addr})
    assert r.status_code == status and "error" in r.json


@pytest.mark.parametrize("query, field", [("since=1e20", "since"), ("since=2263-01-01T00:00:00Z", "since"),
                                          ("recent_s=%C2%B2", "recent_s"), ("limit=%D9%A1", "limit"),
                                          ("workflow=a%00", "workflow")])
def test_error_list_rejects_out_of_range_filters(client, query, field):
    r = client.get("/api/v1/errors?" + query)
    assert r.status_code == 400 and r.json["error"]["field"] == field, r.data


def test_failure_causes_name_the_deepest_error_below_and_survive_odd_trees():
    from exporter.fingerprint import failure_causes

    def e(sid, fp, t=0):
        return {"span_id": sid, "fingerprint": fp, "time_ns": t}

    tree = {"root": None, "a": "root", "b": "a", "c": "root", "log": "missing"}
    errs = [e("root", "502"), e("a", "wrap"), e("b", "declined", 2), e("c", "other", 1), e(None, "logged"),
            e("b", "declined-log", 3), e("missing", "in-missing-step")]
    causes = failure_causes(errs, tree)
    assert causes == ["declined", "declined", None, None, None, None, None]   # b is deepest; peers on b stand
    # parent links that close a cycle: the walk ends, and neither is below the other (so each still counts)
    assert failure_causes([e("x", "X"), e("y", "Y"), e("z", "Z")], {"x": "y", "y": "x", "z": "x"}) == [
        "Z", "Z", None]
    # a logged error names a step that has not arrived: the errors below that step are its cause
    assert failure_causes([e("s1", "logged"), e("s2", "deep")], {"s2": "s1"}) == ["deep", None]
