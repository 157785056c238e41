"""`.gitignore` never matches a tracked file (it would hide that file's new siblings and confuse `git status`)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_no_tracked_file_is_ignored():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.splitlines() == []
