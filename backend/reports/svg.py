"""Small inline SVG charts for the report (pure): no script, no font, no external reference.

Each function returns one ``<svg>`` element as text, sized by its ``viewBox`` so it scales with the page, with
every label escaped. A chart is only drawn from data: callers say "no data" instead of calling these with none.

    bars([3, 0, 5], ["05-01", "05-02", "05-03"], "errors per day")
    line([(t0, 120.0), (t1, 180.0)], "p95 ms per day", t_labels=("05-01", "05-07"))
    step(t0, t1, change_t, before=120.0, after=180.0, title="p95 ms", t_labels=("05-01", "05-07", "05-04"))
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

W, H = 360, 96  # viewBox of every chart
SCALE = 1.35  # drawn size over viewBox size
PAD_L, PAD_R, PAD_T, PAD_B = 44, 8, 16, 16
INK, BAD, GOOD, GRID = "#3b6ea5", "#c0392b", "#2e8b57", "#d0d7de"


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def _frame(title: str, lo: float, hi: float, x_labels: tuple[str, str], body: str) -> str:
    x0, x1, y0, y1 = PAD_L, W - PAD_R, H - PAD_B, PAD_T
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{round(W * SCALE)}" '
            f'height="{round(H * SCALE)}" '
            f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="9">'
            f'<text x="{x0}" y="10" fill="#333">{escape(title)}</text>'
            f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="{GRID}"/>'
            f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="{GRID}" stroke-dasharray="2,2"/>'
            f'<text x="{x0 - 3}" y="{y1 + 3}" text-anchor="end" fill="#555">{escape(_fmt(hi))}</text>'
            f'<text x="{x0 - 3}" y="{y0}" text-anchor="end" fill="#555">{escape(_fmt(lo))}</text>'
            f'<text x="{x0}" y="{H - 3}" fill="#555">{escape(x_labels[0])}</text>'
            f'<text x="{x1}" y="{H - 3}" text-anchor="end" fill="#555">{escape(x_labels[1])}</text>'
            f"{body}</svg>")


def _y(v: float, lo: float, hi: float) -> float:
    span = hi - lo or 1.0
    return round(H - PAD_B - (v - lo) / span * (H - PAD_B - PAD_T), 2)


def bars(values: Sequence[float], labels: Sequence[str], title: str, color: str = BAD) -> str:
    """One bar per bin (``labels`` name the bins: the first and last are drawn, all are tooltips)."""
    hi = max(max(values, default=0.0), 1e-12)
    n = max(len(values), 1)
    slot = (W - PAD_L - PAD_R) / n
    out = []
    for i, (v, lab) in enumerate(zip(values, labels, strict=True)):
        y = _y(v, 0.0, hi)
        out.append(f'<rect x="{round(PAD_L + i * slot + 1, 2)}" y="{y}" width="{round(max(slot - 2, 1), 2)}" '
                   f'height="{round(H - PAD_B - y, 2)}" fill="{color}"><title>{escape(lab)}: '
                   f"{escape(_fmt(v))}</title></rect>")
    ends = (labels[0], labels[-1]) if labels else ("", "")
    return _frame(title, 0.0, hi, ends, "".join(out))


def line(points: Sequence[tuple[float, float]], title: str, t_labels: tuple[str, str],
         t_range: tuple[float, float] | None = None, color: str = INK) -> str:
    """A polyline of (t, value) points, t on a linear axis over ``t_range`` (default: the points' own)."""
    ts = [t for t, _ in points]
    vs = [v for _, v in points]
    t0, t1 = t_range or (min(ts), max(ts))
    lo, hi = min(min(vs), 0.0), max(vs)
    dt = (t1 - t0) or 1.0

    def x(t: float) -> float:
        return round(PAD_L + (t - t0) / dt * (W - PAD_L - PAD_R), 2)

    pts = " ".join(f"{x(t)},{_y(v, lo, hi)}" for t, v in points)
    dots = "".join(f'<circle cx="{x(t)}" cy="{_y(v, lo, hi)}" r="2" fill="{color}"><title>{escape(_fmt(v))}'
                   f"</title></circle>" for t, v in points)
    return _frame(title, lo, hi, t_labels, f'<polyline points="{pts}" fill="none" stroke="{color}" '
                                           f'stroke-width="1.5"/>{dots}')


def step(t0: float, t1: float, change_t: float, before: float, after: float, title: str,
         t_labels: tuple[str, str, str], worse: bool = True) -> str:
    """A level shift: ``before`` until ``change_t``, ``after`` from it, over [t0, t1], the change marked."""
    lo, hi = min(before, after, 0.0), max(before, after)
    dt = (t1 - t0) or 1.0
    xc = round(PAD_L + min(max((change_t - t0) / dt, 0.0), 1.0) * (W - PAD_L - PAD_R), 2)
    yb, ya = _y(before, lo, hi), _y(after, lo, hi)
    color = BAD if worse else GOOD
    body = (f'<polyline points="{PAD_L},{yb} {xc},{yb} {xc},{ya} {W - PAD_R},{ya}" fill="none" stroke="{color}" '
            f'stroke-width="2"/>'
            f'<line x1="{xc}" y1="{PAD_T}" x2="{xc}" y2="{H - PAD_B}" stroke="#888" stroke-dasharray="3,2"/>'
            f'<text x="{xc}" y="{PAD_T - 6}" text-anchor="middle" fill="#555">'
            f"{escape(t_labels[2])}</text>")
    return _frame(title, lo, hi, (t_labels[0], t_labels[1]), body)


def budget(consumed: float, title: str) -> str:
    """A horizontal bar: the share of the error budget spent (over 100 % drawn full, in red)."""
    width = W - PAD_L - PAD_R
    share = min(max(consumed, 0.0), 1.0)
    color = GOOD if consumed < 0.5 else "#d68910" if consumed < 1.0 else BAD
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} 30" width="{round(W * SCALE)}" '
            f'height="{round(30 * SCALE)}" role="img" '
            f'aria-label="{escape(title)}" font-family="sans-serif" font-size="9">'
            f'<rect x="{PAD_L}" y="4" width="{width}" height="12" fill="#eef1f4" stroke="{GRID}"/>'
            f'<rect x="{PAD_L}" y="4" width="{round(width * share, 2)}" height="12" fill="{color}"/>'
            f'<text x="{PAD_L}" y="27" fill="#333">{escape(title)}</text></svg>')
