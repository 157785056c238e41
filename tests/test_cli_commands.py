"""The commands a user runs by hand: replay never creates a store, dashboards build reports once, demo sends
what it says and fails loudly when nothing arrives. ``main()`` runs in-process; the exporter is real."""

from __future__ import annotations

import hashlib

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter import conventions as c
from exporter.sdk import WorkflowTracer
from exporter.sdk.sinks import InProcessSink
from flowscope.cli import main
from tests.conftest import free_port


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A directory that is not the server's, and no store configured."""
    for var in ("FLOWSCOPE_DATABASE_URL", "FLOWSCOPE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_replay_where_there_is_no_store_says_so_and_creates_none(elsewhere, capsys):
    assert main(["replay", "c-1"]) == 1
    err = capsys.readouterr().err
    assert f"no run store at {elsewhere / 'var' / 'flowscope.db'}" in err and "--database-url" in err
    assert not (elsewhere / "var").exists()
    assert main(["replay", "c-1", "--database-url", f"sqlite:///{elsewhere}/other/runs.db"]) == 1
    assert "no run store at" in capsys.readouterr().err and not (elsewhere / "other").exists()


def test_replay_opens_an_existing_store_without_writing_to_it(make_exporter, elsewhere, capsys):
    url = f"sqlite:///{elsewhere}/runs.db"
    ex = make_exporter(database_url=url)
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with t.workflow("checkout"), t.step("database", "postgres", "insert_order", state={"order": 9}):
        pass
    assert ex.pipeline.recorder.flush()
    ex.close()
    before = hashlib.sha256((elsewhere / "runs.db").read_bytes()).hexdigest()
    assert main(["replay", "no-such-run", "--database-url", url]) == 1
    assert "no stored run with correlation_id or trace_id 'no-such-run'" in capsys.readouterr().err
    assert hashlib.sha256((elsewhere / "runs.db").read_bytes()).hexdigest() == before


def test_dashboards_build_reports_up_to_date_once(tmp_path, capsys):
    args = ["dashboards", "build", "--out", str(tmp_path / "dash"), "--provisioning-out", str(tmp_path / "prov")]
    assert main(args) == 0
    wrote = capsys.readouterr().out.splitlines()
    assert wrote and all(line.startswith("wrote ") for line in wrote)
    assert any("/prov/" in line for line in wrote) and any("/dash/" in line for line in wrote)
    assert main(args) == 0
    assert capsys.readouterr().out == "up to date\n"
    assert main([*args, "--check"]) == 0


def _runs_received(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == c.WORKFLOW_RUNS_TOTAL.removesuffix(
        "_total") for s in f.samples if s.name == c.WORKFLOW_RUNS_TOTAL)


def test_demo_for_a_duration_sends_duration_times_rate_runs(ex, serve, capsys):
    srv = serve(ex)
    assert main(["demo", "--target", srv.url, "--duration", "1", "--rate", "5", "--seed", "7"]) == 0
    assert capsys.readouterr().out.strip() == f"sent 5 runs to {srv.url}/api/v1/spans"
    assert _runs_received(srv.url) == 5


def test_demo_that_delivers_nothing_fails_and_says_why(capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["demo", "--target", url, "--duration", "0.4", "--rate", "5"]) == 1
    err = capsys.readouterr().err
    assert f"flowscope: no run was delivered to {url}/api/v1/spans (2 tried)" in err


@pytest.mark.parametrize("args", [["--rate", "0"], ["--rate", "-1"], ["--rate", "nan"], ["--duration", "-1"]])
def test_demo_refuses_a_rate_or_duration_it_cannot_run(args, capsys):
    assert main(["demo", "--target", "http://127.0.0.1:9", *args]) == 2
    assert "--rate must be above 0 and --duration at least 0" in capsys.readouterr().err
