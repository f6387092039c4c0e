"""The TLS probe: offer a ClientHello and read the server's first flight in the clear.

A TLS 1.2 server sends ServerHello, Certificate (unencrypted in 1.2) and ServerHelloDone before
it looks at the client certificate, which the doctor could not provide (the SBC's listener wants
Teams'). So the doctor learns the version, the suite and the certificate served without a
completed handshake. The records are read here (RFC 5246 6.2 record layer, 7.4 handshake
messages; RFC 8446 4.1.3: from TLS 1.3's ServerHello on, everything is encrypted).

    hello = await server_hello("127.0.0.1", 5061, "sbc.example.com", teams_only=True, timeout=5)
    hello.version, hello.suite, hello.leaf, hello.alert
"""
from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

from ..tls import TEAMS_CIPHERS

# IANA codes of Teams' four TLS 1.2 suites (reference section 2) and a few others for messages
TEAMS_SUITES = {0xC030: "ECDHE-RSA-AES256-GCM-SHA384", 0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
                0xC028: "ECDHE-RSA-AES256-SHA384", 0xC027: "ECDHE-RSA-AES128-SHA256"}
TLS_SUITES = {**TEAMS_SUITES, 0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
              0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
              0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384"}
TLS_ALERTS = {40: "handshake_failure", 47: "illegal_parameter", 70: "protocol_version",
              71: "insufficient_security", 80: "internal_error", 112: "unrecognized_name"}


@dataclass
class ServerHello:
    """What a TLS server's first flight said, read in the clear."""
    version: int | None = None   # ServerHello.legacy_version (0x0303 = TLS 1.2)
    suite: int | None = None
    leaf: bytes | None = None    # DER of the first certificate (TLS 1.2: not encrypted)
    alert: int | None = None
    complete: bool = False       # ServerHelloDone seen, or an alert, or TLS 1.3 (rest encrypted)


def parse_server_flight(buf: bytes) -> ServerHello:
    """Parse TLS records from a server's first flight (RFC 5246 6.2, 7.4)."""
    out = ServerHello()
    hs = b""
    encrypted = False
    i = 0
    while i + 5 <= len(buf):
        rtype, length = buf[i], int.from_bytes(buf[i + 3:i + 5], "big")
        body = buf[i + 5:i + 5 + length]
        if len(body) < length:
            break
        i += 5 + length
        if rtype == 21 and len(body) >= 2:        # alert
            out.alert, out.complete = body[1], True
            return out
        if rtype == 22:
            hs += body
        elif rtype in (20, 23):                    # ChangeCipherSpec / encrypted: TLS 1.3 from here
            encrypted = True
    j = 0
    while j + 4 <= len(hs):
        mtype, mlen = hs[j], int.from_bytes(hs[j + 1:j + 4], "big")
        msg = hs[j + 4:j + 4 + mlen]
        if len(msg) < mlen:
            break
        j += 4 + mlen
        if mtype == 2 and len(msg) >= 38:          # ServerHello
            out.version = int.from_bytes(msg[0:2], "big")
            sid = msg[34]
            out.suite = int.from_bytes(msg[35 + sid:37 + sid], "big")
        elif mtype == 11 and len(msg) >= 6:        # Certificate
            first = int.from_bytes(msg[3:6], "big")
            out.leaf = msg[6:6 + first]
        elif mtype == 14:                          # ServerHelloDone
            out.complete = True
    if encrypted and out.suite is not None:        # TLS 1.3: the rest of the flight is encrypted
        out.complete = True
    return out



async def server_hello(host: str, port: int, server_name: str, *, teams_only: bool,
                       timeout: float) -> ServerHello:
    """Connect, send a ClientHello (Teams' own with `teams_only`: TLS 1.2 and its four
    ECDHE-RSA suites; else OpenSSL's defaults) and read until the first flight is complete,
    the server closes, or `timeout` (asyncio.TimeoutError)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if teams_only:
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TEAMS_CIPHERS)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    client_hello = outgoing.read()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    hello = ServerHello()
    try:
        writer.write(client_hello)
        buf = b""
        deadline = time.monotonic() + timeout
        while not hello.complete:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError
            try:
                data = await asyncio.wait_for(reader.read(65536), left)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                break
            buf += data
            hello = parse_server_flight(buf)
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (asyncio.TimeoutError, OSError):
            pass
    return hello
