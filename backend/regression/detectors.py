"""Detectors: pure functions of one series (numpy array), each citing its method.

- :func:`change_points` — binary segmentation (Scott & Knott 1974; Vostrikova 1981): a
  two-sample z statistic at every split, using a robust noise scale from first differences,
  Šidák-corrected for the number of splits searched, confirmed by a Mann–Whitney U test so a
  lone spike never splits a series, then refined and pruned. Compared with Hunter/Otava's
  windowed E-Divisive + t-test (Fleming et al., ICPE 2023) the search is exhaustive and
  vectorised with cumulative sums.
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


def noise_sigma(x: np.ndarray) -> float:
    """Robust noise scale from first differences: 1.4826·MAD(diff)/√2.

    Level shifts touch only a few differences, so the estimate is (nearly) free of the
    changes being looked for (the usual estimator in change-point work, e.g. Fryzlewicz
    2014). It falls back to the plain standard deviation of the differences when more
    than half of them are exactly zero (piecewise-constant data).
    """
    d = np.diff(x)
    if d.size == 0:
        return 0.0
    mad = float(np.median(np.abs(d - np.median(d))))
    if mad > 0:
        return 1.4826 * mad / np.sqrt(2)
    return float(np.std(d)) / np.sqrt(2)


def _best_split(x: np.ndarray, min_seg: int, sigma: float | None = None) -> tuple[int, float] | None:
    """(split index, Šidák-corrected p-value) of the strongest mean shift in x.

    CUSUM-style two-sample z statistic with the series' noise scale ``sigma``
    (Vostrikova 1981), maximised over every split with both sides >= ``min_seg``.
    """
    n = x.size
    if n < 2 * min_seg:
        return None
    if sigma is None:
        sigma = noise_sigma(x)
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    k = np.arange(min_seg, n - min_seg + 1)
    n1, n2 = k.astype(float), (n - k).astype(float)
    m1, m2 = c1[k] / n1, (c1[n] - c1[k]) / n2
    diff = np.abs(m1 - m2)
    scale = max(np.abs(x).max(), 1.0)
    if sigma <= 1e-12 * scale:
        # Piecewise-constant data (sigma = 0): a split between two constant runs is certain.
        c2 = np.concatenate(([0.0], np.cumsum(x * x)))
        v1 = np.maximum(c2[k] - n1 * m1 * m1, 0.0)
        v2 = np.maximum(c2[n] - c2[k] - n2 * m2 * m2, 0.0)
        exact = (v1 <= (1e-9 * scale) ** 2 * n1) & (v2 <= (1e-9 * scale) ** 2 * n2) & (diff > 1e-9 * scale)
        if exact.any():
            i = int(np.flatnonzero(exact)[np.argmax(diff[exact])])
            return int(k[i]), 0.0
        sigma = 1e-9 * scale
    z = diff / (sigma * np.sqrt(1 / n1 + 1 / n2))
    i = int(np.argmax(z))
    p = float(2 * stats.norm.sf(z[i]))
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
    sigma = noise_sigma(x)
    found: list[tuple[int, float]] = []
    todo = [(0, x.size)]
    while todo and len(found) < max_changes:
        a, b = todo.pop()
        best = _best_split(x[a:b], min_seg, sigma)
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
        if not _survives_edge_check(left, right, min_seg, sigma, alpha, b - a):
            continue
        found.append((a + k, p))
        todo += [(a, a + k), (a + k, b)]
    found = _refine(x, sorted(found), min_seg, alpha, sigma)
    out = []
    bounds = [0] + [i for i, _ in found] + [x.size]
    for j, (i, p) in enumerate(found):
        before, after = x[bounds[j]:i], x[i:bounds[j + 2]]
        out.append(Change(i, float(before.mean()), float(after.mean()), _ci(before), _ci(after), p, "change_point"))
    return out


def _survives_edge_check(left: np.ndarray, right: np.ndarray, min_seg: int, sigma: float, alpha: float,
                         n_splits: int) -> bool:
    """Near a window edge, a short side can be "shifted" by one spike: drop that side's most
    extreme point and require the shift to stay significant (the edge re-check of issue #4)."""
    short, other = (left, right) if left.size <= right.size else (right, left)
    if short.size > 3 * min_seg:
        return True
    ref = other.mean()
    trimmed = np.delete(short, int(np.argmax(np.abs(short - ref))))
    if trimmed.size == 0:
        return False
    if sigma <= 0:
        return bool(np.ptp(trimmed) == 0 and abs(trimmed.mean() - ref) > 0)
    z = abs(trimmed.mean() - ref) / (sigma * np.sqrt(1 / trimmed.size + 1 / other.size))
    p = float(2 * stats.norm.sf(z))
    p_adj = float(-np.expm1(max(n_splits, 1) * np.log1p(-p))) if p < 1 else 1.0
    return p_adj < alpha


def _refine(x: np.ndarray, found: list[tuple[int, float]], min_seg: int, alpha: float,
            sigma: float) -> list[tuple[int, float]]:
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
            best = _best_split(x[a:b], min_seg, sigma)
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


def decompose(x: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray]:
    """(seasonal, residual) of a robust STL fit (Cleveland et al. 1990, statsmodels)."""
    from statsmodels.tsa.seasonal import STL

    res = STL(x, period=period, robust=True).fit()
    return np.asarray(res.seasonal), np.asarray(res.resid)


def seasonal_anomaly(values, period: int, recent: int, z_threshold: float = 3.5, min_points_over: int = 3,
                     resid: np.ndarray | None = None) -> Change | None:
    """Points in the recent window whose STL residual has a robust |z| over the threshold.

    ``resid`` may be passed when the caller already decomposed the (cleaned) series.
    """
    x = clean(values, min_points=2 * period + recent)
    if resid is None:
        resid = decompose(x, period)[1]
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
