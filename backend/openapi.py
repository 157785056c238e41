"""The OpenAPI 3.1 document for every HTTP endpoint Flowscope serves, and the route that serves it.

``tests/test_http.py`` checks it against the app's routes: every route served is documented.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response

from exporter import conventions as c

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(desc: str, schema=None, media: str = "application/json") -> dict:
    r: dict = {"description": desc}
    if schema is not None:
        r["content"] = {media: {"schema": schema}}
    return r


_INGEST_ERRORS = {
    "400": _resp("Malformed body; `error.message` says where.", _ERROR),
    "401": _resp("FLOWSCOPE_INGEST_TOKEN is set and the bearer token is missing or wrong.", _ERROR),
    "413": _resp("Body over the size limit (after gzip decompression).", _ERROR),
    "415": _resp("Unsupported Content-Type or Content-Encoding.", _ERROR),
}

_TIME = {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0}],
         "description": "RFC 3339 or Unix seconds, 1970 to 2262-04-11T23:47:16Z (nanoseconds in 64 bits); "
                        "outside that range a 400 names the parameter"}


def _q(name: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "schema": schema or {"type": "string"}}


_RUN_ID = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128},
           "description": "The run's correlation_id, or its trace_id (as exemplars and log lines carry)."}
_FP = {"name": "fingerprint", "in": "path", "required": True, "schema": {"type": "string"}}
_FLAME_KIND = {**_q("kind", {"enum": ["cpu", "alloc", "held"], "default": "cpu"}),
               "description": "cpu: seconds; alloc: bytes allocated during the runs; held: bytes still held at "
                              "their end (memory profiles)"}

_STEP = {
    "type": "object",
    "required": ["correlation_id", "workflow_type", "layer", "component", "operation", "started_at"],
    "properties": {
        "correlation_id": {"type": "string"},
        "workflow_type": {"type": "string", "examples": ["checkout"]},
        "layer": {"enum": list(c.LAYERS)},
        "component": {"type": "string"},
        "operation": {"type": "string"},
        "status": {"type": "string", "examples": ["success", "ok", "error", "timeout", "cancelled"]},
        "started_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
        "duration_ms": {"type": "number", "minimum": 0},
        "ended_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}]},
        "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "parent_span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "service": {"type": "string"},
        "metadata": {"type": "object"},
        "state": {"type": "object"},
        "error_type": {"type": "string"},
        "error_message": {"type": "string"},
        "stack_trace": {"type": "string"},
    },
}
_WORKFLOW = {
    "type": "object",
    "required": ["correlation_id", "workflow_type", "started_at"],
    "properties": {k: _STEP["properties"][k] for k in
                   ("correlation_id", "workflow_type", "status", "started_at", "duration_ms", "ended_at", "trace_id",
                    "service", "metadata", "error_type", "error_message")} | {"user": {"type": "string"}},
}


_ERROR_RECORD = {
    "type": "object",
    "required": ["error_type", "message", "layer", "component"],
    "properties": {
        "error_type": {"type": "string"}, "message": {"type": "string"}, "layer": {"enum": list(c.LAYERS)},
        "component": {"type": "string"}, "workflow_type": {"type": "string"}, "correlation_id": {"type": "string"},
        "trace_id": {"type": "string"}, "span_id": {"type": "string"}, "category": {"type": "string"},
        "stack_trace": {"type": "string"}, "time": {"type": "number"}, "service": {"type": "string"},
        "context": {"type": "object"},
    },
}


_LOG_LINE = {
    "type": "object",
    "required": ["body"],
    "description": "One application log line (the SDK's LogHandler in remote mode). A time is required: "
                   "`time_ns`, or `time`.",
    "properties": {
        "time_ns": {"type": "integer", "minimum": 1, "description": "Unix nanoseconds"},
        "time": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0}],
                 "description": "RFC 3339 or Unix seconds (when `time_ns` is not given)"},
        "level": {"enum": list(c.LOG_LEVELS), "description": "default: from severity_number, else info"},
        "severity_number": {"type": "integer", "minimum": 0, "maximum": 24},
        "body": {"type": "string"}, "logger": {"type": "string", "maxLength": 200},
        "service": {"type": "string", "maxLength": 200}, "workflow": {"type": "string", "maxLength": 200},
        "correlation_id": {"type": "string", "maxLength": 128},
        "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "attributes": {"type": "object"}, "exception": {"type": "string"},
    },
    "additionalProperties": False,
}
_BROWSER_EVENT = {
    "type": "object",
    "required": ["message"],
    "properties": {
        "type": {"enum": ["console", "error", "action"], "default": "console"},
        "level": {"enum": [*c.LOG_LEVELS, "log", "warning"],
                  "description": "default: error for an error, info otherwise"},
        "message": {"type": "string"}, "stack": {"type": "string"},
        "time": {"type": "number", "description": "Unix milliseconds (Date.now()); default: when received"},
        "logger": {"type": "string"}, "page": {"type": "string"},
        "target": {"type": "string", "description": "what a user action acted on (`button#pay`)"},
        "attributes": {"type": "object"}, "correlation_id": {"type": "string", "maxLength": 128},
        "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "span_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
    },
    "additionalProperties": False,
}
_LOG_RESULT = {"type": "object", "properties": {
    "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
    "errors": {"type": "array", "items": {"type": "object", "properties": {
        "index": {"type": "integer"}, "reason": {"type": "string"}, "field": {"type": "string"},
        "message": {"type": "string"}}}}}}
_LOG_400 = _resp("Malformed body, or no line valid: `error.field` names the field "
                 "(`lines[2].level`, `$.resourceLogs[0].scopeLogs[0].logRecords[0].severityNumber`).", _ERROR)
#: POST on LOGS_PATH (the native lines); the GET that searches them is documented beside it.
_NATIVE_LOGS_POST = {
    "summary": "Native JSON application log lines (what the SDK's LogHandler sends in remote mode).",
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
        {"type": "object", "properties": {"lines": {"type": "array", "items": _LOG_LINE}},
         "additionalProperties": False},
        {"type": "array", "items": _LOG_LINE}]}}}},
    "responses": {"200": _resp("Accepted (some lines may be refused: see `errors`).", _LOG_RESULT),
                  **_INGEST_ERRORS, "400": _LOG_400}}


_ENDPOINT = {"type": "object", "required": ["method", "path"], "additionalProperties": False, "properties": {
    "method": {"type": "string", "examples": ["GET", "*"], "description": "upper case; * for any method"},
    "path": {"type": "string", "maxLength": 500, "pattern": "^/", "examples": ["/users/{id}"],
             "description": "a template; <int:id>, {id:int} and (?P<id>...) are normalized to {id}"},
    "view": {"type": ["string", "null"], "maxLength": 300}, "auth": {"type": ["boolean", "null"]},
    "source": {"enum": list(c.ENDPOINT_SOURCES), "default": "manual"}}}
_ENDPOINT_USAGE = {"type": "object", "properties": {
    "service": {"type": "string"}, "method": {"type": "string"}, "path": {"type": "string"},
    "documented": {"type": "boolean"}, "view": {"type": ["string", "null"]}, "auth": {"type": ["boolean", "null"]},
    "calls": {"type": "integer"}, "errors": {"type": "integer"}, "error_ratio": {"type": ["number", "null"]},
    "p95_ms": {"type": ["number", "null"]}, "last_seen": {"type": ["string", "null"], "format": "date-time"},
    "statuses": {"type": "object", "additionalProperties": {"type": "integer"}},
    "workflows": {"type": "array", "items": {"type": "object", "properties": {
        "workflow": {"type": "string"}, "runs": {"type": "string", "description": "the workflow's runs page"}}}}}}
#: POST on ENDPOINTS_PATH: a service's inventory, as a list or an OpenAPI document.
_ENDPOINTS_POST = {
    "summary": "Register a service's endpoint inventory (what the SDK's register_endpoints sends), as a list or an "
               "OpenAPI document; authenticated like ingest.",
    "security": [{"ingestToken": []}, {}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["service"], "additionalProperties": False, "properties": {
            "service": {"type": "string", "minLength": 1, "maxLength": 200},
            "replace": {"type": "boolean", "default": True,
                        "description": "drop the service's endpoints this registration does not list"},
            "endpoints": {"type": "array", "maxItems": 5000, "items": _ENDPOINT},
            "openapi": {"oneOf": [{"type": "object"}, {"type": "string"}],
                        "description": "an OpenAPI 3 / Swagger 2 document, as an object or JSON/YAML text"}}}}}},
    "responses": {"200": _resp("Registered", {"type": "object", "properties": {
        "service": {"type": "string"}, "endpoints": {"type": "integer"}, "added": {"type": "integer"},
        "kept": {"type": "integer"}, "removed": {"type": "integer"}}}),
                  "400": _resp("A field that is wrong (`error.field`: `endpoints[2].method`), or an OpenAPI document "
                               "that cannot be parsed (`error.field`: `openapi`, the message names the problem)",
                               _ERROR),
                  "401": _INGEST_ERRORS["401"], "413": _INGEST_ERRORS["413"],
                  "415": _resp("Not application/json", _ERROR)}}


def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Flowscope", "version": "0.1.0",
                 "description": "Workflow traces in; Prometheus metrics, Loki streams and analyses out."},
        "paths": {
            c.OTLP_TRACES_PATH: {"post": {
                "summary": "OTLP/HTTP trace export (protobuf or JSON, optionally gzip).",
                "requestBody": {"required": True, "content": {
                    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _resp("Accepted; `partialSuccess` counts refused spans.",
                                           {"type": "object", "properties": {"partialSuccess": {
                                               "type": "object", "properties": {
                                                   "rejectedSpans": {"type": "integer"},
                                                   "errorMessage": {"type": "string"}}}}}),
                              **_INGEST_ERRORS}}},
            c.OTLP_LOGS_PATH: {"post": {
                "summary": "OTLP/HTTP logs export (ExportLogsServiceRequest, protobuf or JSON, optionally gzip): "
                           "any OpenTelemetry SDK's log exporter.",
                "requestBody": {"required": True, "content": {
                    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _resp("Accepted; `partialSuccess` counts refused records and names their "
                                           "fields in `errorMessage`.",
                                           {"type": "object", "properties": {"partialSuccess": {
                                               "type": "object", "properties": {
                                                   "rejectedLogRecords": {"type": "integer"},
                                                   "errorMessage": {"type": "string"}}}}}),
                              **_INGEST_ERRORS, "400": _LOG_400}}},
            c.BROWSER_LOGS_PATH: {
                "post": {
                    "summary": "A browser's console errors and user actions (small JSON; CORS for "
                               "FLOWSCOPE_BROWSER_ORIGINS; `text/plain` JSON too, as navigator.sendBeacon sends). "
                               "A request from an allowed Origin needs no ingest token; one without Origin does.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["events"], "additionalProperties": False, "properties": {
                            "service": {"type": "string", "default": "browser"},
                            "correlation_id": {"type": "string", "maxLength": 128},
                            "trace_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                            "session_id": {"type": "string"}, "page": {"type": "string"},
                            "events": {"type": "array", "maxItems": 100, "items": _BROWSER_EVENT}}}}}},
                    "responses": {"200": _resp("Accepted (some events may be refused: see `errors`).", _LOG_RESULT),
                                  **_INGEST_ERRORS, "400": _LOG_400,
                                  "403": _resp("Origin not in FLOWSCOPE_BROWSER_ORIGINS (`error.field`: Origin).",
                                               _ERROR),
                                  "413": _resp("Body over FLOWSCOPE_BROWSER_MAX_BODY_BYTES.", _ERROR)}},
                "options": {
                    "summary": "CORS preflight: the allowed origin (or `*`, never with credentials), methods, headers.",
                    "responses": {"204": _resp("Allowed"),
                                  "403": _resp("Origin not in FLOWSCOPE_BROWSER_ORIGINS.", _ERROR)}}},
            c.NATIVE_SPANS_PATH: {"post": {
                "summary": "Native JSON batch of trace steps and workflow sessions.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    {"type": "object", "properties": {"steps": {"type": "array", "items": _STEP},
                                                      "workflows": {"type": "array", "items": _WORKFLOW},
                                                      "errors": {"type": "array", "items": _ERROR_RECORD}},
                     "additionalProperties": False},
                    {"type": "array", "items": _STEP}]}}}},
                "responses": {"200": _resp("Accepted (some records may be refused: see `errors`).",
                                           {"$ref": "#/components/schemas/IngestResult"}),
                              **_INGEST_ERRORS}}},
            c.PROFILES_PATH: {"post": {
                "summary": "A CPU profile for a workflow: folded stacks (text/plain) or a cProfile pstats dump; or a "
                           "memory profile: folded stacks whose counts are bytes (format alloc: allocated; held: "
                           "still held at the run's end).",
                "parameters": [
                    {"name": "workflow", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "correlation_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "schema": {"enum": ["folded", "pstats", "alloc", "held"]}},
                    {"name": "sample_rate", "in": "query", "schema": {"type": "number", "default": 100}},
                    {"name": "peak_bytes", "in": "query", "schema": {"type": "integer", "minimum": 0},
                     "description": "memory profiles: the run's peak bytes"},
                    {"name": "net_bytes", "in": "query", "schema": {"type": "integer"},
                     "description": "memory profiles: bytes allocated during the run and still held at its end"}],
                "requestBody": {"required": True, "content": {
                    "text/plain": {"schema": {"type": "string"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"200": _resp("Accepted; the hottest functions.", {"type": "object"}),
                              **_INGEST_ERRORS}}},
            c.ALERTS_WEBHOOK_PATH: {"post": {
                "summary": "Alertmanager webhook (payload version 4).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _resp("Recorded; counts of created/updated/unchanged alerts.",
                                           {"type": "object"}),
                              "400": _resp("Invalid payload; `error.field` names it. Nothing stored.", _ERROR),
                              "401": _resp("Webhook auth configured and missing or wrong.", _ERROR),
                              "413": _resp("Body over FLOWSCOPE_MAX_BODY_BYTES.", _ERROR)}}},
            c.ALERTS_PATH: {"get": {
                "summary": "Recorded alerts, newest first, with their firing/resolved history.",
                "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}}
                               for n in ("status", "severity", "workflow", "since", "limit")],
                "responses": {"200": _resp("Alerts", {"type": "object"}), "400": _resp("Bad filter", _ERROR)}}},
            "/api/v1/provision/dashboards": {"post": {
                "summary": "Upsert the Grafana folder, datasources and dashboards (idempotent).",
                "responses": {"200": _resp("What changed", {"type": "object"}),
                              "401": _resp("FLOWSCOPE_ADMIN_TOKEN set and missing or wrong", _ERROR),
                              "403": _resp("No admin token configured and the caller is not loopback", _ERROR),
                              "409": _resp("Grafana is not configured", _ERROR),
                              "502": _resp("Grafana refused or is unavailable", _ERROR)}}},
            c.RUNS_PATH: {"get": {
                "summary": "Stored workflow runs, newest first.",
                "parameters": [_q("workflow"), _q("status", {"enum": [*c.STATUSES, "in_progress"]}),
                               _q("since", _TIME), _q("until", _TIME), _q("min_duration_ms", {"type": "number"}),
                               _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                               _q("offset", {"type": "integer", "minimum": 0})],
                "responses": {"200": _resp("Runs", {"type": "object"}), "400": _resp("Bad filter", _ERROR)}}},
            c.RUNS_PATH + "/{run_id}": {"get": {
                "summary": "One run: its span tree, steps, critical path, errors and links (logs, flame graph).",
                "parameters": [_RUN_ID],
                "responses": {"200": _resp("The run", {"type": "object"}),
                              "404": _resp("No run with that correlation_id or trace_id", _ERROR)}}},
            c.RUNS_PATH + "/{run_id}/replay": {"get": {
                "summary": "Time travel: the reconstructed state after step N and its diff from step N-1; watches "
                           "(a state path's value at every step) and breakpoints (run to the next matching step).",
                "parameters": [_RUN_ID, {**_q("step", {"type": "integer", "minimum": 0}),
                                         "description": "The step to show (0-based); required without `break`."},
                               {**_q("watch", {"type": "array", "items": {"type": "string", "maxLength": 200},
                                               "maxItems": 16}), "explode": True,
                                "description": "A state path (`cart.total`), repeatable: its value after every "
                                               "step (`watches[].values`) and the steps that changed it "
                                               "(`watches[].changed_at`). A path that leads nowhere is absent. "
                                               "A value over 2 KiB of JSON is in full at the step shown, "
                                               "elsewhere `elided`."},
                               {**_q("break", {"type": "array", "items": {"type": "string", "maxLength": 500},
                                               "maxItems": 16}), "explode": True,
                                "description": "A breakpoint expression, repeatable (any may hold): `layer=database`, "
                                               "`error`, `duration > 250`, `cart.total > 100`, `user.id changed`, "
                                               "with and/or/not and parentheses. The response is the next step "
                                               "after `from` where one holds (`breakpoint.hit`, null if none)."},
                               {**_q("from", {"type": "integer", "minimum": -1}),
                                "description": "With `break`: search the steps after this one (default -1: all)."}],
                "responses": {"200": _resp("State and diff", {"type": "object"}),
                              "400": _resp("Step out of range (`error.valid_range`) or not a number; a watch path or "
                                           "break expression that cannot be parsed (`error.position`)", _ERROR),
                              "404": _resp("Unknown run", _ERROR)}}},
            c.LOGS_PATH: {"post": _NATIVE_LOGS_POST, "get": {
                "summary": "Search stored application log lines, newest first, each linked to its run's page; or "
                           "(templates=true) the newest `scan` matching lines collapsed into their templates with "
                           "counts.",
                "parameters": [
                    _q("q", {"type": "string", "maxLength": 2000, "examples": [
                        'level:error service:checkout "card declined" -healthcheck', "order_id=123 http.status>=500"],
                        "description": "Words and \"phrases\" (all must appear), -word / -\"phrase\" (must not), "
                                       "level:L (L or more severe), service:, workflow:, correlation_id: (cid:), "
                                       "trace_id: (trace:), field=value, field!=value, field>n, >=, <, <= on any "
                                       "attribute (nested: dotted) or column"}),
                    _q("since", _TIME), _q("until", _TIME), _q("level", {"enum": ["trace", "debug", "info", "warn",
                                                                                  "error", "fatal"]}),
                    _q("service"), _q("workflow"), _q("correlation_id"), _q("trace_id"),
                    _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                    _q("cursor", {"type": "string", "pattern": "^[0-9]+$",
                                  "description": "The previous page's `next_cursor`: the lines older than it"}),
                    _q("templates", {"enum": ["true", "false"]}),
                    _q("scan", {"type": "integer", "minimum": 1, "maximum": 50000, "default": 2000}),
                    _q("top", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50})],
                "responses": {"200": _resp("`lines` and `next_cursor` (null on the last page), or `templates`",
                                           {"type": "object"}),
                              "400": _resp("A bad parameter (`error.field`), or a query that cannot be parsed: "
                                           "`error.position` is the offending character's (0-based)", _ERROR),
                              "404": _resp("The run store is off", _ERROR)}}},
            c.LOGS_PAGE_PATH: {"get": {
                "summary": "The logs page: a search box (the `q` language of GET /api/v1/logs) and the matching "
                           "lines or their templates, each linked to its run.",
                "parameters": [_q("q"), _q("templates", {"enum": ["true", "false"]}), _q("since", _TIME),
                               _q("until", _TIME), _q("cursor")],
                "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"),
                              "400": _resp("A query that cannot be parsed (an HTML page pointing at it)",
                                           {"type": "string"}, "text/html")}}},
            c.ENDPOINTS_PATH: {"post": _ENDPOINTS_POST, "get": {
                "summary": "The endpoint inventory joined with the server spans of a window: per documented endpoint "
                           "its calls, error ratio, p95, workflows and last call; the endpoints never called; the "
                           "routes called that no inventory lists.",
                "parameters": [_q("since", _TIME), _q("until", _TIME), _q("service", {"type": "string",
                                                                                    "maxLength": 200})],
                "responses": {"200": _resp("The report", {"type": "object", "properties": {
                    "endpoints": {"type": "array", "items": _ENDPOINT_USAGE},
                    "never_called": {"type": "array", "items": {"type": "object"}},
                    "undocumented": {"type": "array", "items": _ENDPOINT_USAGE},
                    "services_without_inventory": {"type": "array", "items": {"type": "string"}},
                    "spans_read": {"type": "integer"}, "truncated": {"type": "boolean"}}}),
                              "400": _resp("A bad since/until/service; `error.field` names it", _ERROR)}}},
            c.ENDPOINTS_PAGE_PATH: {"get": {
                "summary": "The endpoints page: the inventory with its traffic, never-called and undocumented "
                           "endpoints highlighted.",
                "parameters": [_q("since", _TIME), _q("until", _TIME), _q("service")],
                "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"),
                              "400": _resp("A bad parameter (an HTML page naming it)", {"type": "string"},
                                           "text/html")}}},
            "/": {"get": {
                "summary": "The overview page: workflows with rate, error ratio and p50/p95; failed, slowest runs; "
                           "open error groups.",
                "parameters": [_q("window", {"type": "string", "enum": ["15m", "1h", "6h", "24h", "7d", "all"]})],
                "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"),
                              "400": _resp("A bad window (an HTML page naming it)", {"type": "string"}, "text/html")}}},
            c.RUN_PAGE_PATH: {"get": {
                "summary": "The runs list page: filters, 50 runs a page, newest first, each linking to its run page.",
                "parameters": [_q("workflow"), _q("status", {"type": "string", "enum": [*c.STATUSES, "failed"]}),
                               _q("window", {"type": "string", "enum": ["15m", "1h", "6h", "24h", "7d", "all"]}),
                               _q("min_duration_ms", {"type": "number", "minimum": 0}), _q("q"),
                               _q("attr", {"type": "string", "example": "http.route=/checkout"}),
                               _q("page", {"type": "integer", "minimum": 1})],
                "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"),
                              "400": _resp("A bad filter (an HTML page naming it)", {"type": "string"},
                                           "text/html")}}},
            "/errors/{fingerprint}": {"get": {
                "summary": "An error group's page: template, 24-hour trend, runs it hit, what failing runs share, "
                           "what fixed it before.",
                "parameters": [_FP],
                "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"),
                              "404": _resp("Unknown group (an HTML page)", {"type": "string"}, "text/html")}}},
            c.RUN_PAGE_PATH + "/{run_id}": {"get": {
                "summary": "The run page: waterfall by layer, critical path, errors, step-by-step replay.",
                "parameters": [_RUN_ID],
                "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"),
                              "404": _resp("Unknown run (an HTML page)", {"type": "string"}, "text/html")}}},
            c.RUN_PAGE_PATH + "/{run_id}/flamegraph.svg": {"get": {
                "summary": "The run's flame graph (profiles posted or sampled with its correlation_id): CPU, or "
                           "memory allocated / still held (`kind`).",
                "parameters": [_RUN_ID, _FLAME_KIND],
                "responses": {"200": _resp("SVG", {"type": "string"}, "image/svg+xml"),
                              "404": _resp("Unknown run", _ERROR)}}},
            c.FLAMEGRAPH_PATH: {"get": {
                "summary": "Flame graph as Grafana's Flame Graph data frame (label, level, value, self), or SVG.",
                "parameters": [_q("workflow"), _q("correlation_id"), _q("since", _TIME), _q("until", _TIME),
                               _q("format", {"enum": ["json", "svg"]}), _FLAME_KIND],
                "responses": {"200": _resp("Data frame", {"type": "object"}), "400": _resp("Bad query", _ERROR)}}},
            c.FLAMEGRAPH_PATH + "/diff": {"get": {
                "summary": "Diff flame graph: baseline (value/self) against recent (valueRight/selfRight): two "
                           "windows of a workflow, or two runs (`baseline_run`, `run`).",
                "parameters": [{**_q("workflow"), "description": "required unless run and baseline_run are given"},
                               _q("window_s", {"type": "number"}),
                               _q("since", _TIME), _q("until", _TIME), _q("baseline_since", _TIME),
                               _q("baseline_until", _TIME), _q("format", {"enum": ["json", "svg"]}), _FLAME_KIND,
                               {**_q("run"), "description": "a run's correlation_id or trace_id (the recent side)"},
                               {**_q("baseline_run"), "description": "the run to compare it with"}],
                "responses": {"200": _resp("Data frame", {"type": "object"}), "400": _resp("Bad query", _ERROR),
                              "404": _resp("Unknown run", _ERROR)}}},
            c.ERRORS_PATH: {"get": {
                "summary": "Error groups (fingerprints) with count, first/last seen, trend, status, suggestions.",
                "parameters": [_q("workflow"), _q("since", _TIME), _q("recent_s", {"type": "number"}),
                               _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})],
                "responses": {"200": _resp("Groups", {"type": "object"}), "400": _resp("Bad query", _ERROR)}}},
            c.ERRORS_PATH + "/{fingerprint}": {"get": {
                "summary": "One error group with its latest occurrences, resolution history and suggestions.",
                "parameters": [_FP],
                "responses": {"200": _resp("The group", {"type": "object"}),
                              "404": _resp("Unknown fingerprint", _ERROR)}}},
            c.ERRORS_PATH + "/{fingerprint}/resolve": {"post": {
                "summary": "Record what fixed a group; if it comes back it is flagged regressed with this note.",
                "parameters": [_FP],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["note"], "properties": {
                        "note": {"type": "string", "minLength": 1, "maxLength": 4000},
                        "resolved_by": {"type": "string", "maxLength": 200}}}}}},
                "responses": {"200": _resp("The group, resolved", {"type": "object"}),
                              "400": _resp("Bad body", _ERROR), "401": _resp("Admin token wrong", _ERROR),
                              "403": _resp("No admin token and not loopback", _ERROR),
                              "404": _resp("Unknown fingerprint", _ERROR),
                              "413": _resp("Body over 64 KiB", _ERROR)}}},
            c.ATTRIBUTION_PATH: {"get": {
                "summary": "BubbleUp-style attribution: the values, numeric ranges and pairs that set a selection of "
                           "runs (failed, slow, a time window, an error group, a filter) apart from its baseline, "
                           "ranked by log p-value (Fisher, Benjamini-Hochberg), with each dimension's distribution "
                           "in both. Outcome attributes (error.type, status codes, exception.*) are never causes.",
                "parameters": [
                    _q("workflow", {"type": "string", "description": "required, except with select=error"}),
                    _q("select", {"enum": ["failed", "slow", "window", "error", "filter"]}),
                    _q("by", {"enum": ["failed", "slow"], "description": "old name of select"}),
                    _q("threshold_ms", {"type": "number", "minimum": 0, "description": "select=slow"}),
                    _q("percentile", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100,
                                      "description": "select=slow (default 90)"}),
                    _q("operation", {"type": "string", "description": "select=slow per step: operation or "
                                                                      "component/operation"}),
                    _q("from", {**_TIME, "description": "select=window: start of the selected window"}),
                    _q("to", {**_TIME, "description": "select=window: end of the selected window (default until)"}),
                    _q("fingerprint", {"type": "string", "description": "select=error: the error group"}),
                    {**_q("where", {"type": "array", "items": {"type": "string"}}), "explode": True,
                     "description": "dimension:value, dimension>number or dimension<number; repeatable"},
                    _q("outcome_keys", {"type": "string", "description": "comma-separated keys (prefix.* allowed) "
                                                                         "never tested as causes"}),
                    _q("since", _TIME), _q("until", _TIME), _q("q", {"type": "number"}),
                    _q("top", {"type": "integer", "minimum": 1, "maximum": 200}),
                    _q("dimensions", {"type": "integer", "minimum": 0, "maximum": 500}),
                    _q("max_values", {"type": "integer", "minimum": 2, "maximum": 10000}),
                    _q("pairs", {"enum": ["true", "false"]}),
                    _q("max_runs", {"type": "integer", "minimum": 10, "maximum": 1000000}),
                    _q("sample", {"type": "integer", "minimum": 100, "maximum": 100000,
                                  "description": "spans are read for at most this many runs a side"})],
                "responses": {"200": _resp("Ranked findings and distributions", {"type": "object"}),
                              "400": _resp("Bad query, or a selection that matches nothing (error.field names "
                                           "the parameter)", _ERROR)}}},
            c.REGRESSIONS_PATH: {"get": {
                "summary": "Regressions and improvements found by scheduled or on-demand detection.",
                "parameters": [_q("direction", {"enum": ["regression", "improvement"]}), _q("workflow"),
                               _q("limit", {"type": "integer"})],
                "responses": {"200": _resp("Findings", {"type": "object"}), "400": _resp("Bad query", _ERROR)}}},
            c.REPORTS_PATH: {"get": {
                "summary": "A debugging report over a window: SLOs and error budget, regressions with plots, top "
                           "error groups with attribution and suggestions, slowest steps and their trend, alerts, "
                           "endpoint gaps; each with links to runs, dashboards and log queries. HTML is "
                           "self-contained (inline CSS and SVG, nothing loaded).",
                "parameters": [
                    {**_q("since"), "description": "a duration before until (90m, 24h, 7d, 2w; default 7d) or a "
                                                   "time (RFC 3339 or Unix seconds)"},
                    {**_q("until", _TIME), "description": "end of the window; default now"}, _q("workflow"),
                    _q("format", {"enum": ["html", "md", "json"], "default": "html"})],
                "responses": {"200": {"description": "The report", "content": {
                    "text/html": {"schema": {"type": "string"}}, "text/markdown": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}}}},
                              "400": _resp("Bad parameter (error.field names it)", _ERROR),
                              "404": _resp("The run store is off", _ERROR)}}},
            c.REGRESSIONS_PATH + "/detect": {"post": {
                "summary": "Run detection now (admin).",
                "responses": {"200": _resp("Result", {"type": "object"}),
                              "409": _resp("No Prometheus configured for detection", _ERROR)}}},
            c.METRICS_PATH: {"get": {
                "summary": "Prometheus scrape target; OpenMetrics with exemplars when asked for.",
                "responses": {"200": {"description": "Exposition", "content": {
                    "text/plain; version=0.0.4": {"schema": {"type": "string"}},
                    "application/openmetrics-text; version=1.0.0": {"schema": {"type": "string"}}}}}}},
            c.HEALTH_PATH: {"get": {
                "summary": "Liveness (200 while the process answers) and each component's state: store, writer "
                           "(the run store's queue), loki, prometheus (detection), grafana, and forward (each "
                           "trace forward destination, when any is set); the store is probed at most every 1.5 s.",
                "responses": {"200": _resp("The process is alive; `status` and `components` say how it is",
                                           {"$ref": "#/components/schemas/Health"})}}},
            c.READY_PATH: {"get": {
                "summary": "Readiness: 200 once the store answers, 503 while it does not (or while stopping).",
                "responses": {"200": _resp("Ready", {"type": "object", "properties": {"status": {"const": "ready"}}}),
                              "503": _resp("Not ready; `error.code` is store_unreachable or stopping, "
                                           "`error.message` says why", {"$ref": "#/components/schemas/NotReady"})}}},
            c.OPENAPI_PATH: {"get": {"summary": "This document.",
                                     "responses": {"200": _resp("OpenAPI 3.1", {"type": "object"})}}},
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "field": {"type": "string"}}}}},
                "Component": {"type": "object", "required": ["state"], "properties": {
                    "state": {"enum": ["ok", "degraded", "down", "disabled"]},
                    "queued": {"type": "integer"}, "capacity": {"type": "integer"},
                    "dropped": {"type": "object", "additionalProperties": {"type": "integer"},
                                "description": "items given up on since start, by reason"},
                    "error": {"type": ["string", "null"], "description": "why the last probe failed"},
                    "last_error": {"type": ["string", "null"]},
                    "last_error_at": {"type": ["string", "null"], "format": "date-time"},
                    "last_ok_at": {"type": ["string", "null"], "format": "date-time"},
                    "reason": {"type": "string", "description": "why a component is disabled"}}},
                "Health": {"type": "object", "required": ["status", "components"], "properties": {
                    "status": {"enum": ["ok", "degraded", "down"]},
                    "components": {"type": "object", "properties": {
                        **{k: {"$ref": "#/components/schemas/Component"}
                           for k in ("store", "writer", "loki", "prometheus", "grafana")},
                        "forward": {"allOf": [{"$ref": "#/components/schemas/Component"}], "properties": {
                            "destinations": {"type": "object", "description": "each forward destination by name: "
                                             "state, masked URL, header names, queue, sent, dropped, last error",
                                             "additionalProperties": {"$ref": "#/components/schemas/Component"}}}}}}}},
                "NotReady": {"type": "object", "required": ["status", "error"], "properties": {
                    "status": {"const": "not_ready"},
                    "error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"enum": ["store_unreachable", "stopping"]}, "message": {"type": "string"}}}}},
                "IngestResult": {"type": "object", "properties": {
                    "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "reason": {"type": "string"},
                        "message": {"type": "string"}}}}}},
            },
            "securitySchemes": {"ingestToken": {"type": "http", "scheme": "bearer"}},
        },
    }


bp = Blueprint("openapi", __name__)


@bp.get(c.OPENAPI_PATH)
def openapi():
    return Response(orjson.dumps(openapi_document()), mimetype="application/json")
