"""Network addresses: the one `host:port` value type and its one parser, and the socket
receive-buffer helper. A leaf module: it imports nothing of teamsbc, everything may import it.

    host:port        10.0.0.5:5060, sbc.example.com:5061
    [v6]:port        [2001:db8::1]:5061
    host             only where the caller supplies a default port
"""
from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass

log = logging.getLogger("teamsbc.addresses")


class AddressError(ValueError):
    """Text that is not `host:port`; the message says what is wrong (for `key: message`)."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        return is_ip(self.host)

    def as_tuple(self) -> tuple[str, int]:
        return self.host, self.port


_V6 = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?\Z")
_NAME = re.compile(r"([A-Za-z0-9.-]+)(?::(\d{1,5}))?\Z")


def parse_hostport(text: object, default_port: int | None = None) -> HostPort:
    """`host:port` (IPv6 as `[addr]:port`) -> HostPort, or AddressError saying why.
    Without a port, `default_port` is used when given, else it is an error."""
    if not isinstance(text, str):
        raise AddressError(f"must be \"host:port\", got {text!r}")
    v = text.strip()
    m = _V6.match(v) or _NAME.match(v)
    if m is None:
        raise AddressError(f"{text!r} is not \"host:port\" (IPv6 as [addr]:port)")
    host, port_s = m.group(1), m.group(2)
    if v.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None
    if port_s is None:
        if default_port is None:
            raise AddressError(f"{text!r} has no port (write {v}:5060 or similar)")
        port = default_port
    else:
        port = int(port_s)
    if not 0 < port < 65536:
        raise AddressError(f"port {port} out of range 1-65535")
    return HostPort(host, port)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def grow_receive_buffer(sock: socket.socket, what: str, size: int = UDP_RECEIVE_BUFFER) -> int:
    """Bursts of datagrams wait in the kernel while the event loop is busy: give them room.
    SO_RCVBUFFORCE (root / CAP_NET_ADMIN) passes net.core.rmem_max; else the sysctl caps it.
    Returns the size the kernel granted (logged as a warning when capped)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    level = logging.INFO if got >= size else logging.WARNING
    log.log(level, "%s receive buffer %d KiB%s", what, got // 1024,
            "" if got >= size else
            f" (wanted {size // 1024}: raise net.core.rmem_max or grant CAP_NET_ADMIN)")
    return got


def bind_udp(host: str, port: int) -> socket.socket:
    """A UDP socket bound to host:port, non-blocking (the PBX leg: bound before sbc.workers
    fork, so every worker sends from the one address the PBX knows)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
