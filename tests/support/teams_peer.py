"""A stand-in for Microsoft Teams Direct Routing, in Python (asyncio + ssl), for e2e tests.

Why not sipp behind stunnel: sipp answers a request on the call's FIRST socket, not on the
connection the request came on, so once the SBC restarts (its TLS connections die) a Teams-side
sipp can no longer answer. Real Teams (reference section 2) opens its own TLS connections to the
SBC for ITS requests and answers the SBC's requests on the connection they arrived on (the
connections the SBC opened to Teams' port 5061). This peer does exactly that, with real mutual
TLS and the test PKI. It does not use teamsbc's SIP code (it must be an independent check):
messages are framed here by Content-Length and parsed with tests.support.sipp.parse_sip_message.

    peer = TeamsPeer(pki, sbc_port=sbc.teams_port)   # sbc_host="127.0.0.1", sbc_fqdn=pki.sbc_fqdn
    await peer.listen(port)        # "Teams" TLS listener (Teams certificate, client cert REQUIRED);
                                   # point the SBC's teams.resolve for sip/sip2/sip3/sip-du-a-us here
    await peer.listen(port2, cert=chain, key=key)   # more listeners (one per proxy), own certificate
    await peer.stop_listening(port2)                # that listener refuses connections again; its
                                                    # accepted connections are closed
    peer.options_code = 503        # answer to OPTIONS from the SBC (None: never answer); default 200
    rec = await peer.wait_for(lambda r: r.msg.method == "ACK", timeout=10)
    rec.msg        # tests.support.sipp.SipMessage (start_line, headers, header(), values(), ...)
    rec.conn       # the Connection it came on: .direction "inbound" (the SBC opened it) or
                   # "outbound" (the peer opened it), .id, .sni, .peercert, .peer_names, .tls_version,
                   # .local_port (for inbound: the listener port it was accepted on)
    peer.received  # every Received, in order; peer.connections: every Connection ever made

    # Teams as callee (requests from the SBC, answered on the connection they came on):
    # INVITE -> 100, 180, 200 + SDP (To-tag, CONTACT at an api-du host, RECORD-ROUTE = Teams'
    # edge on top of the INVITE's); re-INVITE -> 200 + SDP; BYE -> 200 (481 for an unknown
    # dialog); CANCEL -> 200 (+ 487 for an unanswered INVITE); ACK -> recorded; others -> 200.
    peer.answers.append(Answer(503, ringing=False, retry_after=30))   # next new INVITE only
    peer.answers.append(Answer(progress=True))   # 180, then 183 with SDP, then 200
    peer.default_answer = Answer(None)                                # never answer (ring only)
    peer.answers.append(Answer(sdp=lambda invite: "v=0..."))  # own SDP in the 200 (a str or a
                                   # function of the INVITE or re-INVITE), also used for re-INVITEs
    call = peer.calls[call_id]     # Call for every dialog (role "uas" for calls from the SBC)

    # Teams as caller (on the peer's own connection, reopened if the SBC closed it):
    call = await peer.invite(to="+14255550100", from_="+12065550123")  # waits for the final
    call.status, call.final, call.provisionals, call.route, call.remote_target
    await call.bye()               # -> the final Received (200); call.reinvite(sdp) likewise
    await call.request("REFER", extra=["REFER-TO: <sip:...>"])   # any in-dialog request
    resp = await peer.options()    # out-of-dialog OPTIONS to sip:SBC_FQDN:PORT
    text, call_id = peer.options_request()   # the same, to send by hand: conn.send(text)
    conn = await peer.connect()    # the outbound connection (raises ssl.SSLError on a bad handshake)

    peer.describe()                # transcript for failure messages
    await peer.close()

Header names in everything the peer sends are UPPER CASE, like Teams. Every wait is bounded;
a wait that times out raises AssertionError with the transcript.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .sipp import REASONS, SipMessage, parse_sip_message

__all__ = ["TeamsPeer", "Call", "Answer", "Connection", "Received", "EDGE_RR", "EDGE_URI"]

EDGE_URI = "sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr"
EDGE_RR = f"<{EDGE_URI}>"
CALLER_CONTACT = "<sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=0a1b2c3d;x-c=4e5f>"
ANSWER_CONTACT = "<sip:api-du-b-euwe.pstnhub.microsoft.com:443;x-i=9f8e7d6c;x-c=5b4a;transport=tls>"
VIA_SENT_BY = "52.114.132.46:5061"  # Teams' Via carries an address of its signalling range
ALLOW = "INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY"
USER_AGENT = "Microsoft.PSTNHub.SIPProxy v.2024.1.1.1 i.USEA.1 (teamsbc test peer)"
_REASONS = {**REASONS, 100: "Trying", 180: "Ringing", 200: "OK"}
_ids = itertools.count(1)


def _sdp(kind: str) -> str:
    sess = secrets.randbelow(10**9)
    return "\r\n".join([
        "v=0", f"o=- {sess} 0 IN IP4 52.113.0.10", "s=session", "c=IN IP4 52.113.0.10", "t=0 0",
        f"m=audio {50000 + 2 * secrets.randbelow(1000)} RTP/SAVP 0 8 101",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + secrets.token_urlsafe(30)[:40] + "|2^31",
        "a=rtcp-mux", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv",
        f"a=label:{kind}", ""])


def uri_of(value: str) -> str:
    """The URI of a name-addr or addr-spec header value."""
    if "<" in value:
        return value[value.index("<") + 1: value.index(">")]
    return value.split(";", 1)[0].strip()


def tag_of(value: str | None) -> str | None:
    if not value:
        return None
    params = value[value.index(">") + 1:] if ">" in value else value
    m = re.search(r";\s*tag=([^;\s]+)", params, re.I)
    return m.group(1) if m else None


@dataclass
class Answer:
    """How the peer answers a new INVITE from the SBC: final ``code`` (None: never answer,
    only ring, until CANCEL), a 180 first or not, optional Retry-After."""
    code: int | None = 200
    ringing: bool = True
    progress: bool = False   # a 183 with SDP after the 180 (Teams' media processor answering early)
    retry_after: int | None = None
    reason: str | None = None
    # the SDP of the 2xx (and of the 200 to later re-INVITEs in this dialog): a string, or a
    # function of the (re-)INVITE received; None: a made-up SRTP SDP
    sdp: "str | Callable[[SipMessage], str] | None" = None

    def sdp_for(self, req: SipMessage, kind: str) -> str:
        if self.sdp is None:
            return _sdp(kind)
        return self.sdp(req) if callable(self.sdp) else self.sdp


@dataclass
class Received:
    msg: SipMessage
    conn: "Connection"
    at: float  # loop time

    @property
    def direction(self) -> str:
        return self.conn.direction

    def __repr__(self) -> str:
        return f"<Received #{self.conn.id} {self.conn.direction} {self.msg.start_line!r}>"


class Connection:
    """One TLS connection; ``direction`` "inbound" (the SBC opened it) or "outbound" (we did)."""

    def __init__(self, peer: "TeamsPeer", reader, writer, direction: str, sni: str | None = None):
        self.peer, self.reader, self.writer, self.direction = peer, reader, writer, direction
        self.id = next(_ids)
        self.sni = sni
        self.peercert = writer.get_extra_info("peercert") or {}
        sslobj = writer.get_extra_info("ssl_object")
        self.tls_version = sslobj.version() if sslobj else None
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

    def send(self, text: str) -> None:
        if not self.usable:
            raise ConnectionError(f"connection #{self.id} ({self.direction}) is closed")
        self.peer.transcript.append(f"--> #{self.id} {self.direction}\n{text}")
        self.writer.write(text.encode())

    async def run(self) -> None:
        """Read and frame (Content-Length) until EOF; answer CRLFCRLF pings with CRLF."""
        buf = b""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                buf += data
                while True:
                    rest = buf.lstrip(b"\r\n")
                    if b"\r\n\r\n" in buf[: len(buf) - len(rest)] and self.usable:
                        self.writer.write(b"\r\n")  # RFC 5626 pong
                        self.pings += 1
                        async with self.peer._cond:
                            self.peer._cond.notify_all()
                    buf = rest
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", buf[:end])
                    total = end + 4 + (int(m.group(1)) if m else 0)
                    if len(buf) < total:
                        break
                    frame, buf = buf[:total], buf[total:]
                    await self.peer._on_message(self, frame.decode(errors="replace"))
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self.error = e
        finally:
            self.closed.set()
            self.writer.close()
            self.peer.transcript.append(f"=== #{self.id} {self.direction} closed"
                                        + (f": {self.error!r}" if self.error else ""))
            async with self.peer._cond:
                self.peer._cond.notify_all()

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
    peer: "TeamsPeer"
    role: str
    call_id: str
    local: str          # our From (in our requests), with our tag
    remote: str         # their address, with their tag once known
    local_tag: str
    cseq: int = 1
    invite: SipMessage | None = None
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
        return self.final.msg.status if self.final else None

    async def request(self, method: str, *, body: str = "", extra: Iterable[str] = (),
                      timeout: float = 10.0) -> Received:
        """Send an in-dialog request along the route set (new CSeq, new branch) on the peer's
        own connection; wait for its final response. ``extra``: more header lines (e.g.
        "REFER-TO: <...>")."""
        self.cseq += 1
        text = self.peer._build_request(
            method, self.remote_target, call_id=self.call_id, from_=self.local, to=self.remote,
            cseq=self.cseq, route=self.route, body=body, extra=extra,
            contact=CALLER_CONTACT if self.role == "uac" else ANSWER_CONTACT)
        return await self.peer._transact(text, self.call_id, self.cseq, method, timeout)

    async def bye(self, timeout: float = 10.0) -> Received:
        final = await self.request("BYE", timeout=timeout)
        self.ended = True
        return final

    async def reinvite(self, sdp: str | None = None, timeout: float = 10.0) -> Received:
        final = await self.request("INVITE", body=sdp or _sdp("reinvite"), timeout=timeout)
        if final.msg.status and 200 <= final.msg.status < 300:
            self.peer._send_ack(self, final.msg, self.cseq)
        return final


class TeamsPeer:
    def __init__(self, pki, *, sbc_host: str = "127.0.0.1", sbc_port: int, sbc_fqdn: str | None = None,
                 cert: Path | None = None, key: Path | None = None,
                 tls_max: ssl.TLSVersion | None = None):
        """``cert``/``key`` replace the Teams certificate on the peer's OWN connections (e.g.
        pki.rogue_fullchain/pki.rogue_key); ``tls_max`` caps their TLS version."""
        self.pki = pki
        self.sbc_host, self.sbc_port = sbc_host, sbc_port
        self.sbc_fqdn = sbc_fqdn or pki.sbc_fqdn
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
        self._server: asyncio.AbstractServer | None = None
        self._out: Connection | None = None
        self._out_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._pending: dict[str, tuple[Connection, SipMessage]] = {}  # unanswered INVITEs

        self.server_ctx = self._server_context(pki.teams_fullchain, pki.teams_key)

        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if tls_max is not None:
            self.client_ctx.maximum_version = tls_max
        self.client_ctx.load_cert_chain(str(cert or pki.teams_fullchain), str(key or pki.teams_key))
        self.client_ctx.load_verify_locations(cafile=str(pki.ca_cert))
        self.client_ctx.check_hostname = True

    # ------------------------------------------------------------------ connections
    def _on_sni(self, sslobj, name, ctx) -> None:
        self._sni[id(sslobj)] = name
        self.sni_seen.append(name)

    def _server_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(self.pki.ca_cert))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = self._on_sni
        return ctx

    async def listen(self, port: int, host: str = "127.0.0.1", *, cert: Path | None = None,
                     key: Path | None = None) -> None:
        """A "Teams" TLS listener (client certificate required). Several listeners may run
        (one per Teams proxy); ``cert``/``key`` replace the Teams certificate on this one."""
        ctx = self._server_context(cert, key) if cert is not None else self.server_ctx
        self._server = await asyncio.start_server(self._accept, host, port, ssl=ctx)
        self._servers[port] = self._server

    async def stop_listening(self, port: int, *, close_connections: bool = True) -> None:
        """Close the listener on ``port`` (connections to it are refused again) and, by default,
        the connections it accepted."""
        server = self._servers.pop(port)
        server.close()
        if self._server is server:
            self._server = None
        if close_connections:
            await asyncio.gather(*(c.close() for c in self.connections
                                   if c.direction == "inbound" and c.local_port == port))
        try:  # from Python 3.12 this also waits for the accepted connections: bounded
            await asyncio.wait_for(server.wait_closed(), 2)
        except asyncio.TimeoutError:
            pass

    async def _accept(self, reader, writer) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        sni = self._sni.pop(id(writer.get_extra_info("ssl_object")), None)
        conn = self._add_conn(reader, writer, "inbound", sni)
        try:
            await conn.run()
        finally:
            self._tasks.discard(task)

    def _add_conn(self, reader, writer, direction, sni=None) -> Connection:
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
        servers = set(self._servers.values()) | ({self._server} if self._server is not None else set())
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
            raise AssertionError(f"TeamsPeer: no {what} within {timeout}s\n{self.describe()}") from None

    def describe(self, tail: int = 12000) -> str:
        return ("--- TeamsPeer transcript ---\n" + "\n".join(self.transcript))[-tail:]

    # ------------------------------------------------------------------ receiving
    async def _on_message(self, conn: Connection, text: str) -> None:
        start, headers, body = parse_sip_message(text)
        msg = SipMessage(start, headers, body, text, direction="received", transport="TLS")
        self.transcript.append(f"<-- #{conn.id} {conn.direction}\n{text}")
        async with self._cond:
            self.received.append(Received(msg, conn, asyncio.get_running_loop().time()))
            self._cond.notify_all()
        if msg.is_request:
            self._serve(conn, msg)

    def _serve(self, conn: Connection, req: SipMessage) -> None:
        """Teams as UAS: every response goes back on the connection the request came on."""
        method, call = req.method, self.calls.get(req.call_id or "")
        to_tag = tag_of(req.header("to"))
        if method == "ACK":
            return
        if method == "INVITE" and to_tag is None:
            self._incoming_invite(conn, req)
        elif method == "CANCEL":
            self.respond(conn, req, 200)
            pending = self._pending.pop(req.call_id or "", None)
            if pending is not None:
                self.respond(pending[0], pending[1], 487, to_tag=call.local_tag if call else None)
        elif method in ("BYE", "INVITE") or (to_tag is not None and method != "OPTIONS"):
            if call is None or to_tag != call.local_tag or tag_of(req.header("from")) != call.remote_tag:
                self.respond(conn, req, 481)
            elif method == "INVITE":
                body = call.answer.sdp_for(req, "reanswer") if call.answer else _sdp("reanswer")
                self.respond(conn, req, 200, contact=True, body=body)
            else:
                self.respond(conn, req, 200)
                if method == "BYE":
                    call.ended = True
        elif method == "OPTIONS" and to_tag is None:
            if self.options_code is not None:
                self.respond(conn, req, self.options_code, extra=[f"ALLOW: {ALLOW}"])
        else:
            self.respond(conn, req, 200, extra=[f"ALLOW: {ALLOW}"])

    def _incoming_invite(self, conn: Connection, req: SipMessage) -> None:
        answer = self.answers.pop(0) if self.answers else self.default_answer
        tag = secrets.token_hex(6)
        call = Call(self, "uas", req.call_id or "", local=f"{req.header('to')};tag={tag}",
                    remote=req.header("from") or "", local_tag=tag, invite=req,
                    route=req.values("record-route"), remote_target=uri_of(req.header("contact") or ""),
                    answer=answer)
        self.calls[call.call_id] = call
        self.respond(conn, req, 100)
        if answer.ringing:
            self.respond(conn, req, 180, to_tag=tag, contact=True, record_route=True)
        if answer.progress:
            self.respond(conn, req, 183, "Session Progress", to_tag=tag, contact=True, record_route=True,
                         body=answer.sdp_for(req, "early"))
        if answer.code is None:
            self._pending[call.call_id] = (conn, req)
            return
        extra = [f"RETRY-AFTER: {answer.retry_after}"] if answer.retry_after is not None else []
        ok = 200 <= answer.code < 300
        self.respond(conn, req, answer.code, answer.reason, to_tag=tag, contact=ok,
                     record_route=ok, body=answer.sdp_for(req, "answer") if ok else "", extra=extra)

    def respond(self, conn: Connection, req: SipMessage, code: int, reason: str | None = None, *,
                to_tag: str | None = None, contact: bool = False, record_route: bool = False,
                body: str = "", extra: Iterable[str] = ()) -> None:
        to = req.header("to") or ""
        if to_tag and tag_of(to) is None:
            to = f"{to};tag={to_tag}"
        lines = [f"SIP/2.0 {code} {reason or _REASONS.get(code, 'Unknown')}"]
        lines += [f"VIA: {v}" for v in req.headers.get("via", [])]
        lines += [f"FROM: {req.header('from')}", f"TO: {to}", f"CSEQ: {req.header('cseq')}",
                  f"CALL-ID: {req.call_id}"]
        if record_route:
            lines += [f"RECORD-ROUTE: {EDGE_RR}"] + [f"RECORD-ROUTE: {v}" for v in req.headers.get("record-route", [])]
        if contact:
            lines.append(f"CONTACT: {ANSWER_CONTACT}")
        lines += list(extra) + [f"SERVER: {USER_AGENT}"]
        self._finish(conn, lines, body)

    def _finish(self, conn: Connection, lines: list[str], body: str) -> None:
        if body:
            lines.append("CONTENT-TYPE: application/sdp")
        lines.append(f"CONTENT-LENGTH: {len(body.encode())}")
        conn.send("\r\n".join(lines) + "\r\n\r\n" + body)

    # ------------------------------------------------------------------ sending (UAC)
    def _build_request(self, method: str, ruri: str, *, call_id: str, from_: str, to: str, cseq: int,
                       route: Iterable[str] = (), contact: str | None = CALLER_CONTACT,
                       body: str = "", branch: str | None = None, cseq_method: str | None = None,
                       extra: Iterable[str] = ()) -> str:
        branch = branch or "z9hG4bK" + secrets.token_hex(8)
        lines = [f"{method} {ruri} SIP/2.0", f"FROM: {from_}", f"TO: {to}",
                 f"CSEQ: {cseq} {cseq_method or method}", f"CALL-ID: {call_id}", "MAX-FORWARDS: 70",
                 f"VIA: SIP/2.0/TLS {VIA_SENT_BY};branch={branch}"]
        lines += [f"ROUTE: {r}" for r in route]
        if contact and method != "ACK":
            lines.append(f"CONTACT: {contact}")
        lines += list(extra)
        if method != "ACK":
            lines.append(f"USER-AGENT: {USER_AGENT}")
        if body:
            lines.append("CONTENT-TYPE: application/sdp")
        lines.append(f"CONTENT-LENGTH: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    async def _send(self, text: str) -> Connection:
        conn = await self.connect()
        conn.send(text)
        return conn

    async def _transact(self, text: str, call_id: str, cseq: int, method: str, timeout: float) -> Received:
        await self._send(text)
        return await self.wait_for(
            lambda r: _is_response(r, call_id, cseq, method) and r.msg.status >= 200,
            timeout, what=f"final response to {method} (CSeq {cseq}) call_id={call_id}")

    def options_request(self) -> tuple[str, str]:
        """(text, Call-ID) of an out-of-dialog OPTIONS to sip:SBC_FQDN:PORT, as Teams sends it."""
        call_id = str(uuid.uuid4())
        text = self._build_request(
            "OPTIONS", f"sip:{self.sbc_fqdn}:{self.sbc_port}", call_id=call_id,
            from_=f"<sip:sip.pstnhub.microsoft.com:5061>;tag={secrets.token_hex(6)}",
            to=f"<sip:{self.sbc_fqdn}:{self.sbc_port}>", cseq=1,
            contact="<sip:sip.pstnhub.microsoft.com:5061;transport=tls>")
        return text, call_id

    async def options(self, timeout: float = 10.0) -> Received:
        """Send options_request() on the peer's own connection; returns its final response."""
        text, call_id = self.options_request()
        return await self._transact(text, call_id, 1, "OPTIONS", timeout)

    async def invite(self, to: str = "+14255550100", from_: str = "+12065550123", *,
                     sdp: str | None = None, extra: Iterable[str] = (), timeout: float = 10.0) -> Call:
        """Call the PBX through the SBC like Teams does; waits for the final response and ACKs it
        (2xx: along the route set to the Contact; other: hop-by-hop)."""
        call_id = str(uuid.uuid4())
        tag = secrets.token_hex(6)
        call = Call(self, "uac", call_id,
                    local=f"<sip:{from_}@sip.pstnhub.microsoft.com:5061;user=phone>;tag={tag}",
                    remote=f"<sip:{to}@{self.sbc_fqdn};user=phone>", local_tag=tag)
        self.calls[call_id] = call
        branch = "z9hG4bK" + secrets.token_hex(8)
        ruri = f"sip:{to}@{self.sbc_fqdn}:{self.sbc_port};user=phone;transport=tls"
        text = self._build_request(
            "INVITE", ruri, call_id=call_id, from_=call.local, to=call.remote, cseq=1, branch=branch,
            body=sdp or _sdp("offer"),
            extra=[f"RECORD-ROUTE: {EDGE_RR}", "SUPPORTED: timer", "SESSION-EXPIRES: 3600",
                   "MIN-SE: 300", f"ALLOW: {ALLOW}", *extra])
        call.invite = SipMessage(*parse_sip_message(text), raw=text, direction="sent", transport="TLS")
        call.final = await self._transact(text, call_id, 1, "INVITE", timeout)
        call.provisionals = [r for r in self.received
                             if _is_response(r, call_id, 1, "INVITE") and r.msg.status < 200]
        resp = call.final.msg
        call.remote = resp.header("to") or call.remote
        if 200 <= resp.status < 300:
            rr = [v for v in reversed(resp.values("record-route")) if uri_of(v) != EDGE_URI]
            call.route, call.remote_target = rr, uri_of(resp.header("contact") or "")
            self._send_ack(call, resp, 1)
        else:  # non-2xx: ACK in the INVITE transaction (same branch, same R-URI, no Route)
            (await self.connect()).send(self._build_request(
                "ACK", ruri, call_id=call_id, from_=call.local, to=call.remote, cseq=1, branch=branch))
            call.ended = True
        return call

    def _send_ack(self, call: Call, resp: SipMessage, cseq: int) -> None:
        text = self._build_request("ACK", call.remote_target, call_id=call.call_id, from_=call.local,
                                   to=call.remote, cseq=cseq, route=call.route)
        if self._out is None or not self._out.usable:
            raise ConnectionError("outbound connection gone before the ACK")
        self._out.send(text)


def _is_response(r: Received, call_id: str, cseq: int, method: str) -> bool:
    m = r.msg
    if m.is_request or m.call_id != call_id:
        return False
    parts = (m.header("cseq") or "").split()
    return len(parts) == 2 and parts[0] == str(cseq) and parts[1].upper() == method
