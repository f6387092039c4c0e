"""Issue 16 items 2, 3, 4 and 6 end to end: the PBX behaviours real trunks have, played by sipp
(tests/sipp/*.xml, a SIP stack nobody here wrote) against the real SBC process, the Python Teams
peer (mutual TLS) and, where media is anchored, a real rtpengine with real RTP/SRTP.

2. Delayed offer: the PBX's INVITE has no SDP. The SBC offers toward Teams itself (SRTP, the
   codecs of media.pbx_codecs), puts Teams' SDP as an offer into the 200 for the PBX and takes
   the PBX's answer from its ACK; the ACK reaches Teams without SDP. Audio flows both ways (every
   packet arrives, SRTP authenticates), a re-INVITE from Teams afterwards works and media flows
   again; the call ends with rtpengine empty. An ACK without the answer ends the call on both
   legs (BYE to each, media deleted).
3. 100rel, both directions: a PBX calling with Require: 100rel gets Teams' 180 reliably and its
   PRACK answered by the SBC, while Teams sees no 100rel and no PRACK; a PBX answering Teams with
   reliable provisionals is PRACKed by the SBC, Teams sees an ordinary 180, and Teams' later BYE
   reaches the PBX with a CSeq above the SBC's PRACK (its answer goes back with Teams' own).
4. Ringback: with pbx.early_media ringback the PBX gets Teams' 180 and not the 183 with SDP that
   follows (which stops some PBXs' ringback); a 183 with SDP that comes first is real early media
   and passes; with pass (the default) both reach the PBX.
6. UPDATE without SDP and INFO from the PBX are answered by the SBC, never relayed to Teams:
   200 for UPDATE; INFO gets 405 without media.info_dtmf, and with it the digit reaches Teams as
   RFC 4733 telephone-event packets (SRTP) played by rtpengine, then 200.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from teamsbc.media.ng import NgClient
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import ProcessManager
from tests.support.rtpengine import PBX_IP, TEAMS_IP, RtpEngine
from tests.support.sbc import SbcProcess
from tests.support.sipp import Sipp, SippResult
from tests.support.srtp import CryptoAttr, SrtpContext, is_rtcp, parse_crypto_line, parse_rtp
from tests.support.teams_peer import Answer, TeamsPeer, tag_of
from tests.test_e2e_media import teams_key
from tests.test_e2e_transfer import answering_with
from tests.test_media_e2e import (MediaSocket, Stream, assert_same_packets, attr_lines, m_line,
                                  media_address, new_key, pbx_sdp, teams_offer_sdp)

pytestmark = pytest.mark.e2e

MEDIA = {"interfaces": {"teams": "pub", "pbx": "priv"}, "pbx_codecs": ["PCMA", "PCMU"],
         "ping_interval": 0.5, "timeout": 1.0}
UK_NATIONAL = "02071234567"
WAIT = 10.0


@dataclass
class Rig:
    sbc: SbcProcess
    peer: TeamsPeer
    pbx_port: int
    procs: ProcessManager
    tmp_path: Path
    engine: RtpEngine | None = None
    sockets: list[MediaSocket] = field(default_factory=list)

    def diag(self, *sipps: Sipp) -> str:
        parts = [self.peer.describe()]
        parts += [s.result.describe() if s.result else f"(sipp {s.name} still running)" for s in sipps]
        if self.engine is not None:
            parts.append(f"--- rtpengine ---\n{self.engine.log()[-3000:]}")
        parts.append(self.sbc.log()[-12000:])
        return "\n".join(parts)

    async def socket(self, host: str) -> MediaSocket:
        sock = await MediaSocket.open(host)
        self.sockets.append(sock)
        return sock

    def sipp(self, scenario: str, *, uas: bool = False, keys: dict[str, Any] | None = None, **kw: Any) -> Sipp:
        remote = None if uas else ("127.0.0.1", self.sbc.pbx_listen_port)
        base = {} if uas else {"ruri_user": UK_NATIONAL, "to_user": UK_NATIONAL}
        return Sipp(scenario, workdir=self.tmp_path, local_port=self.pbx_port, remote=remote,
                    keys={**base, **(keys or {})}, procs=self.procs, timeout_s=30, **kw)


@contextlib.asynccontextmanager
async def rig(procs, tmp_path, pki, *, anchored: bool = False, **sections: dict) -> AsyncIterator[Rig]:
    """The SBC (with rtpengine when `anchored`), the Teams peer; `sections` go into the config."""
    engine = RtpEngine(procs).start() if anchored else None
    peer_port, pbx_port = free_port("tcp"), free_port("both")
    extra = {k: dict(v) for k, v in sections.items()}
    if engine is not None:
        extra["media"] = {**MEDIA, "rtpengine": [engine.ng_udp], **extra.get("media", {})}
    sbc = SbcProcess(tmp_path, procs, pki, pbx_port=pbx_port, pbx_transport="udp",
                     teams_resolve={name: peer_port for name in TEAMS_NAMES}, extra=extra)
    peer = TeamsPeer(pki, sbc_port=sbc.teams_port)
    r = Rig(sbc, peer, pbx_port, procs, tmp_path, engine)
    try:
        await peer.listen(peer_port)
        await asyncio.to_thread(sbc.start)
        yield r
    finally:
        await peer.close()
        for sock in r.sockets:
            sock.close()


async def finished(sipp: Sipp) -> SippResult:
    return await asyncio.to_thread(sipp.wait)


async def rtpengine_calls(engine: RtpEngine) -> list[str]:
    async with NgClient(engine.ng_udp) as ng:
        return list((await ng.request({"command": "list"})).get("calls", []))


async def collect_from(sock: MediaSocket, count: int) -> tuple[list[bytes], tuple[str, int]]:
    """`count` RTP packets and the address they came from (rtpengine's port for that side)."""
    packets, source = [], None
    async with asyncio.timeout(WAIT):
        while len(packets) < count:
            data, addr = await sock.queue.get()
            if not data or is_rtcp(data) or data[0] >> 6 != 2:
                continue
            packets.append(data)
            source = addr
    return packets, source


async def paced(sock: MediaSocket, stream: Stream, count: int, to: tuple[str, int]) -> None:
    """`count` packets, one per packet time (20 ms), like a real endpoint: rtpengine 10.5 drops
    what sits in its receive queue beyond 50 packets."""
    batch = stream.batch(count)
    for packet in batch:
        sock.send(packet, to)
        await asyncio.sleep(0.02)


# =========================================================================== 2. delayed offer
async def both_ways(teams: MediaSocket, pbx: MediaSocket, *, teams_tx: Stream, teams_rx: SrtpContext,
                    to_rtpengine_from_teams: tuple[str, int]) -> None:
    """Teams -> PBX first (the PBX learns rtpengine's port from where its packets come), then
    PBX -> Teams; every packet arrives once with its payload, SRTP authenticates."""
    await paced(teams, teams_tx, 50, to_rtpengine_from_teams)
    at_pbx, rtpengine_pbx_side = await collect_from(pbx, 50)
    assert_same_packets([parse_rtp(p) for p in at_pbx], teams_tx)
    pbx_tx = Stream(secrets.randbits(32), 8)
    await paced(pbx, pbx_tx, 50, rtpengine_pbx_side)
    at_teams = await teams.collect(50, timeout=WAIT)
    assert_same_packets([parse_rtp(teams_rx.unprotect(p)) for p in at_teams], pbx_tx)


async def test_delayed_offer_from_the_pbx_with_media_both_ways_and_a_reinvite(procs, tmp_path, test_pki):
    async with rig(procs, tmp_path, test_pki, anchored=True) as r:
        teams_sock, pbx_sock = await r.socket(TEAMS_IP), await r.socket(PBX_IP)
        keys: dict[int, CryptoAttr] = {}
        r.peer.answers.append(Answer(200, sdp=answering_with(teams_sock, keys)))
        uac = r.sipp("uac_delayed_offer.xml", keys={"sdp_ip": PBX_IP, "sdp_port": pbx_sock.port, "ack_sdp": "yes"})
        await asyncio.to_thread(uac.start)
        invite = await r.peer.wait_for(lambda m: m.msg.is_request and m.msg.method == "INVITE", WAIT, "INVITE")
        ack = await r.peer.wait_for(lambda m: m.msg.is_request and m.msg.method == "ACK", WAIT, "ACK")
        d = r.diag()
        # the SBC's offer toward Teams: SRTP with one AES_CM_128_HMAC_SHA1_80 key, the PBX codecs
        offer = invite.msg.body
        assert m_line(offer)[2] == "RTP/SAVP" and m_line(offer)[3:] == ["8", "0", "101"], (offer, d)
        assert len(attr_lines(offer, "crypto")) == 1, d
        assert ack.msg.body == "" and ack.msg.header("content-type") is None, d
        call = r.peer.calls[invite.msg.call_id]
        rtpengine_key = parse_crypto_line(attr_lines(offer, "crypto")[0])
        await both_ways(teams_sock, pbx_sock, teams_tx=Stream(secrets.randbits(32), 8, SrtpContext(keys[rtpengine_key.tag])),
                        teams_rx=SrtpContext(rtpengine_key), to_rtpengine_from_teams=media_address(offer))

        # a re-INVITE from Teams afterwards: an ordinary offer, media again
        key_text, key = teams_key(1)
        k32, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
        final = await call.reinvite(teams_offer_sdp(teams_sock.port, key80=key_text, key32=k32, session=2))
        assert final.msg.status == 200, r.diag(uac)
        answer = final.msg.body
        await both_ways(teams_sock, pbx_sock, teams_tx=Stream(secrets.randbits(32), 8, SrtpContext(key)),
                        teams_rx=SrtpContext(parse_crypto_line(attr_lines(answer, "crypto")[0])),
                        to_rtpengine_from_teams=media_address(answer))
        assert (await call.bye()).msg.status == 200, r.diag(uac)
        res = await finished(uac)
        d = r.diag(uac)
        assert res.ok, d
        ok = res.received(200)[0]
        assert ok.header("content-type") == "application/sdp" and m_line(ok.body)[2] == "RTP/AVP", d
        assert media_address(ok.body)[0] == PBX_IP and not attr_lines(ok.body, "crypto"), d
        assert [m.body for m in res.received(183) + res.received(180)] == [""] * len(res.received(183) + res.received(180))
        assert await rtpengine_calls(r.engine) == [], d


async def test_delayed_offer_whose_ack_brings_no_answer_ends_both_legs(procs, tmp_path, test_pki):
    async with rig(procs, tmp_path, test_pki, anchored=True) as r:
        teams_sock = await r.socket(TEAMS_IP)
        r.peer.answers.append(Answer(200, sdp=answering_with(teams_sock, {})))
        uac = r.sipp("uac_delayed_offer.xml", keys={"sdp_ip": PBX_IP, "sdp_port": 9, "ack_sdp": "no"})
        await asyncio.to_thread(uac.start)
        res = await finished(uac)
        d = r.diag(uac)
        assert res.ok, d   # the PBX got a BYE from the SBC (the scenario waits for it) and said 200
        invite = r.peer.find(lambda m: m.msg.is_request and m.msg.method == "INVITE")[0].msg
        for method in ("ACK", "BYE"):
            rec = await r.peer.wait_for(lambda m, x=method: m.msg.is_request and m.msg.method == x
                                        and m.msg.call_id == invite.call_id, WAIT, method)
            assert rec.msg.header("x-ms-sbc"), d
        assert r.peer.calls[invite.call_id].ended, d
        (bye,) = res.received("BYE")      # in Teams' place: From = the 200's To, tag and all
        assert tag_of(bye.header("from")) == tag_of(res.received(200)[0].header("to")), d
        assert tag_of(bye.header("to")) == tag_of(res.received(200)[0].header("from")), d
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while await rtpengine_calls(r.engine):
            assert loop.time() < deadline, r.diag(uac)
            await asyncio.sleep(0.05)


# =========================================================================== 3. 100rel
async def test_pbx_requiring_100rel_calls_teams(procs, tmp_path, test_pki):
    async with rig(procs, tmp_path, test_pki) as r:
        uac = r.sipp("uac_100rel.xml", duration_ms=200)
        res = await asyncio.to_thread(uac.run)
        d = r.diag(uac)
        assert res.ok, d   # its 180 was reliable (RSeq, Require: 100rel) and its PRACK answered
        r180 = res.received(180)[0]
        assert r180.header("require") == "100rel" and int(r180.header("rseq")) >= 1, d
        prack_ok = [m for m in res.received(200) if m.method == "PRACK"]
        assert len(prack_ok) == 1, d
        invite = r.peer.find(lambda m: m.msg.is_request and m.msg.method == "INVITE")[0].msg
        assert "100rel" not in ",".join(invite.values("require") + invite.values("supported")).lower(), d
        assert not r.peer.find(lambda m: m.msg.is_request and m.msg.method == "PRACK"), d


async def test_pbx_answering_teams_with_reliable_provisionals(procs, tmp_path, test_pki):
    async with rig(procs, tmp_path, test_pki) as r:
        uas = r.sipp("uas_100rel.xml", uas=True)
        await asyncio.to_thread(uas.start)
        call = await r.peer.invite(to="+441632960100")
        d = r.diag(uas)
        assert call.status == 200, d
        (r180,) = [p.msg for p in call.provisionals if p.msg.status == 180]
        assert r180.header("require") is None and r180.header("rseq") is None, d
        final = await call.bye()
        assert final.msg.status == 200 and final.msg.header("cseq") == "2 BYE", r.diag(uas)
        res = await finished(uas)
        d = r.diag(uas)
        assert res.ok, d
        (prack,) = res.received("PRACK")
        assert prack.header("rack") == "1 1 INVITE" and prack.header("cseq") == "2 PRACK", d
        (bye,) = res.received("BYE")
        assert bye.header("cseq") == "3 BYE", d   # after the SBC's PRACK in Teams' dialog


# =========================================================================== 4. ringback
@pytest.mark.parametrize("mode, ringing, expected", [
    ("pass", True, [(180, False), (183, True)]),
    ("ringback", True, [(180, False)]),
    ("ringback", False, [(183, True)]),
], ids=["pass", "ringback", "real-early-media"])
async def test_early_media_toward_the_pbx(procs, tmp_path, test_pki, mode, ringing, expected):
    async with rig(procs, tmp_path, test_pki, pbx={"early_media": mode}) as r:
        sock = await r.socket(TEAMS_IP)
        r.peer.answers.append(Answer(ringing=ringing, progress=True, sdp=pbx_sdp(sock.port, addr=TEAMS_IP)))
        uac = r.sipp("uac.xml", duration_ms=100)
        res = await asyncio.to_thread(uac.run)
        d = r.diag(uac)
        assert res.ok, d
        got = [(m.status, bool(m.body)) for m in res.messages_received() if m.status in (180, 181, 182, 183)]
        assert got == expected, d


# =========================================================================== 6. UPDATE and INFO
def alaw(pcm: int) -> int:
    """16-bit linear to G.711 A-law (the classic segment search of ITU-T G.711)."""
    mask = 0xD5 if pcm >= 0 else 0x55
    pcm = (pcm if pcm >= 0 else -pcm - 1) >> 3
    for seg, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)):
        if pcm <= end:
            return ((seg << 4) | ((pcm >> 1 if seg < 2 else pcm >> seg) & 0x0F)) ^ mask
    return 0x7F ^ mask


def pcma_tone(path: Path, hz: int = 440, seconds: int = 5) -> None:
    """Raw PCMA, what sipp's rtp_stream sends as it is: a sine."""
    path.write_bytes(bytes(alaw(int(8000 * math.sin(2 * math.pi * hz * i / 8000))) for i in range(8000 * seconds)))


async def first_event(sock: MediaSocket, rx: SrtpContext, uac: Sipp) -> int | None:
    """The RFC 4733 event code of the first telephone-event packet Teams gets, or None when the
    call ended without one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        try:
            data, _ = await asyncio.wait_for(sock.queue.get(), 0.5)
        except asyncio.TimeoutError:
            if uac.process is not None and uac.process.poll() is not None and sock.queue.empty():
                return None
            continue
        if is_rtcp(data) or not data or data[0] >> 6 != 2:
            continue
        pkt = parse_rtp(rx.unprotect(data))
        if pkt.payload_type == 101:
            return pkt.payload[0]
    return None


@pytest.mark.parametrize("info_dtmf", [False, True], ids=["info-405", "info-dtmf-rfc4733"])
async def test_update_and_info_from_the_pbx_are_answered_here(procs, tmp_path, test_pki, info_dtmf):
    async with rig(procs, tmp_path, test_pki, anchored=info_dtmf,
                   **({"media": {"info_dtmf": True}} if info_dtmf else {})) as r:
        sock = await r.socket(TEAMS_IP)
        # (without rtpengine the SDP goes through as it is: a plain one, at our socket)
        r.peer.answers.append(Answer(200, sdp=answering_with(sock, {}) if info_dtmf else pbx_sdp(sock.port, addr=TEAMS_IP)))
        uac = r.sipp("uac_update_info.xml")
        pcma_tone(uac.dir / "tone.pcma")
        await asyncio.to_thread(uac.start)
        event = None
        if info_dtmf:
            invite = await r.peer.wait_for(lambda m: m.msg.is_request and m.msg.method == "INVITE", WAIT, "INVITE")
            rx = SrtpContext(parse_crypto_line(attr_lines(invite.msg.body, "crypto")[0]))
            event = await first_event(sock, rx, uac)
        res = await finished(uac)
        d = r.diag(uac)
        assert res.ok, d
        assert not r.peer.find(lambda m: m.msg.is_request and m.msg.method in ("UPDATE", "INFO")), d
        (upd,) = [m for m in res.received(200) if m.method == "UPDATE"]
        assert upd.header("session-expires") == "1800;refresher=uac", d
        info_answer = [m for m in res.messages_received() if m.method == "INFO" and not m.is_request]
        assert [m.status for m in info_answer] == [200 if info_dtmf else 405], d
        if info_dtmf:
            assert event == 5, d     # RFC 4733 event code of the digit 5
        else:
            assert "INFO" not in info_answer[0].header("allow"), d
