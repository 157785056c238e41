"""Write what a spec generates, and check it with the real promtool and amtool.

    files = render_all("alert_rules/spec/flowscope.yaml")   # {relative path: text}, pure
    write_all(files, "alert_rules")                          # the only I/O
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .alertmanager import alertmanager_config
from .generate import rule_groups, to_yaml
from .promtool_tests import promtool_slo_tests, promtool_tests
from .spec import Spec, load_spec

RULES_FILE = "flowscope-rules.yml"
TESTS_FILE = "tests/flowscope-rules_test.yml"
SLO_TESTS_FILE = "tests/flowscope-slo_test.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
DEFAULT_SPEC = "alert_rules/spec/flowscope.yaml"


def render_all(spec_path: str, spec: Spec | None = None) -> dict[str, str]:
    spec = spec or load_spec(spec_path)
    source = os.path.relpath(spec_path) if os.path.isabs(spec_path) else spec_path
    return {
        RULES_FILE: to_yaml(rule_groups(spec), source),
        TESTS_FILE: to_yaml(promtool_tests(spec, "../" + RULES_FILE), source),
        SLO_TESTS_FILE: to_yaml(promtool_slo_tests(spec, "../" + RULES_FILE), source),
        ALERTMANAGER_FILE: to_yaml(alertmanager_config(spec.routing), source),
    }


def write_all(files: dict[str, str], out_dir: str) -> list[str]:
    """Write the files; returns the ones whose content changed."""
    changed = []
    for rel, text in files.items():
        p = Path(out_dir) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() or p.read_text(encoding="utf-8") != text:
            p.write_text(text, encoding="utf-8")
            changed.append(str(p))
    return changed


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (scripts/bootstrap installs it from Debian)")
    return path


def check_all(out_dir: str) -> list[tuple[str, int, str]]:
    """Run promtool check rules, promtool test rules and amtool check-config; (command, exit code, output)."""
    d = Path(out_dir)
    runs = [
        [_tool("promtool"), "check", "rules", str(d / RULES_FILE)],
        [_tool("promtool"), "test", "rules", str(d / TESTS_FILE), str(d / SLO_TESTS_FILE)],
        [_tool("amtool"), "check-config", str(d / ALERTMANAGER_FILE)],
    ]
    out = []
    for cmd in runs:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        out.append((" ".join(Path(cmd[0]).name if i == 0 else a for i, a in enumerate(cmd)), r.returncode,
                    (r.stdout + r.stderr).strip()))
    return out
