"""Issue 17 item 1 end to end: two real SBC processes sharing one config (sbc.secret, FQDN,
ports; each box on its own loopback address) route each other's calls. Teams' in-dialog
requests for a call set up through box A reach box B (as they do when A's address or DNS name
moves to B: tests/test_ha_pair.py does that with keepalived) and B routes them by the sealed
x-tsbc-c / x-tsbc-rr values alone. A box with another secret refuses them (403), and sends
nothing to the PBX; a box in the middle of a rotation (new secret, the old one as
sbc.previous_secret) routes them.

1. Teams -> PBX through A; Teams hangs up through B (uas_any_box.xml): BYE reaches the PBX.
2. PBX -> Teams through A; Teams hangs up through a stranger (403), then through the rotating
   box B (uac_callee_bye_any_box.xml): BYE reaches the PBX, its 200 reaches Teams.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess
from tests.support.sipp import Sipp
from tests.support.teams_peer import TeamsPeer
from tests.test_e2e_restart import is_req, sipp_saw

pytestmark = pytest.mark.e2e

SECRET = "pair-secret-0123456789-abcdefghijklmnop"
NEW_SECRET = "pair-secret-rotated-9876543210-zyxwvu"
OTHER = "some-other-installation-secret-000000000"
HOSTS = {"a": "127.0.17.1", "b": "127.0.17.2", "c": "127.0.17.3"}


@pytest.fixture
async def pair(procs, tmp_path, test_pki):
    peer_port, pbx_port = free_port("tcp"), free_port("both")
    teams_port, pbx_listen = free_port("tcp"), free_port("both")

    def box(name: str, **sbc) -> SbcProcess:
        return SbcProcess(tmp_path, procs, test_pki, pbx_port=pbx_port, host=HOSTS[name], name=name,
                          teams_port=teams_port, pbx_listen_port=pbx_listen,
                          teams_resolve={n: peer_port for n in TEAMS_NAMES},
                          extra={"sbc": sbc, "security": {"topology_hiding": True}})
    boxes = {"a": box("a", secret=SECRET), "b": box("b", secret=SECRET),
             "rotating": box("c", secret=NEW_SECRET, previous_secret=SECRET)}
    peer = TeamsPeer(test_pki, sbc_host=HOSTS["a"], sbc_port=teams_port)
    await peer.listen(peer_port)
    try:
        await asyncio.gather(*(asyncio.to_thread(b.start) for b in (boxes["a"], boxes["b"])))
        yield boxes, peer, pbx_port, tmp_path, procs
    finally:
        await peer.close()


async def through(peer: TeamsPeer, host: str) -> None:
    """Teams' next requests go to another box (its DNS answer or the floating address moved)."""
    if peer._out is not None:
        await peer._out.close()
    peer._out = None
    peer.sbc_host = host


def diag(boxes, peer, *results) -> str:
    return "".join(r.describe() for r in results) + peer.describe() + "\n" + boxes["a"].log()


async def test_teams_call_through_a_ended_through_b(pair):
    boxes, peer, pbx_port, tmp_path, procs = pair
    uas = Sipp("uas_any_box.xml", workdir=tmp_path, local_port=pbx_port, transport="u1", procs=procs,
               timeout_s=30)
    await asyncio.to_thread(uas.start)
    call = await peer.invite(to="+14255550100", from_="+12065550123")
    assert call.status == 200, diag(boxes, peer)
    await sipp_saw(uas, "ACK")
    assert "127.0.17" not in str(call.final.msg.header("contact")), diag(boxes, peer)  # sealed
    await through(peer, HOSTS["b"])
    final = await call.bye()
    res = await asyncio.to_thread(uas.wait)
    d = diag(boxes, peer, res)
    assert final.msg.status == 200, d
    assert res.ok and res.received("BYE"), d
    bye = res.received("BYE")[0]
    assert any(HOSTS["b"] in v for v in bye.values("via")), d   # it came through box B


async def test_pbx_call_through_a_refused_by_a_stranger_routed_by_the_rotating_box(pair):
    boxes, peer, pbx_port, tmp_path, procs = pair
    stranger = SbcProcess(tmp_path, procs, peer.pki, pbx_port=pbx_port, host="127.0.17.4", name="stranger",
                          teams_port=boxes["a"].teams_port, pbx_listen_port=boxes["a"].pbx_listen_port,
                          teams_resolve=boxes["a"].config["teams"]["resolve"],
                          extra={"sbc": {"secret": OTHER}, "security": {"topology_hiding": True}})
    await asyncio.gather(asyncio.to_thread(stranger.start), asyncio.to_thread(boxes["rotating"].start))
    uac = Sipp("uac_callee_bye_any_box.xml", workdir=tmp_path, local_port=pbx_port, transport="u1", procs=procs,
               timeout_s=30, remote=(HOSTS["a"], boxes["a"].pbx_listen_port),
               keys={"ruri_user": "02071234567", "to_user": "02071234567", "from_user": "01632960123"})
    await asyncio.to_thread(uac.start)
    invite = await peer.wait_for(is_req("INVITE"), what="INVITE")
    await peer.wait_for(is_req("ACK"), what="ACK for the 200")
    call = peer.calls[invite.msg.call_id]

    await through(peer, "127.0.17.4")
    refused = await call.request("BYE")
    assert refused.msg.status == 403, diag(boxes, peer)
    log = stranger.process.stderr_text() + stranger.process.stdout_text()
    assert "failed authentication" in log, log
    assert OTHER not in log and SECRET not in log, log

    await through(peer, HOSTS["c"])
    final = await call.bye()
    res = await asyncio.to_thread(uac.wait)
    d = diag(boxes, peer, res)
    assert final.msg.status == 200, d
    assert res.ok, d
    byes = res.received("BYE")
    assert len(byes) == 1 and any(HOSTS["c"] in v for v in byes[0].values("via")), d
