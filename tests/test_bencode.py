"""Bencode as rtpengine's NG protocol uses it (teamsbc.media.bencode)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from teamsbc.media.bencode import MAX_DEPTH, BencodeError, decode, decode_prefix, encode, to_str_keys


@pytest.mark.parametrize("value, wire", [
    (0, b"i0e"),
    (-42, b"i-42e"),
    (2**70, b"i1180591620717411303424e"),
    (b"", b"0:"),
    (b"spam", b"4:spam"),
    ("é", b"2:\xc3\xa9"),                       # str -> UTF-8
    ([], b"le"),
    ([b"a", 1, [b"b"]], b"l1:ai1el1:bee"),
    ((b"t", b"u"), b"l1:t1:ue"),                 # tuple like list
    ({}, b"de"),
    ({"command": "ping"}, b"d7:command4:pinge"),
    ({"zz": 1, "a": 2, b"m": 3}, b"d1:ai2e1:mi3e2:zzi1ee"),   # keys sorted on encode
])
def test_encode(value, wire):
    assert encode(value) == wire


def test_ng_offer_round_trip():
    cmd = {"command": "offer", "call-id": "abc@host", "from-tag": "t1",
           "flags": ["trust-address", "port-latching"], "replace": ["origin"],
           "codec": {"strip": ["all"], "except": ["PCMA", "telephone-event"]},
           "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"}
    assert to_str_keys(decode(encode(cmd))) == cmd


def test_decode_accepts_unsorted_keys():
    # rtpengine does not sort the keys of its replies
    assert decode(b"d6:result2:ok3:sdp3:v=0e") == {b"result": b"ok", b"sdp": b"v=0"}
    assert decode(b"d3:sdp3:v=06:result2:oke") == {b"result": b"ok", b"sdp": b"v=0"}


def test_to_str_keys_leaves_non_utf8_bytes():
    assert to_str_keys({b"k": [b"\xff", b"ok", 3]}) == {"k": [b"\xff", "ok", 3]}


@pytest.mark.parametrize("value", [1.5, None, True, {1: b"x"}, object(), {"a": 1, b"a": 2}])
def test_encode_refuses(value):
    with pytest.raises(BencodeError):
        encode(value)


@pytest.mark.parametrize("wire, why", [
    (b"", "unexpected end"),
    (b"i12", "unterminated integer"),
    (b"ie", "bad integer"),
    (b"i-e", "bad integer"),
    (b"i-0e", "non-canonical"),
    (b"i03e", "non-canonical"),
    (b"i1.5e", "bad integer"),
    (b"i 1e", "bad integer"),
    (b"5:abc", "runs past the end"),
    (b"05:abcde", "non-canonical string length"),
    (b"3abc", "without ':'"),
    (b"-1:a", "unexpected byte"),
    (b"l1:a", "unterminated list"),
    (b"d1:a", "unexpected end"),
    (b"d1:ai1e", "unterminated dict"),
    (b"di1ei2ee", "dict key is not a string"),
    (b"d1:ai1e1:ai2ee", "duplicate dict key"),
    (b"x", "unexpected byte"),
    (b"i1ei2e", "trailing data"),
    (b"4:spamX", "trailing data"),
])
def test_decode_errors(wire, why):
    with pytest.raises(BencodeError) as info:
        decode(wire)
    assert why in str(info.value)


def test_nesting_is_bounded():
    ok = b"l" * MAX_DEPTH + b"e" * MAX_DEPTH
    assert decode(ok) is not None
    with pytest.raises(BencodeError, match="nesting"):
        decode(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))
    with pytest.raises(BencodeError, match="nesting"):
        decode(b"l" * 100_000)  # no RecursionError
    deep: list = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(BencodeError, match="nesting"):
        encode(deep)


def test_decode_prefix_and_offsets():
    value, end = decode_prefix(b"d1:ai1ee REST", 0)
    assert value == {b"a": 1} and end == 8
    with pytest.raises(BencodeError) as info:
        decode(b"l1:ai1exe")
    assert info.value.offset == 7


def test_decode_refuses_non_bytes():
    with pytest.raises(BencodeError):
        decode("d1:ai1ee")  # type: ignore[arg-type]


_values = st.recursive(
    st.integers() | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.binary(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(_values)
def test_round_trip_property(value):
    assert decode(encode(value)) == value


@given(st.binary(max_size=64))
def test_garbage_only_ever_raises_bencode_error(data):
    try:
        decode(data)
    except BencodeError:
        pass
