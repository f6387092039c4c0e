"""Issue 12, item 4, in the sans-IO core: what is relayed must be clean.

- Control characters other than HTAB in any header value (a NUL in a display name, `X-Nul:
  a<NUL>b`), escaped or not, are refused with 400 and the reason, in both directions; a response
  carrying one is not relayed.
- RFC 3261 18.1.1 toward a UDP PBX: no datagram larger than pbx.max_udp_size (1472: a
  1500-byte path, IPv4) leaves, whatever it is and with or without rtpengine: a request gets
  513 with a Warning naming the key, a response 502 (a 2xx is also ACKed and BYEd on the other
  leg). A TCP PBX leg has no such limit.
The end-to-end test (real sockets, real SBC) is tests/test_e2e_clean_relay.py.
"""
from __future__ import annotations

import pytest

from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, MediaCall, Send
from teamsbc.sip.message import parse_message

from .test_proxy import PBX_SRC, SDP, TEAMS_SRC, pbx_invite, response_to, teams_invite
from .test_trunk_health import make


def sends_of(out):
    return [(s.to, parse_message(s.data)) for s in out if isinstance(s, Send)]


def kinds(sends):
    return [getattr(m, "method", None) or m.status for _, m in sends]


@pytest.fixture
def proxy(tmp_path):
    return build(make(tmp_path))[1]


@pytest.mark.parametrize("bad", [
    (b"FROM: <sip:+4930123@", b'FROM: "\x00\x00" <sip:+4930123@'),      # NUL display name
    (b"CALL-ID:", b"X-Nul: a\x00b\r\nCALL-ID:"),                         # NUL in a value
    (b"CALL-ID:", b"X-Esc: \x1b[31mred\r\nCALL-ID:"),                     # ESC
    (b"CALL-ID:", b'X-Q: "escaped \\\x00 nul"\r\nCALL-ID:'),             # a quoted-pair NUL
])
def test_control_characters_from_teams_get_400_and_nothing_reaches_the_pbx(proxy, bad):
    out = sends_of(proxy.receive(teams_invite().replace(*bad, 1), TEAMS_SRC, 0.0))
    assert [(d, m.status, m.reason) for d, m in out] == [(TEAMS_SRC, 400, "Control character in header value")]
    assert b"\x00" not in out[0][1].to_bytes() and b"\x1b" not in out[0][1].to_bytes()


def test_control_characters_from_the_pbx_get_400_and_nothing_reaches_teams(proxy):
    out = sends_of(proxy.receive(pbx_invite(extra="X-Nul: a\x00b\r\n"), PBX_SRC, 0.0))
    assert [(d, m.status, m.reason) for d, m in out] == [(PBX_SRC, 400, "Control character in header value")]
    out = sends_of(proxy.receive(pbx_invite(branch="z9hG4bKdel", extra="X-Del: \x7f\r\n"), PBX_SRC, 0.1))
    assert kinds(out) == [400]
    out = sends_of(proxy.receive(pbx_invite(branch="z9hG4bKtab", extra="X-Tab: a\tb\r\n"), PBX_SRC, 0.2))
    assert kinds(out) == [100, "INVITE"] and out[1][1].headers.get("x-tab") == "a\tb"   # HTAB is fine


def test_a_response_with_a_control_character_is_not_relayed(proxy):
    out = proxy.receive(teams_invite(), TEAMS_SRC, 0.0)
    inv = next(s for s in out if s.to.leg == PBX)
    ringing = response_to(inv.data, 180, "Ringing", to_tag="p1").replace(b"Content-Length", b"X-Nul: \x00\r\nContent-Length")
    assert proxy.receive(ringing, PBX_SRC, 0.1) == []
    reason = response_to(inv.data, 180, "Ring\x07ing", to_tag="p1")
    assert proxy.receive(reason, PBX_SRC, 0.1) == []


HUGE = "X-MS-Teams-Huge: " + "h" * 8000 + "\r\n"


def test_a_request_too_large_for_a_udp_pbx_gets_513_with_the_key(proxy):
    big = teams_invite().replace(b"CALL-ID:", HUGE.encode() + b"CALL-ID:", 1)
    out = sends_of(proxy.receive(big, TEAMS_SRC, 0.0))
    assert kinds(out) == [100, 513] and all(d == TEAMS_SRC for d, _ in out)
    warning = out[1][1].headers.get("warning")
    assert "pbx.max_udp_size (1472)" in warning and "bytes exceeds" in warning
    assert proxy.next_events()[-1].status == 513
    assert proxy.t.client == {}                           # nothing went out, nothing waits
    ok = sends_of(proxy.receive(teams_invite("z9hG4bKnext").replace(b"teams-call-1", b"teams-call-2"), TEAMS_SRC, 0.1))
    assert kinds(ok) == [100, "INVITE"] and len(ok[1][1].to_bytes()) <= 1472


def test_the_limit_is_configurable_and_absent_on_a_tcp_pbx_leg(tmp_path):
    big = teams_invite().replace(b"CALL-ID:", HUGE.encode() + b"CALL-ID:", 1)
    tcp = build(make(tmp_path, pbx={"transport": "tcp"}))[1]
    assert kinds(sends_of(tcp.receive(big, TEAMS_SRC, 0.0))) == [100, "INVITE"]
    small = build(make(tmp_path, pbx={"max_udp_size": 600}))[1]
    out = sends_of(small.receive(teams_invite(), TEAMS_SRC, 0.0))
    assert kinds(out) == [100, 513] and "pbx.max_udp_size (600)" in out[1][1].headers.get("warning")


def test_a_response_too_large_for_the_udp_pbx_becomes_502_and_teams_is_acked_and_byed(proxy):
    out = proxy.receive(pbx_invite(), PBX_SRC, 0.0)
    inv = parse_message(next(s for s in out if s.to.leg == TEAMS).data)
    ok = response_to(inv.to_bytes(), 200, "OK", contact="<sip:api-du-a-euwe.pstnhub.microsoft.com:443;transport=tls>",
                     rr=["<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"] + inv.headers.get_all("record-route"),
                     body=SDP).replace(b"Content-Length", HUGE.encode() + b"Content-Length", 1)
    out = sends_of(proxy.receive(ok, TEAMS_SRC, 0.1))
    by = {str(k): (d, m) for (d, m), k in zip(out, kinds(out))}
    assert sorted(by) == ["502", "ACK", "BYE"]
    assert by["502"][0] == PBX_SRC and "pbx.max_udp_size" in by["502"][1].headers.get("warning")
    assert by["ACK"][0].leg == TEAMS and by["BYE"][0].leg == TEAMS


def test_with_rtpengine_the_offer_is_deleted_when_the_request_cannot_go(tmp_path):
    proxy = build(make(tmp_path, media={"rtpengine": ["udp:127.0.0.1:22222"]}))[1]
    big = teams_invite().replace(b"CALL-ID:", HUGE.encode() + b"CALL-ID:", 1)
    [offer] = [o for o in proxy.receive(big, TEAMS_SRC, 0.0) if isinstance(o, MediaCall)]
    out = proxy.media_done(offer.op, {"result": "ok", "sdp": SDP.decode()}, 0.01)
    assert kinds(sends_of(out)) == [513]
    assert [o.command["command"] for o in out if isinstance(o, MediaCall)] == ["delete"]
