"""``GET /api/v1/regressions`` lists findings; ``POST /api/v1/regressions/detect`` runs detection now."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request

from exporter import conventions as c
from exporter.web import HttpError

from ..admin import require_admin
from ..ext import current_flowscope
from ..query import check_text, number_arg

bp = Blueprint("regressions", __name__)


@bp.get(c.REGRESSIONS_PATH)
def list_regressions():
    direction = request.args.get("direction")
    if direction not in (None, "regression", "improvement"):
        raise HttpError(400, "invalid_query", "direction must be regression or improvement", "direction")
    limit = number_arg("limit", 100, 1, 1000)
    workflow = check_text(request.args["workflow"], "workflow") if request.args.get("workflow") else None
    service = current_flowscope().regressions
    rows = service.list(direction=direction, workflow=workflow, limit=limit)
    return Response(orjson.dumps({"regressions": rows, "last_run": service.last_run}), mimetype="application/json")


@bp.post(c.REGRESSIONS_PATH + "/detect")
def detect_now():
    ext = current_flowscope()
    require_admin(ext.config, "triggering detection")
    try:
        result = ext.regressions.run_once()
    except RuntimeError as e:
        raise HttpError(409, "detection_unavailable", str(e)) from None
    return Response(orjson.dumps(result), mimetype="application/json")
