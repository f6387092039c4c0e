"""SIP transactions (RFC 3261 section 17, with the RFC 6026 "Accepted" corrections), sans-IO.

A transaction is a state machine fed with messages and with the current time; it answers with
a list of events (Transmit, Deliver, TimedOut, TransportFailed) and tells its owner when it
next wants `handle_timer` called (`next_timer`, an absolute time on the caller's clock). No
sockets, no event loop, no clock reads in here: `now` is always an argument.

Every returned event must be acted on, including those returned by the call that leaves the
transaction terminated (a non-2xx final over TCP returns the ACK to send *and* terminates).
A terminated transaction answers every call with [] and `next_timer()` is None; its owner
drops it from its table.

Design decisions:

* Zero-duration timers. On reliable transports Timers D, I, J and K are zero (Table 4). They
  are not armed: the transaction goes straight to "terminated" when it enters the state that
  would have started them, so the owner can drop it without a timer round trip.
* Late timers. `handle_timer(now)` processes every deadline at or before `now` in time order,
  and re-arms retransmission timers from their deadline, not from `now`, so the schedule does
  not drift with event-loop jitter. If one call covers several retransmission deadlines (the
  loop was stalled) only one Transmit is returned: a burst of identical copies helps nobody.
  A due timeout (B/F/H) wins over any retransmission due in the same call: there is no
  point in a last copy of a message the transaction is giving up on.
* Transport errors after a final response. The TU already holds the final response, so there
  is nothing it could do with TransportFailed (it would turn into a bogus 503): a client
  transaction in "completed" terminates silently, and one in "accepted" ignores the error
  (it sends nothing there; RFC 6026 figure 5 has no such transition, and it must stay to
  match 2xx retransmissions until Timer M).
* Transaction keys: see `server_key` (RFC 3261 17.2.3, including the RFC 2543 fallback) and
  `client_key` (17.1.3).
"""
from __future__ import annotations

from dataclasses import dataclass

from .build import build_ack
from .grammar import MAGIC_COOKIE  # RFC 3261 8.1.1.7: branch of an RFC 3261 compliant sender
from .message import Request, Response
from .uri import Via

__all__ = [
    "T1", "T2", "T4", "TIMER_D", "Timers", "DEFAULT_TIMERS",
    "Transmit", "Deliver", "TimedOut", "TransportFailed", "Event",
    "ClientTransaction", "ServerTransaction", "server_key", "client_key",
    "MAGIC_COOKIE",
]

# RFC 3261 17.1.1.1 and Table 4 (seconds)
T1 = 0.5   # RTT estimate
T2 = 4.0   # cap on the retransmission interval of non-INVITE requests and INVITE responses
T4 = 5.0   # how long a message may stay in the network
TIMER_D = 32.0  # 17.1.1.2: "at least 32 seconds" for unreliable transports


@dataclass(frozen=True, slots=True)
class Timers:
    """Timer base values for one transaction. Defaults are RFC 3261 Table 4."""

    t1: float = T1
    """RTT estimate: first retransmission interval (A, E, G); 64*T1 is B, F, H, J, L, M."""
    t2: float = T2
    """Cap of the E and G retransmission intervals."""
    t4: float = T4
    """Timers I and K on unreliable transports."""
    d: float = TIMER_D
    """Timer D on unreliable transports (not T1-based in the RFC, so set on its own)."""
    timeout: float | None = None
    """Client transactions: Timer B/F instead of 64*T1 (keep-alive pings give up sooner
    without retransmitting faster than RFC 3261 17.1.1.2)."""


DEFAULT_TIMERS = Timers()


# --- events --------------------------------------------------------------------------------
@dataclass(slots=True)
class Transmit:
    """Send a message on the transaction's transport to its destination."""

    message: Request | Response
    """The request (first send, retransmission), a generated ACK, or a (re)sent response.
    The same object is handed out for every retransmission: do not mutate it after sending."""


@dataclass(slots=True)
class Deliver:
    """Client transaction: pass a response up to the transaction user."""

    response: Response
    """A 1xx, the final response, or (INVITE, state "accepted") a further 2xx: RFC 6026 7.2,
    a proxy forwards every 2xx it receives for the transaction."""


@dataclass(slots=True)
class TimedOut:
    """No answer in time. Client: Timer B or F fired before a final response (the TU acts as
    if a 408 was received, RFC 3261 8.1.3.1). INVITE server: Timer H fired, no ACK came."""


@dataclass(slots=True)
class TransportFailed:
    """Client: the transport failed before a final response; the TU treats it as a 503
    (RFC 3261 8.1.3.1)."""

    reason: str
    """Short human-readable cause, for logs and a Reason-Phrase."""


Event = Transmit | Deliver | TimedOut | TransportFailed

# States (plain strings: cheap to compare, readable in logs)
CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
ACCEPTED = "accepted"
COMPLETED = "completed"
CONFIRMED = "confirmed"
TERMINATED = "terminated"


# --- matching ------------------------------------------------------------------------------
def server_key(req: Request) -> tuple:
    """RFC 3261 17.2.3: the key under which an incoming request finds its server transaction.

    For an RFC 3261 branch (starts with z9hG4bK): (branch, sent-by host lower case, sent-by
    port or None, method), where an ACK uses "INVITE" so it finds the INVITE transaction it
    acknowledges, and a CANCEL keeps "CANCEL" (it is a transaction of its own, 9.2).

    RFC 2543 fallback (branch absent or without the cookie): ("rfc2543", Call-ID, From tag,
    CSeq number, Request-URI, top Via, method) with the same ACK -> "INVITE" mapping. 17.2.3
    also asks for the To tag; it cannot be part of a key computed from one request, because
    the INVITE carries none and its ACK carries the response's, so it is left out (an ACK with
    a wrong To tag from an RFC 2543 peer still matches; harmless, the ACK is absorbed). The
    Request-URI is kept: it tells apart an RFC 2543 ACK for a 2xx (sent to the Contact), which
    belongs to no server transaction. The top Via is compared in normalised form.

    Branches are compared case-sensitively, as sent. Raises ParseError only for messages that
    did not come from parse_message (which already validated Via and CSeq).
    """
    via = req.top_via
    method = req.method
    if method == "ACK":
        method = "INVITE"
    branch = via.params.get("branch")
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    return ("rfc2543", req.call_id, req.from_addr.tag, req.cseq.number, req.uri,
            _via_norm(via), method)


def _via_norm(via: Via) -> str:
    port = f":{via.port}" if via.port is not None else ""
    params = ";".join(k if v is None else f"{k}={v}" for k, v in via.params.items())
    return f"{via.transport}/{via.host.lower()}{port};{params}"


def client_key(resp: Response) -> tuple[str, str]:
    """RFC 3261 17.1.3: (top Via branch, CSeq method) of a response, to look up the
    ClientTransaction with that `key`. A CANCEL shares the INVITE's branch but not its method."""
    return (resp.top_via.params.get("branch") or "", resp.cseq.method)


# --- client transactions (17.1) -----------------------------------------------------------
class _Timed:
    """What client and server transactions share: three timers (retransmission, timeout,
    end of the lingering state) and the loop that runs them. Subclasses say how the
    retransmission interval grows and what is retransmitted."""

    __slots__ = ()

    def _terminate(self) -> None:
        self.state = TERMINATED
        self._retx_at = self._timeout_at = self._end_at = None

    def next_timer(self) -> float | None:
        return _earliest(self._retx_at, self._timeout_at, self._end_at)

    def handle_timer(self, now: float) -> list[Event]:
        """Process every timer due at or before `now` (see the module notes on late calls)."""
        events: list[Event] = []
        sent = False
        while self.state != TERMINATED:
            end = self._end_at
            if end is not None and end <= now:
                self._terminate()  # Timer D / K / M (client), I / J / L (server)
                break
            timeout = self._timeout_at
            if timeout is not None and timeout <= now:
                self._terminate()  # Timer B / F (client), H: the ACK never came (server)
                events.append(TimedOut())
                break
            retx = self._retx_at
            if retx is None or retx > now:
                break
            self._retx_interval = self._next_interval()
            self._retx_at = retx + self._retx_interval
            msg = self._retransmission()
            if not sent and msg is not None:
                sent = True  # a stalled loop sends one retransmission, not a burst
                events.append(Transmit(msg))
        return events


class ClientTransaction(_Timed):
    """An INVITE (17.1.1 + RFC 6026 7.2) or non-INVITE (17.1.2) client transaction.

    Construct, then call `start()` and send what it returns. Feed matching responses
    (`client_key(resp) == txn.key`) to `receive_response`, call `handle_timer` when
    `next_timer()` is due, and `transport_error` when the send failed or the connection died.

    In "proceeding" an INVITE transaction has no timer of its own: Timer C (16.6 step 11) and
    CANCEL belong to the proxy core.
    """

    __slots__ = (
        "request", "key", "is_invite", "state", "reliable", "timers", "ack",
        "_now", "_started", "_retx_at", "_retx_interval", "_timeout_at", "_end_at",
    )

    def __init__(self, request: Request, *, reliable: bool, now: float,
                 timers: Timers = DEFAULT_TIMERS):
        if request.method == "ACK":
            raise ValueError("ACK has no client transaction (RFC 3261 17)")
        self.request = request
        self.key: tuple[str, str] = (request.top_via.params.get("branch") or "",
                                     request.cseq.method)
        self.is_invite = request.method == "INVITE"
        self.state = CALLING if self.is_invite else TRYING
        self.reliable = reliable
        self.timers = timers
        # the ACK built for a non-2xx final (INVITE only), resent for each retransmission
        self.ack: Request | None = None
        self._now = now
        self._started = False
        self._retx_at: float | None = None   # Timer A / E
        self._retx_interval = timers.t1
        self._timeout_at: float | None = None  # Timer B / F
        self._end_at: float | None = None      # Timer D / K / M

    @property
    def terminated(self) -> bool:
        return self.state == TERMINATED

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.request.method} {self.key[0]} {self.state}>"

    def start(self) -> list[Event]:
        """Send the request and arm A+B (INVITE) or E+F (non-INVITE) from the creation time.
        A and E only on unreliable transports (17.1.1.2, 17.1.2.2). Idempotent."""
        if self._started or self.state == TERMINATED:
            return []
        self._started = True
        t = self.timers
        if not self.reliable:
            self._retx_at = self._now + t.t1
        self._timeout_at = self._now + (t.timeout if t.timeout is not None else 64 * t.t1)
        return [Transmit(self.request)]

    def receive_response(self, resp: Response, now: float) -> list[Event]:
        """A response matching this transaction. Anything a state does not expect is absorbed."""
        state = self.state
        status = resp.status
        if self.is_invite:
            if state == CALLING or state == PROCEEDING:
                if status < 200:
                    if state == CALLING:
                        self.state = PROCEEDING
                        self._retx_at = self._timeout_at = None  # A stops; B only in Calling
                    return [Deliver(resp)]
                self._retx_at = self._timeout_at = None
                if status < 300:
                    # RFC 6026 7.2: stay to pass 2xx retransmissions up until Timer M
                    self.state = ACCEPTED
                    self._end_at = now + 64 * self.timers.t1
                    return [Deliver(resp)]
                self.ack = ack = build_ack(self.request, resp)
                self._complete(now, self.timers.d)
                return [Deliver(resp), Transmit(ack)]
            if state == ACCEPTED:
                return [Deliver(resp)] if 200 <= status < 300 else []
            if state == COMPLETED and status >= 300 and self.ack is not None:
                return [Transmit(self.ack)]  # the server did not get our ACK
            return []
        # non-INVITE (17.1.2.2)
        if state == TRYING or state == PROCEEDING:
            if status < 200:
                self.state = PROCEEDING
                return [Deliver(resp)]
            self._retx_at = self._timeout_at = None
            self._complete(now, self.timers.t4)
            return [Deliver(resp)]
        return []  # completed: retransmitted finals are absorbed

    def _complete(self, now: float, unreliable_wait: float) -> None:
        """Enter Completed with Timer D / K; zero on reliable transports -> terminated now."""
        if self.reliable:
            self._terminate()
        else:
            self.state = COMPLETED
            self._end_at = now + unreliable_wait

    def _next_interval(self) -> float:
        # Timer A (doubles without cap, 17.1.1.2) or E (doubles up to T2, and is T2 in
        # Proceeding, 17.1.2.2)
        if self.is_invite:
            return self._retx_interval * 2
        if self.state == PROCEEDING:
            return self.timers.t2
        return min(2 * self._retx_interval, self.timers.t2)

    def _retransmission(self) -> Request | Response | None:
        return self.request

    def transport_error(self, now: float, reason: str = "Transport error") -> list[Event]:
        """The transport could not send (ICMP error, connection refused or lost)."""
        state = self.state
        if state == CALLING or state == TRYING or state == PROCEEDING:
            self._terminate()
            return [TransportFailed(reason)]
        if state == COMPLETED:
            self._terminate()  # the ACK / nothing more to send; TU already has the final
        return []


# --- server transactions (17.2) -----------------------------------------------------------
class ServerTransaction(_Timed):
    """An INVITE (17.2.1 + RFC 6026 7.1) or non-INVITE (17.2.2) server transaction.

    Created by the owner for a request that matched no transaction (`server_key`); the TU then
    answers through `send_response` (including its own 100 Trying). Retransmissions of the
    request, and the ACK of a non-2xx final, go to `receive_request`.

    The ACK of a 2xx is a transaction of its own (RFC 3261 13.2.2.4, new branch) and does not
    match this one; if one is fed here anyway it is absorbed, so the owner must route it
    itself.
    """

    __slots__ = (
        "request", "key", "is_invite", "state", "reliable", "timers", "last_response",
        "keep_2xx", "_retx_at", "_retx_interval", "_timeout_at", "_end_at",
    )

    def __init__(self, request: Request, *, reliable: bool, now: float,
                 timers: Timers = DEFAULT_TIMERS, keep_2xx: bool = True):
        """`keep_2xx=False`: in Accepted the 2xx is not kept as `last_response` (nothing in
        that state resends it: a proxy holding thousands of answered calls for Timer L saves
        the memory)."""
        if request.method == "ACK":
            raise ValueError("ACK creates no server transaction (RFC 3261 17.2.3)")
        self.request = request
        self.keep_2xx = keep_2xx
        self.key = server_key(request)
        self.is_invite = request.method == "INVITE"
        self.state = PROCEEDING if self.is_invite else TRYING
        self.reliable = reliable
        self.timers = timers
        self.last_response: Response | None = None
        self._retx_at: float | None = None   # Timer G
        self._retx_interval = timers.t1
        self._timeout_at: float | None = None  # Timer H
        self._end_at: float | None = None      # Timer I / J / L

    @property
    def terminated(self) -> bool:
        return self.state == TERMINATED

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.request.method} {self.key[0]} {self.state}>"

    def receive_request(self, req: Request, now: float) -> list[Event]:
        """A retransmission of the request, or (INVITE) the ACK for a non-2xx final."""
        state = self.state
        if req.method == "ACK":
            if self.is_invite and state == COMPLETED:
                self._retx_at = self._timeout_at = None
                if self.reliable:
                    self._terminate()  # Timer I is zero
                else:
                    self.state = CONFIRMED
                    self._end_at = now + self.timers.t4  # Timer I absorbs ACK retransmissions
            return []
        if state == TRYING or state == ACCEPTED or state == CONFIRMED or state == TERMINATED:
            return []  # 17.2.2 (nothing to resend yet), RFC 6026 7.1, 17.2.1
        # INVITE proceeding/completed, non-INVITE proceeding/completed: resend the last one
        resp = self.last_response
        return [Transmit(resp)] if resp is not None else []

    def send_response(self, resp: Response, now: float) -> list[Event]:
        """The TU answers. Returns [Transmit(resp)] when the state accepts the response, else
        [] (a final after a final, anything after termination)."""
        state = self.state
        status = resp.status
        if self.is_invite:
            if state == PROCEEDING:
                self.last_response = resp
                if status < 200:
                    return [Transmit(resp)]
                if status < 300:
                    # RFC 6026 7.1: the TU (UAS core or proxy) retransmits the 2xx; we only
                    # absorb INVITE retransmissions until Timer L
                    self.state = ACCEPTED
                    if not self.keep_2xx:
                        self.last_response = None
                    self._end_at = now + 64 * self.timers.t1
                    return [Transmit(resp)]
                self.state = COMPLETED
                t = self.timers
                if not self.reliable:
                    self._retx_interval = t.t1
                    self._retx_at = now + t.t1  # Timer G
                self._timeout_at = now + 64 * t.t1  # Timer H, all transports
                return [Transmit(resp)]
            if state == ACCEPTED and 200 <= status < 300:
                if self.keep_2xx:
                    self.last_response = resp
                return [Transmit(resp)]  # RFC 6026 7.1: 2xx retransmission from the TU
            return []
        # non-INVITE (17.2.2)
        if state == TRYING or state == PROCEEDING:
            self.last_response = resp
            if status < 200:
                self.state = PROCEEDING
                return [Transmit(resp)]
            if self.reliable:
                self._terminate()  # Timer J is zero
            else:
                self.state = COMPLETED
                self._end_at = now + 64 * self.timers.t1  # Timer J
            return [Transmit(resp)]
        return []

    def _next_interval(self) -> float:
        return min(2 * self._retx_interval, self.timers.t2)  # Timer G

    def _retransmission(self) -> Request | Response | None:
        return self.last_response

    def transport_error(self, now: float, reason: str = "Transport error") -> list[Event]:
        """The response could not be sent: 17.2.1 / 17.2.2 say terminate; the TU needs no
        event (it learns nothing it could act on, and the peer retransmits or gives up)."""
        self._terminate()
        return []


def _earliest(a: float | None, b: float | None, c: float | None) -> float | None:
    best = a
    if b is not None and (best is None or b < best):
        best = b
    if c is not None and (best is None or c < best):
        best = c
    return best
