"""When the proxy asks rtpengine, and what it does with the answer. Sans-IO: the NG replies
are fed by hand through Proxy.media_done (the real rtpengine runs in tests/test_media_*.py)."""
from __future__ import annotations

import pytest

from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, MediaCall, Send, Source
from teamsbc.sip.message import parse_message

from .test_proxy import PBX_SRC, SDP, TEAMS_SRC, pbx_invite, response_to, teams_invite
from .test_trunk_health import make

NEW_SDP = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/SAVP 0\r\n"


@pytest.fixture
def proxy(tmp_path):
    return build(make(tmp_path, media={"rtpengine": ["udp:127.0.0.1:22222"]}))[1]


def split(out):
    media = [o for o in out if isinstance(o, MediaCall)]
    sends = [(o.to, parse_message(o.data)) for o in out if isinstance(o, Send)]
    return media, sends


def kinds(sends):
    return [getattr(m, "method", None) or m.status for _, m in sends]


def test_offer_before_the_invite_leaves_and_its_sdp_replaces_the_body(proxy):
    media, sends = split(proxy.receive(pbx_invite(), PBX_SRC, 0.0))
    assert kinds(sends) == [100]
    assert len(media) == 1 and media[0].op is not None
    cmd = media[0].command
    assert (cmd["command"], cmd["call-id"], cmd["from-tag"]) == ("offer", "call-1@10.0.0.10", "pbxtag")
    assert cmd["transport-protocol"] == "RTP/SAVP" and cmd["sdp"] == SDP.decode()
    media2, sends = split(proxy.media_done(media[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    assert media2 == [] and kinds(sends) == ["INVITE"]
    dest, inv = sends[0]
    assert dest.leg == TEAMS and inv.body == NEW_SDP.encode()


def test_no_rtpengine_means_503_and_nothing_sent_without_media(proxy):
    media, _ = split(proxy.receive(pbx_invite(), PBX_SRC, 0.0))
    media2, sends = split(proxy.media_done(media[0].op, RuntimeError("no healthy rtpengine"), 0.5))
    assert kinds(sends) == [503] and sends[0][0] == PBX_SRC
    assert [m.command["command"] for m in media2] == ["delete"] and media2[0].op is None


def test_answers_keep_the_order_of_responses(proxy):
    media, _ = split(proxy.receive(teams_invite(), TEAMS_SRC, 0.0))
    _, sends = split(proxy.media_done(media[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    inv = sends[0][1]
    assert sends[0][0].leg == PBX
    ctype = b"Content-Type: application/sdp\r\nContent-Length: 0"
    r183 = response_to(inv.to_bytes(), 183, "Session Progress", to_tag="p1", body=SDP).replace(
        b"Content-Length: ", b"Content-Type: application/sdp\r\nContent-Length: ", 1)
    r200 = response_to(inv.to_bytes(), 200, "OK", to_tag="p1", body=SDP,
                       contact="<sip:+15551230000@10.0.0.10:5060>").replace(
        b"Content-Length: ", b"Content-Type: application/sdp\r\nContent-Length: ", 1)
    m1, s1 = split(proxy.receive(r183, PBX_SRC, 0.1))
    assert s1 == [] and m1[0].command["command"] == "answer"
    assert (m1[0].command["from-tag"], m1[0].command["to-tag"]) == ("t1", "p1")
    assert m1[0].command["transport-protocol"] == "RTP/SAVP"  # the answer goes to Teams
    m2, s2 = split(proxy.receive(r200, PBX_SRC, 0.11))
    assert m2 == [] and s2 == []  # waits behind the 183
    m3, s3 = split(proxy.media_done(m1[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.12))
    assert kinds(s3) == [183] and s3[0][1].body == NEW_SDP.encode()
    assert len(m3) == 1 and m3[0].command["command"] == "answer"
    _, s4 = split(proxy.media_done(m3[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.13))
    assert kinds(s4) == [200] and s4[0][0] == TEAMS_SRC


def test_failed_answer_on_200_tears_down_both_legs(proxy):
    media, _ = split(proxy.receive(pbx_invite(), PBX_SRC, 0.0))
    _, sends = split(proxy.media_done(media[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    inv = sends[0][1]
    rr = ["<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"] + inv.headers.get_all("record-route")
    ok = response_to(inv.to_bytes(), 200, "OK", contact="<sip:api-du-a-euwe.pstnhub.microsoft.com:443;transport=tls>",
                     rr=rr, body=SDP).replace(b"Content-Length: ", b"Content-Type: application/sdp\r\nContent-Length: ", 1)
    m, _ = split(proxy.receive(ok, TEAMS_SRC, 0.1))
    m2, sends = split(proxy.media_done(m[0].op, RuntimeError("rtpengine said error"), 0.2))
    by = {k: (d, msg) for (d, msg), k in zip(sends, kinds(sends))}
    assert sorted(map(str, by)) == ["503", "ACK", "BYE"]
    assert by[503][0] == PBX_SRC
    for method in ("ACK", "BYE"):
        d, msg = by[method]
        assert d.host == "sip-du-a-eu.pstnhub.microsoft.com"
        assert msg.uri == "sip:api-du-a-euwe.pstnhub.microsoft.com:443;transport=tls"
        assert msg.headers.get_all("route") == ["<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"]
        assert msg.headers.get("to").endswith("tag=teamstag")
        assert msg.headers.get("x-ms-sbc") is not None
    assert by["BYE"][1].cseq.number == 2
    assert [c.command["command"] for c in m2] == ["delete"]


def test_bye_and_cancel_delete_the_session_without_waiting(proxy):
    bye = ("BYE sip:+15551230000@10.0.0.10:5060 SIP/2.0\r\n"
           "Via: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bKbye\r\n"
           "Route: <sip:sbc.example.com:5061;transport=tls;lr;r2=on>, <sip:10.0.0.5:5060;lr;r2=on>\r\n"
           "From: <sip:+4930123@sip.pstnhub.microsoft.com>;tag=t1\r\nTo: <sip:+1555@sbc.example.com>;tag=p1\r\n"
           "Call-ID: teams-call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    media, sends = split(proxy.receive(bye, TEAMS_SRC, 0.0))
    assert [(m.op, m.command) for m in media] == [
        (None, {"command": "delete", "call-id": "teams-call-1", "from-tag": "t1", "to-tag": "p1"})]
    assert kinds(sends) == ["BYE"]


def test_cancel_before_any_branch_answers_487_and_deletes(proxy):
    media, _ = split(proxy.receive(pbx_invite(), PBX_SRC, 0.0))
    cancel = ("CANCEL sip:02071234567@10.0.0.5:5060 SIP/2.0\r\n"
              "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKpbx1;rport\r\n"
              "From: \"Alice\" <sip:02079460000@10.0.0.10>;tag=pbxtag\r\nTo: <sip:02071234567@10.0.0.5>\r\n"
              "Call-ID: call-1@10.0.0.10\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n").encode()
    m2, sends = split(proxy.receive(cancel, PBX_SRC, 0.001))
    assert sorted(map(str, kinds(sends))) == ["200", "487"]
    assert {c.command["command"] for c in m2} == {"delete"}
    # the offer's late reply does not resurrect the call
    m3, s3 = split(proxy.media_done(media[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    assert s3 == [] and [c.command["command"] for c in m3] == ["delete"]


def test_delayed_offer_from_the_pbx_is_refused_with_a_reason(tmp_path):
    proxy = build(make(tmp_path))[1]  # signalling only: Teams refuses it anyway
    inv = pbx_invite().split(b"\r\n\r\n")[0].replace(b"Content-Type: application/sdp\r\n", b"").replace(
        f"Content-Length: {len(SDP)}".encode(), b"Content-Length: 0") + b"\r\n\r\n"
    out = proxy.receive(inv, PBX_SRC, 0.0)
    resp = parse_message(out[-1].data)
    assert (resp.status, resp.reason) == (488, "Delayed Offer Not Supported")
    assert "enable early offer" in resp.headers.get("warning")


# ---------------------------------------------------------------- issue 12: media-path limits
def _with_sdp(msg: bytes, sdp: bytes) -> bytes:
    head = msg.split(b"\r\n\r\n")[0]
    head = b"\r\n".join(l for l in head.split(b"\r\n") if not l.lower().startswith(b"content-length"))
    return head + b"\r\nContent-Length: " + str(len(sdp)).encode() + b"\r\n\r\n" + sdp


BOMBS = {
    "media.max_media_lines": SDP + b"m=audio 4002 RTP/AVP 0\r\n" * 300,
    "media.max_sdp_size": SDP + b"a=x-filler:" + b"y" * 900 + b"\r\n" * 1 + (b"a=x-filler:" + b"y" * 900 + b"\r\n") * 20,
    "media.max_sdp_attributes": SDP + b"a=x:1\r\n" * 300,
    "media.max_sdp_line_length": SDP + b"a=x-long:" + b"z" * 2000 + b"\r\n",
}


@pytest.mark.parametrize("limit", sorted(BOMBS))
@pytest.mark.parametrize("leg", ["teams", "pbx"])
def test_an_sdp_over_a_limit_gets_488_naming_it_and_nothing_goes_to_rtpengine(proxy, limit, leg):
    invite, src = (teams_invite(), TEAMS_SRC) if leg == "teams" else (pbx_invite(), PBX_SRC)
    media, sends = split(proxy.receive(_with_sdp(invite, BOMBS[limit]), src, 0.0))
    assert media == []
    assert kinds(sends) == [488] and sends[0][0] == src
    assert limit in sends[0][1].headers.get("warning")
    assert proxy.next_events()[-1].status == 488          # the refused call has a record
    # the next call is relayed with its offer, as always
    media, sends = split(proxy.receive(invite.replace(b"call-1", b"call-2").replace(b"teams-call-1", b"teams-call-2")
                                       .replace(b"z9hG4bK", b"z9hG4bKnext"), src, 0.1))
    assert [m.command["command"] for m in media] == ["offer"]


def test_a_bomb_in_the_callee_answer_ends_the_call_without_rtpengine_seeing_it(proxy):
    media, _ = split(proxy.receive(teams_invite(), TEAMS_SRC, 0.0))
    _, sends = split(proxy.media_done(media[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    inv = sends[0][1]
    ok = response_to(inv.to_bytes(), 200, "OK", to_tag="p1", contact="<sip:+15551230000@10.0.0.10:5060>",
                     rr=inv.headers.get_all("record-route"), body=BOMBS["media.max_media_lines"]).replace(
        b"Content-Length: ", b"Content-Type: application/sdp\r\nContent-Length: ", 1)
    media, sends = split(proxy.receive(ok, PBX_SRC, 0.1))
    assert [m.command["command"] for m in media] == ["delete"]     # only the offer's session goes
    by = {str(k): (d, m) for (d, m), k in zip(sends, kinds(sends))}
    assert sorted(by) == ["488", "ACK", "BYE"]
    assert by["488"][0] == TEAMS_SRC and "media.max_media_lines" in by["488"][1].headers.get("warning")
    assert by["ACK"][0].leg == PBX and by["BYE"][0].leg == PBX


def test_sdp_that_is_not_utf8_is_refused(proxy):
    media, sends = split(proxy.receive(_with_sdp(pbx_invite(), SDP + b"a=x:\xff\xfe\r\n"), PBX_SRC, 0.0))
    assert media == [] and kinds(sends) == [488]
    assert "not UTF-8" in sends[0][1].headers.get("warning")


def test_the_initial_offer_and_its_answer_label_the_caller_and_the_callee(proxy):
    """rtpengine keeps the labels and reports them with its statistics (media/stats.py): the
    CDR's caller/callee figures do not depend on tag order or on who sent the BYE."""
    media, _ = split(proxy.receive(teams_invite(), TEAMS_SRC, 0.0))
    assert media[0].command["label"] == "caller"
    _, sends = split(proxy.media_done(media[0].op, {"result": "ok", "sdp": NEW_SDP}, 0.01))
    inv = sends[0][1]
    ok = response_to(inv.to_bytes(), 200, "OK", to_tag="p1", contact="<sip:+15551230000@10.0.0.10:5060>",
                     rr=inv.headers.get_all("record-route"), body=SDP).replace(
        b"Content-Length: ", b"Content-Type: application/sdp\r\nContent-Length: ", 1)
    media, _ = split(proxy.receive(ok, PBX_SRC, 0.1))
    assert media[0].command["command"] == "answer" and media[0].command["label"] == "callee"
    reinvite = parse_message(teams_invite("z9hG4bKre").replace(b"user=phone>\r\nCALL-ID", b"user=phone>;tag=p1\r\nCALL-ID"))
    step = proxy.media.for_request(reinvite, PBX)
    assert step.command["command"] == "offer" and "label" not in step.command   # labels stay as set


@pytest.mark.parametrize("leg", ["teams", "pbx"])
def test_without_rtpengine_an_sdp_bomb_is_not_relayed_either(tmp_path, leg):
    """Signalling only (no media.rtpengine): the media.max_* limits still hold, so a 300-m-line
    SDP never reaches the other leg (a stranger's install relayed it to Teams as it was)."""
    bare = build(make(tmp_path))[1]
    assert bare.media is None
    invite, src = (teams_invite(), TEAMS_SRC) if leg == "teams" else (pbx_invite(), PBX_SRC)
    media, sends = split(bare.receive(_with_sdp(invite, BOMBS["media.max_media_lines"]), src, 0.0))
    assert media == [] and kinds(sends) == [488] and sends[0][0] == src
    assert "media.max_media_lines" in sends[0][1].headers.get("warning")
    # a normal offer is relayed as it is
    media, sends = split(bare.receive(invite.replace(b"call-1", b"call-2").replace(b"teams-call-1", b"teams-call-2")
                                      .replace(b"z9hG4bK", b"z9hG4bKnext"), src, 0.1))
    assert media == [] and kinds(sends) == [100, "INVITE"]


def test_without_rtpengine_a_bomb_in_the_callee_answer_ends_the_call(tmp_path):
    bare = build(make(tmp_path))[1]
    _, sends = split(bare.receive(teams_invite(), TEAMS_SRC, 0.0))
    inv = sends[-1][1]
    ok = response_to(inv.to_bytes(), 200, "OK", to_tag="p1", contact="<sip:+15551230000@10.0.0.10:5060>",
                     rr=inv.headers.get_all("record-route"), body=BOMBS["media.max_media_lines"]).replace(
        b"Content-Length: ", b"Content-Type: application/sdp\r\nContent-Length: ", 1)
    media, sends = split(bare.receive(ok, PBX_SRC, 0.1))
    by = {str(k): (d, m) for (d, m), k in zip(sends, kinds(sends))}
    assert media == [] and sorted(by) == ["488", "ACK", "BYE"]
    assert by["488"][0] == TEAMS_SRC and "media.max_media_lines" in by["488"][1].headers.get("warning")
