"""The five Flowscope dashboards, composed from small panel functions.

Each panel's queries read names from ``exporter.conventions`` and the alert
spec (thresholds, SLO recording rules), so renames and spec changes flow here.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, heatmap, logs, stat, table, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import Threshold, ThresholdsMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from backend.rules.generate import L_SLO_TYPE, SELF_ALERTS, loss_ratio, prom_seconds, quote
from backend.rules.spec import Spec
from exporter import conventions as c

from .common import LAYER, LOKI, PROM, RATE, WF, base, logql, prom, run_link, threshold_lines, ts

FAILED = "|".join(c.FAILED_STATUSES)
STEP = c.STEP_DURATION_SECONDS
RUN = c.WORKFLOW_DURATION_SECONDS


def _quantiles(metric: str, by: str, sel: str, title: str, description: str) -> timeseries.Panel:
    p = ts(title, description, "s")
    for q in ("0.5", "0.95", "0.99"):
        p = p.with_target(prom(f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
                               f"p{q[2:]:0<2} {{{{{by.split(',')[0]}}}}}", exemplar=True))
    return p


def overview(spec: Spec) -> dashboard.Dashboard:
    d = base(c.DASHBOARD_OVERVIEW, "Flowscope · Workflow overview",
             "Per workflow: throughput, errors, latency percentiles, runs in flight and SLO burn rates.")
    burn_windows = ("5m", "1h", "6h")
    burn = ts("SLO burn rate", "Bad-event ratio divided by the error budget (1 = spending the budget exactly "
              "over 30 days). Pages at 14.4 over 1h, tickets at 3 over 1d.", "short")
    # One series per workflow and SLO type, whether its SLO names it or is the spec's default objective.
    budgets = {s.name: s.error_budget for s in spec.slos}
    for w in burn_windows:
        rec = c.REC_SLO_ERROR_RATIO.format(window=w)
        expr = " or ".join(f"{rec}{{{c.L_SLO}={quote(name)},{WF}}} / {b:.6g}" for name, b in sorted(budgets.items()))
        burn = burn.with_target(prom(expr or f"{rec}{{{WF}}}", f"{{{{{c.L_WORKFLOW}}}}} {{{{{L_SLO_TYPE}}}}} {w}"))
    return (
        d.with_row(dashboard.Row("Throughput and errors"))
        .with_panel(ts("Runs per second", "Finished workflow runs per second, by workflow.", "ops").span(8).height(8)
                    .with_target(prom(f"sum by ({c.L_WORKFLOW}) (rate({c.WORKFLOW_RUNS_TOTAL}{{{WF}}}[{RATE}]))",
                                      f"{{{{{c.L_WORKFLOW}}}}}")))
        .with_panel(ts("Error ratio", "Share of runs that ended in error or timeout.", "percentunit").span(8)
                    .height(8).with_target(prom(
                        f"sum by ({c.L_WORKFLOW}) (rate({c.WORKFLOW_RUNS_TOTAL}{{{WF},status=~\"{FAILED}\"}}[{RATE}]))"
                        f" / sum by ({c.L_WORKFLOW}) (rate({c.WORKFLOW_RUNS_TOTAL}{{{WF}}}[{RATE}]))",
                        f"{{{{{c.L_WORKFLOW}}}}}")))
        .with_panel(stat.Panel().title("Runs in progress").description("Runs started and not yet finished (SDK).")
                    .datasource(PROM).span(8).height(8).graph_mode(common.BigValueGraphMode.AREA)
                    .with_target(prom(f"sum by ({c.L_WORKFLOW}) ({c.WORKFLOWS_IN_PROGRESS}{{{WF}}})",
                                      f"{{{{{c.L_WORKFLOW}}}}}")))
        .with_row(dashboard.Row("Latency and SLOs"))
        .with_panel(_quantiles(RUN, c.L_WORKFLOW, WF, "Run duration p50 / p95 / p99",
                               "Workflow run duration percentiles; the dots are exemplars linking to a run.")
                    .span(12).height(9))
        .with_panel(burn.span(12).height(9))
        .with_row(dashboard.Row("Endpoints"))
        .with_panel(_endpoint_quiet(spec).span(12).height(9))
        .with_panel(ts("Calls per documented endpoint", "Calls of each documented endpoint in the server spans of "
                       "the window the exporter reads (FLOWSCOPE_ENDPOINTS_WINDOW_S); the /endpoints page has "
                       "error ratios, p95 and workflows.", "short").span(8).height(9)
                    .with_target(prom(f"topk(20, max by ({_EP}) ({c.ENDPOINT_CALLS}))",
                                      "{{method}} {{route}} ({{service}})")))
        .with_panel(stat.Panel().title("Routes called but not documented").description(
            "Routes in server spans that the service's endpoint inventory does not list.").datasource(PROM)
            .span(4).height(9).with_target(prom(f"max by ({c.L_SERVICE}) ({c.ENDPOINTS_UNDOCUMENTED})",
                                                f"{{{{{c.L_SERVICE}}}}}")))
        .with_row(dashboard.Row("Flowscope itself"))
        .with_panel(_self_loss().span(12).height(8))
        .with_panel(ts("Queued to store and to push", "Spans and records waiting for the run store's writer, and log "
                       "lines waiting for Loki, per Flowscope process. A queue that keeps growing is a writer or a "
                       "Loki behind; past its bound, what comes in is shed and counted.", "short").span(12).height(8)
                    .with_target(prom(f"sum by (instance) ({c.RUN_STORE_QUEUE_SPANS})", "run store {{instance}}"))
                    .with_target(prom(f"sum by (instance) ({c.LOKI_QUEUE_LINES})", "Loki {{instance}}")))
    )


def _self_loss() -> timeseries.Panel:
    """What each Flowscope process received and lost, as a share, per reason: the self-monitoring alerts' ratios,
    with their threshold."""
    p = ts("Data lost, as a share of what came in", "Spans and records the run store did not keep, log lines not "
           "pushed to Loki, OTLP requests not forwarded, per process and reason. The Flowscope*Dropping alerts fire "
           f"above {c.SELF_DROP_RATIO:.0%} held for the alert spec's `for`.", "percentunit")
    for entry in SELF_ALERTS:
        extra = "".join(f" {{{{{x}}}}}" for x in entry.extra)
        what = entry.alert.removeprefix("Flowscope").removesuffix("Dropping")  # RunStore, Loki, Forward
        p = p.with_target(prom(loss_ratio(entry, RATE), f"{what} {{{{instance}}}}{extra} {{{{{c.L_REASON}}}}}"))
    return p.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
        Threshold(value=None, color="green"), Threshold(value=c.SELF_DROP_RATIO, color="red")])).thresholds_style(
        common_builder.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED))


_EP = f"{c.L_SERVICE}, {c.L_METHOD}, {c.L_ROUTE}"


def _endpoint_quiet(spec: Spec) -> table.Panel:
    """Documented endpoints by time since their last call; red past the spec's ``endpoints.no_traffic_for``."""
    idle = prom_seconds(spec.endpoint_no_traffic_for) if spec.endpoint_no_traffic_for else None
    p = (table.Panel().title("Documented endpoints: time since the last call").description(
        "Per endpoint of the inventory (POST /api/v1/endpoints): seconds since its last call in the server spans "
        "(since its registration if it had none). FlowscopeEndpointNoTraffic fires past "
        f"{spec.endpoint_no_traffic_for or 'endpoints.no_traffic_for (unset in this spec)'}.")
         .datasource(PROM).unit("s")
         .with_target(prom(f"sort_desc(time() - max by ({_EP}) ({c.ENDPOINT_LAST_CALL_TIMESTAMP}))", instant=True)
                      .format(PromQueryFormat.TABLE)))
    if idle is not None:
        p = p.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([
            Threshold(value=None, color="green"), Threshold(value=idle, color="red")]))
    return p


def layers(spec: Spec) -> dashboard.Dashboard:
    d = base(c.DASHBOARD_LAYERS, "Flowscope · Layers & components",
             "Step latency per layer and component, the slowest operations, and the alert thresholds.")
    d = (
        d.with_row(dashboard.Row("Step latency"))
        .with_panel(_quantiles(STEP, "layer", f"{WF},{LAYER}", "Step latency by layer",
                               "Step duration percentiles per layer; exemplars link to the run.").span(12).height(9))
        .with_panel(heatmap.Panel().title("Step latency heatmap").description("Distribution of step durations.")
                    .datasource(PROM).span(12).height(9).calculate(False)
                    .with_target(prom(f"sum by (le) (rate({STEP}_bucket{{{WF},{LAYER}}}[{RATE}]))", "{{le}}")
                                 .format(PromQueryFormat.HEATMAP)))
        .with_panel(table.Panel().title("Slowest component / operation (p95, top 10)")
                    .description("The ten component/operation pairs with the highest p95 step latency.")
                    .datasource(PROM).span(24).height(9).unit("s")
                    .with_target(prom(
                        f"topk(10, histogram_quantile(0.95, sum by ({c.L_LAYER}, {c.L_COMPONENT}, {c.L_OPERATION}, le)"
                        f" (rate({STEP}_bucket{{{WF},{LAYER}}}[{RATE}]))))", instant=True)
                        .format(PromQueryFormat.TABLE)))
        .with_row(dashboard.Row("Database queries"))
        .with_panel(ts("Slow queries and N+1 patterns", "Database steps the SDK's SQL instrumentation flagged: "
                       "slower than the database warning threshold, or one statement repeated in a run.", "ops")
                    .span(12).height(8).with_target(prom(
                        f"sum by ({c.L_WORKFLOW}, {c.L_KIND}) (rate({c.QUERY_PATTERNS_TOTAL}{{{WF}}}[{RATE}]))",
                        f"{{{{{c.L_WORKFLOW}}}}} {{{{{c.L_KIND}}}}}")))
        .with_panel(table.Panel().title("Flagged queries").description(
            "Slow and repeated statements from Loki (literals stripped); click a correlation_id to open the run.")
            .datasource(LOKI).span(12).height(8)
            .with_target(logql('{layer="database", level="warn", workflow=~"$workflow"} | json | db_pattern != ""'))
            .override_by_name("correlation_id", [run_link()]))
        .with_row(dashboard.Row("Against the alert thresholds"))
    )
    for t in spec.thresholds:
        if t.metric.name != "response_time":
            continue
        sel = f'{WF},{c.L_LAYER}="{t.layer}"'
        panel = ts(f"{t.layer}: p95 step latency vs thresholds",
                   f"Dashed lines: warning {t.warning:g}s and critical {t.critical:g}s from the alert spec.", "s")
        panel = panel.with_target(prom(
            f"histogram_quantile(0.95, sum by ({c.L_WORKFLOW}, le) (rate({STEP}_bucket{{{sel}}}[{RATE}])))",
            f"{{{{{c.L_WORKFLOW}}}}}", exemplar=True))
        d = d.with_panel(threshold_lines(panel, t.warning, t.critical).span(8).height(8))
    return d


def errors(spec: Spec) -> dashboard.Dashboard:
    d = base(c.DASHBOARD_ERRORS, "Flowscope · Errors & logs",
             "Error rate by type, and the error log lines with links to each run.")
    return (
        d.with_panel(ts("Errors per second by type", "Failed steps and logged errors, by error_type.", "ops")
                     .span(24).height(8).with_target(prom(
                         f"sum by ({c.L_ERROR_TYPE}) (rate({c.STEP_ERRORS_TOTAL}{{{WF},{LAYER}}}[{RATE}]))",
                         f"{{{{{c.L_ERROR_TYPE}}}}}")))
        .with_panel(table.Panel().title("Recent failed steps").description(
            "Error lines from Loki; click a correlation_id to open the run.").datasource(LOKI).span(24).height(9)
            .with_target(logql('{level="error", workflow=~"$workflow", layer=~"$layer"} | json'))
            .override_by_name("correlation_id", [run_link()]))
        .with_panel(logs.Panel().title("Error logs").datasource(LOKI).span(24).height(12)
                    .show_time(True).wrap_log_message(True).enable_log_details(True)
                    .sort_order(common.LogsSortOrder.DESCENDING)
                    .with_target(logql('{level="error", workflow=~"$workflow", layer=~"$layer"}')))
    )


def profiles(spec: Spec) -> dashboard.Dashboard:
    d = base(c.DASHBOARD_PROFILES, "Flowscope · Profiles", "The hottest functions by CPU self time, per workflow.")
    flame = f"${{backend_url}}{c.FLAMEGRAPH_PATH}"
    return (
        d.with_panel(ts("CPU seconds per second by function (top 10)", "Self time of the ten hottest functions. "
                        "The panel links open the flame graph, and what got hotter in the last hour.",
                        "s").span(24).height(10)
                     .links([dashboard.DashboardLink("Flame graph (${workflow})").url(
                                 f"{flame}?workflow=${{workflow}}&format=svg").target_blank(True),
                             dashboard.DashboardLink("What got hotter: last hour vs the hour before").url(
                                 f"{flame}/diff?workflow=${{workflow}}&window_s=3600&format=svg").target_blank(True)])
                     .with_target(prom(
                            f"topk(10, sum by ({c.L_WORKFLOW}, {c.L_FUNCTION}) "
                            f"(rate({c.PROFILE_CPU_SECONDS_TOTAL}{{{WF}}}[{RATE}])))",
                            f"{{{{{c.L_WORKFLOW}}}}} {{{{{c.L_FUNCTION}}}}}")))
    )


def alerts(spec: Spec) -> dashboard.Dashboard:
    d = base(c.DASHBOARD_ALERTS, "Flowscope · Alerts & regressions", "Firing alerts and detected regressions.")
    return (
        d.with_panel(table.Panel().title("Firing alerts").description("Alerts Prometheus is firing now.")
                     .datasource(PROM).span(24).height(8)
                     .with_target(prom('sum by (alertname, severity, workflow, layer, slo) '
                                       '(ALERTS{alertstate="firing"})', instant=True).format(PromQueryFormat.TABLE)))
        .with_panel(ts("Active regressions", "flowscope_regression_active: 1 while a detector reports a regression.",
                       "short").span(24).height(8)
                    .with_target(prom(f"{c.REGRESSION_ACTIVE}{{{WF}}}", "{{detector}} {{workflow}}")))
    )


ALL = (overview, layers, errors, profiles, alerts)
