"""The flight recorder: the SIP messages and rtpengine commands of the last calls, in memory,
whatever the trace rules say, so that "why did that call fail" can be answered after the fact
(the console's call ladder and its pcap download, sngrep's view of a proxy).

An `events.Observer` fed by the shell: every SIP message on the wire (`sip`), every NG
command of a call (`media_command`), the call events. Bounded three ways, because an SBC runs
for months and a flood of calls must not grow it:

| bound | default | beyond it |
|---|---|---|
| calls kept | `MAX_CALLS` | the oldest recording goes (ended or not) |
| bytes kept (SIP + SDP of NG commands) | `MAX_BYTES` | the oldest recordings go |
| entries per call | `MAX_ENTRIES` | further entries are counted in `dropped`, not kept |

A recording starts with the first message of an INVITE transaction (the INVITE, or a response
to it) for an unknown Call-ID; out-of-dialog OPTIONS, REGISTER and the like are not calls and
are never kept. The proxy keeps the Call-ID across its two legs (it is not a B2BUA), so one
recording holds both legs. What is kept is the bytes as on the wire (decrypted on TLS):
credentials are masked when shown (`teamsbc.sip.mask`), not here, so the cost per message is
one regular expression and an append.
"""
from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from ..events import MediaStats, Observer

MAX_CALLS = 1000
MAX_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 400
NG_OVERHEAD = 256           # bytes counted for an NG command besides its SDP

_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+?)[ \t]*\r?$")
_CSEQ_METHOD = re.compile(rb"(?im)^cseq[ \t]*:[ \t]*[0-9]+[ \t]+([A-Za-z]+)")
_FROM = re.compile(rb"(?im)^(?:from|f)[ \t]*:[ \t]*([^\r\n]*)")


def display_name(from_value: str) -> str | None:
    """The display-name of a From header value (RFC 3261 25.1 name-addr), unquoted, or None."""
    v = from_value.strip()
    if v.startswith('"'):
        out, i = [], 1
        while i < len(v):
            c = v[i]
            if c == "\\" and i + 1 < len(v):
                out.append(v[i + 1])
                i += 2
                continue
            if c == '"':
                break
            out.append(c)
            i += 1
        return "".join(out) or None
    lt = v.find("<")
    if lt > 0:
        return v[:lt].strip() or None
    return None


@dataclass(slots=True)
class SipEntry:
    """One SIP message on the wire."""
    wall: float
    direction: str          # in | out (seen from the SBC)
    leg: str                # teams | pbx
    transport: str
    local: tuple
    remote: tuple
    data: bytes


@dataclass(slots=True)
class NgEntry:
    """One rtpengine NG command of the call and its outcome."""
    sent: float
    wall: float
    command: dict
    reply: dict | None      # None when it failed
    error: str | None = None


@dataclass(slots=True)
class Recording:
    call_id: str
    first: float
    entries: list = field(default_factory=list)
    size: int = 0
    dropped: int = 0
    direction: str | None = None
    tenant: str | None = None
    caller: str | None = None
    callee: str | None = None
    display: str | None = None      # the From display-name of the INVITE
    started: float | None = None
    answered: float | None = None
    ended: float | None = None
    status: int | None = None
    reason: str | None = None
    ended_by: str | None = None
    media: MediaStats | None = None

    @property
    def state(self) -> str:
        """setup (no final answer yet) | answered | failed | ended."""
        if self.status is not None and self.status >= 300:
            return "failed"
        if self.ended is not None:
            return "ended"
        return "answered" if self.answered is not None else "setup"

    def summary(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        end = self.ended if self.ended is not None else now
        return {"call_id": self.call_id, "direction": self.direction, "tenant": self.tenant,
                "caller": self.caller, "callee": self.callee, "display": self.display,
                "state": self.state, "started": self.started or self.first, "answered": self.answered,
                "ended": self.ended, "status": self.status, "reason": self.reason,
                "ended_by": self.ended_by,
                "duration": round(end - self.answered, 3) if self.answered is not None else None,
                "messages": len(self.entries), "dropped": self.dropped}


class FlightRecorder(Observer):
    def __init__(self, *, max_calls: int = MAX_CALLS, max_bytes: int = MAX_BYTES,
                 max_entries: int = MAX_ENTRIES):
        self.max_calls, self.max_bytes, self.max_entries = max_calls, max_bytes, max_entries
        self.calls: OrderedDict[str, Recording] = OrderedDict()
        self.bytes = 0
        self.evicted = 0
        self.version = 0        # grows with every call event (the console's live list waits on it)
        self._listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ listeners
    def subscribe(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call `fn` (on the loop, quickly, without raising) after every call event; returns
        the function that unsubscribes."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _changed(self) -> None:
        self.version += 1
        for fn in list(self._listeners):
            fn()

    # ------------------------------------------------------------------ reading
    def get(self, call_id: str) -> Recording | None:
        return self.calls.get(call_id)

    def recent(self, limit: int = 100) -> list[Recording]:
        """The newest recordings first."""
        out = []
        for rec in reversed(self.calls.values()):
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    # ------------------------------------------------------------------ Observer
    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        end = data.find(b"\r\n\r\n")
        end = len(data) if end < 0 else end         # the head: regular expressions stop there
        m = _CALL_ID.search(data, 0, end)
        if m is None:
            return
        cid = m.group(1).decode(errors="replace")
        rec = self.calls.get(cid)
        if rec is None:
            cs = _CSEQ_METHOD.search(data, 0, end)
            if cs is None or cs.group(1).upper() != b"INVITE":
                return
            rec = self._new(cid, wall)
            if not data.startswith(b"SIP/"):
                f = _FROM.search(data, 0, end)
                if f is not None:
                    rec.display = display_name(f.group(1).decode(errors="replace"))
        self._add(rec, SipEntry(wall, direction, leg, transport, local, remote, data), len(data))

    def media_command(self, call_id: str, command: dict, reply: Any, sent: float, wall: float) -> None:
        rec = self.calls.get(call_id)
        if rec is None:
            return      # a command of a call we no longer keep (or never saw: restart)
        size = NG_OVERHEAD + len(str(command.get("sdp") or ""))
        if isinstance(reply, dict):
            size += len(str(reply.get("sdp") or "")) + (2048 if "tags" in reply else 0)
            entry = NgEntry(sent, wall, dict(command), reply)
        else:
            entry = NgEntry(sent, wall, dict(command), None, str(reply) or type(reply).__name__)
        self._add(rec, entry, size)

    def call_started(self, call_id: str, direction: str, tenant: str | None, caller: str,
                     callee: str, wall: float) -> None:
        rec = self.calls.get(call_id) or self._new(call_id, wall)
        rec.direction, rec.tenant, rec.caller, rec.callee = direction, tenant, caller, callee
        rec.started = wall
        self._changed()

    def call_answered(self, call_id: str, wall: float) -> None:
        rec = self.calls.get(call_id)
        if rec is not None and rec.answered is None:
            rec.answered, rec.status, rec.reason = wall, 200, "OK"
        self._changed()

    def call_failed(self, call_id: str, status: int, reason: str, wall: float) -> None:
        rec = self.calls.get(call_id)
        if rec is not None:
            rec.status, rec.reason, rec.ended = status, reason, wall
        self._changed()

    def call_ended(self, call_id: str, by: str, wall: float) -> None:
        rec = self.calls.get(call_id)
        if rec is not None and rec.ended is None:
            rec.ended, rec.ended_by = wall, by
        self._changed()

    def media_stats(self, stats: MediaStats, wall: float) -> None:
        rec = self.calls.get(stats.call_id)
        if rec is not None and not stats.empty:
            rec.media = stats

    # ------------------------------------------------------------------ bounds
    def _new(self, cid: str, wall: float) -> Recording:
        rec = self.calls[cid] = Recording(cid, wall)
        while len(self.calls) > self.max_calls:
            self._evict()
        return rec

    def _add(self, rec: Recording, entry: SipEntry | NgEntry, size: int) -> None:
        if len(rec.entries) >= self.max_entries:
            rec.dropped += 1
            return
        rec.entries.append(entry)
        rec.size += size
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.calls) > 1:
            self._evict()

    def _evict(self) -> None:
        _, old = self.calls.popitem(last=False)
        self.bytes -= old.size
        self.evicted += 1
