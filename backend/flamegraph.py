"""Flame graphs from folded stacks: Grafana's Flame Graph data frame, an SVG, and a diff (pure).

Input is ``{folded stack: value}`` (``RunStore.profile_stacks``): CPU seconds, or bytes for a
memory profile (``unit="bytes"``: allocated, or still held). Output:

- :func:`dataframe`: the shape Grafana's Flame Graph panel reads, a nested set
  in depth-first order with fields ``label``, ``level``, ``value`` (total,
  children included) and ``self``. A diff frame adds ``valueRight`` and
  ``selfRight``: then ``value``/``self`` are the baseline and ``*Right`` the
  recent window, and Grafana draws each node ``value + valueRight`` wide
  (``nestedSetToLevels`` in grafana/packages/grafana-flamegraph/src/FlameGraph/dataTransform.ts).
- :func:`svg`: an icicle (root on top) for the run page, with a tooltip per
  frame; in a diff, red frames got hotter and blue ones cooler, by their share
  of each window's total.

    tree = build_tree({"main;handle;db_query": 0.42, "main;handle;render": 0.1})
    frame = dataframe(tree)              # JSON for the Flame Graph panel
    picture = svg(tree, "checkout")      # str, image/svg+xml
    svg(build_tree({"main;load;read_rows": 4_194_304}), "held", unit="bytes")   # tooltips in KiB/MiB

Profiles are client data, so every walk here is iterative and bounded: a stack deeper than
``MAX_FRAMES`` keeps its outermost frames and its leaf, with one ``… N more frames`` node between
them, and a value that is not a finite, plausible number of seconds is left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from html import escape
from typing import Any, NotRequired, TypedDict

MAX_FRAMES = 512
MAX_SECONDS = 1e12  # per stack: ~31,700 years of CPU; anything above is a broken profile, and sums stay finite
MAX_VALUE = MAX_SECONDS  # the same bound for bytes: 1 TB allocated by one stack
#: Units of a flame graph's values: Grafana's unit ids (seconds; bytes in IEC multiples).
UNITS = ("s", "bytes")


class Node:
    __slots__ = ("children", "label", "self", "self_right", "value", "value_right")

    def __init__(self, label: str):
        self.label = label
        self.value = self.self = self.value_right = self.self_right = 0.0
        self.children: dict[str, Node] = {}


def build_tree(stacks: dict[str, float], right: dict[str, float] | None = None) -> Node:
    """One tree from ``stacks``; with ``right``, both windows in one tree (for a diff)."""
    root = Node("total")
    for side, data in ((0, stacks), (1, right or {})):
        for stack, v in data.items():
            if not (isinstance(v, (int, float)) and 0 < v <= MAX_VALUE):  # NaN fails this too
                continue
            node = root
            _add(node, side, v, leaf=False)
            for frame in _frames(stack):
                node = node.children.get(frame) or node.children.setdefault(frame, Node(frame))
                _add(node, side, v, leaf=False)
            _add(node, side, v, leaf=True)
    return root


def _frames(stack: str) -> list[str]:
    """The frames of a folded stack, root first; past ``MAX_FRAMES`` the middle is one summary frame."""
    frames = stack.split(";")
    if len(frames) <= MAX_FRAMES:
        return frames
    keep = MAX_FRAMES - 2
    return [*frames[:keep], f"… {len(frames) - keep - 1} more frames", frames[-1]]


def _add(node: Node, side: int, v: float, leaf: bool) -> None:
    if side == 0:
        if leaf:
            node.self += v
        else:
            node.value += v
    elif leaf:
        node.self_right += v
    else:
        node.value_right += v


def _walk(node: Node) -> Iterator[tuple[Node, int]]:
    """(node, level) depth first, siblings by name (as Pyroscope orders them, so output is deterministic)."""
    work = [(node, 0)]
    while work:
        n, level = work.pop()
        yield n, level
        work.extend((n.children[label], level + 1) for label in sorted(n.children, reverse=True))


class _Field(TypedDict):
    name: str
    type: str
    values: list[int] | list[float] | list[str]
    unit: NotRequired[str]


def dataframe(tree: Node, diff: bool = False, name: str = "profile", unit: str = "s") -> dict[str, Any]:
    """Grafana DataFrameJSON for the Flame Graph panel, values in ``unit`` (``s``, or ``bytes``: whole bytes)."""
    rows = list(_walk(tree))
    digits = 0 if unit == "bytes" else 9

    def num(v: float) -> float:
        return round(v, digits) if digits else float(round(v))

    fields: list[_Field] = [
        {"name": "level", "type": "number", "values": [lvl for _, lvl in rows]},
        {"name": "value", "type": "number", "unit": unit, "values": [num(n.value) for n, _ in rows]},
        {"name": "self", "type": "number", "unit": unit, "values": [num(n.self) for n, _ in rows]},
        {"name": "label", "type": "string", "values": [n.label for n, _ in rows]},
    ]
    if diff:
        fields += [
            {"name": "valueRight", "type": "number", "unit": unit, "values": [num(n.value_right) for n, _ in rows]},
            {"name": "selfRight", "type": "number", "unit": unit, "values": [num(n.self_right) for n, _ in rows]},
        ]
    return {
        "schema": {"name": name, "meta": {"preferredVisualisationType": "flamegraph"},
                   "fields": [{"name": f["name"], "type": f["type"],
                               **({"config": {"unit": f["unit"]}} if "unit" in f else {})} for f in fields]},
        "data": {"values": [f["values"] for f in fields]},
    }


_ROW = 18
_PALETTE = ("#e8743b", "#f2a03d", "#f5c242", "#d9603b", "#ee8f4e", "#f7b267", "#e35d3f", "#f0a35e")


def _color(label: str) -> str:
    return _PALETTE[sum(label.encode()) % len(_PALETTE)]


def _diff_color(n: Node, total_l: float, total_r: float) -> str:
    share_l = n.value / total_l if total_l else 0.0
    share_r = n.value_right / total_r if total_r else 0.0
    delta = share_r - share_l
    strength = min(1.0, abs(delta) / 0.2)  # a 20-point change of share is full colour
    grey = 200
    if delta > 0:
        r, g, b = 220, int(grey - 140 * strength), int(grey - 140 * strength)
    else:
        r, g, b = int(grey - 140 * strength), int(grey - 100 * strength), 230
    return f"#{r:02x}{g:02x}{b:02x}"


def fmt_value(v: float, unit: str = "s") -> str:
    """A value for a tooltip: ``0.125s``, or bytes in IEC units (``512 B``, ``1.5 KiB``, ``12.0 MiB``)."""
    if unit != "bytes":
        return f"{v:.3f}s"
    for u in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or u == "GiB":
            return f"{v:.0f} {u}" if u == "B" else f"{v:.1f} {u}"
        v /= 1024
    return f"{v:.1f} GiB"  # unreachable: the loop returns at GiB


def svg(tree: Node, title: str, diff: bool = False, width: int = 1200, unit: str = "s") -> str:
    """An icicle SVG: one row per stack depth, frame width by (left + right) total; tooltips carry the numbers
    (seconds, or bytes with ``unit="bytes"``).

    ``width`` is the viewBox's width (the unit labels are cut to); the picture itself is 100% of its
    container's width, its height following from the viewBox.
    """
    total = tree.value + tree.value_right
    rects: list[str] = []
    depth = 0
    work = [(tree, 0.0, 0)]  # depth first, iteratively: stacks are client data
    while work:
        node, x, level = work.pop()
        w = (node.value + node.value_right) / total * width if total else 0
        if not w >= 0.5:  # too narrow to see (or not a number)
            continue
        depth = max(depth, level)
        y = 24 + level * _ROW
        if diff:
            fill = _diff_color(node, tree.value, tree.value_right)
            tip = (f"{node.label}\nbaseline {fmt_value(node.value, unit)} ({_pct(node.value, tree.value)})"
                   f"\nrecent {fmt_value(node.value_right, unit)} ({_pct(node.value_right, tree.value_right)})")
        else:
            fill = _color(node.label)
            tip = (f"{node.label}\n{fmt_value(node.value, unit)} total ({_pct(node.value, total)}), "
                   f"{fmt_value(node.self, unit)} self")
        label = escape(node.label if w > 7 * len(node.label) else node.label[:max(0, int(w / 7) - 1)] + "…"
                       if w > 20 else "")
        rects.append(f'<g class="frame"><title>{escape(tip)}</title>'
                     f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{_ROW - 1}" fill="{fill}" rx="2"/>'
                     f'<text x="{x + 3:.1f}" y="{y + 13}">{label}</text></g>')
        cx, kids = x, []
        for lbl in sorted(node.children):
            child = node.children[lbl]
            kids.append((child, cx, level + 1))
            cx += (child.value + child.value_right) / total * width
        work.extend(reversed(kids))
    height = 24 + (depth + 1) * _ROW + 6
    change = "red hotter, blue cooler" if unit == "s" else "red more bytes, blue fewer"
    head = escape(title) + (f" — diff: {change} (share of each side)" if diff else "")
    if not total:
        head = escape(title) + " — no profile samples"
    # width 100% and no height: the picture scales with its container, the viewBox keeping its proportions
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} {height}" '
            f'preserveAspectRatio="xMinYMin meet" font-family="monospace" font-size="11">'
            f'<text x="0" y="14" font-size="13">{head}</text>' + "".join(rects) + "</svg>")


def _pct(v: float, total: float) -> str:
    return f"{100 * v / total:.1f}%" if total else "0%"
