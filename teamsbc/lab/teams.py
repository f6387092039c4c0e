"""A simulated Microsoft Teams Direct Routing proxy (sip/sip2/sip3.pstnhub.microsoft.com), for
labs, `teamsbc demo` and the tests: real mutual TLS, Teams' connection model, Teams' way of
answering and calling. Messages are framed, parsed and built with teamsbc.sip.

What it does as Teams does (reference section 2, the shared Teams notes):
- Connections are one-way. The SBC's requests arrive on connections the SBC opened to Teams'
  listener, and are answered on the connection they came on; Teams' own requests go out on
  a connection Teams opens to the SBC (reopened when the SBC closed it). Both ends present a
  certificate (client certificate required), SNI is recorded.
- Header names in capitals; Teams' edge proxy (sip-du-a-us) on top of Record-Route; an
  api-du host as Contact (not a SIP listener: in-dialog requests follow the route set);
  Via sent-by an address of Teams' signalling range; SRTP offers and answers.
- CRLF keep-alives (RFC 5626 4.4.1) are answered with a CRLF.

    teams = TeamsProxy(cert, key, ca, sbc_fqdn="sbc.example.com", sbc_port=5061)
    port = await teams.listen(0)             # point the SBC's teams.resolve for sip/sip2/sip3 here
    teams.options_code = 503                 # answer to the SBC's OPTIONS (None: never answer)
    teams.answers.append(Answer(486))        # the next new INVITE from the SBC; default: 100, 180, 200
    call = await teams.invite(to="+441632960001")   # Teams calls the PBX through the SBC
    call.status, call.route, call.remote_target; await call.bye()
    rec = await teams.wait_for(lambda r: r.sip.method == "ACK")   # rec.sip, rec.raw, rec.conn
    await teams.close()

As callee: INVITE -> 100, 180, 200 + SDP (To-tag, Contact at an api-du host, Record-Route with
Teams' edge on top); re-INVITE -> 200 + SDP; BYE -> 200 (481 for an unknown dialog); CANCEL ->
200 (+ 487 for an unanswered INVITE); ACK -> recorded; OPTIONS -> `options_code`; others -> 200.
Every wait is bounded; a wait that times out raises NoMessage.
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
import ssl
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..sip.build import branch as make_branch
from ..sip.errors import ParseError
from ..sip.message import (KEEPALIVE_PING, Headers, Message, Request, Response, StreamFramer,
                           parse_message)
from .messages import new_tag, respond as response_to, sdp_offer, tag_of, teams_bytes, uri_of, with_sdp

__all__ = ["TeamsProxy", "Call", "Answer", "Connection", "Received", "NoMessage", "EDGE_RR",
           "EDGE_URI", "CALLER_CONTACT", "ANSWER_CONTACT"]

EDGE_URI = "sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr"
EDGE_RR = f"<{EDGE_URI}>"
CALLER_CONTACT = "<sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=0a1b2c3d;x-c=4e5f>"
ANSWER_CONTACT = "<sip:api-du-b-euwe.pstnhub.microsoft.com:443;x-i=9f8e7d6c;x-c=5b4a;transport=tls>"
VIA_SENT_BY = "52.114.132.46:5061"  # Teams' Via carries an address of its signalling range
MEDIA_ADDRESS = "52.113.0.10"       # and its SDP one of its media range
ALLOW = "INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY"
USER_AGENT = "Microsoft.PSTNHub.SIPProxy v.2024.1.1.1 i.USEA.1 (teamsbc lab)"
_ids = itertools.count(1)

Tap = Callable[[bool, bytes], None]   # (sent by this peer?, the message as on the wire)


class NoMessage(Exception):
    """A wait ended without the message it waited for."""


def teams_sdp(label: str) -> str:
    return sdp_offer(MEDIA_ADDRESS, 50000 + 2 * secrets.randbelow(1000), srtp=True, label=label)


@dataclass
class Answer:
    """How the peer answers a new INVITE from the SBC: final ``code`` (None: never answer,
    only ring, until CANCEL), a 180 first or not, optional Retry-After, ``ring`` seconds
    between the 180 and the final answer."""
    code: int | None = 200
    ringing: bool = True
    progress: bool = False   # a 183 with SDP after the 180 (Teams' media processor answering early)
    retry_after: int | None = None
    reason: str | None = None
    # the SDP of the 2xx (and of the 200 to later re-INVITEs in this dialog): a string, or a
    # function of the (re-)INVITE received; None: a made-up SRTP SDP
    sdp: "str | Callable[[Received], str] | None" = None
    ring: float = 0.0

    def sdp_for(self, req: "Received", kind: str) -> str:
        if self.sdp is None:
            return teams_sdp(kind)
        return self.sdp(req) if callable(self.sdp) else self.sdp


@dataclass
class Received:
    sip: Request | Response   # as teamsbc.sip parsed it
    raw: str                  # as it came on the wire
    conn: "Connection"
    at: float                 # loop time

    @property
    def direction(self) -> str:
        return self.conn.direction

    def __repr__(self) -> str:
        return f"<Received #{self.conn.id} {self.conn.direction} {self.raw.split(chr(13), 1)[0]!r}>"


class Connection:
    """One TLS connection; ``direction`` "inbound" (the SBC opened it) or "outbound" (we did)."""

    def __init__(self, peer: "TeamsProxy", reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 direction: str, sni: str | None = None):
        self.peer, self.reader, self.writer, self.direction = peer, reader, writer, direction
        self.id = next(_ids)
        self.sni = sni
        self.peercert = writer.get_extra_info("peercert") or {}
        sslobj = writer.get_extra_info("ssl_object")
        self.tls_version = sslobj.version() if sslobj else None
        self.cipher = sslobj.cipher()[0] if sslobj and sslobj.cipher() else None
        self.closed = asyncio.Event()
        self.error: BaseException | None = None
        sockname = writer.get_extra_info("sockname")
        self.local_port: int | None = sockname[1] if sockname else None
        self.pings = 0  # RFC 5626 double-CRLF keep-alives received (and answered)

    @property
    def peer_names(self) -> list[str]:
        return [v for k, v in self.peercert.get("subjectAltName", ()) if k == "DNS"]

    @property
    def usable(self) -> bool:
        return not self.closed.is_set() and not self.writer.is_closing()

    def send(self, msg: Message | str | bytes) -> None:
        """Send a message (written the way Teams writes it) or text as it is."""
        if not self.usable:
            raise ConnectionError(f"connection #{self.id} ({self.direction}) is closed")
        data = teams_bytes(msg) if isinstance(msg, Message) else msg.encode() if isinstance(msg, str) else msg
        self.peer.transcript.append(f"--> #{self.id} {self.direction}\n{data.decode(errors='replace')}")
        if self.peer.tap is not None:
            self.peer.tap(True, data)
        self.writer.write(data)

    async def run(self) -> None:
        """Read and frame (Content-Length) until EOF; answer CRLFCRLF pings with CRLF."""
        framer = StreamFramer()
        try:
            while data := await self.reader.read(65536):
                for frame in framer.feed(data):
                    if frame is KEEPALIVE_PING:
                        if self.usable:
                            self.writer.write(b"\r\n")  # RFC 5626 pong
                            self.pings += 1
                            await self.peer._notify()
                        continue
                    await self.peer._on_frame(self, frame)  # type: ignore[arg-type]
        except (ConnectionError, ssl.SSLError, OSError, ParseError) as e:
            self.error = e
        finally:
            self.closed.set()
            self.writer.close()
            self.peer.transcript.append(f"=== #{self.id} {self.direction} closed"
                                        + (f": {self.error!r}" if self.error else ""))
            await self.peer._notify()

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (asyncio.TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass

    def __repr__(self) -> str:
        return f"<Connection #{self.id} {self.direction} sni={self.sni} closed={self.closed.is_set()}>"


@dataclass
class Call:
    """A dialog of the peer. role "uac": the peer called; "uas": the SBC called the peer."""
    peer: "TeamsProxy"
    role: str
    call_id: str
    local: str          # our From (in our requests), with our tag
    remote: str         # their address, with their tag once known
    local_tag: str
    cseq: int = 1
    invite: Received | None = None      # the INVITE that opened the dialog (received, or sent: "uac")
    route: list[str] = field(default_factory=list)
    remote_target: str = ""
    provisionals: list[Received] = field(default_factory=list)
    final: Received | None = None
    answer: Answer | None = None
    ended: bool = False

    @property
    def remote_tag(self) -> str | None:
        return tag_of(self.remote)

    @property
    def status(self) -> int | None:
        return self.final.sip.status if self.final and isinstance(self.final.sip, Response) else None

    async def request(self, method: str, *, body: str = "", extra: Iterable[str | tuple[str, str]] = (),
                      timeout: float = 10.0) -> Received:
        """Send an in-dialog request along the route set (new CSeq, new branch) on the peer's
        own connection; wait for its final response. ``extra``: more headers, as (name, value)
        or as a line "REFER-TO: <...>" (Teams writes header names in upper case)."""
        self.cseq += 1
        headers = [(n.lower(), v) for n, v in (h if isinstance(h, tuple) else
                                                tuple(p.strip() for p in h.split(":", 1)) for h in extra)]
        req = self.peer.build_request(
            method, self.remote_target, call_id=self.call_id, from_=self.local, to=self.remote,
            cseq=self.cseq, route=self.route, body=body, extra=headers,  # type: ignore[arg-type]
            contact=CALLER_CONTACT if self.role == "uac" else ANSWER_CONTACT)
        return await self.peer._transact(req, self.call_id, self.cseq, method, timeout)

    async def bye(self, timeout: float = 10.0) -> Received:
        final = await self.request("BYE", timeout=timeout)
        self.ended = True
        return final

    async def reinvite(self, sdp: str | None = None, timeout: float = 10.0) -> Received:
        final = await self.request("INVITE", body=sdp or teams_sdp("reinvite"), timeout=timeout)
        if isinstance(final.sip, Response) and 200 <= final.sip.status < 300:
            self.peer._send_ack(self, self.cseq)
        return final


class TeamsProxy:
    """``certificate``/``private_key``: Teams' certificate (a lab one, issued by the CA the SBC
    trusts in teams.trusted_ca); ``trusted_ca``: what the SBC's certificate is checked against.
    ``client_certificate``/``client_key`` replace Teams' certificate on the peer's OWN
    connections (e.g. one from an unrelated CA); ``tls_max`` caps the TLS version of both
    directions; ``tap`` sees every message sent and received, as on the wire."""

    received_type: type[Received] = Received

    def __init__(self, certificate: Path, private_key: Path, trusted_ca: Path, *, sbc_fqdn: str,
                 sbc_port: int, sbc_host: str = "127.0.0.1", client_certificate: Path | None = None,
                 client_key: Path | None = None, tls_max: ssl.TLSVersion | None = None,
                 tap: Tap | None = None):
        self.certificate, self.private_key, self.trusted_ca = certificate, private_key, trusted_ca
        self.sbc_host, self.sbc_port, self.sbc_fqdn = sbc_host, sbc_port, sbc_fqdn
        self.tls_max = tls_max
        self.tap = tap
        self.received: list[Received] = []
        self.connections: list[Connection] = []
        self.transcript: list[str] = []
        self.calls: dict[str, Call] = {}
        self.answers: list[Answer] = []
        self.default_answer = Answer()
        self.sni_seen: list[str | None] = []
        self.options_code: int | None = 200  # answer to OPTIONS from the SBC; None = no answer
        self._servers: dict[int, asyncio.AbstractServer] = {}
        self._sni: dict[int, str | None] = {}
        self._cond = asyncio.Condition()
        self._out: Connection | None = None
        self._out_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._pending: dict[str, tuple[Connection, Request]] = {}  # unanswered INVITEs

        self.server_ctx = self._server_context(certificate, private_key)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls_max is not None:
            self.client_ctx.maximum_version = tls_max
        self.client_ctx.load_cert_chain(str(client_certificate or certificate), str(client_key or private_key))
        self.client_ctx.load_verify_locations(cafile=str(trusted_ca))
        self.client_ctx.check_hostname = True

    @property
    def ports(self) -> list[int]:
        """The ports "Teams" listens on."""
        return list(self._servers)

    @property
    def out(self) -> Connection | None:
        """The peer's own connection to the SBC, when one is open (see `connect`)."""
        return self._out

    # ------------------------------------------------------------------ connections
    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self._sni[id(sslobj)] = name
        self.sni_seen.append(name)

    def _server_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_max is not None:
            ctx.maximum_version = self.tls_max
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(self.trusted_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = self._on_sni
        return ctx

    async def listen(self, port: int = 0, host: str = "127.0.0.1", *, cert: Path | None = None,
                     key: Path | None = None) -> int:
        """A "Teams" TLS listener (client certificate required); returns its port. Several
        listeners may run (one per Teams proxy); ``cert``/``key`` replace Teams' certificate
        on this one."""
        ctx = self._server_context(cert, key) if cert is not None and key is not None else self.server_ctx
        server = await asyncio.start_server(self._accept, host, port, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        self._servers[port] = server
        return port

    async def stop_listening(self, port: int, *, close_connections: bool = True) -> None:
        """Close the listener on ``port`` (connections to it are refused again) and, by default,
        the connections it accepted."""
        server = self._servers.pop(port)
        server.close()
        if close_connections:
            await asyncio.gather(*(c.close() for c in self.connections
                                   if c.direction == "inbound" and c.local_port == port))
        try:  # from Python 3.12 this also waits for the accepted connections: bounded
            await asyncio.wait_for(server.wait_closed(), 2)
        except asyncio.TimeoutError:
            pass

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        sni = self._sni.pop(id(writer.get_extra_info("ssl_object")), None)
        conn = self._add_conn(reader, writer, "inbound", sni)
        try:
            await conn.run()
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    def _add_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str,
                  sni: str | None = None) -> Connection:
        conn = Connection(self, reader, writer, direction, sni)
        self.connections.append(conn)
        self.transcript.append(f"=== #{conn.id} {direction} opened sni={sni} peer={conn.peer_names}")
        return conn

    async def connect(self, timeout: float = 10.0) -> Connection:
        """The peer's own connection to the SBC, (re)opened when missing or closed."""
        async with self._out_lock:
            if self._out is None or not self._out.usable:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.sbc_host, self.sbc_port, ssl=self.client_ctx,
                    server_hostname=self.sbc_fqdn), timeout)
                self._out = self._add_conn(reader, writer, "outbound")
                task = asyncio.get_running_loop().create_task(self._out.run())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return self._out

    async def close(self) -> None:
        servers = list(self._servers.values())
        for server in servers:
            server.close()
        await asyncio.gather(*(c.close() for c in self.connections))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in servers:
            await server.wait_closed()

    # ------------------------------------------------------------------ waiting
    def find(self, predicate: Callable[[Received], object]) -> list[Received]:
        return [r for r in self.received if predicate(r)]

    async def wait_for(self, predicate: Callable[[Received], object], timeout: float = 10.0,
                       what: str = "a message") -> Received:
        """The first recorded message matching ``predicate`` (already recorded ones count)."""
        async def found() -> Received:
            async with self._cond:
                await self._cond.wait_for(lambda: self.find(predicate))
                return self.find(predicate)[0]
        try:
            return await asyncio.wait_for(found(), timeout)
        except asyncio.TimeoutError:
            raise NoMessage(f"{type(self).__name__}: no {what} within {timeout}s") from None

    def describe(self, tail: int = 12000) -> str:
        return (f"--- {type(self).__name__} transcript ---\n" + "\n".join(self.transcript))[-tail:]

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ receiving
    async def _on_frame(self, conn: Connection, frame: bytes) -> None:
        text = frame.decode(errors="replace")
        try:
            msg = parse_message(frame, stream=True)
        except ParseError as e:   # recorded for the transcript; Teams would not answer it either
            self.transcript.append(f"<-- #{conn.id} {conn.direction} (does not parse: {e.reason})\n{text}")
            return
        self.transcript.append(f"<-- #{conn.id} {conn.direction}\n{text}")
        if self.tap is not None:
            self.tap(False, frame)
        rec = self.received_type(msg, text, conn, asyncio.get_running_loop().time())
        async with self._cond:
            self.received.append(rec)
            self._cond.notify_all()
        if isinstance(msg, Request):
            self._serve(conn, rec)

    def _serve(self, conn: Connection, rec: Received) -> None:
        """Teams as UAS: every response goes back on the connection the request came on."""
        req = rec.sip
        assert isinstance(req, Request)
        method, call = req.method, self.calls.get(req.call_id)
        to_tag = req.to_addr.tag
        if method == "ACK":
            return
        if method == "INVITE" and to_tag is None:
            self._incoming_invite(conn, rec)
        elif method == "CANCEL":
            self.respond(conn, req, 200)
            pending = self._pending.pop(req.call_id, None)
            if pending is not None:
                self.respond(pending[0], pending[1], 487, to_tag=call.local_tag if call else None)
        elif method in ("BYE", "INVITE") or (to_tag is not None and method != "OPTIONS"):
            if call is None or to_tag != call.local_tag or req.from_addr.tag != call.remote_tag:
                self.respond(conn, req, 481)
            elif method == "INVITE":
                body = call.answer.sdp_for(rec, "reanswer") if call.answer else teams_sdp("reanswer")
                self.respond(conn, req, 200, contact=True, body=body)
            else:
                self.respond(conn, req, 200)
                if method == "BYE":
                    call.ended = True
        elif method == "OPTIONS" and to_tag is None:
            if self.options_code is not None:
                self.respond(conn, req, self.options_code, extra=[("allow", ALLOW)])
        else:
            self.respond(conn, req, 200, extra=[("allow", ALLOW)])

    def _incoming_invite(self, conn: Connection, rec: Received) -> None:
        req = rec.sip
        assert isinstance(req, Request)
        answer = self.answers.pop(0) if self.answers else self.default_answer
        tag = new_tag()
        call = Call(self, "uas", req.call_id, local=f"{req.headers.get('to')};tag={tag}",
                    remote=req.headers.get("from") or "", local_tag=tag, invite=rec,
                    route=req.headers.get_all("record-route"),
                    remote_target=uri_of(req.headers.get("contact") or ""), answer=answer)
        self.calls[call.call_id] = call
        self.respond(conn, req, 100)
        if answer.ringing:
            self.respond(conn, req, 180, to_tag=tag, contact=True, record_route=True)
        if answer.progress:
            self.respond(conn, req, 183, "Session Progress", to_tag=tag, contact=True, record_route=True,
                         body=answer.sdp_for(rec, "early"))
        if answer.code is None:
            self._pending[call.call_id] = (conn, req)
            return
        code = answer.code

        def final() -> None:
            extra = [("retry-after", str(answer.retry_after))] if answer.retry_after is not None else []
            ok = 200 <= code < 300
            self.respond(conn, req, code, answer.reason, to_tag=tag, contact=ok, record_route=ok,
                         body=answer.sdp_for(rec, "answer") if ok else "", extra=extra)
        if answer.ring <= 0:
            final()
            return
        self._pending[call.call_id] = (conn, req)   # ringing: a CANCEL now gets the 487

        async def after_ringing() -> None:
            await asyncio.sleep(answer.ring)
            if self._pending.pop(call.call_id, None) is not None and conn.usable:
                final()
        task = asyncio.get_running_loop().create_task(after_ringing())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def respond(self, conn: Connection, req: Request, code: int, reason: str | None = None, *,
                to_tag: str | None = None, contact: bool = False, record_route: bool = False,
                body: str = "", extra: Iterable[tuple[str, str]] = ()) -> None:
        """A response on ``conn``: with Teams' edge on top of the request's Record-Route, and
        Teams' answering Contact, when asked."""
        headers: list[tuple[str, str]] = []
        if record_route:
            headers += [("record-route", EDGE_RR)] + [("record-route", v) for v in req.headers.get_all("record-route")]
        if contact:
            headers.append(("contact", ANSWER_CONTACT))
        headers += [*extra, ("server", USER_AGENT)]
        conn.send(response_to(req, code, reason, to_tag=to_tag, extra=headers, body=body))

    # ------------------------------------------------------------------ sending (UAC)
    def build_request(self, method: str, ruri: str, *, call_id: str, from_: str, to: str, cseq: int,
                      route: Iterable[str] = (), contact: str | None = CALLER_CONTACT,
                      body: str = "", branch: str | None = None, cseq_method: str | None = None,
                      extra: Iterable[tuple[str, str]] = ()) -> Request:
        """A request as Teams writes one: its header order (From, To, CSeq, Call-ID,
        Max-Forwards, Via), the route set as Route, a Contact and User-Agent but on ACK."""
        h = Headers()
        h.add("from", from_)
        h.add("to", to)
        h.add("cseq", f"{cseq} {cseq_method or method}")
        h.add("call-id", call_id)
        h.add("max-forwards", "70")
        h.add("via", f"SIP/2.0/TLS {VIA_SENT_BY};branch={branch or make_branch(secrets.token_hex(8))}")
        for r in route:
            h.add("route", r)
        if contact and method != "ACK":
            h.add("contact", contact)
        for name, value in extra:
            h.add(name, value)
        if method != "ACK":
            h.add("user-agent", USER_AGENT)
        return with_sdp(Request(method, ruri, h), body)  # type: ignore[return-value]

    async def _transact(self, msg: Message | str, call_id: str, cseq: int, method: str,
                        timeout: float) -> Received:
        (await self.connect()).send(msg)
        return await self.wait_for(
            lambda r: _is_final(r, call_id, cseq, method), timeout,
            what=f"final response to {method} (CSeq {cseq}) call_id={call_id}")

    def options_request(self) -> tuple[str, str]:
        """(text, Call-ID) of an out-of-dialog OPTIONS to sip:SBC_FQDN:PORT, as Teams sends it."""
        call_id = str(uuid.uuid4())
        req = self.build_request(
            "OPTIONS", f"sip:{self.sbc_fqdn}:{self.sbc_port}", call_id=call_id,
            from_=f"<sip:sip.pstnhub.microsoft.com:5061>;tag={new_tag()}",
            to=f"<sip:{self.sbc_fqdn}:{self.sbc_port}>", cseq=1,
            contact="<sip:sip.pstnhub.microsoft.com:5061;transport=tls>")
        return teams_bytes(req).decode(), call_id

    async def options(self, timeout: float = 10.0) -> Received:
        """Send options_request() on the peer's own connection; returns its final response."""
        text, call_id = self.options_request()
        return await self._transact(text, call_id, 1, "OPTIONS", timeout)

    async def invite(self, to: str = "+14255550100", from_: str = "+12065550123", *,
                     sdp: str | None = None, extra: Iterable[tuple[str, str]] = (),
                     timeout: float = 10.0) -> Call:
        """Call the PBX through the SBC like Teams does; waits for the final response and ACKs it
        (2xx: along the route set to the Contact; other: hop-by-hop)."""
        call_id = str(uuid.uuid4())
        tag = new_tag()
        call = Call(self, "uac", call_id,
                    local=f"<sip:{from_}@sip.pstnhub.microsoft.com:5061;user=phone>;tag={tag}",
                    remote=f"<sip:{to}@{self.sbc_fqdn};user=phone>", local_tag=tag)
        self.calls[call_id] = call
        branch = make_branch(secrets.token_hex(8))
        ruri = f"sip:{to}@{self.sbc_fqdn}:{self.sbc_port};user=phone;transport=tls"
        req = self.build_request(
            "INVITE", ruri, call_id=call_id, from_=call.local, to=call.remote, cseq=1, branch=branch,
            body=sdp or teams_sdp("offer"),
            extra=[("record-route", EDGE_RR), ("supported", "timer"), ("session-expires", "3600"),
                   ("min-se", "300"), ("allow", ALLOW), *extra])
        call.invite = self.received_type(req, teams_bytes(req).decode(), await self.connect(),
                                         asyncio.get_running_loop().time())
        call.final = await self._transact(req, call_id, 1, "INVITE", timeout)
        call.provisionals = [r for r in self.received
                             if _is_response(r, call_id, 1, "INVITE") and r.sip.status < 200]  # type: ignore[union-attr]
        resp = call.final.sip
        assert isinstance(resp, Response)
        call.remote = resp.headers.get("to") or call.remote
        if 200 <= resp.status < 300:
            rr = [v for v in reversed(resp.headers.get_all("record-route")) if uri_of(v) != EDGE_URI]
            call.route, call.remote_target = rr, uri_of(resp.headers.get("contact") or "")
            self._send_ack(call, 1)
        else:  # non-2xx: ACK in the INVITE transaction (same branch, same R-URI, no Route)
            (await self.connect()).send(self.build_request(
                "ACK", ruri, call_id=call_id, from_=call.local, to=call.remote, cseq=1, branch=branch))
            call.ended = True
        return call

    def _send_ack(self, call: Call, cseq: int) -> None:
        ack = self.build_request("ACK", call.remote_target, call_id=call.call_id, from_=call.local,
                                 to=call.remote, cseq=cseq, route=call.route)
        if self._out is None or not self._out.usable:
            raise ConnectionError("outbound connection gone before the ACK")
        self._out.send(ack)


def _is_response(r: Received, call_id: str, cseq: int, method: str) -> bool:
    m = r.sip
    return isinstance(m, Response) and m.call_id == call_id and tuple(m.cseq) == (cseq, method)


def _is_final(r: Received, call_id: str, cseq: int, method: str) -> bool:
    return _is_response(r, call_id, cseq, method) and r.sip.status >= 200  # type: ignore[union-attr]
