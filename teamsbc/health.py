"""Peer health (each Teams proxy, the PBX) and the OPTIONS keep-alive that drives it. Sans-IO.

A peer is `up`, `down` or `cooling` (after 503 + Retry-After, until the time it gave). OPTIONS
results, transport failures, timeouts and call failures move it; routing skips peers that are
not up. Every change is logged once. Reference section 4: Teams only pings an SBC that pinged
it first, demotes a trunk that has not pinged for minutes, and expects about one OPTIONS a
minute to each of sip, sip2, sip3.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("teamsbc.health")

UP, DOWN, COOLING = "up", "down", "cooling"
MAX_RETRY_AFTER = 3600.0


@dataclass(slots=True)
class PeerHealth:
    name: str
    state: str = UP
    since: float = 0.0
    reason: str = "not probed yet"
    cooling_until: float = 0.0
    last_ok: float | None = None
    last_failure: float | None = None
    rtts: deque = field(default_factory=lambda: deque(maxlen=10))  # seconds, latest last

    def usable(self, now: float) -> bool:
        if self.state == COOLING and now >= self.cooling_until:
            return True  # Retry-After has passed: try it again (the next result decides)
        return self.state == UP

    def snapshot(self, now: float) -> dict:
        return {"peer": self.name, "state": self.state, "since": self.since, "reason": self.reason,
                "usable": self.usable(now), "cooling_until": self.cooling_until or None,
                "last_ok": self.last_ok, "last_failure": self.last_failure,
                "rtt_ms": [round(r * 1000, 2) for r in self.rtts]}


class HealthBook:
    def __init__(self, on_change: Callable[[PeerHealth, str], None] | None = None):
        self.peers: dict[str, PeerHealth] = {}
        self.on_change = on_change
        self.teams_options_last: float | None = None  # when Teams last pinged us
        self.last_sent: dict[str, float] = {}         # peer -> when our last OPTIONS left
        self.started: float | None = None
        self._alarm_raised = False

    def peer(self, name: str) -> PeerHealth:
        p = self.peers.get(name)
        if p is None:
            p = self.peers[name] = PeerHealth(name)
        return p

    def usable(self, name: str, now: float) -> bool:
        p = self.peers.get(name)
        return True if p is None else p.usable(now)

    def _set(self, p: PeerHealth, state: str, reason: str, now: float) -> None:
        if p.state != state:
            old = p.state
            p.state, p.since = state, now
            p.reason = reason
            log.warning("peer %s is now %s (was %s): %s", p.name, state, old, reason) if state != UP else \
                log.info("peer %s is now up (was %s): %s", p.name, old, reason)
            if self.on_change:
                self.on_change(p, old)
        else:
            p.reason = reason

    def ok(self, name: str, now: float, rtt: float | None = None, reason: str = "answered") -> None:
        p = self.peer(name)
        p.last_ok = now
        if rtt is not None:
            p.rtts.append(rtt)
        if p.state == COOLING and now < p.cooling_until:
            return  # alive, but it asked us to stay away until Retry-After has passed
        self._set(p, UP, reason, now)

    def failed(self, name: str, now: float, reason: str) -> None:
        p = self.peer(name)
        p.last_failure = now
        self._set(p, DOWN, reason, now)

    def retry_after(self, name: str, now: float, seconds: float, reason: str) -> None:
        p = self.peer(name)
        p.last_failure = now
        p.cooling_until = now + min(max(seconds, 0.0), MAX_RETRY_AFTER)
        self._set(p, COOLING, f"{reason}, Retry-After {seconds:g}s", now)

    def response(self, name: str, now: float, status: int, retry_after: float | None,
                 rtt: float | None = None) -> None:
        """Any answer proves the peer alive, except 503 (overloaded / maintenance)."""
        if status == 503:
            if retry_after is not None:
                self.retry_after(name, now, retry_after, "503 Service Unavailable")
            else:
                self.failed(name, now, "503 Service Unavailable")
        else:
            self.ok(name, now, rtt, f"answered {status}")

    def teams_pinged(self, now: float) -> None:
        if self._alarm_raised:
            log.info("Teams OPTIONS seen again: trunk keep-alive restored")
            self._alarm_raised = False
        self.teams_options_last = now

    def check_teams_alarm(self, now: float, after: float) -> bool:
        """True (and one warning) when Teams has not pinged us for `after` seconds."""
        last = self.teams_options_last if self.teams_options_last is not None else self.started
        if last is None or now - last < after:
            return False
        if not self._alarm_raised:
            self._alarm_raised = True
            log.warning("ALARM: no OPTIONS from Teams for %.0f s: Teams demotes the trunk; check "
                        "that Teams can reach this SBC (firewall, certificate, FQDN in our Contact)",
                        now - last)
        return True


@dataclass(slots=True)
class Target:
    """One peer we ping and when it is next due."""
    name: str
    interval: float
    next_due: float


class Pinger:
    """Sends OPTIONS to each target every `interval` seconds, the first ones at once (Teams
    only pings an SBC that pinged it first), and watches for Teams' own OPTIONS.

    `send(name, now, on_result) -> list` is provided by the owner (it builds the request and
    starts a client transaction); `on_result(status | None, reason, now, retry_after)` comes
    back with the answer, status None meaning no answer (timeout or transport failure)."""

    def __init__(self, book: HealthBook, send: Callable, now: float, *, alarm_after: float | None = None):
        self.book = book
        self.send = send
        self.targets: list[Target] = []
        self.alarm_after = alarm_after
        self._alarm_next = now + alarm_after if alarm_after is not None else None
        self.terminated = False
        book.started = now

    def add(self, name: str, interval: float, now: float) -> None:
        self.targets.append(Target(name, interval, now))

    def next_timer(self) -> float | None:
        due = [t.next_due for t in self.targets]
        if self._alarm_next is not None:
            last = self.book.teams_options_last or self.book.started or 0.0
            due.append(max(self._alarm_next, last + self.alarm_after))  # type: ignore[operator]
        return min(due) if due else None

    def handle_timer(self, now: float) -> list:
        out: list = []
        for t in self.targets:
            if t.next_due <= now:
                t.next_due = now + t.interval
                self.book.last_sent[t.name] = now
                out += self.send(t.name, now, self._result_cb(t.name, now))
        if self._alarm_next is not None and now >= self._alarm_next:
            self.book.check_teams_alarm(now, self.alarm_after)  # type: ignore[arg-type]
            self._alarm_next = now + min(self.alarm_after, 60.0)  # type: ignore[operator]
        return out

    def _result_cb(self, name: str, sent_at: float) -> Callable:
        def done(status: int | None, reason: str, now: float, retry_after: float | None = None) -> None:
            if status is None:
                self.book.failed(name, now, f"OPTIONS {reason}")
            else:
                self.book.response(name, now, status, retry_after, now - sent_at)
        return done
