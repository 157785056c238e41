"""Secret redaction, applied before anything leaves the process (pure).

Use :meth:`Redactor.value` for attributes and state, :meth:`Redactor.text` for free text
(error messages, stack traces, SQL), :meth:`Redactor.name` for span, operation, workflow and
component names (they become metric labels, Loki stream labels and page titles), and
:func:`mask_url` for URLs printed in logs and ``flowscope config``.

What counts as a secret:

* **A secret key.** A key is secret when its lower-cased name contains one of the configured
  fragments (:data:`~exporter.conventions.DEFAULT_SECRET_KEYS`: ``password``, ``pwd``, ``token``,
  ``secret``, ``session_id``, ``access_key``, ``jwt``, ...). Its value becomes ``[REDACTED]``
  wherever it nests; in free text, ``key=value``, ``key: value`` and ``"key": "value"`` pairs.
* **A value that looks like one, whatever its key**: ``Bearer``/``Basic`` credentials, JWTs
  (``eyJ...``, three base64url segments), URL and DSN passwords (``postgresql://app:pw@db`` →
  ``postgresql://app:[REDACTED]@db``), AWS access key ids (``AKIA``/``ASIA`` + 16), and card
  numbers: 13 to 19 digits, contiguous or in groups of 4-6 split by spaces or dashes, starting
  2-6 (the issuer ranges of Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay), that pass
  the Luhn check. The issuer digit keeps nanosecond and millisecond timestamps (``17...``) out;
  the Luhn check keeps out nine in ten other numbers (an order id that is not Luhn-valid stays).

Text without a hint of any of these (no ``=``/``:``, no scheme word, no ``eyJ``/``AKIA``/
``ASIA``, fewer than 13 digits) is returned as it is after a few substring tests: the run store
and the Loki pusher call ``text()`` on every string they write.

    r = Redactor(("password", "token"))
    r.value({"user": "ana", "db": {"password": "hunter2"}})
    # {'user': 'ana', 'db': {'password': '[REDACTED]'}}
    r.text("login failed: password=hunter2 for ana")
    # 'login failed: password=[REDACTED] for ana'
    r.name("GET /login?user=ana&password=hunter2")
    # 'GET /login?user=[REDACTED]&password=[REDACTED]'
    mask_url("postgresql://app:hunter2@db:5432/flowscope")
    # 'postgresql://app:****@db:5432/flowscope'
"""

from __future__ import annotations

import logging
import re
from typing import Any

from . import conventions as c
from .validate import clean_label

_SCALARS = frozenset((int, float, bool, type(None)))

#: ``scheme://user:password@``: group 1 is everything up to the colon before the password.
_USERINFO = re.compile(r"""(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:"'<>]*):([^\s/?#"'<>]*)@""")
_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_AWS_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")
# A digit run (or groups split by single spaces/dashes) that starts with an issuer digit. Starting with a
# character class lets the regex engine skip ahead in C; the boundaries and the Luhn check are in _cards.
_CARD_RUN = re.compile(r"[2-6]\d{3}(?:[ -]?\d){9,}")
_DIGITS = b"0123456789"
# The query string (or fragment) of a URL-like token in a name: a ``?``/``#`` right after a non-space.
_QUERY = re.compile(r"(?<=\S)[?#]\S+")
_PARAM = re.compile(r"([?#&;][^=&;#?]+=)([^&;#]*)")
_NAME_CACHE_MAX = 8192
_CLEAN_MAX, _CLEAN_MAX_LEN = 8192, 100


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn(digits)


def _cards(m: re.Match) -> str:
    """The run with every card number in it replaced; other numbers (ids, dates, timestamps) stay."""
    run, s, start = m.group(), m.string, m.start()
    if (start and (s[start - 1].isalnum() or s[start - 1] in "_.")) or \
            (m.end() < len(s) and (s[m.end()].isalnum() or s[m.end()] == "_")):
        return run  # part of a longer token (a hex id, a version, a word): not a number on its own
    groups = re.split(r"[ -]", run)
    if len(groups) == 1:
        return c.REDACTED if _is_card(run) else run
    # Grouped: a card is consecutive groups of 4-6 digits (the last may be shorter), 13-19 digits in all.
    out, i, n = [], 0, len(groups)
    seps = re.findall(r"[ -]", run)
    while i < n:
        end = None
        if 4 <= len(groups[i]) <= 6:
            digits = groups[i]
            for j in range(i + 1, n):
                digits += groups[j]
                if _is_card(digits):
                    end = j
                if len(groups[j]) < 4 or len(groups[j]) > 6 or len(digits) >= 19:
                    break
        if end is None:
            out.append(groups[i])
            if i < n - 1:
                out.append(seps[i])
            i += 1
        else:
            out.append(c.REDACTED)
            if end < n - 1:
                out.append(seps[end])
            i = end + 1
    return "".join(out)


def _userinfo(m: re.Match) -> str:
    return m.group(0) if not m.group(2) else f"{m.group(1)}:{c.REDACTED}@"


def _query(m: re.Match) -> str:
    # an empty value or a lone "?" (a SQL placeholder in a statement used as a name) stays
    return _PARAM.sub(lambda p: p.group(0) if p.group(2) in ("", "?") else p.group(1) + c.REDACTED, m.group())


def _hints(fragments: tuple[str, ...]) -> list[str]:
    """Fewer substrings that still find every fragment: a prefix of 4+ characters two fragments share
    stands for both (``session`` for session_id and sessionid), and a hint inside another makes it redundant."""
    hints: set[str] = set()
    for f in fragments:
        for g in fragments:
            n = 0
            while n < min(len(f), len(g)) and f[n] == g[n]:
                n += 1
            if f != g and 4 <= n < len(f):
                f = f[:n]
        hints.add(f)
    return sorted(h for h in hints if not any(o != h and o in h for o in hints))


#: A bind placeholder, not a value: ``?``, ``$1``, ``%s``, ``%(name)s`` (the forms drivers receive), so SQL in span
#: names and messages (``UPDATE users SET password = $1``) keeps its shape. ``:name`` and ``@name`` are left out
#: on purpose: a password may well start with ``@``.
_PLACEHOLDER = re.compile(r"""["']?(?:\?|\$\d+|%s|%\(\w+\)s)["']?""").fullmatch


def _redact_pair(m: re.Match) -> str:
    value = m.group(2)
    # ``(token=abc)``: a closing parenthesis the value never opened belongs to the text around it
    close = ""
    while value.endswith(")") and value.count(")") > value.count("("):
        value, close = value[:-1], close + ")"
    if not value or _PLACEHOLDER(value):
        return m.group(0)
    return m.group(1) + c.REDACTED + close


class Redactor:
    """Scrubs secrets out of values, free text and names; one per exporter, shared by every sink."""

    def __init__(self, fragments: tuple[str, ...] = c.DEFAULT_SECRET_KEYS):
        self.fragments = tuple(f.lower() for f in fragments if f)
        alt = "|".join(re.escape(f) for f in sorted(self.fragments, key=len, reverse=True)) or r"(?!x)x"
        # a key containing a fragment, a separator, then one value token (quoted or not; a value
        # already redacted is one token, so redacting twice changes nothing)
        self._pair = re.compile(
            rf"""(?i)(["']?[\w.-]*(?:{alt})[\w.-]*["']?\s*[:=]\s*)"""
            r"""(\[REDACTED\]|(?:bearer|basic)\s+[^\s,;&]+|"[^"]*"|'[^']*'|[^\s,;&}\]]+)""")
        self._scheme = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
        # one cheap scan first: most text names no secret and needs no substitution at all. Plain
        # substring tests on the lower-cased text: a case-insensitive regex alternation is ~10x slower.
        self._hints = (*_hints(self.fragments), "bearer", "basic")
        self._cache: dict[str, bool] = {}
        #: name -> redacted name (the same object when nothing changed); read directly on hot paths
        self.names: dict[str, str] = {}
        self._clean: set[str] = set()

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
        """Free text with secret pairs and secret-looking values replaced (``s`` itself when none)."""
        if not s:
            return s
        if len(s) > _CLEAN_MAX_LEN:
            return self._text(s)
        # Short strings repeat (methods, routes, hosts, statuses): one set lookup for one already found
        # clean. Only clean strings are kept, so the set never holds a secret.
        clean = self._clean
        if s in clean:
            return s
        out = self._text(s)
        if out is s:
            if len(clean) >= _CLEAN_MAX:
                clean.clear()
            clean.add(s)
        return out

    def _text(self, s: str) -> str:
        out = s
        # a secret pair needs a separator, a Bearer/Basic credential its scheme word, a URL password "://"
        if "=" in s or ":" in s or "earer" in s or "asic" in s or "EARER" in s or "ASIC" in s:
            low = s.lower()
            for h in self._hints:
                if h in low:
                    out = self._pair.sub(_redact_pair, out)
                    out = self._scheme.sub(lambda m: m.group(1) + " " + c.REDACTED, out)
                    break
            if "://" in out and "@" in out:
                out = _USERINFO.sub(_userinfo, out)
        if "eyJ" in out:
            out = _JWT.sub(c.REDACTED, out)
        if "AKIA" in out or "ASIA" in out:
            out = _AWS_KEY_ID.sub(c.REDACTED, out)
        if len(out) >= 13:
            # a card needs 13 digits: counting them in C (bytes.translate) is ~2x cheaper than a regex scan
            b = out.encode("utf-8", "surrogatepass")
            if len(b) - len(b.translate(None, _DIGITS)) >= 13:
                out = _CARD_RUN.sub(_cards, out)
        return s if out == s else out

    def name(self, s: str | None) -> str | None:
        """A span, operation, workflow or component name (or a URL) fit to be a label: memoised.

        Every query-string and fragment value becomes ``[REDACTED]``, whatever its key:
        ``GET /login?user=ana&password=x`` → ``GET /login?user=[REDACTED]&password=[REDACTED]``.
        A name is a metric label and a Loki stream label, so a value in it is a secret the key
        list can't know (``?code=``, ``?sig=``, a magic-link ``?t=``), or personal data (``?email=``),
        and one series per value either way; the route is what identifies the operation. Then
        everything :meth:`text` catches (``password=x`` outside a query, URL passwords, JWTs, keys).

        Runs on every span: the answer is kept in :attr:`names` (bounded; emptied when full, so a
        flood of distinct names costs a redaction each, never memory). ``name(name(x)) == name(x)``.
        """
        r = self.names.get(s)
        if r is None:
            if not s or type(s) is not str:
                return s
            r = s
            if "?" in r or "#" in r:
                r = _QUERY.sub(_query, r)
            r = clean_label(self.text(r))[0]  # a redaction may lengthen it: cap (and clean) it after
            if r == s:
                r = s
            names = self.names
            if len(names) >= _NAME_CACHE_MAX:
                names.clear()
            names[s] = r
        return r


def mask_url(url: str | None) -> str | None:
    """A URL fit for a log line or ``flowscope config``: its password, and the values of secret
    query parameters, become ``****``; everything else (scheme, user, host, path) stays readable.

        mask_url("postgresql://app:hunter2@db/flowscope?sslmode=require&password=x")
        # 'postgresql://app:****@db/flowscope?sslmode=require&password=****'
    """
    if not url or type(url) is not str:
        return url
    if "@" in url:
        url = _USERINFO.sub(lambda m: m.group(0) if not m.group(2) else f"{m.group(1)}:****@", url)
    if "?" in url:
        url = _DEFAULT.sub(lambda m: m.group(1) + "****", url)
    return url


_DEFAULT = Redactor()._pair


class MaskUrlFilter(logging.Filter):
    """Masks URL passwords (:func:`mask_url`) in every record a handler emits.

    Attach it to the handlers, not a logger: a logger's filters never see its children's records.

        for h in logging.getLogger().handlers:
            h.addFilter(MaskUrlFilter())

    Cheap: a record is only rewritten when its formatted message holds both ``://`` and ``@``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record: the handler reports it as it would have
            return True
        if "://" in msg and "@" in msg:
            masked = mask_url(msg)
            if masked != msg:
                record.msg, record.args = masked, None
        return True
