"""The exporter's one base exception, and the few kinds callers tell apart.

They turn into HTTP statuses (``exporter.web``) or exit codes (``flowscope.cli``)
only at the edge.
"""

from __future__ import annotations


class FlowscopeError(Exception):
    """Base of every error Flowscope raises on purpose."""


class ConfigError(FlowscopeError):
    """A configuration key or value is wrong; the message names it."""


class DecodeError(FlowscopeError):
    """A request body could not be decoded at all (the whole batch is refused).

    ``field`` names where decoding stopped, when that is known.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class LokiError(FlowscopeError):
    """A push to Loki failed in a way the retry policy does not cover."""
