"""Error fingerprints: mask the variable parts of a message, then mine templates (pure).

Two steps, after Drain (He et al., "Drain: An Online Log Parsing Approach with
Fixed Depth Tree", ICWS 2017):

1. **Mask** what is obviously variable: UUIDs, IPs (with ports), e-mails,
   hex IDs, quoted strings, numbers with or without units.
   ``timeout after 5012 ms on 10.0.0.7`` → ``timeout after <NUM> ms on <IP>``.
2. **Mine**: messages of one error type with the same token count and first
   token are compared position by position; at or above ``similarity`` they
   join the template, and the positions that differ become ``<*>``
   (``user alice not found`` + ``user bob not found`` → ``user <*> not found``).

Why not the drain3 package: its cluster IDs are counters local to one process,
so a fingerprint would change on every restart and could not carry a
resolution note across deployments. Here a group's fingerprint is a hash of
the error type and the first masked template it was born with, and it stays
fixed while the template generalises; :meth:`Miner.load` restores the groups.

    m = Miner()
    fp, template = m.add("TimeoutError", "timeout after 5012 ms on 10.0.0.7")
    fp2, _ = m.add("TimeoutError", "timeout after 4988 ms on 10.0.0.9")
    assert fp == fp2
"""

from __future__ import annotations

import hashlib
import re

MASKS: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<UUID>"),
    (r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b", "<EMAIL>"),
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<IP>"),
    (r"\b(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}\b", "<MAC>"),
    (r"\b0x[0-9a-fA-F]+\b", "<HEX>"),
    (r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b", "<HEX>"),
    (r"\"[^\"]{0,200}\"|'[^']{0,200}'", "<STR>"),
    (r"(?<![\w<])[-+]?\d+(?:\.\d+)?(?:ms|s|us|µs|ns|kb|mb|gb|b|%)?\b", "<NUM>"),
))
WILDCARD = "<*>"
MAX_MESSAGE = 2000


def mask(message: str) -> str:
    """The message with its variable parts replaced by placeholders."""
    s = (message or "")[:MAX_MESSAGE]
    for pattern, repl in MASKS:
        s = pattern.sub(repl, s)
    return " ".join(s.split())


def fingerprint_of(error_type: str, template: str) -> str:
    return hashlib.sha1(f"{error_type}\x00{template}".encode()).hexdigest()[:16]


class _Group:
    __slots__ = ("fingerprint", "tokens")

    def __init__(self, fingerprint: str, tokens: list[str]):
        self.fingerprint = fingerprint
        self.tokens = tokens

    @property
    def template(self) -> str:
        return " ".join(self.tokens)


class Miner:
    """Online template miner. Not thread-safe: one writer (the run store's) owns it."""

    def __init__(self, similarity: float = 0.5, max_groups_per_bucket: int = 200):
        self.similarity = similarity
        self.max_groups = max_groups_per_bucket
        self._buckets: dict[tuple, list[_Group]] = {}

    def _bucket(self, error_type: str, tokens: list[str]) -> list[_Group]:
        return self._buckets.setdefault((error_type, len(tokens), tokens[0] if tokens else ""), [])

    def add(self, error_type: str, message: str | None) -> tuple[str, str]:
        """(fingerprint, current template) for one error; the template may generalise."""
        tokens = mask(message or "").split(" ") if message else []
        bucket = self._bucket(error_type, tokens)
        best, best_score = None, -1.0
        for g in bucket:
            same = sum(1 for a, b in zip(g.tokens, tokens) if a == b or a == WILDCARD)
            score = same / len(tokens) if tokens else 1.0
            if score > best_score:
                best, best_score = g, score
        if best is not None and (best_score >= self.similarity or len(bucket) >= self.max_groups):
            best.tokens = [a if a == b else WILDCARD for a, b in zip(best.tokens, tokens)]
            return best.fingerprint, best.template
        g = _Group(fingerprint_of(error_type, " ".join(tokens)), tokens)
        bucket.append(g)
        return g.fingerprint, g.template

    def load(self, groups) -> None:
        """Restore groups from ``(fingerprint, error_type, template)`` rows (e.g. the store's error groups)."""
        for fp, error_type, template in groups:
            tokens = template.split(" ") if template else []
            self._bucket(error_type, tokens).append(_Group(fp, tokens))
