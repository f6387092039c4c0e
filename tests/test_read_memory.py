"""Issue 12, item 3 (memory must plateau): what the SBC keeps of what it reads must not make
the heap grow. The PBX UDP socket read each datagram with recvfrom(65536): glibc cut a 64 KiB
chunk for it, shrank it in place, and the other allocations made while handling the message
filled and pinned the freed tails. In the 30-minute soak RSS then grew ~2 MiB a minute with
~400 calls up. Reads now land in one buffer per shell and leave it as exact-size copies
(connections.ReadBuffer; TCP and TLS through asyncio.BufferedProtocol).

Each case runs tests/support/keep_reads.py in a fresh interpreter on real loopback sockets:
20,000 messages held while 20,000 more replace them. Before the fix UDP grew 18.6 MiB in that
second phase (it is held constant); after it, under 1 MiB.

`ng`: the rtpengine client still reads through asyncio's datagram transport (recvfrom of
256 KiB); the SDP of its replies is what a call keeps. It grew 0.6 MiB (1.9 MiB after a large
temporary) in the second phase when measured: no such pinning, and this case keeps it so."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("state", ["fresh", "raised"])
@pytest.mark.parametrize("proto", ["udp", "tcp", "tls", "ng"])
def test_holding_received_messages_costs_what_they_weigh(proto, state, test_pki):
    out = subprocess.run([sys.executable, "-m", "tests.support.keep_reads", proto, state, str(test_pki.directory)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["kept"] == 20_000
    # the second 20,000 messages replace the first: the same bytes held, so RSS stays put
    assert r["then_kib"] < 4096, r
    # and holding them costs about their size (5,000 other buffers of ~1.5 KB are held too)
    assert r["grew_kib"] < r["kept_kib"] * 1.2 + 12 * 1024, r


def _teams_tls_exchange(port: int, pki) -> bytes:
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=pki.sbc_fqdn) as tls:
            tls.sendall(b"OPTIONS sip:" + pki.sbc_fqdn.encode() + b" SIP/2.0\r\n"
                        b"Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-mem1\r\n"
                        b"From: <sip:sip.pstnhub.microsoft.com>;tag=1\r\nTo: <sip:" + pki.sbc_fqdn.encode() + b">\r\n"
                        b"Call-ID: mem-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            return tls.recv(4096)


async def test_a_closed_tls_connection_is_freed_without_the_cyclic_collector(monkeypatch, tmp_path, test_pki):
    """The SBC's collector does not walk long-lived objects under load (collector.py), so a
    closed connection must go by reference counting alone. It did not: asyncio's SSLProtocol
    keeps the protocol's get_buffer/buffer_updated, bound to our StreamConn, which kept the
    transport, so each closed Teams connection held its 256 KiB TLS read buffer until a full
    walk (+1.5 MiB in 20 minutes of the tracemalloc soak, 2026-12-06)."""
    import asyncio
    import gc
    import weakref
    from teamsbc import collector, connections
    from teamsbc.app import serve
    from tests.support.ports import free_port
    from tests.support.sbc import loopback_config

    seen: list = []
    made, lost = connections.StreamConn.connection_made, connections.StreamConn.connection_lost
    all_closed = asyncio.Event()

    def spy_made(self, transport):
        made(self, transport)
        seen.append((weakref.ref(self), weakref.ref(transport)))

    def spy_lost(self, exc):
        lost(self, exc)
        if len(seen) == 5 and all(c().closed for c, _ in seen if c() is not None):
            all_closed.set()
    monkeypatch.setattr(connections.StreamConn, "connection_made", spy_made)
    monkeypatch.setattr(connections.StreamConn, "connection_lost", spy_lost)
    monkeypatch.setattr(collector.YoungOnly, "start", lambda self, loop: None)
    port = free_port("tcp")
    config = loopback_config(test_pki, tmp_path, port)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ready=ready, stop=stop))
    gc.disable()
    try:
        await asyncio.wait_for(ready.wait(), 10)
        for _ in range(5):
            reply = await asyncio.to_thread(_teams_tls_exchange, port, test_pki)
            assert reply.startswith(b"SIP/2.0 200"), reply[:200]
        await asyncio.wait_for(all_closed.wait(), 10)   # the SBC sees each close a moment later
        await asyncio.sleep(0)          # the loop lets go of the callback that closed the last one
        alive = [(c(), t()) for c, t in seen if c() is not None or t() is not None]
        assert len(seen) == 5
        assert not alive, f"{len(alive)} of 5 closed connections still held: {alive[:2]}"
    finally:
        gc.enable()
        stop.set()
        await asyncio.wait_for(server, 10)
