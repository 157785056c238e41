import cProfile
import marshal

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
    ({"workflow": "w", "format": "svg"}, FOLDED, "text/plain", 400, "format must be folded or pstats"),
    ({"workflow": "w", "sample_rate": "fast"}, FOLDED, "text/plain", 400, "sample_rate must be a number"),
    ({"workflow": "w"}, "main;a x\n", "text/plain", 400, "line 1"),
    ({"workflow": "w"}, b"\xff\xfe", "text/plain", 400, "UTF-8"),
    ({"workflow": "w"}, b"garbage", "application/octet-stream", 400, "not a cProfile pstats dump"),
])
def test_bad_profiles_get_400_and_change_nothing(ex, client, query, body, ctype, status, text):
    r = client.post(c.PROFILES_PATH, query_string=query, data=body, content_type=ctype)
    assert r.status_code == status and text in r.json["error"]["message"]
    assert ex.store.value(c.PROFILES_RECEIVED_TOTAL, {"format": "folded"}) is None
