"""URIs (RFC 3261 19.1), name-addr / addr-spec (20.10), Via (20.42), parameter and list
splitting helpers."""
from __future__ import annotations

import pytest

from teamsbc.sip.errors import ParseError
from teamsbc.sip.uri import (
    NameAddr, SipUri, Via, format_params, parse_name_addr, parse_params, parse_uri, parse_via,
    split_quoted,
)


def uri_error(text: str) -> ParseError:
    with pytest.raises(ParseError) as ei:
        parse_uri(text)
    return ei.value


# --- parse_uri ------------------------------------------------------------------------
@pytest.mark.parametrize("text,expect", [
    ("sip:sbc.example.com", SipUri("sip", None, "sbc.example.com")),
    ("SIP:Alice@Example.COM", SipUri("sip", "Alice", "Example.COM")),
    ("sips:+14255550123@sbc.example.com:5061;user=phone;transport=TLS",
     SipUri("sips", "+14255550123", "sbc.example.com", 5061, None,
            {"user": "phone", "transport": "TLS"})),
    ("sip:alice:secret@10.0.0.1:5060", SipUri("sip", "alice", "10.0.0.1", 5060, "secret")),
    ("sip:alice:@10.0.0.1", SipUri("sip", "alice", "10.0.0.1", None, "")),
    ("sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr",
     SipUri("sip", None, "sip-du-a-us.pstnhub.microsoft.com", 5061, None,
            {"transport": "tls", "lr": None})),
    ("sip:+1@[2001:db8::1]:5061;transport=tls",
     SipUri("sip", "+1", "[2001:db8::1]", 5061, None, {"transport": "tls"})),
    ("sip:[::ffff:192.0.2.1]", SipUri("sip", None, "[::ffff:192.0.2.1]")),
    ("sip:bob@pbx.example.com?Replaces=a%40b%3Bto-tag%3D1&Require=replaces",
     SipUri("sip", "bob", "pbx.example.com", None, None, {},
            "Replaces=a%40b%3Bto-tag%3D1&Require=replaces")),
    ("sip:bob@pbx.example.com;transport=udp?Subject=hi",
     SipUri("sip", "bob", "pbx.example.com", None, None, {"transport": "udp"}, "Subject=hi")),
    # RFC 4475 3.1.1.9: ";" in the user part; 3.1.1.2: "?" and "," in the user part
    ("sip:user;par=u%40example.net@example.com",
     SipUri("sip", "user;par=u%40example.net", "example.com")),
    ("sip:a?b,c@example.com;p=1?h=2", SipUri("sip", "a?b,c", "example.com", None, None,
                                            {"p": "1"}, "h=2")),
    ("sip:*97#@pbx.example.com", SipUri("sip", "*97#", "pbx.example.com")),
    # "@" must be escaped in URI headers; sloppy Replaces values carry it raw anyway
    ("sip:bob@pbx.example.com?Replaces=abc@10.0.0.1%3Bto-tag%3D1",
     SipUri("sip", "bob", "pbx.example.com", None, None, {}, "Replaces=abc@10.0.0.1%3Bto-tag%3D1")),
    ("sip:host.example.com;maddr=239.255.255.1;ttl=15;method=INVITE",
     SipUri("sip", None, "host.example.com", None, None,
            {"maddr": "239.255.255.1", "ttl": "15", "method": "INVITE"})),
])
def test_parse_uri(text, expect):
    assert parse_uri(text) == expect


@pytest.mark.parametrize("text,status,reason", [
    ("tel:+14255550123", 416, "Unsupported URI scheme 'tel'"),
    ("urn:service:sos", 416, "Unsupported URI scheme 'urn'"),
    ("<sip:a@example.com>", 400, "Bad URI scheme '<sip'"),
    ("1sip:a@example.com", 400, "Bad URI scheme '1sip'"),
    ("sip", 400, "Bad URI 'sip'"),
    (":a@example.com", 400, "Bad URI ':a@example.com'"),
    ("sip:a b@example.com", 400, "Whitespace or delimiter inside URI"),
    ('sip:"a"@example.com', 400, "Whitespace or delimiter inside URI"),
    ("sip:@example.com", 400, "Empty user part in URI"),
    ("sip::pw@example.com", 400, "Empty user part in URI"),
    ("sip:", 400, "Bad host in URI ''"),
    ("sip:a@", 400, "Bad host in URI ''"),
    ("sip:a@exa_mple.com", 400, "Bad host in URI 'exa_mple.com'"),
    ("sip:a@example.com:", 400, "Bad host in URI 'example.com:'"),
    ("sip:a@example.com:0", 400, "Bad port 0 in URI"),
    ("sip:a@example.com:65536", 400, "Bad port 65536 in URI"),
    ("sip:a@example.com:123456", 400, "Bad host in URI 'example.com:123456'"),
    ("sip:a@example.com:٥٠٦٠", 400, "Bad host in URI 'example.com:٥٠٦٠'"),
    ("sip:a@[2001:db8::1", 400, "Bad host in URI '[2001:db8::1'"),
    ("sip:a@[2001:db8:::1]", 400, "Bad IPv6 reference '[2001:db8:::1]'"),
    ("sip:a@[1.2.3.4]", 400, "Bad IPv6 reference '[1.2.3.4]'"),
    ("sip:a@example.com;=x", 400, "Empty parameter name"),
])
def test_parse_uri_errors(text, status, reason):
    err = uri_error(text)
    assert (err.status, err.reason) == (status, reason)


def test_uri_str_round_trip_and_helpers():
    text = "sip:+1:pw@[2001:DB8::1]:5061;transport=TLS;lr?X=1"
    u = parse_uri(text)
    assert str(u) == "sip:+1:pw@[2001:DB8::1]:5061;transport=TLS;lr?X=1"
    assert (u.transport, u.host_bare) == ("tls", "2001:db8::1")
    c = u.copy()
    c.params["maddr"] = "10.0.0.1"
    assert "maddr" not in u.params
    assert str(c) == "sip:+1:pw@[2001:DB8::1]:5061;transport=TLS;lr;maddr=10.0.0.1?X=1"


def test_uri_without_transport():
    assert parse_uri("sip:a@example.com").transport is None


# --- parse_params / format_params / split_quoted ---------------------------------------
@pytest.mark.parametrize("text,expect", [
    ("a=b;c;D=E", {"a": "b", "c": None, "d": "E"}),
    (" tag = 1918181833n ", {"tag": "1918181833n"}),
    (";;;lr;;", {"lr": None}),
    ("x=", {"x": ""}),
    ('+sip.instance="<urn:uuid:0001;x=1>";reg-id=1',
     {"+sip.instance": '"<urn:uuid:0001;x=1>"', "reg-id": "1"}),
    ('q="a\\";b";z', {"q": '"a\\";b"', "z": None}),
])
def test_parse_params(text, expect):
    assert parse_params(text) == expect


def test_parse_params_errors():
    with pytest.raises(ParseError) as ei:
        parse_params("a;=b")
    assert ei.value.reason == "Empty parameter name"
    with pytest.raises(ParseError) as ei:
        parse_params('a="b;c')
    assert ei.value.reason == "Unterminated quoted string"


def test_format_params():
    assert format_params({"lr": None, "transport": "tls", "x": ""}) == ";lr;transport=tls;x="


@pytest.mark.parametrize("text,expect", [
    ("a, b,c", ["a", " b", "c"]),
    ("no separator", ["no separator"]),
    ('"Doe, John" <sip:j@x>, <sip:k@y>', ['"Doe, John" <sip:j@x>', " <sip:k@y>"]),
    ('"a \\", b" <sip:j@x>, c', ['"a \\", b" <sip:j@x>', " c"]),
    ("<sip:a@x;p=1,2>, <sip:b@y>", ["<sip:a@x;p=1,2>", " <sip:b@y>"]),
    (",", ["", ""]),
])
def test_split_quoted(text, expect):
    assert split_quoted(text, ",") == expect


@pytest.mark.parametrize("text", ['"abc, def', '"abc\\", d', '"a\\, b'])
def test_split_quoted_unterminated(text):
    with pytest.raises(ParseError) as ei:
        split_quoted(text, ",")
    assert (ei.value.status, ei.value.reason) == (400, "Unterminated quoted string")


def test_split_quoted_without_separator_returns_the_text_unchanged():
    # fast path: nothing to split, nothing checked (the value's own parser judges quotes)
    assert split_quoted('"open', ",") == ['"open']


# --- parse_name_addr -------------------------------------------------------------------
@pytest.mark.parametrize("text,expect", [
    ("<sip:a@example.com>", NameAddr("sip:a@example.com")),
    ("  <sip:a@example.com>;tag=1  ", NameAddr("sip:a@example.com", None, {"tag": "1"})),
    ('"Alice" <sip:a@example.com>;tag=1', NameAddr("sip:a@example.com", '"Alice"', {"tag": "1"})),
    ('"A \\"B\\" C"<sip:a@example.com>', NameAddr("sip:a@example.com", '"A \\"B\\" C"')),
    ('"<sip:fake@x>, ;tag=9" <sip:a@example.com>',
     NameAddr("sip:a@example.com", '"<sip:fake@x>, ;tag=9"')),
    ("Alice Smith <sip:a@example.com>", NameAddr("sip:a@example.com", "Alice Smith")),
    ("caller<sip:caller@example.com>;tag=323",
     NameAddr("sip:caller@example.com", "caller", {"tag": "323"})),
    ("sip:a@example.com;tag=1;user=phone",
     NameAddr("sip:a@example.com", None, {"tag": "1", "user": "phone"})),
    ("sip:a@example.com ; tag = 1", NameAddr("sip:a@example.com", None, {"tag": "1"})),
    ("tel:+14255550123;tag=x", NameAddr("tel:+14255550123", None, {"tag": "x"})),
    ('sip:a@example.com;+sip.instance="<urn:uuid:1>";expires=60',
     NameAddr("sip:a@example.com", None, {"+sip.instance": '"<urn:uuid:1>"', "expires": "60"})),
    ("<sip:a@example.com;lr?Route=%3Csip:x%3E>",
     NameAddr("sip:a@example.com;lr?Route=%3Csip:x%3E")),
])
def test_parse_name_addr(text, expect):
    assert parse_name_addr(text) == expect


@pytest.mark.parametrize("text,reason", [
    ("", "Empty address"),
    ("   ", "Empty address"),
    ('"open <sip:a@example.com>', "Unterminated quoted display name"),
    ('"a" b <sip:a@example.com>', "Display name without <URI>"),
    ('"a"', "Display name without <URI>"),
    ("Bell, Alexander <sip:a@example.com>", "Non-token characters in display name"),
    ("A (B) <sip:a@example.com>", "Non-token characters in display name"),
    ("<sip:a@example.com", "Unterminated <URI>"),
    ("< sip:a@example.com>", "Whitespace inside <URI>"),
    ("<sip:a@example.com >", "Whitespace inside <URI>"),
    ("<sip:a@example.com> junk", "Garbage after <URI>"),
    ("sip:a@example.com?Route=x", "URI with headers or commas must be enclosed in <>"),
    ("sip:a,b@example.com", "URI with headers or commas must be enclosed in <>"),
    ("<>", "Bad URI in address ''"),
    ("<noscheme>", "Bad URI in address 'noscheme'"),
    ("<sip:a b@example.com>", "Bad URI in address 'sip:a b@example.com'"),
    ("foo:bar <sip:a@example.com>", "Bad URI in address 'foo:bar <sip:a@example.com>'"),
])
def test_parse_name_addr_errors(text, reason):
    with pytest.raises(ParseError) as ei:
        parse_name_addr(text)
    assert (ei.value.status, ei.value.reason) == (400, reason)


def test_name_addr_str_and_helpers():
    na = parse_name_addr('"Teams" <sip:+1@sip.pstnhub.microsoft.com;user=phone> ;tag=ab;x')
    assert na.tag == "ab"
    assert str(na) == '"Teams" <sip:+1@sip.pstnhub.microsoft.com;user=phone>;tag=ab;x'
    assert na.sip_uri().params == {"user": "phone"}
    assert str(parse_name_addr("sip:a@example.com;tag=1")) == "<sip:a@example.com>;tag=1"
    assert parse_name_addr("<sip:a@example.com>;tag").tag is None


# --- parse_via --------------------------------------------------------------------------
@pytest.mark.parametrize("text,expect", [
    ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
     Via("UDP", "192.0.2.1", 5060, {"branch": "z9hG4bK776asdhds"})),
    ("SIP/2.0/tls sbc.example.com;branch=z9hG4bK1;rport;received=52.114.148.0",
     Via("TLS", "sbc.example.com", None,
         {"branch": "z9hG4bK1", "rport": None, "received": "52.114.148.0"})),
    ("sip / 2.0 / TCP  host.example.com : 5070 ; branch = z9hG4bKx",
     Via("TCP", "host.example.com", 5070, {"branch": "z9hG4bKx"})),
    ("SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKv6",
     Via("TLS", "[2001:db8::1]", 5061, {"branch": "z9hG4bKv6"})),
    ("SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKws",
     Via("WSS", "df7jal23ls0d.invalid", None, {"branch": "z9hG4bKws"})),
])
def test_parse_via(text, expect):
    assert parse_via(text) == expect


@pytest.mark.parametrize("text,status,reason", [
    ("SIP/2.0/UDP", 400, "Malformed Via"),
    ("SIP/2.0 UDP host", 400, "Malformed Via"),
    ("SIP/2.0/UDP host extra", 400, "Malformed Via"),
    ("SIP/2.0/UDP host:", 400, "Malformed Via"),
    ("SIP/2.0/UDP host:123456", 400, "Malformed Via"),
    ("SIP/2.0/UDP host:٥٠٦٠", 400, "Malformed Via"),
    ("SIP/2.0/UDP host:0", 400, "Bad Via port"),
    ("SIP/2.0/UDP host:70000", 400, "Bad Via port"),
    ("SIP/7.0/UDP host", 505, "Unsupported Via protocol"),
    ("HTTP/1.1/TCP host", 400, "Unsupported Via protocol"),
    ("SIP/2.0/UDP [::1::2]", 400, "Bad IPv6 reference '[::1::2]'"),
    ("SIP/2.0/UDP host;=1", 400, "Empty parameter name"),
    ("", 400, "Malformed Via"),
])
def test_parse_via_errors(text, status, reason):
    with pytest.raises(ParseError) as ei:
        parse_via(text)
    assert (ei.value.status, ei.value.reason) == (status, reason)


def test_via_str_and_sent_by():
    v = parse_via("SIP/2.0/tcp Host.Example.com:5060;branch=z9hG4bKa;received=10.0.0.1")
    assert str(v) == "SIP/2.0/TCP Host.Example.com:5060;branch=z9hG4bKa;received=10.0.0.1"
    assert (v.sent_by, v.branch) == (("host.example.com", 5060), "z9hG4bKa")
    assert str(parse_via("SIP/2.0/UDP h")) == "SIP/2.0/UDP h"


def test_parse_error_reason_is_bounded_and_single_line():
    err = ParseError("bad\r\nInjected: yes" + "x" * 500)
    assert err.reason == "bad  Injected: yes" + "x" * 102
    assert (len(err.reason), err.status, str(err)[:3]) == (120, 400, "bad")


# ---------------------------------------------------------------- split_quoted fast path
from hypothesis import given, settings, strategies as st  # noqa: E402

def _split_quoted_slow(text: str, sep: str) -> list[str]:
    """The plain character-by-character scanner split_quoted replaced: the oracle."""
    if sep not in text:
        return [text]
    out, start, in_q, in_a, i, n = [], 0, False, False, 0, len(text)
    while i < n:
        c = text[i]
        if in_q:
            if c == "\\":
                i += 1
            elif c == '"':
                in_q = False
        elif c == '"':
            in_q = True
        elif c == "<":
            in_a = True
        elif c == ">":
            in_a = False
        elif c == sep and not in_a:
            out.append(text[start:i])
            start = i + 1
        i += 1
    if in_q:
        raise ParseError("Unterminated quoted string")  # RFC 4475 3.1.2.6
    out.append(text[start:])
    return out


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet='ab,;<>"\\ ', max_size=40), st.sampled_from([",", ";"]))
def test_split_quoted_agrees_with_the_reference_scanner(text, sep):
    """The regex-driven split_quoted (hot path) behaves exactly like the plain scanner."""
    from teamsbc.sip.uri import split_quoted
    try:
        expected = _split_quoted_slow(text, sep)
    except ParseError:
        with pytest.raises(ParseError):
            split_quoted(text, sep)
        return
    assert split_quoted(text, sep) == expected
