"""A simulated PBX trunk: a SIP user agent over UDP or TCP at the address the SBC knows as
`pbx.address`, for labs and `teamsbc demo`. Messages are framed, parsed and built with
teamsbc.sip.

- UDP: one socket; requests and responses both use it, so the SBC sees one address (RFC 3261
  18.1.1 / 18.2.2: responses to the source, with rport).
- TCP: a listener for the connections the SBC opens to the trunk, answered on the connection
  the request came on, and one connection of its own to the SBC's `pbx.listen` for its own
  requests (RFC 3261 18: streams framed by Content-Length).
As callee: INVITE -> 100, 180, 200 + SDP (plain RTP, the PBX's Contact, the Record-Route of
the INVITE); ACK -> counted; BYE, OPTIONS and the rest -> 200. As caller: `invite` places a call
through the SBC, ACKs a 2xx along the route set and returns the dialog; `call.bye()` ends it.

    pbx = PbxUa("127.0.0.2", 5080, sbc=("127.0.0.1", 5060), transport="udp")
    await pbx.start()
    call = await pbx.invite("02079460123", from_="01632960001")
    call.status, call.route; await call.bye()
    await pbx.close()
"""
from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from ..addresses import HostPort
from ..sip.build import branch as make_branch, new_request
from ..sip.errors import ParseError
from ..sip.message import KEEPALIVE_PING, Message, Request, Response, StreamFramer, parse_message
from .messages import new_tag, respond, sdp_offer, uri_of, with_sdp

USER_AGENT = "teamsbc-lab-pbx/1.0"

Tap = Callable[[bool, bytes], None]   # (sent by this peer?, the message as on the wire)
Reply = Callable[[bytes], None]       # sends on the way the request came


class NoAnswer(Exception):
    """No final response within the time given."""


@dataclass
class PbxCall:
    """A dialog placed by the PBX (role "uac") or answered by it (role "uas")."""
    pbx: "PbxUa"
    role: str
    call_id: str
    local: str                  # our From/To value, with our tag
    remote: str = ""            # theirs, with their tag once known
    cseq: int = 1
    route: list[str] = field(default_factory=list)
    remote_target: str = ""
    final: Response | None = None
    ended: bool = False

    @property
    def status(self) -> int | None:
        return self.final.status if self.final is not None else None

    async def bye(self, timeout: float = 5.0) -> Response:
        self.cseq += 1
        final = await self.pbx._transact(self.pbx._request(self, "BYE", self.remote_target, self.cseq), timeout)
        self.ended = True
        return final


class PbxUa:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, sbc: HostPort | tuple[str, int],
                 transport: str = "udp", tap: Tap | None = None, ring: float = 0.0):
        """``sbc``: the SBC's pbx.listen; ``ring``: seconds between the 180 and the 200."""
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport {transport!r}: udp or tcp")
        self.host, self.port, self.transport = host, port, transport
        self.sbc = sbc.as_tuple() if isinstance(sbc, HostPort) else tuple(sbc)
        self.tap, self.ring = tap, ring
        self.calls: dict[str, PbxCall] = {}
        self.acks = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.AbstractServer | None = None
        self._out: asyncio.StreamWriter | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._finals: dict[tuple[str, int, str], asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()

    @property
    def me(self) -> HostPort:
        return HostPort(self.host, self.port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(self.host, self.port))
            self.port = self._udp.get_extra_info("sockname")[1]
        else:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._udp is not None:
            self._udp.close()
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ the wire
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, msg: Message, reply: Reply) -> None:
        data = msg.to_bytes()
        if self.tap is not None:
            self.tap(True, data)
        reply(data)

    def _to_sbc_udp(self, data: bytes) -> None:
        assert self._udp is not None
        self._udp.sendto(data, self.sbc)

    async def _to_sbc(self) -> Reply:
        """How our own requests reach the SBC: the UDP socket, or our own TCP connection."""
        if self.transport == "udp":
            return self._to_sbc_udp
        if self._out is None or self._out.is_closing():
            reader, writer = await asyncio.open_connection(*self.sbc, local_addr=(self.host, 0))
            self._out = writer
            self._writers.append(writer)
            self._spawn(self._read(reader, writer))
        return self._out.write

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self._read(reader, writer)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = StreamFramer()
        try:
            while data := await reader.read(65536):
                for frame in framer.feed(data):
                    if frame is KEEPALIVE_PING:
                        writer.write(b"\r\n")   # RFC 5626 4.4.1
                    else:
                        self._received(frame, writer.write, stream=True)  # type: ignore[arg-type]
        except (ConnectionError, OSError, ParseError):
            pass
        finally:
            writer.close()

    def _received(self, data: bytes, reply: Reply, *, stream: bool = False) -> None:
        try:
            msg = parse_message(data, stream=stream)
        except ParseError:
            return   # a PBX drops what it cannot read (RFC 3261 18.3)
        if self.tap is not None:
            self.tap(False, data)
        if isinstance(msg, Request):
            self._serve(msg, reply)
            return
        cseq = msg.cseq
        waiter = self._finals.get((msg.call_id, cseq.number, cseq.method))
        if waiter is not None and msg.status >= 200 and not waiter.done():
            waiter.set_result(msg)

    # ------------------------------------------------------------------ as callee
    def _serve(self, req: Request, reply: Reply) -> None:
        if req.method == "ACK":
            self.acks += 1
            return
        if req.method != "INVITE" or req.to_addr.tag is not None:
            self._send(respond(req, 200), reply)
            if req.method == "BYE" and req.call_id in self.calls:
                self.calls[req.call_id].ended = True
            return
        tag = new_tag()
        user = req.ruri.user or "pbx"
        self.calls[req.call_id] = PbxCall(self, "uas", req.call_id, local=f"{req.headers.get('to')};tag={tag}",
                                          remote=req.headers.get("from") or "")
        extra = [("record-route", rr) for rr in req.headers.get_all("record-route")]
        extra.append(("contact", f"<sip:{user}@{self.me}{';transport=tcp' if self.transport == 'tcp' else ''}>"))
        self._send(respond(req, 100), reply)
        self._send(respond(req, 180, to_tag=tag, extra=extra), reply)

        def answer() -> None:
            self._send(respond(req, 200, to_tag=tag, extra=extra,
                               body=sdp_offer(self.host, 40000, srtp=False)), reply)
        if self.ring <= 0:
            answer()
            return

        async def ringing() -> None:
            await asyncio.sleep(self.ring)
            answer()
        self._spawn(ringing())

    # ------------------------------------------------------------------ as caller
    def _request(self, call: PbxCall, method: str, uri: str, cseq: int, *, body: str = "",
                 branch: str | None = None) -> Request:
        rport = ";rport" if self.transport == "udp" else ""
        tp = ";transport=tcp" if self.transport == "tcp" else ""
        extra = [("contact", f"<sip:{uri_user(call.local)}@{self.me}{tp}>"),
                 ("user-agent", USER_AGENT)] if method == "INVITE" else []
        req = new_request(method, uri, via=f"SIP/2.0/{self.transport.upper()} {self.me};"
                                           f"branch={branch or make_branch(secrets.token_hex(6))}{rport}",
                          from_=call.local, to=call.remote, call_id=call.call_id, cseq=cseq,
                          routes=call.route if method != "INVITE" or cseq > 1 else (), extra=extra)
        return with_sdp(req, body)  # type: ignore[return-value]

    async def _transact(self, req: Request, timeout: float) -> Response:
        key = (req.call_id, req.cseq.number, req.cseq.method)
        waiter = self._finals[key] = asyncio.get_running_loop().create_future()
        try:
            self._send(req, await self._to_sbc())
            return await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise NoAnswer(f"no final response to {req.method} (call_id={req.call_id}) within {timeout:g}s") from None
        finally:
            del self._finals[key]

    async def invite(self, to: str, from_: str = "pbx", *, sdp: str | None = None,
                     timeout: float = 5.0) -> PbxCall:
        """Call `to` through the SBC (R-URI `to@pbx.listen`), wait for the final answer; a 2xx
        is ACKed along its route set (RFC 3261 13.2.2.4), anything else hop by hop (17.1.1.3)."""
        sbc = HostPort(*self.sbc)
        call = PbxCall(self, "uac", f"{secrets.token_hex(8)}@{self.host}",
                       local=f"<sip:{from_}@{self.host}>;tag={new_tag()}", remote=f"<sip:{to}@{sbc}>")
        self.calls[call.call_id] = call
        branch = make_branch(secrets.token_hex(6))
        invite = self._request(call, "INVITE", f"sip:{to}@{sbc}", 1, branch=branch,
                               body=sdp if sdp is not None else sdp_offer(self.host, 40010, srtp=False))
        final = call.final = await self._transact(invite, timeout)
        call.remote = final.headers.get("to") or call.remote
        if 200 <= final.status < 300:
            call.route = list(reversed(final.headers.get_all("record-route")))
            call.remote_target = uri_of(final.headers.get("contact") or "")
            self._send(self._request(call, "ACK", call.remote_target, 1), await self._to_sbc())
        else:
            self._send(self._request(call, "ACK", invite.uri, 1, branch=branch), await self._to_sbc())
            call.ended = True
        return call


def uri_user(value: str) -> str:
    """The user part of a From/To value's URI (the number we call from)."""
    uri = uri_of(value)
    return uri.split(":", 1)[1].split("@", 1)[0] if "@" in uri else "pbx"


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, pbx: PbxUa):
        self.pbx = pbx

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if data.strip(b"\r\n\0") == b"":
            return   # keep-alive noise
        udp = self.pbx._udp
        assert udp is not None
        self.pbx._received(data, lambda out: udp.sendto(out, addr))
