"""Coarse error categories from an error's type and message (pure; shared by the SDK and decoders)."""

from __future__ import annotations

#: (category, words in the error type or message that mark it), checked in order.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("n_plus_one", ("n+1", "n_plus_one", "n plus one")),
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


#: What to try first, per category, when an error has no resolution history yet.
KNOWLEDGE: dict[str, str] = {
    "timeout": "A dependency answered too slowly. Compare this step's latency with the dependency's own "
               "(Layers dashboard); check its saturation, connection-pool waits and recent deploys; make sure the "
               "client timeout is below the caller's, and retry only idempotent calls, with backoff.",
    "connection": "Connection refused or reset: the target is down, restarting, or not listening where the "
                  "config says. Check the host/port in the message, the service's health and restarts, DNS, and "
                  "connection-pool exhaustion (too many open connections).",
    "deadlock": "Two transactions lock the same rows in opposite orders. Take locks in one consistent order, "
                "keep transactions short, index the columns used to find rows to update, and retry the "
                "transaction on deadlock (it is safe to retry).",
    "auth": "401: credentials missing, expired or wrong (rotated secret, clock skew on tokens). 403: authenticated "
            "but not allowed; check the role or scope the caller has, and recent permission changes.",
    "not_found": "404 / missing key: the caller asks for something that does not exist (stale ID, deleted row, "
                 "cache holding an old reference, wrong route or base URL after a deploy).",
    "rate_limit": "429: the caller exceeds a quota. Honour Retry-After, add client-side rate limiting and "
                  "jittered backoff, batch requests, or ask for a higher limit; check for a retry storm.",
    "validation": "The input was rejected. Compare the failing payloads (attribution shows which attribute "
                  "values fail together) with the schema; a client or upstream deploy often changed a field.",
    "resource": "Out of memory or disk. Look for a recent growth in batch size, payload size or cache size; "
                "bound queues and caches; check the memory alert (FlowscopeMemoryUsageHigh) and the container limit.",
    "database": "A database error: constraint violations mean the application's assumptions about the data "
                "are wrong; operational errors point at the server (connections, failover, disk).",
    "n_plus_one": "The same query runs once per item. Load the items in one query (JOIN, IN (...), "
                  "selectinload/joinedload in SQLAlchemy) or cache the lookups for the run.",
}


def suggestion_for(category: str) -> str | None:
    """The knowledge base's advice for an error category, if it has any."""
    return KNOWLEDGE.get(category)
