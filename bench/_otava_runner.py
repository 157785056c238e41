"""Run Apache Otava's t-test change-point detection on series from a JSON file (inside .venv-otava).

Reads [{"id", "values"}], writes {"detections": {id: [index, ...]}, "seconds": total}.
Otava is called with a Python list: a numpy array makes it scan the whole series and raise.
"""

import json
import sys
import time

from otava.analysis import compute_change_points

with open(sys.argv[1]) as f:
    series = json.load(f)
out = {}
t0 = time.perf_counter()
for s in series:
    cps, _ = compute_change_points(list(s["values"]), window_len=50, max_pvalue=0.001)
    out[s["id"]] = [int(c.index) for c in cps]
with open(sys.argv[2], "w") as f:
    json.dump({"detections": out, "seconds": time.perf_counter() - t0}, f)
