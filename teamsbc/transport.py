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

from .addresses import HostPort, bind_udp, grow_receive_buffer
from .certnames import dns_names, teams_name_problem
from .certwatch import CertificateWatch
from .config import Config
from .decisions import PBX, TEAMS, Destination, Door, MediaCall, Send, Source
from .events import Observers
from .media.stats import parse_stats
from .proxy import Proxy
from .sip.build import bare_error_response
from .sip.errors import ParseError
from .media.pool import MediaPool
from .workers import Mesh, call_id_of

log = logging.getLogger("teamsbc.transport")

from .connections import (CONNECT_TIMEOUT, MAINTENANCE_INTERVAL, TLS_HANDSHAKE_TIMEOUT, ReadBuffer,
                          RemoteConn, SourceLog, StreamConn, TeamsIdentityError, TlsAcceptor, UdpSocket, carried)


class Shell:
    def __init__(self, config: Config, proxy: Proxy, door: Door, server_ctx: ssl.SSLContext,
                 client_ctx: ssl.SSLContext, *, observers: Observers, media: MediaPool | None = None,
                 mesh: Mesh | None = None):
        self.config = config
        self.proxy = proxy
        self.door = door
        self.server_ctx = server_ctx
        self.client_ctx = client_ctx
        self.media = media
        self.observer = observers  # call events and SIP on the wire go out to them
        self.loop = asyncio.get_running_loop()
        self.conns: set[StreamConn] = set()
        self.conn_seq = 0
        self.read_buffer = ReadBuffer()   # every socket's reads land here first (connections.py)
        self.by_ident: dict[int, StreamConn] = {}
        self.mesh = mesh   # sbc.workers > 1: the other workers (workers.py)
        self._servers: list[asyncio.AbstractServer] = []
        self._udp: UdpSocket | None = None
        self._dirty: list[StreamConn] = []
        self._pool: dict[tuple, StreamConn] = {}
        self._connecting: dict[tuple, list[tuple[bytes, Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._retiring: set[StreamConn] = set()
        self._udp_local = (config.pbx.listen.host, config.pbx.listen.port)
        self._maintenance: asyncio.TimerHandle | None = None
        self.stats = {"tls_handshakes": 0, "tls_failures": 0, "cert_reloads": 0, "conns_timed_out": 0}
        self._refusals = SourceLog(logging.WARNING)   # failed handshakes and refused peers
        self._timeouts = SourceLog(logging.INFO)      # connections closed for being slow or idle
        self.certificate = CertificateWatch(config.teams.certificate, config.teams.private_key,
                                            [server_ctx, client_ctx], on_reloaded=self._new_certificate)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        c = self.config
        tl = c.teams.listen
        pl = c.pbx.listen
        mesh = self.mesh
        if mesh is not None:
            mesh.handlers.update({"M": self.handed_over, "W": self.write_for_worker})
        if mesh is not None and not mesh.team.primary:
            if c.pbx.transport == "udp" and mesh.team.udp is not None:
                self._udp = UdpSocket(self, PBX, mesh.team.udp, read=False)
            log.info("worker %d: calls handed over by worker 0", mesh.team.index)
            self._maintenance = self.loop.call_later(MAINTENANCE_INTERVAL, self._maintain)
            return
        self._servers.append(await self.loop.create_server(
            lambda: TlsAcceptor(self), tl.host, tl.port, reuse_address=True))
        if c.pbx.transport == "udp":
            # bound before the workers forked (sbc.workers), else here
            sock = mesh.team.udp if mesh is not None and mesh.team.udp is not None else bind_udp(pl.host, pl.port)
            grow_receive_buffer(sock, "PBX UDP")
            self._udp = UdpSocket(self, PBX, sock)
        else:
            self._servers.append(await self.loop.create_server(
                lambda: StreamConn(self, PBX, "tcp"), pl.host, pl.port, reuse_address=True))
        log.info("listening: teams tls %s, pbx %s %s -> pbx trunk %s", tl, c.pbx.transport, pl, c.pbx.address)
        self._maintenance = self.loop.call_later(MAINTENANCE_INTERVAL, self._maintain)

    def is_listening(self) -> bool:
        """Every listener accepts (the TLS and PBX servers, the PBX UDP socket); worker 0's."""
        serving = bool(self._servers) and all(s.is_serving() for s in self._servers)
        if self.config.pbx.transport == "udp":
            udp = self._udp
            serving = serving and udp is not None and not udp.is_closing()
        return serving

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
        if self._udp is not None:
            self._udp.close()
        for s in self._servers:
            await s.wait_closed()

    # ------------------------------------------------------------------ proxy glue
    def deliver(self, data: bytes, src: Source) -> None:
        mesh = self.mesh
        if mesh is not None:
            call_id = call_id_of(data)
            if call_id is not None:
                owner = mesh.team.owner(call_id)
                if owner != mesh.team.index:  # another worker's call: the bytes go there
                    conn = src.conn
                    mesh.hand_over(owner, src.leg, src.transport, src.addr,
                                   conn.ident if conn is not None else 0,
                                   conn.local if conn is not None else self._udp_local, data)
                    return
        local = src.conn.local if src.conn is not None else self._udp_local
        self.observer.sip("in", src.leg, src.transport, local, src.addr, data, time.time())
        self.dispatch(self.proxy.receive(data, src, self.loop.time()))

    def handed_over(self, worker: int, leg: str, transport: str, addr: tuple, ident: int,
                    local: tuple, data: bytes) -> None:
        """A message of one of our calls that another worker read (workers.py "M")."""
        assert self.mesh is not None
        conn = RemoteConn(self.mesh, worker, ident, tuple(local)) if ident else None
        src = Source(leg, transport, (addr[0], addr[1]), conn)
        self.observer.sip("in", leg, transport, tuple(local), src.addr, data, time.time())
        self.dispatch(self.proxy.receive(data, src, self.loop.time()))

    def write_for_worker(self, worker: int, ident: int, data: bytes) -> None:
        """Another worker's answer on a connection we hold (workers.py "W")."""
        conn = self.by_ident.get(ident)
        if conn is None or not conn.write(data):
            log.info("connection %d gone, a message of worker %d dropped", ident, worker)

    def dirty(self, conn: StreamConn) -> None:
        """`conn` has writes queued: they leave together after this loop turn's callbacks."""
        if not self._dirty:
            self.loop.call_soon(self.flush)
        self._dirty.append(conn)

    def flush(self) -> None:
        conns, self._dirty = self._dirty, []
        for conn in conns:
            conn.flush()

    def _sent(self, data: bytes, leg: str, transport: str, local: tuple, remote: tuple) -> None:
        self.observer.sip("out", leg, transport, local, remote, data, time.time())

    def dispatch(self, outputs: list) -> None:
        """Carry out what the core returned (send, ask rtpengine) and publish its call events."""
        for s in outputs:
            if isinstance(s, MediaCall):
                self.loop.create_task(self._run_media(s))
                continue
            to = s.to
            if isinstance(to, Source):
                self._send_to_source(s.data, to)
            else:
                self._send_to_destination(s.data, to, s.token)
        events = self.proxy.next_events()
        if events:
            wall = time.time()
            for ev in events:
                self.observer.deliver(ev, wall)
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
        sent = time.time()
        try:
            if self.media is None:
                raise RuntimeError("no rtpengine configured")
            result: Any = await self.media.request(call.command)
        except Exception as e:  # NgError, NgTimeout, NoMediaAvailable...: the core decides
            e.__traceback__ = None  # kept as a result: no frame <-> traceback cycle per failure
            result = e
            log.warning("rtpengine %s failed: %s call_id=%s", call.command.get("command"), e,
                        call.command.get("call-id"))
        self.observer.media_command(str(call.command.get("call-id")), call.command, result, sent, time.time())
        if not isinstance(result, Exception):
            if call.command.get("command") == "delete":
                self.observer.deliver(parse_stats(str(call.command.get("call-id")), result), time.time())
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
            now = self.loop.time()
            why = _describe(e)
            self._refusals.note(peer[0], why, now, f"TLS handshake from {peer[0]}:{peer[1]} refused: {why}")
            self.door.handshake_failed(peer, now)
            raw.close()
            return
        if tls is None:
            raw.close()
            return
        problem = self.teams_identity_problem(tls.get_extra_info("peercert"))
        if problem:
            self.stats["tls_failures"] += 1
            now = self.loop.time()
            self._refusals.note(peer[0], problem, now, f"TLS peer {peer[0]}:{peer[1]} refused: {problem}")
            self.door.handshake_failed(peer, now)
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
        return teams_name_problem(dns_names(cert), self.config.teams.require_san)

    # ------------------------------------------------------------------ connection upkeep
    def _maintain(self) -> None:
        """Renew our own connections after connection_max_age (reference 2: at least hourly),
        and close retired ones once no transaction that used them is still running; the
        certificate watch ticks here too (new files, the daily expiry line)."""
        now = self.loop.time()
        self.certificate.tick(now)
        max_age = self.config.teams.connection_max_age
        for key, conn in list(self._pool.items()):
            if conn.leg == TEAMS and now - conn.born >= max_age:
                self.retire(conn, "older than teams.connection_max_age")
        for conn in list(self._retiring):
            conn.tokens = {t for t in conn.tokens if self.proxy.is_client_active(t)}
            if not conn.tokens or conn.closed:
                self._retiring.discard(conn)
                conn.close()
        sec = self.config.security
        for conn in list(self.conns):
            why = None if conn.closed or conn.src is None else conn.overdue(
                now, sec.header_timeout, sec.idle_timeout, self.proxy.t)
            if why:
                self.stats["conns_timed_out"] += 1
                ip, port = conn.src.addr  # type: ignore[union-attr]
                self._timeouts.note(ip, why, now, f"closing {conn.proto} connection from {ip}:{port} on the "
                                                  f"{conn.leg} leg: {why}")
                conn.close()
        self._refusals.flush(now)
        self._timeouts.flush(now)
        self._maintenance = self.loop.call_later(MAINTENANCE_INTERVAL, self._maintain)

    def retire(self, conn: StreamConn, why: str) -> None:
        """New requests get a new connection; this one closes when its transactions are done."""
        if conn.key is not None and self._pool.get(conn.key) is conn:
            del self._pool[conn.key]
        self._retiring.add(conn)
        log.info("renewing connection to %s:%d (%s)", conn.key[2] if conn.key else "?",
                 conn.key[3] if conn.key else 0, why)

    def reload_certificate(self, why: str) -> str | None:
        """SIGHUP and the admin API's POST /reload: see certwatch.CertificateWatch.reload.
        Worker 0 tells the other workers (sbc.workers), which reload the same files."""
        problem = self.certificate.reload(why)
        if self.mesh is not None and self.mesh.team.primary:
            self.mesh.broadcast(("R", why))
        return problem

    def _new_certificate(self) -> None:
        """Teams keeps the old certificate on a connection: our own connections to Teams are
        renewed once their transactions are done."""
        self.stats["cert_reloads"] += 1
        self.retire_all("new certificate")

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
        self.by_ident.pop(conn.ident, None)
        if conn.key is not None and self._pool.get(conn.key) is conn:
            del self._pool[conn.key]

    # ------------------------------------------------------------------ sending
    def _send_to_source(self, data: bytes, src: Source) -> None:
        if src.conn is not None:
            if not src.conn.write(data):
                log.info("connection to %s:%d gone, response dropped", *src.addr)
                return
            self._sent(data, src.leg, src.transport, src.conn.local, src.addr)
        elif self._udp is not None:
            self._udp.sendto(data, src.addr)
            self._sent(data, src.leg, "udp", self._udp_local, src.addr)

    def _send_to_destination(self, data: bytes, dest: Destination, token: Any) -> None:
        if dest.transport == "udp":
            if self._udp is not None:
                self._udp.sendto(data, (dest.host, dest.port))
                self._sent(data, dest.leg, "udp", self._udp_local, (dest.host, dest.port))
            return
        key = (dest.leg, dest.transport, dest.host, dest.port)
        conn = self._pool.get(key)
        if conn is not None and not conn.closed:
            conn.write(data)
            self._sent(data, dest.leg, conn.proto, conn.local, conn.src.addr)  # type: ignore[union-attr]
            if token is not None:
                carried(conn, token, self.proxy.is_client_active)
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
                carried(conn, token, self.proxy.is_client_active)

    async def _resolve(self, host: str, port: int) -> HostPort:
        infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host} does not resolve")
        addr = infos[0][4]
        return HostPort(addr[0], addr[1])


def _describe(e: BaseException) -> str:
    if isinstance(e, TeamsIdentityError):
        return str(e)
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake failed: {e.reason or e}"
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    if text:
        return text
    # asyncio raises a bare ConnectionResetError when the peer closes during the handshake
    if isinstance(e, (ConnectionError, EOFError)):
        return "the peer closed the connection before the TLS handshake completed"
    return type(e).__name__
