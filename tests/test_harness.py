"""Proof that the end-to-end harness works WITHOUT the SBC.

(a)/(b) every sipp scenario pair, caller -> callee directly, over UDP and TCP;
(c)     a "Teams" caller (TCP) -> stunnel TLS client -> mutual TLS -> stunnel TLS server ->
        callee (TCP), with the test PKI; the callee sees the INVITE and its headers;
(c')    a Teams-side sipp receives an in-dialog BYE on a TLS connection it did not open;
(d)     negatives: an unrelated CA's client certificate, no client certificate, and a server
        name mismatch are refused (the call fails); a wrong final code fails the call.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import threading
import time
from collections import defaultdict

import pytest

from tests.support.ports import free_port, free_ports, port_is_free
from tests.support.sipp import (
    TEAMS_EDGE_RR,
    Sipp,
    SippResult,
    parse_sip_message,
    teams_callee,
    teams_caller,
)
from tests.support.stunnel import Stunnel, TeamsClient, TeamsServer

CALLS = 3
TEAMS_EDGE_URI = "<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"

# (uac scenario, uas scenario, keys, requests the callee must see per call, responses the
#  caller must see per call)
PAIRS = [
    pytest.param("uac.xml", "uas.xml", {}, ["INVITE", "ACK", "BYE"], [180, 200, 200],
                 id="caller-hangs-up"),
    pytest.param("uac_callee_bye.xml", "uas_bye.xml", {}, ["INVITE", "ACK"], [180, 200],
                 id="callee-hangs-up"),
    pytest.param("uac_cancel.xml", "uas_cancel.xml", {}, ["INVITE", "CANCEL", "ACK"],
                 [180, 200, 487], id="cancel"),
    pytest.param("uac_reject.xml", "uas_reject.xml", {"code": 486}, ["INVITE", "ACK"],
                 [180, 486], id="reject-486"),
    pytest.param("uac_reject.xml", "uas_reject.xml", {"code": 603}, ["INVITE", "ACK"],
                 [180, 603], id="reject-603"),
    pytest.param("uac_reinvite.xml", "uas_reinvite.xml", {},
                 ["INVITE", "ACK", "INVITE", "ACK", "BYE"], [180, 200, 200, 200], id="hold-reinvite"),
]


# --------------------------------------------------------------------------- helpers


def flows(res: SippResult) -> dict[str, list]:
    """Per Call-ID, what sipp received in order: request methods and response codes
    (exact retransmissions dropped)."""
    out: dict[str, list] = defaultdict(list)
    seen = set()
    for m in res.messages_received():
        if m.raw in seen:
            continue
        seen.add(m.raw)
        out[m.call_id].append(m.method if m.is_request else m.status)
    return dict(out)


def run_pair(procs, tmp_path, uac_scen, uas_scen, *, transport, uac_port, uac_remote, uas_port,
             calls=CALLS, uac_kw=None, uas_kw=None, keys=None):
    """Start the callee (background server), run the caller to the end, wait for the callee."""
    uac_kw = dict(uac_kw or {})
    uas_kw = dict(uas_kw or {})
    for kw in (uac_kw, uas_kw):
        kw["keys"] = {**(keys or {}), **kw.get("keys", {})}
    common = dict(workdir=tmp_path, transport=transport, calls=calls, rate=20, procs=procs,
                  timeout_s=20, recv_timeout_ms=5000, duration_ms=50)
    uas = Sipp(uas_scen, local_port=uas_port, **common, **uas_kw).start()
    uac = Sipp(uac_scen, local_port=uac_port, remote=uac_remote, **common, **uac_kw)
    uac_res = uac.run()
    uas_res = uas.wait(timeout=15)
    return uac_res, uas_res


def check_flows(uac_res, uas_res, want_uas, want_uac, calls=CALLS):
    uas_flows, uac_flows = flows(uas_res), flows(uac_res)
    assert len(uas_flows) == calls, uas_flows
    assert set(uas_flows) == set(uac_flows)
    for call_id, got in uas_flows.items():
        assert [x for x in got if isinstance(x, str)] == want_uas, (call_id, got)
    for call_id, got in uac_flows.items():
        assert [x for x in got if isinstance(x, int)] == want_uac, (call_id, got)


def both(uac_res, uas_res) -> str:
    return uac_res.describe() + "\n" + uas_res.describe()


# --------------------------------------------------------------------------- (a), (b)


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
@pytest.mark.parametrize("uac_scen,uas_scen,keys,want_uas,want_uac", PAIRS)
def test_sipp_pair_direct(procs, tmp_path, transport, uac_scen, uas_scen, keys, want_uas, want_uac):
    p_uas, p_uac = free_ports(2)
    uac_res, uas_res = run_pair(
        procs, tmp_path, uac_scen, uas_scen, transport=transport, uac_port=p_uac,
        uac_remote=("127.0.0.1", p_uas), uas_port=p_uas, keys=keys)
    assert uac_res.ok and uas_res.ok, both(uac_res, uas_res)
    assert uac_res.successful == CALLS and uas_res.successful == CALLS
    check_flows(uac_res, uas_res, want_uas, want_uac)
    # the callee answered with its own SDP, the caller offered one
    invite = uas_res.received("INVITE")[0]
    assert invite.header("content-type") == "application/sdp"
    assert "m=audio" in invite.body
    if uac_scen == "uac_reinvite.xml":
        reinvites = [m for m in uas_res.received("INVITE") if m.header("cseq") == "2 INVITE"]
        assert len(reinvites) == CALLS
        assert all("a=inactive" in m.body and " 2 IN IP4 " in m.body for m in reinvites)
        assert all("a=inactive" in m.body for m in uac_res.received(200) if m.header("cseq") == "2 INVITE")


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_route_set_follows_record_route(procs, tmp_path, transport):
    """With Record-Route present, in-dialog requests carry Route and target the Contact.

    The caller plays Teams (adds Teams' edge Record-Route to its INVITE, which it must NOT route
    through itself); the callee adds one more Record-Route above the copied one, like a proxy
    would. Caller's ACK/BYE: Route = the callee's extra hop only. Callee's BYE: Route = the
    INVITE's Record-Route (Teams' edge), R-URI = the caller's Contact."""
    p_uas, p_uac = free_ports(2)
    proxy_rr = f"<sip:127.0.0.1:{free_port()};lr;r2=on>"
    caller = teams_caller()
    uac_res, uas_res = run_pair(
        procs, tmp_path, "uac_callee_bye.xml", "uas_bye.xml", transport=transport,
        uac_port=p_uac, uac_remote=("127.0.0.1", p_uas), uas_port=p_uas, calls=1,
        uac_kw=caller, uas_kw={"extra_headers": [f"Record-Route: {proxy_rr}"]})
    assert uac_res.ok and uas_res.ok, both(uac_res, uas_res)

    invite = uas_res.received("INVITE")[0]
    assert invite.values("record-route") == [TEAMS_EDGE_URI]
    assert invite.request_uri == "sip:+14255550100@sbc.example.com:5061;user=phone;transport=tls"
    assert invite.header("via").startswith("SIP/2.0/TLS ")
    # caller's ACK: through the callee's extra hop, not through its own edge entry
    ack = uas_res.received("ACK")[0]
    assert ack.values("route") == [proxy_rr], ack.raw
    assert ack.request_uri.startswith(f"sip:+14255550100@127.0.0.1:{p_uas}")
    # the 200 the caller got: extra hop on top of the copied Record-Route
    ok = [m for m in uac_res.received(200) if m.header("cseq") == "1 INVITE"][0]
    assert ok.values("record-route") == [proxy_rr, TEAMS_EDGE_URI]
    # callee's BYE: route set from the INVITE, target = the caller's Contact
    bye = uac_res.received("BYE")[0]
    assert bye.values("route") == [TEAMS_EDGE_URI], bye.raw
    assert bye.request_uri == caller["keys"]["contact_uri"]


@pytest.mark.e2e
def test_caller_keeps_a_callee_teams_record_route(procs, tmp_path):
    """A caller that did not record-route itself keeps every Route entry, also a
    *.pstnhub.microsoft.com one that the (Teams) callee put there."""
    p_uas, p_uac = free_ports(2)
    uac_res, uas_res = run_pair(
        procs, tmp_path, "uac.xml", "uas.xml", transport="t1", uac_port=p_uac,
        uac_remote=("127.0.0.1", p_uas), uas_port=p_uas, calls=1, uas_kw=teams_callee())
    assert uac_res.ok and uas_res.ok, both(uac_res, uas_res)
    assert uas_res.received("ACK")[0].values("route") == [TEAMS_EDGE_URI]
    bye = uas_res.received("BYE")[0]
    assert bye.values("route") == [TEAMS_EDGE_URI]
    assert bye.request_uri == teams_callee()["keys"]["contact_uri"]


@pytest.mark.e2e
def test_wrong_final_code_fails_the_call(procs, tmp_path):
    """The harness can fail: the caller expects 603, the callee sends 486."""
    p_uas, p_uac = free_ports(2)
    uac_res, uas_res = run_pair(
        procs, tmp_path, "uac_reject.xml", "uas_reject.xml", transport="u1", uac_port=p_uac,
        uac_remote=("127.0.0.1", p_uas), uas_port=p_uas, calls=1,
        uac_kw={"keys": {"code": 603}}, uas_kw={"keys": {"code": 486}})
    assert uas_res.ok, uas_res.describe()  # the callee did its part (and got its ACK)
    assert not uac_res.ok
    assert uac_res.returncode != 0 and uac_res.failed == 1 and uac_res.successful == 0
    assert "final response 486, expected 603" in uac_res.log_text()


# --------------------------------------------------------------------------- (c) TLS


def tls_chain(tmp_path, procs, pki, *, uas_port, client_kw=None, server_kw=None, tls_max=None):
    """One stunnel: teams-client (plain a -> TLS b) and teams-server (TLS b -> plain uas_port).
    The client checks the server's name against the Teams cert it is shown here."""
    a, b = free_ports(2)
    client_kw = {"check_host": "sip.pstnhub.microsoft.com", "tls_max": tls_max, **(client_kw or {})}
    server_kw = {"tls_max": tls_max, **(server_kw or {})}
    st = Stunnel(tmp_path, [
        TeamsClient.for_pki(pki, accept_port=a, connect_port=b, **client_kw),
        TeamsServer.for_pki(pki, accept_port=b, connect_port=uas_port, **server_kw),
    ], procs=procs).start()
    return st, a


@pytest.mark.e2e
@pytest.mark.parametrize("tls_max", [None, "TLSv1.2"], ids=["tls-any", "tls1.2"])
@pytest.mark.parametrize("uac_scen,uas_scen,keys,want_uas,want_uac",
                         [PAIRS[0], PAIRS[1], PAIRS[5]])
def test_teams_call_over_mutual_tls(procs, tmp_path, test_pki, tls_max,
                                    uac_scen, uas_scen, keys, want_uas, want_uac):
    p_uas, p_uac = free_ports(2)
    st, a = tls_chain(tmp_path, procs, test_pki, uas_port=p_uas, tls_max=tls_max)
    caller = teams_caller()
    uac_res, uas_res = run_pair(
        procs, tmp_path, uac_scen, uas_scen, transport="t1", uac_port=p_uac,
        uac_remote=("127.0.0.1", a), uas_port=p_uas, uac_kw=caller, keys=keys)
    assert uac_res.ok and uas_res.ok, both(uac_res, uas_res) + st.log_text()[-4000:]
    check_flows(uac_res, uas_res, want_uas, want_uac)

    # the callee saw the INVITE with the caller's headers, through the tunnel
    invites = [m for m in uas_res.received("INVITE") if m.header("cseq") == "1 INVITE"]
    assert len(invites) == CALLS
    sent = {m.call_id: m for m in uac_res.messages_sent()
            if m.method == "INVITE" and m.header("cseq") == "1 INVITE"}
    for inv in invites:
        assert inv.call_id in sent
        assert inv.request_uri == "sip:+14255550100@sbc.example.com:5061;user=phone;transport=tls"
        assert inv.header("from").startswith("<sip:+12065550123@sip.pstnhub.microsoft.com;user=phone>;tag=")
        assert inv.header("to") == "<sip:+14255550100@sbc.example.com:5061;user=phone>"
        assert inv.values("record-route") == [TEAMS_EDGE_URI]
        assert inv.header("contact").startswith("<sip:api-du-a-usea.pstnhub.microsoft.com:443;")
        assert inv.header("max-forwards") == "70"
        assert inv.header("content-type") == "application/sdp"
        assert int(inv.header("content-length")) == len(inv.body.encode())
        assert inv.body == sent[inv.call_id].body
    # no Route toward the callee: the only Record-Route was the caller's own
    assert all(not m.values("route") for m in uas_res.received("ACK"))

    log = st.log_text()
    assert "Certificate accepted at depth=0: CN=sip.pstnhub.microsoft.com" in log
    if tls_max == "TLSv1.2":
        assert re.search(r"TLSv1\.2 ciphersuite: ECDHE-RSA-AES(128|256)-GCM-SHA(256|384)", log), log[-3000:]


@pytest.mark.e2e
def test_teams_side_sipp_takes_bye_on_a_connection_it_did_not_open(procs, tmp_path, test_pki):
    """Teams opens its connection to the SBC; the SBC sends its in-dialog BYE on a NEW TLS
    connection it opens to Teams. The Teams-side sipp (TCP, listening on its -p port behind a
    stunnel teams-server) must take that BYE and finish the call."""
    pki = test_pki
    p_uac, sbc_port = free_ports(2)
    a, b = free_ports(2)
    st = Stunnel(tmp_path, [
        TeamsClient.for_pki(pki, accept_port=a, connect_port=sbc_port),  # checks sbc.example.com
        TeamsServer.for_pki(pki, accept_port=b, connect_port=p_uac, check_host=pki.sbc_fqdn),
    ], procs=procs).start()
    fake = FakeSbcHangsUp(pki, sbc_port, teams_port=b)
    fake.start()
    caller = teams_caller()
    uac = Sipp("uac_callee_bye.xml", workdir=tmp_path, local_port=p_uac, remote=("127.0.0.1", a),
               transport="t1", calls=1, procs=procs, timeout_s=15, recv_timeout_ms=5000, **caller)
    res = uac.run()
    fake.join(10)
    assert not fake.is_alive()
    assert fake.error is None, fake.error
    assert res.ok, res.describe() + st.log_text()[-4000:]
    # the ACK followed the route set: the SBC's Record-Route, not Teams' own edge entry
    assert fake.ack.values("route") == ["<sip:sbc.example.com:5061;transport=tls;lr>"]
    bye = res.received("BYE")[0]
    assert bye.values("route") == [TEAMS_EDGE_URI]
    assert fake.bye_response is not None and fake.bye_response.status == 200
    # sipp answers on the call's first socket, not on the connection the BYE came on
    assert fake.bye_response_connection in ("teams-opened", "sbc-opened")


class FakeSbcHangsUp(threading.Thread):
    """A scripted stand-in for the SBC on its Teams side: TLS server (SBC cert, Teams client
    cert required) that answers the INVITE, takes the ACK, then sends BYE on a NEW TLS
    connection to Teams (SBC cert as client cert) and waits for the 200."""

    def __init__(self, pki, port, *, teams_port):
        super().__init__(daemon=True)
        self.pki, self.port, self.teams_port = pki, port, teams_port
        self.error = None
        self.ack = None
        self.bye_response = None
        self.bye_response_connection = None
        srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        srv_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        srv_ctx.load_cert_chain(pki.sbc_fullchain, pki.sbc_key)
        srv_ctx.load_verify_locations(pki.ca_cert)
        srv_ctx.verify_mode = ssl.CERT_REQUIRED
        self.srv_ctx = srv_ctx
        cli_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cli_ctx.load_cert_chain(pki.sbc_fullchain, pki.sbc_key)
        cli_ctx.load_verify_locations(pki.ca_cert)
        self.cli_ctx = cli_ctx
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(4)
        self.listener.settimeout(10)

    @staticmethod
    def read_msg(conn, buf: bytearray, timeout=5.0):
        conn.settimeout(timeout)
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                m = re.search(rb"(?im)^(content-length|l)\s*:\s*(\d+)", bytes(buf[:head_end]))
                total = head_end + 4 + (int(m.group(2)) if m else 0)
                if len(buf) >= total:
                    raw = bytes(buf[:total]).decode()
                    del buf[:total]
                    return raw
            data = conn.recv(65536)
            if not data:
                raise ConnectionError("connection closed")
            buf += data

    def run(self):
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)
        finally:
            self.listener.close()

    def _run(self):
        from tests.support.sipp import SipMessage

        def msg(raw):
            start, headers, body = parse_sip_message(raw)
            return SipMessage(start, headers, body, raw)

        raw_conn, _ = self.listener.accept()
        c1 = self.srv_ctx.wrap_socket(raw_conn, server_side=True)
        buf1 = bytearray()
        invite = msg(self.read_msg(c1, buf1))
        assert invite.method == "INVITE", invite.start_line
        h = invite.header
        sbc_rr = "<sip:sbc.example.com:5061;transport=tls;lr>"
        rr = ", ".join([sbc_rr] + invite.values("record-route"))
        sdp = "v=0\r\no=sbc 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
        ok = (f"SIP/2.0 200 OK\r\nVia: {', '.join(invite.values('via'))}\r\nFrom: {h('from')}\r\n"
              f"To: {h('to')};tag=sbc1\r\nCall-ID: {h('call-id')}\r\nCSeq: {h('cseq')}\r\n"
              f"Record-Route: {rr}\r\nContact: <sip:+14255550100@sbc.example.com:5061;transport=tls>\r\n"
              f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
        c1.sendall(ok.encode())
        self.ack = msg(self.read_msg(c1, buf1))
        assert self.ack.method == "ACK", self.ack.start_line

        # BYE on a connection of our own, to Teams (stunnel teams-server -> sipp's -p port)
        c2 = self.cli_ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.teams_port), timeout=5),
                                      server_hostname="sip.pstnhub.microsoft.com")
        target = h("contact").strip("<>").split(">")[0]
        bye = (f"BYE {target} SIP/2.0\r\nVia: SIP/2.0/TLS sbc.example.com:5061;branch=z9hG4bKsbcbye1\r\n"
               f"Route: {', '.join(invite.values('record-route'))}\r\nMax-Forwards: 70\r\n"
               f"From: {h('to')};tag=sbc1\r\nTo: {h('from')}\r\nCall-ID: {h('call-id')}\r\n"
               f"CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n")
        c2.sendall(bye.encode())
        buf2 = bytearray()
        deadline = time.monotonic() + 5
        names = {c1: "teams-opened", c2: "sbc-opened"}
        bufs = {c1: buf1, c2: buf2}
        while self.bye_response is None and time.monotonic() < deadline:
            ready, _, _ = select.select([c1, c2], [], [], 0.2)
            for c in ready:
                try:
                    m = msg(self.read_msg(c, bufs[c], timeout=1))
                except (ConnectionError, socket.timeout):
                    continue
                if m.status is not None and m.header("cseq") == "1 BYE":
                    self.bye_response = m
                    self.bye_response_connection = names[c]
        for c in (c2, c1):
            try:
                c.close()
            except OSError:
                pass


# --------------------------------------------------------------------------- (d) refused TLS


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["rogue-client-cert", "no-client-cert", "wrong-server-name"])
def test_tls_refusals_fail_the_call(procs, tmp_path, test_pki, case):
    pki = test_pki
    client_kw = {
        "rogue-client-cert": {"cert": pki.rogue_fullchain, "key": pki.rogue_key},
        "no-client-cert": {"cert": None, "key": None},
        "wrong-server-name": {"check_host": "sbc.example.com"},  # but it is shown the Teams cert
    }[case]
    p_uas, p_uac = free_ports(2)
    st, a = tls_chain(tmp_path, procs, pki, uas_port=p_uas, client_kw=client_kw)
    uas = Sipp("uas.xml", workdir=tmp_path, local_port=p_uas, transport="t1", calls=1,
               procs=procs, timeout_s=20, recv_timeout_ms=3000).start()
    uac = Sipp("uac.xml", workdir=tmp_path, local_port=p_uac, remote=("127.0.0.1", a),
               transport="t1", calls=1, procs=procs, timeout_s=10, recv_timeout_ms=3000,
               outer_timeout_s=20)
    uac_res = uac.run()
    uas_res = uas.stop()
    assert not uac_res.ok, uac_res.describe()
    assert not uac_res.successful
    assert uas_res.messages_received() == [], uas_res.describe()
    log = st.log_text()
    expected = {
        "rogue-client-cert": "Rejected by CERT at depth=1: CN=unrelated rogue CA",
        "no-client-cert": "peer did not return a certificate",
        "wrong-server-name": "Rejected by CERT at depth=0: CN=sip.pstnhub.microsoft.com",
    }[case]
    assert expected in log, log[-4000:]


# --------------------------------------------------------------------------- support units


def test_parse_sip_message_headers():
    raw = ("INVITE sip:+1@sbc.example.com:5061;transport=tls SIP/2.0\r\n"
           "VIA: SIP/2.0/TLS 1.2.3.4:5061;branch=z9hG4bK1, SIP/2.0/TLS 5.6.7.8;branch=z9hG4bK2\r\n"
           "v: SIP/2.0/TLS 9.9.9.9;branch=z9hG4bK3\r\n"
           "RECORD-ROUTE: <sip:a;lr>, <sip:b;lr>\r\nRecord-Route: <sip:c;lr>\r\n"
           'f: "Doe, J" <sip:+2@x>;tag=1\r\nSubject: one\r\n two\r\n'
           "l: 4\r\n\r\nabcdEXTRA")
    start, headers, body = parse_sip_message(raw)
    assert start.startswith("INVITE ")
    assert headers["via"] == ["SIP/2.0/TLS 1.2.3.4:5061;branch=z9hG4bK1, SIP/2.0/TLS 5.6.7.8;branch=z9hG4bK2",
                              "SIP/2.0/TLS 9.9.9.9;branch=z9hG4bK3"]
    assert headers["from"] == ['"Doe, J" <sip:+2@x>;tag=1']
    assert headers["subject"] == ["one two"]
    assert body == "abcd"
    from tests.support.sipp import SipMessage

    m = SipMessage(start, headers, body, raw)
    assert m.values("Record-Route") == ["<sip:a;lr>", "<sip:b;lr>", "<sip:c;lr>"]
    assert len(m.values("v")) == 3
    assert m.method == "INVITE" and m.request_uri == "sip:+1@sbc.example.com:5061;transport=tls"


def test_free_ports_are_distinct_and_free_for_both_protocols():
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(port_is_free(p, "both") for p in ports)
