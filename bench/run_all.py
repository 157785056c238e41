"""Run every benchmark in one go, each printing its figures against its named baseline.

    make bench     # or: .venv/bin/python bench/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("ingest.py", "sdk_overhead.py", "scrape.py", "regression.py", "tcpd.py", "attribution.py",
               "fingerprints.py", "replay.py", "profiler_overhead.py", "sdk_install.py", "sdk_remote.py",
               "store_ingest.py", "store_floor.py"):
    print(f"\n$ python bench/{script}", flush=True)
    r = subprocess.run([sys.executable, str(HERE / script)], cwd=HERE)
    if r.returncode:
        sys.exit(r.returncode)
