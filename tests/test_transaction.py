"""RFC 3261 section 17 / RFC 6026 transactions, driven by a fake clock (a float)."""
from __future__ import annotations

import pytest

from teamsbc.sip.message import Request, Response, parse_message
from teamsbc.sip.build import build_ack
from teamsbc.sip.transaction import (
    DEFAULT_TIMERS, T1, T2, T4, ClientTransaction, Deliver, ServerTransaction, TimedOut,
    Timers, Transmit, TransportFailed, client_key, server_key,
)


def sip(text: str, body: bytes = b"") -> Request | Response:
    head = text.strip("\n").replace("\n", "\r\n")
    return parse_message(f"{head}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n" \
      b"m=audio 40000 RTP/AVP 0 8\r\n"

# --- what the SBC sends to the PBX (client side) ---------------------------------------------
INVITE_OUT = """
INVITE sip:+15551230000@pbx.example.com:5060;user=phone SIP/2.0
Via: SIP/2.0/UDP sbc.example.com:5060;branch=z9hG4bKsbc7f3a1c
Via: SIP/2.0/TLS sip-du-a-us.pstnhub.microsoft.com:5061;branch=z9hG4bKteams9d2e
Max-Forwards: 69
Record-Route: <sip:sbc.example.com;lr>
Route: <sip:edge1.example.com;lr>
Route: <sip:pbx.example.com;lr>
From: "Alice" <sip:+15559870000@sbc.example.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@pbx.example.com;user=phone>
Call-ID: 1j9FpLxk3uxtm8tn@sbc.example.com
CSeq: 314159 INVITE
Contact: <sip:+15559870000@sbc.example.com:5060;transport=udp>
Content-Type: application/sdp
"""

RESP_HEAD_OUT = """
Via: SIP/2.0/UDP sbc.example.com:5060;branch=z9hG4bKsbc7f3a1c
Via: SIP/2.0/TLS sip-du-a-us.pstnhub.microsoft.com:5061;branch=z9hG4bKteams9d2e
From: "Alice" <sip:+15559870000@sbc.example.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@pbx.example.com;user=phone>;tag=pbx-8321
Call-ID: 1j9FpLxk3uxtm8tn@sbc.example.com
CSeq: 314159 INVITE
"""

BYE_OUT = """
BYE sip:+15551230000@192.0.2.20:5060 SIP/2.0
Via: SIP/2.0/UDP sbc.example.com:5060;branch=z9hG4bKsbcbye42
Max-Forwards: 70
From: "Alice" <sip:+15559870000@sbc.example.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@pbx.example.com;user=phone>;tag=pbx-8321
Call-ID: 1j9FpLxk3uxtm8tn@sbc.example.com
CSeq: 314160 BYE
"""

BYE_RESP_HEAD = """
Via: SIP/2.0/UDP sbc.example.com:5060;branch=z9hG4bKsbcbye42
From: "Alice" <sip:+15559870000@sbc.example.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@pbx.example.com;user=phone>;tag=pbx-8321
Call-ID: 1j9FpLxk3uxtm8tn@sbc.example.com
CSeq: 314160 BYE
"""

# --- what Teams sends to the SBC (server side) -----------------------------------------------
INVITE_IN = """
INVITE sip:+15551230000@sbc.example.com:5061;user=phone;transport=tls SIP/2.0
Via: SIP/2.0/TLS Sip-DU-A-US.pstnhub.microsoft.com:5061;branch=z9hG4bKteams9d2e
Max-Forwards: 70
From: "Alice" <sip:+15559870000@sip.pstnhub.microsoft.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@sbc.example.com;user=phone>
Call-ID: 1j9FpLxk3uxtm8tn@teams.microsoft.com
CSeq: 1 INVITE
Contact: <sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=2e4b;transport=tls>
Content-Type: application/sdp
"""

RESP_HEAD_IN = """
Via: SIP/2.0/TLS Sip-DU-A-US.pstnhub.microsoft.com:5061;branch=z9hG4bKteams9d2e
From: "Alice" <sip:+15559870000@sip.pstnhub.microsoft.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@sbc.example.com;user=phone>{to_tag}
Call-ID: 1j9FpLxk3uxtm8tn@teams.microsoft.com
CSeq: 1 INVITE
"""

ACK_IN = """
ACK sip:+15551230000@sbc.example.com:5061;user=phone;transport=tls SIP/2.0
Via: SIP/2.0/TLS Sip-DU-A-US.pstnhub.microsoft.com:5061;branch=z9hG4bKteams9d2e
Max-Forwards: 70
From: "Alice" <sip:+15559870000@sip.pstnhub.microsoft.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@sbc.example.com;user=phone>;tag=sbc-77
Call-ID: 1j9FpLxk3uxtm8tn@teams.microsoft.com
CSeq: 1 ACK
"""

CANCEL_IN = """
CANCEL sip:+15551230000@sbc.example.com:5061;user=phone;transport=tls SIP/2.0
Via: SIP/2.0/TLS Sip-DU-A-US.pstnhub.microsoft.com:5061;branch=z9hG4bKteams9d2e
Max-Forwards: 70
From: "Alice" <sip:+15559870000@sip.pstnhub.microsoft.com;user=phone>;tag=a73kszlfl
To: <sip:+15551230000@sbc.example.com;user=phone>
Call-ID: 1j9FpLxk3uxtm8tn@teams.microsoft.com
CSeq: 1 CANCEL
"""

OPTIONS_IN = """
OPTIONS sip:sbc.example.com:5061;transport=tls SIP/2.0
Via: SIP/2.0/TLS 52.114.76.76:5061;branch=z9hG4bKopt5c1;received=52.114.76.76
Max-Forwards: 70
From: <sip:sip-du-a-us.pstnhub.microsoft.com:5061>;tag=opt-1a
To: <sip:sbc.example.com>
Call-ID: opt-7f3e9c@sip-du-a-us.pstnhub.microsoft.com
CSeq: 1 OPTIONS
"""

OPTIONS_RESP_HEAD = """
Via: SIP/2.0/TLS 52.114.76.76:5061;branch=z9hG4bKopt5c1;received=52.114.76.76
From: <sip:sip-du-a-us.pstnhub.microsoft.com:5061>;tag=opt-1a
To: <sip:sbc.example.com>;tag=sbc-opt
Call-ID: opt-7f3e9c@sip-du-a-us.pstnhub.microsoft.com
CSeq: 1 OPTIONS
"""


def invite_out() -> Request:
    return sip(INVITE_OUT, SDP)


def out_resp(status: int, reason: str, to_tag: bool = True) -> Response:
    head = RESP_HEAD_OUT if to_tag else RESP_HEAD_OUT.replace(";tag=pbx-8321", "")
    return sip(f"SIP/2.0 {status} {reason}\n" + head.strip("\n"))


def bye_resp(status: int, reason: str) -> Response:
    return sip(f"SIP/2.0 {status} {reason}\n" + BYE_RESP_HEAD.strip("\n"))


def invite_in() -> Request:
    return sip(INVITE_IN, SDP)


def in_resp(status: int, reason: str) -> Response:
    tag = "" if status == 100 else ";tag=sbc-77"
    return sip(f"SIP/2.0 {status} {reason}\n" + RESP_HEAD_IN.format(to_tag=tag).strip("\n"))


def options_resp(status: int, reason: str) -> Response:
    return sip(f"SIP/2.0 {status} {reason}\n" + OPTIONS_RESP_HEAD.strip("\n"))


def drive(txn, until: float) -> list[tuple[float, object]]:
    """Act as the event loop: call handle_timer at each next_timer() up to `until`."""
    out: list[tuple[float, object]] = []
    while (t := txn.next_timer()) is not None and t <= until:
        out.extend((t, ev) for ev in txn.handle_timer(t))
    return out


def times_of(events, cls) -> list[float]:
    return [t for t, ev in events if isinstance(ev, cls)]


# === matching keys (17.1.3, 17.2.3) ==========================================================
def test_server_key_invite_is_branch_sent_by_lowercase_port_method():
    assert server_key(invite_in()) == (
        "z9hG4bKteams9d2e", "sip-du-a-us.pstnhub.microsoft.com", 5061, "INVITE")


def test_server_key_ack_finds_its_invite():
    assert server_key(sip(ACK_IN)) == server_key(invite_in())
    assert server_key(sip(ACK_IN))[3] == "INVITE"


def test_server_key_cancel_has_its_own_transaction():
    key = server_key(sip(CANCEL_IN))
    assert key == ("z9hG4bKteams9d2e", "sip-du-a-us.pstnhub.microsoft.com", 5061, "CANCEL")
    assert key != server_key(invite_in())


def test_server_key_port_absent_is_none_and_other_branch_differs():
    req = sip(INVITE_IN.replace("microsoft.com:5061;branch", "microsoft.com;branch"), SDP)
    assert server_key(req) == (
        "z9hG4bKteams9d2e", "sip-du-a-us.pstnhub.microsoft.com", None, "INVITE")
    other = sip(INVITE_IN.replace("z9hG4bKteams9d2e", "z9hG4bKteams0000"), SDP)
    assert server_key(other) != server_key(invite_in())


def test_server_key_same_branch_other_sent_by_differs():
    req = sip(INVITE_IN.replace("Sip-DU-A-US.pstnhub", "sip-du-b-us.pstnhub"), SDP)
    assert server_key(req)[1] == "sip-du-b-us.pstnhub.microsoft.com"
    assert server_key(req) != server_key(invite_in())


RFC2543_INVITE = """
INVITE sip:bob@pbx.example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.44:5060
Max-Forwards: 70
From: <sip:alice@old.example.com>;tag=1928301774
To: <sip:bob@pbx.example.com>
Call-ID: a84b4c76e66710@192.0.2.44
CSeq: 7 INVITE
"""


def test_server_key_rfc2543_fallback_fields():
    req = sip(RFC2543_INVITE)
    assert server_key(req) == (
        "rfc2543", "a84b4c76e66710@192.0.2.44", "1928301774", 7, "sip:bob@pbx.example.com",
        "UDP/192.0.2.44:5060;", "INVITE")


def test_server_key_rfc2543_branch_without_cookie_falls_back():
    req = sip(RFC2543_INVITE.replace("192.0.2.44:5060\n", "192.0.2.44:5060;branch=1a2b\n"))
    assert server_key(req)[0] == "rfc2543"
    assert server_key(req)[5] == "UDP/192.0.2.44:5060;branch=1a2b"


def test_server_key_rfc2543_ack_matches_cancel_does_not_ack_for_2xx_does_not():
    invite = sip(RFC2543_INVITE)
    ack = sip(RFC2543_INVITE.replace("INVITE", "ACK").replace(
        "To: <sip:bob@pbx.example.com>", "To: <sip:bob@pbx.example.com>;tag=bob-9"))
    cancel = sip(RFC2543_INVITE.replace("INVITE", "CANCEL"))
    ack_2xx = sip(RFC2543_INVITE.replace("INVITE", "ACK").replace(
        "ACK sip:bob@pbx.example.com", "ACK sip:bob@192.0.2.99:5060"))
    assert server_key(ack) == server_key(invite)
    assert server_key(cancel) != server_key(invite)
    assert server_key(cancel)[-1] == "CANCEL"
    assert server_key(ack_2xx) != server_key(invite)


def test_client_key_matches_transaction_key_and_cancel_differs():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    assert txn.key == ("z9hG4bKsbc7f3a1c", "INVITE")
    assert client_key(out_resp(180, "Ringing")) == txn.key
    cancel_200 = sip("SIP/2.0 200 OK\n" + RESP_HEAD_OUT.strip("\n").replace(
        "314159 INVITE", "314159 CANCEL"))
    assert client_key(cancel_200) == ("z9hG4bKsbc7f3a1c", "CANCEL")
    assert client_key(bye_resp(200, "OK")) == ("z9hG4bKsbcbye42", "BYE")


def test_ack_has_no_transaction():
    with pytest.raises(ValueError):
        ClientTransaction(sip(ACK_IN), reliable=False, now=0.0)
    with pytest.raises(ValueError):
        ServerTransaction(sip(ACK_IN), reliable=False, now=0.0)


# === build_ack (17.1.1.3) ====================================================================
def test_build_ack_exact_message():
    ack = build_ack(invite_out(), out_resp(486, "Busy Here"))
    assert ack.method == "ACK"
    assert ack.uri == "sip:+15551230000@pbx.example.com:5060;user=phone"
    assert ack.headers.get_all("via") == [
        "SIP/2.0/UDP sbc.example.com:5060;branch=z9hG4bKsbc7f3a1c"]
    assert ack.headers.get_all("route") == [
        "<sip:edge1.example.com;lr>", "<sip:pbx.example.com;lr>"]
    assert ack.headers.get("to") == "<sip:+15551230000@pbx.example.com;user=phone>;tag=pbx-8321"
    assert ack.to_addr.tag == "pbx-8321"
    assert ack.headers.get("cseq") == "314159 ACK"
    assert ack.body == b""
    assert ack.to_bytes() == (
        b"ACK sip:+15551230000@pbx.example.com:5060;user=phone SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP sbc.example.com:5060;branch=z9hG4bKsbc7f3a1c\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:edge1.example.com;lr>\r\n"
        b"Route: <sip:pbx.example.com;lr>\r\n"
        b'From: "Alice" <sip:+15559870000@sbc.example.com;user=phone>;tag=a73kszlfl\r\n'
        b"To: <sip:+15551230000@pbx.example.com;user=phone>;tag=pbx-8321\r\n"
        b"Call-ID: 1j9FpLxk3uxtm8tn@sbc.example.com\r\n"
        b"CSeq: 314159 ACK\r\n"
        b"Content-Length: 0\r\n\r\n")


def test_build_ack_without_route_has_none_and_parses_back():
    invite = sip(INVITE_OUT.replace("Route: <sip:edge1.example.com;lr>\n", "")
                 .replace("Route: <sip:pbx.example.com;lr>\n", ""), SDP)
    ack = build_ack(invite, out_resp(503, "Service Unavailable"))
    assert "route" not in ack.headers
    assert "record-route" not in ack.headers
    assert "contact" not in ack.headers
    again = parse_message(ack.to_bytes())
    assert again.method == "ACK" and again.cseq == (314159, "ACK")


def test_build_ack_matches_the_invite_server_transaction_downstream():
    invite = invite_out()
    assert server_key(build_ack(invite, out_resp(404, "Not Found"))) == server_key(invite)


# === INVITE client (17.1.1, RFC 6026 7.2) ====================================================
def test_invite_client_initial_state():
    invite = invite_out()
    txn = ClientTransaction(invite, reliable=False, now=0.0)
    assert (txn.state, txn.is_invite, txn.terminated, txn.request) == (
        "calling", True, False, invite)
    assert txn.next_timer() is None  # nothing armed before start()
    assert txn.start() == [Transmit(invite)]
    assert txn.next_timer() == 0.5
    assert txn.start() == []  # idempotent


def test_invite_client_udp_timer_a_and_b():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    events = drive(txn, 100.0)
    assert times_of(events, Transmit) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(ev.message is txn.request for _, ev in events if isinstance(ev, Transmit))
    assert times_of(events, TimedOut) == [32.0]
    assert len(events) == 7
    assert txn.state == "terminated" and txn.terminated
    assert txn.next_timer() is None


def test_invite_client_timers_are_relative_to_creation_time():
    txn = ClientTransaction(invite_out(), reliable=False, now=1000.0)
    txn.start()
    assert txn.next_timer() == 1000.5
    assert txn.handle_timer(1000.49) == []
    assert txn.handle_timer(1000.5) == [Transmit(txn.request)]
    assert txn.next_timer() == 1001.5


def test_invite_client_tcp_only_timer_b():
    txn = ClientTransaction(invite_out(), reliable=True, now=0.0)
    txn.start()
    assert txn.next_timer() == 32.0
    assert txn.handle_timer(31.999) == []
    assert txn.handle_timer(32.0) == [TimedOut()]
    assert txn.terminated


def test_invite_client_late_handle_timer_sends_one_copy_and_keeps_schedule():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    assert txn.handle_timer(20.0) == [Transmit(txn.request)]  # A was due 5 times
    assert txn.next_timer() == 31.5
    assert txn.handle_timer(40.0) == [TimedOut()]  # B wins over the A due at 31.5


def test_invite_client_custom_timers():
    timers = Timers(t1=0.1, t2=0.4, t4=1.0, d=2.0)
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0, timers=timers)
    txn.start()
    events = drive(txn, 100.0)
    assert [round(t, 6) for t in times_of(events, Transmit)] == [0.1, 0.3, 0.7, 1.5, 3.1, 6.3]
    assert [round(t, 6) for t in times_of(events, TimedOut)] == [6.4]
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0, timers=timers)
    txn.start()
    txn.receive_response(out_resp(486, "Busy Here"), 1.0)
    assert txn.next_timer() == 3.0  # Timer D = timers.d


def test_invite_client_1xx_moves_to_proceeding_and_stops_a_and_b():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    trying, ringing = out_resp(100, "Trying", to_tag=False), out_resp(180, "Ringing")
    assert txn.receive_response(trying, 0.1) == [Deliver(trying)]
    assert txn.state == "proceeding"
    assert txn.next_timer() is None
    assert txn.handle_timer(500.0) == []  # no retransmission, no Timer B (proxy owns Timer C)
    assert txn.receive_response(ringing, 2.0) == [Deliver(ringing)]
    assert txn.state == "proceeding"


@pytest.mark.parametrize("reliable", [False, True])
def test_invite_client_2xx_accepted_delivers_every_2xx_until_timer_m(reliable):
    txn = ClientTransaction(invite_out(), reliable=reliable, now=0.0)
    txn.start()
    ok1, ok2, ok3 = out_resp(200, "OK"), out_resp(200, "OK"), out_resp(200, "OK")
    ringing = out_resp(180, "Ringing")
    assert txn.receive_response(ringing, 1.0) == [Deliver(ringing)]
    assert txn.state == "proceeding"
    assert txn.receive_response(ok1, 2.0) == [Deliver(ok1)]
    assert txn.state == "accepted"
    assert txn.next_timer() == 34.0  # Timer M = 64*T1, on every transport
    assert txn.receive_response(ok2, 3.0) == [Deliver(ok2)]  # RFC 6026: forward each 2xx
    assert txn.receive_response(out_resp(180, "Ringing"), 3.5) == []
    assert txn.receive_response(out_resp(486, "Busy Here"), 3.6) == []
    assert txn.handle_timer(33.99) == []
    assert txn.receive_response(ok3, 33.0) == [Deliver(ok3)]
    assert txn.handle_timer(34.0) == []
    assert txn.terminated and txn.next_timer() is None
    assert txn.receive_response(out_resp(200, "OK"), 35.0) == []


def test_invite_client_2xx_straight_from_calling_stops_retransmissions():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    ok = out_resp(200, "OK")
    assert txn.receive_response(ok, 0.2) == [Deliver(ok)]
    assert txn.state == "accepted"
    assert txn.next_timer() == 32.2
    assert drive(txn, 100.0) == []
    assert txn.terminated


def test_invite_client_non_2xx_udp_acks_absorbs_and_waits_timer_d():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    busy = out_resp(486, "Busy Here")
    events = txn.receive_response(busy, 1.0)
    assert len(events) == 2
    assert events[0] == Deliver(busy)
    assert isinstance(events[1], Transmit) and events[1].message is txn.ack
    ack = events[1].message
    assert (ack.method, ack.headers.get("cseq"), ack.to_addr.tag) == ("ACK", "314159 ACK",
                                                                     "pbx-8321")
    assert txn.state == "completed"
    assert txn.next_timer() == 33.0  # Timer D = 32 s; A and B stopped
    again = out_resp(486, "Busy Here")
    assert txn.receive_response(again, 2.0) == [Transmit(ack)]  # resend ACK, don't deliver
    assert txn.receive_response(out_resp(200, "OK"), 2.5) == []
    assert txn.receive_response(out_resp(180, "Ringing"), 2.6) == []
    assert txn.handle_timer(32.999) == []
    assert txn.state == "completed"
    assert txn.handle_timer(33.0) == []
    assert txn.terminated and txn.next_timer() is None
    assert txn.receive_response(out_resp(486, "Busy Here"), 34.0) == []


def test_invite_client_non_2xx_from_proceeding():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    txn.receive_response(out_resp(183, "Session Progress"), 0.3)
    fail = out_resp(603, "Decline")
    events = txn.receive_response(fail, 5.0)
    assert events == [Deliver(fail), Transmit(txn.ack)]
    assert txn.state == "completed" and txn.next_timer() == 37.0


def test_invite_client_non_2xx_tcp_terminates_at_once_timer_d_zero():
    txn = ClientTransaction(invite_out(), reliable=True, now=0.0)
    txn.start()
    busy = out_resp(486, "Busy Here")
    assert txn.receive_response(busy, 1.0) == [Deliver(busy), Transmit(txn.ack)]
    assert txn.state == "terminated"
    assert txn.next_timer() is None


def test_invite_client_transport_errors():
    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    assert txn.transport_error(0.1) == [TransportFailed("Transport error")]
    assert txn.terminated and txn.next_timer() is None
    assert txn.handle_timer(100.0) == []

    txn = ClientTransaction(invite_out(), reliable=True, now=0.0)
    txn.start()
    txn.receive_response(out_resp(180, "Ringing"), 1.0)
    assert txn.transport_error(2.0, "Connection reset") == [TransportFailed("Connection reset")]
    assert txn.terminated

    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    txn.receive_response(out_resp(486, "Busy Here"), 1.0)
    assert txn.transport_error(1.1) == []  # TU already has the final: no bogus 503
    assert txn.terminated

    txn = ClientTransaction(invite_out(), reliable=False, now=0.0)
    txn.start()
    txn.receive_response(out_resp(200, "OK"), 1.0)
    assert txn.transport_error(1.1) == []
    assert txn.state == "accepted"  # still matches 2xx retransmissions until Timer M
    assert txn.next_timer() == 33.0


# === non-INVITE client (17.1.2) ==============================================================
def test_non_invite_client_udp_timer_e_caps_at_t2_and_timer_f():
    bye = sip(BYE_OUT)
    txn = ClientTransaction(bye, reliable=False, now=0.0)
    assert (txn.state, txn.is_invite, txn.key) == ("trying", False, ("z9hG4bKsbcbye42", "BYE"))
    assert txn.start() == [Transmit(bye)]
    assert txn.next_timer() == 0.5
    events = drive(txn, 100.0)
    assert times_of(events, Transmit) == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert times_of(events, TimedOut) == [32.0]
    assert txn.terminated and txn.next_timer() is None


def test_non_invite_client_tcp_only_timer_f():
    txn = ClientTransaction(sip(BYE_OUT), reliable=True, now=10.0)
    txn.start()
    assert txn.next_timer() == 42.0
    assert drive(txn, 100.0) == [(42.0, TimedOut())]


def test_non_invite_client_proceeding_retransmits_every_t2():
    txn = ClientTransaction(sip(BYE_OUT), reliable=False, now=0.0)
    txn.start()
    assert drive(txn, 0.5) == [(0.5, Transmit(txn.request))]
    trying = bye_resp(100, "Trying")
    assert txn.receive_response(trying, 1.0) == [Deliver(trying)]
    assert txn.state == "proceeding"
    assert txn.next_timer() == 1.5  # the armed E keeps its deadline
    events = drive(txn, 100.0)
    assert times_of(events, Transmit) == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
    assert times_of(events, TimedOut) == [32.0]


def test_non_invite_client_final_udp_timer_k_absorbs_retransmissions():
    txn = ClientTransaction(sip(BYE_OUT), reliable=False, now=0.0)
    txn.start()
    prov = bye_resp(180, "Ringing")
    assert txn.receive_response(prov, 0.2) == [Deliver(prov)]
    ok = bye_resp(200, "OK")
    assert txn.receive_response(ok, 0.7) == [Deliver(ok)]  # no ACK for non-INVITE
    assert txn.state == "completed"
    assert txn.next_timer() == 0.7 + T4  # Timer K; E and F stopped
    assert txn.receive_response(bye_resp(200, "OK"), 1.0) == []
    assert txn.receive_response(bye_resp(481, "Call/Transaction Does Not Exist"), 1.1) == []
    assert txn.handle_timer(5.69) == []
    assert txn.state == "completed"
    assert txn.handle_timer(5.7) == []
    assert txn.terminated and txn.next_timer() is None


def test_non_invite_client_final_tcp_terminates_at_once_timer_k_zero():
    txn = ClientTransaction(sip(BYE_OUT), reliable=True, now=0.0)
    txn.start()
    nf = bye_resp(481, "Call/Transaction Does Not Exist")
    assert txn.receive_response(nf, 0.3) == [Deliver(nf)]
    assert txn.terminated and txn.next_timer() is None


def test_non_invite_client_transport_errors():
    txn = ClientTransaction(sip(BYE_OUT), reliable=True, now=0.0)
    txn.start()
    assert txn.transport_error(0.0, "Connection refused") == [
        TransportFailed("Connection refused")]
    assert txn.terminated

    txn = ClientTransaction(sip(BYE_OUT), reliable=False, now=0.0)
    txn.start()
    txn.receive_response(bye_resp(100, "Trying"), 0.1)
    assert txn.transport_error(0.2) == [TransportFailed("Transport error")]

    txn = ClientTransaction(sip(BYE_OUT), reliable=False, now=0.0)
    txn.start()
    txn.receive_response(bye_resp(200, "OK"), 0.1)
    assert txn.transport_error(0.2) == []
    assert txn.terminated


# === INVITE server (17.2.1, RFC 6026 7.1) ====================================================
def test_invite_server_initial_state_and_retransmission_before_any_response():
    invite = invite_in()
    txn = ServerTransaction(invite, reliable=False, now=0.0)
    assert (txn.state, txn.is_invite, txn.terminated, txn.request, txn.last_response) == (
        "proceeding", True, False, invite, None)
    assert txn.key == server_key(invite)
    assert txn.next_timer() is None
    assert txn.receive_request(invite_in(), 0.5) == []


def test_invite_server_provisionals_and_request_retransmissions():
    txn = ServerTransaction(invite_in(), reliable=False, now=0.0)
    trying, ringing = in_resp(100, "Trying"), in_resp(180, "Ringing")
    assert txn.send_response(trying, 0.0) == [Transmit(trying)]
    assert txn.receive_request(invite_in(), 0.5) == [Transmit(trying)]
    assert txn.send_response(ringing, 1.0) == [Transmit(ringing)]
    assert (txn.state, txn.last_response) == ("proceeding", ringing)
    assert txn.receive_request(invite_in(), 1.5) == [Transmit(ringing)]
    assert txn.receive_request(sip(ACK_IN), 1.6) == []  # no ACK before a final
    assert txn.next_timer() is None


@pytest.mark.parametrize("reliable", [False, True])
def test_invite_server_2xx_accepted_timer_l(reliable):
    txn = ServerTransaction(invite_in(), reliable=reliable, now=0.0)
    txn.send_response(in_resp(100, "Trying"), 0.0)
    ok, ok_again = in_resp(200, "OK"), in_resp(200, "OK")
    assert txn.send_response(ok, 2.0) == [Transmit(ok)]
    assert txn.state == "accepted"
    assert txn.next_timer() == 34.0  # Timer L = 64*T1 on every transport
    assert txn.receive_request(invite_in(), 2.5) == []  # absorbed
    assert txn.send_response(ok_again, 2.5) == [Transmit(ok_again)]  # TU's 2xx retransmission
    assert txn.last_response is ok_again
    assert txn.send_response(in_resp(486, "Busy Here"), 3.0) == []
    assert txn.send_response(in_resp(180, "Ringing"), 3.0) == []
    assert drive(txn, 33.9) == []
    assert txn.state == "accepted"
    assert drive(txn, 100.0) == []
    assert txn.terminated and txn.next_timer() is None


def test_invite_server_non_2xx_udp_timer_g_and_h():
    txn = ServerTransaction(invite_in(), reliable=False, now=0.0)
    busy = in_resp(486, "Busy Here")
    assert txn.send_response(busy, 0.0) == [Transmit(busy)]
    assert txn.state == "completed"
    assert txn.next_timer() == 0.5
    events = drive(txn, 100.0)
    assert times_of(events, Transmit) == [
        0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(ev.message is busy for _, ev in events if isinstance(ev, Transmit))
    assert times_of(events, TimedOut) == [32.0]
    assert txn.terminated and txn.next_timer() is None


def test_invite_server_non_2xx_resent_on_request_retransmission():
    txn = ServerTransaction(invite_in(), reliable=False, now=0.0)
    txn.send_response(in_resp(180, "Ringing"), 0.0)
    busy = in_resp(486, "Busy Here")
    txn.send_response(busy, 1.0)
    assert txn.receive_request(invite_in(), 1.2) == [Transmit(busy)]
    assert txn.send_response(in_resp(500, "Server Internal Error"), 1.3) == []  # one final
    assert txn.send_response(in_resp(200, "OK"), 1.3) == []
    assert txn.last_response is busy


def test_invite_server_ack_udp_confirmed_timer_i():
    txn = ServerTransaction(invite_in(), reliable=False, now=0.0)
    busy = in_resp(486, "Busy Here")
    txn.send_response(busy, 0.0)
    assert drive(txn, 1.5) == [(0.5, Transmit(busy)), (1.5, Transmit(busy))]
    assert txn.receive_request(sip(ACK_IN), 2.0) == []
    assert txn.state == "confirmed"
    assert txn.next_timer() == 2.0 + T4  # Timer I; G and H stopped
    assert txn.receive_request(sip(ACK_IN), 2.1) == []  # ACK retransmission absorbed
    assert txn.receive_request(invite_in(), 2.2) == []
    assert txn.handle_timer(6.99) == []
    assert txn.state == "confirmed"
    assert txn.handle_timer(7.0) == []
    assert txn.terminated and txn.next_timer() is None


def test_invite_server_non_2xx_tcp_no_timer_g_ack_terminates_at_once():
    txn = ServerTransaction(invite_in(), reliable=True, now=0.0)
    busy = in_resp(486, "Busy Here")
    assert txn.send_response(busy, 1.0) == [Transmit(busy)]
    assert txn.state == "completed"
    assert txn.next_timer() == 33.0  # only Timer H
    assert txn.receive_request(sip(ACK_IN), 1.1) == []
    assert txn.terminated and txn.next_timer() is None  # Timer I is zero


def test_invite_server_tcp_timer_h_without_ack():
    txn = ServerTransaction(invite_in(), reliable=True, now=0.0)
    txn.send_response(in_resp(404, "Not Found"), 0.0)
    assert drive(txn, 100.0) == [(32.0, TimedOut())]
    assert txn.terminated


def test_invite_server_custom_timers_g_caps_at_t2():
    timers = Timers(t1=0.1, t2=0.4, t4=1.0)
    txn = ServerTransaction(invite_in(), reliable=False, now=0.0, timers=timers)
    txn.send_response(in_resp(480, "Temporarily Unavailable"), 0.0)
    events = drive(txn, 100.0)
    assert [round(t, 6) for t in times_of(events, Transmit)] == [
        0.1, 0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 3.9, 4.3, 4.7, 5.1, 5.5, 5.9, 6.3]
    assert [round(t, 6) for t in times_of(events, TimedOut)] == [6.4]


def test_invite_server_after_termination_everything_is_absorbed():
    txn = ServerTransaction(invite_in(), reliable=False, now=0.0)
    txn.send_response(in_resp(180, "Ringing"), 0.0)
    assert txn.transport_error(0.1) == []
    assert txn.terminated and txn.next_timer() is None
    assert txn.send_response(in_resp(200, "OK"), 0.2) == []
    assert txn.receive_request(invite_in(), 0.3) == []
    assert txn.receive_request(sip(ACK_IN), 0.3) == []
    assert txn.handle_timer(100.0) == []


def test_invite_server_transport_error_in_completed_stops_timers():
    txn = ServerTransaction(invite_in(), reliable=False, now=0.0)
    txn.send_response(in_resp(486, "Busy Here"), 0.0)
    assert txn.transport_error(0.1) == []
    assert txn.terminated
    assert drive(txn, 100.0) == []


# === non-INVITE server (17.2.2) ==============================================================
def test_non_invite_server_trying_absorbs_retransmissions():
    opt = sip(OPTIONS_IN)
    txn = ServerTransaction(opt, reliable=False, now=0.0)
    assert (txn.state, txn.is_invite, txn.key) == (
        "trying", False, ("z9hG4bKopt5c1", "52.114.76.76", 5061, "OPTIONS"))
    assert txn.receive_request(sip(OPTIONS_IN), 0.5) == []
    assert txn.next_timer() is None


def test_non_invite_server_proceeding_resends_provisional_then_final_timer_j_udp():
    txn = ServerTransaction(sip(OPTIONS_IN), reliable=False, now=0.0)
    trying = options_resp(100, "Trying")
    assert txn.send_response(trying, 0.1) == [Transmit(trying)]
    assert txn.state == "proceeding"
    assert txn.receive_request(sip(OPTIONS_IN), 0.5) == [Transmit(trying)]
    ok = options_resp(200, "OK")
    assert txn.send_response(ok, 1.0) == [Transmit(ok)]
    assert txn.state == "completed"
    assert txn.next_timer() == 33.0  # Timer J = 64*T1
    assert txn.receive_request(sip(OPTIONS_IN), 2.0) == [Transmit(ok)]
    assert txn.send_response(options_resp(500, "Server Internal Error"), 2.0) == []
    assert txn.send_response(options_resp(100, "Trying"), 2.0) == []
    assert txn.receive_request(sip(OPTIONS_IN), 3.0) == [Transmit(ok)]
    assert drive(txn, 32.9) == []
    assert txn.state == "completed"
    assert drive(txn, 100.0) == []
    assert txn.terminated and txn.next_timer() is None
    assert txn.receive_request(sip(OPTIONS_IN), 40.0) == []


def test_non_invite_server_final_from_trying_tcp_terminates_at_once_timer_j_zero():
    txn = ServerTransaction(sip(OPTIONS_IN), reliable=True, now=0.0)
    ok = options_resp(200, "OK")
    assert txn.send_response(ok, 0.1) == [Transmit(ok)]
    assert txn.terminated and txn.next_timer() is None
    assert txn.last_response is ok
    assert txn.send_response(options_resp(200, "OK"), 0.2) == []


def test_non_invite_server_ack_is_not_its_business_and_transport_error():
    txn = ServerTransaction(sip(OPTIONS_IN), reliable=False, now=0.0)
    assert txn.receive_request(sip(ACK_IN), 0.1) == []
    assert txn.state == "trying"
    txn.send_response(options_resp(200, "OK"), 0.2)
    assert txn.receive_request(sip(ACK_IN), 0.3) == []
    assert txn.state == "completed" and txn.next_timer() == 32.2
    assert txn.transport_error(0.4) == []
    assert txn.terminated and txn.next_timer() is None


def test_cancel_server_transaction_is_non_invite():
    txn = ServerTransaction(sip(CANCEL_IN), reliable=True, now=0.0)
    assert (txn.state, txn.is_invite, txn.key[3]) == ("trying", False, "CANCEL")


# === constants ===============================================================================
def test_default_timers_are_rfc_3261_table_4():
    assert (T1, T2, T4) == (0.5, 4.0, 5.0)
    assert DEFAULT_TIMERS == Timers(0.5, 4.0, 5.0, 32.0)
