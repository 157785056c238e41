"""Coarse error categories from an error's type and message (pure; shared by the SDK and decoders)."""

from __future__ import annotations

#: (category, words in the error type or message that mark it), checked in order.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("timeout", ("timeout", "timed out", "deadline exceeded")),
    ("connection", ("connection", "refused", "unreachable", "reset by peer", "broken pipe", "dns")),
    ("deadlock", ("deadlock",)),
    ("auth", ("unauthorized", "forbidden", "permission", "401", "403", "auth")),
    ("not_found", ("not found", "notfound", "404", "does not exist", "keyerror")),
    ("rate_limit", ("rate limit", "ratelimit", "too many requests", "429", "throttl")),
    ("validation", ("validation", "invalid", "valueerror", "typeerror", "schema", "bad request", "400")),
    ("resource", ("memoryerror", "out of memory", "oom", "disk full", "no space", "resource exhausted")),
    ("database", ("integrity", "operationalerror", "sql", "database", "constraint")),
)


def classify_error(error_type: str, message: str | None = None) -> str:
    """A coarse category for an error, from its type name and message; ``unknown`` otherwise."""
    text = f"{error_type} {message or ''}".lower()
    for category, words in CATEGORIES:
        if any(w in text for w in words):
            return category
    return "unknown"
