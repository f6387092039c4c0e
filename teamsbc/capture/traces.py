"""Per-call traces on demand: the SIP of chosen calls (by Call-ID, or the next calls of a
number) written to files while the call lasts (admin API: POST/GET/DELETE /trace).

One pcap per call (fake IPv4/IPv6 + UDP headers around each SIP message, link type RAW, so
Wireshark and sngrep open it) and/or one text file, in `trace_dir`, 0600. Costs nothing per
message while no rule is set. Credentials are masked (capture/mask.py).
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..events import Observer
from .mask import mask_credentials
from ..timefmt import iso_utc

log = logging.getLogger("teamsbc.capture")

LINKTYPE_RAW = 101


# ---------------------------------------------------------------------- pcap

def pcap_global_header(snaplen: int = 262144) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_RAW)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fake_udp_packet(src: tuple, dst: tuple, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet with a UDP header around `payload` (checksums computed)."""
    s, d = ipaddress.ip_address(src[0].split("%", 1)[0]), ipaddress.ip_address(dst[0].split("%", 1)[0])
    if s.version != d.version:
        s = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + s.packed) if s.version == 4 else s
        d = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + d.packed) if d.version == 4 else d
    ulen = 8 + len(payload)
    if s.version == 4:
        if 20 + ulen > 65535:
            payload = payload[: 65535 - 28]
            ulen = 8 + len(payload)
        udp = struct.pack("!HHHH", src[1], dst[1], ulen, 0) + payload   # UDP checksum 0: allowed on IPv4
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0x4000, 64, 17, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        return hdr + udp
    if ulen > 65535:
        payload = payload[: 65535 - 8]
        ulen = 8 + len(payload)
    pseudo = s.packed + d.packed + struct.pack("!I3xB", ulen, 17)
    udp = struct.pack("!HHHH", src[1], dst[1], ulen, 0) + payload
    csum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    return struct.pack("!IHBB16s16s", 0x60000000, ulen, 17, 64, s.packed, d.packed) + udp


def pcap_record(ts: float, packet: bytes) -> bytes:
    sec = int(ts)
    return struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(packet), len(packet)) + packet


# ---------------------------------------------------------------------- per-call traces

_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+?)[ \t]*\r?$")
CALL_LINGER = 5.0          # s a trace stays open after the call ended (BYE's 200, ACK retransmissions)
RULE_TTL = 3600.0          # default life of a trace rule
RECENT = 64                # messages kept while number rules wait for call_started


def call_id_of(data: bytes) -> str | None:
    head = data[: data.find(b"\r\n\r\n") if b"\r\n\r\n" in data else len(data)]
    m = _CALL_ID.search(head)
    return m.group(1).decode(errors="replace") if m else None


@dataclass
class TraceRule:
    id: int
    call_id: str | None = None
    number: str | None = None
    calls_left: int = 1
    expires: float = 0.0
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"id": self.id, "call_id": self.call_id, "number": self.number,
                "calls_left": self.calls_left,
                "expires": self.expires, "files": list(self.files)}


class _Trace:
    """The open files of one traced call."""

    def __init__(self, directory: Path, call_id: str, fmt: str, rule: TraceRule, wall: float):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall))
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", call_id)[:60]
        digest = hashlib.sha1(call_id.encode()).hexdigest()[:8]
        base = directory / f"{stamp}_{safe}_{digest}"
        self.call_id = call_id
        self.rule = rule
        self.ended: float | None = None
        self.pcap: BinaryIO | None = None
        self.text: BinaryIO | None = None
        if fmt in ("both", "pcap"):
            self.pcap = _open_private(base.with_suffix(".pcap"))
            self.pcap.write(pcap_global_header())
            rule.files.append(str(base.with_suffix(".pcap")))
        if fmt in ("both", "text"):
            self.text = _open_private(base.with_suffix(".txt"))
            rule.files.append(str(base.with_suffix(".txt")))

    def write(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
              data: bytes, wall: float) -> None:
        src, dst = (remote, local) if direction == "in" else (local, remote)
        data = mask_credentials(data)  # a Digest response is an offline password guess
        if self.pcap is not None:
            self.pcap.write(pcap_record(wall, fake_udp_packet(src, dst, data)))
            self.pcap.flush()
        if self.text is not None:
            head = (f"=== {iso_utc(wall)} {leg} {direction} {transport} {_fmt(src)} -> {_fmt(dst)} "
                    f"({len(data)} bytes)\n")
            self.text.write(head.encode() + data + (b"" if data.endswith(b"\n") else b"\n"))
            self.text.flush()

    def close(self) -> None:
        for f in (self.pcap, self.text):
            if f is not None:
                f.close()


def _fmt(addr: tuple) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"


def _open_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return os.fdopen(fd, "ab")


class CallTracer(Observer):
    """Writes the SIP of chosen calls to files. Costs nothing per message while no rule is set."""

    def __init__(self, directory: Path | str, fmt: str = "both", *, linger: float = CALL_LINGER):
        self.dir = Path(directory)
        self.fmt = fmt
        self.linger = linger
        self.rules: dict[int, TraceRule] = {}
        self.active: dict[str, _Trace] = {}       # call-id -> open trace
        self._recent: deque = deque(maxlen=RECENT)
        self._next_id = 1
        self._on = False

    # --- rules (admin: POST /trace, GET /trace, DELETE /trace/{id})
    @property
    def trace_calls(self) -> dict[int, TraceRule]:
        return self.rules

    def trace_call(self, call_id: str, ttl: float = RULE_TTL) -> TraceRule:
        return self._add(TraceRule(self._next_id, call_id=call_id, expires=time.time() + ttl))

    def trace_number(self, prefix: str, calls: int = 1, ttl: float = RULE_TTL) -> TraceRule:
        return self._add(TraceRule(self._next_id, number=prefix, calls_left=max(1, calls),
                                   expires=time.time() + ttl))

    def _add(self, rule: TraceRule) -> TraceRule:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._next_id += 1
        self.rules[rule.id] = rule
        self._on = True
        return rule

    def remove(self, rule_id: int) -> bool:
        rule = self.rules.pop(rule_id, None)
        if rule is None:
            return False
        for cid, tr in list(self.active.items()):
            if tr.rule is rule:
                tr.close()
                del self.active[cid]
        self._on = bool(self.rules or self.active)
        return True

    def describe(self) -> list[dict]:
        self._housekeeping(time.time())
        return [r.as_dict() for r in self.rules.values()]

    # --- Observer
    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        if not self._on:
            return
        cid = call_id_of(data)
        if cid is None:
            return
        tr = self.active.get(cid)
        if tr is None:
            tr = self._start_by_call_id(cid, wall)
        if tr is not None:
            tr.write(direction, leg, transport, local, remote, data, wall)
        elif any(r.number and r.calls_left > 0 for r in self.rules.values()):
            self._recent.append((cid, (direction, leg, transport, local, remote, data, wall)))
        self._housekeeping(wall)

    def call_started(self, call_id: str, direction: str, tenant: str | None, caller: str,
                     callee: str, wall: float) -> None:
        if not self._on or call_id in self.active:
            return
        for rule in self.rules.values():
            if rule.number and rule.calls_left > 0 and (_matches(caller, rule.number)
                                                        or _matches(callee, rule.number)):
                tr = self._open(call_id, rule, wall)
                for cid, msg in list(self._recent):
                    if cid == call_id:
                        tr.write(*msg)
                rule.calls_left -= 1
                return

    def call_failed(self, call_id: str, status: int, reason: str, wall: float) -> None:
        self._ended(call_id, wall)

    def call_ended(self, call_id: str, by: str, wall: float) -> None:
        self._ended(call_id, wall)

    def close(self) -> None:
        for tr in self.active.values():
            tr.close()
        self.active.clear()

    # --- internals
    def _start_by_call_id(self, cid: str, wall: float) -> _Trace | None:
        for rule in self.rules.values():
            if rule.call_id == cid and rule.calls_left > 0:
                return self._open(cid, rule, wall)
        return None

    def _open(self, cid: str, rule: TraceRule, wall: float) -> _Trace:
        tr = self.active[cid] = _Trace(self.dir, cid, self.fmt, rule, wall)
        log.info("tracing call %s to %s call_id=%s", cid, ", ".join(rule.files[-2:]), cid)
        return tr

    def _ended(self, call_id: str, wall: float) -> None:
        tr = self.active.get(call_id)
        if tr is not None and tr.ended is None:
            tr.ended = wall

    def _housekeeping(self, wall: float) -> None:
        for cid, tr in list(self.active.items()):
            if tr.ended is not None and wall - tr.ended > self.linger:
                tr.close()
                del self.active[cid]
                if tr.rule.call_id == cid:
                    tr.rule.calls_left = 0          # that call is done
        in_use = {id(tr.rule) for tr in self.active.values()}
        for rid, rule in list(self.rules.items()):
            if id(rule) in in_use:
                continue
            if rule.calls_left <= 0 or wall > rule.expires:
                del self.rules[rid]                 # done (its files stay on disk)
        self._on = bool(self.rules or self.active)


def _matches(number: str, prefix: str) -> bool:
    if not number:
        return False
    n, p = number.lstrip("+"), prefix.lstrip("+")
    return number.startswith(prefix) or (bool(p) and n.startswith(p))
