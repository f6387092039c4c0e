"""Reliable provisional responses (RFC 3262) on the PBX leg, as state machines. Sans-IO.

Teams does not do PRACK: its Allow has none and an INVITE with `Require: 100rel` gets 420
(reference 6). With `pbx.prack: strip` (the default) the 100rel extension ends at the SBC, in
both call directions:

PBX -> Teams (`Sender`, one per INVITE from the PBX that says `Require: 100rel`): toward Teams
    100rel is removed from Require/Supported (teams.py); toward the PBX the SBC sends Teams'
    provisionals reliably (`Require: 100rel`, `RSeq`, counted per early dialog from a random
    start, section 3) and answers the PBX's PRACKs itself. One reliable provisional is
    outstanding at a time; later provisionals and a 2xx wait behind it (section 3: no second
    one, and no 2xx after one with SDP, before the PRACK). It is retransmitted every T1,
    doubling, and after 64*T1 without PRACK the INVITE is refused with 5xx (section 3).

    state     event         next      what the proxy does
    IDLE      PROVISIONAL   WAITING   sends it with RSeq, retransmission timer T1
    WAITING   PRACK         IDLE      200 to the PRACK; the next queued response goes out
    WAITING   RETRANSMIT    WAITING   sends it again, timer doubles
    WAITING   EXPIRED       CLOSED    64*T1 without PRACK: 500 to the PBX, Teams' branch ended
    IDLE      FINAL         CLOSED    a final response went (a queued 2xx goes once IDLE)
    WAITING   FINAL         CLOSED    a failure (300-699) went at once; the queue is dropped

Teams -> PBX (`Acker`, one per INVITE from Teams): a PBX may answer with reliable provisionals
    anyway. The SBC PRACKs them itself (section 4: the first of an early dialog, then each one
    whose RSeq is one higher; a retransmission is dropped, as is one out of order) and relays
    them to Teams as ordinary provisionals. Its PRACKs take CSeq numbers in Teams' dialog, so
    Teams' later requests in that dialog are renumbered toward the PBX (RFC 3261 12.2.2: a PBX
    answers a CSeq it has already seen with 500): `CSeqShift`.
"""
from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

from .sip.errors import LocalProtocolError, ParseError
from .sip.message import Request, Response
from .sip.transaction import T1

GIVE_UP = 64 * T1


def requires_100rel(msg: Request | Response) -> bool:
    return any(o.strip().lower() == "100rel" for v in msg.headers.get_all("require") for o in v.split(","))


def parse_rack(value: str | None) -> tuple[int, int, str] | None:
    """RAck: response-num CSeq-num Method (RFC 3262 7.2)."""
    parts = (value or "").split()
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2].upper()


def rseq_of(resp: Response) -> int | None:
    v = (resp.headers.get("rseq") or "").strip()
    return int(v) if v.isdigit() and 1 <= int(v) < 2**32 else None


class State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting for PRACK"
    CLOSED = "closed"


class Event(enum.Enum):
    PROVISIONAL = "reliable provisional sent"
    PRACK = "PRACK received"
    RETRANSMIT = "retransmission due"
    EXPIRED = "no PRACK within 64*T1"
    FINAL = "final response sent"


S, E = State, Event
SENDER: dict[tuple[State, Event], State] = {
    (S.IDLE, E.PROVISIONAL): S.WAITING,
    (S.WAITING, E.PRACK): S.IDLE,
    (S.WAITING, E.RETRANSMIT): S.WAITING,
    (S.WAITING, E.EXPIRED): S.CLOSED,
    (S.WAITING, E.FINAL): S.CLOSED,
    (S.IDLE, E.FINAL): S.CLOSED,
}


class Sender:
    """Reliable provisionals toward the PBX for one INVITE (the SBC as UAS, RFC 3262 3).
    `relay` is the proxy's Relay of that INVITE; it sits on the proxy's timer heap."""

    __slots__ = ("relay", "cseq", "state", "first", "rseq", "unacked", "queue", "interval",
                 "deadline", "give_up_at")

    def __init__(self, relay: Any, cseq: int, first_rseq: int):
        self.relay = relay
        self.cseq = cseq                      # the INVITE's CSeq number (RAck names it)
        self.state = State.IDLE
        self.first = first_rseq               # 1 .. 2**31-1, random (section 3)
        self.rseq: dict[str, int] = {}        # next RSeq per early dialog (To tag)
        self.unacked: Response | None = None
        self.queue: list[Response] = []
        self.interval = T1
        self.deadline: float | None = None
        self.give_up_at = 0.0

    def on(self, event: Event) -> State:
        new = SENDER.get((self.state, event))
        if new is None:
            raise LocalProtocolError(f"reliable provisionals: {event.value} in state {self.state.value}")
        self.state = new
        return new

    # --- the proxy's timer heap
    @property
    def terminated(self) -> bool:
        return self.state is State.CLOSED

    def next_timer(self) -> float | None:
        return self.deadline if self.state is State.WAITING else None

    # --- what goes to the PBX
    def send(self, resp: Response, now: float) -> list[Response]:
        """The responses to transmit now for `resp` (none while it waits behind a PRACK)."""
        if self.state is State.CLOSED:
            return [resp]
        if resp.status < 200 or (resp.status < 300 and self.state is State.WAITING):
            if self.state is State.WAITING:
                self.queue.append(resp)
                return []
            self._make_reliable(resp, now)
            self.on(Event.PROVISIONAL)
            return [resp]
        self.on(Event.FINAL)
        self.queue.clear()
        return [resp]

    def _make_reliable(self, resp: Response, now: float) -> None:
        tag = resp.to_addr.tag or ""
        n = self.rseq.get(tag, self.first)
        self.rseq[tag] = n + 1
        require = [o.strip() for v in resp.headers.get_all("require") for o in v.split(",") if o.strip()]
        resp.headers.set("require", ", ".join(require + ["100rel"]))
        resp.headers.set("rseq", str(n))
        self.unacked = resp
        self.interval = T1
        self.deadline = now + T1
        self.give_up_at = now + GIVE_UP

    def prack(self, prack: Request, now: float) -> list[Response] | None:
        """The PBX's PRACK: None when it matches no unacknowledged provisional of ours (481,
        RFC 3262 3; a retransmitted PRACK is absorbed by its server transaction), else the
        responses that were waiting and go now (7.2: RAck = RSeq, CSeq number, method)."""
        rack = parse_rack(prack.headers.get("rack"))
        try:
            tag = prack.to_addr.tag or ""
        except ParseError:
            return None
        if rack is None or rack[1] != self.cseq or rack[2] != "INVITE":
            return None
        unacked = self.unacked
        if self.state is not State.WAITING or unacked is None or (tag, rack[0]) != (
                unacked.to_addr.tag or "", rseq_of(unacked)):
            return None
        self.unacked = None
        self.on(Event.PRACK)
        out: list[Response] = []
        while self.queue and self.state is State.IDLE:
            out += self.send(self.queue.pop(0), now)
        return out

    def retransmit(self, now: float) -> Response | None:
        """Timer: the unacknowledged provisional again, or None once 64*T1 have passed."""
        if now >= self.give_up_at:
            self.on(Event.EXPIRED)
            self.queue.clear()
            return None
        self.on(Event.RETRANSMIT)
        self.interval *= 2
        self.deadline = min(now + self.interval, self.give_up_at)
        return self.unacked


class Acker:
    """The PBX's reliable provisionals to one INVITE from Teams (the SBC as UAC, RFC 3262 4)."""

    __slots__ = ("last", "sent")

    def __init__(self) -> None:
        self.last: dict[str, int] = {}   # To tag -> RSeq of the last one PRACKed
        self.sent: dict[str, int] = {}   # To tag -> PRACKs sent in that early dialog

    def take(self, resp: Response) -> int | None:
        """The RSeq to PRACK, or None: a retransmission or one out of order (dropped, not relayed)."""
        rseq = rseq_of(resp)
        tag = resp.to_addr.tag or ""
        if rseq is None or (tag in self.last and rseq != self.last[tag] + 1):
            return None
        self.last[tag] = rseq
        self.sent[tag] = self.sent.get(tag, 0) + 1
        return rseq


class CSeqShift:
    """Teams' dialogs in which the SBC sent PRACKs of its own: (Call-ID, PBX tag) -> (CSeq of
    Teams' INVITE, PRACKs sent). Toward the PBX, Teams' later requests in such a dialog carry
    their CSeq plus the PRACKs (the ACK of the INVITE keeps the INVITE's); the answers going back
    carry Teams' own number again (proxy._upstream). Held in memory, bounded: after a restart
    these few dialogs are renumbered no more, and a PBX that checks CSeq strictly may refuse
    Teams' next request in them."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._shift: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    def add(self, call_id: str, pbx_tag: str, invite_cseq: int, count: int) -> None:
        self._shift[(call_id, pbx_tag)] = (invite_cseq, count)
        while len(self._shift) > self.LIMIT:
            self._shift.popitem(last=False)

    def apply(self, req: Request) -> None:
        """Renumber a request of Teams' toward the PBX, in place."""
        if not self._shift:
            return
        key = (req.call_id, req.to_addr.tag or "")
        entry = self._shift.get(key)
        if entry is None:
            return
        invite, count = entry
        number, method = req.cseq
        if number > invite:
            req.headers.set("cseq", f"{number + count} {method}")
        if method == "BYE":
            del self._shift[key]

    def forget(self, call_id: str, pbx_tag: str) -> None:
        self._shift.pop((call_id, pbx_tag), None)

    def __len__(self) -> int:
        return len(self._shift)
