"""Every metric, label, stream and header name Flowscope uses, in one place.

Dashboards, alert rules and tests import these constants, so a rename here is a
rename everywhere and can never silently break a panel or an alert.

Example::

    from exporter import conventions as c
    query = f'sum by ({c.L_WORKFLOW}) (rate({c.WORKFLOW_RUNS_TOTAL}[5m]))'
"""

from __future__ import annotations

# --- closed sets -------------------------------------------------------------

LAYERS = ("frontend", "api", "database", "cache", "queue", "external", "worker", "system", "other")
STATUSES = ("ok", "error", "timeout", "cancelled")
#: Statuses that count as a failed run or step.
FAILED_STATUSES = ("error", "timeout")
#: Every status word accepted on input (native JSON ``status``, the SDK's ``status=``), lower-cased, and the
#: status it means: the seed vocabulary (success/completed/failed) as well as :data:`STATUSES` themselves.
STATUS_ALIASES = {
    "ok": "ok", "success": "ok", "succeeded": "ok", "completed": "ok", "complete": "ok",
    "error": "error", "failed": "error", "failure": "error",
    "timeout": "timeout", "timed_out": "timeout",
    "cancelled": "cancelled", "canceled": "cancelled",
}

#: The value a label takes once its metric has reached its series cap.
OVERFLOW = "__overflow__"
#: Workflow name used when no attribute and no root span names one.
UNKNOWN_WORKFLOW = "unknown"

# --- label names -------------------------------------------------------------

L_WORKFLOW = "workflow"
L_STATUS = "status"
L_LAYER = "layer"
L_COMPONENT = "component"
L_OPERATION = "operation"
L_ERROR_TYPE = "error_type"
L_FUNCTION = "function"
L_FORMAT = "format"
L_REASON = "reason"
L_METRIC = "metric"
L_DETECTOR = "detector"
#: A forward destination's name (``FLOWSCOPE_FORWARD_DESTINATIONS``) and how one attempt to reach it ended.
L_DESTINATION = "destination"
L_OUTCOME = "outcome"

# --- workflow metrics ----------------------------------------------------------

WORKFLOW_RUNS_TOTAL = "flowscope_workflow_runs_total"
WORKFLOW_DURATION_SECONDS = "flowscope_workflow_duration_seconds"
STEP_DURATION_SECONDS = "flowscope_step_duration_seconds"
STEP_ERRORS_TOTAL = "flowscope_step_errors_total"
WORKFLOWS_IN_PROGRESS = "flowscope_workflows_in_progress"
PROFILE_CPU_SECONDS_TOTAL = "flowscope_profile_cpu_seconds_total"
PROFILE_ALLOC_BYTES_TOTAL = "flowscope_profile_alloc_bytes_total"
#: Function series per workflow of each profile counter (CPU seconds, bytes allocated); the rest is function="other".
PROFILE_TOP_FUNCTIONS = 20
REGRESSION_ACTIVE = "flowscope_regression_active"
REGRESSION_RELATIVE_CHANGE = "flowscope_regression_relative_change"
REGRESSION_P_VALUE = "flowscope_regression_p_value"
REGRESSION_RUNS_TOTAL = "flowscope_regression_runs_total"
ALERT_REGRESSION_DETECTED = "FlowscopeRegressionDetected"
REGRESSIONS_PATH = "/api/v1/regressions"

WORKFLOW_RUNS_LABELS = (L_WORKFLOW, L_STATUS)
WORKFLOW_DURATION_LABELS = (L_WORKFLOW, L_STATUS)
STEP_DURATION_LABELS = (L_WORKFLOW, L_LAYER, L_COMPONENT, L_OPERATION, L_STATUS)
STEP_ERRORS_LABELS = (L_WORKFLOW, L_LAYER, L_COMPONENT, L_ERROR_TYPE)
WORKFLOWS_IN_PROGRESS_LABELS = (L_WORKFLOW,)

#: Exemplar label names on latency histograms (OpenMetrics only).
EXEMPLAR_TRACE_ID = "trace_id"
EXEMPLAR_SPAN_ID = "span_id"

# --- exporter self-metrics -----------------------------------------------------

SPANS_RECEIVED_TOTAL = "flowscope_spans_received_total"
#: HTTP worker processes (``flowscope serve --workers N``) that exited and were started again.
HTTP_WORKER_RESTARTS_TOTAL = "flowscope_http_worker_restarts_total"
SPANS_REJECTED_TOTAL = "flowscope_spans_rejected_total"
SERIES_OVERFLOW_TOTAL = "flowscope_series_overflow_total"
LOKI_PUSH_FAILURES_TOTAL = "flowscope_loki_push_failures_total"
LOKI_QUEUE_LINES = "flowscope_loki_queue_lines"
LOKI_LINES_SENT_TOTAL = "flowscope_loki_lines_sent_total"
LOKI_LINES_DROPPED_TOTAL = "flowscope_loki_lines_dropped_total"
SDK_SPANS_DROPPED_TOTAL = "flowscope_sdk_spans_dropped_total"
#: Forwarding received OTLP traces to other receivers (issue 15, exporter/forward.py), per destination.
FORWARD_REQUESTS_TOTAL = "flowscope_forward_requests_total"
FORWARD_SENT_TOTAL = "flowscope_forward_sent_total"
FORWARD_DROPPED_TOTAL = "flowscope_forward_dropped_total"
FORWARD_QUEUE_BYTES = "flowscope_forward_queue_bytes"
FORWARD_QUEUE_REQUESTS = "flowscope_forward_queue_requests"
REQUESTS_REJECTED_TOTAL = "flowscope_ingest_requests_rejected_total"
#: Accepted values cut to the boundary's caps (names to the label length, nesting to the depth/size caps).
VALUES_TRUNCATED_TOTAL = "flowscope_values_truncated_total"
TRACES_PENDING = "flowscope_traces_pending_spans"
#: OTLP traces whose workflow was guessed (no root span and no ``flowscope.workflow`` in time), by reason.
WORKFLOW_NAMES_GUESSED_TOTAL = "flowscope_workflow_names_guessed_total"
PROFILES_RECEIVED_TOTAL = "flowscope_profiles_received_total"
PROFILES_PATH = "/api/v1/profiles"
#: Application log lines accepted, by input format (``FORMAT_*``, ``FORMAT_BROWSER``).
LOG_LINES_RECEIVED_TOTAL = "flowscope_log_lines_received_total"
#: Application log lines refused (the rest of their request kept), by input format and reason.
LOG_LINES_REJECTED_TOTAL = "flowscope_log_lines_rejected_total"

#: Values of the ``format`` label on spans received.
FORMAT_OTLP_PROTOBUF = "otlp_protobuf"
FORMAT_OTLP_JSON = "otlp_json"
FORMAT_NATIVE = "native"
FORMAT_SDK = "sdk"
FORMAT_BROWSER = "browser"

# --- application logs (issue 14) --------------------------------------------------

#: Levels of a stored log line, most severe last (OpenTelemetry's severity ranges, exporter.model.SEVERITY_LEVELS).
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")
#: Where a log line came in: the SDK's logging handler, an OTLP logs request, a browser.
LOG_SOURCE_APP = "app"
LOG_SOURCE_OTLP = "otlp"
LOG_SOURCE_BROWSER = "browser"
LOG_SOURCES = (LOG_SOURCE_APP, LOG_SOURCE_OTLP, LOG_SOURCE_BROWSER)
OTLP_LOGS_PATH = "/v1/logs"
#: POST: native JSON log lines (the SDK's remote mode); GET: search the stored lines.
LOGS_PATH = "/api/v1/logs"
#: The logs page: a search box and the matching lines (or their templates), each linked to its run.
LOGS_PAGE_PATH = "/logs"
#: POST: a browser's console errors and user actions (small JSON, CORS: ``browser_origins``).
BROWSER_LOGS_PATH = "/api/v1/logs/browser"
#: The layer (a Loki stream label) of application log lines: a browser's are ``frontend``, the others this.
LOG_LAYER = "app"

#: Prefix of the metrics recorded through ``PerformanceMonitor.record_metric``.
CUSTOM_METRIC_PREFIX = "flowscope_custom_"

# --- default histogram buckets (seconds): 1 ms .. 60 s -------------------------

DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- Loki ------------------------------------------------------------------------

#: Stream labels. Only bounded values may be stream labels.
STREAM_LABELS = ("service", "workflow", "layer", "level")
LOKI_PUSH_PATH = "/loki/api/v1/push"
#: Loki's readiness endpoint: 200 once it accepts pushes; the pusher probes it to end a backoff early.
LOKI_READY_PATH = "/ready"
LOKI_TENANT_HEADER = "X-Scope-OrgID"
#: Structured metadata keys attached to every line.
LOKI_METADATA_KEYS = ("correlation_id", "trace_id", "span_id")
LEVEL_INFO = "info"
LEVEL_WARN = "warn"
LEVEL_ERROR = "error"

# --- HTTP --------------------------------------------------------------------------

CORRELATION_HEADER = "X-Correlation-ID"
TRACEPARENT_HEADER = "traceparent"
OTLP_TRACES_PATH = "/v1/traces"
NATIVE_SPANS_PATH = "/api/v1/spans"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/api/v1/health"
#: Readiness: 200 once the store answers, 503 (JSON body) while it does not; what orchestrators route by.
READY_PATH = "/api/v1/ready"
OPENAPI_PATH = "/api/v1/openapi.json"

# --- span attributes read from OpenTelemetry data ----------------------------------------

ATTR_WORKFLOW = ("flowscope.workflow", "workflow.type")
ATTR_LAYER = "flowscope.layer"
ATTR_COMPONENT = "flowscope.component"
ATTR_CORRELATION_ID = ("flowscope.correlation_id", "correlation_id")

# --- custom per-layer values the alert thresholds read (PerformanceMonitor.record_metric) ---------
# Record them as ratios 0..1: record_metric("cache", "redis", "hit_rate", 0.93).

CUSTOM_HIT_RATE = CUSTOM_METRIC_PREFIX + "hit_rate"
CUSTOM_MEMORY_USAGE = CUSTOM_METRIC_PREFIX + "memory_usage"
CUSTOM_CPU_USAGE = CUSTOM_METRIC_PREFIX + "cpu_usage"

# --- alert rules, recording rules and routing (backend/rules) ------------------------------------

L_SEVERITY = "severity"
L_SLO = "slo"
L_WINDOW = "window"
SEVERITY_CRITICAL = "critical"
SEVERITY_WARNING = "warning"

RULE_GROUP_THRESHOLDS = "flowscope-thresholds"
RULE_GROUP_SLO_RECORDING = "flowscope-slo-recording"
RULE_GROUP_SLO_ALERTS = "flowscope-slo-alerts"
RULE_GROUP_REGRESSIONS = "flowscope-regressions"

ALERT_STEP_LATENCY_HIGH = "FlowscopeStepLatencyHigh"
ALERT_STEP_ERROR_RATE_HIGH = "FlowscopeStepErrorRateHigh"
ALERT_CACHE_HIT_RATE_LOW = "FlowscopeCacheHitRateLow"
ALERT_MEMORY_USAGE_HIGH = "FlowscopeMemoryUsageHigh"
ALERT_CPU_USAGE_HIGH = "FlowscopeCPUUsageHigh"
ALERT_SLO_BURN_RATE = "FlowscopeSLOErrorBudgetBurn"
ALERT_WORKFLOW_DATA_ABSENT = "FlowscopeWorkflowDataAbsent"

#: Recording rules: the SLO's bad-event ratio and its event count, per window.
REC_SLO_ERROR_RATIO = "flowscope:slo_errors:ratio_rate{window}"
REC_SLO_EVENTS = "flowscope:slo_events:increase{window}"

#: Dashboard uids (fixed, so links and provisioning never break).
DASHBOARD_OVERVIEW = "flowscope-overview"
DASHBOARD_LAYERS = "flowscope-layers"
DASHBOARD_ERRORS = "flowscope-errors"
DASHBOARD_PROFILES = "flowscope-profiles"
DASHBOARD_ALERTS = "flowscope-alerts"

# --- Datadog and New Relic (issue 15, backend/integrations) ---------------------------------------
#: The Datadog Agent's openmetrics check namespace: flowscope_step_duration_seconds becomes
#: flowscope.step_duration_seconds (a distribution), counters <name>.count.
DATADOG_NAMESPACE = "flowscope"
#: The tag on every Datadog monitor, SLO and dashboard `flowscope integrations push` owns (it finds them by it).
DATADOG_MANAGED_TAG = "managed-by:flowscope"
#: The prefix of every generated monitor, SLO, dashboard and NRQL condition name (push matches by name).
INTEGRATION_NAME_PREFIX = "[Flowscope] "
#: The New Relic alert policy that holds the NRQL conditions.
NEWRELIC_POLICY = "Flowscope"

#: The backend's Alertmanager webhook.
ALERTS_WEBHOOK_PATH = "/api/v1/alerts/webhook"
ALERTS_PATH = "/api/v1/alerts"

# --- replicas: roles and leader leases (issue 13) ------------------------------------------------------

#: What one ``flowscope serve`` replica serves (``FLOWSCOPE_ROLE``): ingest only (OTLP, native spans, profiles,
#: /metrics, health), the backend only (API, pages, webhook, scheduled work), or both (the default).
ROLE_INGEST = "ingest"
ROLE_BACKEND = "backend"
ROLE_ALL = "all"
ROLES = (ROLE_INGEST, ROLE_BACKEND, ROLE_ALL)
#: Work that runs on one replica at a time, each under a lease of its own (``exporter/lease.py``; its advisory
#: lock key is derived from the name): the values of the ``duty`` label.
DUTY_RETENTION_SWEEP = "retention-sweep"
#: Scheduled regression detection, and the Grafana annotations of the findings it records.
DUTY_DETECTION = "detection"
DUTIES = (DUTY_RETENTION_SWEEP, DUTY_DETECTION)
#: Not a duty: the transaction-level advisory lock that serialises recording regression findings, so a finding
#: is new (and annotated) in one detection run across replicas, whichever replica ran it.
FINDINGS_LOCK = "regression-findings"
#: The transaction advisory lock the alert webhook records a notification under (PostgreSQL): replicas sharing the
#: store write each alert's state change, and its history event, once.
ALERTS_LOCK = "alert-webhook"
L_DUTY = "duty"
LEASE_HELD = "flowscope_lease_held"

# --- run store, replay, run page (issue 5) ----------------------------------------------------------

RUNS_PATH = "/api/v1/runs"
RUN_PAGE_PATH = "/runs"
ERROR_PAGE_PATH = "/errors"  # one error group's page: /errors/<fingerprint>
ERRORS_PATH = "/api/v1/errors"
ATTRIBUTION_PATH = "/api/v1/attribution"
#: The debugging report over a window (issue 15): html, md or json (backend.reports).
REPORTS_PATH = "/api/v1/reports"
#: Attribution's dimension prefixes: a span attribute, a resource attribute (OTLP), run metadata (the native
#: ``workflows[].metadata``, the SDK's ``workflow(..., metadata=)``). Built-in dimensions: layer, component,
#: operation, service.
DIM_ATTR = "attr."
DIM_RESOURCE = "resource."
DIM_METADATA = "metadata."
#: Attribute keys that describe how a span or run ended, never why: attribution never tests them as causes
#: (every failed span carries them), though ``where=`` may still select on them. A trailing ``*`` matches a
#: prefix. Matched against the key without its dimension prefix. Settable: ``FLOWSCOPE_ATTRIBUTION_OUTCOME_KEYS``
#: and the API's ``outcome_keys=``.
ATTRIBUTION_OUTCOME_KEYS = (
    "error", "error.*", "exception.*", "otel.status_code", "otel.status_description", "status", "status_code",
    "flowscope.status", "http.response.status_code", "http.status_code", "rpc.grpc.status_code",
    "rpc.connect_rpc.error_code", "rpc.jsonrpc.error_code", "rpc.jsonrpc.error_message", "db.response.status_code",
    "graphql.errors", "exit.code", "process.exit.code", "error_type", "error_message", "stack_trace",
)
FLAMEGRAPH_PATH = "/api/v1/flamegraph"

RUNS_STORED_TOTAL = "flowscope_runs_stored_total"
RUN_STORE_QUEUE_SPANS = "flowscope_run_store_queue_spans"
RUN_STORE_DROPPED_TOTAL = "flowscope_run_store_dropped_total"
RUN_STORE_WRITTEN_TOTAL = "flowscope_run_store_written_total"
#: The reasons RUN_STORE_DROPPED_TOTAL and LOKI_LINES_DROPPED_TOTAL count under, each present from the start at 0
#: (``rate()`` needs a sample before the first drop to see it).
RUN_STORE_DROP_REASONS = ("shed_runs", "queue_full", "poison", "write_failed", "shutdown", "internal_error")
LOKI_DROP_REASONS = ("queue_full", "poison", "rejected", "retries_exhausted", "shutdown", "internal_error")
RUN_STORE_WRITE_FAILURES_TOTAL = "flowscope_run_store_write_failures_total"
RUN_STORE_SWEPT_TOTAL = "flowscope_run_store_swept_runs_total"
STATE_TRUNCATED_TOTAL = "flowscope_state_snapshots_truncated_total"
QUERY_PATTERNS_TOTAL = "flowscope_query_patterns_total"
L_KIND = "kind"
#: Values of ``kind`` on QUERY_PATTERNS_TOTAL: never the statement itself.
QUERY_SLOW = "slow_query"
QUERY_N_PLUS_ONE = "n_plus_one"

#: What a secret value becomes, and the default key fragments that mark a key as secret. A fragment
#: matches anywhere in the lower-cased key: "secret" covers client_secret and aws_secret_access_key,
#: "token" refresh_token, "api-key" x-api-key, "access_key" aws_access_key_id. Session ids are named
#: exactly (session_id, sessionid, session.id, ...), not by "session": session.duration_ms and
#: session_count are not secrets. "pwd" also hides a PWD (working directory) key: a harmless loss.
REDACTED = "[REDACTED]"
DEFAULT_SECRET_KEYS = ("password", "passwd", "pwd", "passphrase", "secret", "token", "authorization", "cookie",
                       "api_key", "apikey", "api-key", "private_key", "privatekey", "private-key", "credential",
                       "access_key", "accesskey", "access-key", "session_id", "sessionid", "session-id",
                       "session.id", "session_key", "jwt", "signature", "cvv")
#: Key of the marker a state snapshot over the size cap carries instead of its dropped keys.
TRUNCATED_KEY = "__flowscope_truncated__"

#: Span attributes the SDK's SQLAlchemy instrumentation sets on database steps.
ATTR_DB_STATEMENT = "db.statement"
ATTR_DB_PATTERN = "flowscope.db.pattern"
#: A step's memory growth in bytes (traced at its end less at its start), on steps of runs the SDK's memory
#: profiler traced; the run page flags steps above ``memory_step_growth_bytes``.
ATTR_MEMORY_GROWTH = "flowscope.memory.growth_bytes"
ATTR_DB_ROWS = "db.rows"

# --- endpoint inventory (issue 15, point 3; exporter.sdk.routes, exporter.store.endpoints, backend.endpoints) ----

ENDPOINTS_PATH = "/api/v1/endpoints"
ENDPOINTS_PAGE_PATH = "/endpoints"
#: An inventory entry's method when the route takes any (a Django function view without a method decorator).
METHOD_ANY = "*"
#: Where an inventory entry came from (``endpoints.source``).
ENDPOINT_SOURCES = ("flask", "django", "fastapi", "starlette", "openapi", "manual")
L_SERVICE = "service"
L_METHOD = "method"
L_ROUTE = "route"
#: Per documented endpoint (service, method, route): the time of its last call seen in the run store's server spans,
#: floored at its registration and at the start of the window read (``FLOWSCOPE_ENDPOINTS_WINDOW_S``).
ENDPOINT_LAST_CALL_TIMESTAMP = "flowscope_endpoint_last_call_timestamp_seconds"
#: Per documented endpoint: its calls in the window read.
ENDPOINT_CALLS = "flowscope_endpoint_calls"
#: Per service: routes seen in traffic that its inventory does not list.
ENDPOINTS_UNDOCUMENTED = "flowscope_endpoints_undocumented"
#: Documented endpoints left out of the two per-endpoint gauges past the series cap.
ENDPOINT_SERIES_DROPPED = "flowscope_endpoint_series_dropped"
ALERT_ENDPOINT_NO_TRAFFIC = "FlowscopeEndpointNoTraffic"
RULE_GROUP_ENDPOINTS = "flowscope-endpoints"
#: Flowscope watching itself: what it received and then lost, as a share, per scraped process (``job``, ``instance``).
RULE_GROUP_SELF = "flowscope-self"
ALERT_RUN_STORE_DROPPING = "FlowscopeRunStoreDropping"
ALERT_LOKI_DROPPING = "FlowscopeLokiDropping"
ALERT_FORWARD_DROPPING = "FlowscopeForwardDropping"
#: The share of what came in that may be lost over the rules' rate window before those alerts fire.
SELF_DROP_RATIO = 0.01
#: The service and workflow ``flowscope endpoints check`` records its failures under.
ENDPOINT_CHECK_WORKFLOW = "endpoint-check"
