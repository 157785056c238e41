"""One detection run over many series: detectors per series, BH across all, findings out (pure).

    findings, skipped = analyze(frame)   # frame: columns time, series, value
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from exporter import conventions as c

from .detectors import Change, NotAnalysed, change_points, fdr

FAILED = "|".join(c.FAILED_STATUSES)


@dataclass(frozen=True)
class SeriesQuery:
    """A PromQL query whose every result series is analysed; its labels name the series."""

    name: str
    promql: str
    higher_is_better: bool = False
    unit: str = ""
    counter: bool = False  # a raw counter: a decrease is a reset, reported as "not analysed"
    min_effect: float | None = None  # smallest relative change worth reporting; None: the run's default


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


@dataclass(frozen=True)
class Settings:
    """What counts as a finding; the CLI flags and the ``FLOWSCOPE_DETECT_*`` settings set these."""

    q: float = 0.05  # false discovery rate across all series of one run (Benjamini-Hochberg)
    alpha: float = 0.01  # a change's own significance level, before FDR
    min_effect: float = 0.05  # smallest relative change reported (per series: SeriesQuery.min_effect, CSV column)
    min_segment: int = 5  # points on each side of a change
    max_changes: int = 20  # per series
    period: int | None = None  # points per seasonal cycle; None: found automatically; 0: no seasonal removal

    def check(self) -> Settings:
        for name, ok, want in (("q", 0 < self.q < 1, "between 0 and 1"),
                               ("alpha", 0 < self.alpha < 1, "between 0 and 1"),
                               ("min_effect", 0 <= self.min_effect < 100, "between 0 and 100 (a ratio: 0.05 = 5 %)"),
                               ("min_segment", 2 <= self.min_segment <= 10_000, "between 2 and 10000"),
                               ("max_changes", 1 <= self.max_changes <= 1000, "between 1 and 1000"),
                               ("period", self.period is None or 0 <= self.period <= 1_000_000,
                                "0 (none) or a number of points")):
            if not ok:
                raise ValueError(f"{name} must be {want}, got {getattr(self, name)!r}")
        return self


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
    labels: dict[str, str] = field(default_factory=dict)
    index: int = -1  # position in the series' finite points
    kind: str = "step"  # step: the level moved; drift: the trend changed (rate_per_s is the new one)
    rate_per_s: float = 0.0


@dataclass
class Skipped:
    series: str
    reason: str


def _iso(t: float | np.integer | np.floating | np.datetime64 | str | datetime) -> str:
    if isinstance(t, (int, float, np.integer, np.floating)):
        return str(int(t)) if float(t).is_integer() else str(t)  # --index: a position, not a time
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        ts = ts.tz_localize(UTC)
    return ts.isoformat().replace("+00:00", "Z")


def _per_second(rate_per_point: float, times: npt.NDArray[np.generic]) -> float:
    if times.size < 2 or not np.issubdtype(times.dtype, np.datetime64):
        return rate_per_point
    step = float(np.median(np.diff(times).astype("timedelta64[ns]").astype(np.int64))) / 1e9
    return rate_per_point / step if step > 0 else rate_per_point


def analyze(frame: pd.DataFrame, higher_is_better: dict[str, bool] | None = None,
            labels: dict[str, dict[str, str]] | None = None, counters: set[str] | None = None,
            settings: Settings | None = None, min_effect: dict[str, float] | None = None,
            ) -> tuple[list[Finding], list[Skipped]]:
    """Change points (steps and drifts) per series; Benjamini–Hochberg over all of them.

    ``settings`` say what counts as a finding (default :class:`Settings`); ``min_effect`` maps a series
    to its own smallest relative change.
    """
    st = settings or Settings()
    higher_is_better = higher_is_better or {}
    labels = labels or {}
    min_effect = min_effect or {}
    missing = {"time", "series", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"missing column(s) {sorted(missing)}; expected time, series, value")
    candidates: list[tuple[str, Change, npt.NDArray[np.generic]]] = []
    skipped: list[Skipped] = []
    for name, g in frame.groupby("series", sort=True):
        g = g.sort_values("time")
        values = pd.to_numeric(g["value"], errors="coerce").to_numpy(dtype=float)
        times = g["time"].to_numpy()
        finite = np.isfinite(values)
        try:
            found = change_points(values, alpha=st.alpha, min_seg=st.min_segment, max_changes=st.max_changes,
                                  counter=str(name) in (counters or ()), period=st.period,
                                  min_effect=min_effect.get(str(name), st.min_effect))
        except NotAnalysed as e:
            skipped.append(Skipped(str(name), str(e)))
            continue
        candidates += [(str(name), ch, times[finite]) for ch in found]
    reject, adjusted = fdr([ch.p_value for _, ch, _ in candidates], st.q)
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
            labels=labels.get(name, {}), index=ch.index, kind=ch.kind, rate_per_s=_per_second(ch.rate, times)))
    findings.sort(key=lambda f: (f.direction != "regression", -abs(f.relative_change)))
    return findings, skipped


def as_dicts(findings: list[Finding], skipped: list[Skipped]) -> dict[str, Any]:
    return {"generated_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "findings": [asdict(f) for f in findings], "not_analysed": [asdict(s) for s in skipped]}


def table(findings: list[Finding], skipped: list[Skipped], verbose: bool = False) -> str:
    """A readable terminal report; the series not analysed in one line (each with its reason if ``verbose``)."""
    lines = []
    if findings:
        lines.append(f"{'direction':<12} {'change':>8} {'before → after (95% CI)':<44} {'p adj':>9} "
                     f"{'kind':<24} {'time':<21} series")
        for f in findings:
            ba = (f"{f.before:.4g} [{f.ci_before[0]:.3g}, {f.ci_before[1]:.3g}] → "
                  f"{f.after:.4g} [{f.ci_after[0]:.3g}, {f.ci_after[1]:.3g}]")
            kind = f"drift {f.rate_per_s:+.3g}/s" if f.kind == "drift" else f.kind
            lines.append(f"{f.direction:<12} {f.relative_change:>+8.1%} {ba:<44} {f.p_adjusted:>9.2e} "
                         f"{kind:<24} {f.time[:19]:<21} {f.series}")
    else:
        lines.append("no regressions or improvements found")
    if skipped and verbose:
        lines += [f"not analysed: {s.series}: {s.reason}" for s in skipped]
    elif skipped:
        reasons: dict[str, int] = {}
        for s in skipped:
            key = s.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        summary = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
        lines.append(f"not analysed: {len(skipped)} series ({summary}); --verbose lists them")
    return "\n".join(lines)


def plot(frame: pd.DataFrame, findings: list[Finding], path: str) -> None:
    """One panel per finding: the series, the change point, the before/after levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(findings))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    panels: list[Finding | None] = [*findings] or [None]
    for ax, f in zip(axes[:, 0], panels):
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
