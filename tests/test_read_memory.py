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
