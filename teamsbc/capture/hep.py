"""HEPv3 export: every SIP message, as it was on the wire, to a Homer collector over UDP.

HEPv3 (https://github.com/sipcapture/HEP, "HEP3 Network Protocol Specification"): "HEP3",
total length, then chunks of (vendor 0, type, length incl. the 6-byte chunk header, value),
all big-endian: 1 IP family (2 = IPv4, 10 = IPv6), 2 IP protocol (17 UDP, 6 TCP, 22 for TLS
as Kamailio's siptrace does), 3/4 IPv4 source/destination or 5/6 IPv6, 7/8 ports, 9/10
timestamp seconds/microseconds, 11 protocol type (1 = SIP), 12 capture agent id, 14 auth key
(the collector password, when set), 15 payload.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time

from ..addresses import HostPort
from ..events import Observer
from .mask import mask_credentials

log = logging.getLogger("teamsbc.capture")

HEP_PROTO_SIP = 1
IP_PROTO = {"udp": 17, "tcp": 6, "tls": 22}   # 22 (IDP): "TLS" in Kamailio's siptrace / Homer
AF_HEP = {4: 2, 6: 10}
MAX_UDP_PAYLOAD = 65507
MAX_HEP_PAYLOAD = MAX_UDP_PAYLOAD - 256      # room for the chunks around the SIP message

# chunk types (vendor 0)
CH_FAMILY, CH_PROTO, CH_SRC4, CH_DST4, CH_SRC6, CH_DST6 = 1, 2, 3, 4, 5, 6
CH_SPORT, CH_DPORT, CH_TS, CH_TSU, CH_PTYPE, CH_AGENT = 7, 8, 9, 10, 11, 12
CH_AUTH, CH_PAYLOAD, CH_CORRELATION = 14, 15, 17


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

    def __init__(self, collector: HostPort | tuple[str, int], agent_id: int = 2001,
                 password: str | None = None):
        host, port = collector.as_tuple() if isinstance(collector, HostPort) else collector
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
        data = mask_credentials(data)       # Homer keeps messages: no offline password guess
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
