"""Media through a real rtpengine, driven by teamsbc.media (no SIP proxy in the loop).

A "Teams" UDP socket on 127.0.0.1 (rtpengine interface ``pub``) speaks SRTP with SDES keys,
a "PBX" UDP socket on 127.0.0.2 (interface ``priv``) speaks plain RTP. The SDP each side gets
comes from rtpengine through the NG commands that teamsbc.media.sdp_policy builds. Also here:
the NG dicts themselves (unit tests) and the test SRTP against RFC 3711 Appendix B.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import time
from dataclasses import dataclass, field

import pytest

from teamsbc.media import sdp_policy as P
from teamsbc.media.ng import NgClient
from teamsbc.media.pool import MediaPool
from tests.support.rtpengine import PBX_IP, TEAMS_IP, RtpEngine
from tests.support.srtp import (
    CryptoAttr,
    SrtpContext,
    SrtpError,
    aes_cm_keystream,
    derive_session_keys,
    is_rtcp,
    parse_crypto_line,
    parse_rtp,
    rtp_packet,
)

INTERFACES = ("pub", "priv")
WAIT = 5.0  # bound for every wait on packets


# =========================================================================== NG dicts (unit)

OTHER_SUITES = [s for s in P.SDES_SUITES if s != "AES_CM_128_HMAC_SHA1_80"]
COMMON_FLAGS = ["trust-address", "port-latching"]


def test_offer_toward_pbx_dict():
    sdp = "v=0\r\na=x-candidate-ipv6:1 1 UDP 1 ::1 5 typ host\r\na=rtcp-mux\r\n"
    cmd = P.offer(sdp, "cid", "teams-tag", "pbx", interfaces=INTERFACES)
    assert cmd == {
        "command": "offer", "call-id": "cid", "from-tag": "teams-tag",
        "sdp": "v=0\r\na=rtcp-mux\r\n",            # Teams-only attribute removed
        "replace": ["origin", "session-connection"],
        "flags": COMMON_FLAGS,
        "transport-protocol": "RTP/AVP", "ICE": "remove", "DTLS": "off", "SDES": ["off"],
        "rtcp-mux": ["demux"],
        "codec": {"strip": ["all"], "except": ["PCMA", "PCMU", "G722", "telephone-event"]},
        "ICE-lite": "backward",                      # rtpengine answers Teams as ICE-lite
        "direction": ["pub", "priv"],
    }


def test_offer_toward_teams_dict():
    cmd = P.offer("v=0\r\na=sendrecv\r\n", "cid", "pbx-tag", "teams", interfaces=INTERFACES)
    assert cmd == {
        "command": "offer", "call-id": "cid", "from-tag": "pbx-tag", "sdp": "v=0\r\na=sendrecv\r\n",
        "replace": ["origin", "session-connection"], "flags": COMMON_FLAGS,
        "transport-protocol": "RTP/SAVP", "DTLS": "off",
        "SDES": ["no-" + s for s in OTHER_SUITES], "rtcp-mux": ["offer"],
        "ICE": "force", "ICE-lite": "forward",
        "direction": ["priv", "pub"],
    }
    assert len(cmd["SDES"]) == 11 and "no-AES_CM_128_HMAC_SHA1_80" not in cmd["SDES"]


def test_offer_options():
    re_offer = P.offer("v=0\r\n", "cid", "t", "pbx", to_tag="p", interfaces=INTERFACES, initial=False,
                       codecs_to_pbx=["G722", "PCMA"])
    assert "direction" not in re_offer and re_offer["to-tag"] == "p"
    assert re_offer["codec"] == {"strip": ["all"], "except": ["G722", "PCMA", "telephone-event"]}
    assert "direction" not in P.offer("v=0\r\n", "cid", "t", "pbx")   # no interfaces configured
    removed = P.offer("v=0\r\n", "cid", "t", "pbx", ice="remove")
    assert removed["flags"] == COMMON_FLAGS + ["reject-ICE"] and "ICE-lite" not in removed
    to_teams = P.offer("v=0\r\n", "cid", "p", "teams", ice="remove", sdes_lifetime=True)
    assert to_teams["ICE"] == "remove" and "ICE-lite" not in to_teams
    assert to_teams["SDES"][-1] == "lifetime"
    with pytest.raises(ValueError):
        P.offer("v=0\r\n", "cid", "t", "carrier")
    with pytest.raises(ValueError):
        P.answer("v=0\r\n", "cid", "t", "p", "teams", ice="full")


def test_hold_toward_teams_is_inactive():
    sdp = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 5 RTP/AVP 8\r\na=sendonly\r\n"
    assert P.offer(sdp, "c", "p", "teams")["sdp"].endswith("a=inactive\r\n")
    assert P.offer(sdp, "c", "p", "teams", hold_inactive=False)["sdp"] == sdp
    assert P.offer(sdp, "c", "t", "pbx")["sdp"] == sdp   # toward the PBX: untouched


def test_answer_dicts():
    to_teams = P.answer("v=0\r\n", "cid", "t", "p", "teams")
    assert to_teams == {
        "command": "answer", "call-id": "cid", "from-tag": "t", "to-tag": "p", "sdp": "v=0\r\n",
        "replace": ["origin", "session-connection"], "flags": COMMON_FLAGS,
        "transport-protocol": "RTP/SAVP", "DTLS": "off", "SDES": ["no-" + s for s in OTHER_SUITES],
        "rtcp-mux": ["offer"], "ICE": "force",
    }
    to_pbx = P.answer("v=0\r\na=x-candidate-ipv6:x\r\n", "cid", "p", "t", "pbx")
    assert to_pbx == {
        "command": "answer", "call-id": "cid", "from-tag": "p", "to-tag": "t", "sdp": "v=0\r\n",
        "replace": ["origin", "session-connection"], "flags": COMMON_FLAGS,
        "transport-protocol": "RTP/AVP", "ICE": "remove", "DTLS": "off", "SDES": ["off"],
        "rtcp-mux": ["demux"],
    }
    assert "codec" not in to_pbx and "direction" not in to_pbx
    with pytest.raises(ValueError):
        P.answer("v=0\r\n", "cid", "t", "", "teams")


def test_delete_and_query_dicts():
    assert P.delete("c") == {"command": "delete", "call-id": "c"}
    assert P.delete("c", "a", "b") == {"command": "delete", "call-id": "c", "from-tag": "a", "to-tag": "b"}
    with pytest.raises(ValueError):
        P.delete("c", to_tag="b")
    assert P.query("c", "a") == {"command": "query", "call-id": "c", "from-tag": "a"}


@pytest.mark.parametrize("in_request, is_offer, expected", [
    (True, True, ("F", "T")),     # INVITE / re-INVITE / UPDATE offer (caller or callee)
    (False, False, ("F", "T")),   # 18x/200 answer
    (False, True, ("T", "F")),    # 200 carrying an offer (offerless re-INVITE)
    (True, False, ("T", "F")),    # ACK carrying the answer
])
def test_ng_tags(in_request, is_offer, expected):
    assert P.ng_tags("F", "T", in_request=in_request, is_offer=is_offer) == expected


def test_ng_tags_needs_to_tag_when_swapping():
    assert P.ng_tags("F", None, in_request=True, is_offer=True) == ("F", None)
    with pytest.raises(ValueError):
        P.ng_tags("F", None, in_request=False, is_offer=True)


def test_strip_attributes_and_size():
    sdp = "v=0\na=x-candidate-ipv6:1\na=x-candidate-ipv6x:2\na=rtcp-mux\na=x-candidate-ipv6"
    assert P.strip_attributes(sdp, ["x-candidate-ipv6"]) == "v=0\na=x-candidate-ipv6x:2\na=rtcp-mux\n"
    assert P.strip_attributes(sdp, []) == sdp
    assert P.sdp_size("é") == 2 and P.sdp_size(b"ab") == 2
    assert P.sdp_size_ok("x" * 1300) and not P.sdp_size_ok("x" * 1301)
    assert P.sdp_size_ok("x" * 10, limit=10) and not P.sdp_size_ok("x" * 11, limit=10)


# =========================================================================== test SRTP (RFC 3711)

def test_srtp_aes_cm_keystream_rfc3711_b2():
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    iv = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
    ks = aes_cm_keystream(key, iv, 0xFF02 * 16)
    assert ks[:48].hex().upper() == ("E03EAD0935C95E80E166B16DD92B4EB4"
                                     "D23513162B02D0F72A43A2FE4A5F97AB"
                                     "41E95B3BB0A2E8DD477901E4FCA894C0")
    assert ks[0xFEFF * 16:0xFF02 * 16].hex().upper() == ("EC8CDF7398607CB0F2D21675EA9EA1E4"
                                                         "362B7C3C6773516318A077D7FC5073AE"
                                                         "6A2CC3787889374FBEB4C81B17BA6C44")


def test_srtp_key_derivation_rfc3711_b3():
    keys = derive_session_keys(bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139"),
                               bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6"))
    assert keys.enc.hex().upper() == "C61E7A93744F39EE10734AFE3FF7A087"
    assert keys.salt.hex().upper() == "30CBBC08863D8C85D49DB34A9AE1"
    assert keys.auth.hex().upper() == "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"


def test_srtp_packet_known_answer():
    """libsrtp's AES_CM_128_HMAC_SHA1_80 test packet (the B.3 master key and salt)."""
    key = CryptoAttr(1, "AES_CM_128_HMAC_SHA1_80", bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139"),
                     bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6"))
    plain = rtp_packet(seq=0x1234, ts=0xDECAFBAD, ssrc=0xCAFEBABE, pt=15, payload=b"\xab" * 16)
    wire = SrtpContext(key).protect(plain)
    assert wire.hex().upper() == ("800F1234DECAFBADCAFEBABE4E55DC4CE79978D88CA4D215949D2402"
                                  "B78D6ACC99EA179B8DBB")
    assert SrtpContext(key).unprotect(wire) == plain
    with pytest.raises(SrtpError, match="authentication"):
        SrtpContext(key).unprotect(wire[:-1] + bytes([wire[-1] ^ 1]))


def test_srtp_crypto_lines_mki_and_rollover():
    line = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WnD7c1ksDGs+dIefCEo8omPg4uO8DYIinNGL5yxQ|2^31|1:1"
    key = parse_crypto_line(line)
    assert (key.tag, key.lifetime, key.mki, key.mki_length, key.tag_length) == (1, 2**31, 1, 1, 10)
    short = parse_crypto_line("crypto:2 AES_CM_128_HMAC_SHA1_32 inline:oRjTN6ra3WhO5+MSGdPE2KGXovrTWn7PR4ko5GBk")
    assert short.lifetime is None and short.mki is None and short.tag_length == 4
    tx, rx = SrtpContext(key), SrtpContext(key)
    packets = [tx.protect(rtp_packet(seq=s, ts=s * 160, ssrc=7, pt=0, payload=bytes([s % 256]) * 20))
               for s in (65534, 65535, 0, 1)]
    assert all(len(p) == 12 + 20 + 1 + 10 for p in packets)      # MKI byte before the tag
    assert all(p[-11] == 1 for p in packets)
    assert [parse_rtp(rx.unprotect(p)).payload[0] for p in packets] == [254, 255, 0, 1]  # ROC 0 -> 1
    assert SrtpContext(key, mki_length=0).mki_length == 0
    with pytest.raises(SrtpError):
        parse_crypto_line("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:tooshort")
    with pytest.raises(SrtpError):
        parse_crypto_line("a=crypto:1 AEAD_AES_256_GCM inline:" + "A" * 40)


# =========================================================================== media helpers

def new_key(tag: int, suite: str = "AES_CM_128_HMAC_SHA1_80") -> tuple[str, CryptoAttr]:
    raw = os.urandom(30)
    return base64.b64encode(raw).decode(), CryptoAttr(tag, suite, raw[:16], raw[16:])


def teams_offer_sdp(port: int, *, key80: str, key32: str, direction: str = "sendrecv",
                    session: int = 1) -> str:
    """An offer like Teams' (reference section 8): RTP/SAVP, two crypto lines (MKI on one),
    ICE candidates, rtcp-mux, SILK + G.711 + telephone-event."""
    return "\r\n".join([
        "v=0", f"o=- {session} 0 IN IP4 {TEAMS_IP}", "s=session", f"c=IN IP4 {TEAMS_IP}",
        "b=CT:10000000", "t=0 0",
        f"m=audio {port} RTP/SAVP 104 9 103 111 18 0 8 97 101 13 118",
        f"c=IN IP4 {TEAMS_IP}", f"a=rtcp:{port + 1}",
        "a=ice-ufrag:ZdkB", "a=ice-pwd:ri0BF8YTHMUStkuuuK1YIwcG",
        f"a=candidate:1 1 UDP 2130706431 {TEAMS_IP} {port} typ host",
        f"a=candidate:1 2 UDP 2130705918 {TEAMS_IP} {port + 1} typ host",
        f"a=x-candidate-ipv6:1 1 UDP 2130706431 ::1 {port} typ host",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key80}|2^31|1:1",
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{key32}|2^31",
        "a=maxptime:200", f"a={direction}", "a=rtcp-mux",
        "a=rtpmap:104 SILK/16000", "a=fmtp:104 useinbandfec=1; usedtx=0",
        "a=rtpmap:9 G722/8000", "a=rtpmap:103 SILK/8000", "a=fmtp:103 useinbandfec=1; usedtx=0",
        "a=rtpmap:111 SIREN/16000", "a=fmtp:111 bitrate=16000", "a=rtpmap:18 G729/8000",
        "a=fmtp:18 annexb=no", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:97 RED/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16",
        "a=rtpmap:13 CN/8000", "a=rtpmap:118 CN/16000", "a=ptime:20", ""])


def teams_answer_sdp(port: int, *, key: str, tag: int, pt: int = 8) -> str:
    """Teams answering an offer from the SBC: its own key with MKI, rtcp-mux, ICE."""
    return "\r\n".join([
        "v=0", f"o=- 7 0 IN IP4 {TEAMS_IP}", "s=session", f"c=IN IP4 {TEAMS_IP}", "b=CT:10000000",
        "t=0 0", f"m=audio {port} RTP/SAVP {pt} 101", f"c=IN IP4 {TEAMS_IP}", f"a=rtcp:{port + 1}",
        "a=ice-ufrag:Teams", "a=ice-pwd:ri0BF8YTHMUStkuuuK1YIwcH",
        f"a=candidate:1 1 UDP 2130706431 {TEAMS_IP} {port} typ host",
        f"a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1",
        "a=sendrecv", "a=rtcp-mux", f"a=rtpmap:{pt} {'PCMA' if pt == 8 else 'PCMU'}/8000",
        "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", ""])


def pbx_sdp(port: int, payload_types: str = "8 101", *, direction: str = "sendrecv",
            addr: str = PBX_IP, version: int = 1) -> str:
    names = {"8": "PCMA/8000", "0": "PCMU/8000", "18": "G729/8000", "9": "G722/8000",
             "101": "telephone-event/8000"}
    pts = payload_types.split()
    return "\r\n".join(
        ["v=0", f"o=pbx 100 {version} IN IP4 {PBX_IP}", "s=pbx", f"c=IN IP4 {addr}", "t=0 0",
         f"m=audio {port} RTP/AVP {payload_types}"]
        + [f"a=rtpmap:{pt} {names[pt]}" for pt in pts]
        + (["a=fmtp:101 0-16"] if "101" in pts else [])
        + ["a=ptime:20", f"a={direction}", ""])


def media_address(sdp: str) -> tuple[str, int]:
    """(connection address, port) of the first audio stream."""
    session, _, media = sdp.partition("m=audio")
    port = int(media.split()[0])
    found = re.search(r"^c=IN IP4 (\S+)", "m=audio" + media, re.M) or re.search(r"^c=IN IP4 (\S+)", session, re.M)
    return found.group(1), port


def m_line(sdp: str) -> list[str]:
    return next(line for line in sdp.splitlines() if line.startswith("m=audio ")).split()


def rtpmap_names(sdp: str) -> set[str]:
    return {m.split("/")[0] for m in re.findall(r"^a=rtpmap:\d+ (\S+)", sdp, re.M)}


def attr_lines(sdp: str, name: str) -> list[str]:
    return [line for line in sdp.splitlines() if line == f"a={name}" or line.startswith(f"a={name}:")]


class MediaSocket(asyncio.DatagramProtocol):
    """A UDP endpoint that queues every datagram it gets."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()
        self.transport = None

    @classmethod
    async def open(cls, host: str) -> "MediaSocket":
        sock = cls()
        # even port with the next one free, like a real RTP endpoint (a=rtcp:port+1 in SDP)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: sock, local_addr=(host, 0))
        return sock

    def connection_made(self, transport) -> None:
        self.transport = transport

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait((data, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)

    async def collect(self, count: int, *, timeout: float = WAIT) -> list[bytes]:
        """The next ``count`` RTP/SRTP packets (RTCP and STUN skipped); AssertionError on timeout."""
        packets: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while len(packets) < count:
                    data, _ = await self.queue.get()
                    if is_rtcp(data) or not data or data[0] >> 6 != 2:
                        continue
                    packets.append(data)
        except TimeoutError:
            raise AssertionError(f"only {len(packets)} of {count} packets arrived within {timeout} s") from None
        return packets

    def leftover(self) -> list[bytes]:
        out = []
        while not self.queue.empty():
            data, _ = self.queue.get_nowait()
            if not is_rtcp(data) and data and data[0] >> 6 == 2:
                out.append(data)
        return out

    def close(self) -> None:
        self.transport.close()


@dataclass
class Stream:
    """One RTP sender: SSRC, sequence numbers, timestamps, optional SRTP."""
    ssrc: int
    pt: int
    srtp: SrtpContext | None = None
    seq: int = field(default_factory=lambda: secrets.randbelow(60000))
    ts: int = field(default_factory=lambda: secrets.randbelow(2**31))
    sent: dict[int, bytes] = field(default_factory=dict)   # seq -> plain payload of this batch

    def batch(self, count: int) -> list[bytes]:
        """``count`` packets ready for the wire; ``sent`` then holds their payloads."""
        self.sent = {}
        out = []
        for _ in range(count):
            payload = os.urandom(160)
            self.sent[self.seq] = payload
            packet = rtp_packet(seq=self.seq, ts=self.ts, ssrc=self.ssrc, pt=self.pt, payload=payload)
            self.seq = (self.seq + 1) & 0xFFFF
            self.ts = (self.ts + 160) & 0xFFFFFFFF
            out.append(self.srtp.protect(packet) if self.srtp else packet)
        return out


def assert_same_packets(received, stream: Stream) -> None:
    """Every packet of the batch arrived once, with its payload (UDP through rtpengine's worker
    threads may reorder a burst: compared by sequence number)."""
    got = {p.seq: p.payload for p in received}
    assert len(got) == len(received), "duplicate sequence numbers"
    assert got == stream.sent
    assert {p.ssrc for p in received} == {stream.ssrc}
    assert {p.payload_type for p in received} == {stream.pt}


async def exchange(teams: MediaSocket, pbx: MediaSocket, *, teams_tx: Stream, pbx_tx: Stream,
                   teams_rx: SrtpContext, to_rtpengine_from_teams: tuple[str, int],
                   to_rtpengine_from_pbx: tuple[str, int], count: int = 50) -> None:
    """``count`` packets each way; asserts every one arrives, decodable, with its payload."""
    for packet in teams_tx.batch(count):
        teams.send(packet, to_rtpengine_from_teams)
    at_pbx = await pbx.collect(count)
    assert_same_packets([parse_rtp(p) for p in at_pbx], teams_tx)      # plain RTP: no crypto, no tag

    for packet in pbx_tx.batch(count):
        pbx.send(packet, to_rtpengine_from_pbx)
    at_teams = await teams.collect(count)
    assert all(len(p) == 12 + 160 + 10 for p in at_teams)              # SRTP: 80-bit tag, no MKI
    # unprotect raises unless the packet authenticates with rtpengine's key
    assert_same_packets([parse_rtp(teams_rx.unprotect(p)) for p in at_teams], pbx_tx)
    assert teams.leftover() == [] and pbx.leftover() == []


@pytest.fixture
async def sockets():
    teams = await MediaSocket.open(TEAMS_IP)
    pbx = await MediaSocket.open(PBX_IP)
    yield teams, pbx
    teams.close()
    pbx.close()


@pytest.fixture
def rtpengine(procs) -> RtpEngine:
    return RtpEngine(procs).start()


def assert_pbx_side(sdp: str) -> None:
    assert m_line(sdp)[2] == "RTP/AVP"
    assert not attr_lines(sdp, "crypto") and not attr_lines(sdp, "fingerprint")
    assert not attr_lines(sdp, "candidate") and not attr_lines(sdp, "ice-ufrag")
    assert not attr_lines(sdp, "ice-lite") and not attr_lines(sdp, "x-candidate-ipv6")
    assert not attr_lines(sdp, "rtcp-mux")
    assert media_address(sdp)[0] == PBX_IP


def assert_teams_side(sdp: str, ice: str = "lite") -> CryptoAttr:
    assert m_line(sdp)[2] == "RTP/SAVP"
    crypto = attr_lines(sdp, "crypto")
    assert len(crypto) == 1 and " AES_CM_128_HMAC_SHA1_80 inline:" in crypto[0], crypto
    assert not attr_lines(sdp, "fingerprint") and not attr_lines(sdp, "setup")
    assert attr_lines(sdp, "rtcp-mux")
    if ice == "lite":
        assert attr_lines(sdp, "ice-lite") and attr_lines(sdp, "candidate")
    else:
        assert not attr_lines(sdp, "ice-lite") and not attr_lines(sdp, "candidate")
        assert not attr_lines(sdp, "ice-ufrag")
    assert media_address(sdp)[0] == TEAMS_IP
    return parse_crypto_line(crypto[0])


# =========================================================================== end to end

@pytest.mark.e2e
@pytest.mark.parametrize("ice", ["lite", "remove"])
async def test_call_from_teams_srtp_to_rtp_with_hold_resume_and_bye(rtpengine, sockets, ice):
    teams, pbx = sockets
    call_id, teams_tag, pbx_tag = "teams-call-1@pstnhub", "teams-tag", "pbx-tag"
    key80_text, key80 = new_key(1)
    key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
    key80 = CryptoAttr(1, key80.suite, key80.master_key, key80.master_salt, 2**31, 1, 1)  # |2^31|1:1
    offer_sdp = teams_offer_sdp(teams.port, key80=key80_text, key32=key32_text)
    assert P.sdp_size(offer_sdp) > 1000

    async with NgClient(rtpengine.ng_udp) as ng:
        # INVITE from Teams -> offer toward the PBX
        reply = await ng.request(P.offer(offer_sdp, call_id, teams_tag, "pbx", interfaces=INTERFACES, ice=ice))
        to_pbx = reply["sdp"]
        assert_pbx_side(to_pbx)
        assert rtpmap_names(to_pbx) <= {"PCMA", "PCMU", "G722", "telephone-event"}
        assert {"PCMA", "PCMU", "telephone-event"} <= rtpmap_names(to_pbx)
        assert "SILK" not in to_pbx and "SIREN" not in to_pbx and "G729" not in to_pbx
        assert P.sdp_size_ok(to_pbx, 1300), P.sdp_size(to_pbx)

        # 200 from the PBX -> answer toward Teams
        reply = await ng.request(P.answer(pbx_sdp(pbx.port), call_id, teams_tag, pbx_tag, "teams", ice=ice))
        to_teams = reply["sdp"]
        rtpengine_key = assert_teams_side(to_teams, ice)
        assert rtpengine_key.tag == 1 and rtpengine_key.mki is None      # answers Teams' _80 line
        assert m_line(to_teams)[3:] == ["8", "101"]

        teams_tx = Stream(0x7EA5, 8, SrtpContext(key80))                # Teams sends with MKI
        pbx_tx = Stream(0x0B0B, 8)
        teams_rx = SrtpContext(rtpengine_key)
        paths = dict(to_rtpengine_from_teams=media_address(to_teams),   # where Teams sends
                     to_rtpengine_from_pbx=media_address(to_pbx))       # where the PBX sends
        await exchange(teams, pbx, teams_tx=teams_tx, pbx_tx=pbx_tx, teams_rx=teams_rx, **paths)

        # hold from Teams (re-INVITE, a=inactive), then resume: same ports, same crypto
        for direction in ("inactive", "sendrecv"):
            sdp = teams_offer_sdp(teams.port, key80=key80_text, key32=key32_text, direction=direction)
            reply = await ng.request(P.offer(sdp, call_id, teams_tag, "pbx", to_tag=pbx_tag,
                                             interfaces=INTERFACES, initial=False, ice=ice))
            assert media_address(reply["sdp"]) == media_address(to_pbx)
            assert attr_lines(reply["sdp"], direction)
            reply = await ng.request(P.answer(pbx_sdp(pbx.port, direction=direction, version=2),
                                              call_id, teams_tag, pbx_tag, "teams", ice=ice))
            assert media_address(reply["sdp"]) == media_address(to_teams)
            assert attr_lines(reply["sdp"], "crypto") == attr_lines(to_teams, "crypto")
            assert attr_lines(reply["sdp"], direction) and attr_lines(reply["sdp"], "rtcp-mux")
        await exchange(teams, pbx, teams_tx=teams_tx, pbx_tx=pbx_tx, teams_rx=teams_rx, **paths)

        # counters in rtpengine agree: 100 packets each way, no errors
        query = await ng.request(P.query(call_id))
        assert query["totals"]["RTP"]["packets"] == 200 and query["totals"]["RTP"]["errors"] == 0

        # BYE from the PBX: its tags (From = PBX, To = Teams) delete the whole call
        await ng.request(P.delete(call_id, pbx_tag, teams_tag))
        assert (await ng.request({"command": "list"}))["calls"] == []


@pytest.mark.e2e
async def test_call_from_pbx_rtp_to_srtp_with_pbx_hold_and_teams_bye(rtpengine, sockets):
    teams, pbx = sockets
    call_id, pbx_tag, teams_tag = "pbx-call-1@pbx", "pbx-tag", "teams-tag"
    async with NgClient(rtpengine.ng_udp) as ng:
        # INVITE from the PBX -> offer toward Teams
        reply = await ng.request(P.offer(pbx_sdp(pbx.port, "8 0 18 101"), call_id, pbx_tag, "teams",
                                         interfaces=INTERFACES))
        to_teams = reply["sdp"]
        rtpengine_key = assert_teams_side(to_teams)
        assert attr_lines(to_teams, "candidate")            # ICE-lite agent with its candidates

        # 200 from Teams (its own key with MKI) -> answer toward the PBX
        key_text, teams_key = new_key(rtpengine_key.tag)
        teams_key = CryptoAttr(teams_key.tag, teams_key.suite, teams_key.master_key,
                               teams_key.master_salt, 2**31, 1, 1)
        answer = teams_answer_sdp(teams.port, key=key_text, tag=rtpengine_key.tag)
        reply = await ng.request(P.answer(answer, call_id, pbx_tag, teams_tag, "pbx"))
        to_pbx = reply["sdp"]
        assert_pbx_side(to_pbx)
        assert m_line(to_pbx)[3:] == ["8", "101"]

        teams_tx = Stream(0x7EA6, 8, SrtpContext(teams_key))
        pbx_tx = Stream(0x0B0C, 8)
        teams_rx = SrtpContext(rtpengine_key)
        paths = dict(to_rtpengine_from_teams=media_address(to_teams),
                     to_rtpengine_from_pbx=media_address(to_pbx))
        await exchange(teams, pbx, teams_tx=teams_tx, pbx_tx=pbx_tx, teams_rx=teams_rx, **paths)

        # hold from the PBX (a=sendonly, c=0.0.0.0): Teams gets a=inactive, a real address,
        # the same port and key; then resume
        hold = pbx_sdp(pbx.port, "8 101", direction="sendonly", addr="0.0.0.0", version=2)
        reply = await ng.request(P.offer(hold, call_id, pbx_tag, "teams", to_tag=teams_tag,
                                         interfaces=INTERFACES, initial=False))
        held = reply["sdp"]
        assert attr_lines(held, "inactive") and not attr_lines(held, "sendonly")
        assert "0.0.0.0" not in held
        assert media_address(held) == media_address(to_teams)
        assert attr_lines(held, "crypto") == attr_lines(to_teams, "crypto")
        reply = await ng.request(P.answer(answer.replace("a=sendrecv", "a=inactive"), call_id,
                                          pbx_tag, teams_tag, "pbx"))
        assert media_address(reply["sdp"]) == media_address(to_pbx)
        reply = await ng.request(P.offer(pbx_sdp(pbx.port, "8 101", version=3), call_id, pbx_tag, "teams",
                                         to_tag=teams_tag, initial=False))
        assert media_address(reply["sdp"]) == media_address(to_teams)
        assert attr_lines(reply["sdp"], "crypto") == attr_lines(to_teams, "crypto")
        assert attr_lines(reply["sdp"], "sendrecv") and attr_lines(reply["sdp"], "rtcp-mux")
        await ng.request(P.answer(answer, call_id, pbx_tag, teams_tag, "pbx"))
        await exchange(teams, pbx, teams_tx=teams_tx, pbx_tx=pbx_tx, teams_rx=teams_rx, **paths)

        # BYE from Teams: From = Teams, To = PBX
        await ng.request(P.delete(call_id, teams_tag, pbx_tag))
        assert (await ng.request({"command": "list"}))["calls"] == []


@pytest.mark.e2e
async def test_offerless_reinvite_from_teams_late_offer_and_ack_answer(rtpengine, sockets):
    """Teams re-INVITEs without SDP; the PBX's 200 carries an offer (NG offer with swapped
    tags, toward Teams), Teams' ACK the answer (NG answer, toward the PBX). Ports, keys and
    media survive."""
    teams, pbx = sockets
    call_id, teams_tag, pbx_tag = "teams-call-2@pstnhub", "T", "P"
    key80_text, key80 = new_key(1)
    key80 = CryptoAttr(1, key80.suite, key80.master_key, key80.master_salt, 2**31, 1, 1)
    key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
    async with NgClient(rtpengine.ng_udp) as ng:
        offer_sdp = teams_offer_sdp(teams.port, key80=key80_text, key32=key32_text)
        to_pbx = (await ng.request(P.offer(offer_sdp, call_id, teams_tag, "pbx", interfaces=INTERFACES)))["sdp"]
        to_teams = (await ng.request(P.answer(pbx_sdp(pbx.port), call_id, teams_tag, pbx_tag, "teams")))["sdp"]
        rtpengine_key = assert_teams_side(to_teams)

        # re-INVITE from Teams (From T, To P) without SDP; 200 from the PBX with an offer
        ng_from, ng_to = P.ng_tags(teams_tag, pbx_tag, in_request=False, is_offer=True)
        assert (ng_from, ng_to) == (pbx_tag, teams_tag)
        reply = await ng.request(P.offer(pbx_sdp(pbx.port, "8 0 101", version=2), call_id, ng_from,
                                         "teams", to_tag=ng_to, initial=False))
        late_offer = reply["sdp"]
        assert media_address(late_offer) == media_address(to_teams)
        assert attr_lines(late_offer, "crypto") == attr_lines(to_teams, "crypto")
        assert attr_lines(late_offer, "rtcp-mux")

        # ACK from Teams (From T, To P) with the answer: Teams keeps its key (with MKI)
        ng_from, ng_to = P.ng_tags(teams_tag, pbx_tag, in_request=True, is_offer=False)
        ack_answer = teams_answer_sdp(teams.port, key=key80_text, tag=rtpengine_key.tag)
        reply = await ng.request(P.answer(ack_answer, call_id, ng_from, ng_to, "pbx"))
        assert media_address(reply["sdp"]) == media_address(to_pbx)
        assert_pbx_side(reply["sdp"])

        await exchange(teams, pbx, teams_tx=Stream(0x51, 8, SrtpContext(key80)), pbx_tx=Stream(0x52, 8),
                       teams_rx=SrtpContext(rtpengine_key),
                       to_rtpengine_from_teams=media_address(to_teams),
                       to_rtpengine_from_pbx=media_address(to_pbx))
        await ng.request(P.delete(call_id, teams_tag, pbx_tag))
        assert (await ng.request({"command": "list"}))["calls"] == []


@pytest.mark.e2e
async def test_calls_with_media_per_second(procs, capsys):
    """A quick load run through the pool: N calls from Teams, 10 at a time, each with offer,
    answer, 5 SRTP packets in and 5 RTP packets out, delete."""
    engine = RtpEngine(procs, window=1000).start()
    total, parallel = 200, 10

    async def one_call(pool: MediaPool, n: int) -> None:
        teams = await MediaSocket.open(TEAMS_IP)
        pbx = await MediaSocket.open(PBX_IP)
        try:
            call_id = f"load-{n}"
            key80_text, key80 = new_key(1)
            key80 = CryptoAttr(1, key80.suite, key80.master_key, key80.master_salt, 2**31, 1, 1)
            key32_text, _ = new_key(2, "AES_CM_128_HMAC_SHA1_32")
            offer_sdp = teams_offer_sdp(teams.port, key80=key80_text, key32=key32_text)
            to_pbx = (await pool.request(P.offer(offer_sdp, call_id, "t", "pbx", interfaces=INTERFACES)))["sdp"]
            to_teams = (await pool.request(P.answer(pbx_sdp(pbx.port), call_id, "t", "p", "teams")))["sdp"]
            await exchange(teams, pbx, teams_tx=Stream(n, 8, SrtpContext(key80)), pbx_tx=Stream(n + 1, 8),
                           teams_rx=SrtpContext(parse_crypto_line(attr_lines(to_teams, "crypto")[0])),
                           to_rtpengine_from_teams=media_address(to_teams),
                           to_rtpengine_from_pbx=media_address(to_pbx), count=5)
            await pool.request(P.delete(call_id, "t", "p"))
        finally:
            teams.close()
            pbx.close()

    async with MediaPool([engine.ng_udp], ping_interval=3600) as pool:
        started = time.perf_counter()
        queue = list(range(total))

        async def worker():
            while queue:
                await one_call(pool, queue.pop())

        await asyncio.gather(*(worker() for _ in range(parallel)))
        elapsed = time.perf_counter() - started
    assert engine.calls() == []
    rate = total / elapsed
    with capsys.disabled():
        print(f"\n{total} calls with media ({parallel} in parallel, 5 packets each way) in "
              f"{elapsed:.2f} s: {rate:.0f} calls/s")
    assert rate > 5
