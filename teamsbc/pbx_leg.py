"""What the SBC does on the PBX leg beyond proxying, sans-IO. The proxy calls in at a few
points (a new INVITE relay, a response going to the PBX, a provisional from the PBX, a PRACK,
an ACK, a timer) and the PBX leg carries out its rules through `ProxyActions`:

    pbx.prack: strip         reliable provisionals end at the SBC, both ways (reliable.py)
    pbx.early_media          what the PBX hears while Teams rings (early_media.py)
    delayed offer            a PBX INVITE without SDP, with rtpengine (late_offer.py)

Per relayed INVITE the relay holds one `LegState` (relay.pbx); the machines that need a timer
(`Sender` retransmissions, `LateOffer` deadlines) sit on the proxy's timer heap, and those a
later request must find (a PRACK, the ACK of a delayed offer) are indexed here by Call-ID.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from .decisions import (PBX, TEAMS, Destination, Forward, MediaPlanner, MediaStep, Reply, RoutingPolicy,
                        Source)
from .early_media import Action, Heard, toward_pbx
from .events import CallEnded, CallEvent
from .late_offer import Event as LE
from .late_offer import LateOffer
from .late_offer import State as LS
from .relay import MediaOp
from .reliable import Acker, CSeqShift, Sender, requires_100rel
from .dialog_end import bye_to_caller
from .sip.build import branch as make_branch
from .sip.build import new_request
from .sip.message import Request, Response, make_response
from .tables import ServerEntry, Tables

log = logging.getLogger("teamsbc.proxy")

SDP_TYPE = "application/sdp"


class ProxyActions(Protocol):
    """What the PBX leg asks of the proxy (proxy.Proxy)."""

    t: Tables
    media: MediaPlanner | None

    def originate(self, req: Request, dest: Destination, now: float, on_result: Any,
                  timers: Any = None) -> list: ...

    def end_answered_branch(self, relay: Any, ctx: Any, resp: Response, now: float, out: list) -> None: ...

    def local_response(self, req: Request, reply: Reply, leg: str) -> Response: ...

    def cancel_branch(self, relay: Any, now: float, out: list) -> None: ...

    def final_local(self, relay: Any, status: int, reason: str, now: float, out: list,
                    headers: list | None = None) -> None: ...

    def await_media(self, kind: MediaOp, args: tuple, step: MediaStep, out: list) -> int: ...

    def send_stateless_ack(self, ack: Request, decision: Forward, out: list) -> None: ...

    def media_forget(self, relay: Any, out: list) -> None: ...

    def event(self, ev: CallEvent, now: float) -> None: ...


TIMERS = (Sender, LateOffer)   # ours on the proxy's timer heap (PbxLeg.due)


class LegState:
    """The PBX leg's own state for one relayed INVITE (both directions)."""

    __slots__ = ("heard", "sender", "acker", "late")

    def __init__(self) -> None:
        self.heard = Heard.NOTHING           # pbx.early_media (INVITE from the PBX)
        self.sender: Sender | None = None    # reliable provisionals toward the PBX
        self.acker: Acker | None = None      # the PBX's reliable provisionals (INVITE from Teams)
        self.late: LateOffer | None = None   # delayed offer (INVITE from the PBX without SDP)


def strip_sdp(msg: Request | Response) -> None:
    msg.body = b""
    msg.headers.remove("content-type")


def _ignore(*_: Any) -> None:
    pass


class PbxLeg:
    def __init__(self, proxy: ProxyActions, policy: RoutingPolicy, *,
                 entropy: Callable[[int], bytes], prack: str, early_media: str):
        self.proxy = proxy
        self.t = proxy.t
        self.policy = policy
        self.entropy = entropy
        self.prack_here = prack == "strip"
        self.early_media = early_media
        self.senders: dict[str, Sender] = {}      # Call-ID -> the INVITE's Sender
        self.late: dict[str, LateOffer] = {}      # Call-ID -> its delayed offer
        self.shift = CSeqShift()

    @property
    def media(self) -> MediaPlanner:
        media = self.proxy.media
        assert media is not None, "a delayed offer exists only with rtpengine"
        return media

    # ------------------------------------------------------------------ a new relay
    def start(self, relay: Any, src: Source, step: MediaStep | None) -> LegState | None:
        """The PBX leg's machines for a relayed INVITE that starts a call, if it needs any (an
        `Acker` comes with the first reliable provisional of the PBX: provisional())."""
        if src.leg != PBX:
            return None
        req = relay.request
        sender = late = None
        if self.prack_here and requires_100rel(req):
            first = 1 + int.from_bytes(self.entropy(4), "big") % (2**31 - 2)
            sender = self.senders[relay.call_id] = Sender(relay, req.cseq.number, first)
        if step is not None and step.late_offer:
            late = self.late[relay.call_id] = LateOffer(relay)
        if sender is None and late is None and self.early_media == "pass":
            return None
        st = LegState()
        st.sender, st.late = sender, late
        return st

    def due(self, obj: Sender | LateOffer, now: float, out: list) -> None:
        """A timer of ours on the proxy's heap."""
        if isinstance(obj, Sender):
            self._prack_due(obj, now, out)
        else:
            self._late_due(obj, now, out)

    # ------------------------------------------------------------------ answers
    def answer(self, sv: ServerEntry, req: Request, reply: Reply, leg: str, now: float, out: list) -> None:
        """A local answer; one with an rtpengine command (INFO DTMF -> play DTMF) waits for it."""
        if reply.media is not None and self.proxy.media is not None:
            self.proxy.await_media(MediaOp.REPLY, (sv, req, reply, leg), MediaStep(reply.media, True), out)
        else:
            self.t.respond(sv, self.proxy.local_response(req, reply, leg), now, out)

    def reply_done(self, sv: ServerEntry, req: Request, reply: Reply, leg: str, result: Any,
                   now: float, out: list) -> None:
        if isinstance(result, Exception):
            log.error("rtpengine %s failed (%s) call_id=%s", (reply.media or {}).get("command"),
                      result, req.call_id)
            reply = Reply(500, "Server Internal Error")
        self.t.respond(sv, self.proxy.local_response(req, reply, leg), now, out)

    # ------------------------------------------------------------------ toward the PBX (its INVITE)
    def respond(self, relay: Any, resp: Response, now: float, out: list) -> None:
        """A response to the relayed request, through its server transaction; toward the PBX
        (its INVITE) the PBX leg's rules first: early-media policy, no SDP in provisionals of a
        delayed offer, reliable provisionals."""
        cseq = relay.request.headers.get("cseq") or ""
        if resp.headers.get("cseq") != cseq:  # Teams' own number again (reliable.CSeqShift)
            resp.headers.set("cseq", cseq)
        st: LegState | None = relay.pbx
        if st is None or relay.src.leg != PBX:
            self.t.respond(relay.server, resp, now, out)
            return
        if 100 < resp.status < 200:
            if st.late is not None:
                strip_sdp(resp)  # the PBX offered nothing: an unreliable 18x is no offer
            action, st.heard = toward_pbx(self.early_media, st.heard, resp.status, bool(resp.body))
            if action is Action.DROP:
                return
            if action is Action.AS_180:
                resp.status, resp.reason = 180, "Ringing"
                strip_sdp(resp)
        elif resp.status >= 300 and st.late is not None and st.late.state is not LS.FAILED:
            st.late.on(LE.FAIL, now)
            self.late.pop(relay.call_id, None)
        sender = st.sender
        if sender is None:
            self.t.respond(relay.server, resp, now, out)
            return
        for r in sender.send(resp, now):
            self.t.respond(relay.server, r, now, out)
        self._sender_schedule(sender)

    def prack(self, req: Request, src: Source, sv: ServerEntry, now: float, out: list) -> bool:
        """A PRACK from the PBX for one of our reliable provisionals: answered here (True)."""
        sender = self.senders.get(req.call_id)
        if sender is None or sender.relay.src.addr[0] != src.addr[0]:
            return False
        released = sender.prack(req, now)
        if released is None:
            return False
        ok = make_response(req, 200, "OK")
        self.policy.egress(ok, PBX, None)
        self.t.respond(sv, ok, now, out)
        for r in released:
            self.t.respond(sender.relay.server, r, now, out)
        self._sender_schedule(sender)
        return True

    def _prack_due(self, sender: Sender, now: float, out: list) -> None:
        """Retransmit; after 64*T1 without PRACK the INVITE gets 5xx (RFC 3262 3), and Teams'
        branch ends: cancelled, or ACKed and BYEd if its 2xx was waiting for the PRACK."""
        resp = sender.retransmit(now)
        if resp is not None:
            self.t.respond(sender.relay.server, resp, now, out)
            self._sender_schedule(sender)
            return
        relay = sender.relay
        self.senders.pop(relay.call_id, None)
        waiting = next((r for r in sender.queue if 200 <= r.status < 300), None)
        sender.queue.clear()
        log.warning("no PRACK from the PBX within 64*T1, call refused call_id=%s", relay.call_id)
        if waiting is not None and relay.client is not None:
            self.proxy.end_answered_branch(relay, relay.client, waiting, now, out)
        elif relay.client is not None and not relay.done:
            self.proxy.cancel_branch(relay, now, out)
        self.proxy.final_local(relay, 500, "Provisional Response Not Acknowledged", now, out)

    def _sender_schedule(self, sender: Sender) -> None:
        if sender.terminated:
            self.senders.pop(sender.relay.call_id, None)
        else:
            self.t.schedule(sender)

    # ------------------------------------------------------------------ the PBX's reliable 18x
    def provisional(self, relay: Any, ctx: Any, resp: Response, now: float, out: list) -> bool:
        """A provisional from the PBX to Teams' INVITE: PRACKed here when reliable (RFC 3262 4).
        False: drop it (a retransmission, or out of order)."""
        if not self.prack_here or relay.src.leg == PBX or not requires_100rel(resp):
            return True
        st: LegState = relay.pbx or LegState()
        relay.pbx = st
        if st.acker is None:
            st.acker = Acker()
        rseq = st.acker.take(resp)
        if rseq is None:
            return False
        hop = self.policy.dialog_hop(resp, PBX)
        if hop is None:
            log.warning("reliable provisional without a Contact, not PRACKed call_id=%s", resp.call_id)
            return True
        tag = resp.to_addr.tag or ""
        invite = ctx.request
        count = st.acker.sent[tag]
        leg = self.policy.legs[PBX]
        prack = new_request("PRACK", hop.target, via=leg.via(hop.dest.transport, make_branch(self.entropy(8).hex())),
                            from_=invite.headers.get("from") or "", to=resp.headers.get("to") or "",
                            call_id=resp.call_id, cseq=invite.cseq.number + count, routes=hop.routes,
                            extra=[("rack", f"{rseq} {invite.cseq.number} INVITE")])
        self.policy.egress(prack, PBX, None)
        self.shift.add(resp.call_id, tag, invite.cseq.number, count)
        out.extend(self.proxy.originate(prack, hop.dest, now, _ignore))
        return True

    # ------------------------------------------------------------------ delayed offer
    def response_step(self, relay: Any, ctx: Any, resp: Response, now: float) -> MediaStep | None:
        """The rtpengine step a response waits for before it is relayed (media.anchor), the
        delayed offer's own for a response to the SBC's offer."""
        late = relay.pbx.late if relay.pbx is not None else None
        if late is None:
            return self.media.for_response(resp, ctx.request, relay.src.leg)
        return self.late_step(late, ctx, resp, now)

    def late_step(self, late: LateOffer, ctx: Any, resp: Response, now: float) -> MediaStep | None:
        """A response from Teams to the SBC's offer, before it goes to the PBX: the rtpengine
        step to wait for, or None (relay it as it is now)."""
        if not 200 <= resp.status < 300:
            return None  # provisionals lose their SDP in respond(); failures carry none
        if late.state in (LS.OFFERED, LS.CONFIRMING, LS.DONE):
            if late.state is not LS.CONFIRMING:
                late.on(LE.ANSWER, now)  # Teams retransmits its 2xx: the same offer again
            resp.body = late.offer_sdp
            resp.headers.set("content-type", SDP_TYPE)
            return None
        late.on(LE.ANSWER, now)
        late.client, late.answer = ctx, resp
        late.teams_sdp = resp.body.decode("utf-8", "replace")
        return self.media.for_response(resp, ctx.request, PBX)

    def late_answered(self, relay: Any, ctx: Any, resp: Response, now: float, out: list) -> bool:
        """rtpengine's reply to a step of late_step is in `resp`: True when a second step now
        runs (Teams' SDP as an offer toward the PBX), False when `resp` goes to the PBX."""
        late = relay.pbx.late if relay.pbx is not None else None
        if late is None or not 200 <= resp.status < 300:
            return False
        if late.state is LS.ANSWERING:
            late.on(LE.ANSWERED, now)
            step = self.media.for_late_offer(late.teams_sdp, late.answer or resp, late.relay.request)
            relay.answering = self.proxy.await_media(MediaOp.ANSWER, (relay, ctx, resp), step, out)
            return True
        if late.state is LS.REOFFERING:
            late.on(LE.REOFFERED, now)
            late.offer_sdp = resp.body
            self.t.schedule(late)
        return False

    def ack(self, ack: Request, src: Source, decision: Forward, now: float, out: list) -> bool:
        """An ACK from the PBX: True when it is the one to the 2xx that carried the SBC's offer
        (it must carry the answer; a retransmitted one goes on without it)."""
        late = self.late.get(ack.call_id)
        if (late is None or src.leg != PBX or ack.cseq.number != late.relay.request.cseq.number
                or late.state not in (LS.OFFERED, LS.CONFIRMING, LS.DONE)):
            return False
        if late.state is LS.DONE:
            strip_sdp(decision.request)
            self.proxy.send_stateless_ack(ack, decision, out)
        elif late.state is LS.OFFERED:  # (CONFIRMING: rtpengine is taking the first copy)
            step = self.media.for_request(decision.request, TEAMS)
            if step is None:
                log.error("ACK without the answer to the SBC's offer (delayed offer), call ended "
                          "call_id=%s", ack.call_id)
                self.end_late(late, now, out)
            else:
                late.on(LE.ACK, now)
                self.proxy.await_media(MediaOp.ACK, (ack, decision), step, out)
        return True

    def ack_answered(self, ack: Request, decision: Forward, reply: Any, now: float, out: list) -> bool:
        """rtpengine's reply to the answer in that ACK: True when handled here."""
        late = self.late.get(ack.call_id)
        if late is None or late.state is not LS.CONFIRMING:
            return False
        if isinstance(reply, Exception):
            log.error("rtpengine answer for the PBX's ACK failed (%s), call ended call_id=%s", reply, ack.call_id)
            self.end_late(late, now, out)
            return True
        late.on(LE.CONFIRMED, now)
        strip_sdp(decision.request)  # Teams' 2xx carried its answer: its ACK carries nothing
        self.t.schedule(late)
        self.proxy.send_stateless_ack(ack, decision, out)
        return True

    def end_late(self, late: LateOffer, now: float, out: list) -> None:
        """A delayed offer that cannot complete ends on both legs, media too: Teams' 2xx is
        ACKed and BYEd, the PBX gets a BYE in Teams' place."""
        relay = late.relay
        late.on(LE.FAIL, now)
        self.late.pop(late.call_id, None)
        if late.client is not None and late.answer is not None:
            self.proxy.end_answered_branch(relay, late.client, late.answer, now, out)
        bye = bye_to_caller(self.policy, PBX, self.entropy, relay.request, late.answer) if late.answer else None
        if bye is not None:
            out.extend(self.proxy.originate(bye[0], bye[1], now, _ignore))
        self.proxy.event(CallEnded(relay.call_id, "sbc"), now)
        self.proxy.media_forget(relay, out)

    def _late_due(self, late: LateOffer, now: float, out: list) -> None:
        if late.unanswered:
            log.error("no ACK from the PBX within 64*T1 for the SBC's offer (delayed offer), call "
                      "ended call_id=%s", late.call_id)
            self.end_late(late, now, out)
        else:
            self.late.pop(late.call_id, None)
        late.deadline = None
