"""WSGI middleware that gives every request a correlation ID.

Reads ``X-Correlation-ID`` (or creates one), honours a W3C ``traceparent``
(its trace ID becomes the run's trace ID, and the correlation ID when none was
sent), keeps it in a contextvar for the request, and echoes it on the response.

Flask::

    app.wsgi_app = CorrelationIdMiddleware(app.wsgi_app)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .. import conventions as c
from .context import RequestContext, current_request, current_step

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from _typeshed import OptExcInfo

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_CID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace_id, parent span_id) from a W3C traceparent header, or None if absent or invalid."""
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if not m or m.group(1) == "ff" or m.group(2) == "0" * 32 or m.group(3) == "0" * 16:
        return None
    return m.group(2), m.group(3)


class CorrelationIdMiddleware:
    def __init__(self, app: WSGIApplication, header: str = c.CORRELATION_HEADER):
        self.app = app
        self.header = header
        self._environ_key = "HTTP_" + header.upper().replace("-", "_")

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        tp = parse_traceparent(environ.get("HTTP_TRACEPARENT"))
        cid = environ.get(self._environ_key)
        if not cid or not _CID.match(cid):
            cid = tp[0] if tp else uuid.uuid4().hex
        ctx = RequestContext(cid, tp[0] if tp else None, tp[1] if tp else None)
        environ["flowscope.correlation_id"] = cid
        header = self.header

        def _start_response(status: str, headers: list[tuple[str, str]],
                            exc_info: OptExcInfo | None = None) -> Callable[[bytes], object]:
            headers = [(k, v) for k, v in headers if k.lower() != header.lower()]
            headers.append((header, cid))
            return start_response(status, headers, exc_info)

        token = current_request.set(ctx)
        # A request starts with no active run, whatever the worker thread did before.
        step_token = current_step.set(None)
        try:
            return self.app(environ, _start_response)
        finally:
            current_step.reset(step_token)
            current_request.reset(token)
