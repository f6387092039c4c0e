"""One request being proxied, as a state machine (RFC 3261 16.6-16.10).

Everything that decides the state of a relayed request lives in this file (the h11
`_state.py` rule): the states, the table of transitions, and which deadline each state
keeps. The proxy performs the actions (sending branches, CANCEL, answering) and reports what
happened with `relay.on(Event.X)`; a transition missing from the table is a bug of ours and
raises LocalProtocolError.

    OFFERING        rtpengine's offer is running; no branch sent yet
    CALLING         a branch was sent and has said nothing yet
    PROCEEDING      the branch answered provisionally (100 included); nothing relayed upstream
    EARLY           a provisional went to the caller: no more failover
    CANCEL_PENDING  the caller cancelled a branch that has said nothing: CANCEL goes on its
                    first provisional (RFC 3261 9.1: never before)
    CANCELLING      CANCEL sent downstream: waiting for the branch's final answer
    DONE            the final response went to the caller (more 2xx may follow: RFC 6026)

Deadlines (the relay sits on the proxy's timer heap):

    CALLING         failover (teams.invite_timeout) when the policy may try another target,
                    else Timer C for an INVITE
    PROCEEDING      Timer C for an INVITE (16.6 step 11), restarted by every provisional
    EARLY           Timer C likewise
    CANCEL_PENDING  64*T1 for the final answer after the CANCEL, then 487 from here
    CANCELLING      likewise
"""
from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from .decisions import Destination, Forward, Source
from .sip.errors import LocalProtocolError
from .sip.message import Request, Response
from .sip.transaction import T1

if TYPE_CHECKING:
    from .sip.transaction import ClientTransaction, ServerTransaction

TIMER_C = 180.0  # RFC 3261 16.6 step 11: > 3 minutes in the RFC; Teams rings for at most 180 s
CANCEL_WAIT = 64 * T1  # RFC 3261 9.1: a CANCELled INVITE's final answer comes within Timer B


class State(enum.Enum):
    OFFERING = "offering"
    CALLING = "calling"
    PROCEEDING = "proceeding"
    EARLY = "early"
    CANCEL_PENDING = "cancel-pending"
    CANCELLING = "cancelling"
    DONE = "done"


class Event(enum.Enum):
    BRANCH_SENT = "branch sent"          # a (next) target was tried
    BRANCH_RESPONDED = "branch responded"  # 1xx from the current branch
    RELAYED_PROVISIONAL = "relayed provisional"
    CANCELLED = "cancelled"              # the caller's CANCEL (or the SBC gives up)
    CANCEL_SENT = "cancel sent"          # CANCEL went downstream
    FINAL_SENT = "final sent"            # a final response went to the caller


class MediaOp(enum.Enum):
    """What an rtpengine reply continues (Proxy.media_done): op ids, not closures."""
    OFFER = "offer"        # a request waits for its SDP: (relay,)
    ANSWER = "answer"      # a response waits for its SDP: (relay, ctx, response)
    ACK = "ack"            # an ACK for a 2xx waits for its SDP: (ack, decision)
    REPLY = "reply"        # a local answer waits for rtpengine (play DTMF): (server, request, reply, leg)


S, E = State, Event
# (state, event) -> next state. Anything else is a bug (LocalProtocolError).
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.OFFERING, E.BRANCH_SENT): S.CALLING,
    (S.OFFERING, E.FINAL_SENT): S.DONE,
    (S.CALLING, E.BRANCH_SENT): S.CALLING,            # failover on silence or transport failure
    (S.CALLING, E.BRANCH_RESPONDED): S.PROCEEDING,
    (S.CALLING, E.CANCELLED): S.CANCEL_PENDING,
    (S.CALLING, E.FINAL_SENT): S.DONE,
    (S.PROCEEDING, E.BRANCH_RESPONDED): S.PROCEEDING,
    (S.PROCEEDING, E.BRANCH_SENT): S.CALLING,         # failover after 408/503
    (S.PROCEEDING, E.RELAYED_PROVISIONAL): S.EARLY,
    (S.PROCEEDING, E.CANCELLED): S.CANCEL_PENDING,
    (S.PROCEEDING, E.FINAL_SENT): S.DONE,
    (S.EARLY, E.BRANCH_RESPONDED): S.EARLY,
    (S.EARLY, E.RELAYED_PROVISIONAL): S.EARLY,
    (S.EARLY, E.CANCELLED): S.CANCEL_PENDING,
    (S.EARLY, E.FINAL_SENT): S.DONE,
    (S.CANCEL_PENDING, E.BRANCH_RESPONDED): S.CANCEL_PENDING,
    (S.CANCEL_PENDING, E.CANCEL_SENT): S.CANCELLING,
    (S.CANCEL_PENDING, E.RELAYED_PROVISIONAL): S.CANCEL_PENDING,
    (S.CANCEL_PENDING, E.FINAL_SENT): S.DONE,
    (S.CANCELLING, E.BRANCH_RESPONDED): S.CANCELLING,
    (S.CANCELLING, E.RELAYED_PROVISIONAL): S.CANCELLING,
    (S.CANCELLING, E.CANCELLED): S.CANCELLING,        # a second CANCEL from the caller
    (S.CANCELLING, E.FINAL_SENT): S.DONE,
    (S.CANCEL_PENDING, E.CANCELLED): S.CANCEL_PENDING,
    (S.DONE, E.BRANCH_RESPONDED): S.DONE,             # late provisionals, ignored
    (S.DONE, E.FINAL_SENT): S.DONE,                   # further 2xx of a forked INVITE
    (S.DONE, E.CANCELLED): S.DONE,
}

# States in which a cancelled branch still owes us its final answer.
CANCELLED_STATES = frozenset({S.CANCEL_PENDING, S.CANCELLING})


class Relay:
    """One request being proxied: its server transaction, the current branch, the state."""

    __slots__ = ("server", "src", "request", "decision", "client", "dest", "index", "state",
                 "deadline", "abandoned", "call_id", "loop", "answering", "queue",
                 "failover_after", "is_invite", "pbx")

    def __init__(self, server: Any, src: Source, request: Request, decision: Forward, loop: str,
                 offering: bool, failover_after: float):
        self.server = server                       # proxy._Server
        self.src = src
        self.request = request
        self.decision = decision
        self.loop = loop
        self.call_id = request.call_id
        self.is_invite = request.method == "INVITE"
        self.failover_after = failover_after       # teams.invite_timeout
        self.client: ClientTransaction | None = None
        self.dest: Destination | None = None
        self.index = -1                            # current target in decision.targets
        self.abandoned: list[ClientTransaction] = []  # branches left behind (failover, Timer C)
        self.answering: int | None = None          # op id of a running rtpengine answer
        self.queue: list[tuple[ClientTransaction, Response]] = []  # responses waiting for it
        self.state = State.OFFERING if offering else State.CALLING
        self.deadline: float | None = None
        self.pbx: Any = None   # pbx_leg.LegState: the PBX leg's own machines for an INVITE

    # --- the proxy's timer heap
    @property
    def terminated(self) -> bool:
        return self.state is State.DONE or self.deadline is None

    def next_timer(self) -> float | None:
        return self.deadline

    # --- the machine
    def on(self, event: Event, now: float) -> State:
        """Apply one event; re-arm the deadline when the state (re)starts one."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LocalProtocolError(f"relay of {self.request.method}: {event.value} in state "
                                     f"{self.state.value}")
        restart = new is not self.state or (event is Event.BRANCH_RESPONDED and new in
                                            (State.PROCEEDING, State.EARLY))
        if event is Event.BRANCH_SENT:
            restart = True
        self.state = new
        if restart:
            self.deadline = self._deadline(now)
        return new

    def _deadline(self, now: float) -> float | None:
        s = self.state
        if s is State.CALLING:
            if self.may_fail_over:
                return now + self.failover_after
            return now + TIMER_C if self.is_invite else None
        if s in (State.PROCEEDING, State.EARLY):
            return now + TIMER_C if self.is_invite else None
        if s in CANCELLED_STATES:
            return now + CANCEL_WAIT
        return None

    # --- questions the proxy asks
    @property
    def done(self) -> bool:
        return self.state is State.DONE

    @property
    def cancelled(self) -> bool:
        return self.state in CANCELLED_STATES

    @property
    def more_targets(self) -> bool:
        return self.index + 1 < len(self.decision.targets)

    @property
    def may_fail_over(self) -> bool:
        """Nothing but 100 went back to the caller, it did not cancel, and targets remain
        (reference 6: Teams fails over to another SBC only if no provisional was sent)."""
        return (self.decision.failover and self.more_targets
                and self.state in (State.CALLING, State.PROCEEDING))

    def deadline_kind(self) -> str:
        """What expiring now means: 'failover' | 'timer_c' | 'cancel' | ''."""
        s = self.state
        if s is State.CALLING and self.may_fail_over:
            return "failover"
        if s in CANCELLED_STATES:
            return "cancel"
        if s in (State.CALLING, State.PROCEEDING, State.EARLY) and self.is_invite:
            return "timer_c"
        return ""
