"""What memory the SBC's reads cost when it keeps what it received (issue 12: RSS not flat).

    python -m tests.support.keep_reads tls|tcp|udp|ng fresh|raised PKI_DIR

Runs in a fresh interpreter (tests/test_read_memory.py starts it): the shell's own connection
classes (connections.StreamConn for TCP and TLS, connections.UdpSocket for UDP) receive SIP
messages of 600-1,400 bytes over real loopback sockets, one read per message (`ng`: the
rtpengine client, media.ng.NgClient over UDP, receives replies carrying SDP of that size from
a responder on a loopback socket and the SDP is what is kept), and the receiver keeps the
last 20,000 of them, as live transactions and the flight recorder do, while
it allocates other buffers of 100-3,000 bytes with shorter lives (handling a message).
Prints one JSON line: the bytes kept, and how much the process's RSS grew to keep them.

`raised`: first free a 4 MiB temporary, as any large reply or list does in a long-running
SBC: glibc then raises its mmap threshold and serves larger reads from the heap.
"""
from __future__ import annotations

import asyncio
import collections
import json
import random
import socket
import ssl
import sys
from pathlib import Path
from types import SimpleNamespace

from teamsbc.connections import ReadBuffer, StreamConn, UdpSocket
from teamsbc.decisions import PBX, TEAMS

KEEP = 20_000
TOTAL = 40_000


def rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def message(n: int, rng: random.Random) -> bytes:
    body = b"v=0\r\n" + b"a=x:" + b"y" * rng.randint(500, 1300) + b"\r\n"
    head = (f"MESSAGE sip:+15550100@sbc.example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK{n}\r\n"
            f"Call-ID: {n}\r\nCSeq: 1 MESSAGE\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def run(proto: str, pki: Path) -> dict:
    loop = asyncio.get_running_loop()
    kept: collections.deque[bytes] = collections.deque(maxlen=KEEP)
    arrived = asyncio.Event()

    churn: collections.deque[bytes] = collections.deque(maxlen=5_000)
    sizes = random.Random(7)

    def deliver(frame: bytes, src) -> None:
        kept.append(frame)
        # what handling a message allocates besides it (parsed headers, the relayed copy), with
        # lifetimes of their own: it lands in whatever free space the heap has
        churn.append(b"c" * sizes.randint(100, 3000))
        arrived.set()

    shell = SimpleNamespace(loop=loop, read_buffer=ReadBuffer(), conn_seq=0, conns=set(), by_ident={},
                            deliver=deliver, conn_lost=lambda conn: None, door=SimpleNamespace(admit_address=lambda *a: True))
    rng = random.Random(12)
    msgs = [message(n, rng) for n in range(200)]   # sent round-robin: the sender holds no new bytes
    closers = []
    if proto == "ng":
        return await run_ng(kept, churn, sizes, msgs)
    if proto == "udp":
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        udp = UdpSocket(shell, PBX, rx)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dest = rx.getsockname()

        def send(data: bytes) -> None:
            tx.sendto(data, dest)
        closers += [lambda: loop.remove_reader(rx.fileno()), rx.close, tx.close, lambda: udp]
    else:
        ctx = None
        cctx = None
        if proto == "tls":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(pki / "sbc-fullchain.pem", pki / "sbc.key")
            cctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
            cctx.check_hostname = False
        server = await loop.create_server(lambda: StreamConn(shell, TEAMS, proto), "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)

        def send(data: bytes) -> None:
            writer.write(data)
        closers += [writer.close, server.close]

    sent = [0]

    async def pump(count: int) -> None:
        for _ in range(count):
            arrived.clear()
            send(msgs[sent[0] % len(msgs)])
            sent[0] += 1
            await asyncio.wait_for(arrived.wait(), 5)

    r = await measure(proto, pump, kept, churn)
    for c in closers:
        c()
    return r


async def measure(proto: str, pump, kept, churn) -> dict:
    """`pump(n)`: n more reads, each adding to `kept` (the last KEEP of them) and `churn`."""
    await pump(2_000)            # connections up, first allocations made
    kept.clear()
    base = rss_kib()
    await pump(KEEP)             # the window fills: KEEP messages held
    full = rss_kib()
    await pump(TOTAL - KEEP)     # as many again, each replacing an older one
    end = rss_kib()
    held = sum(len(m) for m in kept)
    churn.clear()
    return {"proto": proto, "kept": len(kept), "kept_kib": held // 1024,
            "grew_kib": full - base, "then_kib": end - full}


async def run_ng(kept, churn, sizes, msgs) -> dict:
    """The rtpengine client's reads: each reply's SDP is kept (a call holds it), the reply
    datagram itself is transient."""
    from teamsbc.media.bencode import encode
    from teamsbc.media.ng import NgClient
    loop = asyncio.get_running_loop()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    served = [0]

    def answer() -> None:
        while True:
            try:
                data, addr = server.recvfrom(65536)
            except BlockingIOError:
                return
            cookie = data.split(b" ", 1)[0]
            sdp = msgs[served[0] % len(msgs)]
            served[0] += 1
            server.sendto(cookie + b" " + encode({"result": "ok", "sdp": sdp}), addr)
    loop.add_reader(server.fileno(), answer)
    client = NgClient(f"udp:127.0.0.1:{server.getsockname()[1]}")

    async def pump(count: int) -> None:
        for _ in range(count):
            reply = await client.request({"command": "offer", "call-id": "c", "from-tag": "t"})
            kept.append(reply["sdp"])
            churn.append(b"c" * sizes.randint(100, 3000))

    r = await measure("ng", pump, kept, churn)
    await client.close()
    loop.remove_reader(server.fileno())
    server.close()
    return r


def main() -> None:
    proto, state, pki = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if state == "raised":
        big = bytearray(4 << 20)
        del big
    print(json.dumps(asyncio.run(run(proto, pki))))


if __name__ == "__main__":
    main()
