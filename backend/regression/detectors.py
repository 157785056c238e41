"""Detectors: pure functions of one series (numpy array), each citing its method.

- :func:`change_points` — binary segmentation (Scott & Knott 1974; Vostrikova 1981) with a
  Welch two-sample t-test at the best split, Šidák-corrected for the number of splits
  searched, and a Mann–Whitney U confirmation so a lone spike never splits a series. The
  same t-test significance check as Hunter/Otava (Fleming et al., ICPE 2023), but the
  search is exhaustive and vectorised with cumulative sums instead of E-Divisive windows.
- :func:`window_comparison` — baseline window vs recent window, Mann–Whitney U (or Welch),
  with a relative effect-size floor.
- :func:`seasonal_anomaly` — STL decomposition (Cleveland et al. 1990, statsmodels), then a
  robust z-score (median/MAD, Iglewicz & Hoaglin 1993) on the residual of the recent window.
- :func:`fdr` — Benjamini–Hochberg (1995) across all series of one run (statsmodels).

Each returns findings, or raises :class:`NotAnalysed` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_SEGMENT = 5


class NotAnalysed(Exception):
    """The series cannot be analysed; the message says why (too short, constant, counter reset, ...)."""


@dataclass(frozen=True)
class Change:
    index: int  # first index of the new level
    before: float
    after: float
    ci_before: tuple[float, float]
    ci_after: tuple[float, float]
    p_value: float  # raw, corrected for the split search
    detector: str

    @property
    def relative_change(self) -> float:
        return (self.after - self.before) / abs(self.before) if self.before else float("inf")


def clean(values, counter: bool = False, min_points: int = 2 * MIN_SEGMENT) -> np.ndarray:
    """A finite float array, or NotAnalysed saying why not."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise NotAnalysed("not a one-dimensional series")
    finite = np.isfinite(x)
    if not finite.any():
        raise NotAnalysed("no finite values (all NaN or Inf)")
    x = x[finite]
    if counter:
        drops = np.flatnonzero(np.diff(x) < 0)
        if drops.size:
            raise NotAnalysed(f"counter reset at point {int(drops[0]) + 1}: analyse rate() of a counter, not the raw "
                              "counter")
    if x.size < min_points:
        raise NotAnalysed(f"too short: {x.size} finite points, at least {min_points} needed")
    if np.ptp(x) == 0:
        raise NotAnalysed("constant series: nothing can change")
    return x


def _ci(seg: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    m = float(seg.mean())
    if seg.size < 2:
        return m, m
    half = float(stats.t.ppf(0.5 + level / 2, seg.size - 1) * seg.std(ddof=1) / np.sqrt(seg.size))
    return m - half, m + half


def _best_split(x: np.ndarray, min_seg: int) -> tuple[int, float] | None:
    """(split index, Šidák-corrected Welch p-value) of the strongest mean shift in x."""
    n = x.size
    if n < 2 * min_seg:
        return None
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    c2 = np.concatenate(([0.0], np.cumsum(x * x)))
    k = np.arange(min_seg, n - min_seg + 1)
    n1, n2 = k.astype(float), (n - k).astype(float)
    s1, s2 = c1[k], c1[n] - c1[k]
    q1, q2 = c2[k], c2[n] - c2[k]
    m1, m2 = s1 / n1, s2 / n2
    v1 = np.maximum(q1 - n1 * m1 * m1, 0.0) / (n1 - 1)
    v2 = np.maximum(q2 - n2 * m2 * m2, 0.0) / (n2 - 1)
    se2 = v1 / n1 + v2 / n2
    diff = np.abs(m1 - m2)
    scale = max(np.abs(x).max(), 1.0)
    exact = se2 <= (1e-12 * scale) ** 2  # both sides (numerically) constant
    if exact.any():
        # Piecewise-constant data (sigma = 0): a split between two constant runs is certain.
        cand = np.flatnonzero(exact & (diff > 1e-9 * scale))
        if cand.size:
            i = cand[np.argmax(diff[cand])]
            return int(k[i]), 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(exact, 0.0, diff / np.sqrt(se2))
    i = int(np.argmax(t))
    df = se2[i] ** 2 / ((v1[i] / n1[i]) ** 2 / (n1[i] - 1) + (v2[i] / n2[i]) ** 2 / (n2[i] - 1) + 1e-300)
    p = float(2 * stats.t.sf(t[i], df))
    m = k.size  # Šidák correction for having searched m splits
    p_adj = float(-np.expm1(m * np.log1p(-p))) if p < 1 else 1.0
    return int(k[i]), p_adj


def change_points(values, alpha: float = 1e-3, min_seg: int = MIN_SEGMENT, max_changes: int = 20,
                  counter: bool = False, confirm_alpha: float = 0.01) -> list[Change]:
    """Mean shifts in the series, by binary segmentation with a corrected Welch t-test.

    A split is kept only if (1) its corrected p-value is below ``alpha``, (2) both
    sides have at least ``min_seg`` points, and (3) a Mann–Whitney U test on the two
    sides agrees (p < ``confirm_alpha``); (3) makes one spike, however large,
    insufficient. Each change is then re-placed at the best split between its
    neighbours (the usual refinement pass of binary segmentation).
    """
    x = clean(values, counter=counter, min_points=2 * min_seg)
    found: list[tuple[int, float]] = []
    todo = [(0, x.size)]
    while todo and len(found) < max_changes:
        a, b = todo.pop()
        best = _best_split(x[a:b], min_seg)
        if best is None:
            continue
        k, p = best
        left, right = x[a:a + k], x[a + k:b]
        if p >= alpha:
            continue
        if np.ptp(left) > 0 or np.ptp(right) > 0:
            u = stats.mannwhitneyu(left, right, alternative="two-sided")
            if u.pvalue >= confirm_alpha:
                continue
        found.append((a + k, p))
        todo += [(a, a + k), (a + k, b)]
    found = _refine(x, sorted(found), min_seg, alpha)
    out = []
    bounds = [0] + [i for i, _ in found] + [x.size]
    for j, (i, p) in enumerate(found):
        before, after = x[bounds[j]:i], x[i:bounds[j + 2]]
        out.append(Change(i, float(before.mean()), float(after.mean()), _ci(before), _ci(after), p, "change_point"))
    return out


def _refine(x: np.ndarray, found: list[tuple[int, float]], min_seg: int, alpha: float) -> list[tuple[int, float]]:
    """Re-place each change at the best split between its neighbours, and drop it if that
    split is no longer significant there; repeat until nothing moves (at most 10 passes).

    Binary segmentation's first splits can land beside a short "epidemic" change (a bump)
    rather than on its edges; once the edges are found, such a split is no longer needed.
    """
    for _ in range(10):
        changed = False
        j = 0
        while j < len(found):
            a = found[j - 1][0] if j else 0
            b = found[j + 1][0] if j + 1 < len(found) else x.size
            best = _best_split(x[a:b], min_seg)
            if best is None or best[1] >= alpha:
                del found[j]
                changed = True
                continue
            new = (a + best[0], best[1])
            if new[0] != found[j][0]:
                changed = True
            found[j] = new
            j += 1
        if not changed:
            break
    return sorted(set(found))


def window_comparison(values, recent: int, baseline: int | None = None, min_effect: float = 0.05,
                      test: str = "mannwhitney") -> Change | None:
    """The recent ``recent`` points against the ``baseline`` points before them.

    A finding needs p < 0.05 *before* FDR (the caller corrects across series) and a
    relative change of at least ``min_effect``.
    """
    x = clean(values, min_points=recent + MIN_SEGMENT)
    base = x[:-recent] if baseline is None else x[-recent - baseline:-recent]
    rec = x[-recent:]
    if base.size < MIN_SEGMENT:
        raise NotAnalysed(f"baseline too short: {base.size} points")
    if test == "welch":
        p = float(stats.ttest_ind(base, rec, equal_var=False).pvalue)
    else:
        p = float(stats.mannwhitneyu(base, rec, alternative="two-sided").pvalue)
    b, r = float(np.median(base)), float(np.median(rec))
    effect = abs(r - b) / abs(b) if b else float("inf")
    if effect < min_effect or not np.isfinite(p):
        return None
    return Change(x.size - recent, float(base.mean()), float(rec.mean()), _ci(base), _ci(rec), p, "window")


def seasonal_anomaly(values, period: int, recent: int, z_threshold: float = 3.5,
                     min_points_over: int = 3) -> Change | None:
    """Points in the recent window whose STL residual has a robust |z| over the threshold."""
    from statsmodels.tsa.seasonal import STL

    x = clean(values, min_points=2 * period + recent)
    res = STL(x, period=period, robust=True).fit()
    resid = np.asarray(res.resid)
    hist = resid[:-recent]
    med = float(np.median(hist))
    mad = float(np.median(np.abs(hist - med))) * 1.4826
    if mad == 0:
        mad = float(np.std(hist)) or 1e-12
    z = (resid[-recent:] - med) / mad
    over = np.flatnonzero(np.abs(z) > z_threshold)
    if over.size < min_points_over:
        return None
    base = x[:-recent]
    rec = x[-recent:]
    # p-value of seeing this many |z| > threshold points by chance (normal residuals, binomial count)
    p_point = 2 * stats.norm.sf(z_threshold)
    p = float(stats.binom.sf(over.size - 1, recent, p_point))
    return Change(x.size - recent + int(over[0]), float(base.mean()), float(rec.mean()), _ci(base), _ci(rec), p,
                  "seasonal")


def fdr(p_values: list[float], q: float = 0.05) -> tuple[list[bool], list[float]]:
    """Benjamini–Hochberg across one run: (reject, adjusted p-values)."""
    if not p_values:
        return [], []
    from statsmodels.stats.multitest import multipletests

    reject, adjusted, _, _ = multipletests(p_values, alpha=q, method="fdr_bh")
    return [bool(r) for r in reject], [float(a) for a in adjusted]
