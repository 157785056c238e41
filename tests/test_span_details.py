"""Every span detail is kept and shown (issue 10, point 2): kind, resource, events, links, OTLP users and state.

The end-to-end tests use the real OpenTelemetry Python SDK exporting to a live server; the store tests run
on SQLite and a real PostgreSQL (``database_url``).
"""

import json
import time

import orjson
import pytest
import requests
from opentelemetry.trace import Link, SpanKind

from exporter import conventions as c
from exporter.db import make_engine
from exporter.decode import native
from exporter.model import Span, hash_user
from exporter.runstore import RunStore
from exporter.store import LinkedRun
from tests.otlp_data import request, sdk_provider, span, to_json

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


def _flat(tree: list[dict]) -> list[dict]:
    out, work = [], list(tree)
    while work:
        n = work.pop()
        out.append(n)
        work.extend(n["children"])
    return out


def test_a_real_sdk_keeps_kind_resource_events_links_user_and_state(ex, serve):
    srv = serve(ex)
    shop = sdk_provider(srv, {"service.name": "shop", "service.version": "1.4.2",
                             "deployment.environment": "prod", "auth.token": "resource-secret"})
    worker = sdk_provider(srv, {"service.name": "worker", "service.version": "0.9.0",
                               "deployment.environment": "prod"})
    tracer = shop.get_tracer("t")
    with (tracer.start_as_current_span("checkout", kind=SpanKind.SERVER,
                                       attributes={"flowscope.workflow": "checkout"}) as root,
          tracer.start_as_current_span("orders publish", kind=SpanKind.PRODUCER,
                                       attributes={"messaging.system": "kafka"}) as pub):
        produced = pub.get_span_context()
    # the consumer starts a new trace, linked to the producer's span (as messaging instrumentations do)
    with worker.get_tracer("t").start_as_current_span(
            "orders process", kind=SpanKind.CONSUMER,
            links=[Link(produced, {"messaging.operation": "publish", "password": "link-secret"})],
            attributes={"flowscope.workflow": "fulfil", "enduser.id": "alice@example.com"}) as cons:
        cons.add_event("retry", {"attempt": 2, "password": "event-secret"})
        cons.add_event("flowscope.state", {"state": json.dumps({"order_id": 7, "api_key": "state-secret"})})
        consumed = cons.get_span_context()
    shop.shutdown()
    worker.shutdown()
    assert ex.pipeline.recorder.flush()
    producer_tid, consumer_tid = f"{root.get_span_context().trace_id:032x}", f"{consumed.trace_id:032x}"

    got = requests.get(f"{srv.url}{c.RUNS_PATH}/{consumer_tid}", timeout=10).json()
    body = json.dumps(got)
    for secret in ("resource-secret", "link-secret", "event-secret", "state-secret", "alice@example.com"):
        assert secret not in body
    (s,) = _flat(got["tree"])
    assert s["kind"] == "consumer"
    assert s["resource"]["service.version"] == "0.9.0" and s["resource"]["deployment.environment"] == "prod"
    retry = next(e for e in s["events"] if e["name"] == "retry")
    assert retry["attributes"] == {"attempt": 2, "password": c.REDACTED} and retry["time_ns"] > 0
    assert [e["name"] for e in s["events"]] == ["retry", "flowscope.state"]  # every event, not only exceptions
    (link,) = s["links"]
    assert link["trace_id"] == producer_tid and link["span_id"] == f"{produced.span_id:016x}"
    assert link["attributes"] == {"messaging.operation": "publish", "password": c.REDACTED}
    assert got["run"]["user_hash"] == hash_user("alice@example.com")
    assert s["has_state"]
    assert [(r["workflow"], r["direction"]) for r in got["linked_runs"]] == [("checkout", "links_to")]
    assert got["linked_runs"][0]["page"].endswith(f"{c.RUN_PAGE_PATH}/{got['linked_runs'][0]['correlation_id']}")

    # the state feeds time travel exactly like the SDK's state
    step = requests.get(f"{srv.url}{c.RUNS_PATH}/{consumer_tid}/replay?step=0", timeout=10).json()
    assert step["state"] == {"order_id": 7, "api_key": c.REDACTED}

    prod = requests.get(f"{srv.url}{c.RUNS_PATH}/{producer_tid}", timeout=10).json()
    assert [(r["workflow"], r["direction"]) for r in prod["linked_runs"]] == [("fulfil", "linked_from")]
    kinds = {n["operation"]: n["kind"] for n in _flat(prod["tree"])}
    assert kinds == {"checkout": "server", "orders publish": "producer"}
    assert all(n["resource"]["auth.token"] == c.REDACTED for n in _flat(prod["tree"]))


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_bad_flowscope_state_is_kept_by_the_cap_rule_and_counted_never_a_500(ex, client, encoding):
    big = json.dumps({f"k{i}": "x" * 100 for i in range(400)})  # ~42 KB: over the 16 KiB state cap
    now = time.time_ns()  # within the store's retention
    spans = [span("not json", kind=2, start=now, attrs={"flowscope.workflow": "w", "flowscope.state": "{not json"}),
             span("too large", kind=2, start=now, attrs={"flowscope.workflow": "w"},
                  events=[("flowscope.state", {"state": big})]),
             span("a list", kind=2, start=now, attrs={"flowscope.workflow": "w", "flowscope.state": "[1, 2]"})]
    req = request(spans)
    data, headers = (req.SerializeToString(), PB) if encoding == "protobuf" else (orjson.dumps(to_json(req)), JS)
    r = client.post(c.OTLP_TRACES_PATH, data=data, headers=headers)
    assert r.status_code == 200
    assert ex.pipeline.recorder.flush()
    states = {s.operation: s.state for s in (ex.runs.get_run(x["trace_id"]).spans[0] for x in spans)}
    assert states["not json"] == {"value": "{not json"}
    assert states["a list"] == {"value": [1, 2]}
    marker = states["too large"][c.TRUNCATED_KEY]
    assert marker["original_bytes"] > 16_384 and marker["dropped_key_count"] > 0
    assert ex.store.value(c.STATE_TRUNCATED_TOTAL) == 1
    fmt = c.FORMAT_OTLP_PROTOBUF if encoding == "protobuf" else c.FORMAT_OTLP_JSON
    assert ex.store.value(c.VALUES_TRUNCATED_TOTAL, {"format": fmt}) >= 1  # the text that is not JSON


def _store(database_url) -> RunStore:
    return RunStore(make_engine(database_url))


def _native(doc) -> list[Span]:
    result = native.decode(doc)
    assert not result.rejected, result.rejected
    return result.spans


def test_store_keeps_details_links_runs_both_ways_and_sweeps_them(database_url):
    store = _store(database_url)
    try:
        now = time.time()
        producer, consumer = "a" * 32, "b" * 32
        spans = _native({"workflows": [
            {"correlation_id": "prod-1", "trace_id": producer, "workflow_type": "checkout", "started_at": now,
             "duration_ms": 5, "kind": "server"},
            {"correlation_id": "cons-1", "trace_id": consumer, "workflow_type": "fulfil", "started_at": now + 1,
             "duration_ms": 5, "kind": "consumer",
             "events": [{"name": "retry", "time": now + 1.001, "attributes": {"attempt": 2, "token": "t0ps3cret"}}],
             "links": [{"trace_id": producer, "span_id": "c" * 16, "attributes": {"password": "pw"}},
                       {"trace_id": "d" * 32, "span_id": "e" * 16}]}]})  # a link to a run never stored
        spans.append(Span(trace_id=consumer, span_id="f" * 16, workflow="fulfil", layer="api", component="svc",
                          operation="plain", start_ns=1, end_ns=2, parent_span_id="1" * 16,
                          correlation_id="cons-1"))  # no details: no row
        counts = store.write(spans)
        assert counts["spans"] == 3
        cons = store.get_run("cons-1")
        by_id = {s.span_id: s for s in cons.spans}
        root = next(s for s in cons.spans if s.parent_span_id is None)
        assert root.kind == "consumer" and root.resource is None
        assert root.events == [{"name": "retry", "time_ns": root.events[0]["time_ns"],
                                "attributes": {"attempt": 2, "token": c.REDACTED}}]
        assert [ln["trace_id"] for ln in root.links] == [producer, "d" * 32]  # unknown targets kept as given
        assert root.links[0]["attributes"] == {"password": c.REDACTED}
        assert by_id["f" * 16].kind is None and by_id["f" * 16].events == [] == by_id["f" * 16].links
        assert cons.linked_runs == [LinkedRun(correlation_id="prod-1", workflow="checkout", trace_id=producer,
                                              direction="links_to")]
        assert store.get_run("prod-1").linked_runs == [
            LinkedRun(correlation_id="cons-1", workflow="fulfil", trace_id=consumer, direction="linked_from")]
        assert store.linked_runs("prod-1") == store.get_run("prod-1").linked_runs
        store.write(spans)  # a batch written twice (a retry) stores nothing twice
        assert len(store.get_run("cons-1").linked_runs) == 1
        store.sweep(int((now + 60) * 1e9))
        with store.engine.connect() as conn:
            from sqlalchemy import text
            assert conn.execute(text("SELECT count(*) FROM span_details")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM span_links")).scalar_one() == 0
    finally:
        store.close()


def test_store_shares_one_resource_json_per_batch_and_isolates_a_poisoned_detail(database_url):
    store = _store(database_url)
    try:
        res = {"service.name": "shop", "db.password": "hunter2", "k8s.pod.name": "shop-7d9"}
        good = [Span(trace_id=f"{i:032x}", span_id=f"{i:016x}", workflow="w", layer="api", component="svc",
                     operation="op", start_ns=1, end_ns=2, correlation_id=f"run-{i}", kind="server", resource=res)
                for i in range(1, 4)]
        bad = Span(trace_id="9" * 32, span_id="9" * 16, workflow="w", layer="api", component="svc", operation="op",
                   start_ns=1, end_ns=2, correlation_id="bad", kind="server")
        bad.events = 5  # not a list: building its detail row fails, and only it is left out
        poisoned: list = []
        counts = store.write([*good, bad], poisoned)
        assert counts["spans"] == 3 and [it for it, _ in poisoned] == [bad]
        for i in range(1, 4):
            (s,) = store.get_run(f"run-{i}").spans
            assert s.resource == {"service.name": "shop", "db.password": c.REDACTED, "k8s.pod.name": "shop-7d9"}
        assert store.get_run("bad") is None
    finally:
        store.close()
