"""``GET /api/v1/regressions`` lists findings; ``POST /api/v1/regressions/detect`` runs detection now."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, current_app, request

from exporter import conventions as c
from exporter.web import HttpError

from ..admin import require_admin
from ..query import check_text, number_arg


def create_blueprint(service) -> Blueprint:
    bp = Blueprint("regressions", __name__)

    @bp.get(c.REGRESSIONS_PATH)
    def list_regressions():
        direction = request.args.get("direction")
        if direction not in (None, "regression", "improvement"):
            raise HttpError(400, "invalid_query", "direction must be regression or improvement", "direction")
        limit = number_arg("limit", 100, 1, 1000)
        workflow = check_text(request.args["workflow"], "workflow") if request.args.get("workflow") else None
        rows = service.list(direction=direction, workflow=workflow, limit=limit)
        return Response(orjson.dumps({"regressions": rows, "last_run": service.last_run}), mimetype="application/json")

    @bp.post(c.REGRESSIONS_PATH + "/detect")
    def detect_now():
        cfg = current_app.extensions["flowscope"].config
        require_admin(cfg, "triggering detection")
        try:
            result = service.run_once()
        except RuntimeError as e:
            raise HttpError(409, "detection_unavailable", str(e)) from None
        return Response(orjson.dumps(result), mimetype="application/json")

    return bp
