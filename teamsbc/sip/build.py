"""Requests built from parts (RFC 3261 8.1.1, 9.1, 17.1.1.3), sans-IO.

Every request teamsbc originates (keep-alive OPTIONS, CANCEL, the ACK and BYE that end a
branch we will not relay, doctor's probes, the lab peers) is built here, so the header order
and the mandatory headers are written once.

    new_request("OPTIONS", "sip:sip.pstnhub.microsoft.com:5061;transport=tls",
                via="SIP/2.0/TLS sbc.example.com:5061;branch=z9hG4bK-1",
                from_="<sip:sbc.example.com>;tag=a1", to="<sip:sip.pstnhub.microsoft.com>",
                call_id="c1@sbc.example.com", cseq=1, extra=[("contact", "<sip:...>")])
"""
from __future__ import annotations

from collections.abc import Iterable

from .errors import ProtocolError
from . import grammar as g
from .grammar import MAGIC_COOKIE
from .message import Headers, Request, Response


def branch(token: str) -> str:
    """An RFC 3261 branch (8.1.1.7: starts with the magic cookie) from a unique token."""
    return f"{MAGIC_COOKIE}-{token}"


def new_request(method: str, uri: str, *, via: str, from_: str, to: str, call_id: str,
                cseq: int, routes: Iterable[str] = (), max_forwards: int = 70,
                extra: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Request:
    """A request with the mandatory headers of 8.1.1 in the usual order, then `extra`
    (lower-case names). The Content-Length is written by the serialiser."""
    h = Headers()
    h.add("via", via)
    h.add("max-forwards", str(max_forwards))
    for r in routes:
        h.add("route", r)
    h.add("from", from_)
    h.add("to", to)
    h.add("call-id", call_id)
    h.add("cseq", f"{cseq} {method}")
    for name, value in extra:
        h.add(name, value)
    return Request(method, uri, h, body)


def build_cancel(invite: Request) -> Request:
    """RFC 3261 9.1: same Request-URI, Call-ID, To, From, CSeq number and top Via (the branch
    matches the INVITE's client transaction) and the INVITE's Route set; method CANCEL."""
    return new_request("CANCEL", invite.uri, via=invite.headers.get("via") or "",
                       from_=invite.headers.get("from") or "", to=invite.headers.get("to") or "",
                       call_id=invite.headers.get("call-id") or "", cseq=invite.cseq.number,
                       routes=invite.headers.get_all("route"))


def build_ack(request: Request, response: Response) -> Request:
    """RFC 3261 17.1.1.3: the ACK the INVITE client transaction sends for a 300-699 response.

    Same Request-URI, Call-ID, From and CSeq number as the INVITE, CSeq method ACK, the To of
    the response (it carries the tag), only the top Via of the INVITE (the one of this hop, so
    the branch matches the server transaction), the INVITE's Route set, Max-Forwards 70, and
    no body. The ACK for a 2xx is end-to-end and none of the transaction's business.
    """
    return new_request("ACK", request.uri, via=request.headers.get("via") or "",
                       from_=request.headers.get("from") or "", to=response.headers.get("to") or "",
                       call_id=request.headers.get("call-id") or "", cseq=request.cseq.number,
                       routes=request.headers.get_all("route"))


def bare_error_response(data: bytes, err: ProtocolError) -> bytes | None:
    """`400 <reason>` (the error's status) built from the raw header lines of a request that
    did not parse, when the headers a response needs (8.2.6.2) can be found; None otherwise
    (responses are never answered)."""
    head = data.split(b"\r\n\r\n", 1)[0][:8192]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if not lines or lines[0].startswith("SIP/") or " " not in lines[0]:
        return None
    wanted: dict[str, list[str]] = {"via": [], "v": [], "from": [], "f": [], "to": [], "t": [],
                                    "call-id": [], "i": [], "cseq": []}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        k = name.strip().lower()
        if colon and k in wanted:
            wanted[k].append(value.strip())
    vias = wanted["via"] + wanted["v"]
    fr = (wanted["from"] + wanted["f"])[:1]
    to = (wanted["to"] + wanted["t"])[:1]
    cid = (wanted["call-id"] + wanted["i"])[:1]
    cseq = wanted["cseq"][:1]
    if not (vias and fr and to and cid and cseq):
        return None
    # control characters (the likely reason of the 400) are never echoed back
    vias, fr, to, cid, cseq = ([g.CONTROL_RE.sub("", v) for v in vs] for vs in (vias, fr, to, cid, cseq))
    out = [f"SIP/2.0 {err.status} {err.reason}"]
    out += [f"Via: {v}" for v in vias]
    out += [f"From: {fr[0]}", f"To: {to[0]}", f"Call-ID: {cid[0]}", f"CSeq: {cseq[0]}",
            "Content-Length: 0", "", ""]
    return "\r\n".join(out).encode()
