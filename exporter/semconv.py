"""OpenTelemetry semantic conventions → Flowscope's layer, component and span names, as one table.

Use this module to learn, or change, what an OTLP span's attributes mean here: every rule the
OTLP decoder applies lives in :data:`LAYER_RULES`, :data:`COMPONENT_RULES` and :func:`span_name`,
and :data:`WANTED_KEYS` (the attributes the decoder reads eagerly; the rest stay lazy) is built
from them. Each row names the attribute under its stable (new) name first and then its older
names, so SDKs on either side of a convention's migration map alike; when an SDK emits both (the
``OTEL_SEMCONV_STABILITY_OPT_IN=…/dup`` mode), the stable name wins, so labels do not change when
the old names are switched off. Rows are tried in order and the first that matches decides.

Example::

    derive_layer({"db.system.name": "redis"}, KIND_CLIENT, {})            # "cache"
    derive_component({"server.address": "pay.example"}, KIND_CLIENT, "shop")  # "pay.example"
    span_name("GET", {"http.route": "/users/{id}"})                      # "GET /users/{id}"

References: https://opentelemetry.io/docs/specs/semconv/ (database, messaging, RPC, HTTP, FaaS
spans; ``telemetry.sdk.language`` resource values), and the HTTP span-name rule "HTTP span names
SHOULD be {method} {target}", the target being ``http.route`` (server) or ``url.template`` (client):
https://opentelemetry.io/docs/specs/semconv/http/http-spans/#name. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import conventions as c

__all__ = ["COMPONENT_RULES", "HTTP_SPAN_NAMES", "HTTP_TARGETS", "LAYER_RULES", "WANTED_KEYS",
           "ComponentRule", "LayerRule", "classify", "derive_component", "derive_layer", "span_name"]

# Span.kind values (opentelemetry.proto.trace.v1.Span.SpanKind)
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT, KIND_PRODUCER, KIND_CONSUMER = 1, 2, 3, 4, 5

#: ``db.system`` / ``db.system.name`` values that are caches rather than databases.
CACHE_SYSTEMS = frozenset({"redis", "memcached", "hazelcast", "coherence", "valkey"})
#: ``telemetry.sdk.language`` values of browser SDKs.
FRONTEND_SDKS = frozenset({"webjs", "browser", "javascript-browser"})
#: Attribute-name prefixes of HTTP and RPC spans (``http.*`` old and new, ``url.*``, ``rpc.*``).
WEB_PREFIXES = ("http.", "url.", "rpc.")

_DB = ("db.system.name", "db.system")


@dataclass(frozen=True, slots=True)
class LayerRule:
    """One row of the layer table: the row matches when every condition given holds.

    ``attrs``: any of these span attributes is set (stable name first, then older names);
    ``resource``: likewise for resource attributes; ``values``: … and its lower-cased value is one
    of these; ``prefixes``: some span attribute's name starts with one of these; ``kinds``: the
    span is of one of these kinds.
    """

    name: str
    layer: str
    attrs: tuple[str, ...] = ()
    resource: tuple[str, ...] = ()
    values: frozenset[str] | None = None
    prefixes: tuple[str, ...] = ()
    kinds: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class ComponentRule:
    """One row of the component table: the first of ``attrs`` that is set names the component,
    for spans of ``kinds`` (any kind when None)."""

    name: str
    attrs: tuple[str, ...]
    kinds: frozenset[int] | None = None


_SERVER, _CLIENT = frozenset({KIND_SERVER}), frozenset({KIND_CLIENT})

#: The layer of a span, first matching row wins; an explicit ``flowscope.layer`` attribute wins over
#: all of them, and a span no row matches is ``other``.
LAYER_RULES: tuple[LayerRule, ...] = (
    LayerRule("cache", "cache", attrs=_DB, values=CACHE_SYSTEMS),
    LayerRule("database", "database", attrs=_DB),
    LayerRule("messaging", "queue", attrs=("messaging.system",)),
    LayerRule("producer_consumer", "queue", kinds=frozenset({KIND_PRODUCER, KIND_CONSUMER})),
    LayerRule("browser", "frontend", resource=("telemetry.sdk.language",), values=FRONTEND_SDKS),
    LayerRule("http_rpc_server", "api", prefixes=WEB_PREFIXES, kinds=_SERVER),
    LayerRule("http_rpc_client", "external", prefixes=WEB_PREFIXES, kinds=_CLIENT),
    LayerRule("faas_server", "worker", attrs=("faas.trigger",), kinds=_SERVER),
    LayerRule("faas_client", "external", attrs=("faas.invoked_name",), kinds=_CLIENT),
)

#: The component of a span, first matching row wins; else the service (``service.name``).
COMPONENT_RULES: tuple[ComponentRule, ...] = (
    ComponentRule("explicit", (c.ATTR_COMPONENT,)),
    ComponentRule("database", _DB),
    ComponentRule("messaging", ("messaging.system",)),
    ComponentRule("rpc", ("rpc.service",)),
    ComponentRule("peer", ("peer.service", "faas.invoked_name", "server.address", "net.peer.name"), kinds=_CLIENT),
)

#: Span names that are an HTTP method alone: RFC 9110's methods and PATCH, and ``HTTP``, the
#: convention's name for a method it does not know (``http.request.method="_OTHER"``).
HTTP_SPAN_NAMES = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "HTTP"})
#: Where an HTTP span name's ``{target}`` comes from, in order (server route, then client template).
HTTP_TARGETS = ("http.route", "url.template")

#: Every attribute key the span mapping reads; the decoder decodes only these eagerly. The method
#: (``http.request.method``/``http.method``) is not among them: the span name is the method, and
#: decoding it for every HTTP span cost ~0.15 µs a span (~3 %) for nothing the rules use.
WANTED_KEYS = frozenset({
    *c.ATTR_WORKFLOW, *c.ATTR_CORRELATION_ID, c.ATTR_LAYER, "flowscope.status", "error.type",
    *(k for r in LAYER_RULES for k in r.attrs), *(k for r in COMPONENT_RULES for k in r.attrs),
    *HTTP_TARGETS,
})


class Classify(Protocol):
    """The generated :func:`classify`: ``(layer, component)`` of one span, and its source in ``source``."""

    source: str

    def __call__(self, attrs: Mapping[str, Any], kind: int, resource: Mapping[str, Any], service: str,
                 web: bool | None = None) -> tuple[str, str]: ...


def _compile(layer_rules: tuple[LayerRule, ...], component_rules: tuple[ComponentRule, ...]) -> Classify:
    """The two tables as one straight-line function, built once at import (as :mod:`dataclasses`
    builds ``__init__``): a loop over rows costs about twice the mapping it performs, and OTLP
    ingest runs this for every span. The generated source is kept in ``classify.source``."""
    env: dict[str, Any] = {"_LAYERS": frozenset(c.LAYERS)}
    out = ["def classify(attrs, kind, resource, service, web=None):", "    get = attrs.get"]
    groups: list[tuple[frozenset[int] | None, list[str]]] = []
    for cr in component_rules:  # consecutive rows for the same kinds become one `or` chain
        if groups and groups[-1][0] == cr.kinds:
            groups[-1][1].extend(cr.attrs)
        else:
            groups.append((cr.kinds, list(cr.attrs)))
    for i, (kinds, names) in enumerate(groups):
        chain = " or ".join(f"get({k!r})" for k in names)
        if i == 0 and kinds is None:
            out.append(f"    v = {chain}")
            continue
        if i == 0:
            out.append("    v = None")
        cond = "not v"
        if kinds is not None:
            env[f"_CK{i}"] = kinds
            cond += f" and kind in _CK{i}"
        out.append(f"    if {cond}:")
        out.append(f"        v = {chain}")
    out.append("    comp = str(v) if v else service")
    out.append(f"    v = get({c.ATTR_LAYER!r})")
    out.append("    if v is not None:")
    out.append("        return (v if v in _LAYERS else 'other'), comp")
    prev: LayerRule | None = None
    for i, r in enumerate(layer_rules):
        if r.attrs and r.resource:
            raise ValueError(f"layer rule {r.name}: give span or resource attributes, not both")
        if r.layer not in env["_LAYERS"]:
            raise ValueError(f"layer rule {r.name}: {r.layer!r} is not a layer")
        if r.values is not None and not (r.attrs or r.resource):
            raise ValueError(f"layer rule {r.name}: values need the attributes they apply to")
        pad = "    "
        if r.kinds is not None:
            env[f"_K{i}"] = r.kinds
            out.append(f"    if kind in _K{i}:")
            pad = "        "
        conds = []
        keys, src = (r.attrs, "get") if r.attrs else (r.resource, "resource.get")
        if keys:
            same = prev is not None and prev.kinds is None and r.kinds is None and (prev.attrs, prev.resource) == (
                r.attrs, r.resource)
            if not same:  # the previous row left this value in `v` already
                out.append(f"{pad}v = {src}({keys[0]!r})")
                for k in keys[1:]:
                    out.append(f"{pad}if v is None or v == '':")
                    out.append(f"{pad}    v = {src}({k!r})")
            conds.append("v is not None and v != ''")
            if r.values is not None:
                env[f"_V{i}"] = r.values
                conds.append(f"str(v).lower() in _V{i}")
        if r.prefixes:
            env[f"_P{i}"] = r.prefixes
            conds.append(f"(web or any(k.startswith(_P{i}) for k in attrs))")
        if conds:
            out.append(f"{pad}if {' and '.join(conds)}:")
            pad += "    "
        out.append(f"{pad}return {r.layer!r}, comp")
        prev = r
    out.append("    return 'other', comp")
    source = "\n".join(out) + "\n"
    exec(compile(source, "<semconv tables>", "exec"), env)
    fn: Classify = env["classify"]
    fn.source = source
    fn.__doc__ = ("``(layer, component)`` of one span from :data:`LAYER_RULES` and :data:`COMPONENT_RULES`: "
                  "what :func:`derive_layer` and :func:`derive_component` return, in one call (the decoder's).")
    return fn


classify = _compile(LAYER_RULES, COMPONENT_RULES)


def derive_layer(attrs: dict[str, Any], kind: int, resource: dict[str, Any], web: bool | None = None) -> str:
    """The layer of one span: ``flowscope.layer`` if set (``other`` if it is not a layer), else the
    first row of :data:`LAYER_RULES` that matches, else ``other``.

    ``attrs`` may hold only the :data:`WANTED_KEYS`; ``web`` then says whether any *other*
    attribute's name has one of the :data:`WEB_PREFIXES` (the decoder finds out in its one pass).
    An attribute set to ``None`` or ``""`` counts as unset; within a row the stable name is read first.
    """
    return classify(attrs, kind, resource, "", web)[0]


def derive_component(attrs: dict[str, Any], kind: int, service: str) -> str:
    """The component of one span: the first attribute of :data:`COMPONENT_RULES` (in table order,
    for the rows that apply to the span's kind) with a non-empty value, else ``service``."""
    return classify(attrs, kind, {}, service)[1]


def span_name(name: str, attrs: dict[str, Any]) -> str:
    """The span's name as the HTTP conventions ask for it: ``{method} {target}``.

    Server instrumentations (Node's ``instrumentation-http``, most others) name a span after the
    method alone until a framework knows the route, and set ``http.route`` later; a span named only
    by its method (one of :data:`HTTP_SPAN_NAMES`, or one upper-case word, as a method configured
    in ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` is) is named ``METHOD {http.route}``, else
    ``METHOD {url.template}``, else stays ``METHOD``. Only an HTTP span has either target, and both
    are low-cardinality by definition; the raw path (``url.path``, ``http.target``) never is, so it
    is never used. Other names are returned unchanged.
    """
    if name not in HTTP_SPAN_NAMES and not (name.isupper() and " " not in name):
        return name
    for k in HTTP_TARGETS:
        target = attrs.get(k)
        if type(target) is str and target:
            return f"{name} {target}"
    return name
