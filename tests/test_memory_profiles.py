"""Memory profiles (issue 14, point 2): the SDK's tracemalloc profiler per workflow run, sampled by a time
budget; alloc / held flame graphs and their diffs; the alloc-bytes counter; posted memory profiles; the run
page's memory section and its flagged steps."""

from __future__ import annotations

import pickle
import re
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend import flamegraph as fg
from backend.app import create_app
from exporter import conventions as c
from exporter.profiles import Profile, ProfileError, parse_memory
from exporter.sdk import WorkflowTracer
from exporter.sdk.profiler import SamplingProfiler
from exporter.sdk.sinks import InProcessSink, RemoteSink
from tests.conftest import wait_until

MiB = 1024 * 1024
HTTP = {"deadline": None, "derandomize": True, "database": None, "max_examples": 60,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}


class Clock:
    """A clock the test moves: the budget's refill is then exact."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def load_rows(n: int) -> list[bytearray]:
    return [bytearray(1024) for _ in range(n)]


def render_report() -> bytearray:
    return bytearray(8 * MiB)


class Cache:
    def fill(self) -> list[str]:
        return [str(i % 10) * 4000 for i in range(300)]  # not "x" * 4000: a folded constant, one string


def etl(t: WorkflowTracer, keep: list) -> str:
    """4 MiB kept past the run (load), 8 MiB allocated and dropped (render), 1 MiB kept by a method (cache)."""
    with t.workflow("etl") as run:
        with t.step("database", "postgres", "load"):
            keep.append(load_rows(4096))
        with t.step("api", "reports", "render"):
            report = render_report()
        del report
        with t.step("cache", "memory", "cache"):
            keep.append(Cache().fill())
        with t.step("api", "reports", "noop"):
            pass
    return run.correlation_id


def by_leaf(stacks: dict[str, float], leaf_part: str) -> float:
    return sum(v for s, v in stacks.items() if leaf_part in s.rsplit(";", 1)[-1])


@pytest.fixture
def mex(make_exporter):
    return make_exporter(memory_step_growth_bytes=MiB)


def test_a_traced_run_gets_alloc_and_held_profiles_peak_net_and_step_growth(mex):
    prof = SamplingProfiler(workflows=(), memory_workflows=("etl",))
    t = WorkflowTracer(InProcessSink(mex.pipeline), profiler=prof)
    keep: list = []
    cid = etl(t, keep)
    assert not tracemalloc.is_tracing()  # stopped with the run
    assert mex.pipeline.recorder.flush()
    held = mex.runs.profile_stacks(correlation_id=cid, kind="held")
    alloc = mex.runs.profile_stacks(correlation_id=cid, kind="alloc")
    # held: what the run left behind, by the function that allocated it (methods and comprehensions named)
    assert by_leaf(held, "test_memory_profiles:load_rows") >= 4 * MiB
    assert by_leaf(held, "test_memory_profiles:Cache.fill") >= MiB
    assert by_leaf(held, "render_report") == 0
    assert any(s.endswith("test_memory_profiles:load_rows;test_memory_profiles:load_rows.<locals>.<listcomp>")
               for s in held)
    # alloc: the 8 MiB report was seen when its step ended, though freed before the run did
    assert by_leaf(alloc, "test_memory_profiles:render_report") >= 8 * MiB
    mem = mex.runs.run_memory(cid)
    assert mem.peak_bytes >= 12 * MiB                      # rows and report at once
    assert 5 * MiB <= mem.net_bytes < 8 * MiB              # rows and cache, not the report
    assert mem.held_bytes == mem.net_bytes and mem.alloc_bytes >= 13 * MiB
    assert mex.runs.profile_stacks(correlation_id=cid) == {}  # memory rows stay out of the CPU flame graph
    growth = {s.operation: (s.attributes or {}).get(c.ATTR_MEMORY_GROWTH) for s in mex.runs.get_run(cid).spans}
    assert growth["load"] >= 4 * MiB and growth["render"] >= 8 * MiB and abs(growth["noop"]) < 64 * 1024
    fam = mex.store.get(c.PROFILE_ALLOC_BYTES_TOTAL)
    assert fam.series[("etl", "test_memory_profiles:render_report")].value >= 8 * MiB
    # the run page: peak, net, both flame graphs, and the steps that grew memory past 1 MiB, largest first
    page = create_app(mex).test_client().get(f"/runs/{cid}").get_data(as_text=True)
    assert re.search(r'id="memory-peak">1[2-9]\.\d MiB<', page)
    assert re.search(r'id="memory-net">[5-7]\.\d MiB<', page)
    assert "Allocated during the run" in page and "Still held at its end" in page
    flagged = re.findall(r'class="finding memory-step"><strong>\+([\d.]+ MiB)</strong>.*?· (\w+)</a>', page, re.S)
    assert [op for _, op in flagged] == ["render", "load", "cache"]
    assert "noop" not in page.split('id="memory-steps"')[1].split("</div>\n  </div>")[0]


def test_runs_are_traced_within_the_time_budget():
    clock = Clock()
    prof = SamplingProfiler(workflows=(), memory_workflows=("*",), memory_budget=0.01, memory_burst_s=0.05,
                            clock=clock)
    assert prof.start_run("r1", "w") is True          # the burst's credit: the first run is traced
    assert prof.start_run("r2", "w") is False         # one traced run at a time
    clock.t += 2.0                                    # r1 took 2 s of CPU time: the budget owes 1.95 s
    prof.finish_run("r1", "w")
    assert not tracemalloc.is_tracing()
    clock.t += 100.0                                  # 100 s at 1 %: 1 s back, still 0.95 s short
    assert prof.start_run("r3", "w") is False
    clock.t += 100.0                                  # another second: credit is positive again
    assert prof.start_run("r4", "w") is True
    assert prof.finish_run("r3", "w") == []           # not traced: nothing to attach
    prof.finish_run("r4", "w")
    assert (prof.memory_traced, prof.memory_skipped) == (2, 2)
    assert not SamplingProfiler(workflows=(), memory_workflows=("*",), memory_budget=0).wants("w")


def test_a_trace_that_never_ends_is_abandoned_and_tracemalloc_stops():
    clock = Clock()
    prof = SamplingProfiler(hz=200, workflows=(), memory_workflows=("*",), memory_max_trace_s=5.0, wall_clock=clock)
    assert prof.start_run("lost", "w")
    assert tracemalloc.is_tracing()
    clock.t += 6.0                                    # the profiler's thread notices on its next tick
    wait_until(lambda: not tracemalloc.is_tracing(), 10, "the abandoned trace to stop")
    assert prof.finish_run("lost", "w") == [] and prof.memory_now() is None


def test_after_an_abandoned_trace_later_runs_are_traced_and_its_steps_get_no_foreign_growth(mex):
    """The README: a trace still open after memory_max_trace_s is dropped. The runs after it are traced again, and
    a step of the dropped run that ends while another run is traced is not given that run's bytes as its growth."""
    wall, cpu = Clock(), Clock()
    prof = SamplingProfiler(hz=200, workflows=(), memory_workflows=("*",), memory_max_trace_s=5.0, wall_clock=wall,
                            clock=cpu)
    t = WorkflowTracer(InProcessSink(mex.pipeline), profiler=prof)
    lost = t.start_workflow("w", correlation_id="lost")  # completed only at the end of the test
    long_step = t.add_trace_step(lost, "api", "svc", "long step")
    assert tracemalloc.is_tracing()
    wall.t += 6.0
    wait_until(lambda: not tracemalloc.is_tracing(), 10, "the abandoned trace to stop")
    keep: list = []
    with t.workflow("w", correlation_id="next"):
        assert tracemalloc.is_tracing()  # traced: the abandoned run holds nothing back
        with t.step("api", "svc", "grow"):
            keep.append(bytearray(2 * MiB))
        t.complete_trace_step(long_step)
    assert not tracemalloc.is_tracing()
    t.complete_workflow(lost)
    assert mex.pipeline.recorder.flush()
    growth = {s.operation: (s.attributes or {}).get(c.ATTR_MEMORY_GROWTH)
              for cid in ("lost", "next") for s in mex.runs.get_run(cid).spans}
    assert growth["grow"] >= 2 * MiB and growth["long step"] is None
    assert mex.runs.run_memory("next") is not None and mex.runs.run_memory("lost") is None


def test_an_application_that_stops_tracemalloc_inside_a_traced_run_sees_no_error(mex):
    """The app's own look at memory (start, measure, stop) inside a traced run stops the profiler's trace too: the
    run ends without an error raised into the app, without a memory profile, and the next run is traced."""
    t = WorkflowTracer(InProcessSink(mex.pipeline), profiler=SamplingProfiler(workflows=(), memory_workflows=("*",)))
    with t.workflow("w", correlation_id="own-look"):
        assert tracemalloc.is_tracing()
        tracemalloc.start()
        tracemalloc.stop()
    keep: list = []
    with t.workflow("w", correlation_id="after"):
        assert tracemalloc.is_tracing()
        keep.append(bytearray(MiB))
    assert not tracemalloc.is_tracing()
    assert mex.pipeline.recorder.flush()
    assert mex.runs.run_memory("own-look") is None and mex.runs.run_memory("after") is not None


def test_the_application_s_own_tracemalloc_is_left_alone():
    tracemalloc.start()
    try:
        prof = SamplingProfiler(workflows=(), memory_workflows=("*",))
        assert prof.start_run("r", "w") is False and prof.finish_run("r", "w") == []
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_memory_profiles_survive_pickling_for_the_writer_process():
    p = Profile("etl", {}, "c-1", {"main;load": 4096}, format="held", peak_bytes=9000, net_bytes=-12)
    assert pickle.loads(pickle.dumps(p)) == p


def test_alloc_bytes_counter_keeps_the_top_functions_per_workflow(ex):
    stacks = {f"main;f{i:02d}": (i + 1) * 1000 for i in range(25)}
    ex.pipeline.record_profile(Profile("w", {}, None, stacks, format="alloc"), "alloc")
    ex.pipeline.record_profile(Profile("w", {}, None, {"main;f00": 7}, format="held"), "held")  # stored, not counted
    series = ex.store.get(c.PROFILE_ALLOC_BYTES_TOTAL).series
    assert len(series) == c.PROFILE_TOP_FUNCTIONS + 1
    assert series[("w", "f24")].value == 25000 and series[("w", "other")].value == sum(range(1, 6)) * 1000
    assert sum(s.value for s in series.values()) == sum(stacks.values())


def test_the_store_keeps_cpu_alloc_and_held_apart(make_exporter, database_url):
    ex = make_exporter(database_url=database_url)
    ex.pipeline.record_profile(Profile("w", {"f": 0.5}, "r1", {"main;f": 50}, 100.0), "folded")
    ex.pipeline.record_profile(Profile("w", {}, "r1", {"main;g": 4096}, format="alloc", peak_bytes=8192,
                                       net_bytes=1024), "alloc")
    ex.pipeline.record_profile(Profile("w", {}, "r1", {"main;g": 1024}, format="held", peak_bytes=8192,
                                       net_bytes=1024), "held")
    assert ex.pipeline.recorder.flush()
    assert ex.runs.profile_stacks(correlation_id="r1") == {"main;f": 0.5}
    assert ex.runs.profile_stacks(correlation_id="r1", kind="alloc") == {"main;g": 4096}
    assert ex.runs.profile_stacks(workflow="w", kind="held") == {"main;g": 1024}
    mem = ex.runs.run_memory("r1")
    assert (mem.peak_bytes, mem.net_bytes, mem.alloc_bytes, mem.held_bytes, mem.profiles) == (8192, 1024, 4096,
                                                                                             1024, 2)
    assert ex.runs.run_memory("nope") is None
    with pytest.raises(ValueError, match="kind must be one of"):
        ex.runs.profile_stacks(kind="bytes")


def test_posted_memory_profiles_are_stored_and_bad_ones_named(client, ex):
    r = client.post("/api/v1/profiles?workflow=etl&format=alloc&correlation_id=p1&peak_bytes=9000&net_bytes=-100",
                    data="main;load;read 6000\nmain;render 2000\n", content_type="text/plain")
    assert r.status_code == 200, r.json
    assert r.json["bytes"] == 8000 and r.json["top"][0] == {"function": "read", "bytes": 6000}
    assert ex.pipeline.recorder.flush()
    mem = ex.runs.run_memory("p1")
    assert (mem.peak_bytes, mem.net_bytes, mem.alloc_bytes) == (9000, -100, 8000)
    assert ex.store.get(c.PROFILE_ALLOC_BYTES_TOTAL).series[("etl", "read")].value == 6000
    for query, body, field in [("format=heap", "a 1", "format"), ("format=held&peak_bytes=-1", "a 1", "peak_bytes"),
                               ("format=held&peak_bytes=1e9", "a 1", "peak_bytes"),
                               ("format=alloc&net_bytes=" + "9" * 30, "a 1", "net_bytes"),
                               ("format=alloc", "", "body"), ("format=alloc", "main;a 1.5", "body"),
                               ("format=held", "main;;a 3", "body")]:
        r = client.post(f"/api/v1/profiles?workflow=etl&{query}", data=body, content_type="text/plain")
        assert r.status_code == 400 and r.json["error"]["field"] == field, (query, r.json)


def _two_runs(ex) -> None:
    t = WorkflowTracer(InProcessSink(ex.pipeline), profiler=False)
    for cid, stacks in (("base", {"main;load": 1000, "main;render": 1000}),
                        ("new", {"main;load": 1000, "main;render": 5000})):
        with t.workflow("etl", correlation_id=cid):
            pass
        ex.pipeline.record_profile(Profile("etl", {}, cid, stacks, format="alloc"), "alloc")
    assert ex.pipeline.recorder.flush()


def test_flame_graphs_by_bytes_and_their_diff_between_two_runs(client, ex):
    _two_runs(ex)
    frame = client.get("/api/v1/flamegraph?correlation_id=new&kind=alloc").json
    assert frame["schema"]["fields"][1]["config"]["unit"] == "bytes"
    labels, values = frame["data"]["values"][3], frame["data"]["values"][1]
    assert dict(zip(labels, values))["render"] == 5000
    diff = client.get("/api/v1/flamegraph/diff?baseline_run=base&run=new&kind=alloc").json
    assert diff["schema"]["meta"]["custom"] == {"baseline_run": "base", "run": "new"}
    row = dict(zip(diff["data"]["values"][3], zip(diff["data"]["values"][1], diff["data"]["values"][4])))
    assert row["render"] == (1000, 5000) and row["load"] == (1000, 1000)
    svg = client.get("/api/v1/flamegraph/diff?baseline_run=base&run=new&kind=alloc&format=svg").get_data(as_text=True)
    assert "red more bytes" in svg and "recent 4.9 KiB" in svg
    window = client.get("/api/v1/flamegraph/diff?workflow=etl&kind=alloc&window_s=86400").json
    assert sum(window["data"]["values"][4]) > 0  # both runs fall in the recent day
    assert client.get("/runs/new/flamegraph.svg?kind=held").status_code == 200
    assert client.get("/api/v1/flamegraph/diff?run=new").json["error"]["field"] == "baseline_run"
    assert client.get("/api/v1/flamegraph/diff?run=new&baseline_run=nope").status_code == 404
    assert client.get("/api/v1/flamegraph?workflow=etl&kind=heap").json["error"]["field"] == "kind"


def test_remote_sdk_posts_memory_profiles_to_the_exporter(ex, serve):
    srv = serve(ex)
    sink = RemoteSink(srv.url, batch_wait_s=0.05, registry=None)
    t = WorkflowTracer(sink, profiler=SamplingProfiler(workflows=(), memory_workflows=("etl",)))
    keep: list = []
    cid = etl(t, keep)
    sink.close()
    assert ex.pipeline.recorder.flush()
    mem = ex.runs.run_memory(cid)
    assert mem is not None and mem.peak_bytes >= 12 * MiB and mem.profiles == 2
    assert by_leaf(ex.runs.profile_stacks(correlation_id=cid, kind="held"), "load_rows") >= 4 * MiB


def test_byte_units_read_as_people_write_them():
    assert [fg.fmt_value(v, "bytes") for v in (512, 1536, 12 * MiB, 3 * 1024 * MiB)] == [
        "512 B", "1.5 KiB", "12.0 MiB", "3.0 GiB"]
    assert fg.dataframe(fg.build_tree({"a;b": 10.0}), unit="bytes")["data"]["values"][1] == [10.0, 10.0, 10.0]


# --- bad input -----------------------------------------------------------------------------------------------

byte_args = st.one_of(st.none(), st.integers(-2**70, 2**70).map(str), st.text(max_size=12),
                      st.sampled_from(["-0", "+5", "1e3", "٣", " 7", "1_000", "0x10"]))


@settings(**HTTP)
@given(text=st.text(max_size=200), fmt=st.sampled_from(["alloc", "held"]), peak=byte_args, net=byte_args)
def test_parse_memory_accepts_or_names_what_is_wrong(text, fmt, peak, net):
    try:
        p = parse_memory(text, fmt, peak, net)
    except ProfileError as e:
        assert str(e)
        return
    assert p.stacks and all(isinstance(v, int) and v > 0 for v in p.stacks.values())
    assert p.peak_bytes is None or 0 <= p.peak_bytes <= 2**50


@settings(**HTTP)
@given(body=st.one_of(st.text(max_size=120), st.binary(max_size=60)), fmt=st.sampled_from(["alloc", "held", "x"]),
       peak=byte_args, net=byte_args, cid=st.one_of(st.none(), st.text(max_size=20)))
def test_posted_memory_profiles_never_500(client, body, fmt, peak, net, cid):
    q = {"workflow": "fuzz", "format": fmt, "peak_bytes": peak, "net_bytes": net, "correlation_id": cid}
    r = client.post("/api/v1/profiles", query_string={k: v for k, v in q.items() if v is not None}, data=body,
                    content_type="text/plain")
    assert r.status_code in (200, 400), r.get_data(as_text=True)
    if r.status_code == 400:
        assert r.json["error"]["field"] in ("format", "peak_bytes", "net_bytes", "body", "correlation_id")


@settings(**HTTP)
@given(kind=st.one_of(st.none(), st.text(max_size=8), st.sampled_from(["cpu", "alloc", "held"])),
       run=st.one_of(st.none(), st.text(max_size=40)), base=st.one_of(st.none(), st.text(max_size=40)),
       fmt=st.sampled_from(["json", "svg"]))
def test_flame_graph_queries_never_500(client, kind, run, base, fmt):
    q = {"kind": kind, "run": run, "baseline_run": base, "format": fmt, "workflow": "etl"}
    for path in ("/api/v1/flamegraph/diff", "/api/v1/flamegraph", f"/runs/{run or 'x'}/flamegraph.svg"):
        r = client.get(path, query_string={k: v for k, v in q.items() if v is not None})
        assert r.status_code in (200, 400, 404), (path, r.get_data(as_text=True)[:200])
        if r.status_code != 200 and r.mimetype == "application/json":
            assert r.json["error"]["message"]
