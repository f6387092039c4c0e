"""Minimal SRTP (RFC 3711) for tests: AES_CM_128_HMAC_SHA1_80 / _32, RTP only, with MKI.

Enough to prove that media through rtpengine is real SRTP toward "Teams" and plain RTP toward
the "PBX". Built on `cryptography` (AES-CTR, HMAC-SHA1); checked against RFC 3711 Appendix B.

    key = parse_crypto_line("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^31|1:1")
    tx = SrtpContext(key)            # sends the MKI of the key (1 byte, value 1) in each packet
    wire = tx.protect(rtp_packet(seq=1, ts=160, ssrc=0x1234, pt=0, payload=b"..."))
    rx = SrtpContext(key_from_answer)
    rtp = rx.unprotect(wire)         # raises SrtpError when the tag does not authenticate

Packet layout (RFC 3711 section 3.1): RTP header | encrypted payload | [MKI] | auth tag.
The auth tag covers header + encrypted payload + ROC (not the MKI). Receivers told that a key
has an MKI expect one in every packet; rtpengine's own keys carry none unless configured, so
``SrtpContext(key, mki_length=0)`` can override what the crypto line says.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "SrtpError",
    "CryptoAttr",
    "parse_crypto_line",
    "crypto_attrs",
    "derive_session_keys",
    "aes_cm_keystream",
    "SrtpContext",
    "RtpPacket",
    "rtp_packet",
    "parse_rtp",
    "is_rtcp",
]

# suite -> (master key bytes, master salt bytes, auth tag bytes)
SUITES = {
    "AES_CM_128_HMAC_SHA1_80": (16, 14, 10),
    "AES_CM_128_HMAC_SHA1_32": (16, 14, 4),
}

# RFC 3711 section 4.3.2 key derivation labels (SRTP; SRTCP uses 3, 4, 5)
LABEL_ENC, LABEL_AUTH, LABEL_SALT = 0, 1, 2
AUTH_KEY_LEN = 20  # n_a = 160 bits for HMAC-SHA1


class SrtpError(ValueError):
    """A packet that does not authenticate or is malformed, or an unusable key."""


# --------------------------------------------------------------------------- a=crypto (RFC 4568)

@dataclass(frozen=True)
class CryptoAttr:
    tag: int
    suite: str
    master_key: bytes
    master_salt: bytes
    lifetime: int | None = None
    mki: int | None = None
    mki_length: int = 0

    @property
    def tag_length(self) -> int:
        return SUITES[self.suite][2]


_CRYPTO_RE = re.compile(
    r"^(?:a=)?crypto:(?P<tag>\d+)\s+(?P<suite>\S+)\s+inline:(?P<key>[A-Za-z0-9+/=]+)"
    r"(?:\|(?P<lifetime>2\^\d+|\d+))?(?:\|(?P<mki>\d+):(?P<mkilen>\d+))?(?:;\S*)?(?:\s.*)?$"
)


def parse_crypto_line(line: str) -> CryptoAttr:
    """Parse ``a=crypto:TAG SUITE inline:KEY[|LIFETIME][|MKI:LEN]`` (RFC 4568 section 9.1).

    Only the first key parameter is used; session parameters after it are ignored.
    """
    m = _CRYPTO_RE.match(line.strip())
    if not m:
        raise SrtpError(f"not an a=crypto line: {line!r}")
    suite = m["suite"]
    if suite not in SUITES:
        raise SrtpError(f"unsupported suite {suite}")
    key_len, salt_len, _ = SUITES[suite]
    raw = base64.b64decode(m["key"] + "=" * (-len(m["key"]) % 4))
    if len(raw) != key_len + salt_len:
        raise SrtpError(f"key||salt is {len(raw)} bytes, want {key_len + salt_len}")
    lifetime = None
    if m["lifetime"]:
        lt = m["lifetime"]
        lifetime = 2 ** int(lt[2:]) if lt.startswith("2^") else int(lt)
    mki = mki_len = None
    if m["mki"] is not None:
        mki, mki_len = int(m["mki"]), int(m["mkilen"])
        if not 1 <= mki_len <= 128 or mki >= 256**mki_len:
            raise SrtpError(f"bad MKI {mki}:{mki_len}")
    return CryptoAttr(int(m["tag"]), suite, raw[:key_len], raw[key_len:], lifetime, mki, mki_len or 0)


def crypto_attrs(sdp: str) -> list[CryptoAttr]:
    """Every a=crypto line of an SDP with a suite this module knows, in order."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=crypto:"):
            try:
                out.append(parse_crypto_line(line))
            except SrtpError:
                continue
    return out


# --------------------------------------------------------------------------- AES-CM and KDF

def aes_cm_keystream(key: bytes, iv: bytes, length: int) -> bytes:
    """AES in counter mode (RFC 3711 section 4.1.1): blocks E(k, IV + j), j = 0, 1, ...

    ``iv`` is the 16-byte initial counter block (its low 16 bits are the block counter).
    """
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return enc.update(b"\0" * length) + enc.finalize()


def _kdf(master_key: bytes, master_salt: bytes, label: int, length: int, index: int = 0,
         kdr: int = 0) -> bytes:
    """RFC 3711 section 4.3.1 with the AES-CM PRF (4.3.3): x = key_id XOR salt, IV = x * 2^16."""
    r = index // kdr if kdr else 0
    key_id = (label << 48) | r
    x = key_id ^ int.from_bytes(master_salt, "big")
    iv = (x << 16).to_bytes(16, "big")
    return aes_cm_keystream(master_key, iv, length)


@dataclass(frozen=True)
class SessionKeys:
    enc: bytes
    auth: bytes
    salt: bytes


def derive_session_keys(master_key: bytes, master_salt: bytes) -> SessionKeys:
    """SRTP session keys for index 0 and key derivation rate 0 (the SDES default)."""
    return SessionKeys(
        enc=_kdf(master_key, master_salt, LABEL_ENC, len(master_key)),
        auth=_kdf(master_key, master_salt, LABEL_AUTH, AUTH_KEY_LEN),
        salt=_kdf(master_key, master_salt, LABEL_SALT, len(master_salt)),
    )


def packet_iv(session_salt: bytes, ssrc: int, index: int) -> bytes:
    """RFC 3711 section 4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)."""
    iv = (int.from_bytes(session_salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    return iv.to_bytes(16, "big")


# --------------------------------------------------------------------------- RTP

@dataclass
class RtpPacket:
    version: int
    padding: bool
    marker: bool
    payload_type: int
    seq: int
    timestamp: int
    ssrc: int
    header: bytes
    payload: bytes


def rtp_packet(*, seq: int, ts: int, ssrc: int, pt: int, payload: bytes, marker: bool = False) -> bytes:
    """A plain RTP packet (RFC 3550 section 5.1): 12-byte header, no CSRC, no extension."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


def _header_length(packet: bytes) -> int:
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise SrtpError("not an RTP version 2 packet")
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 4-byte header, then length words
        if len(packet) < length + 4:
            raise SrtpError("truncated RTP header extension")
        (words,) = struct.unpack_from("!H", packet, length + 2)
        length += 4 + 4 * words
    if len(packet) < length:
        raise SrtpError("truncated RTP header")
    return length


def parse_rtp(packet: bytes) -> RtpPacket:
    """Split a plain RTP packet into header fields and payload (padding left in the payload)."""
    hlen = _header_length(packet)
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    return RtpPacket(b0 >> 6, bool(b0 & 0x20), bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc,
                     packet[:hlen], packet[hlen:])


def is_rtcp(packet: bytes) -> bool:
    """RTCP multiplexed on the RTP port (RFC 5761 section 4): packet type 192-223."""
    return len(packet) >= 2 and 192 <= packet[1] <= 223


# --------------------------------------------------------------------------- SRTP context

class SrtpContext:
    """One direction of one SRTP stream set (any SSRC), sender or receiver.

    Keeps the rollover counter per SSRC; the receiver estimates the index as in RFC 3711
    Appendix A. No replay list: tests count packets themselves.
    """

    def __init__(self, key: CryptoAttr, *, mki_length: int | None = None) -> None:
        if key.suite not in SUITES:
            raise SrtpError(f"unsupported suite {key.suite}")
        self.key = key
        self.tag_length = SUITES[key.suite][2]
        self.mki_length = key.mki_length if mki_length is None else mki_length
        self.mki = (key.mki or 0).to_bytes(self.mki_length, "big") if self.mki_length else b""
        self.session = derive_session_keys(key.master_key, key.master_salt)
        self._roc: dict[int, int] = {}
        self._s_l: dict[int, int] = {}

    # --- sender
    def protect(self, packet: bytes) -> bytes:
        rtp = parse_rtp(packet)
        roc = self._roc.get(rtp.ssrc, 0)
        last = self._s_l.get(rtp.ssrc)
        if last is not None and rtp.seq < last and last - rtp.seq > 0x8000:
            roc = (roc + 1) & 0xFFFFFFFF  # sequence number wrapped
        self._roc[rtp.ssrc], self._s_l[rtp.ssrc] = roc, rtp.seq
        index = (roc << 16) | rtp.seq
        ks = aes_cm_keystream(self.session.enc, packet_iv(self.session.salt, rtp.ssrc, index),
                              len(rtp.payload))
        encrypted = rtp.header + bytes(a ^ b for a, b in zip(rtp.payload, ks))
        return encrypted + self.mki + self._tag(encrypted, roc)

    # --- receiver
    def unprotect(self, packet: bytes) -> bytes:
        trailer = self.mki_length + self.tag_length
        if len(packet) < 12 + trailer:
            raise SrtpError("packet shorter than header + MKI + tag")
        body, mki, tag = (packet[: len(packet) - trailer],
                          packet[len(packet) - trailer: len(packet) - self.tag_length],
                          packet[len(packet) - self.tag_length:])
        if self.mki_length and mki != self.mki:
            raise SrtpError(f"unknown MKI {mki.hex()}")
        rtp = parse_rtp(body)
        roc = self._estimate_roc(rtp.ssrc, rtp.seq)
        if not hmac.compare_digest(tag, self._tag(body, roc)):
            raise SrtpError("authentication tag mismatch")
        self._update(rtp.ssrc, rtp.seq, roc)
        index = (roc << 16) | rtp.seq
        ks = aes_cm_keystream(self.session.enc, packet_iv(self.session.salt, rtp.ssrc, index),
                              len(rtp.payload))
        return rtp.header + bytes(a ^ b for a, b in zip(rtp.payload, ks))

    def _estimate_roc(self, ssrc: int, seq: int) -> int:
        """RFC 3711 Appendix A: v = ROC-1, ROC or ROC+1 by comparing seq with s_l."""
        roc = self._roc.get(ssrc, 0)
        s_l = self._s_l.get(ssrc)
        if s_l is None:
            return roc
        if s_l < 0x8000:
            return (roc - 1) & 0xFFFFFFFF if seq - s_l > 0x8000 else roc
        return (roc + 1) & 0xFFFFFFFF if s_l - 0x8000 > seq else roc

    def _update(self, ssrc: int, seq: int, v: int) -> None:
        roc = self._roc.get(ssrc, 0)
        s_l = self._s_l.get(ssrc)
        if s_l is None or v == (roc + 1) & 0xFFFFFFFF or (v == roc and seq > s_l):
            self._roc[ssrc], self._s_l[ssrc] = v, seq

    def _tag(self, authenticated: bytes, roc: int) -> bytes:
        mac = hmac.new(self.session.auth, authenticated + struct.pack("!I", roc), hashlib.sha1)
        return mac.digest()[: self.tag_length]
