"""`flowscope detect`: offline on CSV, and against a real Prometheus scraping the exporter."""

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.regression.analyze import analyze

POINTS_PER_LEVEL = 8  # scraped values on each side of the step: detection needs 5 (min_segment)


def make_csv(path: Path) -> Path:
    rng = np.random.default_rng(3)
    t = pd.date_range("2026-11-01", periods=400, freq="5min", tz="UTC")
    rows = []
    latency = np.r_[rng.normal(0.20, 0.01, 250), rng.normal(0.23, 0.01, 150)]  # checkout p95 +15 %
    hit = np.r_[rng.normal(0.90, 0.01, 250), rng.normal(0.95, 0.01, 150)]  # hit rate up: an improvement
    noise = rng.normal(0.05, 0.002, 400)
    spike = rng.normal(0.1, 0.005, 400)
    spike[200] = 5.0
    for name, values in (("checkout p95", latency), ("login p95", noise), ("search p95", spike),
                         ("cache hit_rate", hit), ("tiny", np.r_[1.0, 2.0, 3.0, [np.nan] * 397]),
                         ("flat", np.full(400, 7.0))):
        rows += [(ts.isoformat(), name, v) for ts, v in zip(t, values)]
    pd.DataFrame(rows, columns=["time", "series", "value"]).to_csv(path, index=False)
    return path


def test_csv_report_finds_the_step_only_and_explains_what_it_skipped(tmp_path, cli):
    path = make_csv(tmp_path / "series.csv")
    r = cli("detect", "--csv", str(path), "--json", "--plot", str(tmp_path / "out.png"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    by = {f["series"]: f for f in doc["findings"]}
    assert set(by) == {"checkout p95", "cache hit_rate"}
    f = by["checkout p95"]
    assert f["direction"] == "regression" and f["relative_change"] == pytest.approx(0.15, abs=0.03)
    assert f["time"].startswith("2026-11-01T20:") and f["p_adjusted"] < 1e-6
    assert f["ci_before"][0] < f["before"] < f["ci_before"][1]
    skipped = {s["series"]: s["reason"] for s in doc["not_analysed"]}
    assert "too short" in skipped["tiny"] and "constant" in skipped["flat"]
    assert (tmp_path / "out.png").stat().st_size > 10_000
    table = cli("detect", "--csv", str(path)).stdout
    assert "regression" in table and "not analysed: 2 series (1 constant series, 1 too short)" in table
    assert "not analysed: tiny: too short" in cli("detect", "--csv", str(path), "--verbose").stdout


def test_a_counter_series_with_a_reset_is_explained_not_analysed():
    t = pd.date_range("2026-11-01", periods=100, freq="1min", tz="UTC")
    v = np.r_[np.arange(50.0), np.arange(50.0)]  # restarted process: the counter resets at 50
    frame = pd.DataFrame({"time": t, "series": "requests_total", "value": v})
    findings, skipped = analyze(frame, counters={"requests_total"})
    assert findings == [] and "counter reset at point 50" in skipped[0].reason


def test_higher_is_better_makes_a_rise_an_improvement():
    t = pd.date_range("2026-11-01", periods=200, freq="1min", tz="UTC")
    rng = np.random.default_rng(1)
    v = np.r_[rng.normal(0.8, 0.01, 100), rng.normal(0.9, 0.01, 100)]
    frame = pd.DataFrame({"time": t, "series": "hit", "value": v})
    (f,) = analyze(frame, {"hit": True})[0]
    assert f.direction == "improvement"
    (f,) = analyze(frame, {"hit": False})[0]
    assert f.direction == "regression"


@pytest.mark.parametrize("args,text", [
    (["--csv", "/nonexistent.csv"], "no such file"),
    (["--prometheus", "http://127.0.0.1:9"], "unreachable"),
])
def test_unreachable_sources_exit_non_zero_with_a_clear_error(args, text, cli):
    r = cli("detect", *args)
    assert r.returncode == 1 and text in r.stderr


def test_a_csv_without_the_columns_is_refused(tmp_path, cli):
    p = tmp_path / "bad.csv"
    p.write_text("when,what\n1,2\n")
    r = cli("detect", "--csv", str(p))
    assert r.returncode == 1 and "missing column(s) ['series', 'time', 'value']" in r.stderr


@pytest.mark.servers
def test_detect_reads_query_range_from_a_real_prometheus(ex, serve, prometheus, cli):
    srv = serve(ex)
    prom = prometheus([srv.url.removeprefix("http://")])
    prom.wait_for('up{job="flowscope"}', lambda r: r and r[0]["value"][1] == "1")
    # a gauge that steps from 0.9 to 0.6 halfway through: one value a scrape (every second), each seen by one
    from exporter.sdk import PerformanceMonitor
    mon = PerformanceMonitor(ex.meter_provider())
    rng = np.random.default_rng(5)
    for level in (0.9, 0.6):
        for _ in range(POINTS_PER_LEVEL):
            mon.record_metric("cache", "redis", "hit_rate", float(rng.normal(level, 0.01)))
            prom.wait_for_scrape(time.time())
    r = cli("detect", "--prometheus", prom.url, "--since", "30s", "--step", "1s", "--json")
    assert r.returncode == 0, r.stderr
    found = [f for f in json.loads(r.stdout)["findings"] if f["labels"].get("query") == "cache hit rate"]
    assert found and found[0]["direction"] == "regression" and found[0]["relative_change"] < -0.2


def test_daily_cycles_are_silent_with_a_season_and_a_step_in_them_is_still_found(tmp_path, cli):
    t = pd.date_range("2026-11-01", periods=24 * 12 * 6, freq="5min", tz="UTC")  # six days at 5 min
    rng = np.random.default_rng(4)
    hours = np.arange(t.size) * 5 / 60
    daily = 0.2 + 0.05 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.003, t.size)
    stepped = daily.copy()
    stepped[-300:] += 0.03  # the last day: +15 % on top of the cycle
    rows = [(ts.isoformat(), "cyclic p95", v) for ts, v in zip(t, daily)]
    rows += [(ts.isoformat(), "stepped p95", v) for ts, v in zip(t, stepped)]
    path = tmp_path / "daily.csv"
    pd.DataFrame(rows, columns=["time", "series", "value"]).to_csv(path, index=False)
    for season in ("auto", "1d"):  # found by itself, or given
        r = cli("detect", "--csv", str(path), "--season", season, "--json")
        assert r.returncode == 0, r.stderr
        (f,) = json.loads(r.stdout)["findings"]
        # the step is point 1428 of 1728, at 5-minute steps from 2026-11-01
        assert f["series"] == "stepped p95" and f["kind"] == "step" and f["time"] == "2026-11-05T23:00:00Z"


def test_a_csv_without_time_with_per_series_direction_and_effect_floor(tmp_path, cli):
    rng = np.random.default_rng(8)
    rows = [("throughput", v, "true", "") for v in np.r_[rng.normal(100, 1, 120), rng.normal(96, 1, 120)]]
    rows += [("queue depth", v, "false", 0.5) for v in np.r_[rng.normal(100, 1, 120), rng.normal(130, 1, 120)]]
    rows += [("cpu", v, "false", "") for v in 50 + 0.2 * np.arange(240) + rng.normal(0, 1, 240)]
    path = tmp_path / "points.csv"
    pd.DataFrame(rows, columns=["series", "value", "higher_is_better", "min_effect"]).to_csv(path, index=False)
    r = cli("detect", "--csv", str(path), "--index", "--json", "--min-effect", "0.03")
    assert r.returncode == 0, r.stderr
    (f,) = json.loads(r.stdout)["findings"]  # queue depth's +30 % is under its own 50 % floor; cpu is a trend
    assert (f["series"], f["direction"], f["time"], f["kind"]) == ("throughput", "regression", "120", "step")
    r = cli("detect", "--csv", str(path), "--index", "--json")
    assert json.loads(r.stdout)["findings"] == []  # -4 % is under the default 5 % floor


@pytest.mark.parametrize("args,text", [
    (["--min-effect", "-1"], "--min-effect must be between 0 and 100"),
    (["--alpha", "2"], "--alpha must be between 0 and 1"),
    (["--min-segment", "1"], "--min-segment must be between 2 and 10000"),
    (["--max-changes", "0"], "--max-changes must be between 1 and 1000"),
    (["--season", "weekly"], "expected a duration like 30m, 6h or 7d"),
    (["--index", "--season", "1d"], "--season with --index is a number of points"),
])
def test_bad_detection_settings_exit_non_zero_naming_the_flag(tmp_path, args, text, cli):
    path = make_csv(tmp_path / "series.csv") if "--index" not in args else tmp_path / "points.csv"
    if "--index" in args:
        path.write_text("series,value\n" + "".join(f"s,{i % 7}\n" for i in range(40)))
    r = cli("detect", "--csv", str(path), *args)
    assert r.returncode != 0 and text in r.stderr, r.stderr


@pytest.mark.parametrize("text,error", [
    ("- {name: p95, promql: 'up'}\n", None),
    ("- {name: p95}\n", "[0].promql: required"),
    ("- {name: p95, promql: up, higher: true}\n", "[0].higher: unknown field"),
    ("{}\n", "expected a non-empty list"),
])
def test_queries_file_is_checked_and_names_the_entry(tmp_path, text, error):
    from backend.regression.sources import SourceError, load_queries
    p = tmp_path / "q.yaml"
    p.write_text(text)
    if error is None:
        (q,) = load_queries(str(p))
        assert (q.name, q.promql, q.higher_is_better) == ("p95", "up", False)
    else:
        with pytest.raises(SourceError, match=re.escape(error)):
            load_queries(str(p))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from("time,series,value,higher_is_better,min_effect\n0123456789.-+eE:TZ\" "
                                             "truefalsnNaI\x00é"), max_size=300),
       index=st.booleans())
def test_any_csv_is_read_or_refused_with_a_source_error(tmp_path, text, index):
    """Whatever the file holds, `detect --csv` reads it or names what is wrong; it never crashes."""
    from backend.regression.sources import SourceError, read_csv
    path = tmp_path / "fuzz.csv"
    path.write_text(text, encoding="utf-8")
    try:
        frame, better, effect = read_csv(str(path), index=index)
    except SourceError as e:
        assert str(e).startswith(str(path))
        return
    assert list(frame.columns) == ["time", "series", "value"]
    assert all(isinstance(v, bool) for v in better.values()) and all(0 <= v < 100 for v in effect.values())
    analyze(frame, better, min_effect=effect)  # and whatever was read can be analysed (or listed as not analysed)
