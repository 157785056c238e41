"""Shared pieces: datasource refs, variables, the default timeseries and query helpers.

Layout is decided by the dashboards themselves (rows of 24 columns); every
query reads its names from ``exporter.conventions``.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, loki, prometheus, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

from exporter import conventions as c

PROM = DataSourceRef(type_val="prometheus", uid="${datasource}")
LOKI = DataSourceRef(type_val="loki", uid="${loki}")
PROM_DS_UID = "flowscope-prometheus"
LOKI_DS_UID = "flowscope-loki"
#: The filters every query applies.
WF = f'{c.L_WORKFLOW}=~"$workflow"'
LAYER = f'{c.L_LAYER}=~"$layer"'
RATE = "$__rate_interval"


def variables(d: dashboard.Dashboard) -> dashboard.Dashboard:
    """datasource, loki, workflow, layer and backend_url: on every dashboard."""
    return (
        d.with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(dashboard.DatasourceVariable("loki").label("Loki").type("loki"))
        .with_variable(
            dashboard.QueryVariable("workflow").label("Workflow").datasource(PROM)
            .query(f"label_values({c.WORKFLOW_RUNS_TOTAL}, {c.L_WORKFLOW})")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))
        .with_variable(
            dashboard.QueryVariable("layer").label("Layer").datasource(PROM)
            .query(f"label_values({c.STEP_DURATION_SECONDS}_count, {c.L_LAYER})")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))
        .with_variable(dashboard.TextBoxVariable("backend_url").label("Flowscope backend")
                       .default_value("http://localhost:9464"))
    )


def base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    d = (dashboard.Dashboard(title).uid(uid).description(description).tags(["flowscope", "generated"])
         .refresh("30s").time("now-1h", "now").timezone("browser"))
    for other_uid, other_title in DASHBOARDS:
        if other_uid != uid:
            d = d.link(dashboard.DashboardLink(other_title).type(DashboardLinkType.LINK).url(f"/d/{other_uid}")
                       .keep_time(True).include_vars(True))
    return variables(d)


DASHBOARDS = (
    (c.DASHBOARD_OVERVIEW, "Flowscope · Workflow overview"),
    (c.DASHBOARD_LAYERS, "Flowscope · Layers & components"),
    (c.DASHBOARD_ERRORS, "Flowscope · Errors & logs"),
    (c.DASHBOARD_PROFILES, "Flowscope · Profiles"),
    (c.DASHBOARD_ALERTS, "Flowscope · Alerts & regressions"),
)


def prom(expr: str, legend: str = "", exemplar: bool = False, instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").datasource(PROM)
    if exemplar:
        q = q.exemplar(True)
    return q.instant() if instant else q.range()


def logql(expr: str) -> loki.Dataquery:
    return loki.Dataquery().expr(expr).datasource(LOKI)


def ts(title: str, description: str, unit: str) -> timeseries.Panel:
    return (
        timeseries.Panel().title(title).description(description).unit(unit).datasource(PROM)
        .line_width(1).fill_opacity(10).show_points(common.VisibilityMode.NEVER)
        .draw_style(common.GraphDrawStyle.LINE).span_nulls(False)
        .legend(common_builder.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs(["mean", "max", "lastNotNull"]))
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
                 .sort(common.SortOrder.DESCENDING))
    )


def threshold_lines(panel: timeseries.Panel, warning: float, critical: float) -> timeseries.Panel:
    """Draw the alert spec's warning and critical values as dashed lines."""
    return (panel.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
        Threshold(value=None, color="green"), Threshold(value=warning, color="orange"),
        Threshold(value=critical, color="red")]))
        .thresholds_style(common_builder.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)))


def run_link(field: str = "correlation_id") -> DynamicConfigValue:
    """A data link from a correlation_id value to the backend's run page."""
    return DynamicConfigValue(id_val="links", value=[{
        "title": "Open run", "url": "${backend_url}/runs/${__value.raw}", "targetBlank": True}])
