"""The SDK's sampling profiler, flame graph data frames (plain and diff), the SVG and their APIs."""

import time

import pytest

from backend import flamegraph as fg
from exporter import conventions as c
from exporter.profiles import Profile, parse_folded
from exporter.sdk import WorkflowTracer
from exporter.sdk.profiler import SamplingProfiler
from exporter.sdk.sinks import InProcessSink, RemoteSink


def burn(seconds: float) -> int:
    """CPU-bound on purpose, so the profiler has something to see."""
    end, n = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        n += sum(i * i for i in range(200))
    return n


def test_the_sdk_profiler_attaches_folded_stacks_to_profiled_runs(ex, client):
    prof = SamplingProfiler(hz=200, workflows=("checkout",))
    t = WorkflowTracer(InProcessSink(ex.pipeline), profiler=prof)
    with t.workflow("checkout") as run:
        burn(0.3)
    with t.workflow("login") as other:
        burn(0.05)
    assert ex.pipeline.recorder.flush()
    stacks = ex.runs.profile_stacks(correlation_id=run.correlation_id)
    hot = [s for s in stacks if "test_flamegraph:burn" in s]
    total = sum(stacks.values())
    wall = ex.runs.get_run(run.correlation_id).run.duration_ms / 1000
    assert total == pytest.approx(wall, rel=0.1)   # samples weighted by the achieved rate add up to the run
    assert sum(stacks[s] for s in hot) > 0.8 * total  # and the run spent its time in burn()
    assert all(s.split(";")[-1] != "" for s in stacks)
    assert ex.runs.profile_stacks(correlation_id=other.correlation_id) == {}   # not a profiled workflow
    fam = ex.store.get(c.PROFILE_CPU_SECONDS_TOTAL)
    cpu = sum(v.value for (wf, fn), v in fam.series.items() if wf == "checkout" and fn.startswith("test_flamegraph:"))
    assert cpu > 0.1
    frame = client.get(f"/api/v1/flamegraph?correlation_id={run.correlation_id}").json
    labels = frame["data"]["values"][3]
    assert labels[0] == "total" and "test_flamegraph:burn" in labels
    page_svg = client.get(f"/runs/{run.correlation_id}/flamegraph.svg")
    assert page_svg.status_code == 200 and b"test_flamegraph:burn" in page_svg.data


def test_remote_sdk_posts_profiles_to_the_exporter(ex, serve):
    srv = serve(ex)
    sink = RemoteSink(srv.url, batch_wait_s=0.05, registry=None)
    t = WorkflowTracer(sink, profiler=SamplingProfiler(hz=200, workflows=("*",)))
    with t.workflow("report") as run:
        burn(0.15)
    sink.close()
    assert ex.pipeline.recorder.flush()
    assert any("test_flamegraph:burn" in s for s in ex.runs.profile_stacks(correlation_id=run.correlation_id))
    assert ex.runs.get_run(run.correlation_id).profiles == 1


def _nested_set_ok(values: dict) -> None:
    """Grafana reads the frame as a nested set: depth-first, children right after their parent."""
    level, value, self_ = values["level"], values["value"], values["self"]
    for i in range(len(level)):
        kids = []
        for j in range(i + 1, len(level)):
            if level[j] <= level[i]:
                break
            if level[j] == level[i] + 1:
                kids.append(j)
        assert value[i] == pytest.approx(self_[i] + sum(value[k] for k in kids))


def test_dataframe_is_grafanas_flame_graph_shape():
    tree = fg.build_tree({"main;handle;db": 3.0, "main;handle;render": 1.0, "main;gc": 0.5, "main;handle": 0.5})
    frame = fg.dataframe(tree, name="checkout")
    names = [f["name"] for f in frame["schema"]["fields"]]
    assert names == ["level", "value", "self", "label"]
    assert frame["schema"]["meta"]["preferredVisualisationType"] == "flamegraph"
    values = dict(zip(names, frame["data"]["values"]))
    assert values["label"] == ["total", "main", "gc", "handle", "db", "render"]
    assert values["level"] == [0, 1, 2, 2, 3, 3]
    assert values["value"] == [5.0, 5.0, 0.5, 4.5, 3.0, 1.0]
    assert values["self"] == [0.0, 0.0, 0.5, 0.5, 3.0, 1.0]
    _nested_set_ok(values)


def test_diff_frame_has_right_side_fields():
    tree = fg.build_tree({"main;a": 2.0, "main;b": 2.0}, {"main;a": 1.0, "main;b": 5.0, "main;c": 1.0})
    frame = fg.dataframe(tree, diff=True)
    names = [f["name"] for f in frame["schema"]["fields"]]
    v = dict(zip(names, frame["data"]["values"]))
    assert names[-2:] == ["valueRight", "selfRight"]
    assert v["label"] == ["total", "main", "a", "b", "c"]
    assert v["value"] == [4.0, 4.0, 2.0, 2.0, 0.0] and v["valueRight"] == [7.0, 7.0, 1.0, 5.0, 1.0]
    assert v["selfRight"] == [0.0, 0.0, 1.0, 5.0, 1.0]
    svg = fg.svg(tree, "checkout", diff=True)
    assert svg.startswith("<svg") and "baseline 2.000s" in svg and "recent 5.000s" in svg


def test_flamegraph_and_diff_apis(ex, client):
    now = time.time()
    for t_off, text in ((-5400, "main;handle;db 100\nmain;handle;render 100"),
                        (-600, "main;handle;db 300\nmain;handle;render 100")):
        self_s, stacks = parse_folded(text, 100)
        ex.runs.write([Profile("checkout", self_s, None, stacks, 100.0, int((now + t_off) * 1e9))])
    frame = client.get("/api/v1/flamegraph?workflow=checkout").json
    v = dict(zip([f["name"] for f in frame["schema"]["fields"]], frame["data"]["values"]))
    assert v["value"][0] == pytest.approx(6.0)  # both profiles: 600 samples at 100 Hz
    diff = client.get("/api/v1/flamegraph/diff?workflow=checkout&window_s=3600").json
    d = dict(zip([f["name"] for f in diff["schema"]["fields"]], diff["data"]["values"]))
    i = d["label"].index("db")
    assert (d["value"][i], d["valueRight"][i]) == (pytest.approx(1.0), pytest.approx(3.0))
    svg = client.get("/api/v1/flamegraph/diff?workflow=checkout&format=svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml" and b"red hotter" in svg.data
    for q, field in (("", "workflow"), ("workflow=checkout&since=soon", "since")):
        r = client.get("/api/v1/flamegraph?" + q)
        assert r.status_code == 400 and r.json["error"]["field"] == field
    r = client.get("/api/v1/flamegraph/diff?workflow=checkout&since=2000&until=1000")
    assert r.status_code == 400 and r.json["error"]["field"] == "since"



def test_a_3000_frame_stack_is_summarised_and_every_flame_graph_of_its_workflow_still_renders(ex, client):
    t = WorkflowTracer(InProcessSink(ex.pipeline))
    with t.workflow("deep") as run:
        pass
    assert ex.pipeline.recorder.flush()
    deep = ";".join(f"mod:f{i}" for i in range(3000))
    now = time.time_ns()
    # stored as an older release (or another writer) left it: the decoder now caps stacks, this is the backstop
    for stacks, when in (({deep: 50, "main;ok": 10}, now - 60 * 10**9), ({deep: 70}, now - 5400 * 10**9)):
        ex.runs.write([Profile("deep", {"mod:f2999": 0.5}, run.correlation_id, stacks, 100.0, when)])
    for url in ("/api/v1/flamegraph?workflow=deep", "/api/v1/flamegraph?workflow=deep&format=svg",
                "/api/v1/flamegraph/diff?workflow=deep", "/api/v1/flamegraph/diff?workflow=deep&format=svg",
                f"/runs/{run.correlation_id}/flamegraph.svg"):
        r = client.get(url)
        assert r.status_code == 200, (url, r.data[:200])
    frame = client.get("/api/v1/flamegraph?workflow=deep").json
    v = dict(zip([f["name"] for f in frame["schema"]["fields"]], frame["data"]["values"]))
    assert max(v["level"]) == fg.MAX_FRAMES
    assert f"… {3000 - fg.MAX_FRAMES + 1} more frames" in v["label"] and "mod:f2999" in v["label"]
    assert v["value"][0] == pytest.approx(1.3)  # nothing lost: 130 samples at 100 Hz
    _nested_set_ok(v)


def test_values_that_are_not_finite_seconds_are_left_out():
    tree = fg.build_tree({"a;b": float("inf"), "a;c": float("nan"), "a;d": 1e300, "a;e": -1.0, "a;f": 2.0})
    frame = fg.dataframe(tree)
    assert frame["data"]["values"][3] == ["total", "a", "f"] and frame["data"]["values"][1][0] == 2.0
    assert "nan" not in fg.svg(tree, "t") and "inf" not in fg.svg(tree, "t")
    empty = fg.svg(fg.build_tree({"a": float("inf")}), "t")
    assert "no profile samples" in empty


def test_svg_scales_with_its_container():
    picture = fg.svg(fg.build_tree({"main;a": 1.0, "main;b": 2.0}), "t", width=1000)
    head = picture[:picture.index(">")]
    assert 'width="100%"' in head and 'viewBox="0 0 1000 ' in head and "height=" not in head
