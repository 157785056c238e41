"""The boundary's own rules (exporter/validate.py): what a sink can hold comes out, whatever goes in."""

import pytest

from exporter.validate import (
    MAX_DEPTH,
    MAX_LABEL_CHARS,
    MAX_TIME_NS,
    TOO_DEEP,
    Invalid,
    check_interval,
    clean_label,
    clean_value,
    show,
)


@pytest.mark.parametrize("raw", ["\ud800" * 200, "a\x00" * 150, "é" * 300, "x" * 1000])
def test_a_label_never_passes_the_cap_nor_keeps_a_nul_or_a_lone_surrogate(raw):
    out, cut = clean_label(raw)
    assert len(out) <= MAX_LABEL_CHARS and "\x00" not in out
    out.encode("utf-8")  # raises on a lone surrogate
    assert cut == (len(out) == MAX_LABEL_CHARS and out.endswith("…"))


def test_values_keep_their_shape_within_the_limits():
    deep = v = {}
    for _ in range(MAX_DEPTH + 5):
        v["k"] = {}
        v = v["k"]
    out, cut = clean_value({"n": 2**70, "ok": 5, "s": "a\x00b", "deep": deep, "f": float("nan")})
    assert cut and out["n"] == str(2**70) and out["ok"] == 5 and out["s"] == "a\ufffdb"
    node, depth = out["deep"], 1
    while isinstance(node, dict):
        node, depth = node["k"], depth + 1
    assert node == TOO_DEEP and depth == MAX_DEPTH
    flat = {"a": "b", "n": 1}
    assert clean_value(flat) == (flat, False)


@pytest.mark.parametrize("start,end", [(0, 1), (5, 4), (1, MAX_TIME_NS + 1), (2**64 - 2, 2**64 - 2), ("1", "2"),
                                       (1.5, 2)])
def test_times_outside_int64_nanoseconds_are_refused(start, end):
    with pytest.raises(Invalid) as e:
        check_interval(start, end)
    assert e.value.reason == "invalid_time"


def test_an_error_message_shows_a_value_without_reproducing_its_nesting():
    v = 1
    for _ in range(5000):
        v = [v]
    assert show(v) == "a list" and show("x" * 100) == repr("x" * 40) and show(2**200) == "(a huge number)"
