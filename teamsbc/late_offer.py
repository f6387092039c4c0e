"""A delayed offer from the PBX, interworked to the early offer Teams needs. Sans-IO.

Teams does not accept an INVITE without SDP (reference 5); many PBX trunks send one (RFC 3261
13.2.1: the offer then comes in the 2xx, the answer in the ACK). With rtpengine anchoring the
media, the SBC makes the offer toward Teams itself and the PBX gets one in the 200:

    PBX                       SBC and rtpengine                                   Teams
    INVITE, no SDP  ------->  offer: SDP from media.pbx_codecs at the PBX's address
                              INVITE with rtpengine's SRTP offer  ------------------------>
                              (18x go to the PBX without SDP: it has offered nothing)
                                                                   <------------ 200 + SDP
                              answer: Teams' SDP (Teams' leg is negotiated)
                              offer: Teams' SDP again, as an offer toward the PBX
    <-------  200 + offer
    ACK + answer  -------->   answer: the PBX's SDP (its real address and codec)
                              ACK without SDP  -------------------------------------------->

One call, one machine (the h11 rule: every state and transition here):

    state       event        next        what happens
    CALLING                              (from the start: the relay's own OFFERING state covers
                                         rtpengine's first offer; its failure is a 503 there)
    CALLING     ANSWER       ANSWERING   Teams' 2xx: rtpengine takes its SDP as the answer
    ANSWERING   ANSWERED     REOFFERING  rtpengine makes the offer for the PBX from it
    REOFFERING  REOFFERED    OFFERED     the 2xx with that offer goes to the PBX
    OFFERED     ANSWER       OFFERED     a retransmitted 2xx: the PBX gets the same offer again
    OFFERED     ACK          CONFIRMING  the PBX's ACK: rtpengine takes its answer
    CONFIRMING  CONFIRMED    DONE        the ACK goes to Teams without SDP
    DONE        ANSWER/ACK   DONE        retransmissions, answered as before, no rtpengine
    any but     FAIL         FAILED      rtpengine failed, the ACK had no SDP, or no ACK came
    DONE/FAILED                          within 64*T1: the call ends on both legs

The machine stays on the proxy's timer heap for 64*T1 after OFFERED (no ACK: the call ends) and
after DONE (Teams may retransmit its 2xx that long: the same offer goes to the PBX again).
"""
from __future__ import annotations

import enum
from typing import Any

from .sip.errors import LocalProtocolError
from .sip.message import Response
from .sip.transaction import T1

KEEP = 64 * T1


class State(enum.Enum):
    CALLING = "calling"
    ANSWERING = "answering"
    REOFFERING = "re-offering"
    OFFERED = "offered"
    CONFIRMING = "confirming"
    DONE = "done"
    FAILED = "failed"


class Event(enum.Enum):
    ANSWER = "2xx from Teams"
    ANSWERED = "rtpengine took Teams' answer"
    REOFFERED = "rtpengine made the offer for the PBX"
    ACK = "ACK from the PBX"
    CONFIRMED = "rtpengine took the PBX's answer"
    FAIL = "failure"


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.CALLING, E.ANSWER): S.ANSWERING,
    (S.ANSWERING, E.ANSWERED): S.REOFFERING,
    (S.REOFFERING, E.REOFFERED): S.OFFERED,
    (S.OFFERED, E.ANSWER): S.OFFERED,
    (S.OFFERED, E.ACK): S.CONFIRMING,
    (S.CONFIRMING, E.CONFIRMED): S.DONE,
    (S.DONE, E.ANSWER): S.DONE,
    (S.DONE, E.ACK): S.DONE,
}
for _s in (S.CALLING, S.ANSWERING, S.REOFFERING, S.OFFERED, S.CONFIRMING):
    TRANSITIONS[(_s, E.FAIL)] = S.FAILED
TRANSITIONS[(S.FAILED, E.FAIL)] = S.FAILED


class LateOffer:
    """One delayed-offer call. `relay` is the proxy's Relay of the PBX's INVITE; `client` and
    `answer` the branch and the 2xx from Teams once they exist (to end the call on both legs)."""

    __slots__ = ("relay", "state", "teams_sdp", "offer_sdp", "client", "answer", "deadline")

    def __init__(self, relay: Any):
        self.relay = relay
        self.state = State.CALLING
        self.teams_sdp = ""                 # the SDP of Teams' 2xx, as Teams sent it
        self.offer_sdp = b""                # the offer the PBX got in the 2xx (repeated as is)
        self.client: Any = None             # the ClientTransaction toward Teams
        self.answer: Response | None = None  # Teams' 2xx
        self.deadline: float | None = None

    @property
    def call_id(self) -> str:
        return self.relay.call_id

    def on(self, event: Event, now: float) -> State:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise LocalProtocolError(f"delayed offer: {event.value} in state {self.state.value}")
        if new is not self.state and new in (State.OFFERED, State.DONE):
            self.deadline = now + KEEP
        elif new is State.FAILED:
            self.deadline = None
        self.state = new
        return new

    # --- the proxy's timer heap
    @property
    def terminated(self) -> bool:
        return self.state is State.FAILED or self.deadline is None

    def next_timer(self) -> float | None:
        return self.deadline

    @property
    def unanswered(self) -> bool:
        """Expiring now means the PBX never ACKed our offer (the call must end)."""
        return self.state in (State.OFFERED, State.CONFIRMING)
