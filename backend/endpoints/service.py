"""What the endpoint views do, without Flask: check a registration body, and serialise a report.

A registration is ``{"service": "shop", "endpoints": [{"method": "GET", "path": "/users/{id}", "view": ...,
"auth": true, "source": "flask"}], "replace": true}``, or ``{"service": "shop", "openapi": <document>}`` with the
document as a JSON object or as JSON/YAML text. Every refusal is an :class:`~exporter.web.HttpError` 400 naming
the field (``endpoints[3].method``, ``openapi: paths./users.get: expected an operation mapping``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from exporter import conventions as c
from exporter.sdk.routes import HTTP_METHODS, OpenAPIError, normalize_route, parse_document, routes_from_openapi
from exporter.store.endpoints import EndpointEntry, EndpointReport, EndpointUsage
from exporter.web import HttpError

from ..query import iso_ns

#: Most endpoints one registration may list.
MAX_ENDPOINTS = 5000
_FIELDS = {"service", "endpoints", "openapi", "replace"}
_ENTRY_FIELDS = {"method", "path", "view", "auth", "source"}


@dataclass(frozen=True, slots=True)
class Registration:
    service: str
    entries: list[EndpointEntry]
    replace: bool


def _bad(message: str, field: str) -> HttpError:
    return HttpError(400, "invalid_payload", message, field)


def _text(v: Any, field: str, max_len: int, required: bool = True) -> str | None:
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > max_len or "\x00" in v:
        raise _bad(f"{field} must be a string of 1 to {max_len} characters, without NUL", field)
    return v


def _entry(raw: Any, where: str) -> EndpointEntry:
    if not isinstance(raw, dict):
        raise _bad(f"{where} must be an object", where)
    for k in raw:
        if k not in _ENTRY_FIELDS:
            raise _bad(f"unknown field; expected one of {sorted(_ENTRY_FIELDS)}", f"{where}.{str(k)[:40]}")
    method = _text(raw.get("method"), f"{where}.method", 16)
    assert method is not None
    method = method.upper()
    if method not in HTTP_METHODS and method != c.METHOD_ANY:
        raise _bad(f"method must be one of {', '.join(HTTP_METHODS)} or {c.METHOD_ANY}", f"{where}.method")
    path = _text(raw.get("path"), f"{where}.path", 500)
    assert path is not None
    if not path.startswith("/"):
        raise _bad("path must start with /", f"{where}.path")
    auth = raw.get("auth")
    if auth is not None and not isinstance(auth, bool):
        raise _bad("auth must be true, false or null", f"{where}.auth")
    source = raw.get("source", "manual")
    if source not in c.ENDPOINT_SOURCES:
        raise _bad(f"source must be one of {', '.join(c.ENDPOINT_SOURCES)}", f"{where}.source")
    normalized = normalize_route(path)
    if len(normalized) > 500:
        raise _bad("path is over 500 characters once normalized", f"{where}.path")
    return EndpointEntry(method, normalized, _text(raw.get("view"), f"{where}.view", 300, required=False), auth,
                         source)


def parse_registration(body: Any) -> Registration:
    """The registration in a decoded JSON body; 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise _bad("body must be a JSON object with service and endpoints (or openapi)", "$")
    for k in body:
        if k not in _FIELDS:
            raise _bad(f"unknown field; expected one of {sorted(_FIELDS)}", str(k)[:40])
    service = _text(body.get("service"), "service", 200)
    assert service is not None
    replace = body.get("replace", True)
    if not isinstance(replace, bool):
        raise _bad("replace must be true or false", "replace")
    if ("endpoints" in body) == ("openapi" in body):
        raise _bad("give endpoints (a list) or openapi (a document), one of the two", "endpoints")
    if "openapi" in body:
        doc = body["openapi"]
        try:
            if isinstance(doc, str):
                doc = parse_document(doc)
            if not isinstance(doc, dict):
                raise OpenAPIError(f"the OpenAPI document must be an object or JSON/YAML text, got "
                                   f"{type(doc).__name__}")
            routes = routes_from_openapi(doc)
        except OpenAPIError as e:
            raise _bad(f"openapi: {e}", "openapi") from None
        raw_entries: list[Any] = [r.to_json() for r in routes]
    else:
        raw_entries = body["endpoints"]
        if not isinstance(raw_entries, list):
            raise _bad("endpoints must be a list", "endpoints")
    if len(raw_entries) > MAX_ENDPOINTS:
        raise _bad(f"at most {MAX_ENDPOINTS} endpoints per registration, got {len(raw_entries)}", "endpoints")
    return Registration(service, [_entry(e, f"endpoints[{i}]") for i, e in enumerate(raw_entries)], replace)


def _usage(u: EndpointUsage) -> dict[str, Any]:
    return {
        "service": u.service, "method": u.method, "path": u.path, "documented": u.documented,
        "view": u.view, "auth": u.auth, "source": u.source,
        "registered_at": iso_ns(u.registered_at_ns) if u.registered_at_ns is not None else None,
        "calls": u.calls, "errors": u.errors,
        "error_ratio": round(u.error_ratio, 6) if u.error_ratio is not None else None,
        "p95_ms": round(u.p95_ms, 3) if u.p95_ms is not None else None,
        "last_seen": iso_ns(u.last_seen_ns) if u.last_seen_ns is not None else None,
        "statuses": u.statuses,
        "workflows": [{"workflow": w, "runs": f"{c.RUN_PAGE_PATH}?workflow={quote(w, safe='')}"}
                      for w in u.workflows],
    }


def report_json(r: EndpointReport) -> dict[str, Any]:
    """The API's body: every documented endpoint with its traffic, the gaps both ways, and what was read."""
    return {
        "since": iso_ns(r.since_ns), "until": iso_ns(r.until_ns),
        "endpoints": [_usage(u) for u in r.endpoints],
        "never_called": [{"service": u.service, "method": u.method, "path": u.path} for u in r.never_called],
        "undocumented": [_usage(u) for u in r.undocumented],
        "services_without_inventory": r.services_without_inventory,
        "spans_read": r.spans_read, "truncated": r.truncated,
    }
