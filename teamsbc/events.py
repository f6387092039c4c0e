"""What happens to calls, as data (aioquic's `quic/events.py` pattern).

The sans-IO core returns these next to its `Send` and `MediaCall` instructions; it never
reads the clock for them and never calls anyone back. The shell stamps each with the wall
clock and fans it out to the observers (metrics, call detail records, call traces), which
implement the matching `Observer` methods. The shell adds what only it sees: SIP on the wire
(`Observer.sip`) and rtpengine's statistics of a deleted call (`MediaStats`).

Observers must be quick and must not raise: `Observers` isolates a failing one (logged, the
call goes on). Per-message counters (requests, responses, timeouts) are not events: the proxy
counts them itself and metrics reads the counts when scraped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from .sip.grammar import method_label

log = logging.getLogger("teamsbc.events")


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A new call is being relayed, or was refused with a record (not for 403s to strangers)."""
    call_id: str
    direction: str
    """'teams->pbx' | 'pbx->teams'"""
    tenant: str | None
    """The SBC FQDN presented to Teams for this call (carrier mode), None = the base FQDN."""
    caller: str
    """The user part of From (`+4420...`), or the whole URI when it has none."""
    callee: str
    """The user part of To."""


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The first 2xx of the call's INVITE went back to the caller."""
    call_id: str


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The call's INVITE ended with a final error (status >= 300), sent to the caller."""
    call_id: str
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A BYE for the call was relayed."""
    call_id: str
    by: str
    """The leg the BYE came from: 'teams' | 'pbx'."""


@dataclass(frozen=True, slots=True)
class LegMedia:
    """What rtpengine received from one party's endpoint (RTP streams; rtcp-mux included)."""
    tag: str
    endpoint: str | None = None
    local: str | None = None
    packets: int = 0
    bytes: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class MediaStats:
    """rtpengine's statistics of a call it deleted, parsed once (teamsbc.media.stats)."""
    call_id: str
    totals: dict[str, Any] = field(default_factory=dict)
    """rtpengine's `totals` as it sent them ({'RTP': {'packets', 'bytes', 'errors'}, ...})."""
    caller: LegMedia | None = None
    callee: LegMedia | None = None
    legs: tuple[LegMedia, ...] = ()
    """Every tag rtpengine reported, in its order."""

    @property
    def empty(self) -> bool:
        """rtpengine sent no statistics (a delete naming only the call-id)."""
        return not self.totals and not self.legs

    @property
    def rtp(self) -> dict[str, int]:
        rtp = self.totals.get("RTP")
        if not isinstance(rtp, dict):
            return {}
        return {k: v for k, v in rtp.items() if k in ("packets", "bytes", "errors") and isinstance(v, int)}


CallEvent = Union[CallStarted, CallAnswered, CallFailed, CallEnded, MediaStats]
EVENT_TYPES = (CallStarted, CallAnswered, CallFailed, CallEnded, MediaStats)


class Counters:
    """Per-message counts the proxy keeps and metrics reads when scraped (no call per message).
    Methods become "other" beyond the known ones: attacker-chosen tokens must not grow a table."""

    __slots__ = ("requests", "responses", "timeouts")

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, int]] = {"teams": {}, "pbx": {}}               # leg -> method
        self.responses: dict[str, dict[tuple[int, str], int]] = {"teams": {}, "pbx": {}}  # leg -> (code, method)
        self.timeouts: dict[str, int] = {}                                                # method

    def request(self, leg: str, method: str) -> None:
        d, m = self.requests[leg], method_label(method)
        d[m] = d.get(m, 0) + 1

    def response(self, leg: str, status: int, method: str) -> None:
        d, k = self.responses[leg], (status, method_label(method))
        d[k] = d.get(k, 0) + 1

    def timeout(self, method: str) -> None:
        m = method_label(method)
        self.timeouts[m] = self.timeouts.get(m, 0) + 1


class Observer:
    """Something that wants to know. Every method is a no-op here; override what you need."""

    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        """A SIP message `in` or `out` on `leg` ('teams' | 'pbx'), as bytes on the wire
        (decrypted on TLS). local/remote are (ip, port)."""

    def call_started(self, call_id: str, direction: str, tenant: str | None, caller: str,
                     callee: str, wall: float) -> None:
        """CallStarted."""

    def call_answered(self, call_id: str, wall: float) -> None:
        """CallAnswered."""

    def call_failed(self, call_id: str, status: int, reason: str, wall: float) -> None:
        """CallFailed."""

    def call_ended(self, call_id: str, by: str, wall: float) -> None:
        """CallEnded."""

    def media_stats(self, stats: MediaStats, wall: float) -> None:
        """MediaStats of a deleted call."""

    def media_command(self, call_id: str, command: dict, reply: Any, sent: float, wall: float) -> None:
        """An rtpengine NG command of a call (`sent`: when it left) and what came back at
        `wall`: the reply dict, or the exception that ended it (timeout, no rtpengine)."""


def _deliver_one(obs: Observer, ev: CallEvent, wall: float) -> None:
    if isinstance(ev, CallStarted):
        obs.call_started(ev.call_id, ev.direction, ev.tenant, ev.caller, ev.callee, wall)
    elif isinstance(ev, CallAnswered):
        obs.call_answered(ev.call_id, wall)
    elif isinstance(ev, CallFailed):
        obs.call_failed(ev.call_id, ev.status, ev.reason, wall)
    elif isinstance(ev, CallEnded):
        obs.call_ended(ev.call_id, ev.by, wall)
    else:
        obs.media_stats(ev, wall)


class Observers:
    """The shell's fan-out: each event to every observer; a failing observer is logged once
    per failure, never breaks a call."""

    def __init__(self, *observers: Observer):
        self.observers: list[Observer] = list(observers)
        self._wire: list[Callable[..., None]] = [o.sip for o in observers if _looks_at_wire(o)]
        self._ng: list[Callable[..., None]] = [o.media_command for o in observers if _looks_at_media(o)]

    def add(self, obs: Observer) -> None:
        self.observers.append(obs)
        if _looks_at_wire(obs):
            self._wire.append(obs.sip)
        if _looks_at_media(obs):
            self._ng.append(obs.media_command)

    def deliver(self, event: CallEvent, wall: float) -> None:
        for obs in self.observers:
            try:
                _deliver_one(obs, event, wall)
            except Exception:  # an observer bug must not drop a call
                log.exception("observer %s failed on %s", type(obs).__name__, type(event).__name__)

    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        """Per message: only the observers that look at the wire are called."""
        for fn in self._wire:
            try:
                fn(direction, leg, transport, local, remote, data, wall)
            except Exception:
                log.exception("observer %r failed on a SIP message", fn)


    def media_command(self, call_id: str, command: dict, reply: Any, sent: float, wall: float) -> None:
        """Per NG command: only the observers that look at rtpengine commands are called."""
        for fn in self._ng:
            try:
                fn(call_id, command, reply, sent, wall)
            except Exception:
                log.exception("observer %r failed on an rtpengine command", fn)


def _looks_at_wire(obs: Observer) -> bool:
    return type(obs).sip is not Observer.sip


def _looks_at_media(obs: Observer) -> bool:
    return type(obs).media_command is not Observer.media_command
