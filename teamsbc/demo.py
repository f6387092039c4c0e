"""`teamsbc demo`: the whole thing working on loopback, in one command, in a few seconds.

It generates a lab PKI in a temporary directory, starts the SBC in this process
(`teamsbc.app.serve` with a generated config on free loopback ports), a simulated Teams
(mutual TLS with a "Teams" certificate from the lab CA; UPPER CASE header names, its edge
proxy in Record-Route, an api-du host as Contact, SRTP offers, like the real one) and a
simulated PBX (SIP over UDP on 127.0.0.2 when available), then places one call each way
(INVITE, 100, 180, 200, ACK, BYE, 200) and prints the SIP ladder of each leg with the headers
that matter: Request-URI, Via, Contact, Record-Route, Route, X-MS-SBC and the SDP m= line.

Exit code 0 when both calls completed, 1 otherwise. Nothing here is needed by the SBC: the
simulated peers are deliberately tiny and independent of teamsbc's SIP code.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import re
import secrets
import shutil
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEMO_FQDN = "sbc.demo.teamsbc.test"
TEAMS_PROXIES = ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"]
EDGE = "sip-du-a-us.pstnhub.microsoft.com"
EDGE_RR = f"<sip:{EDGE}:5061;transport=tls;lr>"
TEAMS_CONTACT = "<sip:api-du-b-euwe.pstnhub.microsoft.com:443;x-i=9f8e7d6c;x-c=5b4a;transport=tls>"
TEAMS_VIA_HOST = "52.114.132.46:5061"
TEAMS_UA = "Microsoft.PSTNHub.SIPProxy v.2024.1.1.1 i.EUWE.1 (teamsbc demo)"
WAIT = 5.0          # every wait for a message is bounded by this
TOTAL = 30.0        # and the whole demo by this
SHOWN = ("via", "contact", "record-route", "route", "x-ms-sbc")
log = logging.getLogger("teamsbc.demo")


class DemoError(Exception):
    pass


# ============================================================================ tiny SIP
@dataclass
class Msg:
    start: str
    headers: list[tuple[str, str]]   # names as on the wire
    body: str
    raw: str

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        return self.start.split()[0] if self.is_request else self.cseq[1]

    @property
    def status(self) -> int:
        return 0 if self.is_request else int(self.start.split()[1])

    @property
    def cseq(self) -> tuple[int, str]:
        n, m = (self.get("cseq") or "0 X").split()
        return int(n), m.upper()

    def get(self, name: str) -> str | None:
        v = self.all(name)
        return v[0] if v else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        out = []
        for k, v in self.headers:
            if k.lower() == name:
                out += [x.strip() for x in re.split(r",(?![^<]*>)", v) if x.strip()] \
                    if name in ("via", "record-route", "route") else [v]
        return out


def parse(raw: str) -> Msg:
    head, _, body = raw.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.append((k.strip(), v.strip()))
    return Msg(lines[0], headers, body, raw)


def tag_of(value: str | None) -> str | None:
    m = re.search(r";\s*tag=([^;\s>]+)\s*$", value or "")
    return m.group(1) if m else None


def uri_of(value: str) -> str:
    return value[value.index("<") + 1: value.index(">")] if "<" in value else value.split(";")[0]


def frames(buf: bytearray) -> list[str]:
    """Cut complete messages (Content-Length framing) off the front of a stream buffer."""
    out = []
    while True:
        while buf[:2] == b"\r\n":
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out
        m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", bytes(buf[:end]))
        total = end + 4 + (int(m.group(1)) if m else 0)
        if len(buf) < total:
            return out
        out.append(bytes(buf[:total]).decode(errors="replace"))
        del buf[:total]


def build(start: str, headers: list[tuple[str, str]], body: str = "", upper: bool = False) -> str:
    hs = list(headers)
    if body:
        hs.append(("Content-Type", "application/sdp"))
    hs.append(("Content-Length", str(len(body.encode()))))
    lines = [start] + [f"{k.upper() if upper else k}: {v}" for k, v in hs]
    return "\r\n".join(lines) + "\r\n\r\n" + body


def response_to(req: Msg, code: int, reason: str, *, to_tag: str | None = None,
                extra: list[tuple[str, str]] = (), body: str = "", upper: bool = False,
                record_route: list[str] | None = None) -> str:
    to = req.get("to") or ""
    if to_tag and tag_of(to) is None:
        to += f";tag={to_tag}"
    hs = [("Via", v) for v in req.all("via")]
    hs += [("Record-Route", r) for r in (record_route or [])]
    hs += [("From", req.get("from") or ""), ("To", to), ("Call-ID", req.get("call-id") or ""),
           ("CSeq", req.get("cseq") or "")]
    return build(f"SIP/2.0 {code} {reason}", hs + list(extra), body, upper)


def sdp(addr: str, port: int, srtp: bool) -> str:
    lines = ["v=0", f"o=- {secrets.randbelow(10**9)} 1 IN IP4 {addr}", "s=-", f"c=IN IP4 {addr}", "t=0 0",
             f"m=audio {port} {'RTP/SAVP' if srtp else 'RTP/AVP'} 8 0 101"]
    if srtp:
        lines.append("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" + secrets.token_urlsafe(30)[:40] + "|2^31")
        lines.append("a=rtcp-mux")
    lines += ["a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000",
              "a=sendrecv", ""]
    return "\r\n".join(lines)


# ============================================================================ the recording
@dataclass
class Wire:
    at: float
    leg: str          # "teams" | "pbx"
    to_sbc: bool
    msg: Msg


class Tape:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.wires: list[Wire] = []
        self.cond = asyncio.Condition()

    async def add(self, leg: str, to_sbc: bool, raw: str) -> Msg:
        msg = parse(raw)
        async with self.cond:
            self.wires.append(Wire(time.monotonic() - self.t0, leg, to_sbc, msg))
            self.cond.notify_all()
        return msg

    async def wait(self, leg: str, pred, what: str) -> Msg:
        def find():
            return next((w.msg for w in self.wires if w.leg == leg and not w.to_sbc and pred(w.msg)), None)
        try:
            async with self.cond:
                await asyncio.wait_for(self.cond.wait_for(find), WAIT)
        except asyncio.TimeoutError:
            raise DemoError(f"no {what} on the {leg} leg within {WAIT:g}s") from None
        return find()  # type: ignore[return-value]


def final_for(call_id: str, cseq: int, method: str):
    return lambda m: (not m.is_request and m.get("call-id") == call_id and m.cseq == (cseq, method)
                      and m.status >= 200)


# ============================================================================ simulated Teams
class TeamsSim:
    """Teams Direct Routing in miniature: a TLS listener for the SBC's connections (answers on
    the connection a request came on) and its own connection to the SBC for its calls."""

    def __init__(self, tape: Tape, pki, sbc_port: int):
        self.tape, self.sbc_port = tape, sbc_port
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (self.server_ctx, self.client_ctx):
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2   # what Teams speaks
            ctx.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))
            ctx.load_verify_locations(cafile=str(pki.ca_cert))
            ctx.verify_mode = ssl.CERT_REQUIRED   # mutual TLS both ways
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.out: asyncio.StreamWriter | None = None
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.tls_seen: list[str] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.server_ctx)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader, writer) -> None:
        self._note_tls(writer, "connection the SBC opened")
        await self._read(reader, writer)

    def _note_tls(self, writer, who: str) -> None:
        obj = writer.get_extra_info("ssl_object")
        peer = writer.get_extra_info("peercert") or {}
        names = [v for k, v in peer.get("subjectAltName", ()) if k == "DNS"]
        self.tls_seen.append(f"{who}: {obj.version()} {obj.cipher()[0]}, the SBC presented {', '.join(names)}")
        self.writers.append(writer)

    async def _read(self, reader, writer) -> None:
        buf = bytearray()
        try:
            while data := await reader.read(65536):
                buf += data
                for raw in frames(buf):
                    msg = await self.tape.add("teams", False, raw)
                    if msg.is_request:
                        await self._serve(msg, writer)
        except (ConnectionError, ssl.SSLError, OSError):
            pass

    async def send(self, writer, text: str) -> None:
        await self.tape.add("teams", True, text)
        writer.write(text.encode())

    async def _serve(self, req: Msg, writer) -> None:
        """Teams as UAS (the call from the PBX): 100, 180, 200 + SDP; BYE -> 200."""
        m = req.method
        if m == "ACK":
            return
        if m == "INVITE":
            tag = secrets.token_hex(4)
            rr = [EDGE_RR] + req.all("record-route")   # Teams' edge proxy on top
            await self.send(writer, response_to(req, 100, "Trying", upper=True))
            await asyncio.sleep(0.05)
            await self.send(writer, response_to(req, 180, "Ringing", to_tag=tag, upper=True, record_route=rr,
                                                extra=[("Contact", TEAMS_CONTACT), ("Server", TEAMS_UA)]))
            await asyncio.sleep(0.1)
            await self.send(writer, response_to(req, 200, "OK", to_tag=tag, upper=True, record_route=rr,
                                                extra=[("Contact", TEAMS_CONTACT), ("Server", TEAMS_UA),
                                                       ("Allow", "INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY")],
                                                body=sdp("52.113.0.10", 50012, srtp=True)))
        else:
            await self.send(writer, response_to(req, 200, "OK", upper=True))

    async def call(self, to: str, from_: str) -> dict:
        """Teams as UAC: INVITE the PBX number through the SBC, ACK the 200 along the route set,
        then BYE; on Teams' own connection to the SBC."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", self.sbc_port, ssl=self.client_ctx, server_hostname=DEMO_FQDN), WAIT)
        self._note_tls(writer, "connection Teams opened")
        task = asyncio.get_running_loop().create_task(self._read(reader, writer))
        self.tasks.add(task)
        call_id, tag = f"{secrets.token_hex(8)}-teams", secrets.token_hex(4)
        local = f"<sip:{from_}@{TEAMS_PROXIES[0]}:5061;user=phone>;tag={tag}"
        remote = f"<sip:{to}@{DEMO_FQDN}:{self.sbc_port};user=phone>"
        ruri = f"sip:{to}@{DEMO_FQDN}:{self.sbc_port};user=phone;transport=tls"

        def request(method: str, uri: str, cseq: int, to_hdr: str, route: list[str], body: str = "") -> str:
            hs = [("Via", f"SIP/2.0/TLS {TEAMS_VIA_HOST};branch=z9hG4bK{secrets.token_hex(6)}"),
                  ("Max-Forwards", "70"), ("From", local), ("To", to_hdr), ("Call-ID", call_id),
                  ("CSeq", f"{cseq} {method}")]
            hs += [("Route", r) for r in route]
            if method == "INVITE":
                hs += [("Record-Route", EDGE_RR), ("Contact", TEAMS_CONTACT), ("Supported", "timer"),
                       ("Session-Expires", "3600"), ("Min-SE", "300"),
                       ("Allow", "INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY"), ("User-Agent", TEAMS_UA)]
            return build(f"{method} {uri} SIP/2.0", hs, body, upper=True)

        await self.send(writer, request("INVITE", ruri, 1, remote, [], sdp("52.113.0.10", 50020, srtp=True)))
        final = await self.tape.wait("teams", final_for(call_id, 1, "INVITE"), "final answer to Teams' INVITE")
        if final.status != 200:
            raise DemoError(f"the PBX-bound call from Teams was answered {final.start}")
        route = [r for r in reversed(final.all("record-route")) if EDGE not in r]
        target = uri_of(final.get("contact") or "")
        to_hdr = final.get("to") or remote
        await self.send(writer, request("ACK", target, 1, to_hdr, route))
        await asyncio.sleep(0.3)
        await self.send(writer, request("BYE", target, 2, to_hdr, route))
        bye = await self.tape.wait("teams", final_for(call_id, 2, "BYE"), "answer to Teams' BYE")
        return {"call_id": call_id, "invite": final.status, "bye": bye.status}

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.server:
            self.server.close()
        for w in self.writers:
            w.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass


# ============================================================================ simulated PBX
class PbxSim(asyncio.DatagramProtocol):
    """A PBX trunk over UDP: answers INVITE with 100, 180, 200 + SDP (plain RTP); calls out."""

    def __init__(self, tape: Tape, host: str, sbc: tuple[str, int]):
        self.tape, self.host, self.sbc = tape, host, sbc
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.acks = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:
        asyncio.get_running_loop().create_task(self._received(data.decode(errors="replace"), addr))

    async def _received(self, raw: str, addr) -> None:
        msg = await self.tape.add("pbx", False, raw)
        if msg.is_request:
            await self._serve(msg, addr)

    async def send(self, text: str, addr) -> None:
        await self.tape.add("pbx", True, text)
        assert self.transport is not None
        self.transport.sendto(text.encode(), addr)

    @property
    def me(self) -> str:
        return f"{self.host}:{self.port}"

    async def _serve(self, req: Msg, addr) -> None:
        m = req.method
        if m == "ACK":
            self.acks += 1
            return
        if m == "INVITE":
            tag = secrets.token_hex(4)
            contact = [("Contact", f"<sip:{req.start.split()[1].split(':')[1].split('@')[0]}@{self.me}>")]
            rr = req.all("record-route")
            await self.send(response_to(req, 100, "Trying"), addr)
            await asyncio.sleep(0.05)
            await self.send(response_to(req, 180, "Ringing", to_tag=tag, record_route=rr, extra=contact), addr)
            await asyncio.sleep(0.1)
            await self.send(response_to(req, 200, "OK", to_tag=tag, record_route=rr, extra=contact,
                                        body=sdp(self.host, 40000, srtp=False)), addr)
        else:
            await self.send(response_to(req, 200, "OK"), addr)

    async def call(self, to: str, from_: str) -> dict:
        call_id, tag = f"{secrets.token_hex(8)}@{self.host}", secrets.token_hex(4)
        local = f"<sip:{from_}@{self.host}>;tag={tag}"
        sbc = f"{self.sbc[0]}:{self.sbc[1]}"

        def request(method: str, uri: str, cseq: int, to_hdr: str, route: list[str], body: str = "") -> str:
            hs = [("Via", f"SIP/2.0/UDP {self.me};branch=z9hG4bK{secrets.token_hex(6)};rport"),
                  ("Max-Forwards", "70"), ("From", local), ("To", to_hdr), ("Call-ID", call_id),
                  ("CSeq", f"{cseq} {method}")]
            hs += [("Route", r) for r in route]
            if method == "INVITE":
                hs += [("Contact", f"<sip:{from_}@{self.me}>"), ("User-Agent", "demo-pbx/1.0")]
            return build(f"{method} {uri} SIP/2.0", hs, body)

        await self.send(request("INVITE", f"sip:{to}@{sbc}", 1, f"<sip:{to}@{sbc}>", [],
                                sdp(self.host, 40010, srtp=False)), self.sbc)
        final = await self.tape.wait("pbx", final_for(call_id, 1, "INVITE"), "final answer to the PBX's INVITE")
        if final.status != 200:
            raise DemoError(f"the Teams-bound call from the PBX was answered {final.start}")
        route = list(reversed(final.all("record-route")))
        target = uri_of(final.get("contact") or "")
        to_hdr = final.get("to") or ""
        await self.send(request("ACK", target, 1, to_hdr, route), self.sbc)
        await asyncio.sleep(0.3)
        await self.send(request("BYE", target, 2, to_hdr, route), self.sbc)
        bye = await self.tape.wait("pbx", final_for(call_id, 2, "BYE"), "answer to the PBX's BYE")
        return {"call_id": call_id, "invite": final.status, "bye": bye.status}

    def close(self) -> None:
        if self.transport:
            self.transport.close()


# ============================================================================ printing
def _short(value: str) -> str:
    """Long opaque parameters shortened for the eye (x-tsbc-c carries the PBX Contact)."""
    value = re.sub(r"(x-tsbc-c=)([A-Za-z0-9_-]{10})[A-Za-z0-9_-]+", r"\1\2...", value)
    return re.sub(r"(branch=z9hG4bK[-.]?)([0-9a-fA-F.-]{8})[0-9a-fA-F.-]+", r"\1\2...", value)


def ladder(tape: Tape, call_id: str, leg: str) -> list[str]:
    left, right = ("PBX", "SBC") if leg == "pbx" else ("SBC", "Teams")
    out = []
    for w in tape.wires:
        if w.leg != leg or w.msg.get("call-id") != call_id:
            continue
        from_left = (leg == "pbx") == w.to_sbc  # pbx leg: PBX->SBC is to_sbc; teams leg: SBC->Teams is not
        arrow = f"{left} ------> {right}" if from_left else f"{left} <------ {right}"
        m = w.msg
        first = m.start if m.is_request else f"{m.start}  ({m.cseq[1]})"
        out.append(f"  {w.at * 1000:6.0f} ms  {arrow}  {_short(first.replace(' SIP/2.0', ''))}")
        pad = " " * 13
        for name in SHOWN:
            for k, v in m.headers:
                if k.lower() == name:
                    out.append(f"{pad}{k}: {_short(v)}")
        mline = next((x for x in m.body.split("\r\n") if x.startswith("m=")), None)
        if mline:
            proto = mline.split()[2] if len(mline.split()) > 2 else "?"
            out.append(f"{pad}SDP {mline}   [{proto}{', SRTP' if 'SAVP' in proto else ', plain RTP'}]")
    return out


# ============================================================================ the demo
def _free_port(kind: int, host: str = "127.0.0.1") -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        try:
            with socket.socket(socket.AF_INET, other) as s2:
                s2.bind((host, port))
            return port
        except OSError:
            continue
    raise DemoError("no free loopback port")


def _pbx_host() -> str:
    """127.0.0.2 makes the PBX side visibly another host (Linux routes all of 127/8 to lo)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


async def run(out=print, verbose: bool = False) -> int:
    from . import config as cfg
    from .app import serve
    from .labpki import ensure_lab_pki

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="teamsbc-demo-") as tmp:
        pki = ensure_lab_pki(Path(tmp) / "pki", DEMO_FQDN, TEAMS_PROXIES + [EDGE])
        tape = Tape()
        pbx_host = _pbx_host()
        sbc_tls, sbc_udp = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
        teams = TeamsSim(tape, pki, sbc_tls)
        await teams.start()
        pbx = PbxSim(tape, pbx_host, ("127.0.0.1", sbc_udp))
        await pbx.start()
        data = {
            "sbc": {"fqdn": DEMO_FQDN},
            "teams": {"listen": f"127.0.0.1:{sbc_tls}", "certificate": str(pki.sbc_fullchain),
                      "private_key": str(pki.sbc_key), "trusted_ca": str(pki.ca_cert),
                      "proxies": TEAMS_PROXIES,
                      "resolve": {n: f"127.0.0.1:{teams.port}" for n in TEAMS_PROXIES + [EDGE]},
                      "options_interval": 0},
            "pbx": {"listen": f"127.0.0.1:{sbc_udp}", "transport": "udp", "address": pbx.me,
                    "options_interval": 0},
            "numbers": {"country_code": "44"},
        }
        config = cfg.from_dict(data, source="<teamsbc demo>", base=Path(tmp))
        out("teamsbc demo: everything on loopback, in this process")
        out(f"  SBC    {DEMO_FQDN}: Teams side TLS 127.0.0.1:{sbc_tls}, PBX side UDP 127.0.0.1:{sbc_udp}")
        out(f"  Teams  simulated sip/sip2/sip3 + edge {EDGE} at 127.0.0.1:{teams.port} (teams.resolve)")
        out(f"  PBX    simulated UDP trunk at {pbx.me}; numbers.country_code 44")
        out(f"  PKI    lab CA + SBC and \"Teams\" certificates in {pki.directory} (deleted at exit)")
        rtpengine = shutil.which("rtpengine")
        out("  media  " + (f"rtpengine found at {rtpengine}: with media.rtpengine set the SBC anchors media "
                           "(SRTP/SDES toward Teams, plain RTP toward the PBX); this demo shows signalling only"
                           if rtpengine else "signalling only (rtpengine is not installed: SDP passes unchanged)"))
        out("")
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.get_running_loop().create_task(serve(config, ready=ready, stop=stop))
        results: list[tuple[str, str, dict | None, str | None]] = []
        try:
            waiter = asyncio.get_running_loop().create_task(ready.wait())
            await asyncio.wait({waiter, server}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
            if not ready.is_set():
                waiter.cancel()
                why = repr(server.exception()) if server.done() else f"not ready within {WAIT:g}s"
                raise DemoError(f"the SBC did not start: {why}")
            for title, place in (
                    ("Call 1: PBX -> SBC -> Teams (the PBX dials 020 7946 0123; Teams gets +442079460123)",
                     lambda: pbx.call("02079460123", "01632960001")),
                    ("Call 2: Teams -> SBC -> PBX (a Teams user calls the PBX extension's number)",
                     lambda: teams.call("+441632960001", "+12065550123"))):
                try:
                    res = await place()
                    results.append((title, res["call_id"], res, None))
                except (DemoError, OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                    results.append((title, "", None, str(e) or type(e).__name__))
                await asyncio.sleep(0.1)
        except DemoError as e:
            out(f"FAILED: {e}")
        finally:
            stop.set()
            try:
                await asyncio.wait_for(server, 8)
            except (asyncio.TimeoutError, Exception) as e:  # noqa: BLE001 - report, never hang
                if not isinstance(e, asyncio.TimeoutError):
                    out(f"SBC stopped with an error: {e!r}")
                server.cancel()
            await teams.close()
            pbx.close()

        failed = 0
        for title, call_id, res, err in results:
            out("=" * 100)
            out(title)
            if err:
                failed += 1
                out(f"  FAILED: {err}")
                continue
            out(f"  Call-ID {call_id}: INVITE {res['invite']}, BYE {res['bye']}")
            for leg, name in (("pbx", "PBX leg (UDP)"), ("teams", "Teams leg (TLS, mutual)")):
                out("")
                out(f"  -- {name} " + "-" * (80 - len(name)))
                out("\n".join(ladder(tape, call_id, leg)))
            out("")
        if not results:
            failed = 1
            out("the SBC did not start")
        out("=" * 100)
        out("TLS on the Teams leg:")
        for line in dict.fromkeys(teams.tls_seen):
            out(f"  {line}")
        out("")
        out("What to notice:")
        out("  * Toward Teams every Contact, Record-Route and Via carries the SBC FQDN, never an IP (Teams")
        out("    answers 403 to an IP). The PBX's Contact travels inside x-tsbc-c, so Teams' in-dialog")
        out("    requests find the PBX without state in the SBC.")
        out("  * Two Record-Route entries (RFC 5658, r2=on): the FQDN one faces Teams, the IP one the PBX.")
        out("  * Teams' header names arrive in UPPER CASE; its Contact (api-du...:443) is not a SIP listener,")
        out("    so the ACK and BYE follow the Route set through Teams' edge proxy.")
        out("  * X-MS-SBC appears on the Teams leg only; numbers become +E.164 toward Teams.")
        out("  * The SDP m= line: without rtpengine the SDP passes unchanged, so Teams sees the PBX's plain")
        out("    RTP/AVP (real Teams answers 488) and the PBX sees Teams' RTP/SAVP. With media.rtpengine the")
        out("    SBC rewrites both: RTP/SAVP + a=crypto toward Teams, RTP/AVP toward the PBX.")
        out("")
        elapsed = time.monotonic() - started
        out(f"{len(results) - failed} of 2 calls completed in {elapsed:.1f} s" +
            ("" if not failed else " -- see FAILED above"))
        return 0 if not failed and len(results) == 2 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                            format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    else:
        logging.getLogger("teamsbc").setLevel(logging.ERROR)
    try:
        return asyncio.run(asyncio.wait_for(run(verbose=args.verbose), TOTAL))
    except asyncio.TimeoutError:
        print(f"teamsbc demo: did not finish within {TOTAL:g}s", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def register(subparsers) -> argparse.ArgumentParser:
    """Add `teamsbc demo` to teamsbc's argparse sub-parsers."""
    p = subparsers.add_parser("demo", help="show the SBC working on loopback: one call each way, "
                                            "with the SIP ladder of both legs",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("-v", "--verbose", action="store_true", help="also show the SBC's debug log on stderr")
    p.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teamsbc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
