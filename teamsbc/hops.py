"""What a proxy checks and stamps about hops, before any routing (RFC 3261 16.3, 16.6, 18.2.1,
RFC 3581), the 2xx it forwards statelessly (16.7 step 10), and the answer to what cannot be
parsed. Pure functions; the proxy passes its legs, its secret and its routing policy."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from .decisions import Leg, RoutingPolicy, Send, Source
from .sip.build import bare_error_response
from .sip.errors import ParseError
from .sip.message import Request, Response
from .sip.uri import Via, parse_via

log = logging.getLogger("teamsbc.proxy")


def stamp_via(req: Request, addr: tuple[str, int]) -> None:
    """RFC 3261 18.2.1 received= and RFC 3581 rport on the top Via of a request from `addr`."""
    via = req.top_via
    received = via.host.strip("[]") != addr[0]
    rport = "rport" in via.params and via.params["rport"] is None
    if received or rport:
        via = Via(via.transport, via.host, via.port, dict(via.params), via.protocol)  # the view is shared
        if received:
            via.params["received"] = addr[0]
        if rport:
            via.params["rport"] = str(addr[1])
        req.set_first_viewed("via", str(via), via)


def loop_hash(req: Request, secret: str) -> str:
    """16.6 step 8: what goes into our branch so a loop is recognised; a spiral changes the
    R-URI, a loop does not."""
    h = hashlib.blake2s(digest_size=6)
    for part in (req.uri, req.headers.get("from") or "", req.headers.get("to") or "",
                 req.call_id, str(req.cseq.number), secret):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def is_my_via(value: str, legs: Iterable[Leg]) -> bool:
    try:
        via = parse_via(value)
    except ParseError:
        return False
    return any(via.host.lower() == leg.via_host.lower() and (via.port or 5060) == leg.via_port
               for leg in legs)


def forwardable(req: Request, loop: str, legs: Iterable[Leg]) -> tuple[int, str] | None:
    """RFC 3261 16.3: Max-Forwards and loop detection: None, or the (status, reason) to answer."""
    mf = req.headers.get("max-forwards")
    if mf is not None and int(mf) <= 0:
        if req.method == "OPTIONS":
            return None  # 16.3 step 3: we may answer an OPTIONS addressed to us
        return 483, "Too Many Hops"
    legs = list(legs)
    for v in req.headers.get_all("via")[1:]:
        if loop in v and is_my_via(v, legs):
            return 482, "Loop Detected"
    return None


def stray_2xx(resp: Response, src: Source, policy: RoutingPolicy, legs: Iterable[Leg]) -> list[Send]:
    """A 2xx to INVITE whose transaction is gone (restart, late retransmission) is still
    forwarded along its Via (RFC 3261 16.7 step 10 / 18.2.2); anything else is dropped."""
    if not (200 <= resp.status < 300 and resp.cseq.method == "INVITE"):
        return []
    vias = resp.headers.get_all("via")
    if len(vias) < 2 or not is_my_via(vias[0], legs):
        return []
    up = Response(resp.status, resp.reason, resp.headers.copy(), resp.body)
    up.headers.pop_first("via")
    dest = policy.stray_destination(up, src)
    if dest is None:
        return []
    policy.egress(up, dest.leg, None)
    return [Send(up.to_bytes(), dest)]


def answer_unparsable(data: bytes, src: Source, err: ParseError) -> list[Send]:
    """Bad input never crashes anything: 400 when a response can be built (RFC 3261 16.3:
    the request is not forwarded), else only a log line."""
    resp = bare_error_response(data, err)
    log.info("unparsable message from %s:%d (%s): %s", src.addr[0], src.addr[1], src.transport, err.reason)
    return [Send(resp, src)] if resp is not None else []
