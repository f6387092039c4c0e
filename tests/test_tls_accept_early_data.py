"""The Teams TLS listener keeps a ClientHello that arrives with the connection (issue 11).

Debian 12's python3 (3.11.2) re-arms reading on a new socket transport after connection_made
paused it: its _SelectorTransport._add_reader ignores the pause (later releases check
is_reading()). The listener's first moments then read the ClientHello and drop it, and the
handshake times out. The 3.11.2 method is put back here, so the test proves the listener on any
interpreter; the booted test (tests/test_booted_systemd.py) repeats it on the real 3.11.2.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from asyncio import selector_events
from pathlib import Path

from teamsbc.app import serve
from tests.support.ports import free_port
from tests.support.sbc import loopback_config


def _add_reader_3_11_2(self, fd, callback, *args):
    """CPython 3.11.2 Lib/asyncio/selector_events.py, _SelectorTransport._add_reader."""
    if self._closing:
        return
    self._loop._add_reader(fd, callback, *args)


def handshake(port: int, pki) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname=pki.sbc_fqdn) as tls:
                return tls.getpeercert() is not None
    except (OSError, ssl.SSLError):
        return False


async def test_handshakes_complete_with_the_3_11_2_transport(monkeypatch, tmp_path: Path, test_pki):
    monkeypatch.setattr(selector_events._SelectorTransport, "_add_reader", _add_reader_3_11_2)
    port = free_port("tcp")
    config = loopback_config(test_pki, tmp_path, port)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(config, ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        results = [await asyncio.to_thread(handshake, port, test_pki) for _ in range(30)]
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
    assert sum(results) == 30, f"{sum(results)}/30 handshakes completed"
