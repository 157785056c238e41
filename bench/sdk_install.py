"""What `pip install flowscope` (the SDK alone) costs an app: install size, import time, side effects.

Builds a fresh venv in a temporary directory, installs this project without extras, and reports:
- the size of what the install added to site-packages (pip, setuptools and pkg_resources excluded: they
  come with every venv), per package;
- ``import flowscope`` and the first ``WorkflowTracer`` (``python -X importtime``, median of 5 processes);
- that a traced workflow, in an empty directory, creates no file and loads no server module.

    .venv/bin/python bench/sdk_install.py      # targets (issue 12): < 15 MB, import < 50 ms
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_OWN = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth", "__pycache__")


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def import_ms(python: str, code: str, cwd: str) -> float:
    runs = []
    for _ in range(5):
        err = subprocess.run([python, "-X", "importtime", "-c", code], cwd=cwd, capture_output=True, text=True,
                             check=True).stderr
        # the cumulative µs of each top-level import (no indent before its name) the code made
        runs.append(sum(int(m.group(1)) for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \| (?! )\S", err))
                    / 1000)
    return statistics.median(runs)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        venv, empty = Path(d) / "venv", Path(d) / "app"
        empty.mkdir()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        site = Path(subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        before = {p.name for p in site.iterdir()}
        src = Path(d) / "src"  # a copy: an in-tree build would leave build/ in the repository
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "flowscope", "exporter", "backend"):
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, src / name)
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)], check=True)
        added = sorted((p for p in site.iterdir() if p.name not in before and not p.name.startswith(VENV_OWN)),
                       key=size, reverse=True)
        total = sum(size(p) for p in added)
        print(f"pip install flowscope (no extras): {total / 1e6:.1f} MB in site-packages (target < 15 MB)")
        for p in added[:10]:
            print(f"  {size(p) / 1e6:6.2f} MB  {p.name}")
        t_import = import_ms(python, "import flowscope", str(empty))
        t_tracer = import_ms(python, "import flowscope; flowscope.WorkflowTracer", str(empty))
        print(f"import flowscope: {t_import:.1f} ms; with WorkflowTracer loaded: {t_tracer:.1f} ms "
              f"(median of 5 processes, -X importtime; target < 50 ms)")
        probe = (
            "import os, sys, threading, flowscope\n"
            "threads = threading.active_count()\n"
            "t = flowscope.WorkflowTracer()\n"
            "print('threads after import and WorkflowTracer():', threading.active_count() - threads)\n"
            "with t.workflow('checkout'):\n"
            "    with t.step('database', 'postgres', 'SELECT 1'):\n"
            "        pass\n"
            "heavy = [m for m in ('flask', 'sqlalchemy', 'pandas', 'numpy', 'scipy', 'waitress', 'backend') "
            "if m in sys.modules]\n"
            "print('server modules loaded:', heavy or 'none', '; files created:', os.listdir('.') or 'none')\n"
        )
        env = {**os.environ, "FLOWSCOPE_SDK_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens: spans are dropped
        out = subprocess.run([python, "-c", probe], cwd=empty, capture_output=True, text=True, timeout=120,
                             env=env, check=True).stdout
        print(out.strip())


if __name__ == "__main__":
    main()
