"""Spec → Prometheus rule groups, ``promtool test rules`` cases, and YAML. All pure.

Thresholds become one alert per (layer, metric) and severity. SLOs follow the
multi-window, multi-burn-rate method of the Google SRE Workbook, ch. 5
("Alerting on SLOs"), over a 30-day budget: page at 14.4x over 1h with a 5m
short window, or 6x over 6h/30m; ticket at 3x over 1d/2h, or 1x over 3d/6h.
Recording rules hold the bad-event ratio per window, and each condition is
guarded by a minimum number of events in its long window, so a workflow with
three runs an hour never pages on two failures.
"""

from __future__ import annotations

from typing import Any

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


def _threshold_alert(spec: Spec, t: Threshold, severity: str) -> dict:
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


def _slo_selector(s: SLO) -> str:
    return f'{c.L_WORKFLOW}="{s.workflow}"'


def slo_error_ratio_expr(s: SLO, window: str) -> str:
    """The bad-event ratio of one SLO over ``window``."""
    by = f"sum by ({c.L_WORKFLOW})"
    sel = _slo_selector(s)
    if s.type == "availability":
        total = f"{by} (rate({c.WORKFLOW_RUNS_TOTAL}{{{sel}}}[{window}]))"
        bad = f"{by} (rate({c.WORKFLOW_RUNS_TOTAL}{{{sel},status=~\"{FAILED}\"}}[{window}]))"
        # `or 0 * total` makes the ratio 0, not empty, while every run succeeds.
        return f"({bad} or 0 * {total}) / {total}"
    le = float_to_go_string(s.threshold_s)
    fast = f"{by} (rate({c.WORKFLOW_DURATION_SECONDS}_bucket{{{sel},le=\"{le}\"}}[{window}]))"
    total = f"{by} (rate({c.WORKFLOW_DURATION_SECONDS}_count{{{sel}}}[{window}]))"
    return f"1 - ({fast} / {total})"


def slo_events_expr(s: SLO, window: str) -> str:
    metric = c.WORKFLOW_RUNS_TOTAL if s.type == "availability" else f"{c.WORKFLOW_DURATION_SECONDS}_count"
    return f"sum by ({c.L_WORKFLOW}) (increase({metric}{{{_slo_selector(s)}}}[{window}]))"


def _slo_recording(s: SLO) -> list[dict]:
    labels = {c.L_SLO: s.name}
    rules = [{"record": c.REC_SLO_ERROR_RATIO.format(window=w), "expr": slo_error_ratio_expr(s, w), "labels": labels}
             for w in WINDOWS]
    long_windows = sorted({lw for _, _, pairs in BURN_ALERTS for _, lw, _ in pairs}, key=WINDOWS.index)
    rules += [{"record": c.REC_SLO_EVENTS.format(window=w), "expr": slo_events_expr(s, w), "labels": labels}
              for w in long_windows]
    return rules


def _slo_alerts(spec: Spec, s: SLO) -> list[dict]:
    out = []
    sel = f'{{{c.L_SLO}="{s.name}"}}'
    for severity, kind, pairs in BURN_ALERTS:
        clauses = []
        for factor, long_w, short_w in pairs:
            limit = _num(factor * s.error_budget)
            clauses.append(
                f"({c.REC_SLO_ERROR_RATIO.format(window=long_w)}{sel} > {limit}"
                f" and {c.REC_SLO_ERROR_RATIO.format(window=short_w)}{sel} > {limit}"
                f" and {c.REC_SLO_EVENTS.format(window=long_w)}{sel} >= {s.min_events})")
        what = "success ratio" if s.type == "availability" else f"share of runs under {s.threshold_s:g}s"
        objective = f"{s.objective * 100:g}%"
        out.append({
            "alert": c.ALERT_SLO_BURN_RATE,
            "expr": "\n or ".join(clauses),
            "labels": {c.L_SEVERITY: severity, c.L_SLO: s.name, "slo_type": s.type, "burn": kind},
            "annotations": {
                "summary": f"{s.workflow}: {s.type} SLO error budget burning fast ({kind})",
                "description": (f"The {what} of {s.workflow} is spending its 30-day error budget "
                                f"(objective {objective}) at "
                                + " or ".join(f"{f:g}x over {lw}/{sw}" for f, lw, sw in pairs)
                                + f", with at least {s.min_events} runs in the long window."),
                "dashboard_url": f"{spec.grafana_url}/d/{c.DASHBOARD_OVERVIEW}?var-workflow={s.workflow}",
            },
        })
    return out


def _absent_alert(spec: Spec, workflow: str) -> dict:
    return {
        "alert": c.ALERT_WORKFLOW_DATA_ABSENT,
        "expr": f'absent({c.WORKFLOW_RUNS_TOTAL}{{{c.L_WORKFLOW}="{workflow}"}})',
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


def regression_alert(spec: Spec) -> dict:
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


def rule_groups(spec: Spec) -> dict[str, Any]:
    """The whole Prometheus rule file as a dict, in a fixed order."""
    groups = []
    if spec.thresholds:
        groups.append({"name": c.RULE_GROUP_THRESHOLDS, "rules": [
            _threshold_alert(spec, t, sev) for t in spec.thresholds for sev in (c.SEVERITY_WARNING,
                                                                                c.SEVERITY_CRITICAL)]})
    if spec.slos:
        groups.append({"name": c.RULE_GROUP_SLO_RECORDING, "rules": [r for s in spec.slos for r in _slo_recording(s)]})
        workflows = sorted({s.workflow for s in spec.slos})
        groups.append({"name": c.RULE_GROUP_SLO_ALERTS, "rules": [a for s in spec.slos for a in _slo_alerts(spec, s)]
                       + [_absent_alert(spec, w) for w in workflows]})
    groups.append({"name": c.RULE_GROUP_REGRESSIONS, "rules": [regression_alert(spec)]})
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, data: str):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)

HEADER = "# Generated by `flowscope rules build` from {source}. Do not edit: edit the spec and rebuild.\n"


def to_yaml(doc: Any, source: str) -> str:
    """Deterministic YAML: insertion order, no line folding, the same bytes every run."""
    return HEADER.format(source=source) + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=10_000,
                                                    default_flow_style=False, allow_unicode=True)
