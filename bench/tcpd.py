"""Change-point accuracy on the Turing Change Point Dataset (TCPD), scored as TCPDBench scores it.

Reads the data in place (``../shared/benchmarks/tcpd`` or ``--path``; never copied into this
repository): ``datasets/<name>.json`` and ``annotations.json``. For every univariate series it
runs, in the same process and on the same values:

- **flowscope**: ``flowscope detect``'s own analysis with its defaults (the CLI's code path:
  ``analyze()`` on a frame with an index for time, change points and drifts both counted at their
  start);
- **zero**: no change point at all;
- **ruptures Pelt** and **Binseg**: l2 cost, penalty 3·ln n, on the z-scored series (the usual
  BIC-like default; Truong et al. 2020).

Scoring follows TCPDBench (van den Burg & Williams 2020, ``cpdbench_metrics``): F1 with a margin of
5 points, annotators combined (precision against the union of annotations, recall averaged over
annotators), and the covering metric averaged over annotators; index 0 counts as a change point
for the truth and for every prediction. The paper's table of default methods is quoted beside.

    .venv/bin/python bench/tcpd.py [--path ../shared/benchmarks/tcpd] [--all] [--verbose]

``--all`` also scores the five ``quality_control_*`` series (annotation checks, not part of the
paper's benchmark).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MARGIN = 5
PAPER = {  # TCPDBench, univariate series, default parameters: mean F1 / cover
    "binseg": (0.698, 0.672), "pelt": (0.674, 0.652), "bocpd": (0.662, 0.594), "amoc": (0.653, 0.668),
    "segneigh": (0.635, 0.642), "zero": (0.645, 0.566),
}


# -- TCPDBench's metrics ----------------------------------------------------------------------------------------

def _true_positives(truth: set[int], pred: set[int], margin: int = MARGIN) -> set[int]:
    """Each true change point matched to at most one prediction within ``margin`` (closest first)."""
    left = set(pred)
    tp = set()
    for tau in sorted(truth):
        close = sorted((abs(tau - x), x) for x in left if abs(tau - x) <= margin)
        if close:
            tp.add(tau)
            left.remove(close[0][1])
    return tp


def f_measure(annotations: dict[str, list[int]], predictions: list[int], margin: int = MARGIN) -> float:
    tks = [set(a) | {0} for a in annotations.values()]
    pred = set(predictions) | {0}
    union = set().union(*tks)
    precision = len(_true_positives(union, pred, margin)) / len(pred)
    recall = sum(len(_true_positives(tk, pred, margin)) / len(tk) for tk in tks) / len(tks)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _partition(cps, n: int) -> list[tuple[int, int]]:
    bounds = sorted({c for c in cps if 0 < c < n})
    edges = [0] + bounds + [n]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _cover_single(pred: list[tuple[int, int]], truth: list[tuple[int, int]], n: int) -> float:
    total = 0.0
    for a, b in truth:
        best = 0.0
        for c, d in pred:
            inter = max(0, min(b, d) - max(a, c))
            if inter:
                best = max(best, inter / (max(b, d) - min(a, c)))
        total += (b - a) * best
    return total / n


def covering(annotations: dict[str, list[int]], predictions: list[int], n: int) -> float:
    pred = _partition(predictions, n)
    covers = [_cover_single(pred, _partition(a, n), n) for a in annotations.values()]
    return sum(covers) / len(covers)


# -- methods ----------------------------------------------------------------------------------------------------

def flowscope(values: np.ndarray) -> list[int]:
    import pandas as pd

    from backend.regression.analyze import analyze

    frame = pd.DataFrame({"time": np.arange(values.size), "series": "s", "value": values})
    findings, _ = analyze(frame)
    return sorted({f.index for f in findings})


def _ruptures(values: np.ndarray, algo: str) -> list[int]:
    import ruptures as rpt

    x = values[np.isfinite(values)]
    sd = x.std()
    z = (x - x.mean()) / (sd if sd > 0 else 1.0)
    pen = 3 * np.log(z.size)
    model = (rpt.Pelt if algo == "pelt" else rpt.Binseg)(model="l2", min_size=2, jump=1).fit(z)
    return [b for b in model.predict(pen=pen) if b < z.size]


METHODS = {
    "flowscope": flowscope,
    "zero": lambda values: [],
    "pelt": lambda values: _ruptures(values, "pelt"),
    "binseg": lambda values: _ruptures(values, "binseg"),
}


def load(path: Path, include_qc: bool) -> list[tuple[str, np.ndarray, dict[str, list[int]]]]:
    annotations = json.loads((path / "annotations.json").read_text())
    out = []
    for f in sorted((path / "datasets").glob("*.json")):
        d = json.loads(f.read_text())
        name = f.stem
        if d.get("n_dim", 1) != 1 or name not in annotations:
            continue
        if name.startswith("quality_control") and not include_qc:
            continue
        raw = np.array([np.nan if v is None else v for v in d["series"][0]["raw"]], dtype=float)
        out.append((name, raw, annotations[name]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "tcpd")
    ap.add_argument("--all", action="store_true", help="also score the quality_control_* series")
    ap.add_argument("--verbose", action="store_true", help="print each method's change points per series")
    args = ap.parse_args(argv)
    if not (args.path / "annotations.json").exists():
        print(f"no TCPD data at {args.path} (datasets/ and annotations.json expected)", file=sys.stderr)
        return 2
    data = load(args.path, args.all)
    scores = {m: [] for m in METHODS}
    seconds = dict.fromkeys(METHODS, 0.0)
    print(f"{'series':<20} {'n':>4} {'ann':>4}  " + "  ".join(f"{m:>15}" for m in METHODS))
    print(f"{'':<20} {'':>4} {'':>4}  " + "  ".join(f"{'F1':>7} {'cover':>7}" for _ in METHODS))
    for name, values, ann in data:
        row = []
        for m, fn in METHODS.items():
            t0 = time.perf_counter()
            cps = fn(values)
            seconds[m] += time.perf_counter() - t0
            f1, cov = f_measure(ann, cps), covering(ann, cps, values.size)
            scores[m].append((f1, cov))
            row.append(f"{f1:>7.3f} {cov:>7.3f}")
            if args.verbose:
                print(f"    {m}: {cps}")
        n_ann = np.mean([len(a) for a in ann.values()])
        print(f"{name:<20} {values.size:>4} {n_ann:>4.1f}  " + "  ".join(row))
    print()
    print(f"mean over {len(data)} series (this run; the paper's default-parameter table beside):")
    for m in METHODS:
        f1, cov = np.mean(scores[m], axis=0)
        paper = PAPER.get(m)
        beside = f"   paper: {paper[0]:.3f} / {paper[1]:.3f}" if paper else ""
        print(f"  {m:<10} F1 {f1:.3f}  cover {cov:.3f}   ({seconds[m] * 1000:.0f} ms){beside}")
    no_change = [i for i, (_, _, ann) in enumerate(data) if not any(ann.values())]
    if no_change:
        print(f"  on the {len(no_change)} series no annotator marked: "
              + ", ".join(f"{m} F1 {np.mean([scores[m][i][0] for i in no_change]):.3f}" for m in METHODS))
    for m, (f1, cov) in PAPER.items():
        if m not in METHODS:
            print(f"  {m:<10} (paper only) F1 {f1:.3f}  cover {cov:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
