"""Issue 16 in the sans-IO core: transfers by REFER, reliable provisionals (pbx.prack) both ways,
ringback (pbx.early_media), delayed offer with rtpengine, UPDATE and INFO from the PBX. Bytes
in, Send/MediaCall out, a float for a clock; rtpengine's replies are fed by hand (the real
peers run in tests/test_e2e_pbx_interop.py and tests/test_e2e_transfer.py)."""
from __future__ import annotations

import re

import pytest

from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, Destination, MediaCall, Send
from teamsbc.early_media import RINGBACK, Action, Heard, Kind, toward_pbx
from teamsbc.pbx_requests import dtmf_of
from teamsbc.reliable import CSeqShift
from teamsbc.settings import ConfigError
from teamsbc.sip.message import parse_message
from teamsbc.transfer import TransferBook, refused_target
from teamsbc.sip.uri import parse_uri

from .test_proxy import PBX_SRC, SDP, TEAMS_SRC, pbx_invite, response_to, teams_invite
from .test_trunk_health import make

MRI_URI = ("sip:sip.pstnhub.microsoft.com;x-m=8:orgid:7de185bd-d73d-48d2-886f-ac10e28ed1ca;"
           "x-t=8ab232fc-d5cc-4d06-86d5-647a233e39bd")
PSTN_URI = "sip:+14255550100@sip.pstnhub.microsoft.com;user=phone"
REFERRED_BY = ("<sip:sip.pstnhub.microsoft.com;x-m=8:orgid:41d82c67-721b-4125-9e81-6acc8371e010;"
               "x-t=8ab232fc-d5cc-4d06-86d5-647a233e39bd;x-ti=9f6d6b2b-9c3a-4e87-97b6-2ad03bfd7024;"
               "x-tt=" + "aHR0cHM6Ly9hcGktZHUtYi1ldXdlLnBzdG5odWIubWljcm9zb2Z0LmNvbS92MS9uZ2MvY2FsbG5v" * 4
               + "%3D>")
OWN_ROUTES = "Route: <sip:10.0.0.5:5060;lr;r2=on>, <sip:sbc.example.com:5061;transport=tls;lr;r2=on>\r\n"
TEAMS_CONTACT = "<sip:api-du-a-euwe.pstnhub.microsoft.com:443;transport=tls>"
TEAMS_RR = ["<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"]
NEW_SDP = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 8\r\n"


def proxy_with(tmp_path, **over):
    return build(make(tmp_path, **over))[1]


def split(out):
    media = [o for o in out if isinstance(o, MediaCall)]
    sends = [(o.to, parse_message(o.data)) for o in out if isinstance(o, Send)]
    return media, sends


def label(m):
    return getattr(m, "method", None) or m.status


def with_sdp(data: bytes) -> bytes:
    return data.replace(b"Content-Length: ", b"Content-Type: application/sdp\r\nContent-Length: ", 1)


def request(method, ruri, *, via_branch, from_, to, call_id, cseq, extra="", body=b"", ctype=None,
            via_host="10.0.0.10:5060", transport="UDP"):
    lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/{transport} {via_host};branch={via_branch}",
             "Max-Forwards: 70", f"From: {from_}", f"To: {to}", f"Call-ID: {call_id}",
             f"CSeq: {cseq} {method}"]
    head = "\r\n".join(lines) + "\r\n" + extra
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


PBX_FROM = '"Alice" <sip:02079460000@10.0.0.10>;tag=pbxtag'


def pbx_in_dialog(method, cseq, *, extra="", body=b"", ctype=None, branch=None):
    """A request from the PBX in the dialog of pbx_invite() answered by Teams (tag teamstag)."""
    return request(method, "sip:api-du-a-euwe.pstnhub.microsoft.com:443;transport=tls",
                   via_branch=branch or f"z9hG4bKpbx{method}{cseq}", from_=PBX_FROM,
                   to="<sip:02071234567@10.0.0.5>;tag=teamstag", call_id="call-1@10.0.0.10",
                   cseq=cseq, extra=OWN_ROUTES + extra, body=body, ctype=ctype)


# =========================================================================== 1. transfers
def teams_refer(proxy, refer_to: str, referred_by: str = REFERRED_BY) -> bytes:
    """Teams' REFER in the dialog of teams_invite(), after the PBX answered with tag p1 (its
    R-URI is the Contact the SBC gave Teams: the PBX's, sealed with this proxy's key)."""
    sealed = proxy.policy.teams.seal_contact("sip:1000@10.0.0.10:5060")
    return (f"REFER sip:sbc.example.com:5061;transport=tls;x-tsbc-c={sealed} SIP/2.0\r\n"
            "VIA: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bKrefer1\r\n"
            "MAX-FORWARDS: 70\r\n"
            "FROM: <sip:+4930123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=t1\r\n"
            "TO: <sip:+15551230000@sbc.example.com:5061;user=phone>;tag=p1\r\n"
            "CALL-ID: teams-call-1\r\nCSEQ: 2 REFER\r\n"
            f"CONTACT: <sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=z;transport=tls>\r\n"
            f"REFER-TO: <{refer_to}>\r\nREFERRED-BY: {referred_by}\r\n"
            "CONTENT-LENGTH: 0\r\n\r\n").encode()


def transferee_invite(ruri: str, *, referred_by: str | None = None, route: str = "") -> bytes:
    extra = f"Route: {route}\r\n" if route else ""
    extra += f"Referred-By: {referred_by}\r\n" if referred_by else ""
    extra += "Contact: <sip:+441632960100@10.0.0.10:5060>\r\n"
    return request("INVITE", ruri, via_branch="z9hG4bKxfer1", from_="<sip:+441632960100@10.0.0.10>;tag=x1",
                   to=f"<{ruri}>", call_id="xfer-1@10.0.0.10", cseq=1, extra=extra, body=SDP,
                   ctype="application/sdp")


def test_refer_from_teams_reaches_the_pbx_with_refer_to_and_referred_by_intact(tmp_path):
    proxy = proxy_with(tmp_path, teams={"allow_refer": True})
    _, sends = split(proxy.receive(teams_refer(proxy, MRI_URI), TEAMS_SRC, 0.0))
    assert [label(m) for _, m in sends] == ["REFER"]
    dest, refer = sends[0]
    assert dest.leg == PBX and refer.uri == "sip:1000@10.0.0.10:5060"
    assert refer.headers.get("refer-to") == f"<{MRI_URI}>"
    assert refer.headers.get("referred-by") == REFERRED_BY and len(REFERRED_BY) > 300
    ok = response_to(sends[0][1].to_bytes(), 202, "Accepted", contact="<sip:1000@10.0.0.10:5060>")
    _, up = split(proxy.receive(ok, PBX_SRC, 0.1))
    assert [(d, m.status) for d, m in up] == [(TEAMS_SRC, 202)]
    assert re.match(r"<sip:1000@sbc\.example\.com:5061;transport=tls;x-tsbc-c=", up[0][1].headers.get("contact"))


@pytest.mark.parametrize("target", [MRI_URI, PSTN_URI], ids=["teams-user", "pstn"])
def test_transferee_invite_reaches_teams_with_the_exact_uri_and_referred_by(tmp_path, target):
    proxy = proxy_with(tmp_path, teams={"allow_refer": True})
    proxy.receive(teams_refer(proxy, target), TEAMS_SRC, 0.0)
    # the transferee (no Referred-By of its own: the one Teams sent comes back) sends through
    # the SBC as its outbound proxy: a preloaded Route naming us
    _, sends = split(proxy.receive(transferee_invite(target, route="<sip:10.0.0.5:5060;lr>"), PBX_SRC, 1.0))
    assert [label(m) for _, m in sends] == [100, "INVITE"]
    dest, inv = sends[1]
    assert dest == Destination(TEAMS, "tls", "sip.pstnhub.microsoft.com", 5061)
    assert inv.uri == target
    assert inv.headers.get("referred-by") == REFERRED_BY
    assert inv.headers.get("route") is None
    assert inv.headers.get("to") == f"<{target}>" if target == MRI_URI else "+14255550100" in inv.headers.get("to")
    assert inv.headers.get("contact").startswith("<sip:+441632960100@sbc.example.com:5061;transport=tls;")


def test_transferee_referred_by_of_its_own_passes_unchanged_and_memory_expires(tmp_path):
    proxy = proxy_with(tmp_path, teams={"allow_refer": True})
    proxy.receive(teams_refer(proxy, MRI_URI), TEAMS_SRC, 0.0)
    own = "<sip:+441632960100@10.0.0.10>"
    _, sends = split(proxy.receive(transferee_invite(MRI_URI, referred_by=own), PBX_SRC, 1.0))
    assert sends[1][1].headers.get_all("referred-by") == [own]
    book = TransferBook()
    book.remember(MRI_URI, REFERRED_BY, 0.0)
    assert book.referred_by(MRI_URI, 63.0) == REFERRED_BY
    assert book.referred_by(MRI_URI, 65.0) is None and len(book) == 0
    # two transfers to one target at once, by different people: no guess
    book.remember(PSTN_URI, REFERRED_BY, 100.0)
    book.remember(PSTN_URI, "<sip:sip.pstnhub.microsoft.com;x-m=8:orgid:other>", 101.0)
    assert book.referred_by(PSTN_URI, 102.0) is None


@pytest.mark.parametrize("ruri, why", [
    ("sip:sip.pstnhub.microsoft.com;x-m=8:orgid:1", "x-t"),
    ("sip:sip.pstnhub.microsoft.com", "x-m and x-t"),
    ("sip:+1-425@sip.pstnhub.microsoft.com", "not a +E.164"),
    ("sip:alice@sip.pstnhub.microsoft.com", "not a +E.164"),
])
def test_invite_to_a_teams_host_that_is_no_refer_to_is_refused(tmp_path, ruri, why):
    assert why in refused_target(parse_uri(ruri))
    proxy = proxy_with(tmp_path)
    _, sends = split(proxy.receive(transferee_invite(ruri), PBX_SRC, 0.0))
    assert [m.status for _, m in sends] == [484]


def test_a_national_number_at_a_teams_host_is_an_ordinary_call(tmp_path):
    """A PBX whose trunk names Teams' host: the number is made +E.164 as for any call."""
    proxy = proxy_with(tmp_path)
    _, sends = split(proxy.receive(transferee_invite("sip:02071234567@sip.pstnhub.microsoft.com"), PBX_SRC, 0.0))
    assert sends[1][1].uri == "sip:+442071234567@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls"


def test_invite_naming_a_foreign_host_still_only_goes_to_teams(tmp_path):
    """No open relay: the host in the PBX's Request-URI never decides where a call goes."""
    proxy = proxy_with(tmp_path)
    _, sends = split(proxy.receive(transferee_invite("sip:+14255550100@evil.example.net;user=phone"), PBX_SRC, 0.0))
    dest, inv = sends[1]
    assert dest.host == "sip.pstnhub.microsoft.com"
    assert inv.uri == "sip:+14255550100@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls"


# =========================================================================== 3. 100rel
def test_pbx_requiring_100rel_gets_reliable_provisionals_and_teams_never_sees_100rel(tmp_path):
    proxy = proxy_with(tmp_path)
    _, sends = split(proxy.receive(pbx_invite(extra="Require: 100rel\r\nSupported: 100rel\r\n"), PBX_SRC, 0.0))
    inv = sends[1][1]
    assert "100rel" not in (inv.headers.get("require") or "") + ",".join(inv.headers.get_all("supported"))
    r180 = response_to(inv.to_bytes(), 180, "Ringing", to_tag="t1", contact=TEAMS_CONTACT)
    _, s = split(proxy.receive(r180, TEAMS_SRC, 0.1))
    (dest, p180), = s
    assert dest == PBX_SRC and p180.status == 180 and p180.headers.get("require") == "100rel"
    rseq = int(p180.headers.get("rseq"))
    assert 1 <= rseq < 2**31
    r183 = with_sdp(response_to(inv.to_bytes(), 183, "Session Progress", to_tag="t1", contact=TEAMS_CONTACT, body=SDP))
    assert split(proxy.receive(r183, TEAMS_SRC, 0.2))[1] == []  # waits for the PRACK (RFC 3262 3)
    # retransmitted at T1, then 2*T1
    assert proxy.next_timer() == pytest.approx(0.6)
    _, s = split(proxy.handle_timer(0.6))
    assert [(m.status, m.headers.get("rseq")) for _, m in s] == [(180, str(rseq))]
    assert proxy.next_timer() == pytest.approx(1.6)
    # a PRACK for something else: 481 from here, never relayed
    bad = pbx_in_dialog("PRACK", 2, extra=f"RAck: {rseq + 5} 1 INVITE\r\n").replace(b"tag=teamstag", b"tag=t1")
    _, s = split(proxy.receive(bad, PBX_SRC, 0.7))
    assert [(d, m.status) for d, m in s] == [(PBX_SRC, 481)]
    prack = pbx_in_dialog("PRACK", 3, extra=f"RAck: {rseq} 1 INVITE\r\n").replace(b"tag=teamstag", b"tag=t1")
    _, s = split(proxy.receive(prack, PBX_SRC, 0.8))
    assert [(m.status, m.headers.get("rseq")) for _, m in s] == [(200, None), (183, str(rseq + 1))]
    assert s[0][1].cseq.method == "PRACK" and s[1][1].body == SDP
    # the 2xx waits behind the unacknowledged 183, then goes
    ok = with_sdp(response_to(inv.to_bytes(), 200, "OK", to_tag="t1", contact=TEAMS_CONTACT, rr=TEAMS_RR, body=SDP))
    assert split(proxy.receive(ok, TEAMS_SRC, 0.9))[1] == []
    prack2 = pbx_in_dialog("PRACK", 4, extra=f"RAck: {rseq + 1} 1 INVITE\r\n").replace(b"tag=teamstag", b"tag=t1")
    _, s = split(proxy.receive(prack2, PBX_SRC, 1.0))
    assert [m.status for _, m in s] == [200, 200] and s[1][1].cseq.method == "INVITE"
    assert "100rel" not in (s[1][1].headers.get("require") or "")
    # a retransmitted PRACK is answered again by its transaction; a new one for a provisional
    # already acknowledged matches nothing unacknowledged: 481 (RFC 3262 3)
    _, s = split(proxy.receive(prack2, PBX_SRC, 1.1))
    assert [m.status for _, m in s] == [200]
    _, s = split(proxy.receive(prack2.replace(b"z9hG4bKpbxPRACK4", b"z9hG4bKpbxPRACK4b"), PBX_SRC, 1.2))
    assert [m.status for _, m in s] == [481]
    assert not proxy.pbx.senders


def test_no_prack_within_64_t1_refuses_the_call_and_cancels_teams(tmp_path):
    proxy = proxy_with(tmp_path)
    _, sends = split(proxy.receive(pbx_invite(extra="Require: 100rel\r\n"), PBX_SRC, 0.0))
    inv = sends[1][1]
    proxy.receive(response_to(inv.to_bytes(), 180, "Ringing", to_tag="t1", contact=TEAMS_CONTACT), TEAMS_SRC, 0.1)
    retransmitted, t, end = [], proxy.next_timer(), []
    while t is not None and t < 40:
        _, s = split(proxy.handle_timer(t))
        retransmitted += [m.status for d, m in s if d == PBX_SRC and m.status == 180]
        end += [(d.leg, label(m)) for d, m in s if label(m) != 180]
        if end:
            break
        t = proxy.next_timer()
    assert retransmitted == [180] * 6  # 0.5, 1, 2, 4, 8, 16 s
    assert sorted(map(str, end)) == [str((PBX, 500)), str((TEAMS, "CANCEL"))]


def test_reliable_provisionals_of_the_pbx_are_pracked_here_and_cseq_stays_in_order(tmp_path):
    proxy = proxy_with(tmp_path)
    _, sends = split(proxy.receive(teams_invite(), TEAMS_SRC, 0.0))
    inv = sends[1][1]
    rr = inv.headers.get_all("record-route")
    r180 = (response_to(inv.to_bytes(), 180, "Ringing", to_tag="p1", contact="<sip:1000@10.0.0.10:5060>", rr=rr)
            .replace(b"Content-Length", b"Require: 100rel\r\nRSeq: 7\r\nContent-Length"))
    _, s = split(proxy.receive(r180, PBX_SRC, 0.1))
    by = {label(m): (d, m) for d, m in s}
    assert set(by) == {"PRACK", 180}
    d, prack = by["PRACK"]
    assert d == Destination(PBX, "udp", "10.0.0.10", 5060) and prack.uri == "sip:1000@10.0.0.10:5060"
    assert prack.headers.get("rack") == "7 1 INVITE" and str(prack.cseq.number) == "2"
    assert prack.to_addr.tag == "p1" and prack.from_addr.tag == "t1"
    up = by[180][1]
    assert by[180][0] == TEAMS_SRC and up.headers.get("require") is None and up.headers.get("rseq") is None
    # a retransmission: neither relayed nor PRACKed again
    assert split(proxy.receive(r180, PBX_SRC, 0.6))[1] == []
    # the PRACK's 200 ends there
    assert split(proxy.receive(response_to(prack.to_bytes(), 200, "OK"), PBX_SRC, 0.7))[1] == []
    ok = response_to(inv.to_bytes(), 200, "OK", to_tag="p1", contact="<sip:1000@10.0.0.10:5060>", rr=rr)
    _, s = split(proxy.receive(ok, PBX_SRC, 1.0))
    contact = s[0][1].headers.get("contact")
    ruri = contact[1:contact.index(">")]
    teams_route = "ROUTE: <sip:sbc.example.com:5061;transport=tls;lr;r2=on>, <sip:10.0.0.5:5060;lr;r2=on>\r\n"

    def teams_request(method, cseq):
        return request(method, ruri, via_branch=f"z9hG4bKt{method}{cseq}", via_host="52.114.14.70:5061",
                       transport="TLS", from_="<sip:+4930123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=t1",
                       to="<sip:+15551230000@sbc.example.com:5061;user=phone>;tag=p1", call_id="teams-call-1",
                       cseq=cseq, extra=teams_route)
    _, s = split(proxy.receive(teams_request("ACK", 1), TEAMS_SRC, 1.1))
    assert [(label(m), m.cseq.number) for _, m in s] == [("ACK", 1)]     # the INVITE's own number
    _, s = split(proxy.receive(teams_request("BYE", 2), TEAMS_SRC, 2.0))
    assert [(label(m), m.cseq.number) for _, m in s] == [("BYE", 3)]     # after the SBC's PRACK
    _, s = split(proxy.receive(response_to(s[0][1].to_bytes(), 200, "OK"), PBX_SRC, 2.1))
    assert [(d, m.status, m.headers.get("cseq")) for d, m in s] == [(TEAMS_SRC, 200, "2 BYE")]


def test_cseq_shift_only_after_the_invite_and_forgotten_after_bye():
    shift = CSeqShift()
    shift.add("c", "p", 5, 2)
    ack = parse_message(request("ACK", "sip:x@h", via_branch="z9hG4bK1", from_="<sip:a@h>;tag=t",
                                to="<sip:b@h>;tag=p", call_id="c", cseq=5))
    shift.apply(ack)
    assert ack.cseq.number == 5
    bye = parse_message(request("BYE", "sip:x@h", via_branch="z9hG4bK2", from_="<sip:a@h>;tag=t",
                                to="<sip:b@h>;tag=p", call_id="c", cseq=6))
    shift.apply(bye)
    assert bye.cseq.number == 8 and len(shift) == 0


def test_prack_pass_relays_100rel_as_before(tmp_path):
    proxy = proxy_with(tmp_path, pbx={"prack": "pass"})
    _, sends = split(proxy.receive(pbx_invite(extra="Require: 100rel\r\n"), PBX_SRC, 0.0))
    assert sends[1][1].headers.get("require") == "100rel"


# =========================================================================== 4. ringback
def ringing_call(proxy):
    _, sends = split(proxy.receive(pbx_invite(), PBX_SRC, 0.0))
    return sends[1][1]


def provisional(inv, status, reason, tag="t1", sdp=False):
    data = response_to(inv.to_bytes(), status, reason, to_tag=tag, contact=TEAMS_CONTACT, body=SDP if sdp else b"")
    return with_sdp(data) if sdp else data


@pytest.mark.parametrize("mode, sequence, expected", [
    ("pass", [(180, False), (183, True)], [(180, False), (183, True)]),
    ("ringback", [(180, False), (183, True), (180, False)], [(180, False), (180, False)]),
    ("ringback", [(183, True), (180, False)], [(183, True), (180, False)]),
    ("ringback", [(181, False), (183, True)], [(180, False)]),
    ("ringback", [(180, True), (183, True)], [(180, False)]),
])
def test_early_media_modes(tmp_path, mode, sequence, expected):
    proxy = proxy_with(tmp_path, pbx={"early_media": mode})
    inv = ringing_call(proxy)
    got = []
    for i, (status, sdp) in enumerate(sequence):
        _, s = split(proxy.receive(provisional(inv, status, "Progress", sdp=sdp), TEAMS_SRC, 0.1 + i / 10))
        got += [(m.status, bool(m.body)) for _, m in s]
    assert got == expected


def test_ringback_table_is_complete():
    assert set(RINGBACK) == {(h, k) for h in Heard for k in Kind}
    assert toward_pbx("pass", Heard.NOTHING, 183, True) == (Action.PASS, Heard.NOTHING)


# =========================================================================== 2. delayed offer
@pytest.fixture
def media_proxy(tmp_path):
    return proxy_with(tmp_path, media={"rtpengine": ["udp:127.0.0.1:22222"], "pbx_codecs": ["PCMA", "PCMU"]})


def delayed_invite() -> bytes:
    inv = pbx_invite().split(b"\r\n\r\n")[0].replace(b"Content-Type: application/sdp\r\n", b"")
    return re.sub(rb"Content-Length: \d+", b"Content-Length: 0", inv) + b"\r\n\r\n"


def late_call(proxy):
    """The PBX's INVITE without SDP up to Teams' 200: (invite sent to Teams, its 200, media ops)."""
    media, sends = split(proxy.receive(delayed_invite(), PBX_SRC, 0.0))
    assert [label(m) for _, m in sends] == [100]
    (offer,) = media
    cmd = offer.command
    assert (cmd["command"], cmd["from-tag"], cmd["transport-protocol"]) == ("offer", "pbxtag", "RTP/SAVP")
    assert "m=audio 9 RTP/AVP 8 0 101" in cmd["sdp"] and "c=IN IP4 10.0.0.10" in cmd["sdp"]
    _, sends = split(proxy.media_done(offer.op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    (dest, inv), = sends
    assert dest.leg == TEAMS and inv.body == NEW_SDP.encode()
    assert inv.headers.get("content-type") == "application/sdp"
    r183 = provisional(inv, 183, "Session Progress", tag="teamstag", sdp=True)
    m, s = split(proxy.receive(r183, TEAMS_SRC, 0.1))
    assert m == [] and [(d, m.status, m.body) for d, m in s] == [(PBX_SRC, 183, b"")]
    assert s[0][1].headers.get("content-type") is None
    ok = with_sdp(response_to(inv.to_bytes(), 200, "OK", contact=TEAMS_CONTACT, rr=TEAMS_RR + inv.headers.get_all("record-route"),
                              body=b"v=0\r\nteams-answer\r\n"))
    return inv, ok


def test_delayed_offer_interworked_through_rtpengine(media_proxy):
    proxy = media_proxy
    inv, ok = late_call(proxy)
    (m1,), s = split(proxy.receive(ok, TEAMS_SRC, 0.2))
    assert s == [] and m1.command["command"] == "answer"
    assert (m1.command["from-tag"], m1.command["to-tag"]) == ("pbxtag", "teamstag")
    (m2,), s = split(proxy.media_done(m1.op, {"result": "ok", "sdp": "v=0\r\ndiscarded\r\n"}, 0.21))
    cmd = m2.command
    assert s == [] and cmd["command"] == "offer" and cmd["sdp"] == "v=0\r\nteams-answer\r\n"
    assert (cmd["from-tag"], cmd["to-tag"], cmd["transport-protocol"]) == ("teamstag", "pbxtag", "RTP/AVP")
    _, s = split(proxy.media_done(m2.op, {"result": "ok", "sdp": NEW_SDP}, 0.22))
    assert [(d, m.status, m.body) for d, m in s] == [(PBX_SRC, 200, NEW_SDP.encode())]
    # Teams retransmits its 200: the PBX gets the same offer again, rtpengine is not asked
    m, s = split(proxy.receive(ok, TEAMS_SRC, 0.7))
    assert m == [] and [(m.status, m.body) for _, m in s] == [(200, NEW_SDP.encode())]
    ack = pbx_in_dialog("ACK", 1, body=b"v=0\r\npbx-answer\r\n", ctype="application/sdp")
    (m3,), s = split(proxy.receive(ack, PBX_SRC, 0.8))
    assert s == [] and m3.command["command"] == "answer" and m3.command["sdp"] == "v=0\r\npbx-answer\r\n"
    assert (m3.command["from-tag"], m3.command["to-tag"], m3.command["transport-protocol"]) == (
        "teamstag", "pbxtag", "RTP/SAVP")
    _, s = split(proxy.media_done(m3.op, {"result": "ok", "sdp": "v=0\r\nfor-teams\r\n"}, 0.81))
    (dest, fwd), = s
    assert dest.leg == TEAMS and fwd.method == "ACK" and fwd.body == b"" and fwd.headers.get("content-type") is None
    # the ACK of the retransmitted 200: on to Teams, without SDP, without rtpengine
    m, s = split(proxy.receive(ack.replace(b"z9hG4bKpbxACK1", b"z9hG4bKpbxACK1b"), PBX_SRC, 0.9))
    assert m == [] and [(label(m), m.body) for _, m in s] == [("ACK", b"")]
    # a re-INVITE from Teams later is an ordinary offer
    assert proxy.pbx.late  # kept for Teams' retransmissions (64*T1), then forgotten
    proxy.handle_timer(40.0)
    assert not proxy.pbx.late


def end_of_late_call(sends):
    by = {}
    for d, m in sends:
        by.setdefault(label(m), []).append((d, m))
    return by


def test_delayed_offer_ack_without_answer_ends_both_legs(media_proxy):
    proxy = media_proxy
    inv, ok = late_call(proxy)
    (m1,), _ = split(proxy.receive(ok, TEAMS_SRC, 0.2))
    (m2,), _ = split(proxy.media_done(m1.op, {"result": "ok", "sdp": "v=0\r\n"}, 0.21))
    proxy.media_done(m2.op, {"result": "ok", "sdp": NEW_SDP}, 0.22)
    media, sends = split(proxy.receive(pbx_in_dialog("ACK", 1), PBX_SRC, 0.3))
    by = end_of_late_call(sends)
    assert set(by) == {"ACK", "BYE"}
    assert [d.leg for d, _ in by["ACK"]] == [TEAMS]
    assert sorted(d.leg for d, _ in by["BYE"]) == [PBX, TEAMS]
    pbx_bye = next(m for d, m in by["BYE"] if d.leg == PBX)
    assert pbx_bye.uri == "sip:1000@10.0.0.10:5060"
    assert pbx_bye.from_addr.tag == "teamstag" and pbx_bye.to_addr.tag == "pbxtag"
    assert [c.command["command"] for c in media] == ["delete"]
    assert not proxy.pbx.late


def test_delayed_offer_without_ack_ends_both_legs_after_64_t1(media_proxy):
    proxy = media_proxy
    inv, ok = late_call(proxy)
    (m1,), _ = split(proxy.receive(ok, TEAMS_SRC, 0.2))
    (m2,), _ = split(proxy.media_done(m1.op, {"result": "ok", "sdp": "v=0\r\n"}, 0.21))
    proxy.media_done(m2.op, {"result": "ok", "sdp": NEW_SDP}, 0.22)
    media, sends = split(proxy.handle_timer(33.0))
    by = end_of_late_call(sends)
    assert sorted(d.leg for d, _ in by["BYE"]) == [PBX, TEAMS] and "ACK" in by
    assert [c.command["command"] for c in media] == ["delete"]


def test_delayed_offer_rtpengine_failure_on_the_reoffer_ends_both_legs(media_proxy):
    proxy = media_proxy
    inv, ok = late_call(proxy)
    (m1,), _ = split(proxy.receive(ok, TEAMS_SRC, 0.2))
    (m2,), _ = split(proxy.media_done(m1.op, {"result": "ok", "sdp": "v=0\r\n"}, 0.21))
    media, sends = split(proxy.media_done(m2.op, RuntimeError("rtpengine gone"), 0.22))
    assert sorted(map(str, (label(m) for _, m in sends))) == ["503", "ACK", "BYE"]
    assert [c.command["command"] for c in media] == ["delete"]
    assert not proxy.pbx.late


def test_delayed_offer_refused_by_teams_is_relayed_and_forgotten(media_proxy):
    proxy = media_proxy
    media, _ = split(proxy.receive(delayed_invite(), PBX_SRC, 0.0))
    _, sends = split(proxy.media_done(media[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    inv = sends[0][1]
    media, s = split(proxy.receive(response_to(inv.to_bytes(), 486, "Busy Here"), TEAMS_SRC, 0.1))
    assert [(d, m.status) for d, m in s if d == PBX_SRC] == [(PBX_SRC, 486)]
    assert [c.command["command"] for c in media] == ["delete"] and not proxy.pbx.late


def test_delayed_offer_without_rtpengine_is_still_488(tmp_path):
    proxy = proxy_with(tmp_path)
    _, sends = split(proxy.receive(delayed_invite(), PBX_SRC, 0.0))
    assert [(m.status, m.reason) for _, m in sends] == [(488, "Delayed Offer Not Supported")]


# =========================================================================== 6. UPDATE and INFO
def test_update_without_sdp_is_answered_here(tmp_path):
    proxy = proxy_with(tmp_path)
    upd = pbx_in_dialog("UPDATE", 2, extra="Session-Expires: 1800\r\nSupported: timer\r\n")
    _, s = split(proxy.receive(upd, PBX_SRC, 0.0))
    (d, resp), = s
    assert d == PBX_SRC and resp.status == 200
    assert resp.headers.get("contact") == "<sip:api-du-a-euwe.pstnhub.microsoft.com:443;transport=tls>"
    assert resp.headers.get("session-expires") == "1800;refresher=uac" and resp.headers.get("require") == "timer"


def test_update_with_sdp_is_refused_here_with_a_reason(tmp_path):
    proxy = proxy_with(tmp_path)
    _, s = split(proxy.receive(pbx_in_dialog("UPDATE", 2, body=SDP, ctype="application/sdp"), PBX_SRC, 0.0))
    (d, resp), = s
    assert d == PBX_SRC and resp.status == 488 and "re-INVITE" in resp.headers.get("warning")


def test_info_without_info_dtmf_is_405_here(tmp_path):
    proxy = proxy_with(tmp_path)
    info = pbx_in_dialog("INFO", 2, body=b"Signal=5\r\nDuration=160\r\n", ctype="application/dtmf-relay")
    _, s = split(proxy.receive(info, PBX_SRC, 0.0))
    (d, resp), = s
    assert d == PBX_SRC and resp.status == 405 and "INFO" not in resp.headers.get("allow")


def test_info_dtmf_becomes_rfc4733_through_rtpengine(tmp_path):
    proxy = proxy_with(tmp_path, media={"rtpengine": ["udp:127.0.0.1:22222"], "info_dtmf": True})
    info = pbx_in_dialog("INFO", 2, body=b"Signal=#\r\nDuration=160\r\n", ctype="application/dtmf-relay")
    (m,), s = split(proxy.receive(info, PBX_SRC, 0.0))
    assert s == [] and m.command == {"command": "play DTMF", "call-id": "call-1@10.0.0.10",
                                     "from-tag": "pbxtag", "code": "#", "duration": 160}
    _, s = split(proxy.media_done(m.op, {"result": "ok"}, 0.01))
    assert [(d, r.status) for d, r in s] == [(PBX_SRC, 200)]
    # rtpengine failing: the PBX learns the digit was not played
    (m,), _ = split(proxy.receive(info.replace(b"z9hG4bKpbxINFO2", b"z9hG4bKpbxINFO3"), PBX_SRC, 0.1))
    _, s = split(proxy.media_done(m.op, RuntimeError("no such call"), 0.11))
    assert [r.status for _, r in s] == [500]
    # and every offer and answer of a call asks rtpengine for DTMF injection
    media, _ = split(proxy.receive(pbx_invite(branch="z9hG4bKnew"), PBX_SRC, 0.2))
    assert "inject-DTMF" in media[0].command["flags"]


@pytest.mark.parametrize("ctype, body, expected", [
    ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
    ("application/dtmf-relay", b"signal= *\nduration=100", ("*", 100)),
    ("application/dtmf-relay", b"Signal=11\r\n", ("#", 250)),
    ("application/dtmf", b"7", ("7", 250)),
    ("application/dtmf-relay", b"Signal=X\r\n", None),
    ("application/media_control+xml", b"<x/>", None),
])
def test_dtmf_of_info_bodies(ctype, body, expected):
    info = parse_message(request("INFO", "sip:x@h", via_branch="z9hG4bK1", from_="<sip:a@h>;tag=t",
                                 to="<sip:b@h>;tag=p", call_id="c", cseq=2, body=body, ctype=ctype))
    assert dtmf_of(info) == expected


def test_options_allow_toward_the_pbx_names_what_the_sbc_answers(tmp_path):
    proxy = proxy_with(tmp_path, media={"rtpengine": ["udp:127.0.0.1:22222"], "info_dtmf": True})
    opt = request("OPTIONS", "sip:10.0.0.5:5060", via_branch="z9hG4bKo", from_="<sip:pbx@10.0.0.10>;tag=o",
                  to="<sip:10.0.0.5:5060>", call_id="o1", cseq=1)
    _, s = split(proxy.receive(opt, PBX_SRC, 0.0))
    assert s[0][1].headers.get("allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, UPDATE, REFER, PRACK, INFO"


# =========================================================================== settings
@pytest.mark.parametrize("over, message", [
    ({"pbx": {"prack": "drop"}}, "pbx.prack: 'drop' is not one of strip, pass"),
    ({"pbx": {"early_media": "silence"}}, "pbx.early_media: 'silence' is not one of pass, ringback"),
    ({"media": {"info_dtmf": True}}, "media.info_dtmf: needs media.rtpengine"),
])
def test_settings_errors(tmp_path, over, message):
    with pytest.raises(ConfigError) as e:
        make(tmp_path, **over)
    assert any(message in err for err in e.value.errors), e.value.errors
