"""Where a person starts: the home page (``/``) and the runs list (``/runs``), rendered on the server.

The home page answers "what is slow or failing right now": every workflow seen in the window with its rate,
error ratio and p95, the newest failed runs, the slowest runs and the open error groups. The runs list is
the same store behind filters a person types (workflow, status, window, minimum duration, text in the
error, one attribute) and pages of 50, each row linking to its run page. Both read the run store only.

A bad filter is shown on the page with a 400, not as JSON: these are pages.
"""

from __future__ import annotations

import time
from urllib.parse import quote, urlencode

from flask import Blueprint, current_app, render_template, request

from exporter import conventions as c
from exporter.web import HttpError

from ..analysis.api import run_attribution
from ..analysis.attribution import Selection
from ..analysis.groups import status_of, suggestions
from ..analysis.trend import trend
from ..query import check_text, iso_ns, number_arg, run_store

#: The windows a person picks from, in seconds ("all" is no lower bound).
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "all": None}
PAGE_SIZE = 50
RUN_STATUSES = (*c.STATUSES, "failed")  # "failed" = error or timeout


def _outcome_keys() -> tuple[str, ...]:
    cfg = current_app.extensions["flowscope"].config
    return tuple(getattr(cfg, "attribution_outcome_keys", c.ATTRIBUTION_OUTCOME_KEYS))


def _since(window: str, now_ns: int) -> int | None:
    if window not in WINDOWS:
        raise HttpError(400, "invalid_query", f"window must be one of {', '.join(WINDOWS)}", "window")
    s = WINDOWS[window]
    return None if s is None else now_ns - s * 10**9


def _row(r: dict) -> dict:
    r["start"] = iso_ns(r["start_ns"])[:19].replace("T", " ")
    r["page"] = f"{c.RUN_PAGE_PATH}/{quote(r['correlation_id'], safe='')}"
    r["failed"] = r["status"] in c.FAILED_STATUSES
    return r


def _runs_link(**filters) -> str:
    return c.RUN_PAGE_PATH + "?" + urlencode({k: v for k, v in filters.items() if v not in (None, "")})


def create_blueprint() -> Blueprint:
    bp = Blueprint("pages", __name__, template_folder="templates")

    @bp.get("/")
    def home():
        window = request.args.get("window", "1h")
        try:
            since = _since(window, time.time_ns())
        except HttpError as e:
            return render_template("home.html", error=e.message, windows=WINDOWS, window="1h", workflows=[],
                                   failed=[], slowest=[], groups=[]), 400
        store = run_store()
        since_q = since if since is not None else 0
        minutes = (WINDOWS[window] or max((time.time_ns() - since_q) / 1e9, 60)) / 60
        workflows = store.workflow_summary(since_q)
        for w in workflows:
            w["per_min"] = w["runs"] / minutes
            w["runs_link"] = _runs_link(workflow=w["workflow"], window=window)
            w["failed_link"] = _runs_link(workflow=w["workflow"], status="failed", window=window)
        failed = [_row(r) for r in store.list_runs(status=c.FAILED_STATUSES, since_ns=since, limit=10)]
        slowest = [_row(r) for r in store.list_runs(since_ns=since, limit=10, slowest_first=True)]
        groups = []
        for g in store.error_groups(since_q, limit=50):
            g["status"] = status_of(g)
            if g["status"] != "resolved":
                g["occurrences"] = len(g["times"])
                g["last_seen"] = iso_ns(g["last_seen_ns"])[:19].replace("T", " ")
                g["link"] = f"{c.ERROR_PAGE_PATH}/{quote(g['fingerprint'], safe='')}"
                groups.append(g)
        return render_template("home.html", error=None, windows=WINDOWS, window=window, workflows=workflows,
                               failed=failed, slowest=slowest, groups=groups[:10],
                               all_failed_link=_runs_link(status="failed", window=window))

    @bp.get(c.RUN_PAGE_PATH)
    def runs():
        a = request.args
        f = {k: a.get(k, "") for k in ("workflow", "status", "window", "min_duration_ms", "q", "attr")}
        f["window"] = f["window"] or "24h"
        try:
            since = _since(f["window"], time.time_ns())
            status = f["status"] or None
            if status is not None and status not in RUN_STATUSES:
                raise HttpError(400, "invalid_query", f"status must be one of {', '.join(RUN_STATUSES)}", "status")
            attribute = None
            if f["attr"]:
                key, sep, value = check_text(f["attr"], "attr", 500).partition("=")
                if not sep or not key:
                    raise HttpError(400, "invalid_query", "attr must be key=value, e.g. http.route=/checkout", "attr")
                attribute = (key.strip(), value.strip())
            page = number_arg("page", 1, 1, 10_000)
            rows = run_store().list_runs(
                workflow=check_text(f["workflow"], "workflow", 200) or None,
                status=c.FAILED_STATUSES if status == "failed" else status, since_ns=since,
                min_duration_ms=number_arg("min_duration_ms", None, 0, 1e12, float),
                error_text=check_text(f["q"], "q", 200) or None, attribute=attribute,
                limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE)
        except HttpError as e:
            return render_template("runs.html", error=e.message, f=f, windows=WINDOWS, statuses=RUN_STATUSES,
                                   rows=[], page=1, prev_link=None, next_link=None), 400
        more = len(rows) > PAGE_SIZE
        keep = {k: v for k, v in f.items() if v}
        return render_template(
            "runs.html", error=None, f=f, windows=WINDOWS, statuses=RUN_STATUSES,
            rows=[_row(r) for r in rows[:PAGE_SIZE]], page=page,
            prev_link=_runs_link(**keep, page=page - 1) if page > 1 else None,
            next_link=_runs_link(**keep, page=page + 1) if more else None)

    @bp.get(c.ERROR_PAGE_PATH + "/<fingerprint>")
    def error_group(fingerprint: str):
        """One error group: what it says, its trend over 24 h, the runs it hit, what those runs share against
        the other runs of the workflow it hits most (attribution, ``select=error``: findings and each
        dimension's distribution in both) and what fixed it before."""
        check_text(fingerprint, "fingerprint", 64)
        store = run_store()
        g = store.error_group(fingerprint)
        if g is None:
            return render_template("not_found.html", run_id=fingerprint,
                                   message=f"No error group with fingerprint {fingerprint!r}."), 404
        now = time.time_ns()
        day = now - 86400 * 10**9
        occ = store.error_occurrences(fingerprint, day)
        times = [t for t, _ in occ]
        g["status"] = status_of(g)
        g.update(trend(times, g["first_seen_ns"], now))
        hours = [0] * 24
        for t in times:
            hours[min(23, max(0, (t - day) * 24 // (86400 * 10**9)))] += 1
        peak = max(hours) or 1
        bars = [{"x": i * 12, "h": round(40 * n / peak, 1), "n": n} for i, n in enumerate(hours)]
        seen: dict[str, None] = {}
        for _, cid in occ:
            if cid and cid not in seen and len(seen) < 20:
                seen[cid] = None
        affected = {r["correlation_id"]: _row(r) for r in store.runs_by_id(list(seen))}
        runs = [affected[cid] for cid in seen if cid in affected]
        workflows = [r["workflow"] for r in g["recent"]]
        attribution, attribution_wf, attribution_note = None, None, None
        if workflows:
            # the runs this error hit against the workflow's other runs of the day (select=error)
            attribution_wf = max(sorted(set(workflows)), key=workflows.count)
            hit = frozenset(cid for _, cid in occ if cid)
            try:
                attribution = run_attribution(store, attribution_wf, Selection("error", run_ids=hit), day, now,
                                              outcome_keys=_outcome_keys(), top=8, dimensions=6)
            except HttpError as e:
                attribution_note = e.message
        for key in ("first_seen_ns", "last_seen_ns"):
            g[key.removesuffix("_ns")] = iso_ns(g[key])[:19].replace("T", " ")
        return render_template("error_group.html", error=None, g=g, bars=bars, total=len(times), runs=runs,
                               attribution=attribution, attribution_wf=attribution_wf,
                               attribution_note=attribution_note,
                               attribution_link=f"{c.ATTRIBUTION_PATH}?select=error&fingerprint={quote(fingerprint)}"
                                                f"&workflow={quote(attribution_wf or '')}",
                               suggestions=suggestions(g, g["resolutions"]),
                               api_link=f"{c.ERRORS_PATH}/{quote(fingerprint, safe='')}")

    return bp
