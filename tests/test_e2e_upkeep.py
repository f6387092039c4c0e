"""Upkeep of the SBC's own TLS connections to Teams (reference section 2): CRLF keep-alive on
idle connections, and renewal after teams.connection_max_age without losing transactions."""
from __future__ import annotations

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess
from tests.support.teams_peer import TeamsPeer
from tests.test_e2e_trunk import until

pytestmark = pytest.mark.e2e


async def start(tmp_path, procs, pki, **teams):
    port = free_port("tcp")
    peer = TeamsPeer(pki, sbc_port=0)
    await peer.listen(port)
    sbc = SbcProcess(tmp_path, procs, pki, teams_resolve={n: port for n in TEAMS_NAMES},
                     pbx_port=free_port("both"), keepalive=True,
                     extra={"teams": {"proxies": ["sip.pstnhub.microsoft.com"], **teams},
                            "pbx": {"options_interval": 0}})
    sbc.start()
    return peer, sbc


def options_conns(peer):
    return [r.conn for r in peer.find(lambda r: r.msg.is_request and r.msg.method == "OPTIONS")]


async def test_idle_own_connection_gets_crlf_keepalives(tmp_path, procs, test_pki):
    peer, sbc = await start(tmp_path, procs, test_pki, options_interval=600, keepalive_interval=1)
    try:
        await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "OPTIONS", 5, "first OPTIONS")
        conn = options_conns(peer)[0]
        assert conn.direction == "inbound"  # the SBC's own connection
        await until(lambda: conn.pings >= 2, 5, "two CRLF keep-alives", peer.describe)
        assert conn.usable  # the pongs kept it open
    finally:
        await peer.close()


async def test_own_connection_renewed_after_max_age_and_old_one_closed(tmp_path, procs, test_pki):
    peer, sbc = await start(tmp_path, procs, test_pki, options_interval=1, connection_max_age=10)
    try:
        await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "OPTIONS", 5, "first OPTIONS")
        first = options_conns(peer)[0]
        # within max age + one maintenance round (5 s), new requests use a new connection
        await until(lambda: any(c is not first for c in options_conns(peer)), 20,
                    "OPTIONS on a renewed connection", peer.describe)
        await until(lambda: first.closed.is_set(), 10, "the old connection closed", peer.describe)
        renewed = [c for c in options_conns(peer) if c is not first]
        assert all(c.direction == "inbound" and c.sni == "sip.pstnhub.microsoft.com" for c in renewed)
        # every OPTIONS got its answer: no transaction was lost on the old connection
        assert "OPTIONS timed out" not in sbc.log() and "is now down" not in sbc.log()
        assert "renewing connection to sip.pstnhub.microsoft.com:5061 (older than teams.connection_max_age)" in sbc.log()
    finally:
        await peer.close()
