"""The log search language a person types, parsed into a :class:`~exporter.store.logs.LogQuery` (pure).

    parse('level:error service:checkout "card declined" -healthcheck')
    parse('order_id=123 http.status_code>=500 -"GET /health"')

==================================  =====================================================================
``word``, ``"a phrase"``            the body or exception contains it (whole words, any case)
``-word``, ``-"a phrase"``          ... does not contain it
``level:warn``                      at that level or more severe (``trace`` .. ``fatal``); ``level=warn``: exactly
``service:x`` ``workflow:x``        that service / workflow (several of one key: any of them)
``correlation_id:x`` (``cid:x``)    the run's lines; ``trace_id:x`` (``trace:x``) its trace's
``field=value``, ``field!=value``   a column (``logger``, ``source``, ``span_id``, ...) or an attribute (nested
                                    ones dotted: ``http.status_code``); numbers compare as numbers
``field>n`` ``>=`` ``<`` ``<=``     an attribute's number
==================================  =====================================================================

Values may be quoted (``service:"check out"``; ``""`` inside quotes is one ``"``); levels in any case. Every term
must hold. What cannot be parsed raises :class:`QueryError` with the 0-based ``position`` of the offending
character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from exporter import conventions as c
from exporter.store.logs import FIELD_COLUMNS, FieldFilter, LogQuery, levels_from

__all__ = ["MAX_QUERY", "MAX_TERMS", "QueryError", "parse"]

#: The longest query (characters) and the most terms one may have.
MAX_QUERY = 2000
MAX_TERMS = 50

#: ``key:value`` keys and what they fill; aliases map to the same.
_KEYS = {"level": "levels", "service": "services", "workflow": "workflows", "correlation_id": "correlation_ids",
         "cid": "correlation_ids", "trace_id": "trace_ids", "trace": "trace_ids"}
_NAME = re.compile(r"[A-Za-z_@][A-Za-z0-9_.\-@/]{0,199}")
_OPS = (">=", "<=", "!=", "=", ">", "<", ":")
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_WORD_CHAR = re.compile(r"[^\W_]")  # a letter or digit: what both databases' tokenizers keep


@dataclass(frozen=True)
class QueryError(Exception):
    """A query that cannot be parsed: what is wrong, at ``position`` (0-based, in characters)."""

    message: str
    position: int

    def __str__(self) -> str:
        return f"{self.message} at position {self.position}"


def _quoted(q: str, i: int) -> tuple[str, int]:
    """The quoted string starting at ``q[i] == '"'``: (its text, the index after the closing quote)."""
    out = []
    j = i + 1
    while j < len(q):
        ch = q[j]
        if ch == '"':
            if j + 1 < len(q) and q[j + 1] == '"':
                out.append('"')
                j += 2
                continue
            return "".join(out), j + 1
        out.append(ch)
        j += 1
    raise QueryError("unterminated quote (close it with \")", i)


def _bare(q: str, i: int) -> tuple[str, int]:
    """A bare word from ``i`` to the next space."""
    j = i
    while j < len(q) and not q[j].isspace():
        if q[j] == '"':
            raise QueryError('a quote inside a word (quote the whole value: key:"a b")', j)
        j += 1
    return q[i:j], j


def _searchable(term: str, at: int) -> str:
    if not _WORD_CHAR.search(term):
        raise QueryError(f"{term[:40]!r} has no letter or digit to search for", at)
    return term


def parse(q: str) -> LogQuery:
    """The :class:`LogQuery` of ``q`` (no time range: that comes from the request's ``since``/``until``)."""
    if len(q) > MAX_QUERY:
        raise QueryError(f"the query is longer than {MAX_QUERY} characters", MAX_QUERY)
    if "\x00" in q:
        raise QueryError("NUL is not allowed", q.index("\x00"))
    acc: dict[str, list[Any]] = {k: [] for k in ("levels", "services", "workflows", "correlation_ids", "trace_ids",
                                            "fields", "text", "exclude")}
    i, n, terms = 0, len(q), 0
    while i < n:
        if q[i].isspace():
            i += 1
            continue
        start = i
        terms += 1
        if terms > MAX_TERMS:
            raise QueryError(f"more than {MAX_TERMS} terms", start)
        negate = q[i] == "-"
        if negate:
            i += 1
            if i >= n or q[i].isspace():
                raise QueryError("'-' must be followed by a word or a quoted phrase to exclude", start)
        if q[i] == '"':
            phrase, i = _quoted(q, i)
            if i < n and not q[i].isspace():
                raise QueryError("a space must follow the closing quote", i)
            acc["exclude" if negate else "text"].append(_searchable(phrase, start))
            continue
        m = _NAME.match(q, i)
        op = None
        if m and not negate:
            op = next((o for o in _OPS if q.startswith(o, m.end())), None)
        if op is None:
            word, i = _bare(q, i)
            acc["exclude" if negate else "text"].append(_searchable(word, start))
            continue
        assert m is not None
        key = m.group()
        at = m.end() + len(op)
        if at < n and q[at] == '"':
            value, i = _quoted(q, at)
            if i < n and not q[i].isspace():
                raise QueryError("a space must follow the closing quote", i)
        else:
            value, i = _bare(q, at)
        if not value:
            raise QueryError(f"{key}{op} needs a value", at)
        if op == ":":
            target = _KEYS.get(key)
            if target is None:
                raise QueryError(f"unknown key {key!r}: use one of {', '.join(sorted(_KEYS))}, field=value for "
                                 'any other field, or quote it to search for the text ("a:b")', start)
            if target == "levels":
                value = value.lower()
                if value not in c.LOG_LEVELS:
                    raise QueryError(f"level must be one of {', '.join(c.LOG_LEVELS)}", at)
                acc["levels"].append(value)
            else:
                acc[target].append(value)
            continue
        if key == "level":
            value = value.lower()
        if key == "level" and value not in c.LOG_LEVELS:
            raise QueryError(f"level must be one of {', '.join(c.LOG_LEVELS)}", at)
        if op not in ("=", "!=") and not (_NUMBER.fullmatch(value) and abs(float(value)) < 1e300):
            raise QueryError(f"{op} compares numbers: {value[:40]!r} is not one (up to 1e300)", at)
        if op not in ("=", "!=") and key in FIELD_COLUMNS:
            raise QueryError(f"{key} is text: compare it with = or !=", m.end())
        acc["fields"].append(FieldFilter(key, op, value))
    levels: tuple[str, ...] = ()
    if acc["levels"]:  # level:warn level:error: the least severe of them, and above
        levels = levels_from(min(acc["levels"], key=c.LOG_LEVELS.index))
    return LogQuery(levels=levels, services=tuple(acc["services"]),
                    workflows=tuple(acc["workflows"]),
                    correlation_ids=tuple(acc["correlation_ids"]), trace_ids=tuple(acc["trace_ids"]),
                    fields=tuple(acc["fields"]), text=tuple(acc["text"]), exclude=tuple(acc["exclude"]))
