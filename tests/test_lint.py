"""ruff with the rule set in pyproject.toml (issue 12, point 7): the tree is clean, and the check can fail."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_passes_ruff():
    done = ruff(".")
    assert done.returncode == 0, f"ruff check . found problems (fix them, or `ruff check --fix .`):\n{done.stdout}"


def test_the_rule_set_catches_a_late_bound_loop_variable_and_a_blind_except(tmp_path):
    """The configured rules, not ruff's defaults: bugbear's B023 and BLE001 are not in the default set."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "probe.py").write_text(
        "def build():\n"
        "    out = []\n"
        "    for i in range(3):\n"
        "        out.append(lambda: i)\n"
        "    try:\n"
        "        return out\n"
        "    except Exception:\n"
        "        return []\n")
    done = ruff("probe.py", cwd=tmp_path)
    assert done.returncode == 1
    assert "B023" in done.stdout and "BLE001" in done.stdout, done.stdout
