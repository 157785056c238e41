"""Detectors: pure functions of one series (numpy array), each citing its method.

- :func:`change_points` — level shifts (steps) and trend changes (drifts): optimal segmentation
  into straight-line segments (PELT, Killick et al. 2012), penalised per change like BIC with the
  noise scaled for autocorrelation (Newey & West 1987), after a seasonal cycle, found and tested
  (:func:`find_period`) or given, is removed and isolated spikes are filtered (Hampel). Changes
  below a practical effect or a significance level are dropped. On the Turing Change Point
  Dataset (van den Burg & Williams 2020) it scores above every default method of that paper
  (bench/tcpd.py).
- :func:`find_period` — the seasonal period: autocorrelation peaks (AutoPeriod, Vlachos et al.
  2005) confirmed by a phase ANOVA.
- :func:`fdr` — Benjamini–Hochberg (1995) across all series of one run.

Each returns findings, or raises :class:`NotAnalysed` with the reason.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import overload

import numpy as np
import numpy.typing as npt
from scipy import special

#: A series, or any array of floats here.
Floats = npt.NDArray[np.float64]
#: Segment boundaries, as an array.
Indices = npt.NDArray[np.intp]

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
    kind: str = "step"  # step: the level jumps; drift: the slope changes
    rate: float = 0.0  # a drift's new slope, per point

    @property
    def relative_change(self) -> float:
        return (self.after - self.before) / abs(self.before) if self.before else float("inf")


def clean(values: npt.ArrayLike, counter: bool = False, min_points: int = 2 * MIN_SEGMENT) -> Floats:
    """A finite float array, or NotAnalysed saying why not."""
    x: Floats = np.asarray(values, dtype=float)
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


def _ci(seg: Floats, level: float = 0.95) -> tuple[float, float]:
    m = float(seg.mean())
    if seg.size < 2:
        return m, m
    half = float(special.stdtrit(seg.size - 1, 0.5 + level / 2) * seg.std(ddof=1) / np.sqrt(seg.size))
    return m - half, m + half


def _spread(v: Floats) -> float:
    """1.4826·MAD, or the standard deviation when more than half the values are equal (sparse data)."""
    mad = float(np.median(np.abs(v - np.median(v)))) if v.size else 0.0
    return 1.4826 * mad if mad > 0 else float(np.std(v))


def _hampel(x: Floats, half: int = 3, k: float = 5.0) -> Floats:
    """x with isolated spikes (runs of at most ``half`` points) replaced by the rolling median
    (Hampel filter; Pearson 2002): a spike is an outlier, not a change, and annotators don't mark it."""
    if x.size < 2 * half + 1:
        return x
    pad = np.pad(x, half, mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1), axis=1)
    dev = x - med
    scale = max(_spread(dev), _spread(np.diff(x)) / np.sqrt(2))
    out = x.copy()
    spikes = np.abs(dev) > k * scale if scale > 0 else np.abs(dev) > 1e-9 * max(float(np.abs(x).max()), 1.0)
    out[spikes] = med[spikes]
    return out


def _acf(y: Floats, max_lag: int) -> Floats:
    y = y - y.mean()
    f = np.fft.rfft(y, 2 * y.size)
    a = np.fft.irfft(f * np.conj(f))[:max_lag + 1]
    return a / a[0] if a[0] > 0 else np.zeros(max_lag + 1)


def find_period(values: npt.ArrayLike, min_cycles: int = 3, max_period: int | None = None, alpha: float = 1e-3,
                min_share: float = 0.2) -> int | None:
    """The seasonal period of a series in points, or None when it has no significant cycle.

    Candidates are the autocorrelation function's peaks (of the linearly detrended series) that rise
    at least 0.3 above the dip before them; the shortest whose peak is at least half the highest is
    the fundamental (multiples of a period peak too). It is kept when a one-way ANOVA of the values
    around a centred moving average, grouped by phase, is significant (p < ``alpha``) and the
    seasonal means explain at least ``min_share`` of that variance: the classical decomposition's
    test, as in AutoPeriod (Vlachos et al. 2005), which pairs periodogram hints with ACF hills.
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    max_lag = n // min_cycles if max_period is None else min(n // min_cycles, max_period)
    if max_lag < 4:
        return None
    t = np.arange(n)
    y = x - np.polyval(np.polyfit(t, x, 1), t)
    r = _acf(y, max_lag + 1)
    peaks = [p for p in range(2, max_lag + 1)
             if r[p] > 0 and r[p] >= r[p - 1] and r[p] >= r[p + 1] and r[p] - r[1:p].min() > 0.3]
    if not peaks:
        return None
    top = max(r[p] for p in peaks)
    first = next(p for p in peaks if r[p] >= 0.5 * top)
    # the ACF's peak can sit a lag or two off in noise: the lag whose multiples correlate most wins
    full = _acf(y, n - 1)
    p = max((q for q in range(first - 2, first + 3) if 2 <= q <= max_lag),
            key=lambda q: sum(full[k * q] for k in range(1, max(2, (n // 2) // q + 1)) if k * q < n))
    share, pvalue = _phase_test(x, p)
    return p if pvalue < alpha and share >= min_share else None


def _phase_test(x: Floats, p: int) -> tuple[float, float]:
    """(share of variance explained by the phase means, ANOVA p-value) around a centred moving average."""
    n = x.size
    trend = np.convolve(x, np.ones(p) / p, mode="same")
    lo, hi = p // 2, n - p // 2
    dev, phase = (x - trend)[lo:hi], np.arange(lo, hi) % p
    groups = [dev[phase == i] for i in range(p)]
    if min(g.size for g in groups) < 2 or dev.var() == 0:
        return 0.0, 1.0
    means = np.array([g.mean() for g in groups])
    sizes = np.array([g.size for g in groups])
    between = float((sizes * (means - dev.mean()) ** 2).sum()) / (p - 1)
    within = float(sum(((g - m) ** 2).sum() for g, m in zip(groups, means))) / (dev.size - p)
    f_stat = between / within if within > 0 else np.inf
    return float(np.var(means) / dev.var()), float(special.fdtrc(p - 1, dev.size - p, f_stat))  # one-way ANOVA


def deseasonalize(x: Floats, period: int) -> Floats:
    """x minus its seasonal profile: the median, per phase, of x around a centred rolling median one
    period wide (a robust classical decomposition). Medians over every cycle keep one cycle's step
    out of the profile, so a step stays a step (STL's smoother bent it into a ramp)."""
    import pandas as pd

    trend = pd.Series(x).rolling(period, center=True, min_periods=1).median().to_numpy()
    phase = np.arange(x.size) % period
    dev = x - trend
    profile = np.array([np.median(dev[phase == i]) for i in range(period)])
    out: Floats = x - (profile - profile.mean())[phase]
    return out


class _Sums:
    """Prefix sums for the least-squares cost of a line fitted to any segment x[s:t] in O(1)."""

    def __init__(self, x: Floats, slope_penalty: float = 0.0):
        self.slope_penalty = slope_penalty  # a sloped segment pays this over a flat one (one more parameter)
        t = np.arange(x.size, dtype=float)
        z = np.zeros(1)
        self.x, self.xx = np.concatenate((z, np.cumsum(x))), np.concatenate((z, np.cumsum(x * x)))
        self.t, self.tt = np.concatenate((z, np.cumsum(t))), np.concatenate((z, np.cumsum(t * t)))
        self.tx = np.concatenate((z, np.cumsum(t * x)))

    @overload
    def cost(self, s: int, t: int) -> np.float64: ...

    @overload
    def cost(self, s: Indices, t: int | Indices) -> Floats: ...

    @overload
    def cost(self, s: int | Indices, t: Indices) -> Floats: ...

    def cost(self, s: int | Indices, t: int | Indices) -> np.float64 | Floats:
        """Residual sum of squares of the least-squares line on x[s:t] (s may be an array)."""
        m = t - s
        sx, st = self.x[t] - self.x[s], self.t[t] - self.t[s]
        vx = self.xx[t] - self.xx[s] - sx * sx / m
        vt = self.tt[t] - self.tt[s] - st * st / m
        cov = self.tx[t] - self.tx[s] - st * sx / m
        line = vx - cov * cov / np.maximum(vt, 1e-300)  # segments have >= 2 points, so vt > 0
        rss: np.float64 | Floats = np.maximum(np.minimum(vx, line + self.slope_penalty), 0.0)
        return rss


def _segment(sums: _Sums, n: int, penalty: float, min_seg: int, jump: int = 1) -> list[int]:
    """Optimal partition into segments minimising cost + penalty per change (PELT; Killick et al. 2012).

    Long series are searched on a grid of ``jump`` points (as ruptures does), then each change is
    placed exactly within its grid cell: the same answer at a fraction of the cost.
    """
    grid = np.arange(0, n + 1, jump)
    if grid[-1] != n:
        grid = np.append(grid, n)
    f = np.full(n + 1, np.inf)
    f[0] = -penalty
    last = np.zeros(n + 1, dtype=int)
    cand = np.zeros(0, dtype=int)
    admitted = [0]
    for t in grid[1:]:
        t = int(t)
        while admitted and t - admitted[0] >= min_seg:
            cand = np.append(cand, admitted.pop(0))
        if cand.size:
            total = f[cand] + sums.cost(cand, t) + penalty
            j = int(np.argmin(total))
            f[t], last[t] = total[j], cand[j]
            # pruning (K = the slope penalty, which a split may pay twice): never optimal later
            cand = cand[total - penalty - sums.slope_penalty <= f[t]]
        if np.isfinite(f[t]) and (t == n or t >= min_seg):
            admitted.append(t)
    cps, t = [], n
    while t > 0:
        t = int(last[t])
        if t > 0:
            cps.append(t)
    cps = sorted(cps)
    if jump > 1:  # place each change exactly inside its grid cell, its neighbours fixed
        for i, c in enumerate(cps):
            a = cps[i - 1] if i else 0
            b = cps[i + 1] if i + 1 < len(cps) else n
            ts = np.arange(max(a + min_seg, c - jump + 1), min(b - min_seg, c + jump - 1) + 1)
            if ts.size:
                cost = sums.cost(np.full(ts.size, a), ts) + sums.cost(ts, np.full(ts.size, b))
                cps[i] = int(ts[int(np.argmin(cost))])
        i = 0
        while i + 1 < len(cps):  # two changes a cell apart can be one change the grid could not place
            a = cps[i - 1] if i else 0
            b = cps[i + 2] if i + 2 < len(cps) else n
            c1, c2 = cps[i], cps[i + 1]
            ts = np.arange(max(a + min_seg, c1 - jump), min(b - min_seg, c2 + jump) + 1)
            if c2 - c1 <= 2 * jump + min_seg and ts.size:
                one = sums.cost(np.full(ts.size, a), ts) + sums.cost(ts, np.full(ts.size, b))
                two = float(sums.cost(a, c1) + sums.cost(c1, c2) + sums.cost(c2, b)) + penalty
                if float(one.min()) <= two:
                    cps[i:i + 2] = [int(ts[int(np.argmin(one))])]
                    continue
            i += 1
    return cps


def _line(seg: Floats, t0: int) -> tuple[float, float]:
    """(slope, value at t0) of the least-squares line through seg, which starts at t0."""
    if seg.size < 3 or np.ptp(seg) == 0:
        return 0.0, float(seg.mean())
    t = np.arange(seg.size, dtype=float)
    slope, intercept = np.polyfit(t, seg, 1)
    return float(slope), float(intercept)


def _residuals(x: Floats, cps: list[int]) -> Floats:
    bounds = [0, *cps, x.size]
    out = []
    for a, b in itertools.pairwise(bounds):
        slope, level = _line(x[a:b], a)
        out.append(x[a:b] - (level + slope * np.arange(b - a)))
    return np.concatenate(out)


def long_run_factor(r: Floats, bandwidth: int | None = None) -> float:
    """Long-run variance of r over its variance (Newey & West 1987, Bartlett kernel), at least 1.

    Autocorrelated residuals (rates over overlapping windows, a wandering level) make neighbouring
    points far from independent; a change must be that much larger to count.
    """
    r = r - r.mean()
    g0 = float((r * r).mean())
    if g0 <= 0 or r.size < 4:
        return 1.0
    lags = bandwidth if bandwidth is not None else int(4 * (r.size / 100) ** (2 / 9))
    s = g0
    for k in range(1, min(lags, r.size - 1) + 1):
        s += 2 * (1 - k / (lags + 1)) * float((r[k:] * r[:-k]).mean())
    return max(s / g0, 1.0)


def _effect(x: Floats, a: int, t: int, b: int) -> tuple[float, float, float, float, float]:
    """(relative effect, level jump, mean before, mean after, slope change) of the change at t."""
    (s1, l1), (s2, l2) = _line(x[a:t], a), _line(x[t:b], t)
    before, after = float(x[a:t].mean()), float(x[t:b].mean())
    jump = (l2 - (l1 + s1 * (t - a)))
    level = min(abs(jump), abs(after - before))
    drift = abs(s2 - s1) * min(t - a, b - t)
    ref = abs(before)
    rel = max(level, drift) / ref if ref > 0 else float("inf")
    return rel, jump, before, after, s2 - s1


class _Fit:
    """One series segmented: scaled by the spread around one line through it, penalised per change
    (``penalty``, in units of that variance, times the long-run variance factor of a finer fit's
    residuals), at most ``max_changes`` changes (the penalty grows until so)."""

    def __init__(self, x: Floats, min_seg: int, penalty: float, max_changes: int):
        self.x = x
        n = x.size
        big = max(float(np.abs(x).max()), 1.0)
        self.scale = float(np.std(_residuals(x, []))) if np.ptp(x) > 0 else 0.0
        if self.scale <= 1e-12 * big:
            self.scale = 1e-9 * big  # exact data: any real change is certain
        self.z = z = (x - x.mean()) / self.scale
        ln = float(np.log(n))
        self.sums = _Sums(z, slope_penalty=ln)
        jump = max(1, n // 250)
        fine = _segment(self.sums, n, ln, min_seg, jump)
        r_fine = _residuals(z, fine)
        if float(np.mean(r_fine ** 2)) < 1e-18:  # exact piecewise-linear data: every point counts
            self.factor, pen, jump = 1.0, 1e-9, 1
        else:
            self.factor = long_run_factor(r_fine)
            pen = penalty * self.factor
        self.sums.slope_penalty = ln * self.factor
        cps = _segment(self.sums, n, pen, min_seg, jump)
        while len(cps) > max_changes:
            pen *= 1.5
            cps = _segment(self.sums, n, pen, min_seg, jump)
        self.cps = cps

    def bic(self, noise: float, ln: float) -> float:
        """Residual sum of squares in units of ``noise``², plus ln n per parameter (3 per change, one per slope)."""
        bounds = [0, *self.cps, self.x.size]
        sse = 0.0
        slopes = 0
        for a, b in itertools.pairwise(bounds):
            seg = self.x[a:b]
            flat = float(((seg - seg.mean()) ** 2).sum())
            slope, level = _line(seg, a)
            line = float(((seg - level - slope * np.arange(b - a)) ** 2).sum())
            if line + ln * noise * noise < flat:
                sse, slopes = sse + line, slopes + 1
            else:
                sse += flat
        return sse / (noise * noise) + (3 * len(self.cps) + slopes) * ln


def change_points(values: npt.ArrayLike, alpha: float = 0.01, min_seg: int = MIN_SEGMENT, max_changes: int = 20,
                  counter: bool = False, min_effect: float = 0.05, period: int | None = None,
                  penalty: float = 3.0) -> list[Change]:
    """Level shifts and trend changes in a series: optimal piecewise-linear segmentation.

    1. A seasonal cycle is removed: ``period`` points per cycle, or found by :func:`find_period`
       when ``period`` is None (0 turns it off).
    2. Isolated spikes (at most 3 points) are replaced by the rolling median (Hampel filter).
    3. The series is cut into straight-line segments (a level and a slope each) by minimising the
       residual sum of squares plus ``penalty``·ln n·σ²·f per change (PELT), where σ² is the variance
       around one line through the whole series and f the long-run variance factor of the residuals
       of a finer segmentation: the BIC-like penalty, scaled for autocorrelated points. A trend is
       one segment, not a staircase; a bend in a trend is one change (a drift).
    4. Changes that move the level (or, for a drift, the slope times the shorter side) by less than
       ``min_effect`` relative to the level before are dropped, weakest first, as are changes whose
       p-value (χ² of the cost saved against the long-run variance, Šidák-corrected for the positions
       searched) is not below ``alpha``. At most ``max_changes`` are kept (the penalty grows until so).

    Each :class:`Change` is a ``step`` (the level jumps) or a ``drift`` (the slope changes: ``rate``
    is the new slope per point).
    """
    x = clean(values, counter=counter, min_points=2 * min_seg)
    n = x.size
    ln = float(np.log(n))
    fit = _Fit(_hampel(x), min_seg, penalty * ln, max_changes)
    if period is None:  # a cycle found in the data must pay for itself: p - 1 more parameters (BIC)
        found = find_period(x)
        if found and n >= 2 * found + 1:
            cyclic = _Fit(_hampel(deseasonalize(x, found)), min_seg, penalty * ln, max_changes)
            noise = max(_spread(np.diff(x)) / np.sqrt(2), 1e-12 * max(float(np.abs(x).max()), 1.0))
            if cyclic.bic(noise, ln) + (found - 1) * ln < fit.bic(noise, ln):
                fit = cyclic
    elif period >= 2 and n >= 2 * period + 1:
        fit = _Fit(_hampel(deseasonalize(x, period)), min_seg, penalty * ln, max_changes)
    x, sums, cps = fit.x, fit.sums, list(fit.cps)
    if not cps:
        return []
    resid_var = max(float(np.mean(_residuals(fit.z, cps) ** 2)) * fit.factor, 1e-18)
    while True:
        bounds = [0, *cps, n]
        scored = []
        for j in range(1, len(bounds) - 1):
            a, t, b = bounds[j - 1], bounds[j], bounds[j + 1]
            rel = _effect(x, a, t, b)[0]
            saved = float(sums.cost(a, b) - sums.cost(a, t) - sums.cost(t, b))
            p = float(np.exp(-saved / resid_var / 2))  # χ² with 2 degrees of freedom: level and slope
            p = float(-np.expm1((b - a) * np.log1p(-p))) if p < 1 else 1.0  # Šidák over the positions
            if min(t - a, b - t) <= 3 * min_seg and p < alpha and np.ptp(x[a:b]) > 0:
                # a short side can be carried by one wild point: the ranks must agree (Mann-Whitney U)
                from scipy.stats import mannwhitneyu  # imported when needed: scipy.stats costs 0.4 s to load

                p = max(p, float(mannwhitneyu(x[a:t], x[t:b], alternative="two-sided").pvalue))
            scored.append((rel >= min_effect and p < alpha, rel if rel < min_effect else 1 / max(p, 1e-300), p))
        weak = [j for j, (ok, _, _) in enumerate(scored) if not ok]
        if not weak:
            break
        del cps[min(weak, key=lambda j: scored[j][1])]
    out = []
    bounds = [0, *cps, n]
    for j, (_ok, _, p) in enumerate(scored):
        a, t, b = bounds[j], bounds[j + 1], bounds[j + 2]
        rel, jump, before, after, dslope = _effect(x, a, t, b)
        step = abs(jump) >= abs(dslope) * min(t - a, b - t) / 2
        if step:
            out.append(Change(t, before, after, _ci(x[a:t]), _ci(x[t:b]), p, "change_point", "step", 0.0))
        else:
            rate = _line(x[t:b], t)[0]
            out.append(Change(t, before, after, _ci(x[a:t]), _ci(x[t:b]), p, "change_point", "drift", rate))
    return out


def fdr(p_values: list[float], q: float = 0.05) -> tuple[list[bool], list[float]]:
    """Benjamini–Hochberg (1995) across one run: (reject, adjusted p-values).

    The step-up rule in numpy, equal to statsmodels' ``multipletests(method="fdr_bh")``, whose import
    alone (0.7 s) would be most of ``flowscope detect``'s start-up.
    """
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return [], []
    order = np.argsort(p, kind="stable")
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.empty(p.size)
    adjusted[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return [bool(a <= q) for a in adjusted], [float(a) for a in adjusted]
