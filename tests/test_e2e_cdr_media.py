"""Issue 12, item 7 end to end: the CDR's media figures are rtpengine's own.

The real SBC, a real rtpengine 10.5, real SRTP from the Teams side (rtcp-mux, so rtpengine flags
its stream `RTP, RTCP, filled, ICE`) and RTP from the PBX side (tests/test_e2e_media.py's rig).
Each side sends a different number of packets, the CALLEE hangs up (its BYE's From tag is the
callee's: the tags of the delete are swapped), and the call detail record must say exactly what
rtpengine counted from each party: caller_packets from the caller's endpoint, callee_packets
from the callee's. Before the fix the CDR said (n, 0) or (0, n): the muxed Teams stream was
skipped, and the first tag of the reply was taken for the caller.
"""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from teamsbc.media.ng import NgClient
from tests.support.rtpengine import RtpEngine
from tests.support.srtp import parse_rtp
from tests.test_e2e_media import call_from_pbx, call_from_teams, hang_up, media_address, rig, until_calls

pytestmark = pytest.mark.e2e

FROM_TEAMS, FROM_PBX = 37, 23


async def one_way(c, teams_to_pbx: int, pbx_to_teams: int) -> None:
    for packet in c.teams_tx.batch(teams_to_pbx):
        c.teams_sock.send(packet, media_address(c.teams_got))
    assert len(await c.pbx_call.rtp.collect(teams_to_pbx)) == teams_to_pbx
    for packet in c.pbx_tx.batch(pbx_to_teams):
        c.pbx_call.rtp.send(packet, media_address(c.pbx_got))
    got = await c.teams_sock.collect(pbx_to_teams)
    assert [parse_rtp(c.teams_rx.unprotect(p)).ssrc for p in got] == [c.pbx_tx.ssrc] * pbx_to_teams


async def counted_by_rtpengine(eng: RtpEngine, call_id: str, endpoint_port: int) -> int:
    """Packets rtpengine received from the endpoint on this port (its own counters)."""
    async with NgClient(eng.ng_udp) as ng:
        q = await ng.request({"command": "query", "call-id": call_id})
    return sum(s["stats"]["packets"] for t in q["tags"].values() for m in t["medias"] for s in m["streams"]
               if s.get("endpoint", {}).get("port") == endpoint_port)


async def cdr_row(r, call_id: str) -> dict:
    path = r.sbc.dir / "cdr.sqlite"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        with sqlite3.connect(str(path)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM calls WHERE call_id=?", (call_id,)).fetchone()
        if row is not None and row["caller_packets"] is not None:
            return dict(row)
        assert loop.time() < deadline, f"no media figures in the CDR of {call_id}\n{r.diag()}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("direction", ["teams->pbx", "pbx->teams"])
async def test_cdr_media_figures_match_rtpengine_with_rtcp_mux_toward_teams(procs, tmp_path, test_pki, direction):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        c = await (call_from_teams(r) if direction == "teams->pbx" else call_from_pbx(r))
        await one_way(c, FROM_TEAMS, FROM_PBX)
        teams_port, pbx_port = c.teams_sock.port, c.pbx_call.rtp.port
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (await counted_by_rtpengine(eng, c.call_id, teams_port),
               await counted_by_rtpengine(eng, c.call_id, pbx_port)) != (FROM_TEAMS, FROM_PBX):
            assert loop.time() < deadline, r.diag()
            await asyncio.sleep(0.02)
        callee = "pbx" if direction == "teams->pbx" else "teams"
        await hang_up(r, c, callee)            # the callee's BYE: From/To tags swapped
        await until_calls(eng, [], r.diag)
        row = await cdr_row(r, c.call_id)
        caller_sent, callee_sent = (FROM_TEAMS, FROM_PBX) if direction == "teams->pbx" else (FROM_PBX, FROM_TEAMS)
        assert (row["direction"], row["ended_by"]) == (direction, callee), row
        assert (row["caller_packets"], row["callee_packets"]) == (caller_sent, callee_sent), (row, r.diag())
        assert row["rtp_packets"] == FROM_TEAMS + FROM_PBX, row
