"""Connections of the asyncio shell: a stream (TCP or TLS) with its framer, keep-alive and
timeouts, the TLS acceptor that hands accepted sockets to the shell, the PBX UDP socket read in
batches, a connection held by another worker, and the log limiter for refused peers.

They move bytes and report to the shell (`transport.Shell`): `deliver`, `adopt`, `conn_lost`,
`framing_error`; no SIP decision is made here.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from typing import Any, Callable

from .decisions import PBX, TEAMS, Source
from .sip.errors import ParseError
from .sip.message import KEEPALIVE_PING, StreamFramer
from .workers import Mesh

Shell = Any  # transport.Shell, the owner of every connection (not imported: it imports us)

log = logging.getLogger("teamsbc.transport")

CONNECT_TIMEOUT = 5.0
TLS_HANDSHAKE_TIMEOUT = 5.0
MAINTENANCE_INTERVAL = 5.0
PRUNE_MIN = 1024   # a connection's transaction tokens are pruned each time their number doubles from here
READ_BUFFER = 65536  # bytes: every socket of a shell is read into one buffer of this size


class ReadBuffer:
    """Every read of a shell's sockets lands in one preallocated buffer and leaves it as a copy
    of exactly the bytes received (issue 12, RSS not flat). asyncio's own reads ask for 256 KiB
    (TCP, TLS) and the UDP socket asked for 64 KiB, then shrink the result: glibc keeps such a
    buffer either in an mmapped 4 KiB page per kept message, or, once any large temporary has
    raised its mmap threshold, in a heap chunk cut in place whose free tail long-lived
    messages pin. Measured with 20,000 live 1 KB messages: 66-105 MiB of free-but-kept heap,
    still growing, against 2 MiB and flat with exact-size copies. Reads and the copy happen in
    one synchronous step (recv_into, then bytes()), so one buffer per event loop is enough."""

    def __init__(self, size: int = READ_BUFFER):
        self.view = memoryview(bytearray(size))

    def copy(self, nbytes: int) -> bytes:
        return bytes(self.view[:nbytes])


class TeamsIdentityError(Exception):
    """The peer's certificate verified but does not carry a Teams name."""


class SourceLog:
    """At most one line per source address and reason per `period` seconds: the first event of
    a period is logged in full, the others counted and reported with the next line or when the
    period is over (issue 12: 498 WARNING lines in 20 s from a handshake flood). A flood repeats
    one reason; a peer that fails for two different reasons (a wrong certificate, then a wrong
    CA) gets both said."""

    def __init__(self, level: int, period: float = 60.0, max_sources: int = 4096):
        self.level, self.period, self.max_sources = level, period, max_sources
        self._seen: dict[tuple[str, str], list] = {}   # (ip, reason) -> [period start, suppressed, last text]

    def note(self, ip: str, reason: str, now: float, text: str) -> None:
        key = (ip, reason)
        e = self._seen.get(key)
        if e is not None and now - e[0] < self.period:
            e[1] += 1
            e[2] = text
            return
        if e is not None:
            self._summary(ip, e)
        elif len(self._seen) >= self.max_sources:
            self.flush(now, everything=True)
        log.log(self.level, "%s", text)
        self._seen[key] = [now, 0, text]

    def flush(self, now: float, everything: bool = False) -> None:
        for key, e in list(self._seen.items()):
            if everything or now - e[0] >= self.period:
                self._summary(key[0], e)
                del self._seen[key]

    def _summary(self, ip: str, e: list) -> None:
        if e[1]:
            log.log(self.level, "%d more like this from %s in %gs, the last: %s", e[1], ip, self.period, e[2])


def carried(conn: "StreamConn", token: Any, active: Callable[[Any], bool]) -> None:
    """Note that a client transaction's request went out on `conn` (a retiring connection
    closes when none of them is active). Ended ones are dropped each time the set doubles
    (amortised O(1)): a connection to Teams lives for an hour (teams.connection_max_age) and
    carried every call's requests; without pruning it kept all of their keys."""
    tokens = conn.tokens
    tokens.add(token)
    if len(tokens) >= conn.prune_at:
        conn.tokens = tokens = {t for t in tokens if active(t)}
        conn.prune_at = max(PRUNE_MIN, 2 * len(tokens))


class StreamConn(asyncio.BufferedProtocol):
    """One TCP or TLS connection, inbound or outbound, framed by Content-Length."""

    def __init__(self, shell: "Shell", leg: str, proto: str, key: tuple | None = None):
        self.shell, self.leg, self.proto, self.key = shell, leg, proto, key
        shell.conn_seq += 1
        self.ident = shell.conn_seq          # how another worker names it (workers.py "W")
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.src: Source | None = None
        self.closed = False
        self.born = shell.loop.time()
        self.last_tx = self.born
        self.inbound = key is None               # accepted here (Teams' TLS, the PBX's TCP)
        self.messages = 0                        # complete SIP messages received
        self.last_msg = self.born
        self.partial_since: float | None = None  # first byte of a message not complete yet
        self.tokens: set = set()            # client transactions whose requests went out here (carried())
        self.prune_at = PRUNE_MIN
        self._early = bytearray()           # bytes that arrived before connection_made (start_tls)
        self._keepalive: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []         # written this loop turn, sent together (Shell.flush)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if (self.key is None and self.leg == PBX and not self.shell.door.admit_connection(
                transport.get_extra_info("peername") or ("?", 0), PBX, self.shell.loop.time(), transport)):
            transport.abort()  # not a configured PBX (security.unknown_source: drop), banned or over a limit
            return
        self.transport = transport  # type: ignore[assignment]
        self.born = self.last_msg = self.shell.loop.time()  # accepted TLS: after the handshake
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.src = Source(self.leg, self.proto, (peer[0], peer[1]), self)
        local = transport.get_extra_info("sockname") or ("?", 0)
        self.local = (local[0], local[1])
        self.shell.conns.add(self)
        self.shell.by_ident[self.ident] = self
        if self.key is not None and self.leg == TEAMS:
            self._arm_keepalive()
        if self.key is None and self.leg == PBX:
            # the PBX's own connection also carries our requests to that address (no second one)
            self.key = (PBX, self.proto, peer[0], peer[1])
            self.shell.adopt(self)
        if self.key is None:
            log.debug("connection from %s:%d on the %s leg (%s)", peer[0], peer[1], self.leg, self.proto)

    # asyncio reads into the shell's buffer (plain TCP: recv_into; TLS: SSLObject.read into it)
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.shell.read_buffer.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.shell.read_buffer.copy(nbytes))

    def data_received(self, data: bytes) -> None:
        if self.src is None:
            self._early += data
            return
        try:
            frames = self.framer.feed(data)
        except ParseError as e:
            self.shell.framing_error(self, data, e)
            return
        now = self.shell.loop.time()
        if not self.framer.buffered or self.framer.only_line_ends:
            self.partial_since = None  # a pong to our keep-alive is no message begun
        elif self.partial_since is None or frames:
            self.partial_since = now
        for frame in frames:
            if frame is KEEPALIVE_PING:
                self.write(b"\r\n")  # RFC 5626 4.4.1 pong
            else:
                self.messages += 1
                self.last_msg = now
                self.shell.deliver(frame, self.src)  # type: ignore[arg-type]
                if self.src is None:
                    return  # closed while delivering

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        self.shell.conn_lost(self)
        # No cycle left for the collector (it does not walk long-lived objects under load:
        # collector.py), or a closed TLS connection keeps its 256 KiB read buffer: Source.conn
        # is this connection, and asyncio's SSLProtocol keeps our get_buffer/buffer_updated
        # (bound to us) while we would keep its transport.
        self.src = None
        self.transport = None
        self._out = []

    def flush_early(self) -> None:
        if self._early:
            data, self._early = bytes(self._early), bytearray()
            self.data_received(data)

    def write(self, data: bytes) -> bool:
        """Queue `data`; everything written to this connection in one loop turn leaves in one
        TLS record and one send (Shell.flush)."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        if not self._out:
            self.shell.dirty(self)
        self._out.append(data)
        self.last_tx = self.shell.loop.time()
        return True

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _arm_keepalive(self) -> None:
        interval = self.shell.config.teams.keepalive_interval
        self._keepalive = self.shell.loop.call_later(interval, self._send_keepalive)

    def _send_keepalive(self) -> None:
        """RFC 5626 double-CRLF ping on our own idle connections: Teams drops a connection idle
        for 2 minutes, and only keep-alives sent by the SBC reset that timer (reference 2)."""
        if self.closed:
            return
        if self.shell.loop.time() - self.last_tx >= self.shell.config.teams.keepalive_interval - 0.5:
            self.write(b"\r\n\r\n")
        self._arm_keepalive()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush()
            self.transport.close()

    def overdue(self, now: float, header_timeout: float, idle_timeout: float, tables: Any) -> str | None:
        """Why this connection must be closed now (security.header_timeout / idle_timeout), or
        None. A slow or silent peer must not hold a connection slot (issue 12: 200 such
        connections used up the per-address cap a real Teams proxy shares). Our own outbound
        connections are kept alive on purpose (keep-alive, connection_max_age)."""
        if self.partial_since is not None and now - self.partial_since > header_timeout:
            return f"a message not complete {header_timeout:g}s after its first byte (security.header_timeout)"
        if not self.inbound:
            return None
        if self.messages == 0 and now - self.born > header_timeout:
            return f"no SIP message within {header_timeout:g}s of connecting (security.header_timeout)"
        if now - self.last_msg > idle_timeout and not tables.serves(self):
            return f"no message for {idle_timeout:g}s and no transaction on it (security.idle_timeout)"
        return None


class TlsAcceptor(asyncio.Protocol):
    """The plain-TCP first moments of a connection Teams opens. We start TLS ourselves (instead
    of create_server(ssl=...)) so that a refused handshake is logged with its reason."""

    def __init__(self, shell: "Shell"):
        self.shell = shell

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.shell.door.admit_connection(
                transport.get_extra_info("peername") or ("?", 0), TEAMS, self.shell.loop.time(), transport):
            transport.abort()  # outside Teams' ranges, banned or over a limit: not even a TLS handshake
            return
        transport.pause_reading()  # type: ignore[attr-defined]  # the ClientHello waits in the socket
        self.shell.loop.create_task(self.shell.accept_tls(transport))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass


READ_BATCH = 64  # datagrams read per wake-up at most (then other sockets get their turn)


class UdpSocket:
    """The PBX leg's UDP socket, driven without asyncio's datagram transport: one wake-up
    reads every datagram waiting (up to READ_BATCH), where the transport reads one per loop
    turn, and a send is one sendto. `read=False`: a worker that only sends from it (worker 0
    reads it; sbc.workers)."""

    def __init__(self, shell: "Shell", leg: str, sock: socket.socket, *, read: bool = True):
        sock.setblocking(False)
        self.shell, self.leg, self.sock = shell, leg, sock
        self.transport = self
        self._closing = False
        self._reading = read
        self._backlog: deque[tuple[bytes, tuple]] = deque()
        if read:
            shell.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        shell, leg, recv = self.shell, self.leg, self.sock.recvfrom_into
        door, buf = shell.door, shell.read_buffer
        for _ in range(READ_BATCH):
            try:
                n, addr = recv(buf.view)
                data = buf.copy(n)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # an ICMP error reported on the socket
                log.debug("udp error on the %s leg: %s", leg, e)
                continue
            if data in (b"\r\n\r\n", b"\r\n", b"\0\0\0\0"):
                continue  # keep-alive noise on UDP
            if not door.admit_address(addr[0], leg, shell.loop.time()):
                continue  # not a configured PBX or banned: dropped before parsing, counted
            shell.deliver(data, Source(leg, "udp", (addr[0], addr[1])))

    def sendto(self, data: bytes, addr: tuple) -> None:
        if self._closing:
            return
        if self._backlog:
            self._backlog.append((data, addr))
            return
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._backlog.append((data, addr))
            self.shell.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as e:  # unreachable network and the like: UDP retransmission covers it
            log.debug("udp send to %s failed: %s", addr, e)

    def _writable(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("udp send to %s failed: %s", addr, e)
            self._backlog.popleft()
        self.shell.loop.remove_writer(self.sock.fileno())

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        loop = self.shell.loop
        if self._reading:
            loop.remove_reader(self.sock.fileno())
        if self._backlog:
            loop.remove_writer(self.sock.fileno())
        self.sock.close()


class RemoteConn:
    """A connection another worker holds (sbc.workers): what is written here goes there."""

    __slots__ = ("mesh", "worker", "ident", "local", "closed")

    def __init__(self, mesh: Mesh, worker: int, ident: int, local: tuple):
        self.mesh, self.worker, self.ident, self.local = mesh, worker, ident, local
        self.closed = False

    def write(self, data: bytes) -> bool:
        if self.worker not in self.mesh.team.channels:
            return False
        self.mesh.send(self.worker, ("W", self.ident, data))
        return True
