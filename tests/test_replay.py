"""Replay, critical path and the runs API (pure functions, then the Flask views on a real store)."""

import random
import subprocess
import sys
import time

import orjson
import pytest

from backend.runs.replay import StepOutOfRange, critical_path, diff, replay, span_tree, steps_of
from exporter.demo import generate_run
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink


def sp(sid, parent, start, end, state=None, is_step=True):
    return {"span_id": sid, "parent_span_id": parent, "start_ns": start, "end_ns": end, "state": state,
            "is_step": is_step, "layer": "api", "component": "c", "operation": sid, "status": "ok",
            "error_type": None, "error_message": None}


def test_state_after_each_step_merges_snapshots_and_diffs_against_the_step_before():
    steps = steps_of([
        sp("root", None, 0, 100, is_step=False),
        sp("b", "root", 20, 30, {"cart": {"items": 2, "total": 30}, "user": "u1"}),
        sp("a", "root", 10, 15, {"cart": {"items": 1}}),
        sp("c", "root", 40, 50, {"cart": {"total": 45}, "order_id": 7}),
        sp("d", "root", 60, 70),
    ])
    assert [s["span_id"] for s in steps] == ["a", "b", "c", "d"]
    r = replay(steps, 2)
    assert r["state"] == {"cart": {"items": 2, "total": 45}, "user": "u1", "order_id": 7}
    assert r["diff"] == [{"path": "cart.total", "op": "changed", "before": 30, "after": 45},
                         {"path": "order_id", "op": "added", "before": None, "after": 7}]
    assert replay(steps, 3)["diff"] == [] and replay(steps, 3)["state"] == r["state"]
    assert replay(steps, 0)["diff"] == [{"path": "cart", "op": "added", "before": None, "after": {"items": 1}}]
    assert steps[1]["state"] == {"cart": {"items": 2, "total": 30}, "user": "u1"}  # snapshots are not mutated
    with pytest.raises(StepOutOfRange, match=r"valid steps: 0\.\.3"):
        replay(steps, 4)
    with pytest.raises(StepOutOfRange):
        replay(steps, -1)


def test_diff_reports_removed_keys():
    assert diff({"a": 1, "b": {"c": 2}}, {"b": {}}) == [
        {"path": "a", "op": "removed", "before": 1, "after": None},
        {"path": "b.c", "op": "removed", "before": 2, "after": None}]


def test_critical_path_follows_what_set_the_duration():
    spans = [
        sp("root", None, 0, 100, is_step=False),
        sp("a", "root", 0, 30),     # runs before b starts: its first 10 units are on the path
        sp("b", "root", 10, 90),    # the long one
        sp("b1", "b", 12, 20),      # b's children: b2 ends last inside b
        sp("b2", "b", 25, 85),
        sp("x", "root", 15, 40),    # overlaps b completely: never the blocker
        sp("c", "root", 90, 100),
    ]
    assert critical_path(spans) == ["root", "a", "b", "b1", "b2", "c"]
    # no envelope: several roots hang under a virtual root
    assert critical_path([sp("p", None, 0, 10), sp("q", None, 5, 50), sp("r", None, 50, 60)]) == ["p", "q", "r"]
    tree = span_tree(spans)
    assert [n["span_id"] for n in tree] == ["root"]
    assert [n["span_id"] for n in tree[0]["children"]] == ["a", "b", "x", "c"]
    assert [n["depth"] for n in tree[0]["children"][1]["children"]] == [2, 2]


@pytest.fixture
def stored_client(make_exporter, database_url):
    from backend.app import create_app

    ex = make_exporter(database_url=database_url)
    client = create_app(ex).test_client()
    rng = random.Random(7)
    docs = [generate_run(rng, time.time() - 60 + i, wf) for i, wf in enumerate(
        ["checkout", "checkout", "login", "checkout"])]
    for d in docs:
        assert client.post("/api/v1/spans", data=orjson.dumps(d), content_type="application/json").status_code == 200
    assert ex.pipeline.recorder.flush()
    return client, docs


def test_runs_api_lists_filters_and_returns_the_tree(stored_client):
    client, docs = stored_client
    runs = client.get("/api/v1/runs?workflow=checkout").json["runs"]
    assert len(runs) == 3 and all(r["workflow"] == "checkout" for r in runs)
    assert runs[0]["start_ns"] >= runs[-1]["start_ns"]
    assert runs[0]["page"].endswith("/runs/" + runs[0]["correlation_id"])
    assert client.get("/api/v1/runs?limit=1").json["count"] == 1
    slowest = max(docs, key=lambda d: d["workflows"][0]["duration_ms"])["workflows"][0]
    got = client.get(f"/api/v1/runs?min_duration_ms={slowest['duration_ms'] - 0.01}").json["runs"]
    assert [r["correlation_id"] for r in got] == [slowest["correlation_id"]]
    cid = docs[0]["workflows"][0]["correlation_id"]
    body = client.get(f"/api/v1/runs/{cid}").json
    assert body["run"]["correlation_id"] == cid
    root = body["tree"][0]
    assert root["operation"] == "checkout" and root["children"][0]["layer"] == "frontend"
    db_step = root["children"][0]["children"][0]["children"][0]      # run > frontend > api > first backend call
    assert db_step["has_state"] and "state" not in db_step             # state comes from /replay, step by step
    assert len(body["steps"]) == len(docs[0]["steps"])
    assert body["critical_path"][0] == root["span_id"]
    assert "correlation_id" in body["links"]["logs"] and cid in body["links"]["logs"]
    # a trace_id (what an exemplar carries) finds the same run
    assert client.get(f"/api/v1/runs/{body['run']['trace_id']}").json["run"]["correlation_id"] == cid


def test_replay_api_and_its_bad_input(stored_client):
    client, docs = stored_client
    cid = docs[0]["workflows"][0]["correlation_id"]
    n = len(docs[0]["steps"])
    last = client.get(f"/api/v1/runs/{cid}/replay?step={n - 1}")
    assert last.status_code == 200 and last.json["total_steps"] == n
    r = client.get(f"/api/v1/runs/{cid}/replay?step={n}")
    assert r.status_code == 400 and r.json["error"]["valid_range"] == [0, n - 1]
    assert f"0..{n - 1}" in r.json["error"]["message"]
    for bad in ("x", "", "1.5"):
        r = client.get(f"/api/v1/runs/{cid}/replay?step={bad}")
        assert r.status_code == 400 and r.json["error"]["field"] == "step"
    r = client.get("/api/v1/runs/no-such-run/replay?step=0")
    assert r.status_code == 404 and r.json["error"]["code"] == "run_not_found"
    assert client.get("/api/v1/runs/no-such-run").status_code == 404
    page = client.get("/runs/no-such-run")
    assert page.status_code == 404 and b"Run not found" in page.data


@pytest.mark.parametrize("query, field", [("status=weird", "status"), ("since=yesterday", "since"),
                                          ("since=inf", "since"), ("until=1e300", "until"), ("since=nan", "since"),
                                          ("since=-5", "since"),
                                          ("limit=0", "limit"), ("limit=abc", "limit"),
                                          ("min_duration_ms=-1", "min_duration_ms")])
def test_runs_list_rejects_bad_filters(client, query, field):
    r = client.get("/api/v1/runs?" + query)
    assert r.status_code == 400 and r.json["error"]["field"] == field


def test_replay_of_an_sdk_run_shows_state_changes(ex, client):
    t = WorkflowTracer(InProcessSink(ex.pipeline))
    with t.workflow("checkout") as run:
        with t.step("cache", "redis", "load_cart", state={"cart": {"items": 2}}):
            pass
        with t.step("api", "orders", "price"):
            pass
        with t.step("database", "postgres", "insert_order", state={"cart": {"items": 2, "total": 30}, "order": 9}):
            pass
    assert ex.pipeline.recorder.flush()
    body = client.get(f"/api/v1/runs/{run.correlation_id}/replay?step=2").json
    assert body["span"]["operation"] == "insert_order"
    assert body["state"] == {"cart": {"items": 2, "total": 30}, "order": 9}
    assert {d["path"] for d in body["diff"]} == {"cart.total", "order"}


def _sdk_run(ex):
    t = WorkflowTracer(InProcessSink(ex.pipeline))
    with t.workflow("checkout") as run:
        with t.step("cache", "redis", "load_cart", state={"cart": {"items": 2}}):
            pass
        with t.step("database", "postgres", "insert_order", state={"order": 9}):
            pass
    assert ex.pipeline.recorder.flush()
    return run.correlation_id


def _replay_at_a_terminal(*args: str, stdin: str) -> subprocess.CompletedProcess:
    """``flowscope replay`` read from stdin, as a user types: a process of its own, since the stepper reads
    the real ``sys.stdin`` (bound when its module loads), which an in-process call cannot feed."""
    return subprocess.run([sys.executable, "-m", "flowscope.cli", "replay", *args], input=stdin, check=False,
                          capture_output=True, text=True, timeout=60)


def test_flowscope_replay_steps_through_a_stored_run(ex):
    cid = _sdk_run(ex)
    r = _replay_at_a_terminal(cid, "--database-url", ex.config.database_url,
                              stdin="n\nd\ns\np\nj 5\nj 0\nl\nbogus\nq\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"run {cid} · checkout · ok" in out and "2 steps" in out
    assert "[0/1] cache/redis/load_cart ok" in out
    assert "[1/1] database/postgres/insert_order ok" in out
    assert "added    order: null → 9" in out                      # diff
    assert '"order": 9' in out and '"items": 2' in out            # state
    assert "jump needs a step number 0..1" in out
    assert "▶" in out and "unknown command 'bogus'" in out


def test_flowscope_replay_reads_a_running_backend_and_reports_unknown_runs(ex, serve, cli):
    cid = _sdk_run(ex)
    srv = serve(ex)
    r = _replay_at_a_terminal(cid, "--url", srv.url, stdin="n\nd\nq\n")
    assert r.returncode == 0 and "[1/1] database/postgres/insert_order" in r.stdout and "added    order" in r.stdout
    r = cli("replay", "nope", "--url", srv.url)  # refused before any stepping: in-process
    assert r.returncode == 1 and "HTTP 404" in r.stderr
    r = cli("replay", "nope", "--database-url", ex.config.database_url)
    assert r.returncode == 1 and "no stored run with correlation_id or trace_id 'nope'" in r.stderr


# -- client-shaped trees: cycles, deep chains, bad step numbers (issue 9) --------------------------------------------

def test_two_spans_that_are_each_others_parent_are_both_shown_and_the_cycle_is_cut_at_the_earlier():
    spans = [sp("a", "b", 10, 50), sp("b", "a", 0, 60), sp("c", "a", 20, 40)]
    assert critical_path(spans) == ["b", "a", "c"]
    (root,) = span_tree(spans)
    assert root["span_id"] == "b" and [k["span_id"] for k in root["children"]] == ["a"]
    assert [k["span_id"] for k in root["children"][0]["children"]] == ["c"]
    # a longer cycle with no span outside it, and a self-parent: every span is still in the tree
    ring = [sp("x", "z", 5, 9), sp("y", "x", 1, 9), sp("z", "y", 2, 9), sp("s", "s", 0, 3)]
    tree = span_tree(ring)
    assert [n["span_id"] for n in tree] == ["s", "y"] and set(critical_path(ring)) >= {"y"}


def _chain(n: int) -> list[dict]:
    return [sp(f"s{i}", f"s{i - 1}" if i else None, i, 2 * n - i) for i in range(n)]


def test_a_deep_parent_chain_is_walked_without_recursion_and_nests_only_so_far():
    from backend.runs.replay import MAX_TREE_NESTING

    spans = _chain(5000)
    assert critical_path(spans) == [s["span_id"] for s in spans]
    tree = span_tree(spans)
    node, levels = tree[0], 0
    while node["children"] and node["depth"] < MAX_TREE_NESTING:
        node, levels = node["children"][0], levels + 1
    assert levels == MAX_TREE_NESTING
    flat = node["children"]  # the rest, depth first, with their true depth
    assert [n["depth"] for n in [node, *flat]] == list(range(MAX_TREE_NESTING, 5000))
    orjson.dumps({"tree": tree})  # a JSON encoder takes it


def _post_steps(client, cid: str, steps: list[dict]) -> None:
    t0 = time.time() - 60
    recs = [{"correlation_id": cid, "workflow_type": "deep", "layer": "api", "component": "svc",
             "operation": f"op{i}", "status": "success", "started_at": t0 + s["start_ns"] / 1e6,
             "duration_ms": (s["end_ns"] - s["start_ns"]) / 1e3, "span_id": f"{i + 1:016x}",
             **({"parent_span_id": f"{s['parent'] + 1:016x}"} if s["parent"] is not None else {})}
            for i, s in enumerate(steps)]
    run = {"correlation_id": cid, "workflow_type": "deep", "status": "success", "started_at": t0,
           "duration_ms": 10_000}
    r = client.post("/api/v1/spans", data=orjson.dumps({"workflows": [run], "steps": recs}),
                    content_type="application/json")
    assert r.status_code == 200, r.data


def test_runs_with_a_cycle_or_a_1500_deep_chain_are_served_by_the_api_and_the_page(ex, client):
    n = 1500
    _post_steps(client, "deep-chain", [{"parent": i - 1 if i else None, "start_ns": i, "end_ns": 2 * n - i}
                                       for i in range(n)])
    _post_steps(client, "cycle", [{"parent": 1, "start_ns": 10, "end_ns": 50}, {"parent": 0, "start_ns": 0,
                                                                                "end_ns": 60}])
    assert ex.pipeline.recorder.flush()
    for cid, spans in (("deep-chain", n), ("cycle", 2)):
        body = client.get(f"/api/v1/runs/{cid}")
        assert body.status_code == 200, body.data[:300]
        assert len(body.json["steps"]) == spans and len(body.json["critical_path"]) >= 1
        page = client.get(f"/runs/{cid}")
        assert page.status_code == 200 and page.data.count(b'class="row') >= spans
        assert client.get(f"/api/v1/runs/{cid}/replay?step=1").status_code == 200


@pytest.mark.parametrize("step", ["²", "١", "1_0", " 1", "+1", "0x1", "1e3", "-"])
def test_replay_step_must_be_ascii_digits(stored_client, step):
    client, docs = stored_client
    cid = docs[0]["workflows"][0]["correlation_id"]
    r = client.get(f"/api/v1/runs/{cid}/replay", query_string={"step": step})
    assert r.status_code == 400 and r.json["error"]["field"] == "step", r.data


@pytest.mark.parametrize("query, field", [("until=2263-01-01T00:00:00Z", "until"), ("since=9223372037", "since"),
                                          ("since=9999-12-31T23:59:59-14:00", "since"), ("until=1e20", "until"),
                                          ("since=%D9%A1", "since"), ("limit=%C2%B2", "limit"),
                                          ("offset=1_000", "offset"), ("min_duration_ms=nan", "min_duration_ms"),
                                          ("workflow=a%00b", "workflow")])
def test_runs_list_rejects_out_of_range_times_and_non_ascii_numbers(client, query, field):
    r = client.get("/api/v1/runs?" + query)
    assert r.status_code == 400 and r.json["error"]["field"] == field, r.data
    # the last nanosecond that 64 bits hold is still a valid bound
    assert client.get("/api/v1/runs?until=2262-04-11T23:47:16Z").status_code == 200
