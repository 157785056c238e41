"""Time travel through one run: its span tree, critical path, and the state after any step (pure).

Input is a run's spans as JSON objects, in start order: ``[s._asdict() for s in RunStore.get_run(...).spans]``
(:func:`backend.runs.service.load_run` builds them once per request; the tree and the API serve the same objects).

- **Steps** are the spans that are steps (not the run's envelope), ordered by
  start, then end, then span_id: the order a reader of the waterfall sees.
- **State after step N** folds the steps' ``state`` snapshots 0..N: each
  snapshot is merged into the state so far, dicts recursively, anything else
  replaced. A snapshot that was cut to the size cap carries its marker.
- **Critical path**: the chain of spans that set the run's duration, computed
  backwards from the end as in Jaeger's critical-path view: from a span's end,
  take the child that finished last before the cursor, descend into it, move
  the cursor to that child's start, and repeat.
- **Untrusted shape.** Spans come from clients, so every walk here is iterative (a 10,000-deep parent
  chain is fine) and cycle-safe: a parent link that closes a cycle is cut at the cycle's earliest span
  (by start, end, span_id), which becomes a root, so every span is still shown. The nested tree stops
  nesting at ``MAX_TREE_NESTING`` (JSON encoders refuse deep documents): a span at that depth lists
  all its descendants, depth first with their true ``depth``, as its children.

- **Watches and breakpoints** (:mod:`.breakpoints` parses them) walk the states once, step by step:
  a watch is a state path's value after every step and the steps that changed it; a breakpoint is the
  next step after ``from`` where any of its conditions holds.

    steps = steps_of(spans)
    replay(steps, 3)   # {"step": 3, "state": {...}, "diff": [...], ...}
    critical_path(spans)  # [span_id, ...] in time order
    watch(steps, ["cart.total"])           # [{"path": ..., "values": [...], "changed_at": [...]}]
    next_break(steps, [parse("error")], 3)  # the first failed step after step 3, or None
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from ..errors import BackendError
from .breakpoints import ABSENT, Condition, lookup, parse_path, same_json

MAX_TREE_NESTING = 64  # levels of nested "children"; each costs two of a JSON encoder's ~255
MAX_VALUE_DEPTH = 200  # state values nest at most this deep in a replay response
MAX_WATCHES = 16  # watch paths per request
MAX_BREAKPOINTS = 16  # breakpoint expressions per request
MAX_WATCH_VALUE_BYTES = 2048  # a watched value bigger than this (as JSON) is in full at the step shown only


class StepOutOfRange(BackendError):
    def __init__(self, step: int, total: int):
        self.step, self.total = step, total
        valid = f"0..{total - 1}" if total else "none: the run has no steps"
        super().__init__(f"step {step} is out of range; valid steps: {valid}")


def steps_of(spans: list[dict]) -> list[dict]:
    return sorted((s for s in spans if s["is_step"]), key=lambda s: (s["start_ns"], s["end_ns"], s["span_id"]))


def _merge(dst: dict, src: dict) -> dict:
    """Merge ``src`` into ``dst`` (in place), dicts key by key, anything else replaced; nested dicts are copied."""
    work = [(dst, src)]
    while work:
        d, s = work.pop()
        for k, v in s.items():
            old = d.get(k)
            if isinstance(v, dict) and isinstance(old, dict):
                d[k] = copy = dict(old)
                work.append((copy, v))
            else:
                d[k] = v
    return dst


def state_at(steps: list[dict], n: int) -> dict:
    """The state after step ``n`` (−1: before the first step). Snapshots are shared, not copied."""
    state: dict = {}
    for s in steps[:n + 1]:
        snap = s.get("state")
        if isinstance(snap, dict):
            state = _merge(state, snap)
    return state


def states(steps: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(state before, state after) each step, in order: one fold over the run, each state a copy of the one
    before with only the dicts its snapshot touches copied (O(keys touched) a step, not O(state))."""
    state: dict = {}
    for s in steps:
        snap = s.get("state")
        after = _merge(dict(state), snap) if isinstance(snap, dict) else state
        yield state, after
        state = after


def watch(steps: list[dict], paths: Sequence[str], full_at: int | None = None) -> list[dict]:
    """Each state path's value after every step, and the steps where it changed (appeared, went, differs).

    ``{"path": "cart.total", "values": [{"present": False}, {"present": True, "value": 30}, ...],
    "changed_at": [1]}``, one value per step. A path that leads nowhere is absent at every step, not an
    error. Paths are split on dots (:func:`.breakpoints.parse_path`, which raises for an empty segment).

    A value whose JSON is over :data:`MAX_WATCH_VALUE_BYTES` (a whole sub-tree, watched) is given in full at
    step ``full_at`` only, and elsewhere as ``{"present": True, "elided": True, "bytes": N}``: a response holds
    every step's value, and a 60 KiB cart at each of 1,000 steps would be 60 MB.
    """
    parsed = [parse_path(p) for p in paths]
    out = [{"path": p, "values": [], "changed_at": []} for p in paths]
    last: list[Any] = [ABSENT] * len(paths)
    entry: list[tuple[dict, dict]] = [({"present": False}, {"present": False})] * len(paths)  # (full, elsewhere)
    for i, (_, after) in enumerate(states(steps)):
        for k, (w, segs) in enumerate(zip(out, parsed, strict=True)):
            v = lookup(after, segs)
            if (v is ABSENT) != (last[k] is ABSENT) or (v is not ABSENT and not same_json(v, last[k])):
                w["changed_at"].append(i)
                if v is ABSENT:
                    entry[k] = ({"present": False}, {"present": False})
                else:
                    full = {"present": True, "value": clip(v)}
                    try:
                        size = len(orjson.dumps(full["value"], default=str))
                    except TypeError:  # orjson.JSONEncodeError: an integer over 64 bits; the response says it
                        size = MAX_WATCH_VALUE_BYTES + 1
                    entry[k] = (full, full if size <= MAX_WATCH_VALUE_BYTES else
                                {"present": True, "elided": True, "bytes": size})
            last[k] = v
            w["values"].append(entry[k][0] if i == full_at else entry[k][1])
    return out


def next_break(steps: list[dict], conditions: Sequence[Condition], after: int = -1) -> dict | None:
    """The first step after step ``after`` (−1: from the start) where any condition holds:
    ``{"step": N, "matched": [the expressions that hold there]}``, or None when no later step matches."""
    for i, (before, state) in enumerate(states(steps)):
        if i <= after:
            continue
        hit = [c.text for c in conditions if c.holds(steps[i], before, state, i)]
        if hit:
            return {"step": i, "matched": hit}
    return None


def diff(before: Any, after: Any, path: str = "") -> list[dict]:
    """Changes from ``before`` to ``after``: ``{path, op: added|removed|changed, before, after}``, depth first."""
    out: list[dict] = []
    work: list[tuple] = [("compare", before, after, path)]  # a stack: tasks pushed in reverse order
    while work:
        task = work.pop()
        if task[0] == "emit":
            out.append(task[1])
            continue
        _, b, a, p = task
        if isinstance(b, dict) and isinstance(a, dict):
            tasks = []
            for k in list(b) + [k for k in a if k not in b]:
                q = f"{p}.{k}" if p else str(k)
                if k not in a:
                    tasks.append(("emit", {"path": q, "op": "removed", "before": b[k], "after": None}))
                elif k not in b:
                    tasks.append(("emit", {"path": q, "op": "added", "before": None, "after": a[k]}))
                else:
                    tasks.append(("compare", b[k], a[k], q))
            work.extend(reversed(tasks))
        elif b != a:
            out.append({"path": p, "op": "changed", "before": b, "after": a})
    return out


def clip(value: Any, max_depth: int = MAX_VALUE_DEPTH) -> Any:
    """``value`` with containers nested deeper than ``max_depth`` replaced by a marker string (a copy).

    State snapshots are client data; a response nests them a few levels further, and JSON encoders
    refuse documents deeper than about 255.
    """
    if not isinstance(value, (dict, list)):
        return value
    root: list = [None]
    work = [(root, 0, value, 1)]
    while work:
        holder, key, v, depth = work.pop()
        if isinstance(v, (dict, list)) and depth > max_depth:
            holder[key] = f"… nested deeper than {max_depth} levels"
        elif isinstance(v, dict):
            holder[key] = copy = dict(v)
            work.extend((copy, k, x, depth + 1) for k, x in v.items())
        elif isinstance(v, list):
            holder[key] = copy = list(v)
            work.extend((copy, i, x, depth + 1) for i, x in enumerate(v))
        else:
            holder[key] = v
    return root[0]


def replay(steps: list[dict], n: int) -> dict:
    """The state after step ``n``, its diff from step ``n − 1``, and the step itself."""
    if not 0 <= n < len(steps):
        raise StepOutOfRange(n, len(steps))
    before = state_at(steps, n - 1)
    snap = steps[n].get("state")
    after = _merge(dict(before), snap) if isinstance(snap, dict) else before
    changes = [{**d, "before": clip(d["before"]), "after": clip(d["after"])} for d in diff(before, after)]
    return {"step": n, "total_steps": len(steps), "span": summary(steps[n]), "state": clip(after), "diff": changes}


def debug(steps: list[dict], step: int | None = None, watches: Sequence[str] = (),
          breaks: Sequence[Condition] = (), after: int = -1) -> dict:
    """:func:`replay` with watches and breakpoints, as ``GET /api/v1/runs/<id>/replay`` and ``flowscope replay``
    serve it. Without ``breaks``: step ``step``. With them: the next step after ``after`` where one holds;
    when none does, the response stays at ``after`` (step 0 from the start) and its ``breakpoint.hit`` is None.

        debug(steps, watches=["cart.total"], breaks=[parse("cart.total > 100")], after=3)
    """
    hit = None
    if breaks:
        hit = next_break(steps, breaks, after)
        step = hit["step"] if hit else min(max(after, 0), max(len(steps) - 1, 0))
    if step is None:
        raise ValueError("debug() needs a step or breakpoints")
    body = replay(steps, step)
    if watches:
        body["watches"] = watch(steps, watches, full_at=step)
    if breaks:
        body["breakpoint"] = {"expressions": [c.text for c in breaks], "from": after,
                              "hit": hit["step"] if hit else None, "matched": hit["matched"] if hit else []}
    return body


def summary(s: dict) -> dict:
    keys = ("span_id", "parent_span_id", "layer", "component", "operation", "status", "start_ns", "end_ns",
            "error_type", "error_message")
    out = {k: s.get(k) for k in keys}
    out["duration_ms"] = (s["end_ns"] - s["start_ns"]) / 1e6
    return out


def _order(s: dict):
    return (s["start_ns"], s["end_ns"], s["span_id"])


def _links(spans: list[dict]) -> tuple[list[int], list[list[int]]]:
    """(roots, children) as indexes into ``spans``, both in (start, end, span_id) order.

    A span is a root when its parent is missing, itself, or on a cycle through it: each cycle is cut
    once, at its earliest span. A duplicated span_id is a parent by its first occurrence only.
    """
    first: dict[str, int] = {}
    for i, s in enumerate(spans):
        first.setdefault(s["span_id"], i)
    parent: list[int | None] = []
    for i, s in enumerate(spans):
        p = first.get(s.get("parent_span_id") or "")
        parent.append(p if p is not None and p != i else None)
    order = sorted(range(len(spans)), key=lambda i: _order(spans[i]))
    state = [0] * len(spans)  # 0 unseen, 1 on the chain being followed, 2 settled
    for i in order:
        chain, cur = [], i
        while cur is not None and state[cur] == 0:
            state[cur] = 1
            chain.append(cur)
            cur = parent[cur]
        if cur is not None and state[cur] == 1:  # the chain came back to itself
            cycle = chain[chain.index(cur):]
            parent[min(cycle, key=lambda j: _order(spans[j]))] = None
        for j in chain:
            state[j] = 2
    roots: list[int] = []
    kids: list[list[int]] = [[] for _ in spans]
    for i in order:
        (roots if parent[i] is None else kids[parent[i]]).append(i)
    return roots, kids


def span_tree(spans: list[dict]) -> list[dict]:
    """Nested ``{**span, "depth": d, "children": [...]}`` from parent links; spans whose parent is missing are roots.

    A node at depth ``MAX_TREE_NESTING`` lists all its descendants, depth first with their true
    ``depth`` (and ``parent_span_id``), as its ``children``; theirs are empty.
    """
    roots, kids = _links(spans)
    out: list[dict] = []
    work = [(i, 0, out) for i in reversed(roots)]
    while work:
        i, depth, siblings = work.pop()
        node = {**spans[i], "depth": depth, "children": []}
        siblings.append(node)
        below = siblings if depth > MAX_TREE_NESTING else node["children"]
        work.extend((k, depth + 1, below) for k in reversed(kids[i]))
    return out


def critical_path(spans: list[dict]) -> list[str]:
    """Span IDs on the critical path, in time order. Several roots hang under one virtual root."""
    if not spans:
        return []
    roots, kids = _links(spans)
    on_path: list[int] = []
    if len(roots) == 1:
        work = [(roots[0], spans[roots[0]]["end_ns"], kids[roots[0]])]
    else:
        work = [(None, max(spans[r]["end_ns"] for r in roots), roots)]
    while work:
        i, end, children = work.pop()
        if i is not None:
            on_path.append(i)
        for k, child_end in _blockers(spans, children, end):
            work.append((k, child_end, kids[k]))
    # time order; a parent before a child that starts with it
    return [spans[i]["span_id"] for i in sorted(on_path, key=lambda i: (spans[i]["start_ns"], -spans[i]["end_ns"],
                                                                        spans[i]["span_id"]))]


def _blockers(spans: list[dict], children: list[int], end: int) -> list[tuple[int, int]]:
    """The children on the critical path of a span ending at ``end``, each with its end clamped to the cursor.

    Going back from ``end``: the child still running latest before the cursor, i.e. the greatest
    ``(min(child end, cursor), child start)``; the cursor moves to its start. O(n log n): the children
    ending at or after the cursor all tie on ``cursor``, so among them a heap picks the latest start.
    """
    by_end = sorted(children, key=lambda k: (spans[k]["end_ns"], spans[k]["start_ns"]), reverse=True)
    out: list[tuple[int, int]] = []
    cursor, at, running = end, 0, []  # running: (-start, position) of children ending at or after the cursor
    while True:
        while at < len(by_end) and spans[by_end[at]]["end_ns"] >= cursor:
            heapq.heappush(running, (-spans[by_end[at]]["start_ns"], at))
            at += 1
        while running and -running[0][0] >= cursor:  # starts at or after the cursor: never eligible again
            heapq.heappop(running)
        if running:
            nxt = by_end[heapq.heappop(running)[1]]
        else:
            while at < len(by_end) and spans[by_end[at]]["start_ns"] >= cursor:
                at += 1
            if at == len(by_end):
                return out
            nxt, at = by_end[at], at + 1
        out.append((nxt, min(spans[nxt]["end_ns"], cursor)))
        cursor = spans[nxt]["start_ns"]
