"""Error fingerprints, groups with trends, resolution memory, the knowledge base and attribution."""

import random
import time

import pytest

from backend.analysis.trend import trend
from exporter.classify import KNOWLEDGE, classify_error
from exporter.db import make_engine
from exporter.fingerprint import Miner, mask
from exporter.model import Span
from exporter.runstore import RunStore

H = 3600 * 10**9


def test_variable_parts_are_masked_and_mined_into_one_template():
    m = Miner()
    a = m.add("TimeoutError", "timeout after 5012 ms on 10.0.0.7")
    b = m.add("TimeoutError", "timeout after 4988 ms on 10.0.0.9")
    assert a[0] == b[0] and b[1] == "timeout after <NUM> ms on <IP>"
    u1 = m.add("KeyError", "user alice not found")
    u2 = m.add("KeyError", "user bob not found")
    assert u1[0] == u2[0] and u2[1] == "user <*> not found"
    assert m.add("KeyError", "cart 3f2a9c1b77 not found")[0] != u1[0]      # other words: another group
    assert m.add("ValueError", "timeout after 5012 ms on 10.0.0.7")[0] != a[0]  # other type: another group
    assert mask("order 7d444840-9dc0-11d1-b245-5ffdce74fad2 by a@b.io") == "order <UUID> by <EMAIL>"
    # a restart restores the groups: the same fingerprint, even for the generalised template
    m2 = Miner()
    m2.load([(u2[0], "KeyError", u2[1])])
    assert m2.add("KeyError", "user carol not found")[0] == u1[0]


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
    return Span("a" * 32, sid, workflow, layer, "payments", "charge", t_ns - 10**6, t_ns, "error",
                parent_span_id="f" * 16, correlation_id=cid, error_type=etype, error_message=msg)


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
    s1.close()
    s2 = RunStore(make_engine(url))
    s2.write([_err("c", "3" * 16, now, "KeyError", "user carol not found")])
    [g] = s2.error_groups(now - H)
    assert len(g["times"]) == 3 and g["template"] == "user <*> not found"
    s2.close()


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
            Span("a" * 32, root, "checkout", "api", "orders", "POST /checkout", int(end - dur), end,
                 "error" if failed else "ok", correlation_id=cid, error_type="DBError" if failed else None),
            Span("a" * 32, db, "checkout", "database", "postgres", "SELECT", int(end - dur), int(end - dur / 2),
                 "error" if failed else "ok", root, cid, attributes={"db.instance": replica,
                                                                      "request.id": f"req-{i}"}),
            Span("a" * 32, cache, "checkout", "cache", "redis", "GET cart", int(end - dur / 2), end, "ok", root, cid,
                 attributes={"cache.hit": hit, "client.version": rng.choice(["1.2", "1.3"])}),
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
