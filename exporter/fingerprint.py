"""Error fingerprints: the exception type, normalised, and the message with its variable parts masked (pure).

A fingerprint is ``sha1(normalize_type(type) + "\\0" + mask(message))[:16]``: a function of the error
alone, so it is the same in every process and after every restart, and two errors share it only when
their messages are the same words.

**Masking** replaces what varies between occurrences of one error, and nothing else:

=============================================  =========================================
``"sku-1"``, ``'x y'``, `` `v` ``               ``<STR>`` (quoted values)
``https://api.x.io/v1/a?b=1``                   ``<URL>``
``/var/lib/app/x.db``, ``C:\\tmp\\x``           ``<PATH>`` (two segments or more)
UUIDs, e-mails, IPv4/IPv6 (with port), MACs     ``<UUID>``, ``<EMAIL>``, ``<IP>``, ``<MAC>``
``2024-05-01T10:22:33Z``, ``10:22:33``          ``<TIME>``
``0x7f3a``, hex ids of 8+ (digit and letter)  ``<HEX>``
``5012``, ``-1.5e3``, ``250ms``, ``1,000``      ``<NUM>``
``ord_8f3k2``, ``ord_abc12``, ``7d9f8b6c4``     ``ord_<ID>``, ``<ID>`` (letters and digits mixed)
``node7``, ``utf8``, ``ord_123``                ``node<NUM>``, ``utf<NUM>``, ``ord_<NUM>``
``order ord_fkxqz``, ``cart c-kqzp``            ``order <ID>``, ``cart <ID>`` (after an id noun)
``user alice``, ``tenant=acme``, ``@bob``       ``user <NAME>``, ``tenant=<NAME>``, ``<NAME>``
=============================================  =========================================

A word after ``user``, ``username``, ``login``, ``customer``, ``tenant``, ``owner``, ``member``,
``host``, ``hostname`` or ``pod`` is a name unless it is a common English or error word (``user not
found``, ``user account locked``, ``user deleted``: no ``-ed``/``-ing`` word is taken for a name).
After ``order``, ``invoice``, ``payment``, ``transaction``, ``cart``, ``customer``, ``account``,
``session``, ``request``, ``item``, ``sku`` or ``ticket``, a word joined by ``_`` or ``-`` is an id.
A message that is nothing but one quoted value (``KeyError: 'user_id'``) keeps its quotes and words,
masked inside. Every other word is kept: ``failed to reserve inventory for order 123`` and ``failed to capture
payment for order 654`` are two errors. No position is ever wildcarded because it differed between
messages (what the Drain-style miner before did, merging those two into ``failed to <*> <*> for order
<NUM>``).

**Types** from different SDKs name one exception differently: ``__main__.PaymentDeclined`` (OTel
Python), ``app.errors.PaymentDeclined``, ``PaymentDeclined`` (``type(e).__name__``),
``com.shop.PaymentDeclinedException`` (Java), ``App\\Errors\\PaymentDeclined`` (PHP),
``Shop::PaymentDeclined`` (Ruby), ``*payments.DeclinedError`` (Go). :func:`normalize_type` keeps the
last part of a dotted/``::``/``\\``/``$`` name (when every part is an identifier), drops a leading
``*``/``&``, a trailing ``Exception`` and then a trailing ``Error``, and case: all of the above but the
Go one are ``paymentdeclined``. The stored ``error_type`` stays as sent; only the fingerprint uses the key.
Two different exceptions that share a last name (``a.Timeout``, ``b.Timeout``) become one: across SDKs
the module path is the part that differs for the same exception, so it cannot tell them apart.

**Groups stored by the old miner** (fingerprint = ``sha1(raw type + "\\0" + legacy_mask(first
message))``, template possibly generalised with ``<*>``) keep their identity: :class:`Fingerprinter`
recognises them (their fingerprint is not the new one of their own type and template) and maps new
fingerprints onto them through aliases: a message whose *old* fingerprint is a stored legacy group is
that group's birth error, so its new fingerprint becomes an alias of the old one. Aliases are found
at load from the stored occurrences and the templates, and at run time from arriving errors, and
the store keeps them. Messages that only joined a legacy group through ``<*>`` do not follow it (that
merge is what was wrong), unless they mask to the same new template as its birth message.

    fp, template = fingerprint("TimeoutError", "timeout after 5012 ms on 10.0.0.7")
    assert template == "timeout after <NUM> ms on <IP>"
    assert fingerprint("builtins.TimeoutError", "timeout after 4988 ms on 10.0.0.9")[0] == fp
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

MAX_MESSAGE = 2000
#: A template is at most this long (cut at a word): bounded rows and hashes whatever the input.
MAX_TEMPLATE = 1000
MAX_TYPE = 200

_ID_CHARS = r"[\w.@%+~=-]"
_IPV6 = (r"(?<![\w:.])(?=[0-9a-fA-F:]*\d)(?=[0-9a-fA-F:]*::|(?:[0-9a-fA-F]{1,4}:){7})"
         r"[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7}(?![\w:])")
_URL_END = r"[^\s\"'<>`]*[^\s\"'<>`.,;:!?)\]}]"
_DIGIT = re.compile(r"\d")
#: (pattern, placeholder, what the text must contain for the pattern to match: substrings, or None for a digit),
#: in order. The condition only spares a regex pass that cannot match.
_STRUCTURED: tuple[tuple[re.Pattern[str], str, tuple[str, ...] | None], ...] = tuple(
    (re.compile(p), r, need) for p, r, need in (
        # quoted values: the quote must open after a non-word character (``can't``, ``user's`` are words)
        (r"(?<!\w)\"[^\"\n]{0,200}\"(?!\w)|(?<!\w)'[^'\n]{0,200}'(?!\w)|`[^`\n]{0,200}`", "<STR>",
         ('"', "'", "`")),
        (r"\b[a-zA-Z][a-zA-Z0-9+.-]{0,15}://" + _URL_END, "<URL>", ("://",)),
        (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<UUID>", ("-",)),
        (r"\b[\w.+-]+@[\w-]+\.[\w.-]*\w\b", "<EMAIL>", ("@",)),
        (r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?![\w:])", "<TIME>",
         None),
        (r"(?<![\w:.])\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?![\w:])", "<TIME>", None),
        (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<IP>", None),
        (r"\b(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}\b", "<MAC>", (":",)),
        (_IPV6, "<IP>", None),
        (r"(?<![\w.<>/])(?:~|\.{1,2})?(?:/" + _ID_CHARS + r"+){2,}/?", "<PATH>", ("/",)),
        (r"\b[A-Za-z]:\\(?:[^\\\s]+\\)*[^\\\s]*", "<PATH>", (":\\",)),
        (r"\b0x[0-9a-fA-F]+\b", "<HEX>", None),
        (r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b", "<HEX>", None),
        (r"(?<![\w<])[-+]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?(?:ms|s|us|µs|ns|m|h|kb|mb|gb|b|%|x)?(?!\w)", "<NUM>", None),
        (r"(?<![\w@])@[A-Za-z_]\w{0,63}\b", "<NAME>", ("@",)),
    ))
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_LETTERS_THEN_DIGITS = re.compile(r"([A-Za-z]+)\d+")
_KEY_VALUE = re.compile(r"([A-Za-z_]+)([=:])(.+)")
_NAME_LIKE = re.compile(r"[A-Za-z][\w.\-<>]{0,63}")

#: A word after one of these is a name (``user alice``), unless it is one of NOT_NAMES.
NAME_KEYS = frozenset(("user", "username", "login", "customer", "tenant", "owner", "member", "host", "hostname",
                       "pod"))
NOT_NAMES = frozenset((
    "a", "an", "the", "and", "or", "not", "no", "is", "are", "was", "were", "be", "been", "has", "have", "had",
    "does", "did", "do", "can", "cannot", "could", "will", "would", "should", "must", "may", "already", "still",
    "with", "without", "for", "to", "in", "on", "of", "at", "from", "by", "as", "via", "into", "id", "ids", "name",
    "names", "account", "accounts", "session", "sessions", "data", "profile", "record", "records", "exists",
    "missing", "unknown", "invalid", "found", "none", "null", "nil", "undefined", "required", "error", "errors",
    "failed", "failure", "unauthorized", "forbidden", "denied", "quota", "limit", "limits", "permission",
    "permissions", "role", "roles", "password", "token", "tokens", "credentials", "context", "object", "info",
    "details", "input", "request", "requests", "unavailable", "unreachable", "timeout", "down", "busy", "lookup",
    "check", "config", "settings", "list", "group", "groups", "mismatch", "expired", "inactive", "active", "pending",
    "exceeded", "over", "under", "reached", "key", "keys", "header", "agent", "space", "port", "address", "entry",
    "table", "lock", "state", "status", "type", "value", "field", "mode", "rights", "access", "tier", "plan",
    "preferences", "email", "e-mail", "mail", "cart", "offline", "online", "quotas", "disk", "memory", "cpu",
    "this", "that", "it", "its", "their", "our", "your", "any", "all", "each"))
_NOT_NAME_ENDINGS = ("ed", "ing", "able", "ible", "tion", "sion", "ment", "ness", "ity")
_TRAILING = ".,;:!?)]}"


#: A word with a ``_`` or ``-`` after one of these is an id even without a digit (``order ord_fkxqz``).
ID_KEYS = frozenset(("order", "orders", "invoice", "payment", "transaction", "cart", "customer", "account",
                     "session", "request", "item", "sku", "ticket"))
_SEPARATED_ID = re.compile(r"[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)+")


def _name_like(word: str) -> bool:
    w = word.rstrip(_TRAILING)
    low = w.lower()
    return (bool(_NAME_LIKE.fullmatch(w)) and low not in NOT_NAMES and not (w.isupper() and len(w) > 1)
            and not (w.isalpha() and low.endswith(_NOT_NAME_ENDINGS)))


def _segment(m: re.Match[str]) -> str:
    s = m.group(0)
    if s.isdigit():
        return "<NUM>"
    return s if s.isalpha() else "<ID>"


def _word(word: str) -> str:
    """One token's alphanumeric runs: a number is <NUM>, letters and digits mixed are <ID>; a word that is
    only letters then digits keeps its letters (``node7``, ``utf8``, ``sha256``: node<NUM>, ...)."""
    if word.isalpha():
        return word
    t = _LETTERS_THEN_DIGITS.fullmatch(word)
    return t.group(1) + "<NUM>" if t else _ALNUM.sub(_segment, word)


_ONLY_QUOTED = re.compile(r"([\"'`])([^\n]{0,200})\1")


def _once(s: str) -> str:
    only = _ONLY_QUOTED.fullmatch(s.strip())
    if only:  # the message is one quoted value (Python's KeyError: 'user_id'): its words are the error
        return only.group(1) + _once(only.group(2)) + only.group(1)
    digits = _DIGIT.search(s) is not None
    for pattern, repl, need in _STRUCTURED:
        if digits if need is None else any(n in s for n in need):
            s = pattern.sub(repl, s)
            digits = digits and _DIGIT.search(s) is not None
    out: list[str] = []
    prev = ""
    for word in s.split():
        kv = _KEY_VALUE.fullmatch(word)
        if prev in NAME_KEYS and _name_like(word):
            word = "<NAME>" + word[len(word.rstrip(_TRAILING)):]
        elif prev in ID_KEYS and _SEPARATED_ID.fullmatch(word.rstrip(_TRAILING)):
            word = "<ID>" + word[len(word.rstrip(_TRAILING)):]
        elif kv and kv.group(1).lower() in NAME_KEYS and _NAME_LIKE.fullmatch(kv.group(3).rstrip(_TRAILING)):
            v = kv.group(3)
            word = kv.group(1) + kv.group(2) + "<NAME>" + v[len(v.rstrip(_TRAILING)):]
        else:
            word = _word(word)
        out.append(word)
        prev = word.lower().rstrip(":=")
    return " ".join(out)


def mask(message: str | None) -> str:
    """The message with its variable parts replaced by placeholders (see the module's table), at most
    :data:`MAX_TEMPLATE` characters. Idempotent: ``mask(mask(m)) == mask(m)``.

        mask("failed to reserve inventory for order 123")  # 'failed to reserve inventory for order <NUM>'
        mask("user alice not found")                        # 'user <NAME> not found'
    """
    return _mask(str(message or "")[:MAX_MESSAGE])


@lru_cache(maxsize=4096)  # one exception re-raised through its callers brings the same message again
def _mask(s: str) -> str:
    for _ in range(4):  # a substitution can open a new match (a quote around a placeholder): to a fixed point
        t = _once(s)
        if t == s:
            break
        s = t
    if len(s) > MAX_TEMPLATE:
        cut = s.rfind(" ", 0, MAX_TEMPLATE + 1)
        s = s[:cut] if cut > 0 else s[:MAX_TEMPLATE]
    return s


_TYPE_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPE_SPLIT = re.compile(r"::|[.\\/$]")


def normalize_type(error_type: str | None) -> str:
    """The key that one exception has under every SDK's naming (see the module docstring).

        normalize_type("__main__.PaymentDeclined") == normalize_type("com.shop.PaymentDeclinedException")
    """
    t = str(error_type or "").strip()[:MAX_TYPE].lstrip("*&")
    parts = _TYPE_SPLIT.split(t)
    if len(parts) > 1 and all(_TYPE_PART.fullmatch(p) for p in parts):
        t = parts[-1]
    for suffix in ("Exception", "Error"):  # both, in this order: OrderErrorException is OrderError is Order
        if t.endswith(suffix) and len(t) > len(suffix):
            t = t[:-len(suffix)]
    return t.casefold()


def fingerprint_of(error_type: str | None, template: str) -> str:
    """The fingerprint of an error type and an already masked template."""
    return hashlib.sha1(f"{normalize_type(error_type)}\x00{template}".encode()).hexdigest()[:16]


def fingerprint(error_type: str | None, message: str | None) -> tuple[str, str]:
    """(fingerprint, template) of one error."""
    template = mask(message)
    return fingerprint_of(error_type, template), template


# -- the scheme before this one, to keep the groups it stored --------------------------------------------

_LEGACY_MASKS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b", "<UUID>"),
    (r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b", "<EMAIL>"),
    (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<IP>"),
    (r"\b(?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}\b", "<MAC>"),
    (r"\b0x[0-9a-fA-F]+\b", "<HEX>"),
    (r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b", "<HEX>"),
    (r"\"[^\"]{0,200}\"|'[^']{0,200}'", "<STR>"),
    (r"(?<![\w<])[-+]?\d+(?:\.\d+)?(?:ms|s|us|µs|ns|kb|mb|gb|b|%)?\b", "<NUM>"),
))
LEGACY_WILDCARD = "<*>"


def legacy_mask(message: str | None) -> str:
    """The masking of the Drain-style miner this module replaced (kept to recognise the groups it stored)."""
    s = str(message or "")[:MAX_MESSAGE]
    for pattern, repl in _LEGACY_MASKS:
        s = pattern.sub(repl, s)
    return " ".join(s.split())


def legacy_fingerprint(error_type: str, message: str | None) -> str:
    """The fingerprint the old miner gave a group born from this error: raw type and old template."""
    return hashlib.sha1(f"{error_type}\x00{legacy_mask(message)}".encode()).hexdigest()[:16]


#: A stored group as :meth:`Fingerprinter.load` takes it: ``(fingerprint, error_type, template[, rank])``.
GroupRow = tuple[str, str, str] | tuple[str, str, str, Iterable[int]]


class Fingerprinter:
    """Fingerprints of arriving errors, mapped onto the groups a store already holds (one writer owns it).

    ``load`` takes the store's groups, its aliases and (optionally) stored occurrences of legacy
    groups; ``assign`` gives each arriving error its group, and says when it found a new alias,
    for the store to keep.

        fpr = Fingerprinter()
        fpr.load(groups=[(fp, error_type, template)], aliases=[(new_fp, group_fp)],
                 occurrences=[(group_fp, error_type, message)])
        group_fp, template, new_alias = fpr.assign("KeyError", "user carol not found")
    """

    def __init__(self) -> None:
        #: new fingerprint -> the stored group it belongs to
        self.aliases: dict[str, str] = {}
        #: groups stored by the old miner, with what decides between two that claim one alias
        self.legacy: dict[str, tuple[int, ...]] = {}
        #: groups whose fingerprint is the new one of their own type and template
        self.known: set[str] = set()

    @staticmethod
    def is_legacy(fp: str, error_type: str, template: str) -> bool:
        return fp != fingerprint_of(error_type, template)

    def load(self, groups: Iterable[GroupRow], aliases: Iterable[Sequence[str]] = (),
             occurrences: Iterable[tuple[str, str, str | None]] = ()) -> list[tuple[str, str]]:
        """Restore what the store holds; returns the aliases found here that the store did not have.

        ``groups``: ``(fingerprint, error_type, template[, rank])`` where a higher ``rank`` wins when two
        legacy groups claim one new fingerprint (the store passes ``(resolved?, count)``).
        ``occurrences``: ``(group fingerprint, error_type, message)`` of stored errors of legacy groups.
        """
        groups = list(groups)
        for fp, new in aliases:
            self.aliases[new] = fp
        for g in groups:
            fp, error_type, template = g[0], g[1], g[2]
            if self.is_legacy(fp, error_type, template):
                self.legacy[fp] = tuple(g[3]) if len(g) > 3 else ()
            else:
                self.known.add(fp)
        found: dict[str, str] = {}

        def claim(new: str, fp: str) -> None:
            if new in self.aliases or new in self.known:
                return
            old = found.get(new)
            if old is None or self.legacy[fp] > self.legacy[old]:
                found[new] = fp

        for g in groups:
            fp, error_type, template = g[0], g[1], g[2]
            if (fp in self.legacy and LEGACY_WILDCARD not in template
                    and hashlib.sha1(f"{error_type}\x00{template}".encode()).hexdigest()[:16] == fp):
                claim(fingerprint(error_type, template)[0], fp)  # the template is its first message, masked
        for fp, error_type, message in occurrences:
            if fp in self.legacy and legacy_fingerprint(error_type, message) == fp:
                claim(fingerprint(error_type, message)[0], fp)  # the message it was born from
        self.aliases.update(found)
        return sorted((fp, new) for new, fp in found.items())

    def assign(self, error_type: str, message: str | None) -> tuple[str, str, tuple[str, str] | None]:
        """(group fingerprint, template, a new ``(group, alias)`` to store or None) for one error."""
        new, template = fingerprint(error_type, message)
        fp = self.aliases.get(new)
        if fp is not None:
            return fp, template, None
        if new not in self.known and self.legacy:
            old = legacy_fingerprint(error_type, message)
            if old in self.legacy:
                self.aliases[new] = old
                return old, template, (old, new)
        self.known.add(new)
        return new, template, None


def failure_causes(errs: Sequence[Mapping[str, Any]], parent: Mapping[str, str | None]) -> list[str | None]:
    """Per error of one run, the fingerprint of the error that started its failure chain (None: it started one).

    ``errs`` are the run's errors (``span_id``, ``fingerprint``, ``time_ns``), ``parent`` maps the run's
    span ids to their parents. An error's cause is the deepest error on a span strictly below its own
    (the earliest of equals): that one has no failing span below it, so it is the origin. A parent
    that is not in the run still counts as an ancestor (the step a logged error names may arrive
    later); errors without a span, errors on the same span and spans on one cycle of parent links are peers.

        failure_causes([{"span_id": "root", "fingerprint": "502", "time_ns": 2},
                        {"span_id": "child", "fingerprint": "declined", "time_ns": 1}],
                       {"root": None, "child": "root"})            # ["declined", None]
    """
    chains: dict[str, list[str]] = {}
    for e in errs:
        sid = e["span_id"]
        if sid and sid not in chains:
            chain, seen, cur = [], set(), sid
            while cur and cur not in seen:
                chain.append(cur)
                seen.add(cur)
                cur = parent.get(cur)
            chains[sid] = chain
    on_chain = {sid: set(chain) for sid, chain in chains.items()}
    # span -> (depth, -time, -index) and fingerprint of the deepest error below it
    best: dict[str, tuple[tuple[int, int, int], str]] = {}
    for i, f in enumerate(errs):
        sid = f["span_id"]
        if not sid:
            continue
        chain = chains[sid]
        key = (len(chain), -f["time_ns"], -i)
        for above in chain[1:]:  # one walk up per error: linear in the run's errors times its depth
            if sid in on_chain.get(above, ()):
                continue  # above is also below f: a cycle of parent links, whose spans are peers
            cur = best.get(above)
            if cur is None or key > cur[0]:
                best[above] = (key, f["fingerprint"])
    return [best[e["span_id"]][1] if e["span_id"] in best else None for e in errs]
