"""Issue 4 end to end: media through the real SBC process and a real rtpengine.

The Teams side is tests/support/teams_peer.py (real mutual TLS) plus a UDP socket on 127.0.0.1
(rtpengine interface ``pub``) that speaks SRTP with SDES keys; the PBX side is a small asyncio
UDP SIP UA in this file (UAS and UAC) with its own RTP socket per call on 127.0.0.2 (interface
``priv``). The SDP each side gets is the one the SBC relayed (rewritten by rtpengine through
the SBC's NG commands); packets go to the addresses in those SDPs and are checked on arrival
(tests/test_media_e2e.py's builders and ``exchange``: every packet arrives once, same payload,
SRTP authenticates and decrypts with the key of the SDP the receiver got, nothing left over).

1. Teams -> PBX: SDP rules on both legs, 50 SRTP packets in -> 50 RTP out, and back.
2. PBX -> Teams: the same the other way round (the Teams peer answers with our own SRTP SDP).
3. Hold (a=inactive) and resume from Teams: same ports and crypto, rtcp-mux kept, media again;
   hold from the PBX (a=sendonly, c=0.0.0.0) reaches Teams as a=inactive; an offerless
   re-INVITE from Teams (offer in the PBX's 200, answer in Teams' ACK).
4. BYE from either side, calls in both directions: rtpengine ``list`` ends up empty.
5. Two rtpengines, the first killed: new calls go to the second, with media.
6. No rtpengine answering: 503 to Teams, "media offer failed" in the log, nothing to the PBX;
   the SBC takes calls again once rtpengine is back.
   Failures around a call: rtpengine lost between offer and answer (503 to Teams, ACK + BYE
   to the PBX), SDP too large for the UDP PBX (488 with a Warning), delayed offer from the PBX
   without rtpengine (488 with a reason; with it: tests/test_e2e_pbx_interop.py).
7. Calls with media per second through the whole chain (printed, not asserted), with
   rtpengine's own time per NG command from its log.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import pytest

from teamsbc.media.ng import NgClient
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import ProcessManager
from tests.support.rtpengine import PBX_IP, TEAMS_IP, RtpEngine
from tests.support.sbc import SbcProcess
from tests.support.sipp import SipMessage, parse_sip_message
from tests.support.srtp import CryptoAttr, SrtpContext, parse_crypto_line
from tests.support.teams_peer import Answer, Call, Received, TeamsPeer, tag_of, uri_of
from tests.test_media_e2e import (
    MediaSocket,
    Stream,
    assert_pbx_side,
    assert_teams_side,
    attr_lines,
    exchange,
    m_line,
    media_address,
    new_key,
    pbx_sdp,
    rtpmap_names,
    teams_answer_sdp,
    teams_offer_sdp,
)

pytestmark = pytest.mark.e2e

LOOPBACK = "127.0.0.1"
TEAMS_CALLEE, TEAMS_CALLER = "+14255550100", "+12065550123"
UK_NATIONAL, PBX_CALLER = "02071234567", "01632960123"
WAIT = 10.0
MEDIA = {
    "interfaces": {"teams": "pub", "pbx": "priv"},
    "pbx_codecs": ["PCMA", "PCMU"],        # telephone-event is added by the SBC
    "ping_interval": 0.5,
    "timeout": 1.0,
}


# =========================================================================== a UDP "PBX" UA

@dataclass
class PbxCall:
    """One dialog of the PBX UA. role "uas": the SBC called us; "uac": we called."""
    call_id: str
    role: str
    local: str                  # our From (in our requests) with our tag
    remote: str                 # their address, with their tag once known
    rtp: MediaSocket
    route: list[str] = field(default_factory=list)
    remote_target: str = ""
    cseq: int = 1
    branch: str = ""            # of our INVITE (uac: ACK of a non-2xx)
    ruri: str = ""              # of our INVITE
    sdp_in: list[str] = field(default_factory=list)     # SDP bodies the SBC sent us, in order
    sdp_out: list[str] = field(default_factory=list)    # SDP bodies we sent
    final: SipMessage | None = None
    acks: int = 0
    ended: bool = False


class PbxUa(asyncio.DatagramProtocol):
    """A PBX trunk on UDP. As UAS: INVITE -> 100, 200 with an SDP for a fresh RTP socket on
    127.0.0.2 (PCMA + telephone-event); re-INVITE -> 200 with the same port, direction mirrored;
    BYE, OPTIONS, others -> 200; retransmitted requests get the same response again. As UAC:
    ``invite()`` and ``request()`` along the route set; every 2xx to our INVITE is ACKed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sbc: tuple[str, int] | None = None        # the SBC's PBX-side address
        self.calls: dict[str, PbxCall] = {}
        self.received: list[tuple[SipMessage, tuple[str, int]]] = []
        self.transcript: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None
        self._answered: dict[tuple[str, str, str], list[str]] = {}   # request key -> responses
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.gate: asyncio.Event | None = None   # set: new INVITEs are answered only once it is set
        self.reject: int | None = None           # set: new INVITEs get this final answer

    @classmethod
    async def start(cls, port: int) -> "PbxUa":
        _, ua = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: cls(port), local_addr=(LOOPBACK, port))
        return ua

    def connection_made(self, transport) -> None:
        self.transport = transport

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for call in self.calls.values():
            call.rtp.close()
        if self.transport is not None:
            self.transport.close()

    def describe(self) -> str:
        return "--- PBX UA transcript ---\n" + "\n".join(self.transcript)[-12000:]

    # ---- waiting
    def find(self, predicate: Callable[[SipMessage], object]) -> list[SipMessage]:
        return [m for m, _ in self.received if predicate(m)]

    async def wait_for(self, predicate: Callable[[SipMessage], object], timeout: float = WAIT,
                       what: str = "a message") -> SipMessage:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    found = self.find(predicate)
                    if found:
                        return found[0]
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"PBX UA: no {what} within {timeout}s\n{self.describe()}") from None

    def requests(self, method: str, call_id: str | None = None) -> list[SipMessage]:
        return self.find(lambda m: m.is_request and m.method == method
                         and (call_id is None or m.call_id == call_id))

    # ---- wire
    def _send(self, text: str, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transcript.append(f"--> {addr}\n{text}")
        self.transport.sendto(text.encode(), addr)

    def datagram_received(self, data: bytes, addr) -> None:
        text = data.decode(errors="replace")
        if not text.strip():
            return
        start, headers, body = parse_sip_message(text)
        msg = SipMessage(start, headers, body, text, direction="received", transport="UDP")
        self.transcript.append(f"<-- {addr}\n{text}")
        self.received.append((msg, addr))
        self._changed.set()
        if msg.is_request:
            self._serve(msg, addr)
        else:
            self._on_response(msg)

    # ---- UAS
    def _serve(self, req: SipMessage, addr) -> None:
        key = (req.call_id or "", req.header("cseq") or "", req.header("via") or "")
        if req.method == "ACK":
            call = self.calls.get(req.call_id or "")
            if call is not None:
                call.acks += 1
                if req.body:
                    call.sdp_in.append(req.body)       # the answer to our offer in a 200
            return
        if key in self._answered:                      # a retransmission: same answers again
            for text in self._answered[key]:
                self._send(text, addr)
            return
        self._answered[key] = []
        call = self.calls.get(req.call_id or "")
        if req.method == "INVITE" and tag_of(req.header("to")) is None and self.reject:
            self.respond(req, addr, 100, key=key)
            self.respond(req, addr, self.reject, key=key, tag=secrets.token_hex(5))
        elif req.method == "INVITE" and tag_of(req.header("to")) is None:
            self.respond(req, addr, 100, key=key)
            task = asyncio.get_running_loop().create_task(self._answer_new(req, addr, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif req.method in ("INVITE", "BYE") and call is None:
            self.respond(req, addr, 481, key=key)
        elif req.method == "INVITE":
            assert call is not None
            call.sdp_in.append(req.body)
            sdp = pbx_sdp(call.rtp.port, "8 101", direction=_mirror(req.body),
                          version=len(call.sdp_out) + 1)
            call.sdp_out.append(sdp)
            self.respond(req, addr, 200, key=key, tag=call_tag(call), body=sdp, contact=True)
        else:
            if req.method == "BYE" and call is not None:
                call.ended = True
            self.respond(req, addr, 200, key=key, tag=call_tag(call) if call else None)

    async def _answer_new(self, req: SipMessage, addr, key) -> None:
        rtp = await MediaSocket.open(PBX_IP)
        tag = secrets.token_hex(5)
        call = PbxCall(req.call_id or "", "uas", local=f"{req.header('to')};tag={tag}",
                       remote=req.header("from") or "", rtp=rtp, route=req.values("record-route"),
                       remote_target=uri_of(req.header("contact") or ""))
        call.sdp_in.append(req.body)
        sdp = pbx_sdp(rtp.port, "8 101")
        call.sdp_out.append(sdp)
        self.calls[call.call_id] = call
        if self.gate is not None:
            await asyncio.wait_for(self.gate.wait(), WAIT)
        self.respond(req, addr, 200, key=key, tag=tag, body=sdp, contact=True, record_route=True)
        self._changed.set()

    def respond(self, req: SipMessage, addr, code: int, *, key, tag: str | None = None,
                body: str = "", contact: bool = False, record_route: bool = False) -> None:
        to = req.header("to") or ""
        if tag and tag_of(to) is None:
            to += f";tag={tag}"
        lines = [f"SIP/2.0 {code} {_REASON.get(code, 'OK')}"]
        lines += [f"Via: {v}" for v in req.headers.get("via", [])]
        if record_route:
            lines += [f"Record-Route: {v}" for v in req.headers.get("record-route", [])]
        lines += [f"From: {req.header('from')}", f"To: {to}", f"Call-ID: {req.call_id}",
                  f"CSeq: {req.header('cseq')}"]
        if contact:
            lines.append(f"Contact: <sip:pbx@{LOOPBACK}:{self.port}>")
        text = _finish(lines, body)
        self._answered[key].append(text)
        self._send(text, addr)

    # ---- UAC
    async def invite(self, ruri_user: str = UK_NATIONAL, from_user: str = PBX_CALLER, *,
                     payload_types: str = "8 0 18 101", offer: bool = True,
                     timeout: float = WAIT) -> PbxCall:
        """Call Teams through the SBC with a plain RTP offer (``offer`` False: no SDP, a delayed
        offer); waits for the final response."""
        assert self.sbc is not None
        rtp = await MediaSocket.open(PBX_IP)
        tag = secrets.token_hex(5)
        call = PbxCall(f"{secrets.token_hex(8)}@pbx", "uac", local=f"<sip:{from_user}@{LOOPBACK}>;tag={tag}",
                       remote=f"<sip:{ruri_user}@{LOOPBACK}>", rtp=rtp,
                       ruri=f"sip:{ruri_user}@{self.sbc[0]}:{self.sbc[1]}", branch=_branch())
        self.calls[call.call_id] = call
        sdp = pbx_sdp(rtp.port, payload_types) if offer else ""
        if offer:
            call.sdp_out.append(sdp)
        self._send(self._request(call, "INVITE", call.ruri, 1, body=sdp, branch=call.branch), self.sbc)
        call.final = await self.wait_for(
            lambda m: _is_response(m, call.call_id, 1, "INVITE") and m.status >= 200, timeout,
            f"final response to INVITE call_id={call.call_id}")
        return call

    async def request(self, call: PbxCall, method: str, body: str = "", timeout: float = WAIT) -> SipMessage:
        """An in-dialog request along the route set; waits for its final response."""
        assert self.sbc is not None
        call.cseq += 1
        cseq = call.cseq
        if body:
            call.sdp_out.append(body)
        self._send(self._request(call, method, call.remote_target, cseq, body=body, route=call.route), self.sbc)
        final = await self.wait_for(lambda m: _is_response(m, call.call_id, cseq, method) and m.status >= 200,
                                    timeout, f"final response to {method} call_id={call.call_id}")
        if method == "BYE":
            call.ended = True
        return final

    async def options(self, timeout: float = WAIT) -> SipMessage:
        """Out-of-dialog OPTIONS to the SBC (answered by the SBC itself)."""
        assert self.sbc is not None
        call = PbxCall(f"{secrets.token_hex(8)}@pbx", "uac", local=f"<sip:pbx@{LOOPBACK}>;tag=o",
                       remote=f"<sip:{self.sbc[0]}:{self.sbc[1]}>", rtp=None)  # type: ignore[arg-type]
        self._send(self._request(call, "OPTIONS", f"sip:{self.sbc[0]}:{self.sbc[1]}", 1), self.sbc)
        return await self.wait_for(lambda m: _is_response(m, call.call_id, 1, "OPTIONS") and m.status >= 200,
                                   timeout, "answer to OPTIONS")

    def _request(self, call: PbxCall, method: str, ruri: str, cseq: int, *, body: str = "",
                 route: Sequence[str] = (), branch: str | None = None) -> str:
        lines = [f"{method} {ruri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {LOOPBACK}:{self.port};branch={branch or _branch()};rport",
                 "Max-Forwards: 70", f"From: {call.local}", f"To: {call.remote}",
                 f"Call-ID: {call.call_id}", f"CSeq: {cseq} {method}"]
        lines += [f"Route: {r}" for r in route]
        if method not in ("ACK", "BYE"):
            lines.append(f"Contact: <sip:{PBX_CALLER}@{LOOPBACK}:{self.port}>")
        return _finish(lines, body)

    def _on_response(self, resp: SipMessage) -> None:
        call = self.calls.get(resp.call_id or "")
        if call is None or resp.method != "INVITE" or (resp.status or 0) < 200:
            return
        cseq = int((resp.header("cseq") or "0").split()[0])
        if call.role == "uas" and cseq == 1:
            return                                             # our own 200, not a response to us
        if 200 <= resp.status < 300:
            if cseq == 1 and tag_of(call.remote) is None:       # the dialog is set up by the first 2xx
                call.remote = resp.header("to") or call.remote
                call.route = list(reversed(resp.values("record-route")))
                call.remote_target = uri_of(resp.header("contact") or "")
                call.sdp_in.append(resp.body)
            elif cseq > 1 and resp.body and len(call.sdp_in) < len(call.sdp_out):
                call.sdp_in.append(resp.body)                  # answer to our re-INVITE (once)
            # every 2xx (retransmissions too) is ACKed end to end
            self._send(self._request(call, "ACK", call.remote_target, cseq, route=call.route), self.sbc)
        elif cseq == 1:  # non-2xx: ACK hop by hop in the INVITE transaction
            call.remote = resp.header("to") or call.remote
            self._send(self._request(call, "ACK", call.ruri, cseq, branch=call.branch), self.sbc)


_REASON = {100: "Trying", 200: "OK", 481: "Call/Transaction Does Not Exist", 486: "Busy Here"}


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def _finish(lines: list[str], body: str) -> str:
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return "\r\n".join(lines) + "\r\n\r\n" + body


def _mirror(sdp: str) -> str:
    for offer, answer in (("inactive", "inactive"), ("sendonly", "recvonly"), ("recvonly", "sendonly")):
        if attr_lines(sdp, offer):
            return answer
    return "sendrecv"


def call_tag(call: PbxCall) -> str | None:
    return tag_of(call.local)


def _is_response(m: SipMessage, call_id: str, cseq: int, method: str) -> bool:
    if m.is_request or m.call_id != call_id:
        return False
    parts = (m.header("cseq") or "").split()
    return len(parts) == 2 and parts[0] == str(cseq) and parts[1].upper() == method


# =========================================================================== the rig

@dataclass
class Rig:
    sbc: SbcProcess
    peer: TeamsPeer
    pbx: PbxUa
    engines: list[RtpEngine]
    procs: ProcessManager
    tmp_path: Path
    sockets: list[MediaSocket] = field(default_factory=list)

    def diag(self) -> str:
        parts = [self.peer.describe(), self.pbx.describe()]
        parts += [f"--- {e.name} ---\n{e.log()[-3000:]}" for e in self.engines]
        parts.append(self.sbc.log()[-12000:])
        return "\n".join(parts)

    async def socket(self, host: str = TEAMS_IP) -> MediaSocket:
        sock = await MediaSocket.open(host)
        self.sockets.append(sock)
        return sock

    def log_lines(self) -> list[str]:
        return self.sbc.process.stderr_text().splitlines() if self.sbc.process else []

    async def wait_log(self, pattern: str, timeout: float = WAIT, count: int = 1) -> list[str]:
        rx = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [line for line in self.log_lines() if rx.search(line)]
            if len(found) >= count:
                return found
            if loop.time() >= deadline:
                raise AssertionError(f"SBC log: {len(found)} of {count} lines matching {pattern!r} "
                                     f"within {timeout}s\n{self.diag()}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def rig(procs, tmp_path, pki, rtpengine: list[str], engines: list[RtpEngine],
              **media: Any) -> AsyncIterator[Rig]:
    peer_port, pbx_port = free_port("tcp"), free_port("both")
    pbx = await PbxUa.start(pbx_port)
    sbc = SbcProcess(tmp_path, procs, pki, pbx_port=pbx_port, pbx_transport="udp",
                     teams_resolve={name: peer_port for name in TEAMS_NAMES},
                     extra={"media": {**MEDIA, "rtpengine": rtpengine, **media}})
    pbx.sbc = (LOOPBACK, sbc.pbx_listen_port)
    peer = TeamsPeer(pki, sbc_port=sbc.teams_port)
    r = Rig(sbc, peer, pbx, engines, procs, tmp_path)
    try:
        await peer.listen(peer_port)
        await asyncio.to_thread(sbc.start)
        yield r
    finally:
        await peer.close()
        pbx.close()
        for sock in r.sockets:
            sock.close()


async def ng_calls(engine: RtpEngine) -> list[str]:
    async with NgClient(engine.ng_udp) as ng:
        return list((await ng.request({"command": "list"})).get("calls", []))


async def until_calls(engine: RtpEngine, expected: list[str], diag: Callable[[], str],
                      timeout: float = 5.0) -> None:
    """Poll rtpengine's ``list`` (bounded) until it shows exactly ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with NgClient(engine.ng_udp) as ng:
        while True:
            calls = sorted((await ng.request({"command": "list"})).get("calls", []))
            if calls == sorted(expected):
                return
            if loop.time() >= deadline:
                raise AssertionError(f"{engine.name} list: {calls}, want {sorted(expected)}\n{diag()}")
            await asyncio.sleep(0.02)


def rtpengine_complaints(engine: RtpEngine) -> list[str]:
    """rtpengine's WARNING and worse lines: an unknown flag or option name is only a warning
    (it still answers ok), as are SRTP packets that do not authenticate. Left out: the note
    that a burst of 50 packets (the test sends each batch at once) filled a receive queue."""
    return [line for line in engine.log().splitlines()
            if re.search(r"\] (WARNING|ERR|ERROR|CRIT|ALERT|EMERG):", line)
            and "Too many packets in UDP receive queue" not in line]


def ng_commands(engine: RtpEngine, call_id: str) -> list[str]:
    """The NG commands rtpengine answered for this call, in order (from its log); the test's
    own ``query`` left out."""
    rx = re.compile(rf"\[{re.escape(call_id)}\]: \[control\] Replying to '(\w+)'")
    return [m.group(1) for m in map(rx.search, engine.log().splitlines()) if m and m.group(1) != "query"]


# =========================================================================== calls with media

def teams_key(tag: int = 1) -> tuple[str, CryptoAttr]:
    """A Teams master key as Teams sends it: with lifetime and MKI (``|2^31|1:1``)."""
    text, key = new_key(tag)
    return text, CryptoAttr(tag, key.suite, key.master_key, key.master_salt, 2**31, 1, 1)


@dataclass
class MediaCall:
    """A call set up through the SBC, with what each side got and how each side sends."""
    call_id: str
    teams_call: Call            # the TeamsPeer's dialog
    pbx_call: PbxCall
    teams_sock: MediaSocket
    teams_got: str              # SDP the Teams side got (200 to its INVITE, or the INVITE)
    pbx_got: str                # SDP the PBX side got
    teams_tx: Stream
    pbx_tx: Stream
    teams_rx: SrtpContext
    teams_key_text: str = ""    # Teams' own master key (base64), as in its SDP

    async def media(self, count: int = 50) -> None:
        await exchange(self.teams_sock, self.pbx_call.rtp, teams_tx=self.teams_tx, pbx_tx=self.pbx_tx,
                       teams_rx=self.teams_rx, to_rtpengine_from_teams=media_address(self.teams_got),
                       to_rtpengine_from_pbx=media_address(self.pbx_got), count=count)


async def call_from_teams(r: Rig, *, check: bool = True) -> MediaCall:
    sock = await r.socket(TEAMS_IP)
    key80_text, key80 = teams_key(1)
    key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
    offer = teams_offer_sdp(sock.port, key80=key80_text, key32=key32_text)
    call = await r.peer.invite(to=TEAMS_CALLEE, from_=TEAMS_CALLER, sdp=offer)
    assert call.status == 200, r.diag()
    pbx_call = r.pbx.calls[call.call_id]
    to_pbx, to_teams = pbx_call.sdp_in[0], call.final.msg.body
    if check:
        d = r.diag()
        # toward the PBX: RTP/AVP, no crypto, no ICE, no rtcp-mux, only the configured codecs
        assert_pbx_side(to_pbx)
        assert not attr_lines(to_pbx, "ice-pwd") and not attr_lines(to_pbx, "setup"), d
        assert m_line(to_pbx)[3:] == ["0", "8", "101"], (to_pbx, d)
        assert rtpmap_names(to_pbx) == {"PCMU", "PCMA", "telephone-event"}, (to_pbx, d)
        assert len(to_pbx.encode()) <= 1300, d
        # toward Teams: RTP/SAVP, exactly one crypto line (_80, answering Teams' tag 1), no
        # fingerprint, rtcp-mux, ICE-lite, the codec the PBX picked
        key = assert_teams_side(to_teams)
        assert key.tag == 1 and key.mki is None, (to_teams, d)
        assert m_line(to_teams)[3:] == ["8", "101"], (to_teams, d)
    rtpengine_key = parse_crypto_line(attr_lines(to_teams, "crypto")[0])
    return MediaCall(call.call_id, call, pbx_call, sock, to_teams, to_pbx,
                     teams_tx=Stream(secrets.randbits(32), 8, SrtpContext(key80)),
                     pbx_tx=Stream(secrets.randbits(32), 8), teams_rx=SrtpContext(rtpengine_key),
                     teams_key_text=key80_text)


async def call_from_pbx(r: Rig, *, check: bool = True) -> MediaCall:
    sock = await r.socket(TEAMS_IP)
    key_text, _ = new_key(1)
    teams_keys: dict[int, CryptoAttr] = {}

    def answer(invite: Received) -> str:
        offered = parse_crypto_line(attr_lines(invite.msg.body, "crypto")[0])
        raw = _b64(key_text)
        teams_keys[offered.tag] = CryptoAttr(offered.tag, "AES_CM_128_HMAC_SHA1_80", raw[:16], raw[16:],
                                             2**31, 1, 1)
        sdp = teams_answer_sdp(sock.port, key=key_text, tag=offered.tag)
        return sdp.replace("a=sendrecv", "a=inactive") if attr_lines(invite.msg.body, "inactive") else sdp

    r.peer.answers.append(Answer(200, sdp=answer))
    pbx_call = await r.pbx.invite()
    assert pbx_call.final is not None and pbx_call.final.status == 200, r.diag()
    teams_call = r.peer.calls[pbx_call.call_id]
    assert teams_call.invite is not None
    to_teams, to_pbx = teams_call.invite.msg.body, pbx_call.sdp_in[0]
    if check:
        d = r.diag()
        key = assert_teams_side(to_teams)
        assert key.mki is None, (to_teams, d)
        assert m_line(to_teams)[3:] == ["8", "0", "18", "101"], (to_teams, d)   # nothing stripped
        assert_pbx_side(to_pbx)
        assert m_line(to_pbx)[3:] == ["8", "101"], (to_pbx, d)
    rtpengine_key = parse_crypto_line(attr_lines(to_teams, "crypto")[0])
    return MediaCall(pbx_call.call_id, teams_call, pbx_call, sock, to_teams, to_pbx,
                     teams_tx=Stream(secrets.randbits(32), 8, SrtpContext(teams_keys[rtpengine_key.tag])),
                     pbx_tx=Stream(secrets.randbits(32), 8), teams_rx=SrtpContext(rtpengine_key))


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


async def hang_up(r: Rig, c: MediaCall, by: str) -> None:
    """BYE from ``by`` ("teams" or "pbx"); the other side must get it and both see 200."""
    if by == "teams":
        final = await c.teams_call.bye()
        assert final.msg.status == 200, r.diag()
        await r.pbx.wait_for(lambda m: m.is_request and m.method == "BYE" and m.call_id == c.call_id,
                             what="BYE at the PBX")
        assert c.pbx_call.ended, r.diag()
    else:
        final = await r.pbx.request(c.pbx_call, "BYE")
        assert final.status == 200, r.diag()
        await r.peer.wait_for(lambda m: m.msg.is_request and m.msg.method == "BYE"
                              and m.msg.call_id == c.call_id, what="BYE at Teams")


# =========================================================================== 1. Teams -> PBX

async def test_call_from_teams_srtp_in_rtp_out_and_back(procs, tmp_path, test_pki):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        c = await call_from_teams(r)
        # the PBX got the offer before it answered; Teams' ACK reached it
        await r.pbx.wait_for(lambda m: m.is_request and m.method == "ACK" and m.call_id == c.call_id,
                             what="ACK at the PBX")
        assert await ng_calls(eng) == [c.call_id], r.diag()
        await c.media(50)
        async with NgClient(eng.ng_udp) as ng:
            totals = (await ng.request({"command": "query", "call-id": c.call_id}))["totals"]
        assert totals["RTP"]["packets"] == 100 and totals["RTP"]["errors"] == 0, (totals, r.diag())
        await hang_up(r, c, "teams")
        await until_calls(eng, [], r.diag)
        assert ng_commands(eng, c.call_id) == ["offer", "answer", "delete"], r.diag()
        assert rtpengine_complaints(eng) == [], r.diag()


# =========================================================================== 2. PBX -> Teams

async def test_call_from_pbx_rtp_in_srtp_out_and_back(procs, tmp_path, test_pki):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        c = await call_from_pbx(r)
        await r.peer.wait_for(lambda m: m.msg.is_request and m.msg.method == "ACK"
                              and m.msg.call_id == c.call_id, what="ACK at Teams")
        assert await ng_calls(eng) == [c.call_id], r.diag()
        await c.media(50)
        async with NgClient(eng.ng_udp) as ng:
            totals = (await ng.request({"command": "query", "call-id": c.call_id}))["totals"]
        assert totals["RTP"]["packets"] == 100 and totals["RTP"]["errors"] == 0, (totals, r.diag())
        await hang_up(r, c, "pbx")
        await until_calls(eng, [], r.diag)
        assert ng_commands(eng, c.call_id) == ["offer", "answer", "delete"], r.diag()
        assert rtpengine_complaints(eng) == [], r.diag()


# =========================================================================== 3. hold and resume

async def test_hold_and_resume_from_teams_keep_ports_and_crypto(procs, tmp_path, test_pki):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        c = await call_from_teams(r)
        await c.media(20)
        offer = c.teams_call.invite.msg.body
        for n, direction in enumerate(("inactive", "sendrecv"), start=2):
            final = await c.teams_call.reinvite(offer.replace("a=sendrecv", f"a={direction}"))
            d = r.diag()
            assert final.msg.status == 200, d
            # the PBX got the re-offer: same address and port, RTP/AVP, the direction
            assert len(c.pbx_call.sdp_in) == n, d
            to_pbx = c.pbx_call.sdp_in[-1]
            assert_pbx_side(to_pbx)
            assert media_address(to_pbx) == media_address(c.pbx_got), (to_pbx, d)
            assert attr_lines(to_pbx, direction), (to_pbx, d)
            assert m_line(to_pbx)[3:] == ["0", "8", "101"], (to_pbx, d)
            # Teams got the answer: same address and port, the same crypto line, rtcp-mux kept
            to_teams = final.msg.body
            assert_teams_side(to_teams)
            assert media_address(to_teams) == media_address(c.teams_got), (to_teams, d)
            assert attr_lines(to_teams, "crypto") == attr_lines(c.teams_got, "crypto"), (to_teams, d)
            assert attr_lines(to_teams, "rtcp-mux") == ["a=rtcp-mux"], (to_teams, d)
            assert attr_lines(to_teams, direction), (to_teams, d)
            assert not attr_lines(to_teams, "sendrecv" if direction == "inactive" else "inactive"), d
            await r.pbx.wait_for(lambda m: m.is_request and m.method == "ACK" and m.call_id == c.call_id
                                 and m.header("cseq") == f"{c.teams_call.cseq} ACK", what="ACK of the re-INVITE")
        # media flows again after resume, with the keys of the first offer/answer
        await c.media(50)
        await hang_up(r, c, "teams")
        await until_calls(eng, [], r.diag)
        assert ng_commands(eng, c.call_id) == ["offer", "answer"] * 3 + ["delete"], r.diag()
        assert rtpengine_complaints(eng) == [], r.diag()


async def test_hold_and_resume_from_the_pbx_inactive_toward_teams(procs, tmp_path, test_pki):
    """The PBX holds with a=sendonly and c=0.0.0.0: Teams gets a=inactive (the only hold it
    knows), a real address, the same port and crypto; resume; media again."""
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        c = await call_from_pbx(r)
        await c.media(20)
        port = c.pbx_call.rtp.port
        for n, (sdp, want) in enumerate(((pbx_sdp(port, "8 101", direction="sendonly", addr="0.0.0.0",
                                                  version=2), "inactive"),
                                         (pbx_sdp(port, "8 101", version=3), "sendrecv")), start=2):
            final = await r.pbx.request(c.pbx_call, "INVITE", body=sdp)
            d = r.diag()
            assert final.status == 200, d
            invites = [m.msg for m in r.peer.find(lambda m: m.msg.is_request and m.msg.method == "INVITE"
                                                  and m.msg.call_id == c.call_id)]
            assert len(invites) == n, d
            to_teams = invites[-1].body
            assert_teams_side(to_teams)
            assert attr_lines(to_teams, want) and not attr_lines(to_teams, "sendonly"), (to_teams, d)
            assert "0.0.0.0" not in to_teams, (to_teams, d)
            assert media_address(to_teams) == media_address(c.teams_got), (to_teams, d)
            assert attr_lines(to_teams, "crypto") == attr_lines(c.teams_got, "crypto"), (to_teams, d)
            assert attr_lines(to_teams, "rtcp-mux") == ["a=rtcp-mux"], (to_teams, d)
            to_pbx = c.pbx_call.sdp_in[-1]
            assert len(c.pbx_call.sdp_in) == n, d
            assert_pbx_side(to_pbx)
            assert media_address(to_pbx) == media_address(c.pbx_got), (to_pbx, d)
            await r.peer.wait_for(lambda m: m.msg.is_request and m.msg.method == "ACK"
                                  and m.msg.call_id == c.call_id
                                  and m.msg.header("cseq") == f"{c.pbx_call.cseq} ACK", what="ACK at Teams")
        await c.media(50)
        await hang_up(r, c, "teams")
        await until_calls(eng, [], r.diag)
        assert ng_commands(eng, c.call_id) == ["offer", "answer"] * 3 + ["delete"], r.diag()
        assert rtpengine_complaints(eng) == [], r.diag()


async def test_offerless_reinvite_from_teams_offer_in_200_answer_in_ack(procs, tmp_path, test_pki):
    """Teams re-INVITEs without SDP: the PBX's 200 carries an offer, which reaches Teams as
    SRTP with the same port and key; Teams' ACK carries the answer, which reaches the PBX as
    plain RTP with the same port; media flows."""
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        c = await call_from_teams(r)
        await c.media(20)
        call = c.teams_call
        final = await call.request("INVITE", body="")
        d = r.diag()
        assert final.msg.status == 200, d
        reinvite = r.pbx.requests("INVITE", c.call_id)[-1]
        assert reinvite.body == "", d
        offer = final.msg.body
        assert_teams_side(offer)
        assert media_address(offer) == media_address(c.teams_got), (offer, d)
        assert attr_lines(offer, "crypto") == attr_lines(c.teams_got, "crypto"), (offer, d)
        assert attr_lines(offer, "rtcp-mux") == ["a=rtcp-mux"], (offer, d)
        tag = parse_crypto_line(attr_lines(offer, "crypto")[0]).tag
        answer = teams_answer_sdp(c.teams_sock.port, key=c.teams_key_text, tag=tag)
        # Teams keeps its ICE credentials within the call (else rtpengine sees an ICE restart)
        answer = re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:ZdkB", answer)
        answer = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:ri0BF8YTHMUStkuuuK1YIwcG", answer)
        assert "a=ice-ufrag:ZdkB" in c.teams_call.invite.msg.body, d
        assert r.peer.out is not None
        r.peer.out.send(r.peer.build_request(
            "ACK", call.remote_target, call_id=call.call_id, from_=call.local, to=call.remote,
            cseq=call.cseq, route=call.route, body=answer))
        ack = await r.pbx.wait_for(lambda m: m.is_request and m.method == "ACK" and m.call_id == c.call_id
                                   and m.header("cseq") == f"{call.cseq} ACK", what="ACK with the answer")
        d = r.diag()
        assert ack.body and ack.header("content-type") == "application/sdp", d
        assert_pbx_side(ack.body)
        assert media_address(ack.body) == media_address(c.pbx_got), (ack.body, d)
        assert m_line(ack.body)[3:] == ["8", "101"], (ack.body, d)
        await c.media(50)
        await hang_up(r, c, "pbx")
        await until_calls(eng, [], r.diag)
        # the late offer rides in the 200, its answer in the ACK
        assert ng_commands(eng, c.call_id) == ["offer", "answer"] * 2 + ["delete"], r.diag()
        assert rtpengine_complaints(eng) == [], r.diag()


# =========================================================================== 4. BYE deletes

@pytest.mark.parametrize("direction", ["teams->pbx", "pbx->teams"])
async def test_bye_from_either_side_deletes_the_session(procs, tmp_path, test_pki, direction):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        for by in ("teams", "pbx"):
            c = await (call_from_teams(r) if direction == "teams->pbx" else call_from_pbx(r))
            await c.media(5)
            await until_calls(eng, [c.call_id], r.diag)
            await hang_up(r, c, by)
            await until_calls(eng, [], r.diag)
            assert ng_commands(eng, c.call_id) == ["offer", "answer", "delete"], r.diag()
        assert not [line for line in r.log_lines() if "level=ERROR" in line], r.diag()
        assert rtpengine_complaints(eng) == [], r.diag()


async def test_call_refused_by_the_callee_deletes_the_session(procs, tmp_path, test_pki):
    """A final failure from either callee (486) ends the call's rtpengine session too."""
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        r.pbx.reject = 486
        sock = await r.socket(TEAMS_IP)
        key80_text, _ = teams_key(1)
        key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
        call = await r.peer.invite(to=TEAMS_CALLEE, from_=TEAMS_CALLER,
                                   sdp=teams_offer_sdp(sock.port, key80=key80_text, key32=key32_text))
        assert call.status == 486, r.diag()
        assert r.pbx.requests("INVITE", call.call_id), r.diag()
        await until_calls(eng, [], r.diag)
        assert ng_commands(eng, call.call_id) == ["offer", "delete"], r.diag()
        r.pbx.reject = None

        r.peer.answers.append(Answer(486))
        out = await r.pbx.invite()
        assert out.final is not None and out.final.status == 486, r.diag()
        assert r.peer.calls[out.call_id].invite is not None, r.diag()
        await until_calls(eng, [], r.diag)
        assert ng_commands(eng, out.call_id) == ["offer", "delete"], r.diag()
        assert not [line for line in r.log_lines() if "level=ERROR" in line], r.diag()


# =========================================================================== 5. failover

async def test_first_rtpengine_killed_new_calls_go_to_the_second(procs, tmp_path, test_pki):
    first = RtpEngine(procs, name="rtpengine-a").start()
    second = RtpEngine(procs, name="rtpengine-b").start()
    async with rig(procs, tmp_path, test_pki, [first.ng_udp, second.ng_udp], [first, second]) as r:
        # equal weights: new calls alternate, the first instance first
        for engine, idle in ((first, second), (second, first)):
            c = await call_from_teams(r)
            assert await ng_calls(engine) == [c.call_id], r.diag()
            assert await ng_calls(idle) == [], r.diag()
            await c.media(5)
            await hang_up(r, c, "teams")
            await until_calls(engine, [], r.diag)

        first.kill()                                  # SIGKILL by PID: a crash
        # at once, before health pings notice: the next new call is placed on the first
        # instance, which does not answer, and goes to the second with media
        for n, make in enumerate((call_from_teams, call_from_pbx, call_from_teams)):
            c = await make(r)
            assert await ng_calls(second) == [c.call_id], r.diag()
            if n == 0:
                await r.wait_log(rf"new call {re.escape(c.call_id)}: {re.escape(first.ng_udp)} did not answer "
                                 r".*trying the next instance")
            await c.media(20)
            await hang_up(r, c, "pbx")
            await until_calls(second, [], r.diag)
        await r.wait_log(rf"level=ERROR logger=teamsbc\.media\.pool rtpengine {re.escape(first.ng_udp)} is down")
        assert r.sbc.process.running, r.diag()
        assert not [line for line in r.log_lines() if "media offer failed" in line], r.diag()


# =========================================================================== 6. no rtpengine

async def refused(r: Rig) -> None:
    """A call from Teams is refused with 503, the log says why, nothing reaches the PBX."""
    before = len(r.pbx.received)
    sock = await r.socket(TEAMS_IP)
    key80_text, _ = teams_key(1)
    key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
    call = await r.peer.invite(to=TEAMS_CALLEE, from_=TEAMS_CALLER,
                               sdp=teams_offer_sdp(sock.port, key80=key80_text, key32=key32_text))
    d = r.diag()
    assert call.status == 503, d
    assert [p.msg.status for p in call.provisionals] == [100], d
    await r.wait_log(rf"media offer failed.*call_id={re.escape(call.call_id)}")
    # barrier: the SBC answers the PBX's OPTIONS after anything it sent the PBX before
    assert (await r.pbx.options()).status == 200, r.diag()
    assert r.pbx.find(lambda m: m.call_id == call.call_id) == [], r.diag()
    got = [m.start_line for m, _ in r.pbx.received[before:]]
    assert got == ["SIP/2.0 200 OK"], (got, r.diag())   # only the answer to our OPTIONS


async def test_no_rtpengine_listening_refuses_calls_with_503(procs, tmp_path, test_pki):
    nobody = f"udp:127.0.0.1:{free_port('udp')}"
    async with rig(procs, tmp_path, test_pki, [nobody], []) as r:
        await refused(r)
        await refused(r)   # also once the instance is marked down


async def test_rtpengine_killed_refuses_calls_then_back(procs, tmp_path, test_pki):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        c = await call_from_teams(r)
        await c.media(5)
        await hang_up(r, c, "teams")
        await until_calls(eng, [], r.diag)
        eng.kill()
        await refused(r)
        # rtpengine back on the same ports: health pings bring it up, calls have media again
        ups = len([line for line in r.log_lines() if "is up again" in line])
        eng.start()
        await r.wait_log(rf"rtpengine {re.escape(eng.ng_udp)} is up again", count=ups + 1)
        c = await call_from_teams(r)
        await c.media(20)
        await hang_up(r, c, "pbx")
        await until_calls(eng, [], r.diag)


# =========================================================================== failures around a call

async def test_rtpengine_lost_before_the_answer_tears_down_both_legs(procs, tmp_path, test_pki):
    """The offer worked, rtpengine dies before the PBX's 200: the SBC cannot answer, so Teams
    gets 503 and the PBX's answered call is ACKed and ended with a BYE."""
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        r.pbx.gate = asyncio.Event()
        sock = await r.socket(TEAMS_IP)
        key80_text, _ = teams_key(1)
        key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
        invite = asyncio.create_task(r.peer.invite(
            to=TEAMS_CALLEE, from_=TEAMS_CALLER,
            sdp=teams_offer_sdp(sock.port, key80=key80_text, key32=key32_text)))
        at_pbx = await r.pbx.wait_for(lambda m: m.is_request and m.method == "INVITE", what="INVITE at the PBX")
        call_id = at_pbx.call_id or ""
        assert await ng_calls(eng) == [call_id], r.diag()
        eng.kill()
        r.pbx.gate.set()
        call = await invite
        d = r.diag()
        assert call.status == 503, d
        await r.wait_log(rf"media answer failed, tearing the call down: .*call_id={re.escape(call_id)}")
        await r.pbx.wait_for(lambda m: m.is_request and m.method == "ACK" and m.call_id == call_id,
                             what="ACK of the PBX's 200")
        await r.pbx.wait_for(lambda m: m.is_request and m.method == "BYE" and m.call_id == call_id,
                             what="BYE to the PBX")
        assert r.pbx.calls[call_id].ended, r.diag()
        assert not r.peer.find(lambda m: m.msg.is_request and m.msg.call_id == call_id), r.diag()


async def test_sdp_too_large_for_the_udp_pbx_is_refused_with_a_reason(procs, tmp_path, test_pki):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng], max_sdp_to_pbx=200) as r:
        sock = await r.socket(TEAMS_IP)
        key80_text, _ = teams_key(1)
        key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
        call = await r.peer.invite(to=TEAMS_CALLEE, from_=TEAMS_CALLER,
                                   sdp=teams_offer_sdp(sock.port, key80=key80_text, key32=key32_text))
        d = r.diag()
        assert call.status == 488, d
        assert call.final.msg.start_line == "SIP/2.0 488 SDP Too Large For UDP Trunk", d
        warning = call.final.msg.header("warning") or ""
        assert re.search(r"SDP of \d+ bytes exceeds media\.max_sdp_to_pbx \(200\)", warning), d
        await r.wait_log(rf"call refused: SDP of \d+ bytes exceeds .*call_id={re.escape(call.call_id)}")
        await until_calls(eng, [], r.diag)            # the offer's session is deleted again
        assert (await r.pbx.options()).status == 200, r.diag()
        assert not r.pbx.requests("INVITE"), r.diag()


async def test_delayed_offer_from_the_pbx_without_rtpengine_is_refused_with_a_reason(procs, tmp_path, test_pki):
    """Without rtpengine nobody can make the offer Teams needs (with it, the SBC interworks:
    tests/test_e2e_pbx_interop.py)."""
    async with rig(procs, tmp_path, test_pki, [], []) as r:
        call = await r.pbx.invite(offer=False)
        d = r.diag()
        assert call.final is not None and call.final.start_line == "SIP/2.0 488 Delayed Offer Not Supported", d
        assert "delayed offer" in (call.final.header("warning") or ""), d
        assert "media.rtpengine" in (call.final.header("warning") or ""), d
        assert (await r.peer.options()).msg.status == 200, r.diag()
        assert not r.peer.find(lambda m: m.msg.is_request and m.msg.method == "INVITE"), r.diag()


# =========================================================================== 7. measure

async def test_calls_with_media_per_second_through_the_sbc(procs, tmp_path, test_pki, capsys):
    total, parallel, packets = 100, 10, 5
    eng = RtpEngine(procs, window=400).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        warm = await call_from_teams(r)  # warm-up (TLS connection, first offer): not counted
        await hang_up(r, warm, "teams")
        await until_calls(eng, [], r.diag)
        queue = list(range(total))
        done: list[float] = []
        rtt: list[float] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                t0 = time.perf_counter()
                c = await call_from_teams(r, check=False)
                await c.media(packets)
                await hang_up(r, c, "teams")
                c.teams_sock.close()
                c.pbx_call.rtp.close()
                done.append(time.perf_counter() - t0)

        async def pinger(stop: asyncio.Event) -> None:
            """NG round trips seen by a client beside the SBC while the load runs."""
            async with NgClient(eng.ng_udp) as ng:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    await ng.request({"command": "ping"})
                    rtt.append(time.perf_counter() - t0)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.01):
                            await stop.wait()

        stop = asyncio.Event()
        ping_task = asyncio.create_task(pinger(stop))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(parallel)))
        elapsed = time.perf_counter() - started
        stop.set()
        await ping_task
        await until_calls(eng, [], r.diag)
        assert len(done) == total, r.diag()
        assert not [line for line in r.log_lines() if "level=ERROR" in line], r.diag()
        rtt.sort()
        done.sort()
        # rtpengine's own processing time per command ("Replying to 'offer' ... (elapsed time X sec)")
        work: dict[str, list[float]] = {}
        for name, secs in re.findall(r"Replying to '(offer|answer|delete)' .*\(elapsed time ([\d.]+) sec\)", eng.log()):
            work.setdefault(name, []).append(float(secs))
        assert len(work.get("offer", [])) == total + 1 and len(work.get("delete", [])) == total + 1, r.diag()
        inside = "; ".join(f"{name} median {_q(sorted(v), .5) * 1e3:.3f} ms p99 {_q(sorted(v), .99) * 1e3:.3f} ms"
                           for name, v in sorted(work.items()))
        with capsys.disabled():
            print(f"\n{total} calls Teams->PBX through the SBC ({parallel} in parallel; INVITE/200/ACK, "
                  f"{packets} packets each way, BYE): {elapsed:.2f} s, {total / elapsed:.1f} calls with media/s; "
                  f"call median {_q(done, .5) * 1000:.1f} ms, p99 {_q(done, .99) * 1000:.1f} ms; "
                  f"NG ping beside the SBC: median {_q(rtt, .5) * 1000:.2f} ms, "
                  f"p99 {_q(rtt, .99) * 1000:.2f} ms ({len(rtt)} samples); inside rtpengine: {inside}")


def _q(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.5) - 1))]
