"""Issue 17 "done when": two teamsbc boxes as one service (tests/support/ha.py: network
namespaces, two teamsbc processes on one config, two rtpengines sharing calls through Redis,
PostgreSQL for CDRs, keepalived moving two floating addresses). A call set up through box A
survives the loss of A's rtpengine and then of box A itself:

1. Teams -> PBX through A, real SRTP/RTP both ways (20 ms packets).
2. kill -9 of A's rtpengine: keepalived moves the media address to B, whose rtpengine has the
   call from Redis; packets flow again (the audio lost is measured, both directions). A
   re-INVITE from Teams still goes through A: its pool finds the owner dead and moves the call
   to B's rtpengine; the answer keeps the same address and port.
3. Box A dies (everything kill -9, link down): the SIP address and its TLS listener move to B;
   Teams' BYE reaches B, which routes it by the sealed Contact to the PBX.
4. The CDR row in PostgreSQL is complete: set up and answered by A, ended by B, with media.
Then the other direction: a PBX call through A with its media on A's rtpengine; box A dies
(link down, kill -9): media flows again through B (measured), the PBX hangs up through B, and
B closes the row.

Numbers (failover times, audio lost) are printed and written to ha-numbers.json in the test's
directory; they are measurements, not assertions (docs/ha.md quotes them).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest

from tests.support.ha import HaPair, root_udp_port
from tests.support.procs import wait_for
from tests.support.sipp import Sipp
from tests.support.srtp import CryptoAttr, SrtpContext, parse_crypto_line, parse_rtp, rtp_packet
from tests.support.teams_peer import TeamsPeer

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]

PTIME = 0.02


@pytest.fixture
async def ha(procs, tmp_path, test_pki):
    pair = HaPair(tmp_path, procs, test_pki)
    try:
        await asyncio.to_thread(pair.start)
        peer = TeamsPeer(test_pki, sbc_host=pair.sip_vip, sbc_port=5061)
        await peer.listen(pair.peer_port, host=pair.lan.root_ip)
        try:
            yield pair, peer
        finally:
            await peer.close()
    finally:
        await asyncio.to_thread(pair.close)


# --------------------------------------------------------------------------- media
@dataclass
class Flow:
    """One direction of a call's media: a sender every 20 ms, a receiver that notes when each
    sequence number arrived (and checks SRTP authentication where there is SRTP)."""
    name: str
    tx: socket.socket
    rx: socket.socket
    protect: SrtpContext | None = None
    unprotect: SrtpContext | None = None
    dest: tuple[str, int] | None = None
    sent: dict[int, float] = field(default_factory=dict)      # seq -> send time
    got: dict[int, float] = field(default_factory=dict)       # seq -> arrival time
    bad: int = 0

    def send_loop(self, stop: threading.Event) -> None:
        ssrc, seq, ts = secrets.randbits(32), 1000, secrets.randbits(31)
        next_t = time.monotonic()
        while not stop.is_set():
            pkt = rtp_packet(seq=seq, ts=ts, ssrc=ssrc, pt=8, payload=bytes([seq & 0xFF]) * 160)
            if self.protect is not None:
                pkt = self.protect.protect(pkt)
            self.sent[seq] = time.monotonic()
            try:
                self.tx.sendto(pkt, self.dest)
            except OSError:
                pass
            seq, ts = seq + 1, ts + 160
            next_t += PTIME
            time.sleep(max(0.0, next_t - time.monotonic()))

    def recv_loop(self, stop: threading.Event) -> None:
        self.rx.settimeout(0.05)
        while not stop.is_set():
            try:
                data, _ = self.rx.recvfrom(4096)
            except socket.timeout:
                continue
            try:
                plain = self.unprotect.unprotect(data) if self.unprotect is not None else data
                self.got.setdefault(parse_rtp(plain).seq, time.monotonic())
            except Exception:  # noqa: BLE001 - counted: a packet that does not authenticate
                self.bad += 1

    def after(self, t: float) -> list[int]:
        return [s for s, at in self.got.items() if at > t]

    def lost_ms_between(self, t0: float, t1: float) -> float:
        """Audio lost: packets sent in [t0, t1] that never arrived, times 20 ms."""
        sent = [s for s, at in self.sent.items() if t0 <= at <= t1]
        return round(sum(1 for s in sent if s not in self.got) * PTIME * 1000)

    def resumed_after(self, t: float) -> float | None:
        """ms from `t` to the first packet sent after `t` that arrived."""
        arrived = [self.sent[s] for s in self.got if self.sent.get(s, 0) > t]
        return round((min(arrived) - t) * 1000) if arrived else None


class Media:
    def __init__(self, flows: list[Flow]):
        self.flows = flows
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, args=(self.stop,), daemon=True)
                        for fl in flows for f in (fl.send_loop, fl.recv_loop)]

    def start(self) -> "Media":
        for t in self.threads:
            t.start()
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)

    async def flowing_after(self, t: float, n: int = 10, timeout: float = 20) -> None:
        """Each direction delivered `n` packets sent after `t` (bounded wait)."""
        await asyncio.to_thread(wait_for, lambda: all(len(f.after(t)) >= n for f in self.flows),
                                timeout, what=f"media flowing again after t={t:.3f}")


def udp(host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, root_udp_port()))
    return s


def teams_sdp(ip: str, port: int, key: str) -> str:
    return "\r\n".join(["v=0", f"o=- 1 0 IN IP4 {ip}", "s=session", f"c=IN IP4 {ip}", "t=0 0",
                        f"m=audio {port} RTP/SAVP 8 0 101", "a=rtcp-mux",
                        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}",
                        "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000",
                        "a=rtpmap:101 telephone-event/8000", "a=sendrecv", ""])


def sdp_address(sdp: str) -> tuple[str, int]:
    return (re.search(r"^c=IN IP4 (\S+)", sdp, re.M).group(1),
            int(re.search(r"^m=audio (\d+)", sdp, re.M).group(1)))


def is_req(method: str):
    return lambda r: r.msg.is_request and r.msg.method == method


# --------------------------------------------------------------------------- the test
async def test_call_through_a_survives_its_rtpengine_then_box_a(ha, tmp_path):
    pair, peer = ha
    numbers: dict[str, object] = {}
    root = pair.lan.root_ip
    teams_rtp, pbx_rtp = udp(root), udp(root)
    raw = os.urandom(30)
    key_text = base64.b64encode(raw).decode()
    uas = Sipp("uas_reinvite_any_box.xml", workdir=tmp_path / "pbx", local_ip=root, local_port=pair.pbx_port,
               transport="u1", procs=pair.procs, timeout_s=120,
               keys={"media_ip": root, "media_port": str(pbx_rtp.getsockname()[1])})
    await asyncio.to_thread(uas.start)

    # 1. Teams -> PBX through box A, SRTP toward the SBC, RTP toward the PBX
    call = await peer.invite(to="+14255550100", from_="+12065550123",
                             sdp=teams_sdp(root, teams_rtp.getsockname()[1], key_text))
    assert call.status == 200, peer.describe() + pair.diag()
    to_teams = call.final.msg.body if isinstance(call.final.msg.body, str) else call.final.msg.body.decode()
    assert sdp_address(to_teams)[0] == pair.media_vip, to_teams
    sbc_key = parse_crypto_line(next(l for l in to_teams.splitlines() if l.startswith("a=crypto:")))
    pbx_got = await asyncio.to_thread(lambda: wait_for(lambda: _invite_sdp(uas), 10, what="INVITE SDP at the PBX"))
    assert sdp_address(pbx_got)[0] == pair.media_vip, pbx_got
    teams_to_pbx = Flow("teams->pbx", teams_rtp, pbx_rtp, protect=SrtpContext(CryptoAttr(1, "AES_CM_128_HMAC_SHA1_80", raw[:16], raw[16:])),
                        dest=sdp_address(to_teams))
    pbx_to_teams = Flow("pbx->teams", pbx_rtp, teams_rtp, unprotect=SrtpContext(sbc_key), dest=sdp_address(pbx_got))
    media = Media([teams_to_pbx, pbx_to_teams]).start()
    try:
        t_start = time.monotonic()
        await media.flowing_after(t_start)
        cid = call.call_id

        # 2. A's rtpengine dies; the media address moves to B (keepalived's check)
        t_kill = await asyncio.to_thread(pair.kill, "a", "rtpengine")
        await asyncio.to_thread(wait_for, lambda: pair.lan.holder(pair.media_vip) == "b", 15,
                                what="the media address on box b")
        numbers["media_address_moved_ms"] = round((time.monotonic() - t_kill) * 1000)
        await media.flowing_after(t_kill)
        t_ok = time.monotonic()
        for f in (teams_to_pbx, pbx_to_teams):
            numbers[f"rtpengine_kill_{f.name}_resumed_after_ms"] = f.resumed_after(t_kill)
            numbers[f"rtpengine_kill_{f.name}_audio_lost_ms"] = f.lost_ms_between(t_kill, t_ok)
        # a re-INVITE through A (its SIP address did not move): A's pool moves the call to B
        assert pair.lan.holder(pair.sip_vip) == "a"
        re_final = await call.reinvite(teams_sdp(root, teams_rtp.getsockname()[1], key_text))
        assert re_final.msg.status == 200, peer.describe() + pair.diag()
        re_sdp = re_final.msg.body if isinstance(re_final.msg.body, str) else re_final.msg.body.decode()
        assert sdp_address(re_sdp) == sdp_address(to_teams), re_sdp     # same address and port
        assert f"call {cid}: rtpengine udp:{pair.boxes['a'].ip}:2223" in pair.boxes["a"].log("teamsbc") \
            and "moved to" in pair.boxes["a"].log("teamsbc"), pair.diag()

        # 3. box A dies: the SIP address and its TLS listener move to B
        t_box = await asyncio.to_thread(pair.kill_box, "a")
        await asyncio.to_thread(wait_for, lambda: pair.lan.holder(pair.sip_vip) == "b", 15,
                                what="the SIP address on box b")
        numbers["sip_address_moved_ms"] = round((time.monotonic() - t_box) * 1000)
        await _reconnect(peer)
        ping = await peer.options()
        numbers["sip_answered_by_b_ms"] = round((time.monotonic() - t_box) * 1000)
        assert ping.msg.status == 200
        await media.flowing_after(t_box)
        for f in (teams_to_pbx, pbx_to_teams):
            numbers[f"box_death_{f.name}_audio_lost_ms"] = f.lost_ms_between(t_box, time.monotonic())
        assert teams_to_pbx.bad == 0 and pbx_to_teams.bad == 0

        # Teams hangs up through B
        final = await call.bye()
        assert final.msg.status == 200, peer.describe() + pair.diag()
    finally:
        media.close()
    res = await asyncio.to_thread(uas.wait)
    assert res.ok, res.describe()
    bye = res.received("BYE")[0]
    assert any(f"{pair.sip_vip}:5060" in v for v in bye.values("via")), bye

    # 4. the CDR row in PostgreSQL: set up and answered through A, ended through B, with media
    def row():
        r = pair.pg.rows(f"SELECT status, answer_time IS NOT NULL, end_time IS NOT NULL, ended_by, "
                         f"rtp_packets FROM calls WHERE call_id = '{cid}'")
        return r if r and r[0][2] == "t" and r[0][4] else None
    rows = await asyncio.to_thread(wait_for, row, 15, what="the complete CDR row")
    assert len(rows) == 1 and rows[0][:4] == ["200", "t", "t", "teams"], rows
    assert int(rows[0][4]) > 0, rows
    numbers["cdr_row"] = rows[0]
    (tmp_path / "ha-numbers.json").write_text(json.dumps(numbers, indent=1))
    print("\nHA numbers:", json.dumps(numbers))


async def test_pbx_call_through_a_survives_box_a_with_its_media(ha, tmp_path):
    """The PBX calls through A, media anchored on A's rtpengine; box A dies (link down, kill
    -9): both addresses move to B, media flows again through B's rtpengine, and the PBX hangs
    up through B."""
    pair, peer = ha
    root = pair.lan.root_ip
    teams_rtp, pbx_rtp = udp(root), udp(root)
    raw = os.urandom(30)
    from tests.support.teams_peer import Answer
    peer.default_answer = Answer(sdp=teams_sdp(root, teams_rtp.getsockname()[1], base64.b64encode(raw).decode()))
    uac = Sipp("uac.xml", workdir=tmp_path / "pbx", local_ip=root, local_port=pair.pbx_port,
               transport="u1", procs=pair.procs, timeout_s=60, duration_ms=9000,
               remote=(pair.sip_vip, 5060),
               keys={"ruri_user": "02071234567", "to_user": "02071234567", "from_user": "01632960123",
                     "media_ip": root, "media_port": str(pbx_rtp.getsockname()[1])})
    await asyncio.to_thread(uac.start)
    invite = await peer.wait_for(is_req("INVITE"), what="INVITE through box a")
    await peer.wait_for(is_req("ACK"), what="ACK")
    to_teams = invite.msg.body if isinstance(invite.msg.body, str) else invite.msg.body.decode()
    sbc_key = parse_crypto_line(next(l for l in to_teams.splitlines() if l.startswith("a=crypto:")))
    pbx_got = await asyncio.to_thread(lambda: wait_for(lambda: _response_sdp(uac), 10, what="200 SDP at the PBX"))
    assert sdp_address(to_teams)[0] == pair.media_vip and sdp_address(pbx_got)[0] == pair.media_vip
    teams_to_pbx = Flow("teams->pbx", teams_rtp, pbx_rtp, dest=sdp_address(to_teams),
                        protect=SrtpContext(CryptoAttr(1, "AES_CM_128_HMAC_SHA1_80", raw[:16], raw[16:])))
    pbx_to_teams = Flow("pbx->teams", pbx_rtp, teams_rtp, unprotect=SrtpContext(sbc_key), dest=sdp_address(pbx_got))
    media = Media([teams_to_pbx, pbx_to_teams]).start()
    numbers: dict[str, object] = {}
    try:
        await media.flowing_after(time.monotonic())
        await asyncio.to_thread(wait_for, lambda: pair.pg.rows(
            f"SELECT id FROM calls WHERE call_id = '{invite.msg.call_id}' AND answer_time IS NOT NULL"),
            15, what="box a's CDR row of the answered call")
        assert pair.lan.holder(pair.media_vip) == "a" and pair.lan.holder(pair.sip_vip) == "a"
        t_box = await asyncio.to_thread(pair.kill_box, "a")
        await media.flowing_after(t_box)
        t_ok = time.monotonic()
        numbers["box_death_media_address_holder"] = pair.lan.holder(pair.media_vip)
        for f in (teams_to_pbx, pbx_to_teams):
            numbers[f"box_death_{f.name}_resumed_after_ms"] = f.resumed_after(t_box)
            numbers[f"box_death_{f.name}_audio_lost_ms"] = f.lost_ms_between(t_box, t_ok)
        assert teams_to_pbx.bad == 0 and pbx_to_teams.bad == 0
        bye = await peer.wait_for(is_req("BYE"), timeout=30, what="the PBX's BYE through box b")
    finally:
        media.close()
    res = await asyncio.to_thread(uac.wait)
    assert res.ok, res.describe() + pair.diag()
    assert bye.msg.call_id == invite.msg.call_id
    assert pair.lan.holder(pair.sip_vip) == "b"
    rows = await asyncio.to_thread(wait_for, lambda: [r for r in pair.pg.rows(
        f"SELECT ended_by, rtp_packets FROM calls WHERE call_id = '{invite.msg.call_id}' AND end_time IS NOT NULL")],
        15, what="the CDR row closed by box b")
    assert len(rows) == 1 and rows[0][0] == "pbx" and int(rows[0][1] or 0) > 0, rows
    (tmp_path / "ha-numbers.json").write_text(json.dumps(numbers, indent=1))
    print("\nHA numbers (box death, media on A):", json.dumps(numbers))


def _response_sdp(uac: Sipp) -> str | None:
    from tests.support.sipp import parse_message_log
    try:
        text = uac.message_file.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for m in parse_message_log(text):
        if m.direction == "received" and not m.is_request and m.status == 200 and m.body:
            return m.body if isinstance(m.body, str) else m.body.decode()
    return None


def _invite_sdp(uas: Sipp) -> str | None:
    from tests.support.sipp import parse_message_log
    try:
        text = uas.message_file.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for m in parse_message_log(text):
        if m.direction == "received" and m.is_request and m.method == "INVITE":
            return m.body if isinstance(m.body, str) else m.body.decode()
    return None


async def _reconnect(peer: TeamsPeer) -> None:
    """Teams' next requests open a new connection to the (moved) address."""
    if peer._out is not None:
        await peer._out.close()
    peer._out = None
