"""`import flowscope` is the SDK: a light library with no side effect until it is used.

Each check runs in a fresh interpreter (what is loaded, what files and threads exist, is the point).
The install size and import time are measured by bench/sdk_install.py, not asserted here.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from exporter import conventions as c

ROOT = Path(__file__).resolve().parent.parent


def run(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, check=False)


def test_the_sdk_in_an_empty_directory_makes_no_file_thread_or_server(tmp_path):
    r = run("""
        import sys, threading
        import flowscope
        before = threading.active_count()
        tracer = flowscope.WorkflowTracer()
        assert threading.active_count() == before, "a thread before the first span"
        with tracer.workflow("checkout", user="u-42"):
            with tracer.step("database", "postgres", "SELECT orders"):
                pass
        flowscope.shutdown()
        server = [m for m in ("flask", "waitress", "sqlalchemy", "pandas", "numpy", "scipy", "backend",
                              "exporter.pipeline", "exporter.store") if m in sys.modules]
        print("server modules:", server)
        print("public:", sorted(n for n in flowscope.__all__ if getattr(flowscope, n) is None))
    """, tmp_path, FLOWSCOPE_SDK_ENDPOINT="http://127.0.0.1:9")  # nothing listens there: the spans are dropped
    assert r.returncode == 0, r.stderr
    assert "server modules: []" in r.stdout and "public: []" in r.stdout
    assert list(tmp_path.iterdir()) == []  # no ./var/flowscope.db, no WAL files


def test_the_sdk_sends_to_the_server_by_default(serve, ex, tmp_path):
    srv = serve(ex)
    r = run("""
        import flowscope
        tracer = flowscope.WorkflowTracer()
        with tracer.workflow("login"):
            with tracer.step("api", "auth", "POST /login"):
                pass
        flowscope.shutdown()
    """, tmp_path, FLOWSCOPE_SDK_ENDPOINT=srv.url)
    assert r.returncode == 0, r.stderr
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {c.L_WORKFLOW: "login", c.L_STATUS: "ok"}) == 1


def test_a_command_without_its_extra_says_which_to_install(tmp_path):
    """`pip install flowscope` has no server: `flowscope serve` names the extra instead of a traceback."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("flask", "numpy"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, _NotInstalled())
    """))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    for command, extra in ((["serve"], "server"), (["detect", "--csv", "x.csv"], "analysis")):
        r = subprocess.run([sys.executable, "-m", "flowscope", *command], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60, env=env, check=False)
        assert r.returncode == 2 and f"pip install 'flowscope[{extra}]'" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_the_public_names_are_the_sdk():
    import flowscope
    from exporter import sdk

    assert set(flowscope.__all__) == set(flowscope._HOME)
    assert flowscope.WorkflowTracer is sdk.WorkflowTracer and flowscope.configure is sdk.configure
