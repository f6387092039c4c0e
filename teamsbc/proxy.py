"""Stateful proxy mechanics (RFC 3261 section 16), sans-IO.

Bytes and a `Source` go in; `Send` and `MediaCall` instructions come out, and call events
(events.py) queue up for the shell to drain with `next_events()` (aioquic's `next_event`); time
and randomness are passed in. What to do with a request (where it goes, which headers
change, whether a failure tries the next target) is the `RoutingPolicy`'s decision; who may
talk is the `Gate`'s; when rtpengine is asked is the `MediaPlanner`'s (decisions.py). This
module carries decisions out: transactions, Via, Record-Route, Max-Forwards, loop
detection, CANCEL, the relay state machine (relay.py), responses back upstream.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
from typing import Any, Callable

from .decisions import (PBX, TEAMS, Destination, Drop, Forward, Gate, Leg, MediaCall, MediaPlanner,
                        MediaStep, Reply, RoutingPolicy, Send, Source, Target)
from .events import CallAnswered, CallEnded, CallEvent, CallFailed, CallStarted, Counters
from .dialog_end import ack_and_bye
from .hops import answer_unparsable, forwardable, loop_hash, stamp_via, stray_2xx
from .pbx_leg import TIMERS, PbxLeg
from .relay import Event as E
from .relay import MediaOp, Relay
from .relay import State as S
from .sip.build import branch as make_branch
from .sip.build import build_cancel
from .sip.errors import LocalProtocolError, MessageTooLarge, ParseError, ProtocolError
from .sip.message import Request, Response, make_response, parse_message, retry_after
from .sip.transaction import (T1, ClientTransaction, Deliver, TimedOut, Transmit, TransportFailed,
                              client_key, server_key)
from .tables import ServerEntry, Tables
from .sip.uri import parse_via, user_part

log = logging.getLogger("teamsbc.proxy")

Entropy = Callable[[int], bytes]   # os.urandom, or a seeded source in tests


class Proxy:
    def __init__(self, policy: RoutingPolicy, gate: Gate, *, entropy: Entropy,
                 media: MediaPlanner | None = None, invite_timeout: float = 4.0,
                 prack: str = "strip", early_media: str = "pass",
                 sdp_screen: Callable[[Request | Response], str | None] | None = None):
        self.policy = policy
        self.gate = gate
        self.media = media  # None: signalling only
        self.sdp_screen = sdp_screen or (media.sdp_refusal if media is not None else None)
        self.legs: dict[str, Leg] = policy.legs
        self.invite_timeout = invite_timeout
        self.entropy = entropy
        self._media_ops: dict[int, tuple[MediaOp, tuple]] = {}
        self._op_seq = itertools.count(1)
        self.stats: dict[str, int] = {"parse_errors": 0, "rejected": 0, "timeouts": 0, "failovers": 0}
        self.t = Tables(self.stats)
        self._secret = entropy(8).hex()
        self.counters = Counters()
        self._events: list[CallEvent] = []
        self.pbx = PbxLeg(self, policy, entropy=entropy, prack=prack, early_media=early_media)

    # ---------------------------------------------------------------- entry points
    def receive(self, data: bytes, src: Source, now: float) -> list[Send | MediaCall]:
        out: list[Send | MediaCall] = []
        gate = self.gate
        if not gate.admit(src, now):
            return out  # unknown or banned source, or over its budget: no answer at all
        try:
            msg = parse_message(data, stream=src.transport != "udp")
            gate.check_limits(msg, len(data))
        except ParseError as e:
            self.stats["parse_errors"] += 1
            gate.parse_failed(src, now)
            out.extend(answer_unparsable(data, src, e))
            return out
        try:
            if isinstance(msg, Request):
                self.counters.request(src.leg, msg.method)
                self._on_request(msg, src, now, out)
                gate.answered(msg, src, out, now)
            else:
                self.counters.response(src.leg, msg.status, msg.cseq.method)
                self._on_response(msg, src, now, out)
        except ProtocolError as e:
            # a header we needed later turned out malformed (e.g. a Route URI), or our own bug
            if isinstance(e, LocalProtocolError):
                log.exception("internal error on a message from %s call_id=%s", src.addr, msg.call_id)
            else:
                self.stats["parse_errors"] += 1
                log.warning("bad message from %s: %s call_id=%s", src.addr, e.reason, msg.call_id)
            if isinstance(msg, Request) and msg.method != "ACK":
                resp = make_response(msg, e.status, e.reason, self._tag(msg))
                sv = self.t.server.get(server_key(msg))
                if sv is not None and sv.st.request is msg:
                    sv.relay = None
                    self.t.respond(sv, resp, now, out)  # the transaction ends like any other
                else:
                    out.append(Send(resp.to_bytes(), src))
        return out

    def transport_failed(self, token: Any, now: float, reason: str = "transport error") -> list[Send | MediaCall]:
        out: list[Send | MediaCall] = []
        entry = self.t.client.get(token)
        if entry is None:
            return out
        owner, ctx, dest = entry
        log.warning("transport failure toward %s:%d (%s): %s call_id=%s", dest.host, dest.port,
                    dest.transport, reason, ctx.request.call_id)
        self._client_events(owner, ctx, dest, ctx.transport_error(now, reason), now, out)
        return out

    def next_timer(self) -> float | None:
        return self.t.next_timer()

    def handle_timer(self, now: float) -> list[Send | MediaCall]:
        out: list[Send | MediaCall] = []
        for obj in self.t.due(now):
            if isinstance(obj, Relay):
                self._relay_deadline(obj, now, out)
            elif isinstance(obj, ClientTransaction):
                entry = self.t.client.get(obj.key)
                owner, dest = (entry[0], entry[2]) if entry else (None, None)
                self._client_events(owner, obj, dest, obj.handle_timer(now), now, out)
            elif isinstance(obj, ServerEntry):
                self.t.server_events(obj, obj.st.handle_timer(now), out)
            elif isinstance(obj, TIMERS):
                self.pbx.due(obj, now, out)
            else:
                out += obj.handle_timer(now)
            self.t.schedule(obj)
        return out

    def media_done(self, op: int, result: Any, now: float) -> list[Send | MediaCall]:
        """The reply (a dict) or the exception of a MediaCall we asked the shell to run."""
        entry = self._media_ops.pop(op, None)
        out: list[Send | MediaCall] = []
        if entry is None:
            return out
        kind, args = entry
        if kind is MediaOp.OFFER:
            self._offer_done(*args, result, now, out)
        elif kind is MediaOp.ANSWER:
            self._answer_done(*args, result, now, out)
        elif kind is MediaOp.REPLY:
            self.pbx.reply_done(*args, result, now, out)
        else:
            self._ack_answer_done(*args, result, now, out)
        return out

    def originate(self, req: Request, dest: Destination, now: float, on_result: Any,
                  timers: Any = None) -> list[Send | MediaCall]:
        """Send a request of our own (OPTIONS keep-alive) through a client transaction.
        `on_result(status | None, reason, now, retry_after)` gets the final answer or the failure."""
        kw = {"timers": timers} if timers is not None else {}
        ctx = ClientTransaction(req, reliable=dest.transport != "udp", now=now, **kw)
        self.t.add_client(on_result, ctx, dest)
        out: list[Send | MediaCall] = []
        self._client_events(on_result, ctx, dest, ctx.start(), now, out)
        return out

    def add_timed(self, obj: Any) -> None:
        """Put an object with next_timer()/handle_timer(now) -> [Send]/terminated on our clock."""
        self.t.schedule(obj)

    def is_client_active(self, token: Any) -> bool:
        return token in self.t.client

    @property
    def active_transactions(self) -> int:
        return self.t.active

    @property
    def pending_requests(self) -> int:
        """Requests relayed and still waiting for their final response (what a graceful stop drains)."""
        return sum(1 for r in self.t.relays() if not r.done)

    # ---------------------------------------------------------------- requests
    def _on_request(self, req: Request, src: Source, now: float, out: list) -> None:
        stamp_via(req, src.addr)
        key = server_key(req)
        if req.method == "ACK":
            sv = self.t.server.get(key)
            if sv is not None:  # ACK for a non-2xx final: hop-by-hop, ends here (17.2.1)
                self.t.server_events(sv, sv.st.receive_request(req, now), out)
                return
            self._route_stateless_ack(req, src, now, out)
            return
        sv = self.t.server.get(key)
        if sv is not None:  # retransmission
            self.t.server_events(sv, sv.st.receive_request(req, now), out)
            return
        verdict = self.gate.screen(req, src, now)
        if verdict is not None:  # a Drop (scanner, flood) or a 503 beyond a limit
            self.stats["rejected"] += 1
            if isinstance(verdict, Reply):  # the guard notes it once per report (not each: a flood)
                log.debug("answered %s from %s:%d with %d (%s) call_id=%s", req.method, *src.addr,
                          verdict.status, verdict.log, req.call_id)
                sv = self.t.new_server(req, src, key, now)
                self.t.respond(sv, self.local_response(req, verdict, src.leg), now, out)
            return
        if req.method == "CANCEL":
            self._on_cancel(req, src, now, out)
            return
        sv = self.t.new_server(req, src, key, now)
        loop = loop_hash(req, self._secret)
        problem = forwardable(req, loop, self.legs.values())
        if problem is not None:
            self.t.respond(sv, self.local_response(req, Reply(*problem), src.leg), now, out)
            return
        if req.method == "PRACK" and src.leg == PBX and self.pbx.prack(req, src, sv, now, out):
            return  # one of our reliable provisionals (reliable.py)
        decision = self.policy.request(req, src, now)
        if isinstance(decision, Drop):
            self.stats["rejected"] += 1
            log.info("dropped %s from %s:%d: %s call_id=%s", req.method, *src.addr, decision.log, req.call_id)
            self.t.server.pop(key, None)
            return
        new_call = req.method == "INVITE" and req.to_addr.tag is None
        if isinstance(decision, Forward):  # an SDP over a media limit: nothing of it to rtpengine
            decision = self._sdp_refused(decision.request) or decision
        if isinstance(decision, Reply):
            if new_call and decision.status >= 300 and decision.status != 403:
                self._call_started(req, src, None, now)  # refused calls have a record too
                self.event(CallFailed(req.call_id, decision.status, decision.reason), now)
            if decision.status >= 400:
                self.stats["rejected"] += 1
                log.info("answered %s from %s:%d with %d %s%s call_id=%s", req.method, *src.addr,
                         decision.status, decision.reason,
                         f" ({decision.log})" if decision.log else "", req.call_id)
            self.pbx.answer(sv, req, decision, src.leg, now, out)  # (after rtpengine, for INFO DTMF)
            return
        if req.method == "INVITE":  # only now: a dropped request gets nothing at all
            self.t.respond(sv, self.local_response(req, Reply(100, "Trying"), src.leg), now, out)
            if new_call:
                self._call_started(req, src, decision.identity, now)
        elif req.method == "BYE":
            self.event(CallEnded(req.call_id, src.leg), now)
        step = self.media.for_request(decision.request, decision.targets[0].dest.leg) if self.media else None
        relay = Relay(sv, src, req, decision, loop, offering=step is not None and step.wait,
                      failover_after=self.invite_timeout)
        sv.relay = relay
        relay.pbx = self.pbx.start(relay, src, step) if new_call else None
        if step is not None and not step.wait:
            out.append(MediaCall(None, step.command))
        elif step is not None:
            self.await_media(MediaOp.OFFER, (relay,), step, out)
            return
        self._next_target(relay, now, out)

    def _on_cancel(self, cancel: Request, src: Source, now: float, out: list) -> None:
        """RFC 3261 16.10: answer the CANCEL, cancel the pending branch."""
        key = server_key(cancel)
        relay = self.t.relay_of(key[:-1] + ("INVITE",))
        csv = self.t.new_server(cancel, src, key, now)
        if relay is None:
            self.t.respond(csv, make_response(cancel, 481, "Call/Transaction Does Not Exist"), now, out)
            return
        self.t.respond(csv, make_response(cancel, 200, "OK"), now, out)
        if relay.state is S.OFFERING:  # no branch yet: nothing to cancel downstream
            self.final_local(relay, 487, "Request Terminated", now, out)
            return
        self.cancel_branch(relay, now, out)

    def cancel_branch(self, relay: Relay, now: float, out: list) -> None:
        """The caller (or the SBC) gives up the current branch: CANCEL now if it has answered
        provisionally, else on its first provisional (RFC 3261 9.1)."""
        sent_before = relay.state is S.CANCELLING
        self.t.advance(relay, E.CANCELLED, now)
        ctx = relay.client
        if not sent_before and not relay.done and ctx is not None and ctx.state == "proceeding":
            self._send_cancel(ctx, relay.dest, now, out, relay.decision.identity)
            self.t.advance(relay, E.CANCEL_SENT, now)

    def _send_cancel(self, ctx: ClientTransaction, dest: Destination | None, now: float, out: list,
                     identity: str | None = None) -> None:
        if dest is None:
            return
        cancel = build_cancel(ctx.request)
        self.policy.egress(cancel, dest.leg, identity)
        # RFC 3261 9.1: no final answer within 64*T1 of the CANCEL ends the INVITE transaction
        self.t.expire_later(ctx, now + 64 * T1)
        cctx = ClientTransaction(cancel, reliable=dest.transport != "udp", now=now)
        self.t.add_client(None, cctx, dest)
        self._client_events(None, cctx, dest, cctx.start(), now, out)

    def _route_stateless_ack(self, ack: Request, src: Source, now: float, out: list) -> None:
        """ACK for a 2xx is its own end-to-end request (17.1.1.3): route it, no transaction."""
        decision = self.policy.request(ack, src, now)
        if not isinstance(decision, Forward) or not decision.targets:
            why = decision.log if isinstance(decision, Drop) else (
                decision.log or decision.reason if isinstance(decision, Reply) else "no target")
            log.info("ACK from %s:%d not routable: %s call_id=%s", *src.addr, why, ack.call_id)
            return
        if self._sdp_refused(decision.request):  # an ACK cannot be answered: the callee will end it
            log.warning("dropped ACK from %s:%d: SDP over a media limit call_id=%s", *src.addr, ack.call_id)
            return
        if self.pbx.ack(ack, src, decision, now, out):
            return  # the answer to the SBC's own offer (late_offer.py)
        step = self.media.for_request(decision.request, decision.targets[0].dest.leg) if self.media else None
        if step is not None and step.wait:
            self.await_media(MediaOp.ACK, (ack, decision), step, out)
            return
        self.send_stateless_ack(ack, decision, out)

    def _ack_answer_done(self, ack: Request, decision: Forward, reply: Any, now: float, out: list) -> None:
        if self.pbx.ack_answered(ack, decision, reply, now, out):
            return
        if isinstance(reply, Exception):
            log.error("rtpengine answer for ACK failed (%s) call_id=%s", reply, ack.call_id)
            return
        decision.request.body = str(reply.get("sdp", "")).encode()
        self.send_stateless_ack(ack, decision, out)

    def send_stateless_ack(self, ack: Request, decision: Forward, out: list) -> None:
        target = decision.targets[0]
        req = decision.request
        incoming_branch = ack.top_via.branch or ""
        branch = make_branch(hashlib.blake2s((incoming_branch + self._secret).encode(),
                                             digest_size=8).hexdigest())
        try:
            self._prepare_branch(req, target, branch, None, decision.identity)
        except MessageTooLarge as e:
            log.warning("dropped ACK: %s call_id=%s", e.detail, ack.call_id)
            return
        out.append(Send(req.to_bytes(), target.dest))

    # ---------------------------------------------------------------- branches
    def _next_target(self, relay: Relay, now: float, out: list) -> None:
        d = relay.decision
        relay.index += 1
        if relay.index >= len(d.targets):
            return
        target = d.targets[relay.index]
        req = Request(d.request.method, d.request.uri, d.request.headers.copy(), d.request.body)
        req.share_views(d.request)
        branch = make_branch(f"{relay.loop}.{self.entropy(5).hex()}")
        try:
            self._prepare_branch(req, target, branch, d.record_route, d.identity)
        except MessageTooLarge as e:  # RFC 3261 18.1.1: never a datagram the network fragments
            log.warning("refused %s: %s call_id=%s", req.method, e.detail, relay.call_id)
            self.final_local(relay, e.status, e.reason, now, out, [("Warning", f'399 sbc "{e.detail}"')])
            return
        ctx = ClientTransaction(req, reliable=target.dest.transport != "udp", now=now)
        relay.client, relay.dest = ctx, target.dest
        self.t.add_client(relay, ctx, target.dest)
        self.t.advance(relay, E.BRANCH_SENT, now)
        self._client_events(relay, ctx, target.dest, ctx.start(), now, out)

    def _prepare_branch(self, req: Request, target: Target, branch: str,
                        record_route: list[str] | None, identity: str | None) -> None:
        out_leg = self.legs[target.dest.leg]
        req.uri = target.ruri
        h = req.headers
        mf = h.get("max-forwards")
        h.set("max-forwards", str(int(mf) - 1) if mf is not None else "70")
        for entry in reversed(record_route or ()):
            h.add_first("record-route", entry)
        h.add_first("via", out_leg.via(target.dest.transport, branch))
        if target.dest.leg == PBX:
            self.pbx.shift.apply(req)
        self.policy.egress(req, target.dest.leg, identity)

    def _relay_deadline(self, relay: Relay, now: float, out: list) -> None:
        kind = relay.deadline_kind()
        relay.deadline = None
        ctx = relay.client
        if kind == "timer_c":
            # RFC 3261 16.6 step 11: no final answer for 3 minutes after the last provisional
            log.warning("no final answer within %ds (Timer C), cancelling call_id=%s", 180, relay.call_id)
            if ctx is not None and ctx.state == "proceeding":
                self.cancel_branch(relay, now, out)
            elif ctx is not None:
                relay.abandoned.append(ctx)  # cancelled when it speaks (RFC 3261 9.1)
            self.final_local(relay, 408, "Request Timeout", now, out)
        elif kind == "cancel":
            log.warning("no final answer after CANCEL, ending it here call_id=%s", relay.call_id)
            self.final_local(relay, 487, "Request Terminated", now, out)
        elif kind == "failover" and ctx is not None:
            # no answer at all from this target within invite_timeout (reference 5)
            log.warning("no answer from %s within %.1fs, failing over call_id=%s",
                        relay.dest.host if relay.dest else "?", self.invite_timeout, relay.call_id)
            relay.abandoned.append(ctx)
            self.stats["failovers"] += 1
            if relay.dest is not None:
                self.policy.peer_failed(relay.dest, f"no answer within {self.invite_timeout:g}s", now)
            self._next_target(relay, now, out)

    def _client_events(self, owner: Any, ctx: ClientTransaction, dest: Destination | None,
                       events: list, now: float, out: list) -> None:
        """`owner` is the Relay of a proxied request, a callback for a request we originated
        (OPTIONS pings: called with (status | None, reason, now, retry_after)), or None (CANCEL)."""
        relay = owner if isinstance(owner, Relay) else None
        try:
            for ev in events:
                if isinstance(ev, Transmit):
                    msg = ev.message
                    if msg is not ctx.request and dest is not None:  # the ACK the transaction built
                        self.policy.egress(msg, dest.leg, relay.decision.identity if relay else None)
                    out.append(Send(msg.to_bytes(), dest, ctx.key))
                elif isinstance(ev, Deliver):
                    resp = ev.response
                    if relay is not None:
                        if resp.status >= 200 and dest is not None:
                            self.policy.peer_answered(dest, resp.status, retry_after(resp), now)
                        self._on_branch_response(relay, ctx, resp, now, out)
                    elif owner is not None and resp.status >= 200:
                        owner(resp.status, resp.reason, now, retry_after(resp))
                elif isinstance(ev, (TimedOut, TransportFailed)):
                    timed_out = isinstance(ev, TimedOut)
                    reason = "timed out" if timed_out else f"transport failure ({ev.reason})"
                    if timed_out:
                        self.stats["timeouts"] += 1
                        self.counters.timeout(ctx.request.method)
                    if relay is not None:
                        if dest is not None:
                            self.policy.peer_failed(dest, reason, now)
                        code, text = (408, "Request Timeout") if timed_out else (503, "Service Unavailable")
                        self._on_branch_response(relay, ctx, make_response(
                            ctx.request, code, text, self._tag(ctx.request)), now, out)
                    elif owner is not None:
                        owner(None, reason, now, None)
        finally:  # even if relaying raised, the transaction table stays true
            if ctx.terminated:
                self.t.client.pop(ctx.key, None)
            self.t.schedule(ctx)  # a terminated one leaves the heap too

    def _on_branch_response(self, relay: Relay, ctx: ClientTransaction, resp: Response,
                            now: float, out: list) -> None:
        status = resp.status
        if ctx in relay.abandoned:
            if status < 200 and status != 100:
                self._send_cancel(ctx, self.t.client.get(ctx.key, (None, None, None))[2], now, out,
                                  relay.decision.identity)
            elif 200 <= status < 300:
                log.error("late 2xx from an abandoned branch call_id=%s", relay.call_id)
            return
        if ctx is relay.client and status < 200:
            self.t.advance(relay, E.BRANCH_RESPONDED, now)  # no failover on silence any more; Timer C (re)starts
        if status == 100:
            return
        if status < 200 and relay.is_invite and not self.pbx.provisional(relay, ctx, resp, now, out):
            return  # a retransmitted reliable provisional of the PBX (reliable.py)
        self._media_then_relay(relay, ctx, resp, now, out)

    def _media_then_relay(self, relay: Relay, ctx: ClientTransaction, resp: Response, now: float,
                          out: list) -> None:
        """A response with SDP waits for rtpengine's answer; later ones queue behind it."""
        if self.media is not None and relay.answering is not None:
            relay.queue.append((ctx, resp))  # keep the order of responses
            return
        refused = self._sdp_refused(resp) if 180 <= resp.status < 300 else None
        if refused is not None:  # the callee's SDP reaches neither rtpengine nor the caller
            log.warning("%d refused, ending the call: %s call_id=%s", resp.status, refused.log, relay.call_id)
            self._teardown(relay, ctx, resp, now, out, refused)
            return
        if self.media is not None:
            step = self.pbx.response_step(relay, ctx, resp, now)
            if step is not None:
                relay.answering = self.await_media(MediaOp.ANSWER, (relay, ctx, resp), step, out)
                return
        self._relay_response(relay, ctx, resp, now, out)

    def _relay_response(self, relay: Relay, ctx: ClientTransaction, resp: Response, now: float,
                        out: list) -> None:
        status = resp.status
        if status < 200:
            if relay.state is S.CANCEL_PENDING and ctx is relay.client and ctx.state == "proceeding":
                self._send_cancel(ctx, relay.dest, now, out, relay.decision.identity)
                self.t.advance(relay, E.CANCEL_SENT, now)
            if relay.done:
                return
            self.t.advance(relay, E.RELAYED_PROVISIONAL, now)
            self._upstream(relay, resp, now, out)
            return
        if status < 300:
            first = not relay.done
            self._upstream(relay, resp, now, out)  # every 2xx goes up (RFC 6026)
            self.t.advance(relay, E.FINAL_SENT, now)
            if first and relay.is_invite and relay.request.to_addr.tag is None:
                self.event(CallAnswered(relay.call_id), now)
            if first:
                # the transactions linger 64*T1 (RFC 6026) for retransmissions only: what
                # was parsed of their requests is not kept for that (parsed again if needed)
                relay.request.forget_views()
                ctx.request.forget_views()
            return
        if relay.done:
            return
        if relay.may_fail_over and self.policy.retry_next(relay.decision, status):
            log.warning("failing over after %d %s for %s call_id=%s", status, resp.reason,
                        relay.dest.host if relay.dest else "?", relay.call_id)
            self.stats["failovers"] += 1
            self._next_target(relay, now, out)
            return
        self.t.advance(relay, E.FINAL_SENT, now)
        self._upstream(relay, resp, now, out)
        self._failed_upstream(relay, resp.status, resp.reason, now)
        self.media_forget(relay, out)

    # ---------------------------------------------------------------- media (rtpengine)
    def await_media(self, kind: MediaOp, args: tuple, step: MediaStep, out: list) -> int:
        op = next(self._op_seq)
        self._media_ops[op] = (kind, args)
        out.append(MediaCall(op, step.command))
        return op

    def _offer_done(self, relay: Relay, reply: Any, now: float, out: list) -> None:
        if relay.done:
            self.media_forget(relay, out)  # CANCELled while rtpengine was working
            return
        if isinstance(reply, Exception) or "sdp" not in reply:
            why = reply if isinstance(reply, Exception) else "reply without sdp"
            log.error("media offer failed, call refused: %s call_id=%s", why, relay.call_id)
            self.final_local(relay, 503, "Service Unavailable", now, out)
            return
        sdp = str(reply["sdp"])
        first = relay.decision.targets[0].dest
        problem = self.media.sdp_problem(sdp, first.leg, first.transport) if self.media else None
        if problem:
            log.error("call refused: %s call_id=%s", problem, relay.call_id)
            self.final_local(relay, 488, "SDP Too Large For UDP Trunk", now, out,
                             [("Warning", f'399 sbc "{problem}"')])
            return
        relay.decision.request.body = sdp.encode()
        relay.decision.request.headers.set("content-type", "application/sdp")
        self._next_target(relay, now, out)

    def _answer_done(self, relay: Relay, ctx: ClientTransaction, resp: Response, reply: Any,
                     now: float, out: list) -> None:
        relay.answering = None
        if isinstance(reply, Exception) or "sdp" not in reply:
            why = reply if isinstance(reply, Exception) else "reply without sdp"
            log.error("media answer failed, tearing the call down: %s call_id=%s", why, relay.call_id)
            self._teardown(relay, ctx, resp, now, out)
            return
        resp.body = str(reply["sdp"]).encode()
        if self.pbx.late_answered(relay, ctx, resp, now, out):
            return  # a second step: Teams' SDP as an offer toward the PBX (late_offer.py)
        self._relay_response(relay, ctx, resp, now, out)
        while relay.queue and relay.answering is None:
            qctx, qresp = relay.queue.pop(0)
            self._media_then_relay(relay, qctx, qresp, now, out)

    def _teardown(self, relay: Relay, ctx: ClientTransaction, resp: Response, now: float, out: list,
                  answer: Reply | None = None) -> None:
        """The call cannot have media: end it on both legs (never a call without media)."""
        relay.queue.clear()
        if resp.status >= 200:
            self.end_answered_branch(relay, ctx, resp, now, out)
        elif ctx.state == "proceeding" and not relay.done:
            self.cancel_branch(relay, now, out)
        if not relay.done:
            answer = answer or Reply(503, "Service Unavailable")
            self.final_local(relay, answer.status, answer.reason, now, out, answer.headers)
        else:
            self.media_forget(relay, out)

    def _sdp_refused(self, msg: Request | Response) -> Reply | None:
        """488 (RFC 3261 21.4.26) with a Warning naming the media.max_* limit the SDP exceeds."""
        why = self.sdp_screen(msg) if self.sdp_screen is not None else None
        return None if why is None else Reply(488, "Not Acceptable Here", [("Warning", f'399 sbc "{why}"')], why)

    def media_forget(self, relay: Relay, out: list) -> None:
        if self.media is not None:
            step = self.media.for_failed_call(relay.request)
            if step is not None:
                out.append(MediaCall(None, step.command))

    # ---------------------------------------------------------------- answers upstream
    def final_local(self, relay: Relay, status: int, reason: str, now: float, out: list,
                    headers: list | None = None) -> None:
        """Answer the relayed request ourselves and forget its media."""
        self.t.advance(relay, E.FINAL_SENT, now)
        self.pbx.respond(relay, self.local_response(
            relay.request, Reply(status, reason, headers or []), relay.src.leg), now, out)
        self._failed_upstream(relay, status, reason, now)
        self.media_forget(relay, out)

    def end_answered_branch(self, relay: Relay, ctx: ClientTransaction, resp: Response,
                            now: float, out: list) -> None:
        """ACK and BYE a 2xx we will not relay, along the callee's side of the route set."""
        ends = ack_and_bye(self.policy, relay.dest.leg if relay.dest else None, self.entropy,
                           ctx.request, resp, relay.decision.identity)
        if ends is not None:
            out.append(Send(ends[0].to_bytes(), ends[2]))
            out.extend(self.originate(ends[1], ends[2], now, _ignore_result))

    def _upstream(self, relay: Relay, resp: Response, now: float, out: list) -> None:
        """16.7: forward a response to the request's sender through the server transaction.
        A response we cannot relay (no Via left for the sender, a malformed header we must
        rewrite) never strands the transaction: a final one becomes 502 (a 2xx is also ACKed
        and BYEd toward the callee), a provisional one is dropped."""
        up = Response(resp.status, resp.reason, resp.headers.copy(), resp.body)
        up.share_views(resp)
        up.headers.pop_first("via")
        try:
            self.policy.egress(up, relay.src.leg, relay.decision.identity, relay.request)
            sender_via = up.headers.get("via")
            if sender_via is None:
                raise ParseError("Response without the sender's Via")
            parse_via(sender_via)
        except ParseError as e:
            detail = e.detail if isinstance(e, MessageTooLarge) else e.reason
            log.warning("cannot relay %d %s: %s call_id=%s", resp.status, resp.reason, detail, relay.call_id)
            if resp.status < 200:
                return
            if resp.status < 300 and relay.client is not None:
                self.end_answered_branch(relay, relay.client, resp, now, out)
            up = self.local_response(relay.request, Reply(502, "Bad Gateway", [("Warning", f'399 sbc "{detail}"')]),
                                     relay.src.leg)
        self.pbx.respond(relay, up, now, out)

    # ---------------------------------------------------------------- responses
    def _on_response(self, resp: Response, src: Source, now: float, out: list) -> None:
        entry = self.t.client.get(client_key(resp))
        if entry is None:
            out.extend(stray_2xx(resp, src, self.policy, self.legs.values()))
            return
        owner, ctx, dest = entry
        self._client_events(owner, ctx, dest, ctx.receive_response(resp, now), now, out)

    # ---------------------------------------------------------------- local answers
    def local_response(self, req: Request, reply: Reply, leg: str) -> Response:
        resp = make_response(req, reply.status, reply.reason, self._tag(req))
        for name, value in reply.headers:
            resp.headers.add(name.lower(), value)
        try:
            self.policy.egress(resp, leg, None)
        except MessageTooLarge:
            pass  # our own answer echoes the sender's Vias (8.2.6.2): as large as what it sent
        return resp

    def _tag(self, req: Request) -> str:
        return hashlib.blake2s((req.call_id + self._secret).encode(), digest_size=6).hexdigest()

    # ---------------------------------------------------------------- call events
    def event(self, ev: CallEvent, now: float) -> None:
        self.gate.track(ev, now)
        self._events.append(ev)

    def next_events(self) -> list[CallEvent]:
        """The call events since the last call (the shell stamps and publishes them)."""
        if not self._events:
            return []
        evs, self._events = self._events, []
        return evs

    def _call_started(self, req: Request, src: Source, identity: str | None, now: float) -> None:
        other = PBX if src.leg == TEAMS else TEAMS
        self.event(CallStarted(req.call_id, f"{src.leg}->{other}", identity,
                               user_part(req.headers.get("from")), user_part(req.headers.get("to"))), now)

    def _failed_upstream(self, relay: Relay, status: int, reason: str, now: float) -> None:
        if relay.is_invite and relay.request.to_addr.tag is None:
            self.event(CallFailed(relay.call_id, status, reason), now)


def _ignore_result(*_: Any) -> None:
    pass
