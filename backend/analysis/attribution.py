"""Root-cause attribution, BubbleUp-style: which values are over-represented among bad runs (pure).

For one workflow's runs, a run is *bad* when it failed (``by="failed"``) or took
longer than the window's 90th percentile (``by="slow"``). Every run carries a
set of features, one per distinct value its spans show: layer, layer/component,
component/operation, service, error type (for ``slow`` only: for ``failed`` it is
the failure itself, not an explanation), and every span attribute
(``attr.<key>``) whose key has at most ``max_values_per_key`` distinct values
(IDs and timestamps are not explanations).

Each feature is a 2×2 table (bad/good × with/without). Over-represented ones
are tested with Fisher's exact test, one-sided (Fisher 1922; the test Honeycomb's
BubbleUp approximates by eye), and the p-values are corrected for the number of
features with Benjamini–Hochberg (1995). Ranked by q-value, then by lift
(share among bad runs ÷ share among good runs).

    ranked = attribute(runs, spans, by="failed")
    ranked[0]  # {"dimension": "attr.db.name", "value": "replica-2", "bad_with": 40, ...}
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import stats

from exporter import conventions as c

from ..regression.detectors import fdr


def _features(span: dict, with_errors: bool):
    layer, comp = span["layer"], span["component"]
    yield "layer", layer
    yield "component", f"{layer}/{comp}"
    yield "operation", f"{comp}/{span['operation']}"
    if span.get("service"):
        yield "service", span["service"]
    if with_errors and span.get("error_type"):
        yield "error_type", span["error_type"]
    for k, v in (span.get("attributes") or {}).items():
        if isinstance(v, (str, int, bool)) and not isinstance(v, float) and len(str(v)) <= 200:
            yield f"attr.{k}", str(v)


def bad_runs(runs: list[dict], by: str) -> tuple[set[str], float | None]:
    """The bad runs' IDs, and the p90 duration threshold when ``by == "slow"``."""
    if by == "failed":
        return {r["correlation_id"] for r in runs if r["status"] in c.FAILED_STATUSES}, None
    p90 = float(np.percentile([r["duration_ms"] for r in runs], 90)) if runs else 0.0
    return {r["correlation_id"] for r in runs if r["duration_ms"] > p90}, p90


def attribute(runs: list[dict], spans: list[dict], by: str = "failed", q: float = 0.05, top: int = 20,
              max_values_per_key: int = 50, samples: int = 3) -> dict:
    bad, threshold = bad_runs(runs, by)
    ids = {r["correlation_id"] for r in runs}
    per_run: dict[str, set] = defaultdict(set)
    for s in spans:
        if s["correlation_id"] in ids and s["layer"] != "system":
            per_run[s["correlation_id"]].update(_features(s, by == "slow"))
    n_bad, n_good = len(bad), len(ids) - len(bad)
    summary = {"by": by, "runs": len(ids), "bad_runs": n_bad, "threshold_ms": threshold, "q": q}
    if n_bad == 0 or n_good == 0:
        return {**summary, "findings": [], "note": "needs both bad and good runs in the window"}
    with_bad: dict[tuple, list[str]] = defaultdict(list)
    with_good: dict[tuple, int] = defaultdict(int)
    values_per_key: dict[str, set] = defaultdict(set)
    for cid, feats in per_run.items():
        for f in feats:
            values_per_key[f[0]].add(f[1])
            if cid in bad:
                with_bad[f].append(cid)
            else:
                with_good[f] += 1
    tested, pvals = [], []
    for f, bad_ids in with_bad.items():
        if len(values_per_key[f[0]]) > max_values_per_key:
            continue
        a, g = len(bad_ids), with_good.get(f, 0)
        if a < 2 or a / n_bad <= g / n_good:
            continue
        table = [[a, n_bad - a], [g, n_good - g]]
        pvals.append(float(stats.fisher_exact(table, alternative="greater").pvalue))
        tested.append((f, a, g, bad_ids))
    reject, adjusted = fdr(pvals, q)
    findings = []
    for (f, a, g, bad_ids), p, qv, sig in zip(tested, pvals, adjusted, reject):
        share_bad, share_good = a / n_bad, g / n_good
        findings.append({
            "dimension": f[0], "value": f[1], "significant": sig, "p_value": p, "q_value": qv,
            "bad_with": a, "good_with": g, "share_of_bad": round(share_bad, 4), "share_of_good": round(share_good, 4),
            "lift": round(share_bad / share_good, 3) if share_good else None,
            "sample_runs": sorted(bad_ids)[:samples],
        })
    findings.sort(key=lambda x: (x["q_value"], -(x["lift"] or float("inf")), x["dimension"], x["value"]))
    return {**summary, "features_tested": len(tested), "findings": findings[:top]}
