"""Spec → Prometheus rule groups, ``promtool test rules`` cases, and YAML. All pure.

Thresholds become one alert per (layer, metric) and severity. SLOs follow the
multi-window, multi-burn-rate method of the Google SRE Workbook, ch. 5
("Alerting on SLOs"), over a 30-day budget: page at 14.4x over 1h with a 5m
short window, or 6x over 6h/30m; ticket at 3x over 1d/2h, or 1x over 3d/6h.
Recording rules hold the bad-event ratio per window, and each condition is
guarded by a minimum number of events in its long window, so a workflow with
three runs an hour never pages on two failures.

A default SLO names no workflow: its rules aggregate ``sum by (workflow)`` over
every workflow that reports runs (less those with their own SLO of its type),
so the shipped rules fit any deployment. Its absent-data alert covers only the
workflows seen in the last :data:`SEEN_WINDOW`; a named SLO's covers its workflow.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import yaml

from exporter import conventions as c
from exporter.metrics import float_to_go_string

from .spec import SLO, Spec, Threshold

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: (severity, [(burn factor, long window, short window)]) per the SRE Workbook's recommended table.
BURN_ALERTS = (
    (c.SEVERITY_CRITICAL, "page", ((14.4, "1h", "5m"), (6.0, "6h", "30m"))),
    (c.SEVERITY_WARNING, "ticket", ((3.0, "1d", "2h"), (1.0, "3d", "6h"))),
)
ABSENT_FOR = "10m"
#: How long a workflow counts as seen after its last series: a default-SLO workflow whose data stops is
#: reported for this long, then forgotten (a workflow renamed or retired stops alerting by itself).
SEEN_WINDOW = "6h"
#: The label that tells availability from latency SLOs on recording rules and alerts.
L_SLO_TYPE = "slo_type"
FAILED = "|".join(c.FAILED_STATUSES)

DASHBOARD_FOR_METRIC = {"response_time": c.DASHBOARD_LAYERS, "error_rate": c.DASHBOARD_ERRORS,
                        "hit_rate": c.DASHBOARD_LAYERS, "memory_usage": c.DASHBOARD_LAYERS,
                        "cpu_usage": c.DASHBOARD_LAYERS}


def _num(x: float) -> str:
    return f"{x:.6g}"


def _fmt_threshold(t: Threshold, v: float) -> str:
    if t.metric.unit == "duration":
        return f"{v * 1000:g}ms" if v < 1 else f"{v:g}s"
    return f"{v * 100:g}%"


# --- thresholds -------------------------------------------------------------------------------------


def threshold_expr(t: Threshold, rate_window: str) -> str:
    """The PromQL value a threshold compares (without the comparison)."""
    sel = f'layer="{t.layer}"'
    name = t.metric.name
    if name == "response_time":
        return (f"histogram_quantile(0.95, sum by ({c.L_WORKFLOW}, {c.L_LAYER}, le) "
                f"(rate({c.STEP_DURATION_SECONDS}_bucket{{{sel}}}[{rate_window}])))")
    if name == "error_rate":
        total = f"sum by ({c.L_WORKFLOW}, {c.L_LAYER}) (rate({c.STEP_DURATION_SECONDS}_count{{{sel}}}[{rate_window}]))"
        bad = (f"sum by ({c.L_WORKFLOW}, {c.L_LAYER}) "
               f"(rate({c.STEP_DURATION_SECONDS}_count{{{sel},status=~\"{FAILED}\"}}[{rate_window}]))")
        return f"{bad} / {total}"
    metric = {"hit_rate": c.CUSTOM_HIT_RATE, "memory_usage": c.CUSTOM_MEMORY_USAGE,
              "cpu_usage": c.CUSTOM_CPU_USAGE}[name]
    agg = "max" if t.metric.higher_is_worse else "min"
    return f"{agg} by ({c.L_LAYER}, {c.L_COMPONENT}) ({metric}{{{sel}}})"


def threshold_alert(spec: Spec, t: Threshold, severity: str) -> dict[str, Any]:
    value = t.warning if severity == c.SEVERITY_WARNING else t.critical
    op = ">" if t.metric.higher_is_worse else "<"
    per_workflow = t.metric.name in ("response_time", "error_rate")
    who = "{{ $labels.workflow }} in the " + t.layer + " layer" if per_workflow \
        else "{{ $labels.component }} in the " + t.layer + " layer"
    word = "above" if t.metric.higher_is_worse else "below"
    uid = DASHBOARD_FOR_METRIC[t.metric.name]
    link = f"{spec.grafana_url}/d/{uid}?var-layer={t.layer}"
    if per_workflow:
        link += "&var-workflow={{ $labels.workflow }}"
    return {
        "alert": t.metric.alert,
        "expr": f"{threshold_expr(t, spec.rate_window)} {op} {_num(value)}",
        "for": t.for_,
        "labels": {c.L_SEVERITY: severity, c.L_LAYER: t.layer},
        "annotations": {
            "summary": f"{t.metric.title} of {who} is {word} {_fmt_threshold(t, value)}",
            "description": (f"The {t.metric.title} of {who} has been {word} the {severity} threshold of "
                            f"{_fmt_threshold(t, value)} for {t.for_}."),
            "dashboard_url": link,
        },
    }


# --- SLOs -------------------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A PromQL string literal: workflow names come from instrumentation and may hold quotes or backslashes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _not_any_of(workflows: tuple[str, ...]) -> str:
    """``workflow!~"a|b"`` (Prometheus anchors the regex), or nothing when there is nothing to leave out."""
    if not workflows:
        return ""
    return f"{c.L_WORKFLOW}!~{quote('|'.join(re.escape(w) for w in workflows))}"


def _selector(*matchers: str) -> str:
    m = [x for x in matchers if x]
    return "{" + ",".join(m) + "}" if m else ""


def _slo_matcher(s: SLO) -> str:
    """A named SLO selects its workflow; a default selects every workflow but those with their own SLO."""
    return _not_any_of(s.except_workflows) if s.workflow is None else f"{c.L_WORKFLOW}={quote(s.workflow)}"


def slo_error_ratio_expr(s: SLO, window: str) -> str:
    """The bad-event ratio of one SLO over ``window``, per workflow."""
    by = f"sum by ({c.L_WORKFLOW})"
    wf = _slo_matcher(s)
    if s.type == "availability":
        total = f"{by} (rate({c.WORKFLOW_RUNS_TOTAL}{_selector(wf)}[{window}]))"
        bad = f"{by} (rate({c.WORKFLOW_RUNS_TOTAL}{_selector(wf, f'status=~{quote(FAILED)}')}[{window}]))"
        # `or 0 * total` makes the ratio 0, not empty, while every run succeeds.
        return f"({bad} or 0 * {total}) / {total}"
    if s.threshold_s is None:  # the spec gives every latency SLO its threshold
        raise ValueError(f"SLO {s.name}: a latency SLO without a threshold")
    le = float_to_go_string(s.threshold_s)
    fast = f"{by} (rate({c.WORKFLOW_DURATION_SECONDS}_bucket{_selector(wf, f'le={quote(le)}')}[{window}]))"
    total = f"{by} (rate({c.WORKFLOW_DURATION_SECONDS}_count{_selector(wf)}[{window}]))"
    return f"1 - ({fast} / {total})"


def slo_events_expr(s: SLO, window: str) -> str:
    metric = c.WORKFLOW_RUNS_TOTAL if s.type == "availability" else f"{c.WORKFLOW_DURATION_SECONDS}_count"
    return f"sum by ({c.L_WORKFLOW}) (increase({metric}{_selector(_slo_matcher(s))}[{window}]))"


def _slo_recording(s: SLO) -> list[dict[str, Any]]:
    labels = {c.L_SLO: s.name, L_SLO_TYPE: s.type}
    rules = [{"record": c.REC_SLO_ERROR_RATIO.format(window=w), "expr": slo_error_ratio_expr(s, w), "labels": labels}
             for w in WINDOWS]
    long_windows = sorted({lw for _, _, pairs in BURN_ALERTS for _, lw, _ in pairs}, key=WINDOWS.index)
    rules += [{"record": c.REC_SLO_EVENTS.format(window=w), "expr": slo_events_expr(s, w), "labels": labels}
              for w in long_windows]
    return rules


def slo_alerts(spec: Spec, s: SLO) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sel = f"{{{c.L_SLO}={quote(s.name)}}}"
    who = "{{ $labels.workflow }}" if s.is_default else s.workflow
    objective = f"{s.objective * 100:g}%"
    if s.is_default:
        objective = f"default objective {objective}, for every workflow without its own {s.type} SLO"
    else:
        objective = f"objective {objective}"
    for severity, kind, pairs in BURN_ALERTS:
        clauses = []
        for factor, long_w, short_w in pairs:
            limit = _num(factor * s.error_budget)
            clauses.append(
                f"({c.REC_SLO_ERROR_RATIO.format(window=long_w)}{sel} > {limit}"
                f" and {c.REC_SLO_ERROR_RATIO.format(window=short_w)}{sel} > {limit}"
                f" and {c.REC_SLO_EVENTS.format(window=long_w)}{sel} >= {s.min_events})")
        what = "success ratio" if s.type == "availability" else f"share of runs under {s.threshold_s:g}s"
        out.append({
            "alert": c.ALERT_SLO_BURN_RATE,
            "expr": "\n or ".join(clauses),
            "labels": {c.L_SEVERITY: severity, c.L_SLO: s.name, L_SLO_TYPE: s.type, "burn": kind},
            "annotations": {
                "summary": f"{who}: {s.type} SLO error budget burning fast ({kind})",
                "description": (f"The {what} of {who} is spending its 30-day error budget "
                                f"({objective}) at "
                                + " or ".join(f"{f:g}x over {lw}/{sw}" for f, lw, sw in pairs)
                                + f", with at least {s.min_events} runs in the long window."),
                "dashboard_url": f"{spec.grafana_url}/d/{c.DASHBOARD_OVERVIEW}?var-workflow={who}",
            },
        })
    return out


def absent_alert(spec: Spec, workflow: str) -> dict[str, Any]:
    """A workflow the spec names: no series for ABSENT_FOR fires, even if it never ran (it was declared)."""
    return {
        "alert": c.ALERT_WORKFLOW_DATA_ABSENT,
        "expr": f"absent({c.WORKFLOW_RUNS_TOTAL}{{{c.L_WORKFLOW}={quote(workflow)}}})",
        "for": ABSENT_FOR,
        "labels": {c.L_SEVERITY: c.SEVERITY_WARNING, c.L_WORKFLOW: workflow},
        "annotations": {
            "summary": f"No data for workflow {workflow}",
            "description": (f"{c.WORKFLOW_RUNS_TOTAL} has had no series for workflow {workflow} for {ABSENT_FOR}: "
                            "the exporter is down, not scraped, or the workflow stopped running. "
                            "Its SLO alerts cannot fire without data."),
            "dashboard_url": f"{spec.grafana_url}/d/{c.DASHBOARD_OVERVIEW}?var-workflow={workflow}",
        },
    }


def seen_absent_expr(spec: Spec) -> str:
    """Workflows with a series some time in the last SEEN_WINDOW and none now; never one that never ran.

    The named workflows are left out: their own ``absent()`` alert covers them.
    """
    seen = _selector(_not_any_of(spec.named_workflows))
    by = f"group by ({c.L_WORKFLOW})"
    return (f"{by} (max_over_time({c.WORKFLOW_RUNS_TOTAL}{seen}[{SEEN_WINDOW}]))"
            f"\n unless {by} ({c.WORKFLOW_RUNS_TOTAL})")


def seen_absent_alert(spec: Spec) -> dict[str, Any]:
    wf = "{{ $labels.workflow }}"
    return {
        "alert": c.ALERT_WORKFLOW_DATA_ABSENT,
        "expr": seen_absent_expr(spec),
        "for": ABSENT_FOR,
        "labels": {c.L_SEVERITY: c.SEVERITY_WARNING},
        "annotations": {
            "summary": f"No data for workflow {wf}",
            "description": (f"{c.WORKFLOW_RUNS_TOTAL} had series for workflow {wf} in the last {SEEN_WINDOW} "
                            f"and has had none for {ABSENT_FOR}: the exporter is down, not scraped, or restarted "
                            f"and the workflow has not run since. Its default SLO alerts cannot fire without data; "
                            f"the alert ends by itself {SEEN_WINDOW} after the last data."),
            "dashboard_url": f"{spec.grafana_url}/d/{c.DASHBOARD_OVERVIEW}?var-workflow={wf}",
        },
    }


def regression_alert(spec: Spec) -> dict[str, Any]:
    """Fires while statistical detection (flowscope detect / the backend's schedule) reports a regression."""
    by = f"query, {c.L_WORKFLOW}, {c.L_LAYER}, {c.L_COMPONENT}, {c.L_DETECTOR}"
    return {
        "alert": c.ALERT_REGRESSION_DETECTED,
        "expr": f'max by ({by}) ({c.REGRESSION_ACTIVE}{{direction="regression"}}) == 1',
        "labels": {c.L_SEVERITY: c.SEVERITY_WARNING},
        "annotations": {
            "summary": "Regression in {{ $labels.query }} of {{ $labels.workflow }} ({{ $labels.detector }})",
            "description": ("Statistical detection found a lasting change for the worse in {{ $labels.query }} "
                            "(workflow {{ $labels.workflow }}, layer {{ $labels.layer }}, component "
                            "{{ $labels.component }}); see GET /api/v1/regressions for the change point, "
                            "levels and p-values."),
            "dashboard_url": f"{spec.grafana_url}/d/{c.DASHBOARD_ALERTS}?var-workflow={{{{ $labels.workflow }}}}",
        },
    }


def prom_seconds(duration: str) -> float:
    """Seconds in a Prometheus duration (``1d12h``, ``90m``)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def endpoint_no_traffic_alert(spec: Spec) -> dict[str, Any]:
    """A documented endpoint (the inventory's gauge, :mod:`backend.endpoints.metrics`) whose last call is longer ago
    than ``endpoints.no_traffic_for``. The gauge floors a call-less endpoint at its registration, so a new endpoint
    gets the full time before it counts as unused."""
    idle = spec.endpoint_no_traffic_for
    if idle is None:
        raise ValueError("the spec sets no endpoints.no_traffic_for")
    by = f"{c.L_SERVICE}, {c.L_METHOD}, {c.L_ROUTE}"
    who = "{{ $labels.method }} {{ $labels.route }} of {{ $labels.service }}"
    return {
        "alert": c.ALERT_ENDPOINT_NO_TRAFFIC,
        "expr": f"time() - max by ({by}) ({c.ENDPOINT_LAST_CALL_TIMESTAMP}) > {_num(prom_seconds(idle))}",
        "for": spec.for_,
        "labels": {c.L_SEVERITY: c.SEVERITY_WARNING},
        "annotations": {
            "summary": f"{who} has had no traffic for {idle}",
            "description": (f"The documented endpoint {who} has had no call in the server spans for more than "
                            f"{idle} (since it was registered, if it never had one): dead code, a client that "
                            f"stopped calling it, or routing that no longer reaches it. See {c.ENDPOINTS_PAGE_PATH}."),
            "dashboard_url": f"{spec.grafana_url}/d/{c.DASHBOARD_OVERVIEW}",
        },
    }


class SelfAlert(NamedTuple):
    """One of Flowscope's alerts on itself (:data:`SELF_ALERTS`)."""

    alert: str
    #: the counter of what was lost, by ``reason``
    dropped: str
    #: the counters of what came in, summed (the lost included)
    came_in: tuple[str, ...]
    #: labels beyond ``job`` and ``instance`` the ratio is kept by
    extra: tuple[str, ...]
    #: what loses, for the summary; and what happened, for the description
    who: str
    what: str


SELF_ALERTS = (
    SelfAlert(c.ALERT_RUN_STORE_DROPPING, c.RUN_STORE_DROPPED_TOTAL, (c.RUN_STORE_WRITTEN_TOTAL,
                                                                     c.RUN_STORE_DROPPED_TOTAL), (), "The run store",
              "the run store did not keep spans and records it was handed (shed_runs: whole runs left out because "
              "the writer is behind; the store's pace is in the README's Scale section)"),
    SelfAlert(c.ALERT_LOKI_DROPPING, c.LOKI_LINES_DROPPED_TOTAL, (c.LOKI_LINES_SENT_TOTAL, c.LOKI_LINES_DROPPED_TOTAL),
              (), "Pushing to Loki", "log lines were given up on instead of pushed to Loki"),
    SelfAlert(c.ALERT_FORWARD_DROPPING, c.FORWARD_DROPPED_TOTAL, (c.FORWARD_SENT_TOTAL, c.FORWARD_DROPPED_TOTAL),
              (c.L_DESTINATION,), "Forwarding to {{ $labels.destination }}",
              "received OTLP requests were given up on instead of forwarded"),
)


def loss_ratio(entry: SelfAlert, window: str) -> str:
    """PromQL: the share of what came in that ``entry`` lost over ``window``, per scraped process and reason (and
    destination)."""
    on = ", ".join(("job", "instance", *entry.extra))
    # one selector for every counter of what came in: a sum of two would be empty where one has no series yet
    # (nothing sent since start, say), and then so would the alert
    came = entry.came_in[0] if len(entry.came_in) == 1 else "{__name__=~" + quote("|".join(entry.came_in)) + "}"
    return (f"sum by ({on}, {c.L_REASON}) (rate({entry.dropped}[{window}])) / on ({on}) group_left "
            f"sum by ({on}) (rate({came}[{window}]))")


def self_alerts(spec: Spec) -> list[dict[str, Any]]:
    """Flowscope losing what it received: more than :data:`~exporter.conventions.SELF_DROP_RATIO` of it over the
    rate window, per scraped process and reason (and destination), for ``defaults.for``. Every loss is counted
    (``*_dropped_total{reason}``); these make a lasting one reach someone."""
    out = []
    w = spec.rate_window
    for entry in SELF_ALERTS:
        where = "{{ $labels.instance }}" + "".join(f" {{{{ $labels.{x} }}}}" for x in entry.extra)
        out.append({
            "alert": entry.alert,
            "expr": f"{loss_ratio(entry, w)} > {_num(c.SELF_DROP_RATIO)}",
            "for": spec.for_,
            "labels": {c.L_SEVERITY: c.SEVERITY_WARNING},
            "annotations": {
                "summary": f"{entry.who} is losing data on {{{{ $labels.instance }}}} ({{{{ $labels.reason }}}})",
                "description": (f"Over {w}, more than {c.SELF_DROP_RATIO:.0%} of what came in was lost on {where}: "
                                f"{entry.what}; reason {{{{ $labels.reason }}}}. See {entry.dropped}."),
                "dashboard_url": f"{spec.grafana_url}/d/{c.DASHBOARD_OVERVIEW}",
            },
        })
    return out


def rule_groups(spec: Spec) -> dict[str, Any]:
    """The whole Prometheus rule file as a dict, in a fixed order."""
    groups = []
    if spec.thresholds:
        groups.append({"name": c.RULE_GROUP_THRESHOLDS, "rules": [
            threshold_alert(spec, t, sev) for t in spec.thresholds for sev in (c.SEVERITY_WARNING,
                                                                                c.SEVERITY_CRITICAL)]})
    if spec.slos:
        groups.append({"name": c.RULE_GROUP_SLO_RECORDING, "rules": [r for s in spec.slos for r in _slo_recording(s)]})
        absent = [absent_alert(spec, w) for w in spec.named_workflows]
        if spec.has_defaults:
            absent.append(seen_absent_alert(spec))
        groups.append({"name": c.RULE_GROUP_SLO_ALERTS,
                       "rules": [a for s in spec.slos for a in slo_alerts(spec, s)] + absent})
    groups.append({"name": c.RULE_GROUP_REGRESSIONS, "rules": [regression_alert(spec)]})
    if spec.endpoint_no_traffic_for is not None:
        groups.append({"name": c.RULE_GROUP_ENDPOINTS, "rules": [endpoint_no_traffic_alert(spec)]})
    groups.append({"name": c.RULE_GROUP_SELF, "rules": self_alerts(spec)})
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# Generated by `flowscope rules build` from {source}. Do not edit: edit the spec and rebuild.\n"


def to_yaml(doc: Any, source: str) -> str:
    """Deterministic YAML: insertion order, no line folding, the same bytes every run."""
    return HEADER.format(source=source) + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=10_000,
                                                    default_flow_style=False, allow_unicode=True)
