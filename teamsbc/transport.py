"""The asyncio shell: sockets, TLS, connections and the timer that drives the sans-IO proxy.

Everything protocol-shaped happens in `proxy.Proxy`; this module moves bytes:
- PBX leg: a UDP socket (requests and responses both use it, so the PBX sees one address)
  or a TCP listener plus outbound TCP connections reused per destination.
- Teams leg: a TLS listener for connections Teams opens (they carry Teams' requests and our
  responses), and our own outbound TLS connections for our requests (reference section 2:
  connections are one-way), presenting our certificate, SNI = the Teams FQDN.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any

from .config import Config, HostPort
from .events import Observer
from .proxy import PBX, TEAMS, Destination, MediaCall, Proxy, Send, Source, bare_error_response
from .sip.errors import ParseError
from .sip.message import KEEPALIVE_PING, StreamFramer
from .tls import FileWatch, days_left, describe_certificate, reload_contexts

log = logging.getLogger("teamsbc.transport")

CONNECT_TIMEOUT = 5.0
TLS_HANDSHAKE_TIMEOUT = 5.0
MAINTENANCE_INTERVAL = 5.0


class TeamsIdentityError(Exception):
    """The peer's certificate verified but does not carry a Teams name."""


class StreamConn(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound, framed by Content-Length."""

    def __init__(self, shell: "Shell", leg: str, proto: str, key: tuple | None = None):
        self.shell, self.leg, self.proto, self.key = shell, leg, proto, key
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.src: Source | None = None
        self.closed = False
        self.born = shell.loop.time()
        self.last_tx = self.born
        self.tokens: set = set()            # client transactions whose requests went out here
        self._early = bytearray()           # bytes that arrived before connection_made (start_tls)
        self._keepalive: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = getattr(self.shell.proxy, "guard", None)
        if (guard is not None and self.key is None and self.leg == PBX and not guard.admit_connection(
                transport.get_extra_info("peername") or ("?", 0), PBX, self.shell.loop.time(), transport)):
            transport.abort()  # not a configured PBX (security.unknown_source: drop), banned or over a limit
            return
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.src = Source(self.leg, self.proto, (peer[0], peer[1]), self)
        local = transport.get_extra_info("sockname") or ("?", 0)
        self.local = (local[0], local[1])
        self.shell.conns.add(self)
        if self.key is not None and self.leg == TEAMS:
            self._arm_keepalive()
        if self.key is None and self.leg == PBX:
            # the PBX's own connection also carries our requests to that address (no second one)
            self.key = (PBX, self.proto, peer[0], peer[1])
            self.shell.adopt(self)
        if self.key is None:
            log.debug("connection from %s:%d on the %s leg (%s)", peer[0], peer[1], self.leg, self.proto)

    def data_received(self, data: bytes) -> None:
        if self.src is None:
            self._early += data
            return
        try:
            frames = self.framer.feed(data)
        except ParseError as e:
            self.shell.framing_error(self, data, e)
            return
        for frame in frames:
            if frame is KEEPALIVE_PING:
                self.write(b"\r\n")  # RFC 5626 4.4.1 pong
            else:
                self.shell.deliver(frame, self.src)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        self.shell.conn_lost(self)

    def flush_early(self) -> None:
        if self._early:
            data, self._early = bytes(self._early), bytearray()
            self.data_received(data)

    def write(self, data: bytes) -> bool:
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        self.last_tx = self.shell.loop.time()
        return True

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
            self.transport.close()


class TlsAcceptor(asyncio.Protocol):
    """The plain-TCP first moments of a connection Teams opens. We start TLS ourselves (instead
    of create_server(ssl=...)) so that a refused handshake is logged with its reason."""

    def __init__(self, shell: "Shell"):
        self.shell = shell

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = getattr(self.shell.proxy, "guard", None)
        if guard is not None and not guard.admit_connection(
                transport.get_extra_info("peername") or ("?", 0), TEAMS, self.shell.loop.time(), transport):
            transport.abort()  # outside Teams' ranges, banned or over a limit: not even a TLS handshake
            return
        transport.pause_reading()  # type: ignore[attr-defined]  # the ClientHello waits in the socket
        self.shell.loop.create_task(self.shell.accept_tls(transport))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(self, shell: "Shell", leg: str):
        self.shell, self.leg = shell, leg
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data in (b"\r\n\r\n", b"\r\n", b"\0\0\0\0"):
            return  # keep-alive noise on UDP
        guard = getattr(self.shell.proxy, "guard", None)
        if guard is not None and not guard.admit_address(addr[0], self.leg, self.shell.loop.time()):
            return  # not a configured PBX or banned: dropped before parsing, counted
        self.shell.deliver(data, Source(self.leg, "udp", (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("udp error on the %s leg: %s", self.leg, exc)


class Shell:
    def __init__(self, config: Config, proxy: Proxy, server_ctx: ssl.SSLContext,
                 client_ctx: ssl.SSLContext, media: Any = None, observer: Observer | None = None):
        self.config = config
        self.proxy = proxy
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.media = media  # something with `async request(command) -> dict` (media.pool)
        self.observer = observer or proxy.observer
        self.loop = asyncio.get_running_loop()
        self.conns: set[StreamConn] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: UdpEndpoint | None = None
        self._pool: dict[tuple, StreamConn] = {}
        self._connecting: dict[tuple, list[tuple[bytes, Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._retiring: set[StreamConn] = set()
        self._udp_local = (config.pbx.listen.host, config.pbx.listen.port)
        self._maintenance: asyncio.TimerHandle | None = None
        self.stats = {"tls_handshakes": 0, "tls_failures": 0, "cert_reloads": 0}
        t = config.teams
        # the certificate store renames the key first and the chain last: watch the chain
        self._cert_watch = FileWatch(t.certificate)
        self._next_expiry_log = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        c = self.config
        tl = c.teams.listen
        self._servers.append(await self.loop.create_server(
            lambda: TlsAcceptor(self), tl.host, tl.port, reuse_address=True))
        pl = c.pbx.listen
        if c.pbx.transport == "udp":
            tr, proto = await self.loop.create_datagram_endpoint(
                lambda: UdpEndpoint(self, PBX), local_addr=(pl.host, pl.port))
            self._udp = proto
            _grow_receive_buffer(tr.get_extra_info("socket"))
        else:
            self._servers.append(await self.loop.create_server(
                lambda: StreamConn(self, PBX, "tcp"), pl.host, pl.port, reuse_address=True))
        log.info("listening: teams tls %s, pbx %s %s -> pbx trunk %s", tl, c.pbx.transport, pl, c.pbx.address)
        self._maintenance = self.loop.call_later(MAINTENANCE_INTERVAL, self._maintain)

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful: stop accepting, let transactions in progress finish (bounded), close."""
        for s in self._servers:
            s.close()
        deadline = self.loop.time() + grace
        while self.proxy.pending_requests and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._timer:
            self._timer.cancel()
        if self._maintenance:
            self._maintenance.cancel()
        for conn in list(self.conns):
            conn.close()
        if self._udp and self._udp.transport:
            self._udp.transport.close()
        for s in self._servers:
            await s.wait_closed()

    # ------------------------------------------------------------------ proxy glue
    def deliver(self, data: bytes, src: Source) -> None:
        local = src.conn.local if src.conn is not None else self._udp_local
        self.observer.sip("in", src.leg, src.transport, local, src.addr, data, time.time())
        self.dispatch(self.proxy.receive(data, src, self.loop.time()))

    def _sent(self, data: bytes, leg: str, transport: str, local: tuple, remote: tuple) -> None:
        self.observer.sip("out", leg, transport, local, remote, data, time.time())

    def dispatch(self, sends: list) -> None:
        for s in sends:
            if isinstance(s, MediaCall):
                self.loop.create_task(self._run_media(s))
                continue
            to = s.to
            if isinstance(to, Source):
                self._send_to_source(s.data, to)
            else:
                self._send_to_destination(s.data, to, s.token)
        self._rearm()

    def _rearm(self) -> None:
        t = self.proxy.next_timer()
        if t is None:
            return
        if self._timer is None or self._timer.cancelled() or t < self._timer_at or self._timer_at <= self.loop.time():
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = t
            self._timer = self.loop.call_at(t, self._on_timer)

    async def _run_media(self, call: MediaCall) -> None:
        try:
            if self.media is None:
                raise RuntimeError("no rtpengine configured")
            result: Any = await self.media.request(call.command)
        except Exception as e:  # NgError, NgTimeout, NoMediaAvailable...: the core decides
            result = e
            log.warning("rtpengine %s failed: %s call_id=%s", call.command.get("command"), e,
                        call.command.get("call-id"))
        else:
            if call.command.get("command") == "delete":
                self.observer.media_deleted(str(call.command.get("call-id")), result)
        if call.op is not None:
            self.dispatch(self.proxy.media_done(call.op, result, self.loop.time()))

    def _on_timer(self) -> None:
        self._timer = None
        self.dispatch(self.proxy.handle_timer(self.loop.time()))

    def kick(self) -> None:
        """Run the core's due timers now (start-up: the first OPTIONS go out at once)."""
        self._on_timer()

    # ------------------------------------------------------------------ TLS identity
    async def accept_tls(self, raw: asyncio.Transport) -> None:
        # Debian 12's python3 (3.11.2) re-arms reading after connection_made paused it: its
        # _SelectorTransport._add_reader, queued behind connection_made, ignores the pause (later
        # releases check is_reading()), so the ClientHello was read into TlsAcceptor and lost.
        # This first step of the task runs after that _add_reader and before the loop polls the
        # socket again (removing the reader also cancels a read already queued): pausing once more
        # here holds on every version.
        raw.resume_reading()
        raw.pause_reading()
        peer = raw.get_extra_info("peername") or ("?", 0)
        conn = StreamConn(self, TEAMS, "tls")
        try:
            tls = await asyncio.wait_for(self.loop.start_tls(
                raw, conn, self.server_ctx, server_side=True,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT), TLS_HANDSHAKE_TIMEOUT + 1)
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:
            self.stats["tls_failures"] += 1
            log.warning("TLS handshake from %s:%d refused: %s", peer[0], peer[1], _describe(e))
            if getattr(self.proxy, "guard", None) is not None:
                self.proxy.guard.handshake_failed(peer, self.loop.time())
            raw.close()
            return
        if tls is None:
            raw.close()
            return
        problem = self.teams_identity_problem(tls.get_extra_info("peercert"))
        if problem:
            self.stats["tls_failures"] += 1
            log.warning("TLS peer %s:%d refused: %s", peer[0], peer[1], problem)
            if getattr(self.proxy, "guard", None) is not None:
                self.proxy.guard.handshake_failed(peer, self.loop.time())
            tls.abort()
            return
        self.stats["tls_handshakes"] += 1
        conn.connection_made(tls)
        conn.flush_early()

    def teams_identity_problem(self, cert: dict | None) -> str | None:
        """None when the verified peer certificate carries a name Teams uses (reference 2:
        Teams' certificate has sip.pstnhub.microsoft.com, or the GCC High / DoD name)."""
        if not cert:
            return "no client certificate (Teams always presents one)"
        names = [v.lower() for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
        wanted = self.config.teams.require_san
        for want in wanted:
            for n in names:
                if n == want or (n.startswith("*.") and want.split(".", 1)[-1] == n[2:] and want.count(".") == n.count(".")):
                    return None
        return f"certificate names {names or ['(none)']} do not include {' or '.join(wanted)}"

    # ------------------------------------------------------------------ connection upkeep
    def _maintain(self) -> None:
        """Renew our own connections after connection_max_age (reference 2: at least hourly),
        and close retired ones once no transaction that used them is still running."""
        if self._cert_watch.changed():
            self.reload_certificate("certificate files changed")
        now = self.loop.time()
        if now >= self._next_expiry_log:
            self._next_expiry_log = now + 86400
            self.log_expiry()
        max_age = self.config.teams.connection_max_age
        for key, conn in list(self._pool.items()):
            if conn.leg == TEAMS and now - conn.born >= max_age:
                self.retire(conn, "older than teams.connection_max_age")
        for conn in list(self._retiring):
            conn.tokens = {t for t in conn.tokens if self.proxy.is_client_active(t)}
            if not conn.tokens or conn.closed:
                self._retiring.discard(conn)
                conn.close()
        self._maintenance = self.loop.call_later(MAINTENANCE_INTERVAL, self._maintain)

    def retire(self, conn: StreamConn, why: str) -> None:
        """New requests get a new connection; this one closes when its transactions are done."""
        if conn.key is not None and self._pool.get(conn.key) is conn:
            del self._pool[conn.key]
        self._retiring.add(conn)
        log.info("renewing connection to %s:%d (%s)", conn.key[2] if conn.key else "?",
                 conn.key[3] if conn.key else 0, why)

    def reload_certificate(self, why: str) -> str | None:
        """New TLS handshakes (both directions) use the certificate on disk from now on; calls
        are untouched; our own connections to Teams are renewed once their transactions are
        done (Teams keeps the old certificate on a connection). Returns the problem, if any."""
        t = self.config.teams
        problem = reload_contexts([self.server_ctx, self.client_ctx], t.certificate, t.private_key)
        if problem:
            log.error("certificate reload (%s) refused, the current one stays: %s", why, problem)
            return problem
        self.stats["cert_reloads"] += 1
        log.info("certificate reloaded (%s): %s", why, describe_certificate(t.certificate))
        self.retire_all("new certificate")
        return None

    def log_expiry(self) -> None:
        """Days left, at start and daily; a warning from 30 days (Teams refuses expired ones)."""
        left = days_left(self.config.teams.certificate)
        if left is None:
            log.error("certificate %s unreadable", self.config.teams.certificate)
        elif left < 30:
            log.warning("certificate expires in %.1f days: renew it (teamsbc cert renew)", left)
        else:
            log.info("certificate valid for %.0f more days", left)

    def retire_all(self, why: str) -> None:
        for conn in [c for c in self._pool.values() if c.leg == TEAMS]:
            self.retire(conn, why)

    def framing_error(self, conn: StreamConn, data: bytes, err: ParseError) -> None:
        log.warning("closing %s connection from %s:%d: %s", conn.proto, *conn.src.addr, err.reason)  # type: ignore[union-attr]
        resp = bare_error_response(data, err)
        if resp is not None:
            conn.write(resp)
        conn.close()

    def adopt(self, conn: StreamConn) -> None:
        self._pool.setdefault(conn.key, conn)  # type: ignore[arg-type]

    def conn_lost(self, conn: StreamConn) -> None:
        self.conns.discard(conn)
        if conn.key is not None and self._pool.get(conn.key) is conn:
            del self._pool[conn.key]

    # ------------------------------------------------------------------ sending
    def _send_to_source(self, data: bytes, src: Source) -> None:
        if src.conn is not None:
            if not src.conn.write(data):
                log.info("connection to %s:%d gone, response dropped", *src.addr)
                return
            self._sent(data, src.leg, src.transport, src.conn.local, src.addr)
        elif self._udp and self._udp.transport:
            self._udp.transport.sendto(data, src.addr)
            self._sent(data, src.leg, "udp", self._udp_local, src.addr)

    def _send_to_destination(self, data: bytes, dest: Destination, token: Any) -> None:
        if dest.transport == "udp":
            if self._udp and self._udp.transport:
                self._udp.transport.sendto(data, (dest.host, dest.port))
                self._sent(data, dest.leg, "udp", self._udp_local, (dest.host, dest.port))
            return
        key = (dest.leg, dest.transport, dest.host, dest.port)
        conn = self._pool.get(key)
        if conn is not None and not conn.closed:
            conn.write(data)
            self._sent(data, dest.leg, conn.proto, conn.local, conn.src.addr)  # type: ignore[union-attr]
            if token is not None:
                conn.tokens.add(token)
            return
        waiting = self._connecting.get(key)
        if waiting is not None:
            waiting.append((data, token))
            return
        self._connecting[key] = [(data, token)]
        self.loop.create_task(self._connect(key, dest))

    async def _connect(self, key: tuple, dest: Destination) -> None:
        try:
            if dest.leg == TEAMS:
                hp = self.config.teams.resolve.get(dest.host) or await self._resolve(dest.host, dest.port)
                conn = StreamConn(self, TEAMS, "tls", key)
                tr, _ = await asyncio.wait_for(self.loop.create_connection(
                    lambda: conn, hp.host, hp.port, ssl=self.client_ctx, server_hostname=dest.host,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT), CONNECT_TIMEOUT + TLS_HANDSHAKE_TIMEOUT)
                problem = self.teams_identity_problem(tr.get_extra_info("peercert"))
                if problem:
                    tr.abort()
                    raise TeamsIdentityError(problem)
                self.stats["tls_handshakes"] += 1
            else:
                conn = StreamConn(self, PBX, dest.transport, key)
                await asyncio.wait_for(self.loop.create_connection(lambda: conn, dest.host, dest.port),
                                       CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ssl.SSLError, TeamsIdentityError) as e:
            if dest.leg == TEAMS:
                self.stats["tls_failures"] += 1
            reason = _describe(e)
            log.warning("cannot connect to %s:%d (%s) on the %s leg: %s", dest.host, dest.port,
                        dest.transport, dest.leg, reason)
            pending = self._connecting.pop(key, [])
            now = self.loop.time()
            sends: list[Send] = []
            for _, token in pending:
                if token is not None:
                    sends += self.proxy.transport_failed(token, now, reason)
            self.dispatch(sends)
            return
        self._pool[key] = conn
        for data, token in self._connecting.pop(key, []):
            conn.write(data)
            self._sent(data, dest.leg, conn.proto, conn.local, conn.src.addr)  # type: ignore[union-attr]
            if token is not None:
                conn.tokens.add(token)

    async def _resolve(self, host: str, port: int) -> HostPort:
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host} does not resolve")
        addr = infos[0][4]
        return HostPort(addr[0], addr[1])


UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _grow_receive_buffer(sock: socket.socket, what: str = "PBX UDP") -> None:
    """Bursts of datagrams wait in the kernel while the event loop is busy: give them room.
    SO_RCVBUFFORCE (root / CAP_NET_ADMIN) passes net.core.rmem_max; else the sysctl caps it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), UDP_RECEIVE_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    level = logging.INFO if got >= UDP_RECEIVE_BUFFER else logging.WARNING
    log.log(level, "%s receive buffer %d KiB%s", what, got // 1024,
            "" if got >= UDP_RECEIVE_BUFFER else
            f" (wanted {UDP_RECEIVE_BUFFER // 1024}: raise net.core.rmem_max or grant CAP_NET_ADMIN)")


def _describe(e: BaseException) -> str:
    if isinstance(e, TeamsIdentityError):
        return str(e)
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed: {e.reason or e}"
    return e.strerror or str(e)
