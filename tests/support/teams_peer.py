"""The lab's simulated Teams (teamsbc/lab/teams.py) with what the e2e tests add around it.

Why not sipp behind stunnel: sipp answers a request on the call's FIRST socket, not on the
connection the request came on, so once the SBC restarts (its TLS connections die) a Teams-side
sipp can no longer answer. Real Teams (reference section 2) opens its own TLS connections to the
SBC for ITS requests and answers the SBC's requests on the connection they arrived on; the lab
peer does exactly that, with real mutual TLS and the test PKI.

What the tests add:
- ``rec.msg``: every recorded message ALSO read by the tests' own parser
  (tests.support.sipp.parse_sip_message), so assertions about what the SBC sent do not rest on
  teamsbc's parser alone (the peer itself runs on it: teamsbc.sip);
- a wait that times out fails the test (AssertionError) with the transcript;
- the test PKI instead of paths, and the test names the tests import.

    peer = TeamsPeer(pki, sbc_port=sbc.teams_port)   # sbc_host="127.0.0.1", sbc_fqdn=pki.sbc_fqdn
    await peer.listen(port)        # "Teams" TLS listener (Teams certificate, client cert REQUIRED);
                                   # point the SBC's teams.resolve for sip/sip2/sip3/sip-du-a-us here
    await peer.listen(port2, cert=chain, key=key)   # more listeners (one per proxy), own certificate
    await peer.stop_listening(port2)                # that listener refuses connections again; its
                                                    # accepted connections are closed
    peer.options_code = 503        # answer to OPTIONS from the SBC (None: never answer); default 200
    rec = await peer.wait_for(lambda r: r.msg.method == "ACK", timeout=10)
    rec.msg        # tests.support.sipp.SipMessage (start_line, headers, header(), values(), ...)
    rec.sip        # the same message as teamsbc.sip parsed it (what the peer acted on)
    rec.conn       # the Connection it came on: .direction "inbound" (the SBC opened it) or
                   # "outbound" (the peer opened it), .id, .sni, .peercert, .peer_names, .tls_version,
                   # .local_port (for inbound: the listener port it was accepted on)
    peer.received  # every Received, in order; peer.connections: every Connection ever made

    # Teams as callee (requests from the SBC, answered on the connection they came on):
    # INVITE -> 100, 180, 200 + SDP (To-tag, CONTACT at an api-du host, RECORD-ROUTE = Teams'
    # edge on top of the INVITE's); re-INVITE -> 200 + SDP; BYE -> 200 (481 for an unknown
    # dialog); CANCEL -> 200 (+ 487 for an unanswered INVITE); ACK -> recorded; others -> 200.
    peer.answers.append(Answer(503, ringing=False, retry_after=30))   # next new INVITE only
    peer.default_answer = Answer(None)                                # never answer (ring only)
    peer.answers.append(Answer(sdp=lambda invite: "v=0..."))  # own SDP in the 200 (a str or a
                                   # function of the INVITE's Received), also for re-INVITEs
    call = peer.calls[call_id]     # Call for every dialog (role "uas" for calls from the SBC)

    # Teams as caller (on the peer's own connection, reopened if the SBC closed it):
    call = await peer.invite(to="+14255550100", from_="+12065550123")  # waits for the final
    call.status, call.final, call.provisionals, call.route, call.remote_target
    await call.bye()               # -> the final Received (200); call.reinvite(sdp) likewise
    resp = await peer.options()    # out-of-dialog OPTIONS to sip:SBC_FQDN:PORT
    text, call_id = peer.options_request()   # the same, to send by hand: conn.send(text)
    conn = await peer.connect()    # the outbound connection (raises ssl.SSLError on a bad handshake)

    peer.describe()                # transcript for failure messages
    await peer.close()

Header names in everything the peer sends are UPPER CASE, like Teams. Every wait is bounded.
"""
from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from teamsbc.lab.teams import (ANSWER_CONTACT, CALLER_CONTACT, EDGE_RR, EDGE_URI, Answer, Call,
                               Connection, NoMessage, TeamsProxy)
from teamsbc.lab.teams import Received as LabReceived

from .sipp import SipMessage, parse_sip_message

__all__ = ["TeamsPeer", "Call", "Answer", "Connection", "Received", "EDGE_RR", "EDGE_URI",
           "ANSWER_CONTACT", "CALLER_CONTACT", "uri_of", "tag_of"]


@dataclass(repr=False)
class Received(LabReceived):
    msg: SipMessage = field(init=False)

    def __post_init__(self) -> None:
        start, headers, body = parse_sip_message(self.raw)
        self.msg = SipMessage(start, headers, body, self.raw, direction="received", transport="TLS")


class TeamsPeer(TeamsProxy):
    received_type = Received

    def __init__(self, pki, *, sbc_host: str = "127.0.0.1", sbc_port: int, sbc_fqdn: str | None = None,
                 cert: Path | None = None, key: Path | None = None,
                 tls_max: ssl.TLSVersion | None = None):
        """``cert``/``key`` replace the Teams certificate on the peer's OWN connections (e.g.
        pki.rogue_fullchain/pki.rogue_key); ``tls_max`` caps the TLS version (both directions)."""
        super().__init__(pki.teams_fullchain, pki.teams_key, pki.ca_cert, sbc_fqdn=sbc_fqdn or pki.sbc_fqdn,
                         sbc_host=sbc_host, sbc_port=sbc_port, client_certificate=cert, client_key=key,
                         tls_max=tls_max)
        self.pki = pki

    async def wait_for(self, predicate: Callable[[Received], object], timeout: float = 10.0,  # type: ignore[override]
                       what: str = "a message") -> Received:
        try:
            return await super().wait_for(predicate, timeout, what)  # type: ignore[arg-type,return-value]
        except NoMessage:
            raise AssertionError(f"TeamsPeer: no {what} within {timeout}s\n{self.describe()}") from None


# --- reading header values for assertions, independent of teamsbc.sip (like rec.msg)
def uri_of(value: str) -> str:
    """The URI of a name-addr or addr-spec header value."""
    if "<" in value:
        return value[value.index("<") + 1: value.index(">")]
    return value.split(";", 1)[0].strip()


def tag_of(value: str | None) -> str | None:
    if not value:
        return None
    params = value[value.index(">") + 1:] if ">" in value else value
    m = re.search(r";\s*tag=([^;\s]+)", params, re.I)
    return m.group(1) if m else None
