"""Alertmanager's webhook in, the alert list out.

``POST /api/v1/alerts/webhook`` takes Alertmanager's webhook payload, version 4
(https://prometheus.io/docs/alerting/latest/configuration/#webhook_config). It
is validated whole before anything is written: a malformed notification gets
a 400 naming the field and changes nothing. When ``FLOWSCOPE_WEBHOOK_TOKEN``
(bearer) or ``FLOWSCOPE_WEBHOOK_USERNAME``/``_PASSWORD`` (basic) is set, the
matching ``Authorization`` that Alertmanager's ``http_config`` sends is required.

``GET /api/v1/alerts?status=&severity=&workflow=&since=&limit=`` lists them.
"""

from __future__ import annotations

import base64
import hmac
import re
from typing import Any

import orjson
from flask import Blueprint, Response, request

from exporter import conventions as c
from exporter.web import HttpError, bearer_ok

from .ext import current_flowscope
from .query import check_text, number_arg, parse_alert_time, parse_datetime, read_body
from .store import IncomingAlert

STATUSES = ("firing", "resolved")
_FINGERPRINT = re.compile(r"^[0-9a-fA-F]{1,64}$")

bp = Blueprint("alerts", __name__)


def _str_map(v: Any, field: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise HttpError(400, "invalid_payload", f"{field} must be an object of strings", field)
    return v


def validate(doc: Any) -> tuple[str, list[IncomingAlert]]:
    """(receiver, alerts) from a v4 payload, or HttpError(400) naming the first bad field."""
    if not isinstance(doc, dict):
        raise HttpError(400, "invalid_payload", "payload must be a JSON object")
    if doc.get("version") != "4":
        raise HttpError(400, "invalid_payload", f"version must be \"4\", got {doc.get('version')!r}", "version")
    for k in ("status", "receiver"):
        if not isinstance(doc.get(k), str):
            raise HttpError(400, "invalid_payload", f"{k} is required and must be a string", k)
    if doc["status"] not in STATUSES:
        raise HttpError(400, "invalid_payload", f"status must be firing or resolved, got {doc['status']!r}", "status")
    raw = doc.get("alerts")
    if not isinstance(raw, list):
        raise HttpError(400, "invalid_payload", "alerts must be an array", "alerts")
    out = []
    for i, a in enumerate(raw):
        f = f"alerts[{i}]"
        if not isinstance(a, dict):
            raise HttpError(400, "invalid_payload", f"{f} must be an object", f)
        if a.get("status") not in STATUSES:
            raise HttpError(400, "invalid_payload", f"{f}.status must be firing or resolved", f"{f}.status")
        labels = _str_map(a.get("labels"), f"{f}.labels")
        if not labels.get("alertname"):
            raise HttpError(400, "invalid_payload", f"{f}.labels.alertname is required", f"{f}.labels.alertname")
        annotations = _str_map(a.get("annotations", {}), f"{f}.annotations")
        fp = a.get("fingerprint")
        if not isinstance(fp, str) or not _FINGERPRINT.match(fp):
            raise HttpError(400, "invalid_payload", f"{f}.fingerprint must be a hex string", f"{f}.fingerprint")
        starts = parse_alert_time(a.get("startsAt"), f"{f}.startsAt")
        if starts is None:
            raise HttpError(400, "invalid_payload", f"{f}.startsAt is required", f"{f}.startsAt")
        ends = parse_alert_time(a.get("endsAt", "0001-01-01T00:00:00Z"), f"{f}.endsAt")
        gen = a.get("generatorURL", "")
        if not isinstance(gen, str):
            raise HttpError(400, "invalid_payload", f"{f}.generatorURL must be a string", f"{f}.generatorURL")
        out.append(IncomingAlert(fp, a["status"], labels, annotations, starts, ends, gen))
    return doc["receiver"], out


def _check_auth(cfg) -> None:
    got = request.headers.get("Authorization", "")
    if cfg.webhook_token:
        ok = bearer_ok(cfg.webhook_token)
        challenge = 'Bearer realm="flowscope-alerts"'
    elif cfg.webhook_username:
        want = base64.b64encode(f"{cfg.webhook_username}:{cfg.webhook_password or ''}".encode()).decode()
        ok = got.startswith("Basic ") and hmac.compare_digest(got[6:].encode(), want.encode())
        challenge = 'Basic realm="flowscope-alerts"'
    else:
        return
    if not ok:
        raise HttpError(401, "unauthorized", "the alert webhook requires the configured Authorization",
                        headers={"WWW-Authenticate": challenge})


@bp.post(c.ALERTS_WEBHOOK_PATH)
def webhook():
    ext = current_flowscope()
    cfg = ext.config
    _check_auth(cfg)
    if (request.mimetype or "") != "application/json":
        raise HttpError(415, "unsupported_media_type", "Content-Type must be application/json", "Content-Type")
    try:
        doc = orjson.loads(read_body(cfg.max_body_bytes))
    except orjson.JSONDecodeError as e:
        raise HttpError(400, "malformed_body", f"body is not valid JSON: {e}") from None
    receiver, incoming = validate(doc)
    counts = ext.alerts.record(incoming, receiver)
    return Response(orjson.dumps({"received": len(incoming), **counts}), mimetype="application/json")


@bp.get(c.ALERTS_PATH)
def list_alerts():
    args = request.args
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise HttpError(400, "invalid_query", "status must be firing or resolved", "status")
    since = parse_datetime(args["since"], "since") if args.get("since") else None
    limit = number_arg("limit", 100, 1, 1000)
    severity, workflow = (check_text(args[k], k) if args.get(k) else None for k in ("severity", "workflow"))
    rows = current_flowscope().alerts.list(status=status, severity=severity, workflow=workflow, since=since,
                                           limit=limit)
    return Response(orjson.dumps({"alerts": rows}), mimetype="application/json")
