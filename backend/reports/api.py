"""``GET /api/v1/reports``: the debugging report over a window (:mod:`backend.reports`).

Parameters: ``since`` (a duration before ``until``, ``7d`` by default, or a time), ``until`` (RFC 3339 or Unix
seconds; now by default), ``workflow``, ``format`` (``html``, the default; ``md``; ``json``). A bad one is a 400
naming it.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, request

from exporter import conventions as c
from exporter.web import HttpError

from ..ext import current_flowscope, run_store
from . import ReportError, make_report

bp = Blueprint("reports", __name__)


@bp.get(c.REPORTS_PATH)
def report():
    a = request.args
    store = run_store()
    try:
        body, mimetype = make_report(store, current_flowscope().config, a.get("since"), a.get("until"),
                                     a.get("workflow"), a.get("format"), time.time_ns())
    except ReportError as e:
        raise HttpError(400, "invalid_query", e.message, e.field) from None
    return Response(body, mimetype=mimetype.split(";")[0])
