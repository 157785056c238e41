"""Discover an app's routes (Flask, Django, FastAPI/Starlette) or read them from an OpenAPI document, and register
them with Flowscope as the service's endpoint inventory, which it checks against traffic.

Use it once at start-up, or from a deploy step::

    import flowscope
    flowscope.register_endpoints(app, service="shop", url="http://flowscope:9464")    # Flask / FastAPI app
    flowscope.register_endpoints("django", service="shop", url=...)                    # Django's ROOT_URLCONF
    flowscope.register_endpoints("openapi.yaml", service="shop", url=...)              # a file or an http(s) URL
    routes = flowscope.discover_routes(app)       # [Route(method='GET', path='/users/{id}', view=..., auth=...)]

Paths are templates in OpenAPI's spelling (``/users/{id}``) whatever the framework writes (``<int:id>``,
``{id:int}``, ``(?P<id>[0-9]+)``); :func:`normalize_route` does the same to a span's ``http.route``, so both
sides of the join agree.

**Whether a route requires auth** is inferred, and can be wrong both ways; it is a heuristic, documented here:

- any framework: a view marked ``view.__flowscope_auth__ = True`` (or False) is taken at its word;
- Flask and Django function views: a decorator in the view's wrapper chain (``functools.wraps`` keeps it in
  ``__wrapped__``) whose name says auth: ``login_required``, ``permission_required``, ``jwt_required``,
  ``token_required``, ``roles_required``, ``auth_required``, ``user_passes_test``, Starlette's ``requires``,
  anything with ``auth`` in its name;
- Django class views: ``LoginRequiredMixin``/``PermissionRequiredMixin``/``UserPassesTestMixin`` in the MRO,
  or Django REST framework's ``permission_classes``/``authentication_classes`` with any class other than
  ``AllowAny``;
- FastAPI: a dependency (of the route, its router or the app, at any depth) that is a security scheme
  (``OAuth2PasswordBearer``, ``HTTPBearer``, ``APIKeyHeader``, ... : a ``fastapi.security`` class) or whose name
  says auth as above;
- OpenAPI: the operation's ``security`` (or the document's, when the operation has none) lists a requirement
  that is not the empty one (``{}``).

An app-wide check (a ``before_request`` hook, middleware) is invisible to it: such routes read as open.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import conventions as c

__all__ = ["HTTP_METHODS", "OpenAPIError", "Route", "discover_routes", "normalize_route", "parse_document",
           "read_document", "register_endpoints", "routes_from_openapi"]

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")
#: Largest OpenAPI document read from a file or URL (bytes).
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_AUTH_WORDS = re.compile(r"auth|login_required|permission|jwt_required|token_required|roles_required|"
                         r"user_passes_test|staff_member_required|current_user|^requires$", re.IGNORECASE)
_AUTH_MIXINS = frozenset({"LoginRequiredMixin", "PermissionRequiredMixin", "UserPassesTestMixin",
                          "AccessMixin"})
#: ``<int:id>`` (Flask, Django), ``{id:int}`` (Starlette), ``(?P<id>...)`` (Django regex), ``:id`` (Express style).
_FLASK_PARAM = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
_BRACE_PARAM = re.compile(r"\{([^{}:]+)(?::[^{}]*)?\}")
_REGEX_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>(?:[^()]|\([^()]*\))*\)")
_COLON_PARAM = re.compile(r"(?<=/):([A-Za-z_][A-Za-z0-9_]*)")


class OpenAPIError(ValueError):
    """An OpenAPI document that cannot be read or parsed; the message names the problem (and where)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of an app: ``method`` (upper case, or ``*`` for any), ``path`` (a template, ``/users/{id}``),
    ``view`` (the handler's dotted name or operationId), ``auth`` (requires auth, per the heuristic above; None:
    not known), ``source`` (flask | django | fastapi | starlette | openapi)."""

    method: str
    path: str
    view: str | None
    auth: bool | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def normalize_route(route: str) -> str:
    """A route template in OpenAPI's spelling with one leading slash: ``/users/<int:id>`` → ``/users/{id}``,
    ``^users/(?P<pk>[0-9]+)/$`` → ``/users/{pk}/``, ``/items/{id:int}`` → ``/items/{id}``."""
    r = route
    for _ in range(8):  # to a fixed point (bounded), so a stored template reads back as itself
        before = r
        r = _REGEX_GROUP.sub(lambda m: "{" + m.group(1) + "}", r.strip())
        r = r.lstrip("^").removesuffix("\\Z").rstrip("$")
        r = _FLASK_PARAM.sub(lambda m: "{" + m.group(1).strip() + "}", r)
        r = _BRACE_PARAM.sub(lambda m: "{" + m.group(1).strip() + "}", r)
        r = _COLON_PARAM.sub(lambda m: "{" + m.group(1) + "}", r)
        r = "/" + r.strip().lstrip("/")
        if r == before:
            break
    return r


# -- auth heuristic -------------------------------------------------------------------------------------------


def _name_says_auth(fn: Any) -> bool:
    """Does the function's own name (for a wrapper: the decorator it was made in, which ``functools.wraps`` hides
    from ``__qualname__`` but not from its code object) say auth?"""
    code = getattr(fn, "__code__", None)
    for name in (getattr(code, "co_qualname", None), getattr(fn, "__qualname__", None)):
        if isinstance(name, str) and _AUTH_WORDS.search(name.split(".<locals>")[0]):
            return True
    return False


def _declared(fn: Any) -> bool | None:
    flag = getattr(fn, "__flowscope_auth__", None)
    return flag if isinstance(flag, bool) else None


def _wrapped_auth(view: Any) -> bool:
    """Does a decorator in the view's ``__wrapped__`` chain say auth (or a ``__flowscope_auth__`` mark)?"""
    fn: Any = view
    for _ in range(32):
        if fn is None:
            return False
        declared = _declared(fn)
        if declared is not None:
            return declared
        inner = getattr(fn, "__wrapped__", None)
        if inner is not None and _name_says_auth(fn):
            return True
        fn = inner
    return False


def _view_name(fn: Any) -> str | None:
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str):
        return None
    return f"{module}.{name}" if isinstance(module, str) else name


# -- Flask --------------------------------------------------------------------------------------------------


def _flask(app: Any) -> Iterator[Route]:
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if rule.endpoint == "static":
            continue
        view = app.view_functions.get(rule.endpoint)
        auth = _wrapped_auth(view) if view is not None else None
        name = _view_name(getattr(view, "view_class", None) or view) if view is not None else rule.endpoint
        for method in sorted(set(rule.methods or ()) - {"HEAD", "OPTIONS"}):
            yield Route(method, normalize_route(rule.rule), name, auth, "flask")


# -- Starlette / FastAPI ---------------------------------------------------------------------------------------


def _is_security(call: Any) -> bool:
    return any(k.__module__.startswith("fastapi.security") for k in type(call).__mro__)


def _dependant_auth(dep: Any, depth: int = 0) -> bool:
    if dep is None or depth > 16:
        return False
    for sub in getattr(dep, "dependencies", ()) or ():
        call = getattr(sub, "call", None)
        if call is not None and (_is_security(call) or _name_says_auth(call) or _declared(call)):
            return True
        if _dependant_auth(sub, depth + 1):
            return True
    return False


def _depends_auth(depends: Iterable[Any]) -> bool:
    """Do ``Depends(...)`` markers (a router's or an include's ``dependencies=``) require auth?"""
    for d in depends or ():
        call = getattr(d, "dependency", None)
        if call is not None and (_is_security(call) or _name_says_auth(call) or _declared(call)
                                 or _dependant_auth(getattr(d, "dependant", None))):
            return True
    return False


def _starlette(routes: Iterable[Any], prefix: str, source: str, inherited_auth: bool = False,
               depth: int = 0) -> Iterator[Route]:
    if depth > 16:
        return
    for r in routes:
        original = getattr(r, "original_router", None)
        if original is not None:  # FastAPI >= 0.16x: an included router, with the include's prefix and dependencies
            ctx = getattr(r, "include_context", None)
            yield from _starlette(original.routes, prefix + str(getattr(ctx, "prefix", "") or ""), source,
                                  inherited_auth or _depends_auth(getattr(ctx, "dependencies", ())), depth + 1)
            continue
        path = getattr(r, "path", "") or ""
        sub = getattr(r, "routes", None)
        if sub is not None and not hasattr(r, "endpoint"):  # a Mount: its routes under its prefix
            yield from _starlette(sub, prefix + path, source, inherited_auth, depth + 1)
            continue
        endpoint = getattr(r, "endpoint", None)
        if endpoint is None:
            continue
        if getattr(r, "include_in_schema", True) is False and getattr(endpoint, "__module__", "").startswith(
                "fastapi."):
            continue  # FastAPI's own /docs, /redoc, /openapi.json
        declared = _declared(endpoint)
        auth = declared if declared is not None else (
            inherited_auth or _dependant_auth(getattr(r, "dependant", None))
            or _depends_auth(getattr(r, "dependencies", ())) or _wrapped_auth(endpoint))
        methods = set(getattr(r, "methods", None) or {"GET"})
        if "GET" in methods:
            methods.discard("HEAD")
        for method in sorted(methods):
            yield Route(method, normalize_route(prefix + path), _view_name(endpoint), auth, source)


# -- Django -------------------------------------------------------------------------------------------------


def _django_view_auth(view: Any) -> bool:
    declared = _declared(view)
    if declared is not None:
        return declared
    if getattr(view, "login_required", None) is False:  # Django 5.1's login_not_required
        return False
    cls = getattr(view, "view_class", None) or getattr(view, "cls", None)
    if cls is not None:
        if any(k.__name__ in _AUTH_MIXINS for k in cls.__mro__):
            return True
        for attr in ("permission_classes", "authentication_classes"):
            classes = getattr(cls, attr, None)
            if attr == "permission_classes" and classes and any(getattr(k, "__name__", "") != "AllowAny"
                                                                  for k in classes):
                return True
    return _wrapped_auth(view)


def _django_methods(view: Any) -> list[str]:
    cls = getattr(view, "view_class", None) or getattr(view, "cls", None)
    if cls is not None:
        names = getattr(cls, "http_method_names", ())
        got = [m.upper() for m in names if m not in ("head", "options") and hasattr(cls, m)]
        return sorted(got) or [c.METHOD_ANY]
    return [c.METHOD_ANY]


def _django(patterns: Iterable[Any], prefix: str) -> Iterator[Route]:
    for p in patterns:
        piece = str(p.pattern)
        sub = getattr(p, "url_patterns", None)
        if sub is not None and not hasattr(p, "callback"):
            yield from _django(sub, prefix + piece.removeprefix("^").removesuffix("$"))
            continue
        view = p.callback
        auth = _django_view_auth(view)
        name = _view_name(getattr(view, "view_class", None) or getattr(view, "cls", None) or view)
        for method in _django_methods(view):
            yield Route(method, normalize_route(prefix + piece.removeprefix("^")), name, auth, "django")


def _django_resolver(app: Any) -> Any:
    if app == "django" or isinstance(app, str):
        from django.urls import get_resolver  # type: ignore[import-untyped]  # asked for: not a dependency

        return get_resolver(None if app == "django" else app)
    if hasattr(app, "url_patterns"):
        return app
    if hasattr(app, "urlpatterns"):  # a URLconf module
        from django.urls import get_resolver

        return get_resolver(app)
    return None


def discover_routes(app: Any) -> list[Route]:
    """The routes of ``app``, sorted by path then method: a Flask app (or anything with ``url_map`` and
    ``view_functions``), a FastAPI or Starlette app (``routes``), ``"django"`` (the configured ROOT_URLCONF),
    a URLconf module, its dotted name, or a Django ``URLResolver``. No framework is imported to look."""
    if hasattr(app, "url_map") and hasattr(app, "view_functions"):
        out = list(_flask(app))
    elif hasattr(app, "routes") and hasattr(app, "router"):
        source = "fastapi" if any(k.__module__.startswith("fastapi") for k in type(app).__mro__) else "starlette"
        out = list(_starlette(app.routes, "", source))
    else:
        resolver = _django_resolver(app)
        if resolver is None:
            raise TypeError(f"cannot discover the routes of {type(app).__name__}: pass a Flask, FastAPI or "
                            "Starlette app, 'django', a URLconf module, or an OpenAPI document")
        out = list(_django(resolver.url_patterns, ""))
    seen: dict[tuple[str, str], Route] = {}
    for r in out:
        seen.setdefault((r.method, r.path), r)
    return sorted(seen.values(), key=lambda r: (r.path, r.method))


# -- OpenAPI -------------------------------------------------------------------------------------------------


def read_document(source: str | Path, timeout: float) -> bytes:
    """The bytes of an OpenAPI document at a path or http(s) URL (at most MAX_DOCUMENT_BYTES); OpenAPIError."""
    s = str(source)
    if s.startswith(("http://", "https://")):
        import requests
        import urllib3

        try:
            with requests.get(s, timeout=timeout, stream=True) as resp:  # closed: a streamed body holds its socket
                if resp.status_code != 200:
                    raise OpenAPIError(f"cannot fetch the OpenAPI document {s}: HTTP {resp.status_code}")
                body = resp.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as e:  # raw reads raise urllib3's
            raise OpenAPIError(f"cannot fetch the OpenAPI document {s}: {e}") from None
    else:
        try:
            with open(s, "rb") as f:
                body = f.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as e:
            raise OpenAPIError(f"cannot read the OpenAPI document {s}: {e.strerror or e}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise OpenAPIError(f"the OpenAPI document {s} is over {MAX_DOCUMENT_BYTES} bytes")
    return body


def parse_document(raw: bytes | str) -> dict[str, Any]:
    """JSON or YAML text → the document's mapping; :class:`OpenAPIError` naming what is wrong otherwise."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        doc = json.loads(text)
    except RecursionError:  # json's decoder recurses per level: "[[[[…" of the depth of the stack
        raise OpenAPIError("the OpenAPI document is nested too deeply") from None
    except ValueError:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise OpenAPIError(f"the OpenAPI document is neither JSON nor YAML: {str(e)[:300]}") from None
        except RecursionError:
            raise OpenAPIError("the OpenAPI document is nested too deeply") from None
    if not isinstance(doc, dict):
        raise OpenAPIError(f"the OpenAPI document must be a mapping, got {type(doc).__name__}")
    return doc


def _security(value: Any, where: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise OpenAPIError(f"{where}.security must be a list of mappings")
    return bool(value) and all(len(x) > 0 for x in value)


def routes_from_openapi(document: Mapping[str, Any] | str | Path, timeout: float = 10.0) -> list[Route]:
    """The operations of an OpenAPI 3 (or Swagger 2) document: a parsed mapping, a file path or an http(s)
    URL (JSON or YAML). :class:`OpenAPIError` names the problem when it cannot be read or parsed."""
    doc = document if isinstance(document, Mapping) else parse_document(read_document(document, timeout))
    version = doc.get("openapi", doc.get("swagger"))
    if not isinstance(version, str) or not version[:1].isdigit():
        raise OpenAPIError("openapi: the document has no version string (openapi: 3.x or swagger: 2.0)")
    paths = doc.get("paths")
    if not isinstance(paths, Mapping):
        raise OpenAPIError("paths: expected a mapping of path templates to operations")
    default_auth = _security(doc.get("security"), "$") or False
    out: list[Route] = []
    for path, item in paths.items():
        where = f"paths.{str(path)[:100]}"
        if not isinstance(path, str) or not path.startswith("/") or len(path) > 500:
            raise OpenAPIError(f"{where}: a path must be a string starting with / (at most 500 characters)")
        if not isinstance(item, Mapping):
            raise OpenAPIError(f"{where}: expected a mapping of methods to operations")
        for key, op in item.items():
            method = str(key).upper()
            if method not in HTTP_METHODS:
                continue  # parameters, summary, servers, $ref, x-*
            if not isinstance(op, Mapping):
                raise OpenAPIError(f"{where}.{key}: expected an operation mapping")
            op_id = op.get("operationId")
            if op_id is not None and not isinstance(op_id, str):
                raise OpenAPIError(f"{where}.{key}.operationId must be a string")
            auth = _security(op.get("security"), f"{where}.{key}")
            out.append(Route(method, normalize_route(path), op_id[:300] if op_id else None,
                             default_auth if auth is None else auth, "openapi"))
    return sorted(out, key=lambda r: (r.path, r.method))


# -- registration -------------------------------------------------------------------------------------------


def register_endpoints(app_or_document: Any, service: str, url: str, token: str | None = None,
                       replace: bool = True, timeout: float = 10.0,
                       post: Callable[..., Any] | None = None) -> list[Route]:
    """Discover (:func:`discover_routes`) or read (:func:`routes_from_openapi`: a mapping, or a path or URL ending
    in .json/.yaml/.yml) the routes, and register them with the Flowscope at ``url`` as ``service``'s inventory
    (``replace``: routes it no longer lists are dropped). Returns the routes sent; raises
    ``requests.HTTPError`` when Flowscope refuses them (its JSON names the field)."""
    import requests

    src = app_or_document
    is_doc = isinstance(src, Mapping) or (isinstance(src, (str, Path)) and str(src).lower().endswith(
        (".json", ".yaml", ".yml"))) or (isinstance(src, str) and src.startswith(("http://", "https://")))
    routes = routes_from_openapi(src, timeout) if is_doc else discover_routes(src)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"service": service, "replace": replace, "endpoints": [r.to_json() for r in routes]}
    resp = (post or requests.post)(url.rstrip("/") + c.ENDPOINTS_PATH, data=json.dumps(body), headers=headers,
                                   timeout=timeout)
    resp.raise_for_status()
    return routes
