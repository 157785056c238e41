"""Fuzz every GET route of the API (and the run page) with Hypothesis: never a 5xx, every 4xx in the error shape.

The routes and their query parameters come from the OpenAPI document, so a new route is fuzzed as soon as
it is documented. Values are drawn from what breaks parsers: any text, numbers past 64 bits, non-finite
floats, non-ASCII digits, RFC 3339 times from year 1 to 9999 in any offset, NUL, and the known-good
values of the stored runs (so the deeper code paths run too). Seeded and bounded: a few seconds in all.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.app import create_app
from backend.openapi import openapi_document
from exporter import conventions as c
from exporter.config import load_config
from exporter.demo import generate_run
from exporter.profiles import Profile
from exporter.runtime import build

ROUTES = [(path, op) for path, item in openapi_document()["paths"].items() for method, op in item.items()
          if method == "get" and (path.startswith(("/api/v1/", c.RUN_PAGE_PATH, "/errors/")) or path == "/")]
#: Pages answer a bad filter with a page naming it (400, HTML), as documented.
HTML_PAGES = ("/", c.RUN_PAGE_PATH)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """An app on a store holding a few runs (one failed, one with a parent cycle), a profile and an alert."""
    tmp = tmp_path_factory.mktemp("fuzz")
    ex = build(load_config({"database_url": f"sqlite:///{tmp}/fuzz.db"}, environ={}))
    client = create_app(ex, {"TESTING": True}).test_client()  # TESTING: an exception fails the test
    rng = random.Random(9)
    docs = [generate_run(rng, time.time() - 120 + i, wf) for i, wf in enumerate(["checkout", "login", "checkout"])]
    t0 = time.time() - 30
    cycle = {"workflows": [{"correlation_id": "cycle-run", "workflow_type": "checkout", "status": "failed",
                            "started_at": t0, "duration_ms": 50, "error_type": "Boom", "error_message": "boom 42"}],
             "steps": [{"correlation_id": "cycle-run", "workflow_type": "checkout", "layer": "api",
                        "component": "svc", "operation": f"op{i}", "status": "error" if i else "success",
                        "started_at": t0 + i / 1000, "duration_ms": 10, "span_id": f"{i + 1:016x}",
                        "parent_span_id": f"{2 - i:016x}", "state": {"n": i},
                        **({"error_type": "Boom", "error_message": "boom 42"} if i else {})} for i in range(2)]}
    for d in [*docs, cycle]:
        r = client.post(c.NATIVE_SPANS_PATH, data=orjson.dumps(d), content_type="application/json")
        assert r.status_code == 200, r.data
    cid = docs[0]["workflows"][0]["correlation_id"]
    ex.runs.write([Profile("checkout", {"main:a": 1.0}, cid, {"main;a": 100, "main;b": 50}, 100.0, time.time_ns())])
    alert = {"status": "firing", "labels": {"alertname": "A", "workflow": "checkout", "severity": "warning"},
             "annotations": {}, "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "abc"}
    r = client.post(c.ALERTS_WEBHOOK_PATH, json={"version": "4", "status": "firing", "receiver": "r",
                                                   "alerts": [alert]})
    assert r.status_code == 200, r.data
    assert ex.pipeline.recorder.flush()
    run = client.get(f"{c.RUNS_PATH}/{cid}").json["run"]
    fps = [g["fingerprint"] for g in client.get(c.ERRORS_PATH).json["groups"]]
    assert fps, "the failed run left an error group"
    yield client, {"run_id": [cid, run["trace_id"], "cycle-run"], "fingerprint": fps,
                   "workflow": ["checkout", "login", ".*"], "correlation_id": [cid, "cycle-run"]}
    ex.close()


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
# the values that broke a read path once, and their neighbours
_NASTY = st.sampled_from([
    "1e20", "1e400", "-1e400", "nan", "inf", "-inf", "-0", "0", "1", "-1", "²", "١٢", "1_000", "0x10", " 1", "+1",
    "1.", ".5", "9223372036", "9223372037", "253402300799", "253402300800", "4294967296", "9" * 40, "a\x00b",
    "2263-01-01T00:00:00Z", "2262-04-11T23:47:16Z", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
    "2024-01-01T00:00:00.123456789Z", "2024-02-30T00:00:00Z", "2263-01-010000000", "1969-12-31T23:59:59Z",
])
_NUMBER = st.one_of(st.integers(-(2**70), 2**70).map(str), st.floats().map(repr))
_ZONES = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14)), None])
_TIME = st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=_ZONES).map(lambda d: d.isoformat())


def _values(name: str, schema: dict, known: dict) -> st.SearchStrategy[str]:
    options = [_NASTY, _NASTY, _NASTY, _TEXT, _NUMBER, _TIME]  # weighted: the nasty list is the likeliest
    good = list(known.get(name, [])) + [str(v) for v in schema.get("enum", [])]
    if good:
        options.append(st.sampled_from(good))
    return st.one_of(*options)


def _check(r, path: str) -> None:
    assert r.status_code < 500, (path, r.status_code, r.data[:300])
    if r.status_code >= 400:
        if path.startswith((c.RUN_PAGE_PATH + "/{run_id}", "/errors/")) and r.status_code == 404 \
                and r.mimetype == "text/html":
            return  # the run page's "not found" is a page, as documented
        if path in HTML_PAGES and r.status_code == 400 and r.mimetype == "text/html":
            assert b'id="filter-error"' in r.data, (path, r.data[:300])
            return
        assert r.mimetype == "application/json", (path, r.status_code, r.data[:300])
        err = orjson.loads(r.data)["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str), err
        # position and expression: where a breakpoint or a log query stopped parsing
        assert set(err) <= {"code", "message", "field", "valid_range", "position", "expression"}, err


@pytest.mark.parametrize("path, op", ROUTES, ids=[p for p, _ in ROUTES])
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_read_routes_never_5xx_and_4xx_are_the_error_shape(stored, path, op, data):
    client, known = stored
    url = path
    query = []
    for p in op.get("parameters", []):
        if p["in"] == "path":
            stored_ids = st.sampled_from(known.get(p["name"], ["x"]))  # mostly: the parameters then get parsed
            value = data.draw(st.one_of(stored_ids, stored_ids, stored_ids, _TEXT.filter(bool), _NASTY),
                              label=p["name"])
            url = url.replace("{" + p["name"] + "}", quote(value, safe=""))
        elif data.draw(st.booleans(), label=f"send {p['name']}"):
            query.append((p["name"], data.draw(_values(p["name"], p.get("schema", {}), known), label=p["name"])))
    _check(client.get(url, query_string=query), path)


def test_every_documented_read_route_is_fuzzed():
    paths = {p for p, _ in ROUTES}
    assert {c.RUNS_PATH, c.RUNS_PATH + "/{run_id}/replay", c.FLAMEGRAPH_PATH + "/diff", c.ALERTS_PATH,
            c.ERRORS_PATH + "/{fingerprint}", c.ATTRIBUTION_PATH, c.REGRESSIONS_PATH,
            c.RUN_PAGE_PATH + "/{run_id}", c.RUN_PAGE_PATH + "/{run_id}/flamegraph.svg", "/", c.RUN_PAGE_PATH} <= paths
