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


class Redactor:
    def __init__(self, fragments: tuple[str, ...] = c.DEFAULT_SECRET_KEYS):
        self.fragments = tuple(f.lower() for f in fragments if f)
        alt = "|".join(re.escape(f) for f in sorted(self.fragments, key=len, reverse=True)) or r"(?!x)x"
        # a key containing a fragment, a separator, then one value token (quoted or not)
        self._pair = re.compile(
            rf"""(?i)(["']?[\w.-]*(?:{alt})[\w.-]*["']?\s*[:=]\s*)((?:bearer|basic)\s+[^\s,;&]+|"[^"]*"|'[^']*'|[^\s,;&}}\]]+)""")
        self._scheme = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
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
        if isinstance(obj, dict):
            return {k: (c.REDACTED if isinstance(k, str) and self.is_secret(k) else self.value(v))
                    for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.value(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        return obj

    def text(self, s: str | None) -> str | None:
        if not s or ("=" not in s and ":" not in s and " " not in s):
            return s
        s = self._pair.sub(lambda m: m.group(1) + c.REDACTED, s)
        return self._scheme.sub(lambda m: m.group(1) + " " + c.REDACTED, s)
