"""The view models of the pages a person starts from: the home page, the runs list and an error group's page.

Plain functions of the run store that return what the templates render; :mod:`backend.runs.pages` parses
the request, calls them and renders::

    since = window_start("1h", now_ns)                  # 400 for an unknown window
    render_template("home.html", error=None, **home(store, "1h", since, now_ns))
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from exporter import conventions as c
from exporter.store import RunStore, RunSummary
from exporter.web import HttpError

from ..analysis.attribution import Selection
from ..analysis.groups import status_of, suggestions
from ..analysis.service import group_json, run_attribution
from ..analysis.trend import trend
from ..query import iso_ns

#: The windows a person picks from, in seconds ("all" is no lower bound).
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "all": None}
PAGE_SIZE = 50
RUN_STATUSES = (*c.STATUSES, "failed")  # "failed" = error or timeout


def window_start(window: str, now_ns: int) -> int | None:
    """The start of ``window`` (a key of :data:`WINDOWS`) before ``now_ns``; None for "all"; 400 if unknown."""
    if window not in WINDOWS:
        raise HttpError(400, "invalid_query", f"window must be one of {', '.join(WINDOWS)}", "window")
    s = WINDOWS[window]
    return None if s is None else now_ns - s * 10**9


def _row(r: RunSummary) -> dict[str, Any]:
    """A run as a row of ``_runs_table.html``: its columns, start (UTC, to the second), page and whether it failed."""
    return {**r._asdict(), "start": iso_ns(r.start_ns)[:19].replace("T", " "),
            "page": f"{c.RUN_PAGE_PATH}/{quote(r.correlation_id, safe='')}", "failed": r.status in c.FAILED_STATUSES}


def runs_link(**filters: Any) -> str:
    """The runs list with these filters (empty ones left out)."""
    return c.RUN_PAGE_PATH + "?" + urlencode({k: v for k, v in filters.items() if v not in (None, "")})


def empty_home() -> dict:
    """``home.html``'s context when the window is refused: nothing listed, the default window picked."""
    return {"windows": WINDOWS, "window": "1h", "workflows": [], "failed": [], "slowest": [], "groups": []}


def home(store: RunStore, window: str, since_ns: int | None, now_ns: int) -> dict:
    """``home.html``'s context: every workflow seen since ``since_ns`` with its rate, error ratio and p95, the
    newest failed runs, the slowest runs and the open error groups."""
    since_q = since_ns if since_ns is not None else 0
    minutes = (WINDOWS[window] or max((now_ns - since_q) / 1e9, 60)) / 60
    workflows = [{**w._asdict(), "per_min": w.runs / minutes,
                  "runs_link": runs_link(workflow=w.workflow, window=window),
                  "failed_link": runs_link(workflow=w.workflow, status="failed", window=window)}
                 for w in store.workflow_summary(since_q)]
    failed = [_row(r) for r in store.list_runs(status=c.FAILED_STATUSES, since_ns=since_ns, limit=10)]
    slowest = [_row(r) for r in store.list_runs(since_ns=since_ns, limit=10, slowest_first=True)]
    groups = []
    for s in store.error_groups(since_q, limit=50):
        g = s.group._asdict()
        g["status"] = status_of(g)
        if g["status"] != "resolved":
            g.update(runs=s.runs, workflows=s.workflows, occurrences=len(s.times),
                     last_seen=iso_ns(s.group.last_seen_ns)[:19].replace("T", " "),
                     link=f"{c.ERROR_PAGE_PATH}/{quote(s.group.fingerprint, safe='')}")
            groups.append(g)
    return {"windows": WINDOWS, "window": window, "workflows": workflows, "failed": failed, "slowest": slowest,
            "groups": groups[:10], "all_failed_link": runs_link(status="failed", window=window)}


def empty_runs_page(f: dict) -> dict:
    """``runs.html``'s context when a filter is refused: the filters as typed, no rows."""
    return {"f": f, "windows": WINDOWS, "statuses": RUN_STATUSES, "rows": [], "page": 1, "prev_link": None,
            "next_link": None}


def runs_page(store: RunStore, f: dict, page: int, **filters: Any) -> dict:
    """``runs.html``'s context: page ``page`` (of :data:`PAGE_SIZE`) of the runs matching ``filters``
    (:meth:`RunStore.list_runs`), with links to the pages before and after that keep the filters ``f``."""
    rows = store.list_runs(**filters, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
    more = len(rows) > PAGE_SIZE
    keep = {k: v for k, v in f.items() if v}
    return {"f": f, "windows": WINDOWS, "statuses": RUN_STATUSES, "rows": [_row(r) for r in rows[:PAGE_SIZE]],
            "page": page, "prev_link": runs_link(**keep, page=page - 1) if page > 1 else None,
            "next_link": runs_link(**keep, page=page + 1) if more else None}


def error_page(store: RunStore, fingerprint: str, outcome_keys: tuple[str, ...], now_ns: int) -> dict | None:
    """``error_group.html``'s context, or None when there is no group ``fingerprint``: what it says, its trend
    over 24 h, the runs it hit, what those runs share against the other runs of the workflow it hits most
    (attribution, ``select=error``: findings and each dimension's distribution in both) and what fixed it
    before."""
    d = store.error_group(fingerprint)
    if d is None:
        return None
    g = group_json(d)
    day = now_ns - 86400 * 10**9
    occ = store.error_occurrences(fingerprint, day)
    times = [o.time_ns for o in occ]
    g["status"] = status_of(g)
    g.update(trend(times, g["first_seen_ns"], now_ns))
    hours = [0] * 24
    for t in times:
        hours[min(23, max(0, (t - day) * 24 // (86400 * 10**9)))] += 1
    peak = max(hours) or 1
    bars = [{"x": i * 12, "h": round(40 * n / peak, 1), "n": n} for i, n in enumerate(hours)]
    seen: dict[str, None] = {}
    for o in occ:
        if o.correlation_id and o.correlation_id not in seen and len(seen) < 20:
            seen[o.correlation_id] = None
    affected = {r.correlation_id: _row(r) for r in store.runs_by_id(list(seen))}
    runs = [affected[cid] for cid in seen if cid in affected]
    workflows = [e.workflow for e in d.recent]
    attribution, attribution_wf, attribution_note = None, None, None
    if workflows:
        # the runs this error hit against the workflow's other runs of the day (select=error)
        attribution_wf = max(sorted(set(workflows)), key=workflows.count)
        hit = frozenset(o.correlation_id for o in occ if o.correlation_id)
        try:
            attribution = run_attribution(store, attribution_wf, Selection("error", run_ids=hit), day, now_ns,
                                          outcome_keys=outcome_keys, top=8, dimensions=6)
        except HttpError as e:
            attribution_note = e.message
    for key in ("first_seen_ns", "last_seen_ns"):
        g[key.removesuffix("_ns")] = iso_ns(g[key])[:19].replace("T", " ")
    return {"g": g, "bars": bars, "total": len(times), "runs": runs, "attribution": attribution,
            "attribution_wf": attribution_wf, "attribution_note": attribution_note,
            "attribution_link": f"{c.ATTRIBUTION_PATH}?select=error&fingerprint={quote(fingerprint)}"
                                f"&workflow={quote(attribution_wf or '')}",
            "suggestions": suggestions(g, g["resolutions"]),
            "api_link": f"{c.ERRORS_PATH}/{quote(fingerprint, safe='')}"}
