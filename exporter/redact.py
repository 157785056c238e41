"""Secret redaction, applied before anything is stored or pushed to Loki (pure).

A key is secret when its lower-cased name contains one of the configured
fragments (``password``, ``token``, ``secret``, ``authorization``, ``cookie``,
``api_key``, ...). Its value becomes ``[REDACTED]`` wherever it nests. Free
text (error messages, stack traces, SQL) gets the same treatment for
``key=value``, ``key: value`` and ``"key": "value"`` pairs, and for
``Bearer``/``Basic`` credentials.

    r = Redactor(("password", "token"))
    r.value({"user": "ana", "db": {"password": "hunter2"}})
    # {'user': 'ana', 'db': {'password': '[REDACTED]'}}
    r.text("login failed: password=hunter2 for ana")
    # 'login failed: password=[REDACTED] for ana'
"""

from __future__ import annotations

import re
from typing import Any

from . import conventions as c


_SCALARS = frozenset((int, float, bool, type(None)))


class Redactor:
    def __init__(self, fragments: tuple[str, ...] = c.DEFAULT_SECRET_KEYS):
        self.fragments = tuple(f.lower() for f in fragments if f)
        alt = "|".join(re.escape(f) for f in sorted(self.fragments, key=len, reverse=True)) or r"(?!x)x"
        # a key containing a fragment, a separator, then one value token (quoted or not)
        self._pair = re.compile(
            rf"""(?i)(["']?[\w.-]*(?:{alt})[\w.-]*["']?\s*[:=]\s*)((?:bearer|basic)\s+[^\s,;&]+|"[^"]*"|'[^']*'|[^\s,;&}}\]]+)""")
        self._scheme = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
        # one cheap scan first: most text names no secret and needs no substitution at all. Plain
        # substring tests on the lower-cased text: a case-insensitive regex alternation is ~10x slower.
        self._hints = (*self.fragments, "bearer", "basic")
        self._cache: dict[str, bool] = {}

    def is_secret(self, key: str) -> bool:
        hit = self._cache.get(key)
        if hit is None:
            k = key.lower()
            hit = any(f in k for f in self.fragments)
            if len(self._cache) < 10_000:
                self._cache[key] = hit
        return hit

    def value(self, obj: Any) -> Any:
        """A copy of ``obj`` with every secret key's value replaced; strings are scanned as text."""
        t = type(obj)
        if t is str:
            return self.text(obj)
        if t is dict or isinstance(obj, dict):
            cache, text, value = self._cache, self.text, self.value
            out = {}
            for k, v in obj.items():
                secret = cache.get(k)
                if secret is None:
                    secret = isinstance(k, str) and self.is_secret(k)
                if secret:
                    out[k] = c.REDACTED
                elif type(v) is str:
                    out[k] = text(v)
                elif type(v) in _SCALARS:
                    out[k] = v
                else:
                    out[k] = value(v)
            return out
        if isinstance(obj, (list, tuple)):
            return [self.value(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj

    def text(self, s: str | None) -> str | None:
        if not s:
            return s
        # fast path: a secret in text needs a separator, or a Bearer/Basic scheme word
        if "=" not in s and ":" not in s and "earer" not in s and "asic" not in s and "EARER" not in s \
                and "ASIC" not in s:
            return s
        low = s.lower()
        for h in self._hints:
            if h in low:
                break
        else:
            return s
        s = self._pair.sub(lambda m: m.group(1) + c.REDACTED, s)
        return self._scheme.sub(lambda m: m.group(1) + " " + c.REDACTED, s)
