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
                "summary": "A CPU profile for a workflow: folded stacks (text/plain) or a cProfile pstats dump.",
                "parameters": [
                    {"name": "workflow", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "correlation_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "schema": {"enum": ["folded", "pstats"]}},
                    {"name": "sample_rate", "in": "query", "schema": {"type": "number", "default": 100}}],
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
                "summary": "Time travel: the reconstructed state after step N and its diff from step N-1.",
                "parameters": [_RUN_ID, {**_q("step", {"type": "integer", "minimum": 0}), "required": True}],
                "responses": {"200": _resp("State and diff", {"type": "object"}),
                              "400": _resp("Step out of range (`error.valid_range`) or not a number", _ERROR),
                              "404": _resp("Unknown run", _ERROR)}}},
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
                "summary": "The run's CPU flame graph (profiles posted or sampled with its correlation_id).",
                "parameters": [_RUN_ID],
                "responses": {"200": _resp("SVG", {"type": "string"}, "image/svg+xml"),
                              "404": _resp("Unknown run", _ERROR)}}},
            c.FLAMEGRAPH_PATH: {"get": {
                "summary": "Flame graph as Grafana's Flame Graph data frame (label, level, value, self), or SVG.",
                "parameters": [_q("workflow"), _q("correlation_id"), _q("since", _TIME), _q("until", _TIME),
                               _q("format", {"enum": ["json", "svg"]})],
                "responses": {"200": _resp("Data frame", {"type": "object"}), "400": _resp("Bad query", _ERROR)}}},
            c.FLAMEGRAPH_PATH + "/diff": {"get": {
                "summary": "Diff flame graph: baseline window (value/self) against recent (valueRight/selfRight).",
                "parameters": [{**_q("workflow"), "required": True}, _q("window_s", {"type": "number"}),
                               _q("since", _TIME), _q("until", _TIME), _q("baseline_since", _TIME),
                               _q("baseline_until", _TIME), _q("format", {"enum": ["json", "svg"]})],
                "responses": {"200": _resp("Data frame", {"type": "object"}), "400": _resp("Bad query", _ERROR)}}},
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
                           "(the run store's queue), loki, prometheus (detection), grafana; the store is probed at "
                           "most every 1.5 s.",
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
                        k: {"$ref": "#/components/schemas/Component"}
                        for k in ("store", "writer", "loki", "prometheus", "grafana")}}}},
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
