"""Issue 16 item 1 end to end: transfers with REFER (`teams.allow_refer: true`, Microsoft's
"option 2") through the real SBC process, a real rtpengine, the Python Teams peer (mutual TLS,
SRTP with SDES keys) and baresip as the PBX's transferee (a SIP stack nobody here wrote).

Teams calls the PBX user (baresip answers), then sends REFER into that dialog:
- baresip gets it with Refer-To and Referred-By exactly as Teams wrote them, answers 202 (the
  202 reaches Teams with the SBC's FQDN Contact), NOTIFYs "100 Trying";
- baresip's new INVITE (through the SBC, its outbound proxy) reaches Teams with the Refer-To URI
  as its Request-URI, x-* parameters and all, and the Referred-By Teams sent (baresip does not
  copy it: the SBC puts it back), with the SBC's FQDN Contact;
- Teams' 180 for the new leg reaches baresip (its CALL_RINGING event); Teams answers, baresip
  NOTIFYs "200 OK" (message/sipfrag, FQDN Contact), Teams BYEs the old leg;
- media flows on the new leg both ways: baresip's tone arrives at Teams as SRTP that
  authenticates with rtpengine's key and decodes to the tone; Teams' packets reach baresip
  (its own RTP counters when the leg ends).
Both targets: a Teams user (`sip:sip.pstnhub.microsoft.com;x-m=...;x-t=...`, no user part) and
a PSTN number (`sip:+E164@sip.pstnhub.microsoft.com;user=phone`). The default (`allow_refer:
false`) keeps REFER out of the Allow Teams sees, so Teams transfers by itself.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.support.baresip import TONE_HZ, Baresip
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import ProcessManager
from tests.support.rtpengine import TEAMS_IP, RtpEngine
from tests.support.sbc import SbcProcess
from tests.support.sipp import SipMessage
from tests.support.srtp import CryptoAttr, SrtpContext, parse_crypto_line, parse_rtp, rtp_packet
from tests.support.teams_peer import Answer, Received, TeamsPeer, uri_of
from tests.test_media_e2e import MediaSocket, attr_lines, media_address, new_key, teams_answer_sdp, teams_offer_sdp

pytestmark = pytest.mark.e2e

PBX_USER = "+441632960100"          # the PBX user Teams calls, then transfers
TEAMS_CALLER = "+12065550123"
MRI_URI = ("sip:sip.pstnhub.microsoft.com;x-m=8:orgid:7de185bd-d73d-48d2-886f-ac10e28ed1ca;"
           "x-t=8ab232fc-d5cc-4d06-86d5-647a233e39bd")
PSTN_URI = "sip:+14255550100@sip.pstnhub.microsoft.com;user=phone"
# Teams' Referred-By: the transferor's MRI, tenant, thread and a long x-tt token (~400 chars)
REFERRED_BY = ("<sip:sip.pstnhub.microsoft.com;x-m=8:orgid:41d82c67-721b-4125-9e81-6acc8371e010;"
               "x-t=8ab232fc-d5cc-4d06-86d5-647a233e39bd;x-ti=9f6d6b2b-9c3a-4e87-97b6-2ad03bfd7024;"
               "x-tt=" + "aHR0cHM6Ly9hcGktZHUtYi1ldXdlLnBzdG5odWIubWljcm9zb2Z0LmNvbS92MS9uZ2MvY2Fs" * 3
               + "bG5vdGlmaWNhdGlvbj9kY2k9MDU1NDQwNmM5ODk5NGVhNjg1ZDZlY2ZmMmZkMTc0NzM%3D>")
MEDIA = {"interfaces": {"teams": "pub", "pbx": "priv"}, "pbx_codecs": ["PCMA", "PCMU"],
         "ping_interval": 0.5, "timeout": 1.0}
WAIT = 10.0


@dataclass
class Rig:
    sbc: SbcProcess
    peer: TeamsPeer
    pbx: Baresip
    engine: RtpEngine

    def diag(self) -> str:
        return "\n".join([self.peer.describe(), self.pbx.describe(),
                          f"--- rtpengine ---\n{self.engine.log()[-3000:]}", self.sbc.log()[-12000:]])


@contextlib.asynccontextmanager
async def rig(procs: ProcessManager, tmp_path: Path, pki, allow_refer: bool = True) -> AsyncIterator[Rig]:
    engine = RtpEngine(procs).start()
    peer_port, pbx_port = free_port("tcp"), free_port("both")
    sbc = SbcProcess(tmp_path, procs, pki, pbx_port=pbx_port, pbx_transport="udp",
                     teams_resolve={name: peer_port for name in TEAMS_NAMES},
                     extra={"teams": {"allow_refer": allow_refer},
                            "media": {**MEDIA, "rtpengine": [engine.ng_udp]}})
    pbx = Baresip(procs, tmp_path, user=PBX_USER, sip_port=pbx_port,
                  outbound=("127.0.0.1", sbc.pbx_listen_port))
    peer = TeamsPeer(pki, sbc_port=sbc.teams_port)
    try:
        await peer.listen(peer_port)
        await asyncio.to_thread(sbc.start)
        await pbx.start()
        yield Rig(sbc, peer, pbx, engine)
    finally:
        await peer.close()
        await pbx.close()


def fqdn_contact(msg: SipMessage, fqdn: str) -> bool:
    """The Contact names the SBC's FQDN (reference 3: an IP gets 403 from Teams)."""
    uri = uri_of(msg.header("contact") or "")
    return re.match(rf"sip:(?:[^@;]+@)?{re.escape(fqdn)}:\d+;transport=tls;", uri) is not None


def alaw(byte: int) -> int:
    """G.711 A-law to linear (ITU-T G.711)."""
    a = byte ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = t + 8 if seg == 0 else (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def tone_of(payloads: list[bytes]) -> float:
    """The frequency of a PCMA sine, from its zero crossings."""
    samples = [alaw(b) for p in payloads for b in p]
    crossings = sum(1 for x, y in zip(samples, samples[1:]) if (x < 0) != (y < 0))
    return crossings / 2 / (len(samples) / 8000)


def answering_with(sock: MediaSocket, keys: dict[int, CryptoAttr]):
    """Teams' answer to the SBC's INVITE: our own SRTP key, on the crypto tag offered."""
    key_text, _ = new_key(1)

    def answer(invite: Received) -> str:
        offered = parse_crypto_line(attr_lines(invite.msg.body, "crypto")[0])
        raw = base64.b64decode(key_text)
        keys[offered.tag] = CryptoAttr(offered.tag, "AES_CM_128_HMAC_SHA1_80", raw[:16], raw[16:], 2**31, 1, 1)
        return teams_answer_sdp(sock.port, key=key_text, tag=offered.tag)
    return answer


@pytest.mark.parametrize("target", [MRI_URI, PSTN_URI], ids=["teams-user", "pstn-number"])
async def test_refer_from_teams_transfers_the_pbx_user_with_media(procs, tmp_path, test_pki, target):
    async with rig(procs, tmp_path, test_pki) as r:
        # ---- an established call Teams -> PBX
        sock1 = await MediaSocket.open(TEAMS_IP)
        k80, _ = new_key(1)
        k32, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
        call = await r.peer.invite(to=PBX_USER, from_=TEAMS_CALLER, sdp=teams_offer_sdp(sock1.port, key80=k80, key32=k32))
        assert call.status == 200, r.diag()
        assert "REFER" in call.final.msg.header("allow"), r.diag()   # Teams may transfer by REFER
        await r.pbx.wait_event("CALL_ESTABLISHED", WAIT)

        # ---- Teams transfers it
        sock2 = await MediaSocket.open(TEAMS_IP)
        keys: dict[int, CryptoAttr] = {}
        r.peer.answers.append(Answer(200, sdp=answering_with(sock2, keys)))
        refer = await call.request("REFER", extra=[f"REFER-TO: <{target}>", f"REFERRED-BY: {REFERRED_BY}"])
        d = r.diag()
        assert refer.msg.status == 202, d
        assert fqdn_contact(refer.msg, r.sbc.fqdn), d
        # the PBX got both headers exactly as Teams wrote them
        at_pbx = r.pbx.sip_received("REFER")
        assert len(at_pbx) == 1, d
        assert re.search(rf"(?mi)^Refer-To: <{re.escape(target)}>\r?$", at_pbx[0]), at_pbx[0]
        assert re.search(rf"(?mi)^Referred-By: {re.escape(REFERRED_BY)}\r?$", at_pbx[0]), at_pbx[0]
        transfer = await r.pbx.wait_event("TRANSFER", WAIT)
        assert transfer["param"] == f"<{target}>", d

        # ---- the transferee's INVITE reaches Teams: Refer-To as Request-URI, Referred-By back
        new = await r.peer.wait_for(lambda m: m.msg.is_request and m.msg.method == "INVITE"
                                    and m.msg.call_id != call.call_id, WAIT, "the transferee's INVITE")
        d = r.diag()
        inv = new.msg
        assert inv.request_uri == target, d
        assert inv.header("referred-by") == REFERRED_BY, d
        assert new.conn.sni == "sip.pstnhub.microsoft.com", d
        assert fqdn_contact(inv, r.sbc.fqdn), d
        assert inv.header("x-ms-sbc"), d
        assert not inv.values("route") or all("pstnhub" in v for v in inv.values("route")), d
        # Teams' 180 for the new leg reaches the PBX
        await r.pbx.wait_event("CALL_RINGING", WAIT, where=lambda e: e.get("id") == inv.call_id)

        # ---- NOTIFYs (message/sipfrag) reach Teams in the old dialog, with the FQDN Contact
        for frag in ("SIP/2.0 100", "SIP/2.0 200"):
            notify = await r.peer.wait_for(
                lambda m, f=frag: m.msg.is_request and m.msg.method == "NOTIFY" and m.msg.body.startswith(f),
                WAIT, f"NOTIFY {frag}")
            assert notify.msg.call_id == call.call_id, d
            assert notify.msg.header("content-type").lower().startswith("message/sipfrag"), d
            assert fqdn_contact(notify.msg, r.sbc.fqdn), d
            assert notify.msg.header("event").lower().startswith("refer"), d
        # ---- Teams hangs up the old leg
        assert (await call.bye()).msg.status == 200, r.diag()
        await r.pbx.wait_event("CALL_CLOSED", WAIT, where=lambda e: e.get("id") == call.call_id)

        # ---- media on the new leg, both ways
        to_teams = inv.body
        rtpengine_key = parse_crypto_line(attr_lines(to_teams, "crypto")[0])
        rx = SrtpContext(rtpengine_key)
        at_teams = await sock2.collect(50, timeout=WAIT)
        payloads = [parse_rtp(rx.unprotect(p)).payload for p in at_teams]   # raises unless authentic
        assert abs(tone_of(payloads[10:]) - TONE_HZ) < TONE_HZ * 0.05, r.diag()
        tx = SrtpContext(keys[rtpengine_key.tag])
        ssrc, seq, ts = secrets.randbits(32), secrets.randbelow(30000), secrets.randbelow(2**31)
        for i in range(50):
            sock2.send(tx.protect(rtp_packet(seq=seq + i, ts=ts + 160 * i, ssrc=ssrc, pt=8, payload=b"\xd5" * 160)),
                       media_address(to_teams))
            await asyncio.sleep(0.02)
        await r.pbx.wait_event("CALL_RTPESTAB", WAIT, where=lambda e: e.get("id") == inv.call_id)
        # ---- Teams ends the new leg; baresip's counters for it: every packet Teams sent
        new_call = r.peer.calls[inv.call_id]
        assert (await new_call.bye()).msg.status == 200, r.diag()
        await r.pbx.wait_event("CALL_CLOSED", WAIT, where=lambda e: e.get("id") == inv.call_id)
        stats = await _stats(r, 2)
        assert stats[-1][1] == 50 and stats[-1][2] == 0, (stats, r.diag())
        sock1.close()
        sock2.close()


async def test_without_allow_refer_teams_is_not_offered_refer(procs, tmp_path, test_pki):
    """The default: REFER is hidden from Teams, which then transfers calls itself (reference 7)."""
    async with rig(procs, tmp_path, test_pki, allow_refer=False) as r:
        sock = await MediaSocket.open(TEAMS_IP)
        k80, _ = new_key(1)
        k32, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
        call = await r.peer.invite(to=PBX_USER, from_=TEAMS_CALLER, sdp=teams_offer_sdp(sock.port, key80=k80, key32=k32))
        d = r.diag()
        assert call.status == 200, d
        allow = [m.strip().upper() for m in call.final.msg.header("allow").split(",")]
        assert "INVITE" in allow and "REFER" not in allow, d      # baresip's Allow has REFER
        assert (await call.bye()).msg.status == 200, r.diag()
        sock.close()


async def _stats(r: Rig, count: int) -> list[tuple[int, int, int]]:
    """baresip prints a stream's counters when the call is freed, just after CALL_CLOSED."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while len(r.pbx.rtp_stats()) < count:
        if loop.time() > deadline:
            raise AssertionError(f"baresip printed {len(r.pbx.rtp_stats())} of {count} stream counters\n{r.diag()}")
        await asyncio.sleep(0.05)
    return r.pbx.rtp_stats()
