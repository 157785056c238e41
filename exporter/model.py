"""The domain model: one place for Span, ErrorRecord and WorkflowRun.

A :class:`Span` is one finished step of a workflow run. Every input path
(OTLP, native JSON, the in-process SDK) decodes to spans; the pipeline only
ever sees spans.

Example::

    s = Span(trace_id="4bf9...", span_id="00f0...", workflow="checkout",
             layer="database", component="postgres", operation="SELECT orders",
             start_ns=t0, end_ns=t0 + 3_000_000)
    s.duration_s  # 0.003
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import conventions as c

LAYERS = frozenset(c.LAYERS)
STATUSES = frozenset(c.STATUSES)

R = TypeVar("R")
#: A span's events and links, ``[{"name", "time_ns", "attributes"}]`` and ``[{"trace_id", "span_id", "attributes"}]``.
Details = tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def hash_user(user: str | None) -> str | None:
    """Users are never stored raw: a stable, non-reversible digest instead."""
    if user is None or user == "":
        return None
    return hashlib.sha256(user.encode("utf-8")).hexdigest()[:16]


class Span:
    """One finished step, built with keywords only (``Span(trace_id=..., span_id=..., ...)``).

    ``is_step`` is False for a native workflow record, which is the run's
    envelope, not a step in any layer. ``parent_span_id`` is ``None`` for a
    root span, and a root span that finishes finishes its run.

    Keywords cost about half a microsecond a span more than positions (CPython 3.11 passes a
    class's keywords through a dict); the one per-span hot path, the OTLP decoder, sets the
    slots itself instead (``exporter/decode/otlp.py``), and ``tests/test_model.py``
    checks that it sets every one.

    ``workflow`` is None from an OTLP decode until :class:`~exporter.resolver.WorkflowResolver` names it
    (a span without ``flowscope.workflow`` waits for its trace's root); every span the resolver returns, and
    every span the SDK or the native decoder builds, has it set.
    """

    # Only the slots whose type is not the one of ``__init__``'s keyword (no values: they stay slots).
    workflow: str | None
    #: (decode, raw) while the attributes are deferred (:meth:`defer_attributes`)
    _raw_attrs: tuple[Callable[[Any], dict[str, Any] | None], Any] | None
    #: (events, links) once decoded; ``[decode, raw]`` while deferred (:meth:`defer_details`)
    _details: Details | list[Any] | None

    __slots__ = (
        "_attrs",
        "_details",
        "_raw_attrs",
        "component",
        "correlation_id",
        "end_ns",
        "error_message",
        "error_type",
        "is_step",
        "kind",
        "layer",
        "operation",
        "parent_span_id",
        "resource",
        "service",
        "span_id",
        "stack_trace",
        "start_ns",
        "state",
        "status",
        "trace_id",
        "user",
        "workflow",
    )

    def __init__(
        self,
        *,
        trace_id: str,
        span_id: str,
        workflow: str | None,
        layer: str,
        component: str,
        operation: str,
        start_ns: int,
        end_ns: int,
        status: str = "ok",
        parent_span_id: str | None = None,
        correlation_id: str | None = None,
        service: str = "",
        error_type: str | None = None,
        error_message: str | None = None,
        attributes: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
        is_step: bool = True,
        user: str | None = None,
        stack_trace: str | None = None,
        kind: str | None = None,
        resource: dict[str, Any] | None = None,
        events: list[dict[str, Any]] | None = None,
        links: list[dict[str, Any]] | None = None,
    ):
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.correlation_id = correlation_id or trace_id
        self.workflow = workflow
        self.service = service
        self.layer = layer
        self.component = component
        self.operation = operation
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.status = status
        self.error_type = error_type
        self.error_message = error_message
        self._attrs = attributes
        self._raw_attrs = None
        self.state = state
        self.is_step = is_step
        self.user = user
        self.stack_trace = stack_trace
        self.kind = kind
        self.resource = resource
        # (events, links) once decoded; [decode, raw] while deferred (one slot: this runs per span)
        self._details = None if events is None and links is None else (events, links)

    @property
    def attributes(self) -> dict[str, Any] | None:
        """All span attributes. Decoders may defer building this dict until it is read:
        the metrics path only needs a handful of keys, and most spans are never read whole."""
        if self._attrs is None and self._raw_attrs is not None:
            decode, raw = self._raw_attrs
            self._attrs = decode(raw)
            self._raw_attrs = None
        return self._attrs

    @attributes.setter
    def attributes(self, value: dict[str, Any] | None) -> None:
        self._attrs, self._raw_attrs = value, None

    def loaded_attribute(self, key: str) -> Any:
        """An attribute's value if the attributes are already decoded (never forces a deferred decode)."""
        a = self._attrs
        return a.get(key) if a is not None and self._raw_attrs is None else None

    def loaded_attribute_dict(self) -> dict[str, Any] | None:
        """The attributes if they are already decoded (never forces a deferred decode)."""
        return self._attrs if self._raw_attrs is None else None

    def defer_attributes(self, decode: Callable[[R], dict[str, Any] | None], raw: R) -> None:
        """Keep ``raw`` and build ``attributes`` with ``decode(raw)`` on first read."""
        self._attrs, self._raw_attrs = None, (decode, raw)

    def _loaded_details(self) -> Details:
        d = self._details
        if d is None:
            return None, None
        if isinstance(d, list):  # deferred: [decode, raw]
            loaded: Details = d[0](d[1])
            self._details = loaded
            return loaded
        return d

    @property
    def events(self) -> list[dict[str, Any]] | None:
        """Span events, ``[{"name", "time_ns", "attributes"}]``; decoders may defer them like attributes."""
        return self._loaded_details()[0]

    @events.setter
    def events(self, value: list[dict[str, Any]] | None) -> None:
        self._details = (value, self._loaded_details()[1])

    @property
    def links(self) -> list[dict[str, Any]] | None:
        """Links to spans of other traces, ``[{"trace_id", "span_id", "attributes"}]``; deferred like events."""
        return self._loaded_details()[1]

    @links.setter
    def links(self, value: list[dict[str, Any]] | None) -> None:
        self._details = (self._loaded_details()[0], value)

    def defer_details(self, decode: Callable[[R], Details], raw: R) -> None:
        """Keep ``raw`` and build ``(events, links)`` with ``decode(raw)`` on first read of either."""
        self._details = [decode, raw]

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def is_root(self) -> bool:
        return not self.parent_span_id

    @property
    def failed(self) -> bool:
        return self.status in c.FAILED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__ if not k.startswith("_")}
        d["attributes"] = self.attributes
        d["events"], d["links"] = self.events, self.links
        return d

    def __repr__(self) -> str:
        return (f"Span({self.workflow}/{self.layer}/{self.component}/{self.operation} "
                f"{self.status} {self.duration_s * 1000:.3f}ms trace={self.trace_id})")


@dataclass(slots=True)
class ErrorRecord:
    """An error logged outside a step (``ErrorLogger``), classified and with its stack."""

    error_type: str
    message: str
    layer: str
    component: str
    workflow: str = c.UNKNOWN_WORKFLOW
    correlation_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    category: str = "unknown"
    stack_trace: str | None = None
    time_ns: int = 0
    service: str = ""
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class WorkflowRun:
    """All spans that share a correlation_id; built by the run store (issue 5)."""

    correlation_id: str
    workflow: str
    status: str
    start_ns: int
    end_ns: int
    user: str | None = None
    spans: list[Span] = field(default_factory=list)


#: OpenTelemetry's severity numbers (logs data model): the first number of each range names the level.
SEVERITY_LEVELS = ((21, "fatal"), (17, "error"), (13, "warn"), (9, "info"), (5, "debug"), (1, "trace"))


def severity_level(number: int) -> str:
    """The level of an OpenTelemetry severity number (1..24); 0 (unspecified) is ``info``."""
    for first, name in SEVERITY_LEVELS:
        if number >= first:
            return name
    return "info"


@dataclass(slots=True)
class LogLine:
    """One application log line, from the SDK's logging handler, an OTLP logs request or a browser.

    ``level`` is one of :data:`exporter.conventions.LOG_LEVELS`; ``severity_number`` is OpenTelemetry's (1..24).
    ``workflow`` is filled by the pipeline from the line's trace when the trace's workflow is known.
    ``source`` says which input it came through (``conventions.LOG_SOURCES``).
    """

    time_ns: int
    level: str
    body: str
    service: str = ""
    severity_number: int = 0
    logger: str | None = None
    workflow: str | None = None
    correlation_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    exception: str | None = None
    source: str = "app"
