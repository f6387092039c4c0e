"""What the core tells the outside world: SIP messages on the wire and the life of each call.

Metrics, call detail records and SIP capture are observers; the proxy and the transports only
call these methods (all no-ops here). Observers must be quick and must not raise: the core
calls them on its hot path and ignores their failures by design (see `Observers`).
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("teamsbc.events")


class Observer:
    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        """A SIP message `in` or `out` on `leg` ('teams' | 'pbx'), as bytes on the wire
        (decrypted on TLS). local/remote are (ip, port)."""

    def request(self, method: str, leg: str) -> None:
        """A request arrived on `leg`."""

    def response(self, status: int, method: str, leg: str) -> None:
        """A response arrived on `leg` (method from its CSeq)."""

    def call_started(self, call_id: str, direction: str, tenant: str | None, caller: str,
                     callee: str, wall: float) -> None:
        """A new call is being relayed. direction: 'teams->pbx' | 'pbx->teams'."""

    def call_answered(self, call_id: str, wall: float) -> None:
        """The first 2xx of the call's INVITE went back to the caller."""

    def call_failed(self, call_id: str, status: int, reason: str, wall: float) -> None:
        """The call's INVITE ended with a final error (status >= 300), sent to the caller."""

    def call_ended(self, call_id: str, by: str, wall: float) -> None:
        """A BYE for the call was relayed; `by` is the leg it came from ('teams' | 'pbx')."""

    def media_deleted(self, call_id: str, reply: dict) -> None:
        """rtpengine's reply to the call's delete (totals, per-stream stats)."""

    def timeout(self, method: str) -> None:
        """A client transaction timed out (Timer B/F)."""


class Observers(Observer):
    """Fans out to several observers; a failing observer is logged, never breaks a call."""

    def __init__(self, *observers: Observer):
        self.observers = list(observers)

    def add(self, obs: Observer) -> None:
        self.observers.append(obs)


def _fan_out(name: str) -> Any:
    def method(self: Observers, *args: Any) -> None:
        for obs in self.observers:
            try:
                getattr(obs, name)(*args)
            except Exception:  # an observer bug must not drop a call
                log.exception("observer %s.%s failed", type(obs).__name__, name)
    method.__name__ = name
    return method


for _name in [n for n in vars(Observer) if not n.startswith("_")]:
    setattr(Observers, _name, _fan_out(_name))
