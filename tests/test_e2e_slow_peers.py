"""Issue 12, item 5 end to end: slow or silent peers cannot hold connections, and failed
handshakes do not flood the log. The real SBC process; TLS clients with the test "Teams"
certificate from 127.0.0.1 (in the Teams ranges through teams.resolve).

- Silent connections (TLS up, no SIP) fill the per-address cap (security.teams_max_connections,
  10 here): the next one is refused at accept. After security.header_timeout they are closed
  (checked every 5 s), and new connections from that address are served again.
- A connection that starts a message and never finishes it is closed the same way; one that
  sent an OPTIONS and then nothing is closed after security.idle_timeout.
- 30 TCP connections that close before the TLS handshake: one WARNING line for the source, with
  a reason (never empty), and the count in a later line.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import ssl
import uuid

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess

pytestmark = pytest.mark.e2e


def test_source_log_one_line_per_source_per_period(caplog):
    from teamsbc.connections import SourceLog
    caplog.set_level(logging.INFO, logger="teamsbc.transport")
    s = SourceLog(logging.WARNING, period=60.0)
    for i in range(100):
        s.note("192.0.2.1", "timed out", 10.0 + i * 0.2, f"TLS handshake from 192.0.2.1:{4000 + i} refused: timed out")
    s.note("192.0.2.1", "not trusted", 20.0, "TLS handshake from 192.0.2.1:5000 refused: not trusted")
    s.note("192.0.2.2", "timed out", 20.0, "TLS handshake from 192.0.2.2:5000 refused: timed out")
    s.flush(50.0)                                       # the period is not over: nothing yet
    assert [r.getMessage() for r in caplog.records] == [
        "TLS handshake from 192.0.2.1:4000 refused: timed out", "TLS handshake from 192.0.2.1:5000 refused: not trusted",
        "TLS handshake from 192.0.2.2:5000 refused: timed out"]
    s.flush(71.0)
    assert caplog.records[-1].getMessage() == ("99 more like this from 192.0.2.1 in 60s, the last: "
                                               "TLS handshake from 192.0.2.1:4099 refused: timed out")
    assert len(caplog.records) == 4                     # the others had nothing more to say


def options(sbc: SbcProcess) -> bytes:
    return (f"OPTIONS sip:{sbc.fqdn}:{sbc.teams_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{uuid.uuid4().hex[:12]}\r\nMax-Forwards: 70\r\n"
            "From: <sip:sip.pstnhub.microsoft.com:5061>;tag=1\r\n"
            f"To: <sip:{sbc.fqdn}:{sbc.teams_port}>\r\nCall-ID: {uuid.uuid4()}\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


async def until_closed(reader: asyncio.StreamReader, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while await reader.read(65536):
            pass


async def test_silent_and_slow_connections_are_closed_and_the_cap_frees_up(procs, tmp_path, test_pki):
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=free_port("udp"),
                     teams_resolve={n: free_port("tcp") for n in TEAMS_NAMES},
                     extra={"security": {"teams_max_connections": 10, "header_timeout": 1, "idle_timeout": 10}})
    await asyncio.to_thread(sbc.start)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(str(test_pki.teams_fullchain), str(test_pki.teams_key))
    ctx.load_verify_locations(cafile=str(test_pki.ca_cert))

    async def tls():
        return await asyncio.open_connection("127.0.0.1", sbc.teams_port, ssl=ctx, server_hostname=sbc.fqdn)

    silent = [await tls() for _ in range(9)]
    slow_r, slow_w = await tls()
    slow_w.write(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1")   # and never more
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        await tls()                                      # the cap: refused at accept
    for r, _ in silent + [(slow_r, slow_w)]:
        await until_closed(r, 15)                        # header_timeout 1 s, checked every 5 s
    r, w = await tls()                                   # the cap is free again
    w.write(options(sbc))
    assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"SIP/2.0 200 OK")
    await until_closed(r, 25)   # one complete message, then nothing: only idle_timeout (10 s) applies
    log = sbc.log()
    assert re.search(r"closing tls connection from 127\.0\.0\.1:\d+ on the teams leg: no SIP message within 1s "
                     r"of connecting \(security\.header_timeout\)", log), log[-3000:]
    # 9 silent connections closed within the minute: one line (the rest counted for a later line)
    assert len(re.findall(r"closing tls connection from 127\.0\.0\.1:\d+ on the teams leg: no SIP message", log)) == 1, \
        log[-3000:]
    for _, w in silent + [(slow_r, slow_w)]:
        w.close()


async def test_failed_handshakes_one_line_per_source_with_a_reason(procs, tmp_path, test_pki):
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=free_port("udp"),
                     teams_resolve={n: free_port("tcp") for n in TEAMS_NAMES},
                     extra={"security": {"teams_connect_rate": 0, "ban_after": 0, "report_interval": 1}})
    await asyncio.to_thread(sbc.start)
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", sbc.teams_port))
        s.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not [json.loads(m) for m in re.findall(r"guard counters: (\{.*\})", sbc.log())
               if json.loads(m).get("handshake_failed", 0) >= 30]:   # all 30 handled
        assert loop.time() < deadline, sbc.log()[-3000:]
        await asyncio.sleep(0.05)
    lines = [l for l in sbc.log().splitlines() if "TLS handshake from 127.0.0.1" in l]
    assert len(lines) == 1, lines
    assert lines[0].endswith("refused: the peer closed the connection before the TLS handshake completed"), lines
