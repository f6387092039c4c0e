"""Stateful proxy mechanics (RFC 3261 section 16), sans-IO.

Bytes and a `Source` go in, `Send` instructions come out; time is passed in as `now`. What
to do with a request (where it goes, which headers change) is decided by `routing.Router`;
this module only carries the decision out: transactions, Via, Record-Route, Max-Forwards,
loop detection, CANCEL, failover between targets, responses back upstream.
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .events import Observer
from .sip.errors import ParseError
from .sip.grammar import MAGIC_COOKIE
from .sip.message import Headers, Request, Response, make_response, parse_message
from .sip.transaction import (T1, ClientTransaction, Deliver, ServerTransaction, TimedOut, Transmit,
                              TransportFailed, client_key, server_key)
from .sip.uri import parse_name_addr, parse_via

log = logging.getLogger("teamsbc.proxy")

TEAMS = "teams"
PBX = "pbx"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from. `conn` is the shell's connection object on streams."""
    leg: str                      # TEAMS | PBX
    transport: str                # udp | tcp | tls
    addr: tuple[str, int]
    conn: Any = None
    peer_name: str | None = None  # verified TLS peer name (Teams side)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where to send. `host` is a name to resolve (Teams side, also the TLS name) or an IP."""
    leg: str
    transport: str
    host: str
    port: int


@dataclass(slots=True)
class Send:
    data: bytes
    to: Source | Destination
    token: Any = None  # handed back to Proxy.transport_failed() if the send fails


@dataclass(slots=True)
class MediaCall:
    """Run one rtpengine NG command. With an `op`, hand the reply (or the exception) back
    through Proxy.media_done(op, result, now); without, fire and forget (deletes)."""
    op: int | None
    command: dict


# --- decisions the router returns --------------------------------------------------------
@dataclass(slots=True)
class Reply:
    """Answer locally."""
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    log: str | None = None  # why, for the log line


@dataclass(slots=True)
class Target:
    dest: Destination
    ruri: str


@dataclass(slots=True)
class Forward:
    """Relay to the targets in order (serial failover). `request` is the rewritten request."""
    request: Request
    targets: list[Target]
    record_route: list[str] | None = None  # entries to insert on top, top first (RFC 5658 pair)
    failover: bool = False   # try the next target on timeout, transport failure or 503
    identity: str | None = None  # the FQDN presented to Teams for this request (tenant or base)


@dataclass(slots=True)
class Drop:
    log: str


@dataclass(slots=True)
class Leg:
    """How the SBC appears on one side: Via sent-by, Record-Route entry, header rewriting."""
    name: str
    transport: str
    via_host: str
    via_port: int
    record_route: str


FAILOVER_CODES = frozenset({408, 503})
TIMER_C = 180  # RFC 3261 16.6 step 11: > 3 minutes in the RFC; Teams rings for at most 180 s


class _Server:
    """A server transaction and where its responses go (the connection or address it came from)."""

    __slots__ = ("st", "src", "key")

    def __init__(self, st: ServerTransaction, src: Source, key: tuple):
        self.st, self.src, self.key = st, src, key

    @property
    def terminated(self) -> bool:
        return self.st.terminated

    def next_timer(self) -> float | None:
        return self.st.next_timer()


class _Expire:
    """Forget a client transaction at `at` if it has not ended by itself (an INVITE we
    CANCELled whose final answer never came)."""

    __slots__ = ("table", "ctx", "at")

    def __init__(self, table: dict, ctx: ClientTransaction, at: float):
        self.table, self.ctx, self.at = table, ctx, at

    @property
    def terminated(self) -> bool:
        return self.ctx.terminated or self.ctx.key not in self.table

    def next_timer(self) -> float:
        return self.at

    def handle_timer(self, now: float) -> list:
        if self.table.get(self.ctx.key, (None, None))[1] is self.ctx:
            log.info("no final answer to a cancelled INVITE within 64*T1: transaction ended call_id=%s",
                     self.ctx.request.call_id)
            del self.table[self.ctx.key]
        self.at = float("inf")
        return []


class _Relay:
    """One request being proxied: its server transaction and the current client branch."""

    __slots__ = ("server", "src", "request", "decision", "client", "dest", "index",
                 "provisional_sent", "cancelled", "deadline", "final_sent", "abandoned",
                 "call_id", "loop", "media_busy", "queue", "deadline_kind")

    def __init__(self, server: _Server, request: Request, decision: Forward, loop: str):
        self.loop = loop
        self.server = server
        self.src = server.src
        self.request = request
        self.decision = decision
        self.client: ClientTransaction | None = None
        self.dest: Destination | None = None
        self.index = -1
        self.provisional_sent = False
        self.cancelled = False
        self.deadline: float | None = None
        self.deadline_kind = ""          # failover | timer_c | cancel
        self.final_sent = False
        self.abandoned: list[ClientTransaction] = []
        self.call_id = request.call_id
        self.media_busy = False          # an rtpengine answer is running: later responses wait
        self.queue: list[tuple[ClientTransaction, Response]] = []

    # the relay is on the timer heap for its failover deadline
    @property
    def terminated(self) -> bool:
        return self.final_sent or self.deadline is None

    def next_timer(self) -> float | None:
        return self.deadline


class Proxy:
    def __init__(self, router: Any, legs: dict[str, Leg], *, invite_timeout: float = 4.0,
                 media: Any = None, observer: Observer | None = None):
        self.router = router
        self.observer = observer or Observer()
        self.media = media  # media.anchor.MediaAnchor, or None for signalling only
        self._media_ops: dict[int, Any] = {}
        self._op_seq = itertools.count(1)
        self.legs = legs
        self.invite_timeout = invite_timeout
        self._server: dict[tuple, _Server] = {}
        self._relays: dict[tuple, _Relay] = {}          # server key -> relay
        # client key -> (owner: _Relay | result callback | None, transaction, destination)
        self._client: dict[tuple, tuple[Any, ClientTransaction, Destination]] = {}
        self._timers: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._secret = os.urandom(8).hex()
        self.stats: dict[str, int] = {"requests": 0, "responses": 0, "parse_errors": 0,
                                      "rejected": 0, "timeouts": 0, "failovers": 0}

    # ---------------------------------------------------------------- entry points
    def receive(self, data: bytes, src: Source, now: float) -> list[Send]:
        out: list[Send] = []
        guard = getattr(self, "guard", None)  # guard.Guard, set by app.build()
        if guard is not None and not guard.admit(src, now):
            return out  # unknown or banned source, or over its budget: no answer at all
        try:
            msg = parse_message(data, stream=src.transport != "udp")
            if guard is not None:
                guard.check_limits(msg, len(data))
        except ParseError as e:
            self.stats["parse_errors"] += 1
            if guard is not None:
                guard.parse_failed(src, now)
            self._answer_unparsable(data, src, e, out)
            return out
        try:
            if isinstance(msg, Request):
                self.stats["requests"] += 1
                self.observer.request(msg.method, src.leg)
                self._on_request(msg, src, now, out)
                if guard is not None:
                    guard.answered(msg, src, out, now)
            else:
                self.stats["responses"] += 1
                self.observer.response(msg.status, msg.cseq.method, src.leg)
                self._on_response(msg, src, now, out)
        except ParseError as e:
            # a header we needed later turned out malformed (e.g. a Route URI)
            self.stats["parse_errors"] += 1
            log.warning("bad message from %s: %s call_id=%s", src.addr, e.reason, msg.call_id)
            if isinstance(msg, Request) and msg.method != "ACK":
                resp = make_response(msg, e.status, e.reason, self._tag(msg))
                sv = self._server.get(server_key(msg))
                if sv is not None and sv.st.request is msg:
                    self._relays.pop(sv.key, None)
                    self._respond(sv, resp, now, out)  # the transaction ends like any other
                else:
                    out.append(Send(resp.to_bytes(), src))
        return out

    def transport_failed(self, token: Any, now: float, reason: str = "transport error") -> list[Send]:
        out: list[Send] = []
        entry = self._client.get(token)
        if entry is None:
            return out
        owner, ctx, dest = entry
        log.warning("transport failure toward %s:%d (%s): %s call_id=%s", dest.host, dest.port,
                    dest.transport, reason, ctx.request.call_id)
        self._client_events(owner, ctx, dest, ctx.transport_error(now, reason), now, out)
        return out

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> list[Send]:
        out: list[Send] = []
        heap = self._timers
        while heap and heap[0][0] <= now:
            _, _, obj = heapq.heappop(heap)
            if obj.terminated:
                continue
            due = obj.next_timer()
            if due is None or due > now:
                continue
            if isinstance(obj, _Relay):
                self._relay_deadline(obj, now, out)
            elif isinstance(obj, ClientTransaction):
                entry = self._client.get(obj.key)
                owner, dest = (entry[0], entry[2]) if entry else (None, None)
                self._client_events(owner, obj, dest, obj.handle_timer(now), now, out)
            elif isinstance(obj, _Server):
                self._server_events(obj, obj.st.handle_timer(now), out)
            else:
                out += obj.handle_timer(now)
            self._schedule(obj)
        return out

    @property
    def active_transactions(self) -> int:
        return len(self._server) + len(self._client)

    @property
    def pending_requests(self) -> int:
        """Requests relayed and still waiting for their final response (what a graceful stop drains)."""
        return sum(1 for r in self._relays.values() if not r.final_sent)

    # ---------------------------------------------------------------- requests
    def _on_request(self, req: Request, src: Source, now: float, out: list[Send]) -> None:
        self._stamp_via(req, src)
        key = server_key(req)
        if req.method == "ACK":
            sv = self._server.get(key)
            if sv is not None:  # ACK for a non-2xx final: hop-by-hop, ends here (17.2.1)
                self._server_events(sv, sv.st.receive_request(req, now), out)
                return
            self._route_stateless_ack(req, src, now, out)
            return
        sv = self._server.get(key)
        if sv is not None:  # retransmission
            self._server_events(sv, sv.st.receive_request(req, now), out)
            return
        guard = getattr(self, "guard", None)
        verdict = guard.screen(req, src, now) if guard is not None else None
        if verdict is not None:  # guard.Guard: a Drop (scanner, flood) or a 503 beyond a limit
            self.stats["rejected"] += 1
            if isinstance(verdict, Reply):
                log.info("answered %s from %s:%d with %d (%s) call_id=%s", req.method, *src.addr,
                         verdict.status, verdict.log, req.call_id)
                sv = self._server[key] = _Server(ServerTransaction(req, reliable=src.transport != "udp", now=now), src, key)
                self._respond(sv, self._local_response(req, verdict, src.leg), now, out)
            return
        if req.method == "CANCEL":
            self._on_cancel(req, src, now, out)
            return

        reliable = src.transport != "udp"
        sv = self._server[key] = _Server(ServerTransaction(req, reliable=reliable, now=now), src, key)
        loop = self._loop_hash(req)
        problem = self._check_forwardable(req, loop)
        if problem is not None:
            self._respond(sv, self._local_response(req, Reply(*problem), src.leg), now, out)
            return
        decision = self.router.request(req, src, now)
        if isinstance(decision, Drop):
            self.stats["rejected"] += 1
            log.info("dropped %s from %s:%d: %s call_id=%s", req.method, *src.addr, decision.log, req.call_id)
            self._server.pop(key, None)
            return
        new_call = req.method == "INVITE" and req.to_addr.tag is None
        if isinstance(decision, Reply):
            if new_call and decision.status >= 300 and decision.status != 403:
                self._call_started(req, src, None)  # refused calls have a record too
                self.observer.call_failed(req.call_id, decision.status, decision.reason, time.time())
            if decision.status >= 400:
                self.stats["rejected"] += 1
                log.info("answered %s from %s:%d with %d %s%s call_id=%s", req.method, *src.addr,
                         decision.status, decision.reason,
                         f" ({decision.log})" if decision.log else "", req.call_id)
            self._respond(sv, self._local_response(req, decision, src.leg), now, out)
            return
        if req.method == "INVITE":  # only now: a dropped request gets nothing at all
            self._respond(sv, self._local_response(req, Reply(100, "Trying"), src.leg), now, out)
            if new_call:
                self._call_started(req, src, decision.identity)
        elif req.method == "BYE":
            self.observer.call_ended(req.call_id, src.leg, time.time())
        relay = _Relay(sv, req, decision, loop)
        self._relays[key] = relay
        if self.media is not None:
            step = self.media.for_request(decision.request, decision.targets[0].dest.leg)
            if step is not None and not step.wait:
                out.append(MediaCall(None, step.command))
            elif step is not None:
                self._await_media(step, out, lambda reply, at, o: self._offer_done(relay, reply, at, o))
                return
        self._next_target(relay, now, out)

    def _check_forwardable(self, req: Request, loop: str) -> tuple[int, str] | None:
        """RFC 3261 16.3: Max-Forwards and loop detection, before any routing."""
        mf = req.headers.get("max-forwards")
        if mf is not None and int(mf) <= 0:
            if req.method == "OPTIONS":
                return None  # 16.3 step 3: we may answer an OPTIONS addressed to us
            return 483, "Too Many Hops"
        for v in req.headers.get_all("via")[1:]:
            if loop in v and self._is_my_via(v):
                return 482, "Loop Detected"
        return None

    def _is_my_via(self, value: str) -> bool:
        try:
            via = parse_via(value)
        except ParseError:
            return False
        return any(via.host.lower() == leg.via_host.lower() and (via.port or 5060) == leg.via_port
                   for leg in self.legs.values())

    def _loop_hash(self, req: Request) -> str:
        # 16.6 step 8: a spiral changes the R-URI, a loop does not.
        h = hashlib.blake2s(digest_size=6)
        for part in (req.uri, req.headers.get("from") or "", req.headers.get("to") or "",
                     req.call_id, str(req.cseq.number), self._secret):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def _stamp_via(self, req: Request, src: Source) -> None:
        """RFC 3261 18.2.1 received= and RFC 3581 rport on the top Via."""
        via = req.top_via
        changed = False
        if via.host.strip("[]") != src.addr[0]:
            via.params["received"] = src.addr[0]
            changed = True
        if "rport" in via.params and via.params["rport"] is None:
            via.params["rport"] = str(src.addr[1])
            changed = True
        if changed:
            vias = req.headers.get_all("via")
            vias[0] = str(via)
            req.headers.replace_all("via", vias)

    def _on_cancel(self, cancel: Request, src: Source, now: float, out: list[Send]) -> None:
        """RFC 3261 16.10: answer the CANCEL, cancel the pending branch."""
        key = server_key(cancel)
        invite_key = key[:-1] + ("INVITE",)
        relay = self._relays.get(invite_key)
        csv = self._server[key] = _Server(ServerTransaction(cancel, reliable=src.transport != "udp", now=now), src, key)
        if relay is None:
            self._respond(csv, make_response(cancel, 481, "Call/Transaction Does Not Exist"), now, out)
            return
        self._respond(csv, make_response(cancel, 200, "OK"), now, out)
        relay.cancelled = True
        self._set_deadline(relay, now + 64 * T1, "cancel")  # the 487 must come within Timer B's span
        if relay.client is not None and relay.client.state == "proceeding":
            self._send_cancel(relay.client, relay.dest, now, out, relay.decision.identity)
        elif relay.client is None and not relay.final_sent:
            self._final_local(relay, 487, "Request Terminated", now, out)

    def _send_cancel(self, ctx: ClientTransaction, dest: Destination | None, now: float, out: list[Send],
                     identity: str | None = None) -> None:
        if dest is None:
            return
        orig = ctx.request
        h = Headers()
        h.add("via", orig.headers.get("via") or "")
        for r in orig.headers.get_all("route"):
            h.add("route", r)
        h.add("max-forwards", "70")
        for name in ("from", "to", "call-id"):
            h.add(name, orig.headers.get(name) or "")
        h.add("cseq", f"{orig.cseq.number} CANCEL")
        cancel = Request("CANCEL", orig.uri, h)
        self.router.outgoing(cancel, dest.leg, identity)
        # RFC 3261 9.1: no final answer within 64*T1 of the CANCEL ends the INVITE transaction
        self._schedule(_Expire(self._client, ctx, now + 64 * T1))
        cctx = ClientTransaction(cancel, reliable=dest.transport != "udp", now=now)
        self._client[cctx.key] = (None, cctx, dest)
        self._client_events(None, cctx, dest, cctx.start(), now, out)

    def _route_stateless_ack(self, ack: Request, src: Source, now: float, out: list[Send]) -> None:
        """ACK for a 2xx is its own end-to-end request (17.1.1.3): route it, no transaction."""
        decision = self.router.request(ack, src, now)
        if not isinstance(decision, Forward) or not decision.targets:
            log.info("ACK from %s:%d not routable: %s call_id=%s", *src.addr,
                     getattr(decision, "log", None) or getattr(decision, "reason", ""), ack.call_id)
            return
        step = self.media.for_request(decision.request, decision.targets[0].dest.leg) if self.media else None
        if step is not None and step.wait:
            def done(reply: Any, at: float, o: list) -> None:
                if isinstance(reply, Exception):
                    log.error("rtpengine answer for ACK failed (%s) call_id=%s", reply, ack.call_id)
                    return
                decision.request.body = str(reply.get("sdp", "")).encode()
                self._send_stateless_ack(ack, decision, o)
            self._await_media(step, out, done)
            return
        self._send_stateless_ack(ack, decision, out)

    def _send_stateless_ack(self, ack: Request, decision: Forward, out: list) -> None:
        target = decision.targets[0]
        req = decision.request
        incoming_branch = ack.top_via.branch or ""
        branch = MAGIC_COOKIE + "-" + hashlib.blake2s((incoming_branch + self._secret).encode(),
                                                      digest_size=8).hexdigest()
        self._prepare_branch(req, target, branch, None, decision.identity)
        out.append(Send(req.to_bytes(), target.dest))

    # ---------------------------------------------------------------- branches
    def _next_target(self, relay: _Relay, now: float, out: list[Send]) -> None:
        d = relay.decision
        relay.index += 1
        if relay.index >= len(d.targets):
            return
        target = d.targets[relay.index]
        req = _copy_request(d.request)
        branch = f"{MAGIC_COOKIE}-{relay.loop}.{os.urandom(5).hex()}"
        self._prepare_branch(req, target, branch, d.record_route, d.identity)
        ctx = ClientTransaction(req, reliable=target.dest.transport != "udp", now=now)
        relay.client, relay.dest = ctx, target.dest
        self._client[ctx.key] = (relay, ctx, target.dest)
        if d.failover and relay.index + 1 < len(d.targets):
            self._set_deadline(relay, now + self.invite_timeout, "failover")
        elif req.method == "INVITE" and not relay.cancelled:
            self._set_deadline(relay, now + TIMER_C, "timer_c")
        self._client_events(relay, ctx, target.dest, ctx.start(), now, out)

    def _set_deadline(self, relay: _Relay, when: float | None, kind: str) -> None:
        relay.deadline, relay.deadline_kind = when, kind
        if when is not None:
            self._schedule(relay)

    def _prepare_branch(self, req: Request, target: Target, branch: str,
                        record_route: list[str] | None, identity: str | None) -> None:
        out_leg = self.legs[target.dest.leg]
        req.uri = target.ruri
        h = req.headers
        mf = h.get("max-forwards")
        h.set("max-forwards", str(int(mf) - 1) if mf is not None else "70")
        for entry in reversed(record_route or ()):
            h.add_first("record-route", entry)
        transport = target.dest.transport
        params = f";branch={branch}" + (";rport" if transport == "udp" else "")
        h.add_first("via", f"SIP/2.0/{transport.upper()} {out_leg.via_host}:{out_leg.via_port}{params}")
        if self.router.hiding and target.dest.leg == TEAMS:
            self.router.hide_request_toward_teams(req)
        self.router.outgoing(req, target.dest.leg, identity)

    def _relay_deadline(self, relay: _Relay, now: float, out: list[Send]) -> None:
        kind = relay.deadline_kind
        relay.deadline = None
        ctx = relay.client
        if kind == "timer_c" and not relay.final_sent:
            # RFC 3261 16.6 step 11: no final answer for 3 minutes after the last provisional
            log.warning("no final answer within %ds (Timer C), cancelling call_id=%s", TIMER_C, relay.call_id)
            if ctx is not None and ctx.state == "proceeding":
                relay.cancelled = True
                self._send_cancel(ctx, relay.dest, now, out, relay.decision.identity)
            self._final_local(relay, 408, "Request Timeout", now, out)
            return
        if kind == "cancel" and not relay.final_sent:
            log.warning("no final answer after CANCEL, ending it here call_id=%s", relay.call_id)
            self._final_local(relay, 487, "Request Terminated", now, out)
            return
        # failover: no answer at all from this target within invite_timeout (reference 5)
        if ctx is None or ctx.state not in ("calling", "trying") or relay.cancelled:
            return
        log.warning("no answer from %s within %.1fs, failing over call_id=%s",
                    relay.dest.host if relay.dest else "?", self.invite_timeout, relay.call_id)
        relay.abandoned.append(ctx)
        self.stats["failovers"] += 1
        if relay.dest is not None:
            self.router.branch_failed(relay.dest, f"no answer within {self.invite_timeout:g}s", now)
        self._next_target(relay, now, out)

    def _client_events(self, owner: Any, ctx: ClientTransaction, dest: Destination | None,
                       events: list, now: float, out: list[Send]) -> None:
        """`owner` is the _Relay of a proxied request, a callback for a request we originated
        (OPTIONS pings: called with (status | None, reason, now, retry_after)), or None (CANCEL)."""
        relay = owner if isinstance(owner, _Relay) else None
        try:
            self._client_event_loop(owner, relay, ctx, dest, events, now, out)
        finally:  # even if relaying raised, the transaction table stays true
            if ctx.terminated:
                self._client.pop(ctx.key, None)
            else:
                self._schedule(ctx)

    def _client_event_loop(self, owner: Any, relay: "_Relay | None", ctx: ClientTransaction,
                           dest: Destination | None, events: list, now: float, out: list) -> None:
        for ev in events:
            if isinstance(ev, Transmit):
                msg = ev.message
                if msg.method == "ACK" and msg.headers.get("x-ms-sbc") is None and dest is not None:  # type: ignore[union-attr]
                    ident = relay.decision.identity if relay is not None else None
                    self.router.outgoing(msg, dest.leg, ident)  # the hop-by-hop ACK the transaction built
                out.append(Send(msg.to_bytes(), dest, ctx.key))
            elif isinstance(ev, Deliver):
                resp = ev.response
                if relay is not None and resp.status >= 200 and dest is not None:
                    self.router.branch_answered(dest, resp.status, retry_after(resp), now)
                if relay is not None:
                    self._on_branch_response(relay, ctx, resp, now, out)
                elif owner is not None and resp.status >= 200:
                    owner(resp.status, resp.reason, now, retry_after(resp))
            elif isinstance(ev, (TimedOut, TransportFailed)):
                reason = "timed out" if isinstance(ev, TimedOut) else f"transport failure ({ev.reason})"
                if isinstance(ev, TimedOut):
                    self.stats["timeouts"] += 1
                    self.observer.timeout(ctx.request.method)
                if relay is not None:
                    if dest is not None:
                        self.router.branch_failed(dest, reason, now)
                    code, text = (408, "Request Timeout") if isinstance(ev, TimedOut) else (503, "Service Unavailable")
                    self._on_branch_response(relay, ctx, make_response(
                        ctx.request, code, text, self._tag(ctx.request)), now, out)
                elif owner is not None:
                    owner(None, reason, now, None)

    # ---------------------------------------------------------------- originated requests
    def originate(self, req: Request, dest: Destination, now: float, on_result: Any,
                  timers: Any = None) -> list[Send]:
        """Send a request of our own (OPTIONS keep-alive) through a client transaction.
        `on_result(status | None, reason, now, retry_after)` gets the final answer or the failure."""
        kw = {"timers": timers} if timers is not None else {}
        ctx = ClientTransaction(req, reliable=dest.transport != "udp", now=now, **kw)
        self._client[ctx.key] = (on_result, ctx, dest)
        out: list[Send] = []
        self._client_events(on_result, ctx, dest, ctx.start(), now, out)
        return out

    def add_timed(self, obj: Any) -> None:
        """Put an object with next_timer()/handle_timer(now) -> [Send]/terminated on our clock."""
        self._schedule(obj)

    def is_client_active(self, token: Any) -> bool:
        return token in self._client

    def _on_branch_response(self, relay: _Relay, ctx: ClientTransaction, resp: Response,
                            now: float, out: list[Send], media_done: bool = False) -> None:
        status = resp.status
        if ctx in relay.abandoned:
            if status < 200 and status != 100:
                self._send_cancel(ctx, self._client.get(ctx.key, (None, None, None))[2], now, out,
                                  relay.decision.identity)
            elif 200 <= status < 300:
                log.error("late 2xx from an abandoned Teams proxy call_id=%s", relay.call_id)
            return
        if ctx is relay.client and relay.deadline_kind != "cancel" and relay.request.method == "INVITE":
            # the target answered: no failover on silence any more; Timer C runs (and restarts
            # on every provisional, 16.7 step 2) until the final answer
            self._set_deadline(relay, now + TIMER_C, "timer_c")
        elif ctx is relay.client and relay.deadline_kind == "failover":
            self._set_deadline(relay, None, "")
        if status == 100:
            return
        if self.media is not None and not media_done:
            if relay.media_busy:
                relay.queue.append((ctx, resp))  # keep the order of responses
                return
            step = self.media.for_response(resp, ctx.request, relay.src.leg)
            if step is not None:
                relay.media_busy = True
                self._await_media(step, out, lambda reply, at, o: self._answer_done(relay, ctx, resp, reply, at, o))
                return
        if relay.cancelled and status < 200 and ctx.state == "proceeding":
            self._send_cancel(ctx, relay.dest, now, out, relay.decision.identity)
        if status < 200:
            if relay.final_sent:
                return
            relay.provisional_sent = True
            self._upstream(relay, resp, now, out)
            return
        if status < 300:
            first = not relay.final_sent
            self._upstream(relay, resp, now, out)  # every 2xx goes up (RFC 6026)
            relay.final_sent = True
            if first and relay.request.method == "INVITE" and relay.request.to_addr.tag is None:
                self.observer.call_answered(relay.call_id, time.time())
            return
        if relay.final_sent:
            return
        d = relay.decision
        if (d.failover and status in FAILOVER_CODES and not relay.provisional_sent
                and not relay.cancelled and relay.index + 1 < len(d.targets)):
            log.warning("failing over after %d %s for %s call_id=%s", status, resp.reason,
                        relay.dest.host if relay.dest else "?", relay.call_id)
            self.stats["failovers"] += 1
            self._next_target(relay, now, out)
            return
        self._final_upstream(relay, resp, now, out)

    def _final_upstream(self, relay: _Relay, resp: Response, now: float, out: list[Send]) -> None:
        relay.final_sent = True
        relay.deadline = None
        self._upstream(relay, resp, now, out)
        self._failed_upstream(relay, resp.status, resp.reason)
        self._media_forget(relay, out)

    # ---------------------------------------------------------------- media (rtpengine)
    def media_done(self, op: int, result: Any, now: float) -> list:
        """The reply (a dict) or the exception of a MediaCall we asked the shell to run."""
        cont = self._media_ops.pop(op, None)
        out: list = []
        if cont is not None:
            cont(result, now, out)
        return out

    def _await_media(self, step: Any, out: list, cont: Any) -> None:
        op = next(self._op_seq)
        self._media_ops[op] = cont
        out.append(MediaCall(op, step.command))

    def _final_local(self, relay: _Relay, status: int, reason: str, now: float, out: list,
                     headers: list | None = None) -> None:
        """Answer the relayed request ourselves and forget its media."""
        relay.final_sent = True
        relay.deadline = None
        self._respond(relay.server, self._local_response(
            relay.request, Reply(status, reason, headers or []), relay.src.leg), now, out)
        self._failed_upstream(relay, status, reason)
        self._media_forget(relay, out)

    def _call_started(self, req: Request, src: Source, identity: str | None) -> None:
        other = PBX if src.leg == TEAMS else TEAMS
        self.observer.call_started(req.call_id, f"{src.leg}->{other}", identity,
                                   _user(req.headers.get("from")), _user(req.headers.get("to")), time.time())

    def _failed_upstream(self, relay: _Relay, status: int, reason: str) -> None:
        if relay.request.method == "INVITE" and relay.request.to_addr.tag is None:
            self.observer.call_failed(relay.call_id, status, reason, time.time())

    def _media_forget(self, relay: _Relay, out: list) -> None:
        if self.media is not None:
            step = self.media.for_failed_call(relay.request)
            if step is not None:
                out.append(MediaCall(None, step.command))

    def _offer_done(self, relay: _Relay, reply: Any, now: float, out: list) -> None:
        if relay.final_sent:
            self._media_forget(relay, out)  # CANCELled while rtpengine was working
            return
        if isinstance(reply, Exception) or "sdp" not in reply:
            why = reply if isinstance(reply, Exception) else "reply without sdp"
            log.error("media offer failed, call refused: %s call_id=%s", why, relay.call_id)
            self._final_local(relay, 503, "Service Unavailable", now, out)
            return
        sdp = str(reply["sdp"])
        first = relay.decision.targets[0].dest
        problem = self.media.sdp_problem(sdp, first.leg, first.transport)
        if problem:
            log.error("call refused: %s call_id=%s", problem, relay.call_id)
            self._final_local(relay, 488, "SDP Too Large For UDP Trunk", now, out,
                              [("Warning", f'399 sbc "{problem}"')])
            return
        relay.decision.request.body = sdp.encode()
        self._next_target(relay, now, out)

    def _answer_done(self, relay: _Relay, ctx: ClientTransaction, resp: Response, reply: Any,
                     now: float, out: list) -> None:
        relay.media_busy = False
        if isinstance(reply, Exception) or "sdp" not in reply:
            why = reply if isinstance(reply, Exception) else "reply without sdp"
            log.error("media answer failed, tearing the call down: %s call_id=%s", why, relay.call_id)
            self._teardown(relay, ctx, resp, now, out)
            return
        resp.body = str(reply["sdp"]).encode()
        self._on_branch_response(relay, ctx, resp, now, out, media_done=True)
        while relay.queue and not relay.media_busy:
            qctx, qresp = relay.queue.pop(0)
            self._on_branch_response(relay, qctx, qresp, now, out)

    def _teardown(self, relay: _Relay, ctx: ClientTransaction, resp: Response, now: float, out: list) -> None:
        """The call cannot have media: end it on both legs (issue: never a call without media)."""
        relay.queue.clear()
        if resp.status >= 200:
            self._end_answered_branch(relay, ctx, resp, now, out)
        elif ctx.state == "proceeding":
            relay.cancelled = True
            self._send_cancel(ctx, relay.dest, now, out, relay.decision.identity)
        if not relay.final_sent:
            self._final_local(relay, 503, "Service Unavailable", now, out)
        else:
            self._media_forget(relay, out)

    def _end_answered_branch(self, relay: _Relay, ctx: ClientTransaction, resp: Response,
                             now: float, out: list) -> None:
        """ACK and BYE a 2xx we will not relay, along the callee's side of the route set."""
        dest_leg = relay.dest.leg if relay.dest else None
        if dest_leg is None:
            return
        rr = resp.headers.get_all("record-route")
        mine = next((i for i, v in enumerate(rr) if self.router.is_own_route(v)), len(rr))
        routes = list(reversed(rr[:mine]))
        contact = resp.headers.get("contact")
        if not contact:
            return
        target = parse_name_addr(contact).uri
        hop = self.router.hop_toward(parse_name_addr(routes[0]).uri if routes else target, dest_leg)
        if hop is None:
            return
        leg = self.legs[dest_leg]
        cseq = ctx.request.cseq.number

        def request(method: str, number: int) -> Request:
            h = Headers()
            rport = ";rport" if hop.transport == "udp" else ""
            h.add("via", f"SIP/2.0/{hop.transport.upper()} {leg.via_host}:{leg.via_port};"
                         f"branch={MAGIC_COOKIE}-{os.urandom(8).hex()}{rport}")
            for r in routes:
                h.add("route", r)
            h.add("max-forwards", "70")
            h.add("from", ctx.request.headers.get("from") or "")
            h.add("to", resp.headers.get("to") or "")
            h.add("call-id", resp.call_id)
            h.add("cseq", f"{number} {method}")
            req = Request(method, target, h)
            self.router.outgoing(req, dest_leg, relay.decision.identity)
            return req

        out.append(Send(request("ACK", cseq).to_bytes(), hop))
        out.extend(self.originate(request("BYE", cseq + 1), hop, now, _ignore_result))

    def _upstream(self, relay: _Relay, resp: Response, now: float, out: list[Send]) -> None:
        """16.7: forward a response to the request's sender through the server transaction.
        A response we cannot relay (no Via left for the sender, a malformed header we must
        rewrite) never strands the transaction: a final one becomes 502 (a 2xx is also ACKed
        and BYEd toward the callee), a provisional one is dropped."""
        up = Response(resp.status, resp.reason, resp.headers.copy(), resp.body)
        up.headers.pop_first("via")
        if self.router.hiding:
            if relay.src.leg == PBX:  # its Vias stayed with us (topology hiding)
                self.router.unhide_response_toward_pbx(up, relay.request.headers.get_all("via"))
            else:
                self.router.hide_response_toward_teams(up)
        try:
            sender_via = up.headers.get("via")
            if sender_via is None:
                raise ParseError("Response without the sender's Via")
            parse_via(sender_via)
            self.router.outgoing(up, relay.src.leg, relay.decision.identity)
        except ParseError as e:
            log.warning("cannot relay %d %s: %s call_id=%s", resp.status, resp.reason, e.reason, relay.call_id)
            if resp.status < 200:
                return
            if resp.status < 300 and relay.client is not None:
                self._end_answered_branch(relay, relay.client, resp, now, out)
            up = self._local_response(relay.request, Reply(502, "Bad Gateway"), relay.src.leg)
        self._respond(relay.server, up, now, out)

    # ---------------------------------------------------------------- responses
    def _on_response(self, resp: Response, src: Source, now: float, out: list[Send]) -> None:
        entry = self._client.get(client_key(resp))
        if entry is None:
            self._stray_response(resp, src, out)
            return
        relay, ctx, dest = entry
        self._client_events(relay, ctx, dest, ctx.receive_response(resp, now), now, out)

    def _stray_response(self, resp: Response, src: Source, out: list[Send]) -> None:
        """A 2xx to INVITE whose transaction is gone (restart, late retransmission) is still
        forwarded along its Via (RFC 3261 16.7 step 10 / 18.2.2); anything else is dropped."""
        if not (200 <= resp.status < 300 and resp.cseq.method == "INVITE"):
            return
        vias = resp.headers.get_all("via")
        if len(vias) < 2 or not self._is_my_via(vias[0]):
            return
        up = Response(resp.status, resp.reason, resp.headers.copy(), resp.body)
        up.headers.pop_first("via")
        dest = self.router.response_destination(up, src)
        if dest is None:
            return
        self.router.outgoing(up, dest.leg, None)
        out.append(Send(up.to_bytes(), dest))

    # ---------------------------------------------------------------- local answers
    def _respond(self, sv: "_Server", resp: Response, now: float, out: list[Send]) -> None:
        self._server_events(sv, sv.st.send_response(resp, now), out)

    def _server_events(self, sv: "_Server", events: list, out: list[Send]) -> None:
        for ev in events:
            if isinstance(ev, Transmit):
                out.append(Send(ev.message.to_bytes(), sv.src))
            elif isinstance(ev, TimedOut):
                self.stats["timeouts"] += 1
                log.warning("no ACK for final response call_id=%s", sv.st.request.call_id)
        if sv.st.terminated:
            self._server.pop(sv.key, None)
            self._relays.pop(sv.key, None)
        else:
            self._schedule(sv)

    def _local_response(self, req: Request, reply: Reply, leg: str) -> Response:
        resp = make_response(req, reply.status, reply.reason, self._tag(req))
        for name, value in reply.headers:
            resp.headers.add(name.lower(), value)
        if leg == TEAMS and reply.status > 100 and "contact" not in resp.headers:
            # every response to Teams carries the FQDN Contact (reference section 3)
            resp.headers.add("contact", self.router.own_contact(leg))
        self.router.outgoing(resp, leg, None)
        return resp

    def _tag(self, req: Request) -> str:
        return hashlib.blake2s((req.call_id + self._secret).encode(), digest_size=6).hexdigest()

    def _answer_unparsable(self, data: bytes, src: Source, err: ParseError, out: list[Send]) -> None:
        """Bad input never crashes anything: answer 400 when a response can be built, else log."""
        resp = bare_error_response(data, err)
        log.info("unparsable message from %s:%d (%s): %s", src.addr[0], src.addr[1], src.transport,
                 err.reason)
        if resp is not None:
            out.append(Send(resp, src))

    def _schedule(self, obj: Any) -> None:
        t = obj.next_timer()
        if t is not None and not obj.terminated:
            heapq.heappush(self._timers, (t, next(self._seq), obj))


def _user(value: str | None) -> str:
    """The user part of a From/To for records: `+4420...` or the whole URI if it has none."""
    try:
        uri = parse_name_addr(value or "").uri
    except ParseError:
        return ""
    body = uri.split(":", 1)[-1]
    return body.split("@", 1)[0] if "@" in body else uri


def _ignore_result(*_: Any) -> None:
    pass


def retry_after(resp: Response) -> float | None:
    """Seconds of a Retry-After header (RFC 3261 20.33: delta-seconds [comment] *params)."""
    v = resp.headers.get("retry-after")
    if not v:
        return None
    digits = v.strip().split(None, 1)[0].split(";", 1)[0].split("(", 1)[0]
    return float(digits) if digits.isdigit() and len(digits) <= 7 else None


def _copy_request(req: Request) -> Request:
    return Request(req.method, req.uri, req.headers.copy(), req.body)


def bare_error_response(data: bytes, err: ParseError) -> bytes | None:
    """Build `400 <reason>` from the raw header lines when the message is a request and the
    headers a response needs can be found; None otherwise (responses are never answered)."""
    head = data.split(b"\r\n\r\n", 1)[0][:8192]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if not lines or lines[0].startswith("SIP/") or " " not in lines[0]:
        return None
    wanted = {"via": [], "v": [], "from": [], "f": [], "to": [], "t": [], "call-id": [], "i": [], "cseq": []}
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
    if any(c in v for v in vias + fr + to + cid + cseq for c in "\r\n\0"):
        return None
    out = [f"SIP/2.0 {err.status} {err.reason}"]
    out += [f"Via: {v}" for v in vias]
    out += [f"From: {fr[0]}", f"To: {to[0]}", f"Call-ID: {cid[0]}", f"CSeq: {cseq[0]}",
            "Content-Length: 0", "", ""]
    return "\r\n".join(out).encode()
