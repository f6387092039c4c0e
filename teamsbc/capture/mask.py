"""Credentials out of captured SIP (per-call traces, HEP): the Digest `response` of an
Authorization or Proxy-Authorization header is an offline password guess (RFC 7616 3.4: with
the nonce, the realm and the URI beside it, a dictionary attack needs nothing else), and a
Basic one is the password itself. What a trace or Homer keeps is the message with these values
masked; everything else of the header stays (who tried, which realm, which nonce).
"""
from __future__ import annotations

import re

MASK = b"***"
# RFC 3261 20.7 / 20.28: the header line, any case, then the credentials
_HEADER = re.compile(rb"(?im)^((?:proxy-)?authorization[ \t]*:[ \t]*)([^\r\n]*)")
_RESPONSE = re.compile(rb'(?i)(\bresponse[ \t]*=[ \t]*)("(?:[^"\\]|\\.)*"|[^,\s]+)')
_SCHEME = re.compile(rb"(?i)^(digest)\b")


def mask_credentials(data: bytes) -> bytes:
    """`data` with the secret part of every Authorization / Proxy-Authorization masked (a copy
    only when there is one)."""
    head_end = data.find(b"\r\n\r\n")
    head = data if head_end < 0 else data[:head_end]
    if not _HEADER.search(head):
        return data
    return _HEADER.sub(_masked, head) + (b"" if head_end < 0 else data[head_end:])


def _masked(m: re.Match) -> bytes:
    value = m.group(2)
    if _SCHEME.match(value):
        return m.group(1) + _RESPONSE.sub(lambda r: r.group(1) + b'"' + MASK + b'"', value)
    scheme, _, _ = value.partition(b" ")
    return m.group(1) + scheme + b" " + MASK   # Basic and anything else: all but the scheme
