"""What a debugging report says, as one JSON-able dict: plain functions of the stores and the alert spec.

Use :func:`build_report` for the whole report (the API and ``flowscope report`` both do), then
:mod:`backend.reports.render` to turn it into HTML or Markdown; the dict itself is the ``format=json`` body::

    window = parse_window("7d", None, now_ns)                       # ReportError naming since/until
    report = build_report(store, spec, Links("http://localhost:9464", "http://localhost:3000"), window,
                          workflow="checkout")
    report["sections"]["slo"]["rows"][0]["status"]                   # "met", "at risk", "breached", ...

Each section is computed from what the run store keeps, over ``[since, until]``:

- **SLOs and error budget**: the spec's objectives (``alert_rules/spec/flowscope.yaml``: named ones, else the
  defaults) against the runs table: bad runs are failed ones (availability) or slower than the threshold
  (latency). The live burn rates are Prometheus recording rules; the report recomputes the window's totals
  from the stored runs, so it needs no Prometheus.
- **Regressions**: the stored findings of detection (table ``regressions``) whose change lies in the window.
- **Error groups**: the groups that started failures in the window, their trend, attribution (``select=error``,
  the runs the group hit against the workflow's other runs) and suggestions, as ``/api/v1/errors`` gives them.
- **Slowest steps**: p95 per step (workflow, layer, component, operation) and its p95 per bin.
- **Alerts**: Alertmanager's notifications the webhook stored (tables ``alerts``, ``alert_events``).
- **Endpoint gaps**: the endpoint inventory's (:meth:`RunStore.endpoint_report`): documented endpoints never
  called, routes called that no inventory lists.

A section with no data in the window says so (``empty``: the sentence to show) instead of carrying empty series.
Nothing here reads the clock: the same stores and window give the same dict.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import Engine, and_, or_, select

from exporter import conventions as c
from exporter.store import RunStore
from exporter.store.schema import alert_events, alerts, regressions, runs, spans
from exporter.validate import MAX_TIME_NS
from exporter.web import HttpError

from ..analysis.attribution import Selection
from ..analysis.groups import status_of, suggestions
from ..analysis.service import run_attribution
from ..analysis.trend import trend
from ..dashboards.common import LOKI_DS_UID
from ..errors import BackendError
from ..query import iso_ns, parse_time
from ..rules.spec import SLO, Spec

FORMATS = ("html", "md", "json")
#: The longest window a report covers (the run store keeps 30 days by default).
MAX_WINDOW_S = 366 * 86400
_DURATION = re.compile(r"([0-9]{1,7})(m|h|d|w)")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Bin widths of the per-bin series, the smallest that gives at most MAX_BINS bins.
BIN_CHOICES_S = (300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
MAX_BINS = 28
TOP_GROUPS, ATTRIBUTED_GROUPS, TOP_STEPS, MAX_REGRESSIONS, MAX_ALERTS = 10, 3, 10, 20, 50
#: Reads are bounded: at most this many runs, step spans and errors (the newest) in the window.
MAX_ROWS = 500_000


class ReportError(BackendError):
    """A report parameter that cannot be used; ``field`` names it (an HTTP 400, or exit 2 at the CLI)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclass(frozen=True)
class Window:
    since_ns: int
    until_ns: int

    @property
    def seconds(self) -> float:
        return (self.until_ns - self.since_ns) / 1e9


def parse_window(since: str | None, until: str | None, now_ns: int) -> Window:
    """``since``: a duration before ``until`` (``90m``, ``24h``, ``7d``, ``2w``; default ``7d``) or a time (RFC 3339
    or Unix seconds); ``until``: a time, default ``now_ns``. :class:`ReportError` naming the field otherwise."""
    until_ns = now_ns if not until else _time(until, "until")
    raw = since or "7d"
    m = _DURATION.fullmatch(raw.strip())
    if m:
        seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
        if not 0 < seconds <= MAX_WINDOW_S:
            raise ReportError("since", f"since must be a duration from 1m to {MAX_WINDOW_S // 86400}d, "
                                       f"got {raw[:40]!r}")
        since_ns = max(0, until_ns - seconds * 10**9)
    else:
        since_ns = _time(raw, "since")
    if since_ns >= until_ns:
        if not since:  # the default window is what does not fit: the parameter sent is to blame
            raise ReportError("until", "until must be after 1970-01-01T00:00:00Z")
        raise ReportError("since", "since must be before until")
    if until_ns - since_ns > MAX_WINDOW_S * 10**9:
        raise ReportError("since", f"the window must be at most {MAX_WINDOW_S // 86400} days")
    return Window(since_ns, until_ns)


def _time(raw: str, field: str) -> int:
    try:
        return parse_time(raw.strip(), field)
    except HttpError as e:
        what = "must be a duration (7d, 24h, 90m), RFC 3339" if field == "since" else "must be RFC 3339"
        raise ReportError(field, e.message.replace("must be RFC 3339", what)) from None


def check_workflow(workflow: str | None) -> str | None:
    if workflow is None or workflow == "":
        return None
    if "\x00" in workflow or len(workflow) > 200:
        raise ReportError("workflow", "workflow must be at most 200 characters, without NUL")
    return workflow


def check_format(fmt: str | None) -> str:
    fmt = fmt or "html"
    if fmt not in FORMATS:
        raise ReportError("format", f"format must be one of {', '.join(FORMATS)}, got {fmt[:40]!r}")
    return fmt


# -- links ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Links:
    """Absolute links into Flowscope (``public_url``) and Grafana (``grafana_url``): a report is read elsewhere."""

    public_url: str
    grafana_url: str

    def _p(self, path: str, **params: Any) -> str:
        q = urlencode({k: v for k, v in params.items() if v not in (None, "")})
        return self.public_url.rstrip("/") + path + ("?" + q if q else "")

    def run(self, cid: str) -> str:
        return self._p(f"{c.RUN_PAGE_PATH}/{quote(cid, safe='')}")

    def runs(self, w: Window, workflow: str | None = None, status: str | None = None) -> str:
        return self._p(c.RUNS_PATH, workflow=workflow, status=status, since=_iso(w.since_ns), until=_iso(w.until_ns),
                       limit=100)

    def error(self, fingerprint: str) -> str:
        return self._p(f"{c.ERROR_PAGE_PATH}/{quote(fingerprint, safe='')}")

    def attribution(self, w: Window, **params: Any) -> str:
        return self._p(c.ATTRIBUTION_PATH, **params, since=_iso(w.since_ns), until=_iso(w.until_ns))

    def regressions(self, workflow: str | None) -> str:
        return self._p(c.REGRESSIONS_PATH, workflow=workflow)

    def endpoints(self, w: Window, service: str | None = None) -> str:
        """The endpoint inventory's page over the window."""
        return self._p(c.ENDPOINTS_PAGE_PATH, service=service, since=_iso(w.since_ns), until=_iso(w.until_ns))

    def alerts(self, workflow: str | None) -> str:
        return self._p(c.ALERTS_PATH, workflow=workflow)

    def logs(self, w: Window, q: str, workflow: str | None = None) -> str:
        """Flowscope's own log search (the page; ``/api/v1/logs`` takes the same parameters)."""
        return self._p(c.LOGS_PAGE_PATH, q=q, workflow=workflow, since=_iso(w.since_ns), until=_iso(w.until_ns))

    def dashboard(self, uid: str, w: Window, **variables: str | None) -> str:
        params = {f"var-{k}": v for k, v in variables.items() if v}
        params.update({"from": str(w.since_ns // 10**6), "to": str(w.until_ns // 10**6)})
        return f"{self.grafana_url.rstrip('/')}/d/{uid}?{urlencode(params)}"

    def explore(self, logql: str, w: Window) -> str:
        """Grafana Explore on the Loki datasource with ``logql`` over the window."""
        panes = {"report": {"datasource": LOKI_DS_UID, "queries": [
            {"refId": "A", "expr": logql, "datasource": {"type": "loki", "uid": LOKI_DS_UID}}],
            "range": {"from": str(w.since_ns // 10**6), "to": str(w.until_ns // 10**6)}}}
        return f"{self.grafana_url.rstrip('/')}/explore?" + urlencode(
            {"schemaVersion": 1, "orgId": 1, "panes": json.dumps(panes, separators=(",", ":"))})


def _web_url(url: object) -> bool:
    """Is a URL an alert carried (client data) an http(s) link? Anything else (``javascript:``, ``data:``) is
    never made a link in a report."""
    return isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))


def _iso(ns: int) -> str:
    return iso_ns(ns)[:19] + "Z"


def _logql_str(v: str) -> str:
    return json.dumps(v)  # a LogQL string is a Go string literal: JSON's escapes are valid in it


def _selector(**labels: str | None) -> str:
    return "{" + ", ".join(f"{k}={_logql_str(v)}" for k, v in labels.items() if v) + "}"


# -- bins -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bins:
    since_ns: int
    width_s: int
    n: int

    def index(self, t_ns: int) -> int:
        return min(self.n - 1, max(0, (t_ns - self.since_ns) // (self.width_s * 10**9)))

    def labels(self) -> list[str]:
        fmt = "%m-%d" if self.width_s >= 86400 else "%m-%d %H:%M"
        return [datetime.fromtimestamp((self.since_ns + i * self.width_s * 10**9) / 1e9, UTC).strftime(fmt)
                for i in range(self.n)]


def bins_of(w: Window) -> Bins:
    for width in BIN_CHOICES_S:
        n = math.ceil(w.seconds / width)
        if n <= MAX_BINS:
            return Bins(w.since_ns, width, max(n, 1))
    return Bins(w.since_ns, BIN_CHOICES_S[-1], MAX_BINS)


def _p(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (as ``RunStore.workflow_summary``)."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


# -- sections -------------------------------------------------------------------------------------------------


def _slos_for(spec: Spec, workflow: str) -> list[SLO]:
    named = [s for s in spec.slos if s.workflow == workflow]
    types = {s.type for s in named}
    return named + [s for s in spec.slos if s.is_default and s.type not in types and workflow not in s.except_workflows]


def slo_section(store: RunStore, spec: Spec | None, spec_note: str | None, links: Links, w: Window,
                workflow: str | None, b: Bins) -> dict[str, Any]:
    """Each objective of the spec against the runs of the window (see the module docstring)."""
    q = (select(runs.c.workflow, runs.c.status, runs.c.duration_ms, runs.c.start_ns)
         .where(runs.c.start_ns >= w.since_ns, runs.c.start_ns <= w.until_ns)
         .order_by(runs.c.start_ns.desc()).limit(MAX_ROWS))
    if workflow:
        q = q.where(runs.c.workflow == workflow)
    per: dict[str, list[tuple[bool, float, int]]] = {}
    with store.engine.connect() as conn:
        for wf, status, dur, start in conn.execute(q):
            per.setdefault(wf, []).append((status in c.FAILED_STATUSES, dur, start))
    total_runs = sum(len(v) for v in per.values())
    out: dict[str, Any] = {"title": "SLOs and error budget", "runs": total_runs, "rows": [], "note": spec_note,
                           "method": "Computed from the run store's runs in the window against the alert spec's "
                                     "objectives; live burn rates are Prometheus recording rules",
                           "empty": None}
    if spec is None:
        out["empty"] = spec_note or "no alert spec"
        return out
    if not per:
        who = f" of workflow {workflow!r}" if workflow else ""
        out["empty"] = f"No runs{who} in this window: no SLO can be evaluated."
        return out
    labels = b.labels()
    for wf in sorted(per):
        rows = per[wf]
        for slo in _slos_for(spec, wf):
            limit_ms = (slo.threshold_s or 0) * 1000
            availability = slo.type == "availability"
            per_bin_bad, per_bin_all = [0] * b.n, [0] * b.n
            bad = 0
            for failed, dur, start in rows:
                i = b.index(start)
                per_bin_all[i] += 1
                if failed if availability else dur > limit_ms:
                    bad += 1
                    per_bin_bad[i] += 1
            n = len(rows)
            allowed = slo.error_budget * n
            consumed = bad / allowed if allowed > 0 else (math.inf if bad else 0.0)
            good = 1 - bad / n
            status = ("too few runs" if n < slo.min_events else "breached" if good < slo.objective
                      else "at risk" if consumed >= 0.75 else "met")
            out["rows"].append({
                "workflow": wf, "slo": slo.name, "type": slo.type, "objective": slo.objective,
                "threshold_ms": limit_ms or None, "min_events": slo.min_events, "runs": n, "bad": bad,
                "good_ratio": _r(good), "budget_allowed": _r(allowed, 3), "budget_consumed": _r(consumed, 4),
                "budget_remaining": _r(1 - consumed, 4) if math.isfinite(consumed) else None, "status": status,
                "bad_ratio_per_bin": [round(x / a, 6) if a else 0.0 for x, a in zip(per_bin_bad, per_bin_all,
                                                                                      strict=True)] if bad else None,
                "bin_labels": labels if bad else None,
                "links": {"failed runs" if slo.type == "availability" else "slow runs":
                          links.runs(w, wf, "error") if slo.type == "availability" else links.runs(w, wf),
                          "dashboard": links.dashboard(c.DASHBOARD_OVERVIEW, w, workflow=wf),
                          "error logs (Loki)": links.explore(_selector(workflow=wf, level="error"), w),
                          "error logs (Flowscope)": links.logs(w, "level:error", wf)}})
    if not out["rows"]:
        out["empty"] = "The alert spec sets no objective for the workflows seen in this window."
    return out


def regression_section(engine: Engine, links: Links, w: Window, workflow: str | None) -> dict[str, Any]:
    """Stored detection findings whose change lies in the window, regressions first, largest change first."""
    with engine.connect() as conn:
        rows = conn.execute(select(regressions).order_by(regressions.c.id)).mappings().all()
    found = []
    for r in rows:
        try:
            t = datetime.fromisoformat(r["change_time"].replace("Z", "+00:00"))
        except ValueError:
            continue
        t_ns = int(t.timestamp()) * 10**9
        labels = json.loads(r["labels"] or "{}")
        wf = labels.get(c.L_WORKFLOW)
        if not w.since_ns <= t_ns <= w.until_ns or (workflow and wf != workflow):
            continue
        found.append({
            "series": r["series"], "labels": labels, "workflow": wf, "change_time": _iso(t_ns), "change_ns": t_ns,
            "detector": r["detector"], "direction": r["direction"], "kind": r["kind"] or "step",
            "before": _r(r["before"]), "after": _r(r["after"]), "relative_change": _r(r["relative_change"], 4),
            "p_adjusted": r["p_adjusted"],
            "links": {
                "runs after the change": links.runs(Window(t_ns, min(MAX_TIME_NS, t_ns + 3600 * 10**9)), wf),
                "dashboard": links.dashboard(c.DASHBOARD_OVERVIEW, w, workflow=wf),
                "logs around the change (Loki)": links.explore(_selector(workflow=wf, level="error"),
                                                               Window(t_ns - 1800 * 10**9, t_ns + 1800 * 10**9)),
                "finding (API)": links.regressions(wf)}})
    found.sort(key=lambda f: (f["direction"] != "regression", -abs(f["relative_change"] or 0), f["series"],
                              f["change_ns"]))
    who = f" for workflow {workflow!r}" if workflow else ""
    return {"title": "Regressions found", "rows": found[:MAX_REGRESSIONS], "total": len(found),
            "regressions": sum(f["direction"] == "regression" for f in found),
            "improvements": sum(f["direction"] != "regression" for f in found),
            "empty": None if found else f"No regression or improvement was detected{who} in this window "
                                        "(detection stores its findings only where Prometheus is configured)."}


def error_section(store: RunStore, links: Links, w: Window, workflow: str | None, b: Bins,
                  outcome_keys: tuple[str, ...]) -> dict[str, Any]:
    """The groups that started the most failures in the window, with trend, attribution and suggestions."""
    groups = []
    for s in store.error_groups(w.since_ns, workflow, limit=TOP_GROUPS * 5):
        times = [t for t in s.times if t <= w.until_ns]
        if times:
            groups.append((s, times))
    groups.sort(key=lambda x: (-len(x[1]), x[0].group.fingerprint))
    labels = b.labels()
    out = []
    for rank, (s, times) in enumerate(groups[:TOP_GROUPS]):
        g = s.group
        row = g._asdict()
        hist: list[Mapping[str, Any]] = ([h._asdict() for h in store.resolutions(g.fingerprint)]
                                         if g.resolved_at_ns else [])
        tr = trend(times, g.first_seen_ns, w.until_ns, recent_s=min(3600.0, w.seconds / 4), window_s=w.seconds)
        per_bin = [0] * b.n
        for t in times:
            per_bin[b.index(t)] += 1
        wf = workflow or (s.workflows[0] if len(s.workflows) == 1 else None)
        attribution = None
        if rank < ATTRIBUTED_GROUPS:
            attribution = _group_attribution(store, g.fingerprint, w, workflow, outcome_keys, links)
        out.append({
            "fingerprint": g.fingerprint, "error_type": g.error_type, "template": g.template,
            "category": g.category, "count": len(times), "runs": s.runs, "workflows": s.workflows,
            "layers": s.layers, "components": s.components, "first_seen": _iso(g.first_seen_ns),
            "last_seen": _iso(g.last_seen_ns), "status": status_of(row), "trend": tr["trend"],
            "per_bin": per_bin, "bin_labels": labels, "attribution": attribution,
            "suggestions": [x["note"] for x in suggestions(row, hist)],
            "propagated_to": [{"error_type": p.error_type, "template": p.template, "runs": p.count}
                              for p in s.propagated_to[:3]],
            "sample_runs": [{"id": cid, "link": links.run(cid)} for cid in s.sample_correlation_ids[:3]],
            "links": {"error page": links.error(g.fingerprint), "runs": links.runs(w, wf, "error"),
                      "logs (Loki)": links.explore(_selector(workflow=wf, level="error") +
                                                   f" |= {_logql_str(g.error_type)}", w),
                      "logs (Flowscope)": links.logs(w, f"level:error {_logql_str(g.error_type)}", wf),
                      "dashboard": links.dashboard(c.DASHBOARD_ERRORS, w, workflow=wf)}})
    who = f" of workflow {workflow!r}" if workflow else ""
    return {"title": "Top error groups", "rows": out, "groups_in_window": len(groups),
            "empty": None if out else f"No error{who} started a failure in this window."}


def _group_attribution(store: RunStore, fingerprint: str, w: Window, workflow: str | None,
                       outcome_keys: tuple[str, ...], links: Links) -> dict[str, Any]:
    hits = store.error_runs(fingerprint, w.since_ns, w.until_ns + 1)
    if workflow:
        hits = [h for h in hits if h.workflow == workflow]
    if not hits:
        return {"workflow": workflow, "findings": [], "note": "the group hit no stored run in this window"}
    names = [h.workflow for h in hits]
    wf = max(sorted(set(names)), key=names.count)
    link = links.attribution(w, select="error", fingerprint=fingerprint, workflow=wf)
    try:
        res = run_attribution(store, wf, Selection("error", run_ids=frozenset(h.correlation_id for h in hits
                                                                              if h.workflow == wf)),
                              w.since_ns, w.until_ns + 1, outcome_keys=outcome_keys, top=3, dimensions=0,
                              sample_runs=1000, pairs=False)
    except HttpError as e:
        return {"workflow": wf, "findings": [], "note": e.message, "link": link}
    findings = [{"dimension": f["dimension"], "value": f["value"], "lift": f["lift"],
                 "share_of_selection": f["share_of_selection"], "share_of_baseline": f["share_of_baseline"],
                 "significant": f["significant"], "sample_runs": [{"id": r, "link": links.run(r)}
                                                                  for r in f["sample_runs"]]}
                for f in res["findings"] if f["significant"]]
    return {"workflow": wf, "findings": findings, "selected_runs": res["selected_runs"],
            "baseline_runs": res["baseline_runs"], "link": link,
            "note": None if findings else "nothing the runs it hit share stands out from the workflow's other runs"}


def step_section(store: RunStore, links: Links, w: Window, workflow: str | None, b: Bins) -> dict[str, Any]:
    """The steps with the highest p95 in the window, their p95 per bin and the change of p95 from the first half
    of the time the step was seen in the window to the second (``slower``/``faster`` past 10 %)."""
    q = (select(spans.c.workflow, spans.c.layer, spans.c.component, spans.c.operation, spans.c.start_ns,
                spans.c.end_ns, spans.c.correlation_id)
         .where(spans.c.is_step.is_(True), spans.c.end_ns >= w.since_ns, spans.c.end_ns <= w.until_ns)
         .order_by(spans.c.end_ns.desc()).limit(MAX_ROWS))
    if workflow:
        q = q.where(spans.c.workflow == workflow)
    per: dict[tuple[str, str, str, str], list[tuple[float, int, str]]] = {}
    with store.engine.connect() as conn:
        for wf, layer, comp, op, start, end, cid in conn.execute(q):
            per.setdefault((wf, layer, comp, op), []).append(((end - start) / 1e6, end, cid))
    stats = []
    for key, rows in per.items():
        durs = sorted(r[0] for r in rows)
        stats.append((_p(durs, 0.95), key, rows, durs))
    stats.sort(key=lambda x: (-x[0], x[1]))
    labels = b.labels()
    out = []
    for p95, (wf, layer, comp, op), rows, durs in stats[:TOP_STEPS]:
        binned: list[list[float]] = [[] for _ in range(b.n)]
        first: list[float] = []
        second: list[float] = []
        mid = (min(r[1] for r in rows) + max(r[1] for r in rows)) // 2  # the halves of the step's own span of time
        for d, end, _ in rows:
            binned[b.index(end)].append(d)
            (first if end < mid else second).append(d)
        per_bin = [_r(_p(sorted(x), 0.95), 3) if x else None for x in binned]
        change = None
        if first and second:
            a, z = _p(sorted(first), 0.95), _p(sorted(second), 0.95)
            change = _r(z / a - 1, 4) if a > 0 else None
        label = ("not enough data" if change is None else "slower" if change > 0.1 else "faster"
                 if change < -0.1 else "steady")
        slowest = max(rows, key=lambda r: (r[0], r[2]))
        out.append({"workflow": wf, "layer": layer, "component": comp, "operation": op, "count": len(rows),
                    "p50_ms": _r(_p(durs, 0.5), 3), "p95_ms": _r(p95, 3), "max_ms": _r(durs[-1], 3),
                    "p95_per_bin": per_bin, "bin_labels": labels, "half_over_half": change, "trend": label,
                    "slowest_run": {"id": slowest[2], "link": links.run(slowest[2])},
                    "links": {"runs": links.runs(w, wf),
                              "what slow runs share": links.attribution(w, workflow=wf, select="slow", operation=op),
                              "dashboard": links.dashboard(c.DASHBOARD_LAYERS, w, workflow=wf, layer=layer),
                              "logs (Loki)": links.explore(_selector(workflow=wf, layer=layer), w),
                              "logs (Flowscope)": links.logs(w, f"workflow:{_logql_str(wf)}", wf)}})
    who = f" of workflow {workflow!r}" if workflow else ""
    seen = sum(len(r) for r in per.values())
    return {"title": "Slowest steps", "rows": out, "steps_in_window": seen,
            "note": f"from the newest {MAX_ROWS:,} steps of the window" if seen >= MAX_ROWS else None,
            "empty": None if out else f"No step{who} finished in this window."}


def _ns(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt
    return int(dt.timestamp() * 10**6) * 1000


def alert_section(engine: Engine, links: Links, w: Window, workflow: str | None) -> dict[str, Any]:
    """Alerts that fired in the window, resolved in it, or were still firing through it."""
    since = datetime.fromtimestamp(w.since_ns / 1e9, UTC)
    until = datetime.fromtimestamp(w.until_ns / 1e9, UTC)
    q = (select(alerts).where(alerts.c.starts_at <= until,
                              or_(alerts.c.status == "firing", and_(alerts.c.ends_at.is_not(None),
                                                                    alerts.c.ends_at >= since)))
         .order_by(alerts.c.starts_at.desc(), alerts.c.id.desc()).limit(MAX_ALERTS))
    if workflow:
        q = q.where(alerts.c.workflow == workflow)
    with engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
        ids = [r["id"] for r in rows]
        events: dict[int, list[dict[str, str]]] = {i: [] for i in ids}
        if ids:
            for e in conn.execute(select(alert_events).where(alert_events.c.alert_id.in_(ids))
                                  .order_by(alert_events.c.id)).mappings():
                at = _ns(e["at"])
                events[e["alert_id"]].append({"status": e["status"], "at": _iso(at) if at is not None else ""})
    out = []
    for r in rows:
        start = _ns(r["starts_at"]) or 0
        end = _ns(r["ends_at"]) if r["status"] == "resolved" else None
        ann = json.loads(r["annotations"] or "{}")
        wf = r["workflow"]
        span = Window(start, max(start + 1, min(end or w.until_ns, MAX_TIME_NS)))
        lk = {"runs while it fired": links.runs(span, wf, "error" if wf else None),
              "logs while it fired (Loki)": links.explore(_selector(workflow=wf, layer=r["layer"], level="error"),
                                                          span)}
        if _web_url(ann.get("dashboard_url")):
            lk["dashboard"] = ann["dashboard_url"]
        if _web_url(r["generator_url"]):
            lk["rule (Prometheus)"] = r["generator_url"]
        out.append({"alertname": r["alertname"], "severity": r["severity"], "workflow": wf, "layer": r["layer"],
                    "status": r["status"], "starts_at": _iso(start), "ends_at": _iso(end) if end else None,
                    "fired_in_window": w.since_ns <= start <= w.until_ns,
                    "resolved_in_window": end is not None and w.since_ns <= end <= w.until_ns,
                    "summary": ann.get("summary") or ann.get("description") or "", "history": events[r["id"]],
                    "links": lk})
    who = f" for workflow {workflow!r}" if workflow else ""
    return {"title": "Alerts fired and resolved", "rows": out,
            "fired": sum(a["fired_in_window"] for a in out), "resolved": sum(a["resolved_in_window"] for a in out),
            "still_firing": sum(a["status"] == "firing" for a in out), "link": links.alerts(workflow),
            "empty": None if out else f"No alert fired or resolved{who} in this window."}


def endpoint_section(store: RunStore, links: Links, w: Window, workflow: str | None) -> dict[str, Any]:
    """The endpoint inventory's gaps over the window (:meth:`RunStore.endpoint_report`): documented endpoints no
    server span reached, and routes the spans show that no inventory lists (those of ``workflow``'s traffic when
    one is given; an endpoint never called has no workflow, so all of them are listed). When this store has no
    endpoint inventory, the section says it is not available."""
    report_of: Callable[[int, int], Any] | None = getattr(store, "endpoint_report", None)
    base: dict[str, Any] = {"title": "Endpoint inventory gaps", "available": report_of is not None,
                            "never_called": [], "undocumented": [], "services_without_inventory": [],
                            "link": links.endpoints(w)}
    if report_of is None:
        base["empty"] = "Not available: this Flowscope has no endpoint inventory to compare traffic with."
        return base
    rep = report_of(w.since_ns, w.until_ns + 1)
    base["services_without_inventory"] = list(rep.services_without_inventory)
    base["documented"] = len(rep.endpoints)
    base["never_called"] = [{"service": u.service, "method": u.method, "path": u.path, "view": u.view,
                             "links": {"inventory": links.endpoints(w, u.service)}} for u in rep.never_called]
    base["undocumented"] = [
        {"service": u.service, "method": u.method, "path": u.path, "calls": u.calls, "errors": u.errors,
         "p95_ms": _r(u.p95_ms, 3), "workflows": list(u.workflows),
         "links": {"runs": links.runs(w, workflow or (u.workflows[0] if len(u.workflows) == 1 else None)),
                   "logs (Loki)": links.explore(_selector(service=u.service) + f" |= {_logql_str(u.path)}", w),
                   "logs (Flowscope)": links.logs(w, f"service:{_logql_str(u.service)} {_logql_str(u.path)}")}}
        for u in rep.undocumented if not workflow or workflow in u.workflows]
    if not rep.endpoints and not rep.undocumented:
        seen = ", ".join(rep.services_without_inventory)
        base["empty"] = ("No endpoint inventory is registered (POST " + c.ENDPOINTS_PATH + " or the SDK's route "
                         "discovery), so there is nothing to compare traffic with"
                         + (f"; services with HTTP traffic: {seen}." if seen else "."))
    elif not base["never_called"] and not base["undocumented"]:
        base["empty"] = ("No gap: every documented endpoint had traffic in this window, and all traffic went to "
                         "documented ones.")
    else:
        base["empty"] = None
    return base


def build_report(store: RunStore, spec: Spec | None, links: Links, w: Window, workflow: str | None = None,
                 spec_note: str | None = None, outcome_keys: tuple[str, ...] = c.ATTRIBUTION_OUTCOME_KEYS
                 ) -> dict[str, Any]:
    """The whole report (see the module docstring); ``spec`` None (with ``spec_note`` saying why) leaves the SLO
    section empty. Alerts and regression findings are read from the run store's database (one database)."""
    b = bins_of(w)
    sections = {
        "slo": slo_section(store, spec, spec_note, links, w, workflow, b),
        "regressions": regression_section(store.engine, links, w, workflow),
        "errors": error_section(store, links, w, workflow, b, outcome_keys),
        "steps": step_section(store, links, w, workflow, b),
        "alerts": alert_section(store.engine, links, w, workflow),
        "endpoints": endpoint_section(store, links, w, workflow),
    }
    return {"title": "Flowscope debugging report" + (f": {workflow}" if workflow else ""),
            "workflow": workflow, "since": _iso(w.since_ns), "until": _iso(w.until_ns), "since_ns": w.since_ns,
            "until_ns": w.until_ns, "bin_seconds": b.width_s, "public_url": links.public_url,
            "grafana_url": links.grafana_url, "sections": sections}
