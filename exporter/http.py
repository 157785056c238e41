"""The exporter's HTTP surface as a Flask blueprint: OTLP, native ingest, profiles, /metrics and health.

Views parse the request, call the pipeline, and serialise the result. Every
refusal is JSON ``{"error": {"code", "message", "field"?}}`` with a 4xx.

A replica whose role is ``backend`` (``FLOWSCOPE_ROLE``) refuses the ingest routes (OTLP, native spans,
profiles) with a 404 naming its role, counted in ``flowscope_ingest_requests_rejected_total{reason="wrong_role"}``;
/metrics, health and readiness answer on every role.

The exporter serves on its own, without the backend: :func:`init_app` binds an :class:`Exporter` to an
app and registers :data:`bp`; every view reaches it through :func:`current_exporter`::

    app = Flask(__name__)
    init_app(app, build(load_config()))   # the backend's create_app does the same for its exporter
"""

from __future__ import annotations

import time
from typing import NoReturn

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from . import conventions as c
from .decode import DecodeResult, native, otlp
from .decode import otlp_logs as log_decode
from .errors import DecodeError
from .exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, wants_openmetrics
from .profiles import MEMORY_FORMATS, Profile, ProfileError, check_bytes, parse_folded, parse_memory, parse_pstats
from .runtime import Exporter
from .validate import MAX_ID_CHARS, MAX_LABEL_CHARS, clean_label
from .web import HttpError, bearer_ok, error_response, read_body

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
#: The key of the app's :class:`Exporter` in ``app.extensions``; read it through :func:`current_exporter`.
EXTENSION = "flowscope.exporter"

bp = Blueprint("exporter", __name__)

#: The ingest endpoints and the ``format`` their refusals are counted under; a ``backend`` replica refuses them.
INGEST_ENDPOINTS = {"exporter.otlp_traces": "otlp", "exporter.native_spans": c.FORMAT_NATIVE,
                    "exporter.profiles": "profile", "exporter.otlp_logs": "otlp",
                    "exporter.native_logs": c.FORMAT_NATIVE, "exporter.browser_logs": c.FORMAT_BROWSER}


def init_app(app: Flask, exporter: Exporter) -> None:
    """Serve ``exporter``'s ingest, /metrics and health on ``app``."""
    app.extensions[EXTENSION] = exporter
    app.register_blueprint(bp)


def current_exporter(app: Flask | None = None) -> Exporter:
    """The :class:`Exporter` bound by :func:`init_app` to ``app`` (default: the app handling this request)."""
    exporter: Exporter = (current_app if app is None else app).extensions[EXTENSION]
    return exporter


def _check_auth(ex: Exporter) -> None:
    token = ex.config.ingest_token
    if not token:
        return
    if not bearer_ok(token):
        raise HttpError(401, "unauthorized", "ingest requires Authorization: Bearer <FLOWSCOPE_INGEST_TOKEN>",
                        headers={"WWW-Authenticate": 'Bearer realm="flowscope"'})


def _json(body: bytes, field: str | None = None):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, "malformed_body", f"body is not valid JSON: {e}", field) from None


def _decoded(ex: Exporter, fmt: str, decode, auth: bool = True):
    """Authenticate and decode; a whole-request refusal is counted and answered as its 4xx."""
    try:
        if auth:
            _check_auth(ex)
        return decode()
    except HttpError as e:
        ex.pipeline.reject_request(fmt, e.code)
        raise
    except DecodeError as e:
        ex.pipeline.reject_request(fmt, "malformed_body")
        raise HttpError(400, "malformed_body", str(e), e.field) from None


def _reasons(rejected) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r.reason] = counts.get(r.reason, 0) + 1
    return list(counts.items())


def _accept(ex: Exporter, fmt: str, decode) -> DecodeResult:
    """Authenticate, read, decode and ingest; count whole-request refusals."""
    result: DecodeResult = _decoded(ex, fmt, decode)
    ex.pipeline.ingest(result.spans, fmt, _reasons(result.rejected), result.truncated)
    for e in result.errors:
        ex.pipeline.record_error(e)
    return result


def _media_type() -> str:
    return (request.mimetype or "").lower()


@bp.errorhandler(HttpError)
def _http_error(e: HttpError):
    return error_response(e.status, e.code, e.message, e.field, e.headers)


@bp.before_request
def _ingest_served_here() -> None:
    """A ``backend`` replica takes no ingest: 404, not 503, so a client pointed at it fails loudly instead of
    retrying a replica that will never take its spans."""
    fmt = INGEST_ENDPOINTS.get(request.endpoint or "")
    if fmt is None:
        return
    ex = current_exporter()
    if ex.config.role == c.ROLE_BACKEND:
        ex.pipeline.reject_request(fmt, "wrong_role")
        raise HttpError(404, "wrong_role", f"this server's role is {c.ROLE_BACKEND} (FLOWSCOPE_ROLE): it takes no "
                        f"ingest; send {request.path} to a replica whose role is {c.ROLE_INGEST} or {c.ROLE_ALL}")


def _accept_traces(ex: Exporter, fmt: str, decode) -> DecodeResult:
    """:func:`_accept` for ``/v1/traces``; once accepted, the body as received (decompressed) goes to the forward
    destinations' queues (:mod:`exporter.forward`), never blocking this request."""
    body = b""

    def read_and_decode() -> DecodeResult:
        nonlocal body
        body = read_body(ex.config.max_body_bytes)
        return decode(body)

    result = _accept(ex, fmt, read_and_decode)
    ex.forward(fmt, body)  # in an HTTP worker process (exporter.prefork), through the aggregator's forwarders
    return result


@bp.post(c.OTLP_TRACES_PATH)
def otlp_traces():
    ex = current_exporter()
    mt = _media_type()
    if mt in PROTOBUF_TYPES:
        fmt = c.FORMAT_OTLP_PROTOBUF
        result = _accept_traces(ex, fmt, otlp.decode_protobuf)
        resp = ExportTraceServiceResponse()
        if result.rejected:
            resp.partial_success.rejected_spans = len(result.rejected)
            resp.partial_success.error_message = result.summary()
        return Response(resp.SerializeToString(), status=200, mimetype="application/x-protobuf")
    if mt == "application/json":
        fmt = c.FORMAT_OTLP_JSON
        result = _accept_traces(ex, fmt, otlp.decode_json)
        body = {}
        if result.rejected:
            body = {"partialSuccess": {"rejectedSpans": len(result.rejected), "errorMessage": result.summary()}}
        return Response(orjson.dumps(body), status=200, mimetype="application/json")
    _unsupported_otlp_media_type(ex, mt)


def _unsupported_otlp_media_type(ex: Exporter, mt: str) -> NoReturn:
    """An OTLP route's 415 (traces and logs alike), counted as a refused request."""
    ex.pipeline.reject_request("otlp", "unsupported_media_type")
    raise HttpError(415, "unsupported_media_type",
                    f"Content-Type {mt or '(none)'!r} is not supported; use application/x-protobuf "
                    "or application/json", field="Content-Type")


def _require_native_json(ex: Exporter) -> None:
    """A native route's 415 unless the body is JSON, counted as a refused request."""
    if _media_type() != "application/json":
        ex.pipeline.reject_request(c.FORMAT_NATIVE, "unsupported_media_type")
        raise HttpError(415, "unsupported_media_type", "Content-Type must be application/json",
                        field="Content-Type")


@bp.post(c.NATIVE_SPANS_PATH)
def native_spans():
    ex = current_exporter()
    _require_native_json(ex)
    result = _accept(ex, c.FORMAT_NATIVE, lambda: native.decode(_json(read_body(ex.config.max_body_bytes))))
    body = {"accepted": len(result.spans) + len(result.errors), "rejected": len(result.rejected),
            "errors": [{"index": r.index, "reason": r.reason, "message": r.detail} for r in result.rejected[:20]]}
    status = 200
    if result.rejected and not result.spans and not result.errors:
        status = 400
        body["error"] = {"code": "no_valid_spans", "message": result.summary()}
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@bp.post(c.PROFILES_PATH)
def profiles():
    """Folded stacks (text/plain) or a pstats dump (application/octet-stream), tied to ?workflow=; memory
    profiles are folded stacks of bytes (``format=alloc|held``, optional ``peak_bytes`` and ``net_bytes``)."""
    ex = current_exporter()
    try:
        _check_auth(ex)
    except HttpError as e:
        ex.pipeline.reject_request("profile", e.code)
        raise
    args = request.args
    workflow = args.get("workflow", "")
    if not workflow or len(workflow) > MAX_LABEL_CHARS:
        raise HttpError(400, "missing_field",
                        f"the workflow query parameter is required (1-{MAX_LABEL_CHARS} characters)", "workflow")
    cid = args.get("correlation_id") or None
    if cid is not None and len(cid) > MAX_ID_CHARS:
        raise HttpError(400, "invalid_value", f"correlation_id is longer than {MAX_ID_CHARS} characters",
                        "correlation_id")
    cid = clean_label(cid)[0] if cid is not None else None
    fmt = args.get("format") or ("pstats" if _media_type() == "application/octet-stream" else "folded")
    if fmt not in ("folded", "pstats", *MEMORY_FORMATS):
        raise HttpError(400, "invalid_value", f"format must be folded, pstats, alloc or held, got {fmt[:40]!r}",
                        "format")
    peak = net = None
    if fmt in MEMORY_FORMATS:  # checked before the body is read, each named in its own 400
        for name in ("peak_bytes", "net_bytes"):
            if name in args:
                try:
                    n = check_bytes(args[name], name, signed=name == "net_bytes")
                except ProfileError as e:
                    raise HttpError(400, "invalid_value", str(e), name) from None
                peak, net = (n, net) if name == "peak_bytes" else (peak, n)
    body = read_body(ex.config.max_body_bytes)
    try:
        if fmt in MEMORY_FORMATS:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ProfileError("folded stacks must be UTF-8 text") from None
            profile = parse_memory(text, fmt, peak, net)
            profile.workflow, profile.correlation_id = workflow, cid
        elif fmt == "folded":
            try:
                rate = float(args.get("sample_rate", "100")[:40])
            except ValueError:
                raise HttpError(400, "invalid_value", "sample_rate must be a number of Hz", "sample_rate") from None
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise ProfileError("folded stacks must be UTF-8 text") from None
            self_s, stacks = parse_folded(text, rate)
            profile = Profile(workflow, self_s, cid, stacks, rate)
        else:
            profile = Profile(workflow, parse_pstats(body), cid)
    except ProfileError as e:
        ex.pipeline.reject_request("profile", "malformed_body")
        raise HttpError(400, "malformed_profile", str(e), "body") from None
    ex.pipeline.record_profile(profile, fmt)
    if profile.is_memory:
        leaves = profile.self_bytes()
        top_b = sorted(leaves.items(), key=lambda kv: -kv[1])[:5]
        return Response(orjson.dumps({"accepted": True, "format": fmt, "functions": len(leaves),
                                      "bytes": sum(leaves.values()),
                                      "top": [{"function": f, "bytes": v} for f, v in top_b]}),
                        mimetype="application/json")
    top = sorted(profile.self_seconds.items(), key=lambda kv: -kv[1])[:5]
    return Response(orjson.dumps({"accepted": True, "format": fmt, "functions": len(profile.self_seconds),
                                  "cpu_seconds": round(sum(profile.self_seconds.values()), 6),
                                  "top": [{"function": f, "self_seconds": round(v, 6)} for f, v in top]}),
                    mimetype="application/json")


@bp.get(c.METRICS_PATH)
def metrics():
    ex = current_exporter()
    om = wants_openmetrics(request.headers.get("Accept"))
    return Response(ex.metrics_body(om), mimetype=None,
                    content_type=OPENMETRICS_CONTENT_TYPE if om else TEXT_CONTENT_TYPE)


@bp.get(c.HEALTH_PATH)
def health():
    """Liveness (always 200 while the process answers) and each component's state; see :meth:`Exporter.health`."""
    return Response(orjson.dumps(current_exporter().health_body()), mimetype="application/json")


@bp.get(c.READY_PATH)
def ready():
    """200 while the store answers; 503 with a JSON body naming why not (the store's error, or stopping)."""
    ex = current_exporter()
    if ex.closing:
        code, message = "stopping", "the server is shutting down"
    else:
        error = ex.store_error()
        if error is None:
            return Response(orjson.dumps({"status": "ready"}), mimetype="application/json")
        code, message = "store_unreachable", f"the store does not answer: {error}"
    body = {"status": "not_ready", "error": {"code": code, "message": message}}
    return Response(orjson.dumps(body), status=503, mimetype="application/json", headers={"Retry-After": "1"})


# --- application logs (issue 14) ------------------------------------------------------------------------


def _accept_logs(ex: Exporter, fmt: str, decode, auth: bool = True) -> log_decode.LogDecodeResult:
    """Authenticate, read, decode and ingest log lines; a request none of whose lines is valid is a 400 naming
    the first bad field, and nothing of it is kept. Each line refused is counted by reason either way."""
    result: log_decode.LogDecodeResult = _decoded(ex, fmt, decode, auth)
    if result.rejected and not result.lines:
        ex.pipeline.ingest_logs([], fmt, _reasons(result.rejected))
        ex.pipeline.reject_request(fmt, "no_valid_lines")
        raise HttpError(400, "no_valid_lines", result.summary(), result.rejected[0].field)
    ex.pipeline.ingest_logs(result.lines, fmt, _reasons(result.rejected), result.truncated)
    return result


def _json_body(body: bytes):
    return _json(body, "body")


def _log_result(result: log_decode.LogDecodeResult) -> dict:
    return {"accepted": len(result.lines), "rejected": len(result.rejected),
            "errors": [{"index": r.index, "reason": r.reason, "field": r.field, "message": r.detail}
                       for r in result.rejected[:20]]}


@bp.post(c.OTLP_LOGS_PATH)
def otlp_logs():
    """OTLP/HTTP logs (``ExportLogsServiceRequest``), protobuf or JSON: what any OpenTelemetry SDK's log exporter
    posts. Records that can't be kept are counted in ``partialSuccess``, each named in its ``errorMessage``."""
    ex = current_exporter()
    mt = _media_type()
    now = time.time_ns()
    limit = ex.config.max_body_bytes
    if mt in PROTOBUF_TYPES:
        result = _accept_logs(ex, c.FORMAT_OTLP_PROTOBUF, lambda: log_decode.decode_protobuf(read_body(limit), now))
        resp = ExportLogsServiceResponse()
        if result.rejected:
            resp.partial_success.rejected_log_records = len(result.rejected)
            resp.partial_success.error_message = result.summary()
        return Response(resp.SerializeToString(), status=200, mimetype="application/x-protobuf")
    if mt == "application/json":
        result = _accept_logs(ex, c.FORMAT_OTLP_JSON, lambda: log_decode.decode_json(read_body(limit), now))
        body = {}
        if result.rejected:
            body = {"partialSuccess": {"rejectedLogRecords": len(result.rejected), "errorMessage": result.summary()}}
        return Response(orjson.dumps(body), status=200, mimetype="application/json")
    _unsupported_otlp_media_type(ex, mt)


@bp.post(c.LOGS_PATH)
def native_logs():
    """Native JSON log lines (``{"lines": [...]}``, :mod:`exporter.decode.otlp_logs`): the SDK's remote mode."""
    ex = current_exporter()
    _require_native_json(ex)
    result = _accept_logs(ex, c.FORMAT_NATIVE,
                          lambda: log_decode.decode_native(_json_body(read_body(ex.config.max_body_bytes))))
    return Response(orjson.dumps(_log_result(result)), mimetype="application/json")


#: Request headers a page may send cross-origin (``fetch`` with a JSON body sets Content-Type).
BROWSER_ALLOW_HEADERS = "Content-Type, Content-Encoding"


def _cors(ex: Exporter) -> dict[str, str] | None:
    """The CORS headers for this request's ``Origin``: None without one; 403 for an origin not allowed.

    Listed origins get their own origin back with ``Access-Control-Allow-Credentials`` (``navigator.sendBeacon``
    always sends credentials); ``*`` gets ``*`` and never credentials, as the Fetch standard requires."""
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    allowed = ex.config.browser_origins
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
    raise HttpError(403, "origin_not_allowed", f"Origin {origin[:200]!r} may not post browser logs; allowed: "
                    f"{', '.join(allowed) or 'none (FLOWSCOPE_BROWSER_ORIGINS is unset)'}", "Origin",
                    headers={"Vary": "Origin"})


@bp.route(c.BROWSER_LOGS_PATH, methods=["POST", "OPTIONS"])
def browser_logs():
    """A browser's console errors and user actions (:func:`exporter.decode.otlp_logs.decode_browser`).

    A page can't keep a secret, so a request from an allowed ``Origin`` needs no ingest token; one with no
    ``Origin`` (not a browser) needs it, when it is set, like every other ingest. ``Origin`` is no proof
    outside a browser: the size cap (``FLOWSCOPE_BROWSER_MAX_BODY_BYTES``) and the event cap bound what an
    anonymous client can post."""
    ex = current_exporter()
    try:
        cors = _cors(ex)
    except HttpError as e:
        ex.pipeline.reject_request(c.FORMAT_BROWSER, e.code)
        raise
    if request.method == "OPTIONS":  # the preflight of a cross-origin fetch with a JSON body
        headers = {**(cors or {}), "Access-Control-Allow-Methods": "POST, OPTIONS",
                   "Access-Control-Allow-Headers": BROWSER_ALLOW_HEADERS, "Access-Control-Max-Age": "600"}
        return Response(status=204, headers=headers)
    try:
        if _media_type() not in ("application/json", "text/plain"):  # text/plain: sendBeacon, no preflight
            ex.pipeline.reject_request(c.FORMAT_BROWSER, "unsupported_media_type")
            raise HttpError(415, "unsupported_media_type", "Content-Type must be application/json or text/plain "
                            "(JSON text)", field="Content-Type")
        now = time.time_ns()
        agent = request.headers.get("User-Agent")
        result = _accept_logs(ex, c.FORMAT_BROWSER, lambda: log_decode.decode_browser(
            _json_body(read_body(ex.config.browser_max_body_bytes)), now, agent), auth=cors is None)
    except HttpError as e:
        if cors:
            raise HttpError(e.status, e.code, e.message, e.field, {**(e.headers or {}), **cors}) from None
        raise
    return Response(orjson.dumps(_log_result(result)), mimetype="application/json", headers=cors)
