"""What the lab peers say on the wire, built and read with teamsbc.sip: responses to a request,
SDP offers and answers, Teams' way of writing header names, and the few header values a user
agent has to look at (tags, URIs).

    resp = respond(req, 180, to_tag="a1b2", extra=[("contact", "<sip:...>")])
    data = teams_bytes(resp)      # TO: ..., CONTACT: ... (Teams writes header names in capitals)
    sdp_offer("52.113.0.10", 50012, srtp=True)
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable

from ..sip.message import Headers, Message, Request, Response, make_response
from ..sip.uri import parse_name_addr

# RFC 3261 21 (the ones the lab peers send)
REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
    400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 500: "Server Internal Error",
    503: "Service Unavailable", 504: "Server Time-out", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}


def respond(req: Request, code: int, reason: str | None = None, *, to_tag: str | None = None,
            extra: Iterable[tuple[str, str]] = (), body: str = "") -> Response:
    """RFC 3261 8.2.6.2 (`make_response`), then `extra` (lower-case names) and an SDP body."""
    resp = make_response(req, code, reason or REASONS.get(code, "Unknown"), to_tag)
    for name, value in extra:
        resp.headers.add(name, value)
    return with_sdp(resp, body)


def with_sdp(msg: Message, body: str) -> Message:
    """The message with `body` as its SDP (Content-Length is written when serialised)."""
    if body:
        msg.headers.add("content-type", "application/sdp")
        msg.body = body.encode()
    return msg


def teams_bytes(msg: Message) -> bytes:
    """The message as Teams writes it: every header name in capitals (TO:, CALL-ID:, ...)."""
    upper = Headers([(name.lower(), name.upper(), value) for name, value in msg.headers])
    copy: Message
    if isinstance(msg, Request):
        copy = Request(msg.method, msg.uri, upper, msg.body)
    else:
        copy = Response(msg.status, msg.reason, upper, msg.body)  # type: ignore[attr-defined]
    # the serialiser writes Content-Length itself, as the last header line
    return copy.to_bytes().replace(b"\r\nContent-Length: ", b"\r\nCONTENT-LENGTH: ", 1)


def uri_of(value: str) -> str:
    """The URI of a name-addr or addr-spec header value (Contact, Record-Route, To...); ""
    for no value."""
    return parse_name_addr(value).uri if value.strip() else ""


def tag_of(value: str | None) -> str | None:
    """The tag parameter of a From/To value, None when it has none."""
    return parse_name_addr(value).tag if value else None


def new_tag() -> str:
    return secrets.token_hex(6)


def sdp_offer(addr: str, port: int, *, srtp: bool, label: str | None = None) -> str:
    """An audio SDP offer or answer: Teams' kind (`srtp`: RTP/SAVP with an SDES key and
    rtcp-mux, the only media Teams accepts) or a PBX's (plain RTP/AVP)."""
    lines = ["v=0", f"o=- {secrets.randbelow(10**9)} 0 IN IP4 {addr}", f"s={'session' if srtp else '-'}",
             f"c=IN IP4 {addr}", "t=0 0", f"m=audio {port} {'RTP/SAVP' if srtp else 'RTP/AVP'} 0 8 101"]
    if srtp:
        lines.append("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + secrets.token_urlsafe(30)[:40] + "|2^31")
        lines.append("a=rtcp-mux")
    lines += ["a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:101 telephone-event/8000",
              "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv"]
    if label:
        lines.append(f"a=label:{label}")
    return "\r\n".join(lines + [""])
