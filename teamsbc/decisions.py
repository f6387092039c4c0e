"""The vocabulary the proxy and its policies share: where a message came from, where it goes,
what to do with it, and the interfaces of the policies the proxy is built with.

Nothing here does anything. The proxy (mechanics: transactions, Via, Record-Route, failover
timers) imports it; so do the policies it consults, each through one typed interface:

    RoutingPolicy   routing.Router: where a request goes and what leaves on each leg
    Gate            guard.Guard: who may talk to us and how much (per message)
    Door            guard.Guard: the same at the socket (connections, datagrams, handshakes)
    MediaPlanner    media.anchor.MediaAnchor: which rtpengine command at which moment

The proxy's answers to the shell are `Send` and `MediaCall`; its call events (events.py) the
shell drains with `Proxy.next_events()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .events import CallEvent
from .sip.message import Message, Request, Response

TEAMS = "teams"
PBX = "pbx"


# --- where from, where to -----------------------------------------------------------------
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


@dataclass(frozen=True, slots=True)
class Leg:
    """How the SBC appears on one side: Via sent-by, Record-Route entry."""
    name: str
    transport: str
    via_host: str
    via_port: int
    record_route: str

    def via(self, transport: str, branch: str) -> str:
        """Our Via on this leg (RFC 3261 16.6 step 8; RFC 3581 rport over UDP)."""
        rport = ";rport" if transport == "udp" else ""
        return f"SIP/2.0/{transport.upper()} {self.via_host}:{self.via_port};branch={branch}{rport}"


# --- what the proxy tells the shell -------------------------------------------------------
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


# --- what the policies tell the proxy -----------------------------------------------------
@dataclass(slots=True)
class Reply:
    """Answer locally."""
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    log: str | None = None  # why, for the log line
    media: dict[str, Any] | None = None  # an NG command that must succeed first (INFO DTMF -> play DTMF)


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
    failover: bool = False   # the routing policy may send it to the next target after a failure
    identity: str | None = None  # the FQDN presented to Teams for this request (tenant or base)


@dataclass(slots=True)
class Drop:
    log: str


@dataclass(frozen=True, slots=True)
class DialogHop:
    """Where a request we originate inside a dialog goes (ending a 2xx we will not relay)."""
    routes: list[str]
    target: str
    dest: Destination


@dataclass(frozen=True, slots=True)
class MediaStep:
    command: dict[str, Any]
    wait: bool            # True: relay the message only with the SDP from the reply
    late_offer: bool = False  # the SBC offers for a PBX INVITE without SDP (late_offer.py)


# --- the policies' interfaces -------------------------------------------------------------
class RoutingPolicy(Protocol):
    """kamailio.cfg's request_route, failure_route and the per-leg rewriting, as methods."""

    legs: dict[str, Leg]

    def request(self, req: Request, src: Source, now: float) -> Reply | Forward | Drop:
        """request_route: what to do with a request that is not a retransmission."""

    def retry_next(self, forward: Forward, status: int | None) -> bool:
        """failure_route: after `status` (None = silence) from a target, try the next one?
        Asked only while nothing but 100 went back to the caller and targets remain."""

    def egress(self, msg: Message, leg: str, identity: str | None,
               answering: Request | None = None) -> None:
        """Every message the proxy builds or relays passes here once, just before it leaves on
        `leg`: Teams' rules, topology hiding. `answering`: the request a response answers, as
        we received it."""

    def peer_answered(self, dest: Destination, status: int, retry_after: float | None,
                      now: float) -> None:
        """A target answered finally (health of the peer)."""

    def peer_failed(self, dest: Destination, reason: str, now: float) -> None:
        """A target did not answer or could not be reached (health of the peer)."""

    def dialog_hop(self, resp: Response, leg: str) -> DialogHop | None:
        """Where an ACK/BYE of ours for the dialog of this 2xx goes on `leg`, or None."""

    def caller_hop(self, invite: Request, leg: str) -> DialogHop | None:
        """Where a request of ours toward the caller of this INVITE goes on `leg`, or None."""

    def stray_destination(self, resp: Response, src: Source) -> Destination | None:
        """Where a 2xx to INVITE with no transaction left (restart) goes, or None."""


class Gate(Protocol):
    """Per message (guard.Guard)."""

    def admit(self, src: Source, now: float) -> bool:
        """Before parsing: False = drop without a word."""

    def check_limits(self, msg: Message, size: int) -> None:
        """After parsing: raises ParseError beyond the configured limits."""

    def parse_failed(self, src: Source, now: float) -> None:
        """A message from `src` did not parse."""

    def screen(self, req: Request, src: Source, now: float) -> Drop | Reply | None:
        """A new request before routing: None = go on."""

    def answered(self, req: Request, src: Source, out: list, now: float) -> None:
        """What we answered (refusals count toward a ban)."""

    def track(self, event: CallEvent, now: float) -> None:
        """Calls in progress (security.max_calls)."""


class Door(Protocol):
    """At the socket, before any SIP (guard.Guard)."""

    def admit_connection(self, addr: tuple, leg: str, now: float, handle: Any = None) -> bool: ...

    def admit_address(self, ip: str, leg: str, now: float) -> bool: ...

    def handshake_failed(self, addr: tuple, now: float) -> None: ...


class MediaPlanner(Protocol):
    """Which rtpengine command, when (media.anchor.MediaAnchor)."""

    def for_request(self, req: Request, toward: str) -> MediaStep | None: ...

    def for_response(self, resp: Response, request: Request, toward: str) -> MediaStep | None: ...

    def for_late_offer(self, teams_sdp: str, resp: Response, request: Request) -> MediaStep: ...

    def for_failed_call(self, request: Request) -> MediaStep | None: ...

    def sdp_problem(self, sdp: str, toward: str, transport: str) -> str | None: ...

    def sdp_refusal(self, msg: Message) -> str | None:
        """Why the SDP of `msg` must never reach rtpengine (a limit it exceeds), or None."""
