"""Issue 3, "Teams trunk stays Active", end to end: the real SBC process, real mutual TLS on the
Teams side (tests/support/teams_peer.py, one peer with a listener per Teams proxy so sip, sip2,
sip3 are distinct), sipp over UDP for PBX calls and a small asyncio UDP "PBX" where the test
must control the answers to OPTIONS.

1. OPTIONS toward Teams: to each of sip, sip2, sip3 within 1 s of start, then on the interval;
   exact headers; on a connection the SBC opened (SNI = the proxy, the SBC's client certificate).
   With teams.allow_refer the Allow (ours and in our answers) carries REFER.
2. teams.options_503_when_pbx_down: Teams' OPTIONS get 503 while the PBX is down, 200 after.
3. Mutual TLS refusals with the reason in the log: a client certificate without the Microsoft
   name, a client certificate from another CA; outbound: a "Teams" server certificate without
   the Teams names / without sip.pstnhub.microsoft.com -> the call fails over.
4. Failover and recovery: sip refusing connections (down from the first OPTIONS, calls go to
   sip2 without touching sip, back to sip after it answers OPTIONS); sip answering 503 with
   Retry-After 3 (cooling: calls skip it for 3 s, then use it again).
5. PBX health: a PBX that stops answering OPTIONS is marked down, Teams' INVITEs get 503 at once
   (nothing reaches the PBX); after it answers again, calls are relayed again.
6. Carrier mode: tenant FQDNs by Request-URI (Teams -> PBX) and by number prefix / trunk
   (PBX -> Teams); OPTIONS only for the base FQDN.
7. Every peer state change is logged exactly once.

Time is what is under test in places: intervals are 1 s (teams/pbx options_interval 1,
options_timeout 1), and every wait is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from teamsbc import MODEL, __version__
from tests.support.ports import free_port
from tests.support.procs import ProcessManager
from tests.support.sbc import SbcProcess
from tests.support.sipp import SipMessage, Sipp, SippResult, parse_sip_message
from tests.support.teams_peer import Answer, Received, TeamsPeer, uri_of

pytestmark = pytest.mark.e2e

SIP, SIP2, SIP3 = PROXIES = ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com",
                             "sip3.pstnhub.microsoft.com")
EDGE = "sip-du-a-us.pstnhub.microsoft.com"
LOOPBACK = "127.0.0.1"
X_MS_SBC = f"teamsbc/{MODEL}/{__version__}"
USER_AGENT = f"teamsbc/{__version__}"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, INFO"
UK_NATIONAL, UK_E164 = "02071234567", "+442071234567"
FAST = {"options_interval": 1, "options_timeout": 1}


# --------------------------------------------------------------------------- SBC log

def log_lines(sbc: SbcProcess) -> list[str]:
    """stderr lines of the CURRENT SBC process (line-buffered: Python >= 3.9)."""
    return sbc.process.stderr_text().splitlines() if sbc.process else []


def matching(sbc: SbcProcess, pattern: str, start: int = 0) -> list[str]:
    rx = re.compile(pattern)
    return [line for line in log_lines(sbc)[start:] if rx.search(line)]


async def wait_log(sbc: SbcProcess, pattern: str, timeout: float, *, start: int = 0,
                   count: int = 1, diag: Callable[[], str] = lambda: "") -> str:
    """Bounded wait until ``count`` lines from line ``start`` on match ``pattern``; returns
    the last of them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = matching(sbc, pattern, start)
        if len(found) >= count:
            return found[count - 1]
        if loop.time() >= deadline:
            raise AssertionError(f"SBC log: {len(found)} of {count} lines matching {pattern!r} within "
                                 f"{timeout}s\n{diag()}\n{sbc.log()[-8000:]}")
        await asyncio.sleep(0.02)


def health_line(peer: str, state: str, was: str | None = None) -> str:
    """The regex of health.py's change line: "peer X is now STATE (was OLD): reason"."""
    old = was or r"\w+"
    return rf"logger=teamsbc\.health peer {re.escape(peer)} is now {state} \(was {old}\): "


def health_changes(sbc: SbcProcess, peer: str) -> list[tuple[str, str, str]]:
    """(new state, old state, reason) of every logged change of ``peer``, in order."""
    rx = re.compile(rf"logger=teamsbc\.health peer {re.escape(peer)} is now (\w+) \(was (\w+)\): (.*)$")
    return [m.groups() for m in map(rx.search, log_lines(sbc)) if m]  # type: ignore[misc]


async def until(predicate: Callable[[], Any], timeout: float, what: str,
                diag: Callable[[], str] = lambda: "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"no {what} within {timeout}s\n{diag()}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- a UDP "PBX"

@dataclass
class PbxReceived:
    msg: SipMessage
    addr: tuple[str, int]
    at: float


class UdpPbx(asyncio.DatagramProtocol):
    """A PBX trunk on UDP whose OPTIONS answers the test switches on and off. INVITE -> 100 and
    ``invite_code`` (a final non-2xx, ACKed hop-by-hop); ACK recorded; others -> 200."""

    def __init__(self) -> None:
        self.received: list[PbxReceived] = []
        self.answer_options = True
        self.invite_code = 486
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def start(cls, port: int) -> "UdpPbx":
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_datagram_endpoint(cls, local_addr=(LOOPBACK, port))
        return proto

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        text = data.decode(errors="replace")
        if not text.strip():
            return
        start, headers, body = parse_sip_message(text)
        msg = SipMessage(start, headers, body, text, direction="received", transport="UDP")
        self.received.append(PbxReceived(msg, addr, asyncio.get_running_loop().time()))
        if not msg.is_request or msg.method == "ACK":
            return
        if msg.method == "OPTIONS":
            if self.answer_options:
                self.respond(msg, addr, 200, "OK")
        elif msg.method == "INVITE":
            self.respond(msg, addr, 100, "Trying")
            self.respond(msg, addr, self.invite_code, "Busy Here", tag=True)
        else:
            self.respond(msg, addr, 200, "OK", tag=True)

    def respond(self, req: SipMessage, addr, code: int, reason: str, tag: bool = False) -> None:
        to = req.header("to") or ""
        if tag and ";tag=" not in to:
            to += ";tag=" + hashlib.sha1((req.call_id or "").encode()).hexdigest()[:10]
        lines = [f"SIP/2.0 {code} {reason}"] + [f"Via: {v}" for v in req.headers.get("via", [])]
        lines += [f"From: {req.header('from')}", f"To: {to}", f"Call-ID: {req.call_id}",
                  f"CSeq: {req.header('cseq')}", "Content-Length: 0"]
        assert self.transport is not None
        self.transport.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), addr)

    def requests(self, method: str) -> list[PbxReceived]:
        return [r for r in self.received if r.msg.is_request and r.msg.method == method]

    def pings(self) -> list[str]:
        """Call-IDs of the distinct OPTIONS received, in order (retransmissions folded)."""
        out: list[str] = []
        for r in self.requests("OPTIONS"):
            if r.msg.call_id not in out:
                out.append(r.msg.call_id or "")
        return out

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def describe(self) -> str:
        return "--- UDP PBX received ---\n" + "\n".join(
            f"{r.at:.3f} {r.addr} {r.msg.start_line} call_id={r.msg.call_id}" for r in self.received)


# --------------------------------------------------------------------------- the rig

@dataclass
class Trunk:
    sbc: SbcProcess
    peer: TeamsPeer
    ports: dict[str, int]           # Teams name -> the peer listener port it resolves to
    pbx_port: int
    procs: ProcessManager
    tmp_path: Path
    t0: float = 0.0                 # loop time just before the SBC process was started

    def diag(self, *results: SippResult) -> str:
        return ("".join(r.describe() for r in results) + self.peer.describe() + "\n"
                + self.sbc.log()[-10000:])

    def requests(self, method: str, call_id: str | None = None) -> list[Received]:
        return self.peer.find(lambda r: r.msg.is_request and r.msg.method == method
                              and (call_id is None or r.msg.call_id == call_id))

    def at(self, rec: Received) -> str | None:
        """Which Teams proxy (by listener port) an inbound message arrived at."""
        return next((n for n, p in self.ports.items() if p == rec.conn.local_port and n in PROXIES), None)

    def uac(self, *, from_user: str = "01632960123", ruri_user: str = UK_NATIONAL,
            local_port: int | None = None) -> Sipp:
        return Sipp("uac.xml", workdir=self.tmp_path, local_port=local_port or self.pbx_port,
                    remote=(LOOPBACK, self.sbc.pbx_listen_port), procs=self.procs, duration_ms=100,
                    timeout_s=15, keys={"ruri_user": ruri_user, "to_user": ruri_user, "from_user": from_user})

    async def call(self, **kw) -> tuple[SippResult, str, float]:
        """One PBX -> Teams call (sipp uac.xml over UDP) to the end. Returns the result, the
        Call-ID the SBC relayed and the loop time the UAC was started."""
        uac = self.uac(**kw)
        started = asyncio.get_running_loop().time()
        await asyncio.to_thread(uac.start)
        res = await asyncio.to_thread(uac.wait)
        assert res.ok, self.diag(res)
        sent = [m for m in res.messages_sent() if m.is_request and m.method == "INVITE"]
        assert sent, self.diag(res)
        return res, sent[0].call_id or "", started


@contextlib.asynccontextmanager
async def trunk(procs, tmp_path, pki, *, listening: tuple[str, ...] = (*PROXIES, EDGE),
                certs: dict[str, tuple[Path, Path]] | None = None, teams: dict | None = None,
                pbx: dict | None = None, pbx_port: int | None = None) -> AsyncIterator[Trunk]:
    """An SBC whose sip, sip2, sip3 and Teams' edge resolve to four distinct listeners of one
    TeamsPeer (only those in ``listening`` are started). ``teams``/``pbx`` go over the SBC's
    config sections (OPTIONS keep-alive is off unless asked for)."""
    ports = {name: free_port("tcp") for name in (*PROXIES, EDGE)}
    pbx_port = pbx_port or free_port("both")
    cfg: dict[str, Any] = {"teams": {"options_interval": 0, **(teams or {})},
                           "pbx": {"options_interval": 0, **(pbx or {})}}
    sbc = SbcProcess(tmp_path, procs, pki, pbx_port=pbx_port, teams_resolve=dict(ports), extra=cfg)
    peer = TeamsPeer(pki, sbc_port=sbc.teams_port)
    rig = Trunk(sbc, peer, ports, pbx_port, procs, tmp_path)
    try:
        for name in listening:
            cert, key = (certs or {}).get(name, (None, None))
            await peer.listen(ports[name], cert=cert, key=key)
        rig.t0 = asyncio.get_running_loop().time()
        await asyncio.to_thread(sbc.start)
        yield rig
    finally:
        await peer.close()


def is_options(rec: Received) -> bool:
    return rec.msg.is_request and rec.msg.method == "OPTIONS"


# =========================================================================== 1. OPTIONS to Teams

async def test_options_to_each_proxy_at_start_and_on_interval(procs, tmp_path, test_pki):
    async with trunk(procs, tmp_path, test_pki, teams={"options_interval": 1}) as t:
        peer, sbc = t.peer, t.sbc
        me = f"{sbc.fqdn}:{sbc.teams_port}"
        # two OPTIONS to each proxy
        for name in PROXIES:
            await until(lambda: len([r for r in peer.find(is_options) if t.at(r) == name]) >= 2,
                        4, f"two OPTIONS at {name}", t.diag)
        for name in PROXIES:
            first, second = [r for r in peer.find(is_options) if t.at(r) == name][:2]
            d = t.diag()
            assert first.at - t.t0 < 1.0, (name, f"first OPTIONS {first.at - t.t0:.3f}s after start", d)
            assert 0.5 <= second.at - first.at <= 1.5, (name, f"interval {second.at - first.at:.3f}s", d)
            for rec in (first, second):
                m = rec.msg
                assert m.request_uri == f"sip:{name}:5061;transport=tls", d
                assert m.header("contact") == f"<sip:{me};transport=tls>", d
                assert re.fullmatch(rf"<sip:{re.escape(me)}>;tag=[\w.\-]+", m.header("from") or ""), d
                assert m.header("to") == f"<sip:{name}>", d
                assert m.values("allow") == [a.strip() for a in ALLOW.split(",")], d
                assert m.header("x-ms-sbc") == X_MS_SBC, d
                assert m.header("user-agent") == USER_AGENT, d
                assert re.fullmatch(rf"SIP/2\.0/TLS {re.escape(me)};branch=z9hG4bK[\w.\-]+",
                                    m.values("via")[0]), d
                assert len(m.values("via")) == 1, d
                assert m.header("max-forwards") == "70", d
                assert (m.header("cseq") or "").split()[1] == "OPTIONS", d
                # on a connection the SBC opened, to this proxy's listener, SNI = the proxy,
                # presenting the SBC's certificate
                assert rec.direction == "inbound", d
                assert rec.conn.local_port == t.ports[name], d
                assert rec.conn.sni == name, d
                assert sbc.fqdn in rec.conn.peer_names, (rec.conn.peercert, d)
            assert second.conn is first.conn, ("the keep-alive connection was not kept", d)
            assert first.msg.call_id != second.msg.call_id, d
        # three distinct connections, one per proxy, and all answered: nobody marked down
        assert len({r.conn.id for r in peer.find(is_options)}) == 3, t.diag()
        assert not matching(sbc, r"logger=teamsbc\.health peer .* is now"), t.diag()


async def test_allow_refer_in_options_and_answers(procs, tmp_path, test_pki):
    async with trunk(procs, tmp_path, test_pki, teams={"options_interval": 5, "allow_refer": True}) as t:
        rec = await t.peer.wait_for(is_options, timeout=2, what="OPTIONS from the SBC")
        d = t.diag()
        assert rec.msg.values("allow") == [*(a.strip() for a in ALLOW.split(",")), "REFER"], d
        resp = await t.peer.options()
        assert resp.msg.status == 200, t.diag()
        assert "REFER" in resp.msg.values("allow"), t.diag()
    # and without allow_refer: the answer to Teams' OPTIONS hides REFER
    async with trunk(procs, tmp_path / "norefer", test_pki) as t:
        resp = await t.peer.options()
        assert resp.msg.status == 200, t.diag()
        assert resp.msg.values("allow") == [a.strip() for a in ALLOW.split(",")], t.diag()


# =========================================================================== 2. 503 to Teams' OPTIONS

async def test_options_503_while_pbx_down(procs, tmp_path, test_pki):
    pbx_port = free_port("both")
    pbx = await UdpPbx.start(pbx_port)
    pbx.answer_options = False
    try:
        async with trunk(procs, tmp_path, test_pki, pbx_port=pbx_port, pbx=FAST,
                         teams={"options_503_when_pbx_down": True}) as t:
            diag = lambda: t.diag() + pbx.describe()  # noqa: E731
            name = f"pbx {LOOPBACK}:{pbx_port}"
            await wait_log(t.sbc, health_line(name, "down", "up") + "OPTIONS timed out", 3, diag=diag)
            resp = await t.peer.options()
            assert resp.msg.status == 503, diag()
            assert resp.msg.header("retry-after") == "30", diag()
            assert resp.msg.header("x-ms-sbc") == X_MS_SBC, diag()
            assert resp.direction == "outbound", diag()
            pbx.answer_options = True
            await wait_log(t.sbc, health_line(name, "up", "down") + "answered 200", 3, diag=diag)
            resp = await t.peer.options()
            assert resp.msg.status == 200, diag()
            assert resp.msg.header("contact") == f"<sip:{t.sbc.fqdn}:{t.sbc.teams_port};transport=tls>", diag()
            assert not pbx.requests("INVITE"), diag()
            # Teams' OPTIONS are answered by the SBC, never forwarded to the PBX
            assert all((r.msg.header("from") or "").startswith("<sip:teamsbc@")
                       for r in pbx.requests("OPTIONS")), diag()
    finally:
        pbx.close()


# =========================================================================== 3. mutual TLS refusals

async def tls_client(pki, port: int, cert: Path, key: Path, tls_max: ssl.TLSVersion | None):
    """A bare TLS client from a known local port (so the SBC's log line can be matched
    exactly): (local port, (reader, writer) or None, the handshake exception or None)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls_max:
        ctx.maximum_version = tls_max
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    local = free_port("tcp")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            LOOPBACK, port, ssl=ctx, server_hostname=pki.sbc_fqdn, local_addr=(LOOPBACK, local)), 5)
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return local, None, e
    return local, (reader, writer), None


async def refused_after_handshake(conn_rw, options_text: str) -> bytes:
    """Send an OPTIONS on an established TLS connection; return what came back before EOF."""
    reader, writer = conn_rw
    try:
        writer.write(options_text.encode())
        got = await asyncio.wait_for(reader.read(65536), 5)
        rest = got
        while got:
            got = await asyncio.wait_for(reader.read(65536), 5)
            rest += got
        return rest
    except (ssl.SSLError, ConnectionError, OSError):
        return b""
    except asyncio.TimeoutError:
        raise AssertionError("the SBC kept a refused TLS connection open for 5 s") from None
    finally:
        writer.close()


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, None], ids=["tls12", "tls13"])
async def test_inbound_tls_refusals_logged(procs, tmp_path, test_pki, tls_max):
    wrong_chain, wrong_key = test_pki.issue("teams-wrong-name", ["teams.example.net"])
    async with trunk(procs, tmp_path, test_pki) as t:
        sbc = t.sbc
        text, _ = t.peer.options_request()
        # (a) test CA, but no Microsoft name: the TLS handshake completes, then the SBC drops it
        local, rw, err = await tls_client(test_pki, sbc.teams_port, wrong_chain, wrong_key, tls_max)
        assert err is None, (f"handshake with a test-CA certificate failed: {err!r}", t.diag())
        got = await refused_after_handshake(rw, text)
        assert got == b"", (f"the SBC answered a peer without the Teams name: {got!r}", t.diag())
        line = await wait_log(sbc, rf"TLS peer 127\.0\.0\.1:{local} refused: ", 3, diag=t.diag)
        assert line.endswith(f"TLS peer 127.0.0.1:{local} refused: certificate names "
                             "['teams.example.net'] do not include sip.pstnhub.microsoft.com"), t.diag()
        # (b) a certificate from another CA (with the Teams names): refused in the handshake
        local, rw, err = await tls_client(test_pki, sbc.teams_port, test_pki.rogue_fullchain,
                                          test_pki.rogue_key, tls_max)
        if tls_max == ssl.TLSVersion.TLSv1_2:
            assert err is not None, ("TLS 1.2 handshake with a rogue-CA certificate completed", t.diag())
        else:  # TLS 1.3: the client is done before the server checks its certificate
            got = b"" if rw is None else await refused_after_handshake(rw, text)
            assert got == b"", (f"the SBC answered a rogue-CA peer: {got!r}", t.diag())
        line = await wait_log(sbc, rf"TLS handshake from 127\.0\.0\.1:{local} refused: ", 3, diag=t.diag)
        # the rogue chain ends in its own (self-signed) root, which the SBC does not trust
        assert re.search(r"refused: TLS certificate not trusted: self.signed certificate in certificate "
                         r"chain$", line), (line, t.diag())
        # a legitimate peer is still served
        assert (await t.peer.options()).msg.status == 200, t.diag()


async def test_outbound_teams_certificate_checked_and_failed_over(procs, tmp_path, test_pki):
    no_ms = test_pki.issue("teams-no-ms-names", ["teams.example.net"])
    sip2_only = test_pki.issue("teams-sip2-only", [SIP2])
    async with trunk(procs, tmp_path, test_pki, certs={SIP: no_ms, SIP2: sip2_only}) as t:
        res, call_id, _ = await t.call()
        d = t.diag(res)
        invites = t.requests("INVITE", call_id)
        assert [t.at(r) for r in invites] == [SIP3], d
        assert invites[0].msg.request_uri == f"sip:{UK_E164}@{SIP3}:5061;user=phone;transport=tls", d
        # the SBC did open TLS to sip and sip2 (SNI = their names) and said why it refused them
        assert SIP in t.peer.sni_seen and SIP2 in t.peer.sni_seen, d
        assert matching(t.sbc, rf"cannot connect to {re.escape(SIP)}:5061 \(tls\) on the teams leg: "
                        rf"TLS certificate not trusted: Hostname mismatch, certificate is not valid "
                        rf"for '{re.escape(SIP)}'"), d
        assert matching(t.sbc, rf"cannot connect to {re.escape(SIP2)}:5061 \(tls\) on the teams leg: "
                        rf"certificate names \['{re.escape(SIP2)}'\] do not include {re.escape(SIP)}$"), d
        # no SIP message went out on the refused connections
        assert not [r for r in t.peer.received if t.at(r) in (SIP, SIP2)], d


# =========================================================================== 4. failover

async def test_sip_refusing_then_recovering(procs, tmp_path, test_pki):
    async with trunk(procs, tmp_path, test_pki, listening=(SIP2, SIP3, EDGE), teams=FAST) as t:
        sbc = t.sbc
        await wait_log(sbc, health_line(SIP, "down", "up") + "OPTIONS transport failure", 1.5, diag=t.diag)
        down_at = len(log_lines(sbc))
        assert matching(sbc, rf"cannot connect to {re.escape(SIP)}:5061 \(tls\) on the teams leg: "), t.diag()

        res, call_id, started = await t.call()
        d = t.diag(res)
        invites = t.requests("INVITE", call_id)
        assert [t.at(r) for r in invites] == [SIP2], d
        assert invites[0].conn.sni == SIP2, d
        assert invites[0].msg.request_uri == f"sip:{UK_E164}@{SIP2}:5061;user=phone;transport=tls", d
        assert invites[0].at - started < 1.0, (f"INVITE at sip2 after {invites[0].at - started:.3f}s", d)
        # sip was not tried for this call (a try would log a transport failure or a failover with its Call-ID)
        assert not [line for line in log_lines(sbc) if call_id in line
                    and (SIP + ":" in line or "failing over" in line)], d

        await t.peer.listen(t.ports[SIP])
        await wait_log(sbc, health_line(SIP, "up", "down") + "answered 200", 2.5, start=down_at, diag=t.diag)
        res, call_id, _ = await t.call()
        d = t.diag(res)
        invites = t.requests("INVITE", call_id)
        assert [t.at(r) for r in invites] == [SIP], d
        assert invites[0].conn.sni == SIP, d
        # one line per change, however many pings failed or succeeded
        assert [c[:2] for c in health_changes(sbc, SIP)] == [("down", "up"), ("up", "down")], d
        assert not health_changes(sbc, SIP2) and not health_changes(sbc, SIP3), d




@pytest.mark.parametrize("keepalive", [
    pytest.param(False, id="options_off"),
    pytest.param(True, id="options_on"),
])
async def test_sip_503_retry_after_cools_down(procs, tmp_path, test_pki, keepalive):
    async with trunk(procs, tmp_path, test_pki, teams=FAST if keepalive else None) as t:
        sbc, loop = t.sbc, asyncio.get_running_loop()
        t.peer.answers.append(Answer(503, ringing=False, retry_after=3))
        res, call1, _ = await t.call()
        d = t.diag(res)
        inv = t.requests("INVITE", call1)
        assert [t.at(r) for r in inv] == [SIP, SIP2], d
        refused_at = inv[0].at
        assert inv[1].at - refused_at < 0.5, (f"sip2 tried {inv[1].at - refused_at:.3f}s after the 503", d)
        assert health_changes(sbc, SIP) == [("cooling", "up", "503 Service Unavailable, Retry-After 3s")], d

        if keepalive:  # let a keep-alive OPTIONS to sip be answered inside the Retry-After window
            await until(lambda: [r for r in t.peer.find(is_options) if t.at(r) == SIP and r.at > refused_at],
                        1.5, "OPTIONS at sip after the 503", t.diag)
            await asyncio.sleep(0.1)
        res, call2, _ = await t.call()
        d = t.diag(res)
        inv = t.requests("INVITE", call2)
        assert inv[0].at - refused_at < 2.7, ("second call too late to test cooling", d)
        assert [t.at(r) for r in inv] == [SIP2], d

        await asyncio.sleep(max(0.0, refused_at + 3.3 - loop.time()))  # Retry-After is what is tested
        res, call3, _ = await t.call()
        d = t.diag(res)
        assert [t.at(r) for r in t.requests("INVITE", call3)] == [SIP], d
        assert [c[:2] for c in health_changes(sbc, SIP)] == [("cooling", "up"), ("up", "cooling")], d


# =========================================================================== 5. PBX health

async def test_pbx_down_calls_from_teams_get_503_fast(procs, tmp_path, test_pki):
    pbx_port = free_port("both")
    pbx = await UdpPbx.start(pbx_port)
    try:
        async with trunk(procs, tmp_path, test_pki, pbx_port=pbx_port, pbx=FAST) as t:
            diag = lambda: t.diag() + pbx.describe()  # noqa: E731
            name = f"pbx {LOOPBACK}:{pbx_port}"
            loop = asyncio.get_running_loop()
            await until(lambda: pbx.pings(), 2, "OPTIONS at the PBX", diag)
            assert pbx.requests("OPTIONS")[0].at - t.t0 < 1.0, diag()
            # up: a call from Teams is relayed (the PBX answers 486)
            call = await t.peer.invite()
            assert call.status == 486 and len(pbx.requests("INVITE")) == 1, diag()

            pbx.answer_options = False
            stopped = loop.time()
            await wait_log(t.sbc, health_line(name, "down", "up") + "OPTIONS timed out", 3.2, diag=diag)
            assert loop.time() - stopped < 3.2, diag()
            sent = loop.time()
            call = await t.peer.invite(timeout=5)
            took = call.final.at - sent
            assert call.status == 503, diag()
            assert took < 1.0, (f"503 after {took:.3f}s", diag())
            assert call.final.msg.header("retry-after") == "30", diag()
            # Teams fails over to another SBC on a 503 only if no provisional other than 100 came
            assert [p.msg.status for p in call.provisionals if p.msg.status != 100] == [], diag()
            assert call.final.msg.header("x-ms-sbc") == X_MS_SBC, diag()
            assert matching(t.sbc, rf"answered INVITE from .* with 503 Service Unavailable \(PBX "
                            rf"{LOOPBACK}:{pbx_port} is down\) call_id={re.escape(call.call_id)}"), diag()
            # without teams.options_503_when_pbx_down, Teams' OPTIONS still get 200
            assert (await t.peer.options()).msg.status == 200, diag()
            assert len(pbx.requests("INVITE")) == 1, diag()

            pbx.answer_options = True
            await wait_log(t.sbc, health_line(name, "up", "down") + "answered 200", 2.5, diag=diag)
            call = await t.peer.invite()
            assert call.status == 486, diag()
            invites = pbx.requests("INVITE")
            assert len(invites) == 2 and invites[1].msg.call_id == call.call_id, diag()
            assert [c[:2] for c in health_changes(t.sbc, name)] == [("down", "up"), ("up", "down")], diag()
    finally:
        pbx.close()


# =========================================================================== 6. carrier mode

ALPHA, BETA = "alpha.sbc.example.com", "beta.sbc.example.com"


async def test_carrier_mode_tenants(procs, tmp_path, test_pki):
    chain, key = test_pki.issue("carrier", ["sbc.example.com", "*.sbc.example.com"])
    p0, p1, p2 = free_port("both"), free_port("both"), free_port("both")
    tenants = {ALPHA: {"pbx": f"{LOOPBACK}:{p1}", "numbers": ["+442079"]},
               BETA: {"pbx": f"{LOOPBACK}:{p2}", "numbers": ["+441632"]}}
    async with trunk(procs, tmp_path, test_pki, pbx_port=p0,
                     teams={"certificate": str(chain), "private_key": str(key), "tenants": tenants,
                            "options_interval": 1}) as t:
        sbc = t.sbc
        port = sbc.teams_port

        # (b) PBX -> Teams: the tenant by the caller's number prefix (from the shared trunk p0),
        # or by the trunk it came from; else the base FQDN
        cases = [("02079460000", p0, ALPHA), ("01632960000", p0, BETA), ("01134960000", p0, sbc.fqdn),
                 ("01632960000", p1, ALPHA)]
        for caller, local, fqdn in cases:
            res, call_id, _ = await t.call(from_user=caller, local_port=local)
            d = t.diag(res)
            inv = t.requests("INVITE", call_id)
            assert len(inv) == 1, d
            m = inv[0].msg
            assert re.fullmatch(rf"sip:\+[0-9]+@{re.escape(fqdn)}:{port};transport=tls;x-tsbc-c=[\w\-]+",
                                uri_of(m.header("contact") or "")), (caller, local, fqdn, d)
            assert m.values("record-route")[0] == f"<sip:{fqdn}:{port};transport=tls;lr;r2=on>", (fqdn, d)
            e164 = "+44" + caller[1:]
            assert uri_of(m.header("from") or "") == f"sip:{e164}@{fqdn};user=phone", (fqdn, d)
            assert sbc.fqdn in inv[0].conn.peer_names and f"*.{sbc.fqdn}" in inv[0].conn.peer_names, d

        # (a) Teams -> PBX: the tenant FQDN in the Request-URI picks the trunk; the answer toward
        # Teams carries that tenant FQDN (Contact, Record-Route)
        for fqdn, trunk_port in ((ALPHA, p1), (BETA, p2), (sbc.fqdn, p0)):
            uas = Sipp("uas.xml", workdir=tmp_path, local_port=trunk_port, procs=procs, timeout_s=15)
            await asyncio.to_thread(uas.start)
            tenant_peer = TeamsPeer(test_pki, sbc_port=port, sbc_fqdn=fqdn)  # SNI / verified name = tenant
            try:
                call = await tenant_peer.invite(to="+14255550100")
                d = tenant_peer.describe() + t.diag()
                assert call.status == 200, d
                m = call.final.msg
                assert re.fullmatch(rf"sip:(\+?[0-9]+@)?{re.escape(fqdn)}:{port};transport=tls;x-tsbc-c=[\w\-]+",
                                    uri_of(m.header("contact") or "")), (fqdn, d)
                assert f"<sip:{fqdn}:{port};transport=tls;lr;r2=on>" in m.values("record-route"), (fqdn, d)
                assert (await call.bye()).msg.status == 200, d
            finally:
                await tenant_peer.close()
            res = await asyncio.to_thread(uas.wait)
            d = res.describe() + t.diag()
            assert res.ok, d
            assert res.received("INVITE")[0].request_uri == f"sip:+14255550100@{LOOPBACK}:{trunk_port};user=phone", d

        # (c) OPTIONS only for the base FQDN
        options = t.peer.find(is_options)
        assert {t.at(r) for r in options} == set(PROXIES), t.diag()
        for rec in options:
            assert rec.msg.header("contact") == f"<sip:{sbc.fqdn}:{port};transport=tls>", t.diag()
            assert uri_of(rec.msg.header("from") or "") == f"sip:{sbc.fqdn}:{port}", t.diag()
            assert rec.msg.values("via")[0].startswith(f"SIP/2.0/TLS {sbc.fqdn}:{port};"), t.diag()


# =========================================================================== 7. health visible

async def test_each_health_change_logged_once(procs, tmp_path, test_pki):
    """sip: refusing (down) -> listening (up) -> refusing again (down); the PBX: silent (down)
    -> answering (up). Several pings in each state; one line per change."""
    pbx_port = free_port("both")
    pbx = await UdpPbx.start(pbx_port)
    pbx.answer_options = False
    try:
        async with trunk(procs, tmp_path, test_pki, listening=(SIP2, SIP3, EDGE), teams=FAST,
                         pbx_port=pbx_port, pbx=FAST) as t:
            sbc, peer = t.sbc, t.peer
            name = f"pbx {LOOPBACK}:{pbx_port}"
            diag = lambda: t.diag() + pbx.describe()  # noqa: E731
            refused = rf"cannot connect to {re.escape(SIP)}:5061 \(tls\) on the teams leg: "
            # several failed pings each (the 3rd PBX ping is sent when the 2nd times out)
            await wait_log(sbc, refused, 3, count=3, diag=diag)
            await until(lambda: len(pbx.pings()) >= 3, 3.5, "3 unanswered pings at the PBX", diag)
            assert matching(sbc, health_line(name, "down", "up") + "OPTIONS timed out"), diag()
            # sip comes up, the PBX answers: several answered pings each
            await peer.listen(t.ports[SIP])
            pbx.answer_options = True
            answering_from = len(pbx.pings())
            at_sip = lambda: [r for r in peer.find(is_options) if t.at(r) == SIP]  # noqa: E731
            await until(lambda: len(at_sip()) >= 2, 3, "2 OPTIONS at sip", diag)
            await until(lambda: len(pbx.pings()) >= answering_from + 2, 3, "2 answered pings", diag)
            # sip goes away again: one more "down" line, and none for the failed ping after it
            await peer.stop_listening(t.ports[SIP])
            await wait_log(sbc, health_line(SIP, "down", "up"), 2.5, count=2, diag=diag)
            failed = len(matching(sbc, refused))
            await wait_log(sbc, refused, 2, count=failed + 1, diag=diag)
            await asyncio.sleep(0.05)
            d = diag()
            assert [c[:2] for c in health_changes(sbc, SIP)] == [
                ("down", "up"), ("up", "down"), ("down", "up")], d
            assert [c[:2] for c in health_changes(sbc, name)] == [("down", "up"), ("up", "down")], d
            assert not health_changes(sbc, SIP2) and not health_changes(sbc, SIP3), d
    finally:
        pbx.close()
