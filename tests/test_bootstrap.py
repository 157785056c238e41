"""`make run` installs only what running needs (no apt, no sudo, no test extras); `make test` the rest.

scripts/bootstrap-python runs for real in a copy of the project whose venv's python only records what
pip was asked to do.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_bootstraps_without_apt_and_make_test_with_it():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    make = ["make", "--no-print-directory", "-n"]  # under `make test` (MAKELEVEL=1) make names directories
    run = subprocess.run([*make, "run"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    test = subprocess.run([*make, "test"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    assert run.splitlines() == ["scripts/bootstrap-python", ".venv/bin/flowscope serve --demo"]
    assert test.splitlines()[0] == "scripts/bootstrap"
    script = (ROOT / "scripts" / "bootstrap-python").read_text()
    assert "apt-get" not in script and "sudo" not in script
    assert "exec scripts/bootstrap-python test" in (ROOT / "scripts" / "bootstrap").read_text()


@pytest.fixture
def project(tmp_path):
    """A copy of the project's pyproject.toml and bootstrap script, and a venv whose python logs its arguments."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap-python", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "pip.log"}\n')
    python.chmod(0o755)
    return tmp_path


def _bootstrap(project: Path, *args: str) -> list[str]:
    log = project / "pip.log"
    log.unlink(missing_ok=True)
    subprocess.run(["bash", str(project / "scripts" / "bootstrap-python"), *args], check=True, timeout=60,
                   capture_output=True)
    return [line for line in log.read_text().splitlines() if "--upgrade pip" not in line] if log.exists() else []


def test_the_run_install_has_no_test_extras_and_happens_once(project):
    run_install = "-m pip install -q --disable-pip-version-check -e ."
    if "server = [" in (project / "pyproject.toml").read_text():
        run_install += "[server]"
    assert _bootstrap(project) == [run_install]
    assert _bootstrap(project) == []  # done: nothing to install
    assert _bootstrap(project, "test") == ["-m pip install -q --disable-pip-version-check -e .[test]"]
    assert _bootstrap(project) == []  # the test install has everything running needs
    with open(project / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    assert _bootstrap(project) == [run_install]  # pyproject changed: install again
