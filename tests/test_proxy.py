"""The proxy pipeline, sans-IO: bytes in, Send out, a float for a clock.

These assert the header rewriting each side receives; tests/test_e2e_*.py do the same
through real sockets with sipp and TLS.
"""
from __future__ import annotations

import pytest

from teamsbc import config as cfg
from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, Destination, Source
from teamsbc.sip.message import parse_message
from teamsbc.keyfile import keyring
from teamsbc.teams import X_MS_SBC, TeamsIdentity

PBX_ADDR = ("10.0.0.10", 5060)
TEAMS_ADDR = ("52.114.14.70", 41234)


@pytest.fixture
def conf(tmp_path):
    for n in ("c.pem", "k.pem"):
        (tmp_path / n).write_text("x")
    return cfg.from_dict({
        "sbc": {"fqdn": "sbc.example.com"},
        "teams": {"listen": "0.0.0.0:5061", "certificate": "c.pem", "private_key": "k.pem"},
        "pbx": {"listen": "10.0.0.5:5060", "transport": "udp", "address": "10.0.0.10:5060"},
        "numbers": {"country_code": "44"},
    }, base=tmp_path)


@pytest.fixture
def proxy(conf):
    return build(conf)[1]


PBX_SRC = Source(PBX, "udp", PBX_ADDR)
TEAMS_SRC = Source(TEAMS, "tls", TEAMS_ADDR, conn=object())

SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.10\r\ns=-\r\nc=IN IP4 10.0.0.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def pbx_invite(branch="z9hG4bKpbx1", extra=""):
    return (f"INVITE sip:02071234567@10.0.0.5:5060 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 10.0.0.10:5060;branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: \"Alice\" <sip:02079460000@10.0.0.10>;tag=pbxtag\r\n"
            f"To: <sip:02071234567@10.0.0.5>\r\n"
            f"Call-ID: call-1@10.0.0.10\r\n"
            f"CSeq: 1 INVITE\r\n"
            f"Contact: <sip:1000@10.0.0.10:5060>\r\n"
            f"Allow: INVITE, ACK, BYE, CANCEL, REFER, OPTIONS\r\n"
            f"Supported: replaces, timer\r\n{extra}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def only(sends):
    assert len(sends) == 1, sends
    return sends[0], parse_message(sends[0].data)


def response_to(req_bytes, status, reason, *, to_tag="teamstag", contact=None, rr=None, body=b""):
    req = parse_message(req_bytes)
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {v}" for v in req.headers.get_all("via")]
    if rr is not None:
        lines += [f"Record-Route: {r}" for r in rr]
    to = req.headers.get("to")
    if status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [f"From: {req.headers.get('from')}", f"To: {to}", f"Call-ID: {req.call_id}",
              f"CSeq: {req.headers.get('cseq')}"]
    if contact:
        lines.append(f"Contact: {contact}")
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def test_pbx_to_teams_invite_headers(proxy, conf):
    sends = proxy.receive(pbx_invite(), PBX_SRC, 0.0)
    assert len(sends) == 2
    trying = parse_message(sends[0].data)
    assert trying.status == 100 and sends[0].to == PBX_SRC
    out = sends[1]
    assert out.to == Destination(TEAMS, "tls", "sip.pstnhub.microsoft.com", 5061)
    inv = parse_message(out.data)
    assert inv.uri == "sip:+442071234567@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls"
    h = inv.headers
    assert h.get_all("record-route") == [
        "<sip:sbc.example.com:5061;transport=tls;lr;r2=on>",
        "<sip:10.0.0.5:5060;lr;r2=on>",
    ]
    top_via = inv.top_via
    assert (top_via.transport, top_via.host, top_via.port) == ("TLS", "sbc.example.com", 5061)
    assert h.get_all("via")[1] == "SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKpbx1;rport=5060"
    contact = h.get("contact")
    assert contact.startswith("<sip:1000@sbc.example.com:5061;transport=tls;x-tsbc-c=")
    enc = contact.split("x-tsbc-c=")[1].rstrip(">")
    assert "10.0.0.10" not in contact  # sealed: Teams cannot read the PBX's address
    assert TeamsIdentity(conf, keyring(conf.sbc)).open_contact(enc) == "sip:1000@10.0.0.10:5060"
    assert h.get("x-ms-sbc") == X_MS_SBC
    assert "REFER" not in h.get("allow")
    assert h.get("supported") == "timer"
    assert h.get("from") == '"Alice" <sip:+442079460000@sbc.example.com;user=phone>;tag=pbxtag'
    assert h.get("to") == "<sip:+442071234567@sip.pstnhub.microsoft.com;user=phone>"
    assert h.get("max-forwards") == "69"
    assert inv.body == SDP


def test_teams_answer_goes_back_to_pbx_and_acks_route(proxy):
    sends = proxy.receive(pbx_invite(), PBX_SRC, 0.0)
    inv_out = sends[1].data
    teams_rr = ["<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"]
    inv = parse_message(inv_out)
    rr = teams_rr + inv.headers.get_all("record-route")
    ok = response_to(inv_out, 200, "OK", contact="<sip:api-du-a-euwe.pstnhub.microsoft.com:443;x-i=abc;transport=tls>", rr=rr, body=SDP)
    s, resp = only(proxy.receive(ok, Source(TEAMS, "tls", ("127.0.0.1", 5061), conn=object()), 0.1))
    assert s.to == PBX_SRC
    assert resp.status == 200
    assert resp.headers.get_all("via") == ["SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKpbx1;rport=5060"]
    assert resp.headers.get_all("record-route") == rr  # untouched on the way back
    # PBX sends ACK along the route set it learned: reversed Record-Route
    ack = ("ACK sip:api-du-a-euwe.pstnhub.microsoft.com:443;x-i=abc;transport=tls SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKack1;rport\r\n"
           "Route: <sip:10.0.0.5:5060;lr;r2=on>, <sip:sbc.example.com:5061;transport=tls;lr;r2=on>, "
           "<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:02079460000@10.0.0.10>;tag=pbxtag\r\n"
           "To: <sip:02071234567@10.0.0.5>;tag=teamstag\r\nCall-ID: call-1@10.0.0.10\r\n"
           "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()
    s, fwd = only(proxy.receive(ack, PBX_SRC, 0.2))
    assert s.to == Destination(TEAMS, "tls", "sip-du-a-eu.pstnhub.microsoft.com", 5061)
    assert fwd.headers.get_all("route") == ["<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"]
    assert fwd.top_via.host == "sbc.example.com"


def test_teams_bye_reaches_pbx_contact_without_state(conf):
    """A fresh proxy (as after a restart) routes Teams' BYE by the Contact we encoded."""
    first = build(conf)[1]
    inv_out = first.receive(pbx_invite(), PBX_SRC, 0.0)[1].data
    our_contact = parse_message(inv_out).headers.get("contact")
    ruri = our_contact.strip("<>")
    restarted = build(conf)[1]
    bye = (f"BYE {ruri} SIP/2.0\r\n"
           "VIA: SIP/2.0/TLS sip-du-a-eu.pstnhub.microsoft.com:5061;branch=z9hG4bKteamsbye\r\n"
           "ROUTE: <sip:sbc.example.com:5061;transport=tls;lr;r2=on>\r\n"
           "ROUTE: <sip:10.0.0.5:5060;lr;r2=on>\r\n"
           "MAX-FORWARDS: 70\r\nFROM: <sip:+442071234567@sip.pstnhub.microsoft.com>;tag=teamstag\r\n"
           "TO: <sip:+441000@sbc.example.com>;tag=pbxtag\r\nCALL-ID: call-1@10.0.0.10\r\n"
           "CSEQ: 2 BYE\r\nCONTENT-LENGTH: 0\r\n\r\n").encode()
    s, fwd = only(restarted.receive(bye, TEAMS_SRC, 0.0))
    assert s.to == Destination(PBX, "udp", "10.0.0.10", 5060)
    assert fwd.uri == "sip:1000@10.0.0.10:5060"  # the PBX contact, restored from our Contact
    assert fwd.headers.get("route") is None
    assert fwd.top_via.host == "10.0.0.5" and fwd.top_via.transport == "UDP"
    ok = response_to(s.data, 200, "OK")
    s2, up = only(restarted.receive(ok, PBX_SRC, 0.1))
    assert s2.to == TEAMS_SRC and up.status == 200
    assert up.headers.get("x-ms-sbc") == X_MS_SBC


def teams_invite(branch="z9hG4bKteams1"):
    return ("INVITE sip:+15551230000@sbc.example.com:5061;user=phone;transport=tls SIP/2.0\r\n"
            f"VIA: SIP/2.0/TLS 52.114.14.70:5061;branch={branch}\r\n"
            "RECORD-ROUTE: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
            "MAX-FORWARDS: 69\r\n"
            "FROM: <sip:+4930123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=t1\r\n"
            "TO: <sip:+15551230000@sbc.example.com:5061;user=phone>\r\n"
            "CALL-ID: teams-call-1\r\nCSEQ: 1 INVITE\r\n"
            "CONTACT: <sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=z;transport=tls>\r\n"
            f"CONTENT-TYPE: application/sdp\r\nCONTENT-LENGTH: {len(SDP)}\r\n\r\n").encode() + SDP


def test_teams_to_pbx_invite_and_answer(proxy):
    sends = proxy.receive(teams_invite(), TEAMS_SRC, 0.0)
    assert parse_message(sends[0].data).status == 100
    assert parse_message(sends[0].data).headers.get("x-ms-sbc") == X_MS_SBC
    s = sends[1]
    assert s.to == Destination(PBX, "udp", "10.0.0.10", 5060)
    inv = parse_message(s.data)
    assert inv.uri == "sip:+15551230000@10.0.0.10:5060;user=phone"
    assert inv.headers.get_all("record-route") == [
        "<sip:10.0.0.5:5060;lr;r2=on>",
        "<sip:sbc.example.com:5061;transport=tls;lr;r2=on>",
        "<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>",
    ]
    assert inv.top_via.host == "10.0.0.5" and inv.top_via.transport == "UDP"
    assert inv.headers.get("x-ms-sbc") is None
    ringing = response_to(s.data, 180, "Ringing", to_tag="pbx9", contact="<sip:+15551230000@10.0.0.10:5060>",
                          rr=inv.headers.get_all("record-route"))
    s2, r = only(proxy.receive(ringing, PBX_SRC, 0.1))
    assert s2.to == TEAMS_SRC and r.status == 180
    assert r.headers.get("contact").startswith("<sip:+15551230000@sbc.example.com:5061;transport=tls;x-tsbc-c=")
    assert r.headers.get("x-ms-sbc") == X_MS_SBC


def test_failover_on_transport_failure_then_503_and_never_after_603(proxy):
    sends = proxy.receive(pbx_invite(), PBX_SRC, 0.0)
    first = sends[1]
    assert first.to.host == "sip.pstnhub.microsoft.com"
    s2, inv2 = only(proxy.transport_failed(first.token, 0.01))
    assert s2.to.host == "sip2.pstnhub.microsoft.com"
    assert inv2.uri.startswith("sip:+442071234567@sip2.pstnhub.microsoft.com")
    out = proxy.receive(response_to(s2.data, 503, "Service Unavailable"), TEAMS_SRC, 0.02)
    # the 503 from sip2 is ACKed hop-by-hop and sip3 is tried
    by_kind = {parse_message(s.data).method: s for s in out}
    assert sorted(by_kind) == ["ACK", "INVITE"]
    assert by_kind["ACK"].to.host == "sip2.pstnhub.microsoft.com"
    assert by_kind["INVITE"].to.host == "sip3.pstnhub.microsoft.com"
    out = proxy.receive(response_to(by_kind["INVITE"].data, 603, "Decline"), TEAMS_SRC, 0.03)
    by_kind = {getattr(m, "method", None) or m.status: s for s in out for m in [parse_message(s.data)]}
    assert sorted(by_kind, key=str) == [603, "ACK"]
    assert by_kind[603].to == PBX_SRC


def test_failover_on_silence_after_invite_timeout(proxy):
    sends = proxy.receive(pbx_invite(), PBX_SRC, 0.0)
    assert proxy.next_timer() == pytest.approx(4.0)
    s, inv = only(proxy.handle_timer(4.0))
    assert s.to.host == "sip2.pstnhub.microsoft.com"


def test_all_teams_proxies_down_gives_503_to_pbx(proxy):
    s = proxy.receive(pbx_invite(), PBX_SRC, 0.0)[1]
    s = only(proxy.transport_failed(s.token, 0.0))[0]
    s = only(proxy.transport_failed(s.token, 0.0))[0]
    s, resp = only(proxy.transport_failed(s.token, 0.0))
    assert s.to == PBX_SRC and resp.status == 503


def test_cancel_before_answer(proxy):
    sends = proxy.receive(pbx_invite(), PBX_SRC, 0.0)
    inv_out = sends[1]
    proxy.receive(response_to(inv_out.data, 180, "Ringing"), TEAMS_SRC, 0.1)
    cancel = ("CANCEL sip:02071234567@10.0.0.5:5060 SIP/2.0\r\n"
              "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKpbx1;rport\r\n"
              "Max-Forwards: 70\r\nFrom: \"Alice\" <sip:02079460000@10.0.0.10>;tag=pbxtag\r\n"
              "To: <sip:02071234567@10.0.0.5>\r\nCall-ID: call-1@10.0.0.10\r\n"
              "CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n").encode()
    out = proxy.receive(cancel, PBX_SRC, 0.2)
    kinds = [(s.to, parse_message(s.data)) for s in out]
    assert kinds[0][0] == PBX_SRC and kinds[0][1].status == 200
    c = kinds[1][1]
    assert c.method == "CANCEL" and kinds[1][0] == inv_out.to
    assert c.top_via.branch == parse_message(inv_out.data).top_via.branch
    out = proxy.receive(response_to(inv_out.data, 487, "Request Terminated"), TEAMS_SRC, 0.3)
    kinds = sorted(str(getattr(k, "method", None) or k.status) for k in map(parse_message, [s.data for s in out]))
    assert kinds == ["487", "ACK"]


def test_requests_from_unknown_sources_are_dropped_silently(proxy):
    # security.unknown_source defaults to drop: scanners learn nothing (403 is a policy option)
    assert proxy.receive(pbx_invite(), Source(PBX, "udp", ("192.0.2.66", 5060)), 0.0) == []


def test_in_dialog_from_pbx_toward_non_teams_host_is_refused(proxy):
    bye = ("BYE sip:victim@198.51.100.7 SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKrelay\r\n"
           "Route: <sip:10.0.0.5:5060;lr;r2=on>, <sip:sbc.example.com:5061;transport=tls;lr;r2=on>\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:1@10.0.0.10>;tag=a\r\nTo: <sip:2@x>;tag=b\r\n"
           "Call-ID: relay\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    s, resp = only(proxy.receive(bye, PBX_SRC, 0.0))
    assert resp.status == 403


def test_max_forwards_zero_and_loop(proxy):
    s, resp = only(proxy.receive(pbx_invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), PBX_SRC, 0.0))
    assert resp.status == 483
    inv_out = proxy.receive(pbx_invite("z9hG4bKloop"), PBX_SRC, 1.0)[1].data
    # the same request coming back with our Via in it is a loop
    looped = parse_message(inv_out)
    looped.uri = "sip:02071234567@10.0.0.5:5060"
    looped.headers.set("from", "\"Alice\" <sip:02079460000@10.0.0.10>;tag=pbxtag")
    looped.headers.set("to", "<sip:02071234567@10.0.0.5>")
    looped.headers.add_first("via", "SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKagain")
    out = proxy.receive(looped.to_bytes(), PBX_SRC, 1.1)
    assert parse_message(out[-1].data).status == 482


def test_options_answered_locally_never_forwarded(proxy):
    opt = ("OPTIONS sip:sbc.example.com:5061;transport=tls SIP/2.0\r\n"
           "Via: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bKopt\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:sip.pstnhub.microsoft.com>;tag=o1\r\n"
           "To: <sip:sbc.example.com>\r\nCall-ID: opt1\r\nCSeq: 1 OPTIONS\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    s, resp = only(proxy.receive(opt, TEAMS_SRC, 0.0))
    assert resp.status == 200 and s.to == TEAMS_SRC
    assert resp.headers.get("contact") == "<sip:sbc.example.com:5061;transport=tls>"
    assert resp.headers.get("x-ms-sbc") == X_MS_SBC


def test_garbage_gets_400_when_answerable_and_nothing_otherwise(proxy):
    bad = pbx_invite().replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    s, resp = only(proxy.receive(bad, PBX_SRC, 0.0))
    assert (resp.status, resp.reason) == (400, "CSeq method does not match request method")
    assert proxy.receive(b"\x00\xffnot sip at all", PBX_SRC, 0.0) == []


def test_udp_retransmission_absorbed_and_100_resent(proxy):
    first = proxy.receive(pbx_invite(), PBX_SRC, 0.0)
    again = proxy.receive(pbx_invite(), PBX_SRC, 0.5)
    assert len(first) == 2
    s, r = only(again)
    assert r.status == 100 and s.to == PBX_SRC


@pytest.mark.parametrize("user,cc,expected", [
    ("+442071234567", None, "+442071234567"),
    ("00442071234567", None, "+442071234567"),
    ("02071234567", "44", "+442071234567"),
    ("02071234567", None, None),          # national number, no country code configured
    ("442071234567", None, "+442071234567"),
    ("+44 (20) 7123-4567", None, "+442071234567"),
    ("alice", "44", None),
    ("+12", None, None),
])
def test_e164_rules(user, cc, expected):
    from teamsbc.trunk_settings import NumbersSection
    from teamsbc.teams import to_e164
    assert to_e164(user, NumbersSection(country_code=cc)) == expected
