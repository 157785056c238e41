"""Breakpoint conditions and watch paths for replay: a small expression language, parsed here, never ``eval``-ed.

Use :func:`parse` on what a person typed (``break=`` of ``GET /api/v1/runs/<id>/replay``, ``--break`` of
``flowscope replay``, the run page's breakpoint box), then :meth:`Condition.holds` on each step::

    cond = parse("layer=database and duration > 250")
    cond.holds(step, before, after)       # step: a span as JSON; before/after: the state around the step
    parse("cart.total > 100 or user.id changed or error")
    parse("not (status = ok) and component = 'stripe'")

The language:

- **Step fields**: ``layer``, ``component``, ``operation``, ``status`` (text), ``duration`` (milliseconds),
  ``step`` (the 0-based index), compared with ``=``/``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``.
  ``error`` alone holds on a failed step (status ``error`` or ``timeout``, or an error type recorded).
- **State paths**: any other dotted name (``cart.total``, ``items.0.sku``) is a path into the state after the
  step; ``state.layer`` reaches a state key that shares a field's name. ``PATH changed`` holds when the step
  changed the value there (appeared, disappeared or differs). A path alone holds when its value is truthy.
- **Values** after an operator: numbers (``-1.5``, ``2e3``), strings in single or double quotes (``\\"`` and
  ``\\\\`` escape), ``true``, ``false``, ``null``, or a bare word, which is a string (``layer=database``).
  Paths are compared with values, not with each other.
- **Logic**: ``and``, ``or``, ``not``, parentheses; ``and`` binds tighter than ``or``.
- **Absent paths** equal nothing: ``==`` and the orderings do not hold, ``!=`` does. Orderings compare a
  number with a number or a string with a string, and do not hold otherwise (never an error).

Bad input raises :class:`BreakpointError` with the 0-based ``position`` it points at. Expressions are
bounded: :data:`MAX_EXPRESSION_CHARS` characters, :data:`MAX_NESTING` levels of parentheses and ``not``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from exporter.conventions import FAILED_STATUSES

from ..errors import BackendError

MAX_EXPRESSION_CHARS: Final = 500
MAX_NESTING: Final = 32
MAX_PATH_CHARS: Final = 200
MAX_PATH_SEGMENTS: Final = 32

STEP_TEXT_FIELDS: Final = ("layer", "component", "operation", "status")
STEP_NUMBER_FIELDS: Final = ("duration", "step")
KEYWORDS: Final = ("and", "or", "not", "changed", "true", "false", "null")


class BreakpointError(BackendError):
    """An expression or watch path that cannot be used; ``position`` is the 0-based character it points at."""

    def __init__(self, message: str, position: int, text: str):
        self.position, self.text = position, text
        super().__init__(f"{message} (at position {position})")
        self.reason = message


class _Absent:
    """The value of a path that leads nowhere: equal to nothing, shown as absent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.]))
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[^\W\d][\w-]*(?:\.[\w-]+)*)
  | (?P<op>==|!=|<=|>=|<|>|=)
  | (?P<paren>[()])
""", re.VERBOSE)


def lookup(state: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``state`` (dict keys; all-digit segments also index lists), or :data:`ABSENT`."""
    v = state
    for seg in path:
        if isinstance(v, dict) and seg in v:
            v = v[seg]
        elif isinstance(v, list) and seg.isdigit() and seg.isascii() and int(seg) < len(v):
            v = v[int(seg)]
        else:
            return ABSENT
    return v


def parse_path(text: str) -> tuple[str, ...]:
    """A watch path (``cart.total``, ``items.0.sku``) as its segments. Any key without a dot can be named:
    segments are split on dots and may hold spaces. Raises :class:`BreakpointError` for an empty segment,
    NUL, or a path over :data:`MAX_PATH_CHARS` characters / :data:`MAX_PATH_SEGMENTS` segments."""
    if not text:
        raise BreakpointError("the path is empty", 0, text)
    if len(text) > MAX_PATH_CHARS:
        raise BreakpointError(f"the path is longer than {MAX_PATH_CHARS} characters", MAX_PATH_CHARS, text)
    if "\x00" in text:
        raise BreakpointError("the path holds a NUL character", text.index("\x00"), text)
    segs = text.split(".")
    if len(segs) > MAX_PATH_SEGMENTS:
        raise BreakpointError(f"the path has more than {MAX_PATH_SEGMENTS} segments", 0, text)
    pos = 0
    for s in segs:
        if not s:
            raise BreakpointError("the path has an empty segment (two dots, or a dot at an end)", pos, text)
        pos += len(s) + 1
    return tuple(segs)


# -- the syntax tree: plain frozen dataclasses, evaluated by Condition.holds ------------------------------------

@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # one of STEP_TEXT_FIELDS / STEP_NUMBER_FIELDS


@dataclass(frozen=True, slots=True)
class _Path:
    segments: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Compare:
    left: _Field | _Path
    op: str
    right: Any  # a literal: str, int, float, bool or None


@dataclass(frozen=True, slots=True)
class _Changed:
    path: _Path


@dataclass(frozen=True, slots=True)
class _Truthy:
    path: _Path


@dataclass(frozen=True, slots=True)
class _Failed:
    pass


@dataclass(frozen=True, slots=True)
class _Not:
    arg: _Node


@dataclass(frozen=True, slots=True)
class _All:
    args: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Any:
    args: tuple[_Node, ...]


_Node = _Compare | _Changed | _Truthy | _Failed | _Not | _All | _Any


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # number, string, name, op, paren, end
    text: str
    pos: int


def _token(text: str, pos: int) -> _Tok:
    """The token at ``pos`` (spaces skipped), or the end. Tokens are read as the parser reaches them, so
    the first fault reported is the leftmost one."""
    while True:
        if pos >= len(text):
            return _Tok("end", "", len(text))
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            what = "a NUL character" if ch == "\x00" else f"unexpected character {ch!r}"
            if ch in "\"'":
                what = "a string that is not closed"
            raise BreakpointError(what, pos, text)
        if m.lastgroup != "space":
            return _Tok(m.lastgroup or "", m.group(), pos)
        pos = m.end()


def _unquote(tok: _Tok, text: str) -> str:
    body, out, i = tok.text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1]
            if nxt not in "\"'\\":
                raise BreakpointError("only \\\", \\' and \\\\ are escapes in a string", tok.pos + 1 + i, text)
            out.append(nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.next = _token(text, 0)

    def peek(self) -> _Tok:
        return self.next

    def take(self) -> _Tok:
        t = self.next
        if t.kind != "end":
            self.next = _token(self.text, t.pos + len(t.text))
        return t

    def fail(self, message: str, tok: _Tok | None = None) -> BreakpointError:
        t = tok or self.peek()
        return BreakpointError(message, t.pos, self.text)

    def is_word(self, word: str) -> bool:
        t = self.peek()
        return t.kind == "name" and t.text == word

    def expr(self, depth: int) -> _Node:
        args = [self.conj(depth)]
        while self.is_word("or"):
            self.take()
            args.append(self.conj(depth))
        return args[0] if len(args) == 1 else _Any(tuple(args))

    def conj(self, depth: int) -> _Node:
        args = [self.unary(depth)]
        while self.is_word("and"):
            self.take()
            args.append(self.unary(depth))
        return args[0] if len(args) == 1 else _All(tuple(args))

    def unary(self, depth: int) -> _Node:
        t = self.peek()
        if self.is_word("not") or (t.kind == "paren" and t.text == "("):
            if depth >= MAX_NESTING:
                raise self.fail(f"nested deeper than {MAX_NESTING} levels of parentheses and not")
            self.take()
            if t.text == "not":
                return _Not(self.unary(depth + 1))
            inner = self.expr(depth + 1)
            close = self.take()
            if close.kind != "paren" or close.text != ")":
                raise self.fail("expected ')' to close the '(' at position " + str(t.pos), close)
            return inner
        return self.condition()

    def condition(self) -> _Node:
        t = self.take()
        if t.kind == "end":
            raise self.fail("the expression ends where a condition was expected", t)
        if t.kind != "name" or t.text in KEYWORDS:
            raise self.fail(f"expected a step field (layer, component, operation, status, duration, step, error) "
                            f"or a state path, got {t.text!r}", t)
        segs = tuple(t.text.split("."))
        if len(t.text) > MAX_PATH_CHARS or len(segs) > MAX_PATH_SEGMENTS:
            raise self.fail(f"a path is at most {MAX_PATH_CHARS} characters and {MAX_PATH_SEGMENTS} segments", t)
        left: _Field | _Path
        if segs[0] == "state" and len(segs) > 1:
            left = _Path(segs[1:])
        elif len(segs) == 1 and segs[0] in (*STEP_TEXT_FIELDS, *STEP_NUMBER_FIELDS):
            left = _Field(segs[0])
        elif segs == ("error",):
            if self.peek().kind == "op":
                raise self.fail("error stands alone (the step failed); compare status or its state instead")
            return _Failed()
        else:
            left = _Path(segs)
        nxt = self.peek()
        if nxt.kind == "op":
            self.take()
            return _Compare(left, "==" if nxt.text == "=" else nxt.text, self.value(left, nxt))
        if self.is_word("changed"):
            self.take()
            if isinstance(left, _Field):
                raise self.fail(f"{left.name} is a step field; 'changed' follows a state path", nxt)
            return _Changed(left)
        if isinstance(left, _Field):
            raise self.fail(f"{left.name} needs a comparison, e.g. "
                            + ("layer=database" if left.name in STEP_TEXT_FIELDS else f"{left.name} > 250"), nxt)
        return _Truthy(left)

    def value(self, left: _Field | _Path, op: _Tok) -> Any:
        t = self.take()
        if t.kind == "number":
            v = float(t.text)
            if not math.isfinite(v):
                raise self.fail("the number is too large", t)
            return int(t.text) if re.fullmatch(r"-?\d+", t.text) else v
        if t.kind == "string":
            return _unquote(t, self.text)
        if t.kind == "name" and t.text in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[t.text]
        if t.kind == "name" and t.text not in KEYWORDS:
            return t.text  # a bare word is a string: layer=database
        raise self.fail(f"expected a value (number, 'string', true, false, null or a word) after {op.text!r}", t)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _equal(a: Any, b: Any) -> bool:
    if a is ABSENT or b is ABSENT:
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _compare(a: Any, op: str, b: Any) -> bool:
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if not ((_number(a) and _number(b)) or (isinstance(a, str) and isinstance(b, str))):
        return False
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _truthy(v: Any) -> bool:
    return v is not ABSENT and v not in (None, False, 0, "") and v != [] and v != {}


def step_failed(step: dict[str, Any]) -> bool:
    """Did the step fail (what ``error`` means in an expression)?"""
    return step.get("status") in FAILED_STATUSES or bool(step.get("error_type"))


def _field(step: dict[str, Any], name: str, index: int) -> Any:
    if name == "duration":
        return (step["end_ns"] - step["start_ns"]) / 1e6
    if name == "step":
        return index
    v = step.get(name)
    return ABSENT if v is None else v


_Test = Callable[[dict[str, Any], Any, Any, int], bool]


def _compile(node: _Node) -> _Test:
    """A closure per node, short-circuiting as Python's ``and``/``or`` do. Recursive, but the parser bounds
    the depth: :data:`MAX_NESTING` levels of parentheses and ``not``, each at most two calls here."""
    if isinstance(node, _Not):
        arg = _compile(node.arg)
        return lambda s, b, a, i: not arg(s, b, a, i)
    if isinstance(node, _All):
        parts = [_compile(x) for x in node.args]
        return lambda s, b, a, i: all(f(s, b, a, i) for f in parts)
    if isinstance(node, _Any):
        parts = [_compile(x) for x in node.args]
        return lambda s, b, a, i: any(f(s, b, a, i) for f in parts)
    if isinstance(node, _Failed):
        return lambda s, b, a, i: step_failed(s)
    if isinstance(node, _Changed):
        segs = node.path.segments

        def changed(s: dict[str, Any], b: Any, a: Any, i: int) -> bool:
            old, new = lookup(b, segs), lookup(a, segs)
            return (old is ABSENT) != (new is ABSENT) or (old is not ABSENT and not same_json(old, new))
        return changed
    if isinstance(node, _Truthy):
        tsegs = node.path.segments
        return lambda s, b, a, i: _truthy(lookup(a, tsegs))
    assert isinstance(node, _Compare)
    op, right, left = node.op, node.right, node.left
    if isinstance(left, _Field):
        name = left.name
        return lambda s, b, a, i: _compare(_field(s, name, i), op, right)
    csegs = left.segments
    return lambda s, b, a, i: _compare(lookup(a, csegs), op, right)


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed breakpoint expression (:func:`parse`). ``text`` is what was typed."""

    text: str
    root: _Node
    test: _Test = field(repr=False, compare=False)

    def holds(self, step: dict[str, Any], before: Any, after: Any, index: int = 0) -> bool:
        """Does the condition hold at ``step`` (a span as JSON, as :func:`.replay.steps_of` returns), with the
        state ``before`` and ``after`` it, at step number ``index``?"""
        return self.test(step, before, after, index)


def same_json(a: Any, b: Any) -> bool:
    """JSON equality, at any depth: ``1`` and ``true`` differ (``[1]`` and ``[true]`` too), ``1`` and ``1.0`` do
    not. Iterative (state values nest as deep as a client sent them); a shared sub-tree is compared once."""
    work = [(a, b)]
    while work:
        x, y = work.pop()
        if x is y:
            continue
        if isinstance(x, bool) or isinstance(y, bool):
            if type(x) is not type(y) or x != y:
                return False
        elif isinstance(x, dict):
            if not isinstance(y, dict) or x.keys() != y.keys():
                return False
            work.extend((v, y[k]) for k, v in x.items())
        elif isinstance(x, list):
            if not isinstance(y, list) or len(x) != len(y):
                return False
            work.extend(zip(x, y, strict=True))
        elif isinstance(y, (dict, list)) or x != y:
            return False
    return True


def parse(text: str) -> Condition:
    """Parse a breakpoint expression; :class:`BreakpointError` (with ``position``) if it is not one.

        parse("cart.total > 100").holds(step, before, after)
    """
    if not isinstance(text, str) or not text.strip():
        raise BreakpointError("the expression is empty", 0, text if isinstance(text, str) else "")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise BreakpointError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters",
                              MAX_EXPRESSION_CHARS, text)
    p = _Parser(text)
    root = p.expr(0)
    if p.peek().kind != "end":
        t = p.peek()
        hint = {")": " (a ')' without its '('?)", "(": " (there are no function calls)"}.get(
            t.text, " (join conditions with and / or)")
        raise p.fail(f"unexpected {t.text!r} after a complete condition{hint}", t)
    return Condition(text, root, _compile(root))
