"""The requests the SBC originates to end a dialog it will not keep, sans-IO.

    ack_and_bye      a 2xx the SBC will not relay (its media failed, the caller is gone): ACK
                     it and BYE the callee, along the callee's side of the route set (RFC 3261
                     13.2.2.4, 15.1.1), From/To/Call-ID of that dialog, CSeq after the INVITE's
    bye_to_caller    a call the SBC ends in the callee's place (a delayed offer whose ACK never
                     brought the answer): BYE toward the caller along its own Record-Route, From
                     = the callee's To with its tag (RFC 3261 12.1.1, 12.2.1.1)

Every request passes the policy's egress like any other (Teams' rules on the Teams leg).
"""
from __future__ import annotations

from typing import Callable

from .decisions import Destination, DialogHop, RoutingPolicy
from .sip.build import branch, new_request
from .sip.message import Request, Response


def _request(policy: RoutingPolicy, leg: str, entropy: Callable[[int], bytes], method: str,
             hop: DialogHop, from_: str, to: str, call_id: str, cseq: int,
             identity: str | None) -> Request:
    via = policy.legs[leg].via(hop.dest.transport, branch(entropy(8).hex()))
    req = new_request(method, hop.target, via=via, from_=from_, to=to, call_id=call_id, cseq=cseq,
                      routes=hop.routes)
    policy.egress(req, leg, identity)
    return req


def ack_and_bye(policy: RoutingPolicy, leg: str | None, entropy: Callable[[int], bytes],
                invite: Request, resp: Response,
                identity: str | None) -> tuple[Request, Request, Destination] | None:
    """(ACK, BYE, where both go) for the 2xx `resp` to our `invite` on `leg`, or None."""
    hop = policy.dialog_hop(resp, leg) if leg else None
    if hop is None or leg is None:
        return None
    from_, to, number = invite.headers.get("from") or "", resp.headers.get("to") or "", invite.cseq.number
    return (_request(policy, leg, entropy, "ACK", hop, from_, to, resp.call_id, number, identity),
            _request(policy, leg, entropy, "BYE", hop, from_, to, resp.call_id, number + 1, identity),
            hop.dest)


def bye_to_caller(policy: RoutingPolicy, leg: str, entropy: Callable[[int], bytes],
                  invite: Request, answer: Response) -> tuple[Request, Destination] | None:
    """(BYE, where it goes) toward the caller of `invite` (as received) on `leg`, in the place
    of the callee that sent `answer`. The callee has sent no request in this dialog yet, so the
    caller has no remote CSeq to compare with (RFC 3261 12.2.2): 1 will do."""
    hop = policy.caller_hop(invite, leg)
    if hop is None:
        return None
    return (_request(policy, leg, entropy, "BYE", hop, answer.headers.get("to") or "",
                     invite.headers.get("from") or "", invite.call_id, 1, None), hop.dest)
