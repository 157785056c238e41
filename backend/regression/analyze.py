"""One detection run over many series: detectors per series, BH across all, findings out (pure).

    findings, skipped = analyze(frame)   # frame: columns time, series, value
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from exporter import conventions as c

from .detectors import Change, NotAnalysed, change_points, clean, decompose, fdr, seasonal_anomaly, window_comparison

FAILED = "|".join(c.FAILED_STATUSES)


@dataclass(frozen=True)
class SeriesQuery:
    """A PromQL query whose every result series is analysed; its labels name the series."""

    name: str
    promql: str
    higher_is_better: bool = False
    unit: str = ""
    counter: bool = False  # a raw counter: a decrease is a reset, reported as "not analysed"


DEFAULT_QUERIES = (
    SeriesQuery("p95 step latency",
                f"histogram_quantile(0.95, sum by ({c.L_WORKFLOW}, {c.L_LAYER}, {c.L_COMPONENT}, le) "
                f"(rate({c.STEP_DURATION_SECONDS}_bucket[5m])))", unit="s"),
    SeriesQuery("error ratio",
                f"sum by ({c.L_WORKFLOW}) (rate({c.WORKFLOW_RUNS_TOTAL}{{status=~\"{FAILED}\"}}[5m])) / "
                f"sum by ({c.L_WORKFLOW}) (rate({c.WORKFLOW_RUNS_TOTAL}[5m]))"),
    SeriesQuery("cache hit rate", f"avg by ({c.L_LAYER}, {c.L_COMPONENT}) ({c.CUSTOM_HIT_RATE})",
                higher_is_better=True),
)


@dataclass
class Finding:
    series: str
    time: str
    before: float
    after: float
    ci_before: tuple[float, float]
    ci_after: tuple[float, float]
    relative_change: float
    p_value: float
    p_adjusted: float
    detector: str
    direction: str  # regression | improvement
    labels: dict = field(default_factory=dict)


@dataclass
class Skipped:
    series: str
    reason: str


def _iso(t) -> str:
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        ts = ts.tz_localize(timezone.utc)
    return ts.isoformat().replace("+00:00", "Z")


def analyze(frame: pd.DataFrame, higher_is_better: dict[str, bool] | None = None, q: float = 0.05,
            recent_fraction: float = 0.1, labels: dict[str, dict] | None = None,
            period: int | None = None, counters: set[str] | None = None) -> tuple[list[Finding], list[Skipped]]:
    """Change points and a recent-window comparison per series; Benjamini–Hochberg over all candidates.

    With ``period`` (points per season, e.g. one day), each series long enough for two
    seasons is deseasonalized first, and an STL residual anomaly check runs on the
    recent window too, so daily cycles are never reported as changes.
    """
    higher_is_better = higher_is_better or {}
    labels = labels or {}
    missing = {"time", "series", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"missing column(s) {sorted(missing)}; expected time, series, value")
    candidates: list[tuple[str, Change, np.ndarray]] = []
    skipped: list[Skipped] = []
    for name, g in frame.groupby("series", sort=True):
        g = g.sort_values("time")
        values = pd.to_numeric(g["value"], errors="coerce").to_numpy(dtype=float)
        times = g["time"].to_numpy()
        finite = np.isfinite(values)
        try:
            x = values
            recent = max(10, int(finite.sum() * recent_fraction))
            seasonal = None
            if period and finite.sum() >= 2 * period + recent:
                x = clean(values, min_points=2 * period + recent)
                season, resid = decompose(x, period)  # one STL fit: the anomaly check and the cycle removal
                seasonal = seasonal_anomaly(x, period=period, recent=recent, resid=resid)
                x = x - season
            found = change_points(x, counter=str(name) in (counters or ()))
            w = window_comparison(x, recent=recent)
            if w is not None and not found:  # the window catches drifts no change point explains
                found.append(w)
            if seasonal is not None and not found:
                found.append(seasonal)
        except NotAnalysed as e:
            skipped.append(Skipped(str(name), str(e)))
            continue
        t_finite = times[finite]
        candidates += [(str(name), ch, t_finite) for ch in found]
    reject, adjusted = fdr([ch.p_value for _, ch, _ in candidates], q)
    findings = []
    for (name, ch, times), keep, p_adj in zip(candidates, reject, adjusted):
        if not keep:
            continue
        up = ch.after > ch.before
        better = higher_is_better.get(name, False)
        findings.append(Finding(
            series=name, time=_iso(times[min(ch.index, len(times) - 1)]), before=ch.before, after=ch.after,
            ci_before=ch.ci_before, ci_after=ch.ci_after, relative_change=ch.relative_change, p_value=ch.p_value,
            p_adjusted=p_adj, detector=ch.detector, direction="improvement" if up == better else "regression",
            labels=labels.get(name, {})))
    findings.sort(key=lambda f: (f.direction != "regression", -abs(f.relative_change)))
    return findings, skipped


def as_dicts(findings: list[Finding], skipped: list[Skipped]) -> dict:
    return {"generated_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "findings": [asdict(f) for f in findings], "not_analysed": [asdict(s) for s in skipped]}


def table(findings: list[Finding], skipped: list[Skipped]) -> str:
    """A readable terminal report."""
    lines = []
    if findings:
        lines.append(f"{'direction':<12} {'change':>8} {'before → after (95% CI)':<44} {'p adj':>9} "
                     f"{'detector':<13} {'time':<21} series")
        for f in findings:
            ba = (f"{f.before:.4g} [{f.ci_before[0]:.3g}, {f.ci_before[1]:.3g}] → "
                  f"{f.after:.4g} [{f.ci_after[0]:.3g}, {f.ci_after[1]:.3g}]")
            lines.append(f"{f.direction:<12} {f.relative_change:>+8.1%} {ba:<44} {f.p_adjusted:>9.2e} "
                         f"{f.detector:<13} {f.time[:19]:<21} {f.series}")
    else:
        lines.append("no regressions or improvements found")
    for s in skipped:
        lines.append(f"not analysed: {s.series}: {s.reason}")
    return "\n".join(lines)


def plot(frame: pd.DataFrame, findings: list[Finding], path: str) -> None:
    """One panel per finding: the series, the change point, the before/after levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(findings))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    for ax, f in zip(axes[:, 0], findings or [None]):
        if f is None:
            ax.text(0.5, 0.5, "no findings", ha="center", va="center")
            ax.set_axis_off()
            continue
        g = frame[frame["series"] == f.series].sort_values("time")
        t = pd.to_datetime(g["time"], utc=True)
        ax.plot(t, g["value"], lw=0.8, color="#555")
        at = pd.Timestamp(f.time)
        ax.axvline(at, color="red", ls="--", lw=1)
        ax.hlines(f.before, t.iloc[0], at, colors="tab:blue", lw=2, label=f"before {f.before:.4g}")
        ax.hlines(f.after, at, t.iloc[-1], colors="tab:orange", lw=2, label=f"after {f.after:.4g}")
        ax.set_title(f"{f.direction}: {f.series} {f.relative_change:+.1%} ({f.detector}, p_adj {f.p_adjusted:.1e})",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
