"""Error groups and attribution as the API and the pages show them: plain functions of the run store.

The views in :mod:`backend.analysis.api` and :mod:`backend.runs.pages` parse the request, call these and
render what they return::

    body = error_groups(store, since_ns, now_ns, workflow=None, limit=100, recent_s=3600)
    group = error_group(store, fingerprint)          # None when no such group
    result = run_attribution(store, "checkout", Selection("failed"), since_ns, until_ns)

The store hands back typed rows (:mod:`exporter.store.rows`); the JSON objects are built here, from
:func:`group_json` and the rows' ``_asdict()`` (keys in column order).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter import conventions as c
from exporter.store import ErrorGroupDetail, RunStore
from exporter.web import HttpError

from . import attribution as at
from .attribution import Selection, SelectionError
from .groups import status_of, suggestions
from .trend import trend


def error_groups(store: RunStore, since_ns: int, now_ns: int, workflow: str | None, limit: int,
                 recent_s: float) -> dict[str, Any]:
    """The error-group list: each group that started failures since ``since_ns`` with its count in the window
    (``total_count`` ever), trend, status and suggestions."""
    out = []
    for s in store.error_groups(since_ns, workflow, limit):
        g, times = s.group, s.times
        tr = trend(times, g.first_seen_ns, now_ns, recent_s=recent_s, window_s=(now_ns - since_ns) / 1e9)
        row = g._asdict()
        hist: list[Mapping[str, Any]] = ([h._asdict() for h in store.resolutions(g.fingerprint)]
                                         if g.resolved_at_ns else [])
        out.append({**row, "count": len(times), "runs": s.runs, "layers": s.layers, "workflows": s.workflows,
                    "components": s.components, "sample_correlation_ids": s.sample_correlation_ids,
                    "propagated_to": [p._asdict() for p in s.propagated_to], "total_count": g.count, **tr,
                    "status": status_of(row), "suggestions": suggestions(row, hist)})
    return {"groups": out, "since_ns": since_ns, "recent_s": recent_s}


def group_json(d: ErrorGroupDetail) -> dict[str, Any]:
    """One group as ``GET /api/v1/errors/<fingerprint>`` starts from it: the group's columns, then ``recent``,
    ``resolutions``, ``caused_by`` and ``propagated_to`` as lists of objects (the pages render the same dict)."""
    return {**d.group._asdict(), "recent": [e._asdict() for e in d.recent],
            "resolutions": [h._asdict() for h in d.resolutions], "caused_by": [r._asdict() for r in d.caused_by],
            "propagated_to": [r._asdict() for r in d.propagated_to]}


def error_group(store: RunStore, fingerprint: str) -> dict[str, Any] | None:
    """One group with its status and suggestions, or None when there is none with ``fingerprint``."""
    d = store.error_group(fingerprint)
    if d is None:
        return None
    g = group_json(d)
    g["status"] = status_of(g)
    g["suggestions"] = suggestions(g, g["resolutions"])
    return g


def resolve(store: RunStore, fingerprint: str, note: str, resolved_by: str | None,
            now_ns: int) -> dict[str, Any] | None:
    """Remember what fixed the group; the group afterwards, or None when there is none with ``fingerprint``."""
    if not store.resolve(fingerprint, note, resolved_by, now_ns):
        return None
    d = store.error_group(fingerprint)
    if d is None:  # deleted between the two statements (retention)
        return None
    g = group_json(d)
    g["status"] = status_of(g)
    return g


def bad_query(field: str, message: str) -> HttpError:
    return HttpError(400, "invalid_query", message, field)


def error_selection(store: RunStore, fingerprint: str, since_ns: int, until_ns: int,
                    workflow: str | None) -> tuple[str, frozenset[str]]:
    """(workflow, run ids) of ``select=error``: the runs error group ``fingerprint`` hit in the window, of
    ``workflow`` (default: the workflow it hit most). 400 naming ``fingerprint`` when it hit none."""
    hits = store.error_runs(fingerprint, since_ns, until_ns)
    if not hits:
        raise bad_query("fingerprint", f"error group {fingerprint!r} hit no run between since and until")
    if not workflow:
        names = [h.workflow for h in hits]
        workflow = max(sorted(set(names)), key=names.count)
    return workflow, frozenset(h.correlation_id for h in hits if h.workflow == workflow)


def run_attribution(store: RunStore, workflow: str, selection: Selection, since_ns: int, until_ns: int,
                    max_runs: int = 100_000, outcome_keys: tuple[str, ...] = c.ATTRIBUTION_OUTCOME_KEYS,
                    sample_runs: int = 5000, **opts) -> dict:
    """Read, select, rank: the API's and the error page's one path. The runs table is read whole (the newest
    ``max_runs``); spans only for every selected and every baseline run up to ``sample_runs`` a side (a fixed
    pseudo-random sample past that). A selection the runs cannot answer raises :class:`HttpError` 400."""
    rows = store.attribution_runs(workflow, since_ns, until_ns, max_runs)
    try:
        step = (store.attribution_step_ms(rows.run_ids, selection.operation)
                if selection.kind == "slow" and selection.operation else None)
        plan = at.preselect(rows, selection, step)
        read = at.sample(rows.run_ids, plan, sample_runs)
        feats = at.build(store.attribution_spans(rows, read), outcome_keys)
        sel, pop = at.finish(feats, selection, plan, read)
    except SelectionError as e:
        raise bad_query(e.field, str(e)) from None
    exclude = {w.dimension for w in selection.where} if selection.kind == "filter" else set()
    result = at.attribute(feats, sel, pop, exclude=exclude, **opts)
    threshold = plan.threshold
    step_desc = f"with a {selection.operation!r} step " if selection.operation else ""
    desc = {"failed": "failed runs (error, timeout)", "window": "runs that started in [from, to)",
            "error": "runs the error group hit", "filter": "runs matching every where",
            "slow": f"runs {step_desc}slower than {threshold:.6g} ms" if threshold is not None else ""}
    total_sel = int(plan.sel.sum()) if plan.sel is not None else None
    result.update(select=selection.kind, selection=desc[selection.kind], threshold_ms=threshold,
                  outcome_keys=list(outcome_keys),
                  where=[f"{w.dimension}{':' if w.op == '=' else w.op}{w.value}" for w in selection.where],
                  runs_in_window=len(rows.run_ids), runs_read=len(read), max_runs=max_runs,
                  sampled=len(read) < len(rows.run_ids), selected_in_window=total_sel)
    return result


def attribution_report(store: RunStore, workflow: str, selection: Selection, since_ns: int, until_ns: int,
                       public_url: str, fingerprint: str | None = None, max_runs: int = 100_000,
                       outcome_keys: tuple[str, ...] = c.ATTRIBUTION_OUTCOME_KEYS, sample_runs: int = 5000,
                       **opts) -> dict:
    """The attribution API's body: :func:`run_attribution` with the query's window, and each finding's
    sample runs as links to their pages under ``public_url``."""
    result = run_attribution(store, workflow, selection, since_ns, until_ns, max_runs, outcome_keys, sample_runs,
                             **opts)
    result.update(workflow=workflow, since_ns=since_ns, until_ns=until_ns)
    if fingerprint:
        result["fingerprint"] = fingerprint
    public = public_url.rstrip("/")
    for f in result["findings"]:
        f["sample_pages"] = [f"{public}{c.RUN_PAGE_PATH}/{cid}" for cid in f["sample_runs"]]
    return result
