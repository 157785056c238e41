"""Time travel through one run: its span tree, critical path, and the state after any step (pure).

Input is the run store's span dicts (``RunStore.get_run(...)["spans"]``), in start order.

- **Steps** are the spans that are steps (not the run's envelope), ordered by
  start, then end, then span_id: the order a reader of the waterfall sees.
- **State after step N** folds the steps' ``state`` snapshots 0..N: each
  snapshot is merged into the state so far, dicts recursively, anything else
  replaced. A snapshot that was cut to the size cap carries its marker.
- **Critical path**: the chain of spans that set the run's duration, computed
  backwards from the end as in Jaeger's critical-path view: from a span's end,
  take the child that finished last before the cursor, descend into it, move
  the cursor to that child's start, and repeat.

    steps = steps_of(spans)
    replay(steps, 3)   # {"step": 3, "state": {...}, "diff": [...], ...}
    critical_path(spans)  # [span_id, ...] in time order
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ..errors import BackendError


class StepOutOfRange(BackendError):
    def __init__(self, step: int, total: int):
        self.step, self.total = step, total
        valid = f"0..{total - 1}" if total else "none: the run has no steps"
        super().__init__(f"step {step} is out of range; valid steps: {valid}")


def steps_of(spans: list[dict]) -> list[dict]:
    return sorted((s for s in spans if s["is_step"]), key=lambda s: (s["start_ns"], s["end_ns"], s["span_id"]))


def _merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        old = dst.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            dst[k] = _merge(dict(old), v)
        else:
            dst[k] = v
    return dst


def state_at(steps: list[dict], n: int) -> dict:
    """The state after step ``n`` (−1: before the first step). Snapshots are shared, not copied."""
    state: dict = {}
    for s in steps[:n + 1]:
        snap = s.get("state")
        if isinstance(snap, dict):
            state = _merge(state, snap)
    return state


def diff(before: Any, after: Any, path: str = "") -> list[dict]:
    """Changes from ``before`` to ``after``: ``{path, op: added|removed|changed, before, after}``."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict] = []
        for k in list(before) + [k for k in after if k not in before]:
            p = f"{path}.{k}" if path else str(k)
            if k not in after:
                out.append({"path": p, "op": "removed", "before": before[k], "after": None})
            elif k not in before:
                out.append({"path": p, "op": "added", "before": None, "after": after[k]})
            else:
                out.extend(diff(before[k], after[k], p))
        return out
    if before == after:
        return []
    return [{"path": path, "op": "changed", "before": before, "after": after}]


def replay(steps: list[dict], n: int) -> dict:
    """The state after step ``n``, its diff from step ``n − 1``, and the step itself."""
    if not 0 <= n < len(steps):
        raise StepOutOfRange(n, len(steps))
    before = state_at(steps, n - 1)
    snap = steps[n].get("state")
    after = _merge(dict(before), snap) if isinstance(snap, dict) else before
    return {"step": n, "total_steps": len(steps), "span": summary(steps[n]), "state": after,
            "diff": diff(before, after)}


def summary(s: dict) -> dict:
    keys = ("span_id", "parent_span_id", "layer", "component", "operation", "status", "start_ns", "end_ns",
            "error_type", "error_message")
    out = {k: s.get(k) for k in keys}
    out["duration_ms"] = (s["end_ns"] - s["start_ns"]) / 1e6
    return out


def _children(spans: list[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    ids = {s["span_id"] for s in spans}
    kids: dict[str, list[dict]] = defaultdict(list)
    roots = []
    for s in spans:
        p = s.get("parent_span_id")
        if p and p in ids and p != s["span_id"]:
            kids[p].append(s)
        else:
            roots.append(s)
    return roots, kids


def span_tree(spans: list[dict]) -> list[dict]:
    """Nested ``{**span, "children": [...]}`` from parent links; spans whose parent is missing are roots."""
    roots, kids = _children(spans)

    def node(s: dict, depth: int) -> dict:
        return {**s, "depth": depth, "children": [node(k, depth + 1) for k in
                                                  sorted(kids.get(s["span_id"], ()), key=_order)]}

    return [node(r, 0) for r in sorted(roots, key=_order)]


def _order(s: dict):
    return (s["start_ns"], s["end_ns"], s["span_id"])


def critical_path(spans: list[dict]) -> list[str]:
    """Span IDs on the critical path, in time order. Several roots hang under one virtual root."""
    if not spans:
        return []
    roots, kids = _children(spans)
    path: list[str] = []

    def walk(span_id: str | None, end: int, children: list[dict]) -> None:
        if span_id is not None:
            path.append(span_id)
        cursor = end
        pending = sorted(children, key=lambda k: (k["end_ns"], k["start_ns"]), reverse=True)
        while pending:
            # the child that was still running latest before the cursor
            nxt = next((k for k in pending if k["start_ns"] < cursor), None)
            if nxt is None:
                break
            child_end = min(nxt["end_ns"], cursor)
            walk(nxt["span_id"], child_end, kids.get(nxt["span_id"], []))
            cursor = nxt["start_ns"]
            pending = [k for k in pending if k is not nxt and k["start_ns"] < cursor]
            pending.sort(key=lambda k: (min(k["end_ns"], cursor), k["start_ns"]), reverse=True)

    if len(roots) == 1:
        r = roots[0]
        walk(r["span_id"], r["end_ns"], kids.get(r["span_id"], []))
    else:
        walk(None, max(s["end_ns"] for s in roots), roots)
    by_id = {s["span_id"]: s for s in spans}
    # time order; a parent before a child that starts with it
    return sorted(path, key=lambda i: (by_id[i]["start_ns"], -by_id[i]["end_ns"], i))
