"""The backend's one base exception; the CLI and the Flask error handlers map it at the edge."""

from __future__ import annotations

from exporter.errors import FlowscopeError


class BackendError(FlowscopeError):
    """Base of backend errors."""


class SpecError(BackendError):
    """An alert spec is invalid. ``field`` is the path of the offending value, e.g. ``thresholds[1].warning``."""

    def __init__(self, field: str, message: str, source: str | None = None):
        self.field, self.source = field, source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{field}: {message}")
