"""SIP capture: HEPv3 export to a Homer collector, and per-call traces on demand.

TLS hides the Teams leg from tcpdump; the shell hands every SIP message to the observers as
bytes on the wire AFTER decryption, so both exports below show the Teams leg in clear.

    hep = HepObserver(HostPort("10.0.0.9", 9060), agent_id=2001, password=None)
    tracer = CallTracer(Path("/var/lib/teamsbc/traces"), fmt="both")
    observers.add(hep); observers.add(tracer)
    tracer.trace_call("abc@pbx")            # that Call-ID, until it ends (admin: POST /trace)
    tracer.trace_number("+4420", calls=1)   # the next call whose caller or callee starts so
    hep.close(); tracer.close()

HEPv3 (https://github.com/sipcapture/HEP, "HEP3 Network Protocol Specification"): "HEP3",
total length, then chunks of (vendor 0, type, length incl. the 6-byte chunk header, value),
all big-endian: 1 IP family (2 = IPv4, 10 = IPv6), 2 IP protocol (17 UDP, 6 TCP, 22 for TLS
as Kamailio's siptrace does), 3/4 IPv4 source/destination or 5/6 IPv6, 7/8 ports, 9/10
timestamp seconds/microseconds, 11 protocol type (1 = SIP), 12 capture agent id, 14 auth key
(the collector password, when set), 15 payload.

Traces: one pcap (fake IPv4/IPv6 + UDP headers around each SIP message, link type RAW, so
Wireshark and sngrep open it) and/or one text file per call, in `trace_dir`, 0600.

Config (proposed): `capture: {hep: null | "ip:port", agent_id: 2001, password: null,
trace_dir: traces, trace_format: both | pcap | text}`.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .events import Observer

log = logging.getLogger("teamsbc.capture")

HEP_PROTO_SIP = 1
IP_PROTO = {"udp": 17, "tcp": 6, "tls": 22}   # 22 (IDP): "TLS" in Kamailio's siptrace / Homer
AF_HEP = {4: 2, 6: 10}
MAX_UDP_PAYLOAD = 65507
MAX_HEP_PAYLOAD = MAX_UDP_PAYLOAD - 256      # room for the chunks around the SIP message
LINKTYPE_RAW = 101

# chunk types (vendor 0)
CH_FAMILY, CH_PROTO, CH_SRC4, CH_DST4, CH_SRC6, CH_DST6 = 1, 2, 3, 4, 5, 6
CH_SPORT, CH_DPORT, CH_TS, CH_TSU, CH_PTYPE, CH_AGENT = 7, 8, 9, 10, 11, 12
CH_AUTH, CH_PAYLOAD, CH_CORRELATION = 14, 15, 17


# ---------------------------------------------------------------------- settings

@dataclass(frozen=True, slots=True)
class CaptureSettings:
    hep: tuple[str, int] | None = None
    agent_id: int = 2001
    password: str | None = None
    trace_dir: Path = Path("traces")
    trace_format: str = "both"      # both | pcap | text


def parse_settings(section: Any, base: Path) -> tuple[CaptureSettings, list[tuple[str, str]]]:
    """The `capture` section -> settings and [(key, problem)] (for config.py's error list)."""
    errors: list[tuple[str, str]] = []
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return CaptureSettings(trace_dir=base / "traces"), [("capture", "must be a mapping")]
    known = ("hep", "agent_id", "password", "trace_dir", "trace_format")
    for k in section:
        if k not in known:
            errors.append((f"capture.{k}", f"unknown key (known: {', '.join(sorted(known))})"))
    hep = None
    v = section.get("hep")
    if v is not None:
        hep = _parse_hostport(v)
        if hep is None:
            errors.append(("capture.hep", f"{v!r} is not \"ip:port\" of a HEP collector (e.g. 10.0.0.9:9060)"))
    agent = section.get("agent_id", 2001)
    if isinstance(agent, bool) or not isinstance(agent, int) or not 0 <= agent < 2**32:
        errors.append(("capture.agent_id", f"must be an integer 0-4294967295, got {agent!r}"))
        agent = 2001
    pw = section.get("password")
    if pw is not None and (not isinstance(pw, str) or not pw):
        errors.append(("capture.password", "must be a non-empty string or null"))
        pw = None
    td = section.get("trace_dir", "traces")
    if not isinstance(td, str) or not td.strip():
        errors.append(("capture.trace_dir", f"must be a directory path, got {td!r}"))
        td = "traces"
    tdir = Path(td)
    if not tdir.is_absolute():
        tdir = base / tdir
    fmt = section.get("trace_format", "both")
    if fmt not in ("both", "pcap", "text"):
        errors.append(("capture.trace_format", f"{fmt!r} is not one of both, pcap, text"))
        fmt = "both"
    return CaptureSettings(hep, agent, pw, tdir, fmt), errors


def _parse_hostport(v: Any) -> tuple[str, int] | None:
    if not isinstance(v, str):
        return None
    m = re.match(r"\[([0-9A-Fa-f:.]+)\]:(\d+)\Z", v) or re.match(r"([^:\[\]]+):(\d+)\Z", v)
    if not m or not 0 < int(m.group(2)) < 65536:
        return None
    return m.group(1), int(m.group(2))


# ---------------------------------------------------------------------- HEPv3

def _chunk(ctype: int, value: bytes) -> bytes:
    return struct.pack("!HHH", 0, ctype, 6 + len(value)) + value


_U8 = struct.Struct("!HHHB")
_U16 = struct.Struct("!HHHH")
_U32 = struct.Struct("!HHHI")


class HepEncoder:
    """Builds HEPv3 packets. The constant chunks are built once; addresses are cached."""

    def __init__(self, agent_id: int = 2001, password: str | bytes | None = None):
        tail = _U8.pack(0, CH_PTYPE, 7, HEP_PROTO_SIP) + _U32.pack(0, CH_AGENT, 10, agent_id)
        if password:
            tail += _chunk(CH_AUTH, password.encode() if isinstance(password, str) else password)
        self._tail = tail
        self._addr: dict[str, tuple[int, bytes]] = {}

    def _ip(self, host: str) -> tuple[int, bytes]:
        hit = self._addr.get(host)
        if hit is None:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            hit = (ip.version, ip.packed)
            if len(self._addr) > 4096:
                self._addr.clear()
            self._addr[host] = hit
        return hit

    def encode(self, src: tuple, dst: tuple, ip_proto: int, payload: bytes, ts: float) -> bytes:
        sv, sp = self._ip(src[0])
        dv, dp = self._ip(dst[0])
        if sv != dv:   # one IPv4 and one IPv6 end: both as IPv6 (v4-mapped)
            if sv == 4:
                sp = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + sp).packed
            if dv == 4:
                dp = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + dp).packed
            sv = dv = 6
        if sv == 4:
            addrs = struct.pack("!HHH4sHHH4s", 0, CH_SRC4, 10, sp, 0, CH_DST4, 10, dp)
        else:
            addrs = struct.pack("!HHH16sHHH16s", 0, CH_SRC6, 22, sp, 0, CH_DST6, 22, dp)
        sec = int(ts)
        body = b"".join((
            _U8.pack(0, CH_FAMILY, 7, AF_HEP[sv]), _U8.pack(0, CH_PROTO, 7, ip_proto), addrs,
            _U16.pack(0, CH_SPORT, 8, src[1]), _U16.pack(0, CH_DPORT, 8, dst[1]),
            _U32.pack(0, CH_TS, 10, sec), _U32.pack(0, CH_TSU, 10, int((ts - sec) * 1e6)),
            self._tail, struct.pack("!HHH", 0, CH_PAYLOAD, 6 + len(payload)), payload))
        return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


def encode_hep3(*, src: tuple, dst: tuple, payload: bytes, ts: float, ip_proto: int = 17,
                agent_id: int = 2001, password: str | bytes | None = None) -> bytes:
    return HepEncoder(agent_id, password).encode(src, dst, ip_proto, payload, ts)


class HepObserver(Observer):
    """Sends every SIP message to a HEP collector over UDP. Non-blocking; never raises: a
    message that cannot be sent is counted in `stats` (and logged at most once a minute)."""

    def __init__(self, collector: tuple[str, int] | Any, agent_id: int = 2001,
                 password: str | None = None):
        host, port = (collector.host, collector.port) if hasattr(collector, "host") else collector
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]   # once, at start
        self.collector = info[4]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.encoder = HepEncoder(agent_id, password)
        self.stats = {"sent": 0, "dropped": 0, "errors": 0}
        self._last_complaint = 0.0

    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        if len(data) > MAX_HEP_PAYLOAD:
            self.stats["dropped"] += 1      # does not fit one HEP datagram
            return
        try:
            if direction == "in":
                pkt = self.encoder.encode(remote, local, IP_PROTO.get(transport, 17), data, wall)
            else:
                pkt = self.encoder.encode(local, remote, IP_PROTO.get(transport, 17), data, wall)
            self.sock.sendto(pkt, self.collector)
            self.stats["sent"] += 1
        except (BlockingIOError, InterruptedError):
            self.stats["dropped"] += 1      # socket buffer full: capture is best effort
        except Exception as e:  # noqa: BLE001 - capture must never disturb a call
            self.stats["errors"] += 1
            now = time.monotonic()
            if now - self._last_complaint > 60:
                self._last_complaint = now
                log.warning("HEP export to %s failed: %s (%d failures so far)", self.collector, e,
                            self.stats["errors"])

    def close(self) -> None:
        self.sock.close()


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
        if self.pcap is not None:
            self.pcap.write(pcap_record(wall, fake_udp_packet(src, dst, data)))
            self.pcap.flush()
        if self.text is not None:
            from .metrics import iso
            head = (f"=== {iso(wall)} {leg} {direction} {transport} {_fmt(src)} -> {_fmt(dst)} "
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
