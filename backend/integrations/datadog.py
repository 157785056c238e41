"""Datadog monitors, SLOs and dashboards from the alert spec and the Grafana panel definitions. Pure.

Every object is built with the typed models of ``datadog-api-client`` (as the Grafana side uses
grafana-foundation-sdk), which check types and enums as they are built; the JSON written is the models'
``to_dict()``, the request body the API takes::

    monitors(spec)       # [Monitor, ...]: one per threshold (warning and critical in one), burn pair, absence
    slos(spec)           # [ServiceLevelObjectiveRequest, ...]: the availability SLOs
    dashboards(spec)     # {uid: Dashboard}: the overview and layers views

An SLO burn-rate monitor names its SLO by :func:`slo_ref` (``slo-ref:<SLO name>``); ``push`` replaces it
with the SLO's id once the SLO exists. What has no Datadog equivalent is listed by :func:`unmapped`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.dashboard_layout_type import DashboardLayoutType
from datadog_api_client.v1.model.dashboard_template_variable import DashboardTemplateVariable
from datadog_api_client.v1.model.group_widget_definition import GroupWidgetDefinition
from datadog_api_client.v1.model.group_widget_definition_type import GroupWidgetDefinitionType
from datadog_api_client.v1.model.heat_map_widget_definition import HeatMapWidgetDefinition
from datadog_api_client.v1.model.heat_map_widget_definition_type import HeatMapWidgetDefinitionType
from datadog_api_client.v1.model.heat_map_widget_request import HeatMapWidgetRequest
from datadog_api_client.v1.model.monitor import Monitor
from datadog_api_client.v1.model.monitor_options import MonitorOptions
from datadog_api_client.v1.model.monitor_thresholds import MonitorThresholds
from datadog_api_client.v1.model.monitor_type import MonitorType
from datadog_api_client.v1.model.query_value_widget_definition import QueryValueWidgetDefinition
from datadog_api_client.v1.model.query_value_widget_definition_type import QueryValueWidgetDefinitionType
from datadog_api_client.v1.model.query_value_widget_request import QueryValueWidgetRequest
from datadog_api_client.v1.model.service_level_objective_query import ServiceLevelObjectiveQuery
from datadog_api_client.v1.model.service_level_objective_request import ServiceLevelObjectiveRequest
from datadog_api_client.v1.model.slo_threshold import SLOThreshold
from datadog_api_client.v1.model.slo_timeframe import SLOTimeframe
from datadog_api_client.v1.model.slo_type import SLOType
from datadog_api_client.v1.model.timeseries_widget_definition import TimeseriesWidgetDefinition
from datadog_api_client.v1.model.timeseries_widget_definition_type import TimeseriesWidgetDefinitionType
from datadog_api_client.v1.model.timeseries_widget_request import TimeseriesWidgetRequest
from datadog_api_client.v1.model.toplist_widget_definition import ToplistWidgetDefinition
from datadog_api_client.v1.model.toplist_widget_definition_type import ToplistWidgetDefinitionType
from datadog_api_client.v1.model.toplist_widget_request import ToplistWidgetRequest
from datadog_api_client.v1.model.widget import Widget
from datadog_api_client.v1.model.widget_display_type import WidgetDisplayType
from datadog_api_client.v1.model.widget_layout_type import WidgetLayoutType
from datadog_api_client.v1.model.widget_marker import WidgetMarker

from backend.rules.generate import ABSENT_FOR
from backend.rules.spec import SLO, Spec, Threshold
from exporter import conventions as c

from .alerts import Alert, alerts, templates
from .scrape import dd

#: Datadog's burn-rate alerts take a long window of at most 48 hours.
MAX_BURN_LONG_WINDOW_S = 48 * 3600
SLO_TIMEFRAME = "30d"
FAILED = c.FAILED_STATUSES
_DURATION = re.compile(r"^(\d+)(m|h|d)$")
_SECONDS = {"m": 60, "h": 3600, "d": 86400}


#: The thresholdable gauges an app records (PerformanceMonitor.record_metric), by the spec's metric name.
CUSTOM = {"hit_rate": c.CUSTOM_HIT_RATE, "memory_usage": c.CUSTOM_MEMORY_USAGE, "cpu_usage": c.CUSTOM_CPU_USAGE}


def enum(cls: Any, value: str) -> Any:
    """One of the client's enum models; a value it does not list is refused here (the client would take it)."""
    if value not in cls.allowed_values:
        raise ValueError(f"{cls.__name__}: {value!r} is not one of {sorted(cls.allowed_values)}")
    return cls(value)


def as_dict(model: Any) -> dict[str, Any]:
    """A model as the JSON body the API takes."""
    out: dict[str, Any] = model.to_dict()
    return out


def seconds(window: str) -> int:
    m = _DURATION.match(window)
    if m is None:
        raise ValueError(f"not a whole-unit duration: {window!r}")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def slo_name(s: SLO) -> str:
    return f"{c.INTEGRATION_NAME_PREFIX}SLO · {s.name}"


SLO_REF_PREFIX = "slo-ref:"


def slo_ref(s: SLO) -> str:
    """What a burn-rate monitor's query holds in place of its SLO's id until push knows the id."""
    return SLO_REF_PREFIX + slo_name(s)


def _tags(a: Alert) -> list[str]:
    return sorted({c.DATADOG_MANAGED_TAG, f"alertname:{a.prometheus_alert}", *(f"{k}:{v}" for k, v in a.tags)})


def _not_failed() -> str:
    return ",".join(f"!{c.L_STATUS}:{s}" for s in FAILED)


def _failed() -> str:
    return f"{c.L_STATUS} IN ({','.join(FAILED)})"


def _scope(*filters: str) -> str:
    f = [x for x in filters if x]
    return "{" + ",".join(f) + "}" if f else "{*}"


def threshold_query(t: Threshold, window: str, critical: float) -> str:
    """The monitor query of one threshold, compared with its critical value (Datadog puts it in the query)."""
    layer = f"{c.L_LAYER}:{t.layer}"
    op = ">" if t.metric.higher_is_worse else "<"
    name = t.metric.name
    if name == "response_time":
        by = f"{{{c.L_WORKFLOW},{c.L_LAYER}}}"
        return f"percentile(last_{window}):p95:{dd(c.STEP_DURATION_SECONDS)}{_scope(layer)} by {by} {op} {critical:g}"
    if name == "error_rate":
        by = f"{{{c.L_WORKFLOW},{c.L_LAYER}}}"
        count = dd(c.STEP_DURATION_SECONDS, ".count")
        return (f"sum(last_{window}):sum:{count}{{{layer} AND {_failed()}}} by {by}.as_count() / "
                f"sum:{count}{_scope(layer)} by {by}.as_count() {op} {critical:g}")
    metric = CUSTOM[name]
    # Prometheus' `for:` holds the condition for a while: at all times in the window is min (above) / max (below).
    held, agg = ("min", "max") if t.metric.higher_is_worse else ("max", "min")
    return (f"{held}(last_{t.for_}):{agg}:{dd(metric)}{_scope(layer)} by {{{c.L_LAYER},{c.L_COMPONENT}}} "
            f"{op} {critical:g}")


def _message(a: Alert) -> str:
    dd_template = "{{{{{0}.name}}}}"
    lines = []
    for sev in a.severities:
        block = "is_alert" if sev.severity == c.SEVERITY_CRITICAL or len(a.severities) == 1 else "is_warning"
        lines.append(f"{{{{#{block}}}}}[{sev.severity}] {templates(sev.summary, dd_template)}{{{{/{block}}}}}")
    lines += ["", templates(a.description, dd_template), "", f"Runbook: {templates(a.runbook_url, dd_template)}"]
    return "\n".join(lines)


def _priority(a: Alert) -> int | None:
    sevs = {s.severity for s in a.severities}
    if sevs == {c.SEVERITY_CRITICAL}:
        return 1
    if sevs == {c.SEVERITY_WARNING}:
        return 3
    return None  # warning and critical thresholds in one monitor


def _monitor(a: Alert, type_: str, query: str, options: MonitorOptions) -> Monitor:
    kw: dict[str, Any] = {}
    if (p := _priority(a)) is not None:
        kw["priority"] = p
    return Monitor(name=a.name, type=enum(MonitorType, type_), query=query, message=_message(a), tags=_tags(a),
                   options=options, **kw)


def monitor_for(spec: Spec, a: Alert) -> Monitor | None:
    """The monitor of one alert, or None when Datadog has no equivalent (see :func:`unmapped`)."""
    if a.kind == "threshold" and a.threshold is not None:
        t = a.threshold
        window = spec.rate_window if t.metric.name in ("response_time", "error_rate") else t.for_
        return _monitor(a, "query alert", threshold_query(t, window, t.critical), MonitorOptions(
            thresholds=MonitorThresholds(warning=t.warning, critical=t.critical), notify_no_data=False,
            require_full_window=False, include_tags=True))
    if a.kind == "slo_burn" and a.slo is not None and a.burn is not None:
        if a.slo.type != "availability" or seconds(a.burn.long_window) > MAX_BURN_LONG_WINDOW_S:
            return None
        b = a.burn
        query = (f'burn_rate("{slo_ref(a.slo)}").over("{SLO_TIMEFRAME}").long_window("{b.long_window}")'
                 f'.short_window("{b.short_window}") > {b.factor:g}')
        return _monitor(a, "slo alert", query, MonitorOptions(thresholds=MonitorThresholds(critical=b.factor)))
    runs = dd(c.WORKFLOW_RUNS_TOTAL, ".count")
    if a.kind == "absent":
        minutes = seconds(ABSENT_FOR) // 60
        if a.workflow is not None:
            scope, by = _scope(f"{c.L_WORKFLOW}:{a.workflow}"), ""
        else:
            scope = _scope(*(f"!{c.L_WORKFLOW}:{w}" for w in spec.named_workflows))
            by = f" by {{{c.L_WORKFLOW}}}"
        # Never true on data: only the absence of data (notify_no_data) alerts, as Prometheus' absent(); Datadog
        # wants no_data_timeframe at least twice the evaluation window.
        window = f"{max(1, minutes // 2)}m"
        return _monitor(a, "query alert", f"sum(last_{window}):sum:{runs}{scope}{by}.as_count() < 0",
                        MonitorOptions(thresholds=MonitorThresholds(critical=0.0), notify_no_data=True,
                                       no_data_timeframe=minutes, require_full_window=False))
    if a.kind == "regression":
        by = ",".join(("query", c.L_WORKFLOW, c.L_LAYER, c.L_COMPONENT, c.L_DETECTOR))
        return _monitor(a, "query alert", f"max(last_5m):max:{dd(c.REGRESSION_ACTIVE)}{{direction:regression}} "
                        f"by {{{by}}} >= 1", MonitorOptions(thresholds=MonitorThresholds(critical=1.0),
                                                            notify_no_data=False, require_full_window=False))
    raise ValueError(f"unknown alert kind {a.kind!r}")


def monitors(spec: Spec) -> list[Monitor]:
    return [m for a in alerts(spec) if (m := monitor_for(spec, a)) is not None]


def slo_for(s: SLO) -> ServiceLevelObjectiveRequest | None:
    """A metric (count) SLO: good runs over all runs, per workflow for a default objective."""
    if s.type != "availability":
        return None
    runs = dd(c.WORKFLOW_RUNS_TOTAL, ".count")
    if s.workflow is None:
        scope = [f"!{c.L_WORKFLOW}:{w}" for w in s.except_workflows]
        by = f" by {{{c.L_WORKFLOW}}}"
        who = f"every workflow without its own {s.type} SLO"
    else:
        scope, by, who = [f"{c.L_WORKFLOW}:{s.workflow}"], "", f"workflow {s.workflow}"
    target = round(s.objective * 100, 6)
    return ServiceLevelObjectiveRequest(
        name=slo_name(s), type=enum(SLOType, "metric"),
        description=f"Flowscope {s.type} objective {target:g}% over {SLO_TIMEFRAME} for {who} "
                    f"(alert spec SLO {s.name}).",
        query=ServiceLevelObjectiveQuery(numerator=f"sum:{runs}{_scope(*scope, _not_failed())}{by}.as_count()",
                                         denominator=f"sum:{runs}{_scope(*scope)}{by}.as_count()"),
        thresholds=[SLOThreshold(target=target, timeframe=enum(SLOTimeframe, SLO_TIMEFRAME))],
        target_threshold=target, timeframe=enum(SLOTimeframe, SLO_TIMEFRAME),
        tags=sorted({c.DATADOG_MANAGED_TAG, f"{c.L_SLO}:{s.name}", f"slo_type:{s.type}"}))


def slos(spec: Spec) -> list[ServiceLevelObjectiveRequest]:
    return [o for s in spec.slos if (o := slo_for(s)) is not None]


# --- dashboards: the Grafana panels, translated where the concepts map -------------------------------

WF = "$workflow"  # template variables with a prefix expand to workflow:<value>
LAYER = "$layer"
_THRESHOLD_PANEL = re.compile(r"^(\w+): p95 step latency vs thresholds$")


@dataclass(frozen=True)
class Unmapped:
    """A Grafana panel or an alerting feature with no Datadog equivalent, and why."""

    where: str
    what: str
    why: str


def _ts(title: str, *queries: str, markers: list[WidgetMarker] | None = None) -> TimeseriesWidgetDefinition:
    kw: dict[str, Any] = {"markers": markers} if markers else {}
    return TimeseriesWidgetDefinition(
        title=title, type=enum(TimeseriesWidgetDefinitionType, "timeseries"),
        requests=[TimeseriesWidgetRequest(q=q, display_type=enum(WidgetDisplayType, "line")) for q in queries], **kw)


def _quantiles(title: str, name: str, scope: str, by: str) -> TimeseriesWidgetDefinition:
    return _ts(title, *(f"{p}:{dd(name)}{scope} by {{{by}}}" for p in ("p50", "p95", "p99")))


def _panel(spec: Spec, p: dict[str, Any]) -> Any:
    """The Datadog widget definition of one Grafana panel, or a reason string when there is none."""
    title = p.get("title", "")
    runs = dd(c.WORKFLOW_RUNS_TOTAL, ".count")
    steps = c.STEP_DURATION_SECONDS
    if any(t.get("datasource", {}).get("type") == "loki" for t in p.get("targets", [])):
        return "reads Loki log lines: Datadog reads logs from its own log pipeline, not from Loki"
    table: dict[str, Callable[[], Any]] = {
        "Runs per second": lambda: _ts(title, f"sum:{runs}{{{WF}}} by {{{c.L_WORKFLOW}}}.as_rate()"),
        "Error ratio": lambda: _ts(title, f"sum:{runs}{{{WF} AND {_failed()}}} by {{{c.L_WORKFLOW}}}.as_count() / "
                                          f"sum:{runs}{{{WF}}} by {{{c.L_WORKFLOW}}}.as_count()"),
        "Runs in progress": lambda: QueryValueWidgetDefinition(
            title=title, type=enum(QueryValueWidgetDefinitionType, "query_value"),
            requests=[QueryValueWidgetRequest(q=f"sum:{dd(c.WORKFLOWS_IN_PROGRESS)}{{{WF}}}")]),
        "Run duration p50 / p95 / p99": lambda: _quantiles(title, c.WORKFLOW_DURATION_SECONDS, f"{{{WF}}}",
                                                           c.L_WORKFLOW),
        "Step latency by layer": lambda: _quantiles(title, steps, f"{{{WF},{LAYER}}}", c.L_LAYER),
        "Step latency heatmap": lambda: HeatMapWidgetDefinition(
            title=title, type=enum(HeatMapWidgetDefinitionType, "heatmap"),
            requests=[HeatMapWidgetRequest(q=f"avg:{dd(steps)}{{{WF},{LAYER}}}")]),
        "Slowest component / operation (p95, top 10)": lambda: ToplistWidgetDefinition(
            title=title, type=enum(ToplistWidgetDefinitionType, "toplist"), requests=[ToplistWidgetRequest(
                q=f"top(p95:{dd(steps)}{{{WF},{LAYER}}} by {{{c.L_LAYER},{c.L_COMPONENT},{c.L_OPERATION}}}, "
                  f"10, 'mean', 'desc')")]),
        "Slow queries and N+1 patterns": lambda: _ts(
            title, f"sum:{dd(c.QUERY_PATTERNS_TOTAL, '.count')}{{{WF}}} by {{{c.L_WORKFLOW},{c.L_KIND}}}.as_rate()"),
    }
    if title in table:
        return table[title]()
    if title == "SLO burn rate":
        return ("reads the SLO recording rules (Prometheus-only); Datadog shows each SLO's burn rate on the SLO's "
                "own page and alerts on it with the generated burn-rate monitors")
    m = _THRESHOLD_PANEL.match(title)
    if m:
        t = next(t for t in spec.thresholds if t.layer == m.group(1) and t.metric.name == "response_time")
        return _ts(title, f"p95:{dd(steps)}{{{WF},{c.L_LAYER}:{t.layer}}} by {{{c.L_WORKFLOW}}}", markers=[
            WidgetMarker(value=f"y = {t.warning:g}", display_type="warning dashed", label="warning"),
            WidgetMarker(value=f"y = {t.critical:g}", display_type="error dashed", label="critical")])
    return f"no Datadog translation is defined for the panel type {p.get('type')!r}"


#: The Grafana dashboards with a Datadog counterpart.
DASHBOARDS = (c.DASHBOARD_OVERVIEW, c.DASHBOARD_LAYERS)


def _dashboard(spec: Spec, grafana: dict[str, Any], skipped: list[Unmapped]) -> Dashboard:
    groups: list[tuple[str, list[Widget]]] = []
    for p in grafana.get("panels", []):
        if p.get("type") == "row":
            groups.append((p["title"], []))
            continue
        if not groups:
            groups.append(("", []))
        got = _panel(spec, p)
        if isinstance(got, str):
            skipped.append(Unmapped(f"dashboard {grafana['uid']}", f"panel “{p.get('title')}”", got))
        else:
            groups[-1][1].append(Widget(definition=got))
    widgets = [Widget(definition=GroupWidgetDefinition(
        title=title, type=enum(GroupWidgetDefinitionType, "group"), layout_type=enum(WidgetLayoutType, "ordered"),
        widgets=ws)) for title, ws in groups if ws]
    return Dashboard(
        title=f"{c.INTEGRATION_NAME_PREFIX}{grafana['title'].removeprefix('Flowscope · ')}",
        description=f"{grafana.get('description', '')} Generated by `flowscope integrations build` from the "
                    f"Grafana dashboard {grafana['uid']}.",
        layout_type=enum(DashboardLayoutType, "ordered"), widgets=widgets,
        template_variables=[DashboardTemplateVariable(name=c.L_WORKFLOW, prefix=c.L_WORKFLOW, default="*"),
                            DashboardTemplateVariable(name=c.L_LAYER, prefix=c.L_LAYER, default="*")],
        tags=["team:flowscope"])


def dashboards(spec: Spec, grafana: dict[str, dict[str, Any]]) -> tuple[dict[str, Dashboard], list[Unmapped]]:
    """``grafana``: ``backend.dashboards.build.dashboards(spec)``; returns {uid: Dashboard} and what was left out."""
    skipped: list[Unmapped] = []
    return {uid: _dashboard(spec, grafana[uid], skipped) for uid in DASHBOARDS}, skipped


def unmapped(spec: Spec) -> list[Unmapped]:
    """The alerting features of the spec that Datadog cannot express, and why (the dashboards add theirs)."""
    out = []
    for a in alerts(spec):
        if a.kind == "slo_burn" and a.slo is not None and a.burn is not None and monitor_for(spec, a) is None:
            why = ("latency SLOs: Datadog distributions keep no per-bucket counts, so 'runs under the threshold' "
                   "has no count query" if a.slo.type != "availability" else
                   f"Datadog's burn-rate alerts take a long window of at most 48h, this one is {a.burn.long_window}")
            out.append(Unmapped("Datadog monitors", a.name, why))
    for s in spec.slos:
        if slo_for(s) is None:
            out.append(Unmapped("Datadog SLOs", slo_name(s), "latency SLOs: no count query (see above)"))
    if any(s.min_events > 1 for s in spec.slos):
        out.append(Unmapped("Datadog monitors", "min_events of the SLOs",
                            "a burn-rate monitor has no minimum-event guard: a workflow with few runs can alert "
                            "on one failure"))
    out.append(Unmapped("Datadog dashboards", "exemplars on latency panels",
                        "Datadog distributions carry no exemplars; the openmetrics check asks for none"))
    return out
