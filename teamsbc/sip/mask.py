"""Credentials in SIP messages, masked for people to look at (the console's call ladder, its
pcap download). Pure functions of bytes.

What is a credential here, and why:

| where | what is masked | why |
|---|---|---|
| `Authorization`, `Proxy-Authorization` (RFC 3261 22.2, 22.3; RFC 7616 3.4) | Digest `response` and `cnonce`; the whole credential of any other scheme (Basic, Bearer) | with the nonce, a Digest response is an offline dictionary attack on the password; Basic and Bearer are the secret itself |
| SDP `a=crypto` (RFC 4568 6.1) | the `inline:` key and salt | SDES keys decrypt the call's SRTP: anyone with the trace hears the call |
| SDP `a=ice-pwd` (RFC 8839 5.4) | the password | it authenticates ICE connectivity checks of the media session |

Masking keeps every byte count: each masked character becomes `*`, so `Content-Length` stays
true and a masked message still parses (a pcap of masked messages opens in Wireshark). User
names, realms, nonces and URIs stay: they are what a support engineer needs to see.
"""
from __future__ import annotations

import re

MASK = b"*"

# A header line (folded continuation lines are rare in credentials and masked with their line).
_AUTH_LINE = re.compile(rb"(?im)^(?:proxy-)?authorization[ \t]*:[ \t]*([^\r\n]*)")
_DIGEST = re.compile(rb"(?i)^digest\b")
# response="..." / cnonce="..." / response=token (RFC 7616 3.4: quoted; tolerate tokens)
_DIGEST_SECRET = re.compile(rb'(?i)\b(response|cnonce)[ \t]*=[ \t]*("(?:[^"\\\r\n]|\\.)*"|[^,\s]+)')
_SCHEME = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]+")
# a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|MKI:len] [;inline:...] (RFC 4568 9.1)
_INLINE = re.compile(rb"(?i)(inline:)([A-Za-z0-9+/=]+)")
_CRYPTO_LINE = re.compile(rb"(?im)^a=crypto:[^\r\n]*")
_ICE_PWD = re.compile(rb"(?im)^(a=ice-pwd:)([^\r\n]*)")


def _stars(b: bytes) -> bytes:
    return MASK * len(b)


def _mask_quoted(value: bytes) -> bytes:
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        return b'"' + _stars(value[1:-1]) + b'"'
    return _stars(value)


def _mask_auth_value(value: bytes) -> bytes:
    if _DIGEST.match(value):
        return _DIGEST_SECRET.sub(lambda m: m.group(0)[: m.start(2) - m.start(0)] + _mask_quoted(m.group(2)),
                                  value)
    m = _SCHEME.match(value)
    if m is None:
        return _stars(value)
    return value[: m.end()] + _stars(value[m.end():])


def mask_message(data: bytes) -> bytes:
    """`data` (one SIP message as on the wire) with its credentials masked, same length."""
    out = _AUTH_LINE.sub(lambda m: m.group(0)[: m.start(1) - m.start(0)] + _mask_auth_value(m.group(1)), data)
    return mask_sdp(out)


def mask_sdp(data: bytes) -> bytes:
    """SDES keys and ICE passwords of an SDP (or a message carrying one) masked, same length."""
    if b"a=crypto" in data or b"a=CRYPTO" in data:
        data = _CRYPTO_LINE.sub(lambda m: _INLINE.sub(lambda k: k.group(1) + _stars(k.group(2)), m.group(0)),
                                data)
    if b"ice-pwd" in data.lower():
        data = _ICE_PWD.sub(lambda m: m.group(1) + _stars(m.group(2)), data)
    return data


def mask_text(text: str) -> str:
    """mask_message for text (an SDP in an rtpengine command, a message already decoded)."""
    return mask_message(text.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
