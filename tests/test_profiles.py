import base64
import cProfile
import marshal
import struct

import pytest

from exporter import conventions as c
from exporter.profiles import ProfileError, parse_folded, parse_pstats

FOLDED = """# py-spy raw output
main;handle_checkout;charge_card;ssl_read 40
main;handle_checkout;charge_card 10
main;handle_checkout;render 50
"""


def cpu(ex, workflow, function):
    return ex.store.value(c.PROFILE_CPU_SECONDS_TOTAL, {"workflow": workflow, "function": function})


def test_folded_stacks_give_leaf_self_time():
    self_s, stacks = parse_folded(FOLDED, 100)
    assert self_s == {"ssl_read": 0.4, "charge_card": 0.1, "render": 0.5}
    assert stacks["main;handle_checkout;render"] == 50


@pytest.mark.parametrize("text,where", [
    ("main;a 10\nmain;b ten\n", "line 2: the sample count must be a positive whole number"),
    ("main;a\n", "line 1: expected 'frame;frame;... count'"),
    ("main;;a 3\n", "line 1: empty frame"),
    ("main;a 0\n", "line 1: the sample count"),
    ("# nothing\n\n", "no samples"),
])
def test_bad_folded_lines_are_named(text, where):
    with pytest.raises(ProfileError, match=where):
        parse_folded(text, 100)


def _pstats_bytes() -> bytes:
    prof = cProfile.Profile()
    prof.enable()
    sum(i * i for i in range(20000))
    prof.disable()
    prof.create_stats()
    return marshal.dumps(prof.stats)


def test_pstats_dumps_give_own_time_per_function():
    out = parse_pstats(_pstats_bytes())
    assert out and all(v >= 0 for v in out.values())
    assert any("<genexpr>" in k for k in out)


@pytest.mark.parametrize("data", [b"", b"not marshal at all", marshal.dumps([1, 2]), marshal.dumps({"a": 1})])
def test_non_pstats_data_is_refused(data):
    with pytest.raises(ProfileError, match="not a cProfile pstats dump"):
        parse_pstats(data)


def test_post_folded_and_pstats_feed_the_cpu_counter(ex, client):
    r = client.post(c.PROFILES_PATH, query_string={"workflow": "checkout", "sample_rate": "100"}, data=FOLDED,
                    content_type="text/plain")
    assert r.status_code == 200 and r.json["functions"] == 3 and r.json["top"][0]["function"] == "render"
    assert cpu(ex, "checkout", "ssl_read") == pytest.approx(0.4)
    r = client.post(c.PROFILES_PATH, query_string={"workflow": "search"}, data=_pstats_bytes(),
                    content_type="application/octet-stream")
    assert r.status_code == 200 and r.json["format"] == "pstats"
    assert ex.store.value(c.PROFILES_RECEIVED_TOTAL, {"format": "pstats"}) == 1


def test_functions_past_the_top_n_become_other(ex, client):
    ex.pipeline.profile_top_n = 2
    client.post(c.PROFILES_PATH, query_string={"workflow": "checkout"}, data=FOLDED, content_type="text/plain")
    assert cpu(ex, "checkout", "render") == pytest.approx(0.5) and cpu(ex, "checkout", "ssl_read") == pytest.approx(0.4)
    assert cpu(ex, "checkout", "charge_card") is None and cpu(ex, "checkout", "other") == pytest.approx(0.1)


@pytest.mark.parametrize("query,body,ctype,status,text", [
    ({}, FOLDED, "text/plain", 400, "workflow query parameter is required"),
    ({"workflow": "w", "format": "svg"}, FOLDED, "text/plain", 400, "format must be folded, pstats, alloc or held"),
    ({"workflow": "w", "sample_rate": "fast"}, FOLDED, "text/plain", 400, "sample_rate must be a number"),
    ({"workflow": "w"}, "main;a x\n", "text/plain", 400, "line 1"),
    ({"workflow": "w"}, b"\xff\xfe", "text/plain", 400, "UTF-8"),
    ({"workflow": "w"}, b"garbage", "application/octet-stream", 400, "not a cProfile pstats dump"),
])
def test_bad_profiles_get_400_and_change_nothing(ex, client, query, body, ctype, status, text):
    r = client.post(c.PROFILES_PATH, query_string=query, data=body, content_type=ctype)
    assert r.status_code == status and text in r.json["error"]["message"]
    assert ex.store.value(c.PROFILES_RECEIVED_TOTAL, {"format": "folded"}) is None


#: A real cProfile dump with four bytes changed by the fuzzer (scripts/fuzz.py): ``marshal.loads`` on it
#: crashed the interpreter (SIGSEGV). The bounded reader refuses it.
CRASHED_MARSHAL = base64.b64decode(
    "+6kD+jsvcm9vdC8ucHllbnYvdmVyc2lvbnMvMy4xMS43L2xpYi9weXRob24zLjExL2pzb24vZW5jb2Rlci5weenNAAAA2gppdGVy"
    "ZW5jb2RlqQXpyAAAAHIGAAAAZ2SODt0muy0/Z2SODt0muy0/e6kDcgIAAADptwAAANoGZW5jb2RlKQRyBgAAAHIGAAAAZ2SODt0m"
    "uy0/Z2SODt0muy0/MKkD+gF+6QAAAAB6MDxtZXRob2QgJ2Rpc2FibGUnIG9mICdfbHNwcm9mLlByb2ZpbGVyJyBvYmplY3RzPqkF"
    "6QEAAAByDgAAAGejSl3Kqhx7PmejSl3Kqhx7PnswqQNyAgAAAHIIAAAAcgkAAACpBXIGAAAAcgYAAABnnuWi76gQIz9nNPaStz3w"
    "Oj97KQP6PC9yb290Ly5weWVudi92ZXJzaW9ucy8zLjExLjcvbGliL3B5dGhvbjMuMTEvanNvbi9fX2luaXRfXy5weXIIAAAA2gVk"
    "dW1wcykEcgYAAAByBgAAAGee5aLvqBAjP2c09pK3PfA6PzCpA3IRAAAAcggAAAByEgAAAKkFcgYAAAByBgAAAGfJdFDYMe0MP2fN"
    "BJ3y440+P3upA/oaL3dvcmsvbWFpbi9zY3JpcHRzL2Z1enoucHlpeQMAACkEcgYAAAByBgAAAGfJdFDYMe0MP2fNBJ3y440+PzCp"
    "A3IWAAAAaXkDAAByFwAAAKkFcg4AAAByDgAAAGePwCI2jSopP2cODFNtzdxHP3swqQNyCwAAAHIMAAAAeiA8bWV0aG9kICdqb2lu"
    "JyBvZiAnc3RyJyBvYmplY3RzPqkFcgYAAAByBgAAAGeG7NBxtDHmPmeG7NBxtDHmPntyBwAAACkEcgYAAAByBgAAAGeG7NBxtDHm"
    "PmeG7NBxtDHmPjCpA3ILAAAAcgwAAAB6JTxidWlsdC1pbiBtZXRob2QgYnVpbHRpbnMuaXNpbnN0YW5jZT6pBWmQAQAAaZABAABn"
    "80y72oKM/T5n80y72oKM/T57cgcAAAApAABpkAEAAGfzTLvagoz9PmfzTLvagoz9PjCpA3ILAAAAcgwAAAB6HjxidWlsdC1pbiBt"
    "ZXRob2QgYnVpbHRpbnMubGVuPqkFcgYAAAByBgAAAGcSE1NwGM/nPmcSE1NwGM/nPntyFQAAACkEcgYAAAByBgAAAGcSE1NwGM/n"
    "PmcSE1NwGM/nPjCpA3ILAAAAcgwAAAB6ITxidWlsdC1pbiBtZXRob2QgYnVpbHRpbnMuc29ydGVkPqkFcgYAAAByBgAAAGd5I6KB"
    "IIwEP2d5I6KBIIwEP3tyFQAAACkEcgYAAAByBgAAAGd5I6KBIIwEP2d5I6KBIIwEPzCpA3ILAAAAcgwAAAB6HjxidWlsdC1pbiBt"
    "ZXRob2QgYnVpbHRpbnMuc3VtPqkFcgYAAAByBgAAAGcIYA2UN2f0PmcIYA2UN2f0PntyFQAAACkEcgYAAAByBgAAAGcIYA2UN2f0"
    "PmcIYA2UN2f0PjAw84Qj1j76KUTtJBcBhZlL1BHD7zXKCBDIK4+Mb2fhzPB+BYcOuubnnEhiHJeNlmDlRiJdG6yoZuHSlvnlqPAo"
    "OaxpHe33PstQDBgNSo6Ts7xDu3V9FjEv1CMaccRfUdVB66dbwufWg+XvjaxNxfQ="
)


@pytest.mark.parametrize("data", [
    CRASHED_MARSHAL,
    b"(" + struct.pack("<i", 2**31 - 1),  # a 2-billion-item tuple in 5 bytes: refused before allocating
    b"{" + b"l" + struct.pack("<i", 2**30) + b"\0\0",  # a 15-billion-bit integer
    b"{" + b"(" * 50 + b"0",  # nesting
    marshal.dumps({("a.py", 1, "f"): (1, 1, 0.5, 0.5, compile("1", "x", "eval"))}),  # a code object
    marshal.dumps({("a.py", 1, "f"): (1, 1, 0.5, 0.5, {})}) + b"junk",
], ids=["fuzzed-segfault", "huge-tuple", "huge-int", "deep", "code-object", "trailing-bytes"])
def test_hostile_pstats_bytes_are_refused_without_marshal(data):
    with pytest.raises(ProfileError):
        parse_pstats(data)


def test_the_bounded_reader_reads_real_dumps_as_marshal_does():
    pr = cProfile.Profile()
    pr.enable()
    sorted(str(i) for i in range(200))
    pr.disable()
    pr.create_stats()
    expected = {}
    for (filename, line, func), (_cc, _nc, tt, _ct, _callers) in pr.stats.items():
        name = func if filename == "~" else f"{func} ({filename.rsplit('/', 1)[-1]}:{line})"
        expected[name[:200]] = expected.get(name[:200], 0.0) + tt
    assert parse_pstats(marshal.dumps(pr.stats)) == expected
