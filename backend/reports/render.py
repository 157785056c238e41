"""A report (:func:`backend.reports.build.build_report`) as one self-contained HTML page or as Markdown (pure).

    html = render_html(report)   # inline CSS and SVG, a CSP that lets nothing load: attach it, open it offline
    md = render_markdown(report)  # tables and links, for a ticket; the same report gives the same text

Both say, per section, when the window had no data for it instead of drawing an empty plot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from . import svg

_ENV = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def pct(x: float | None, digits: int = 1) -> str:
    """``0.995`` → ``99.5 %``; None (an infinite share: bad runs with no budget) → ``∞``."""
    if x is None or not math.isfinite(x):
        return "∞"
    return f"{x * 100:.{digits}f} %"


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.4g}" if abs(x) < 1e6 else f"{x:.3e}"


def _css(word: str | None) -> str:
    return (word or "").lower().replace(" ", "-")


def _points(values: list[float | None]) -> list[tuple[float, float]]:
    return [(float(i), float(v)) for i, v in enumerate(values) if v is not None]


def _bin_label(seconds: int) -> str:
    for unit, n in (("week", 7 * 86400), ("day", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % n == 0 and seconds >= n:
            k = seconds // n
            return f"1 {unit.rstrip('s')}" if k == 1 else f"{k} {unit if unit.endswith('s') else unit + 's'}"
    return f"{seconds} s"


def _counts(r: dict[str, Any]) -> dict[str, str]:
    s = r["sections"]
    breached = sum(x["status"] == "breached" for x in s["slo"]["rows"])
    ep = s["endpoints"]
    return {"slo": f"{len(s['slo']['rows'])} objective(s), {breached} breached",
            "regressions": str(s["regressions"]["regressions"]), "errors": str(s["errors"]["groups_in_window"]),
            "steps": str(len(s["steps"]["rows"])), "alerts": f"{s['alerts']['fired']} fired",
            "endpoints": (str(len(ep["never_called"]) + len(ep["undocumented"])) if ep["available"] else "n/a")}


_ENV.filters.update(css=_css, fmt=fmt)
_ENV.globals.update(pct=pct, svg=svg, points=_points)


def render_html(r: dict[str, Any]) -> str:
    return _ENV.get_template("report.html").render(r=r, counts=_counts(r), bin_label=_bin_label(r["bin_seconds"]))


# -- Markdown ----------------------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    text = "" if v is None else str(v)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _plain(v: Any) -> str:
    """A table cell's text: no HTML (a ticket renders inline HTML: an ``<img>`` would load), links or code."""
    out = _cell(v)
    for ch in "`[]<>":
        out = out.replace(ch, "\\" + ch)
    return out


def _text(v: Any) -> str:
    """Free text in a Markdown paragraph: no line breaks, and characters that would start markup escaped."""
    out = _plain(v)
    for ch in "*_#":
        out = out.replace(ch, "\\" + ch)
    return out


def _code(v: Any) -> str:
    text = _cell(v).replace("`", "'")
    return f"`{text}`" if text else ""


def _href(url: str) -> str:
    """A link target that stays one Markdown link destination: characters that would close it or start markup
    (``)``, spaces, ``<``, …) are percent-encoded, as a stored alert's ``generator_url`` is client data."""
    return "".join(f"%{ord(ch):02X}" if ch in " ()[]<>`\\\"'" or ord(ch) < 33 or ord(ch) == 127 else ch
                   for ch in url)


def _links(links: dict[str, str]) -> str:
    return " · ".join(f"[{name}]({_href(href)})" for name, href in links.items())


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_plain(c) if not isinstance(c, _Raw) else c.text for c in row) + " |" for row in rows]
    return out


class _Raw:
    """A cell already in Markdown (links, code): not escaped again."""

    def __init__(self, text: str):
        self.text = text.replace("\n", " ")


def _trend(x: dict[str, Any]) -> str:
    h = x["half_over_half"]
    return str(x["trend"]) + (f" {h * 100:+.0f} %" if h is not None else "")


def render_markdown(r: dict[str, Any]) -> str:
    s = r["sections"]
    wf = f", workflow **{_text(r['workflow'])}**" if r["workflow"] else ""
    out = [f"# {_text(r['title'])}", "", f"Window {r['since']} to {r['until']}{wf}.", ""]
    counts = _counts(r)
    out += _table(["section", "in the window"], [[s[k]["title"], counts[k]] for k in s]) + [""]

    slo = s["slo"]
    out += [f"## {slo['title']}", "", f"_{_text(slo['method'])}._" + (f" {_text(slo['note'])}" if slo["note"] else ""),
            ""]
    if slo["empty"]:
        out += [f"_{_text(slo['empty'])}_", ""]
    else:
        out += _table(["workflow", "objective", "type", "runs", "bad", "good", "budget spent", "status", "links"],
                      [[x["workflow"], pct(x["objective"], 2), x["type"] + (f" ≤ {fmt(x['threshold_ms'])} ms"
                                                                            if x["threshold_ms"] else ""),
                        x["runs"], x["bad"], pct(x["good_ratio"], 3), pct(x["budget_consumed"]), x["status"],
                        _Raw(_links(x["links"]))] for x in slo["rows"]]) + [""]

    reg = s["regressions"]
    out += [f"## {reg['title']}", ""]
    if reg["empty"]:
        out += [f"_{_text(reg['empty'])}_", ""]
    else:
        out += [f"{reg['regressions']} regression(s), {reg['improvements']} improvement(s).", ""]
        out += _table(["series", "direction", "change at", "before", "after", "change", "detector", "links"],
                      [[_Raw(_code(f["series"])), f["direction"], f["change_time"], fmt(f["before"]), fmt(f["after"]),
                        f"{(f['relative_change'] or 0) * 100:+.1f} %", f["detector"], _Raw(_links(f["links"]))]
                       for f in reg["rows"]]) + [""]

    err = s["errors"]
    out += [f"## {err['title']}", ""]
    if err["empty"]:
        out += [f"_{_text(err['empty'])}_", ""]
    else:
        out += _table(["error", "count", "runs", "trend", "status", "workflows", "links"],
                      [[_Raw(f"{_text(g['error_type'])}: {_code(g['template'][:200])}"), g["count"], g["runs"],
                        g["trend"], g["status"], ", ".join(g["workflows"]), _Raw(_links(g["links"]))]
                       for g in err["rows"]]) + [""]
        for g in err["rows"]:
            att = g["attribution"]
            if not (att or g["suggestions"]):
                continue
            out += [f"### {_text(g['error_type'])} ({g['fingerprint']})", ""]
            if att:
                link = f" ([details]({att['link']}))" if att.get("link") else ""
                out.append(f"Attribution in {_text(att['workflow'])}{link}:")
                out += [f"- {_code(f['dimension'] + ' = ' + f['value'])}: {pct(f['share_of_selection'], 0)} of the "
                        f"runs it hit, {pct(f['share_of_baseline'], 0)} of the others; runs "
                        + ", ".join(f"[{_text(x['id'])}]({x['link']})" for x in f["sample_runs"])
                        for f in att["findings"]] or [f"- {_text(att['note'])}"]
            if g["suggestions"]:
                out += ["", "Suggestions:"] + [f"- {_text(x)}" for x in g["suggestions"]]
            out.append("")

    st = s["steps"]
    out += [f"## {st['title']}", ""]
    if st["empty"]:
        out += [f"_{_text(st['empty'])}_", ""]
    else:
        out += _table(["workflow", "layer", "component", "operation", "steps", "p50 ms", "p95 ms", "trend",
                       "slowest run", "links"],
                      [[x["workflow"], x["layer"], x["component"], _Raw(_code(x["operation"])), x["count"],
                        fmt(x["p50_ms"]), fmt(x["p95_ms"]),
                        _trend(x), _Raw(f"[{_text(x['slowest_run']['id'])}]({x['slowest_run']['link']})"),
                        _Raw(_links(x["links"]))]
                       for x in st["rows"]]) + [""]

    al = s["alerts"]
    out += [f"## {al['title']}", ""]
    if al["empty"]:
        out += [f"_{_text(al['empty'])}_", ""]
    else:
        out += [f"{al['fired']} fired and {al['resolved']} resolved in the window; {al['still_firing']} still firing.",
                ""]
        out += _table(["alert", "severity", "workflow", "status", "started", "ended", "summary", "links"],
                      [[a["alertname"], a["severity"], a["workflow"], a["status"], a["starts_at"], a["ends_at"],
                        a["summary"], _Raw(_links(a["links"]))] for a in al["rows"]]) + [""]

    ep = s["endpoints"]
    out += [f"## {ep['title']}", ""]
    if ep["empty"]:
        out += [f"_{_text(ep['empty'])}_", ""]
    if ep["never_called"]:
        out += ["### Documented, never called in the window", ""] + _table(
            ["service", "method", "path", "view", "links"],
            [[e["service"], e["method"], _Raw(_code(e["path"])), e["view"], _Raw(_links(e["links"]))]
             for e in ep["never_called"]]) + [""]
    if ep["undocumented"]:
        out += ["### Called, not documented", ""] + _table(
            ["service", "method", "path", "calls", "errors", "p95 ms", "workflows", "links"],
            [[e["service"], e["method"], _Raw(_code(e["path"])), e["calls"], e["errors"], fmt(e["p95_ms"]),
              ", ".join(e["workflows"]), _Raw(_links(e["links"]))] for e in ep["undocumented"]]) + [""]
    if ep["services_without_inventory"]:
        out += [f"Services with HTTP traffic and no inventory: {_text(', '.join(ep['services_without_inventory']))}.",
                ""]
    return "\n".join(out).rstrip("\n") + "\n"
