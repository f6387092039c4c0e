"""Calls survive an SBC restart between answer and BYE (real SBC process, sipp on the PBX side
over UDP, the Python TeamsPeer with real mutual TLS on the Teams side).

The SBC keeps no dialog state: its Record-Route and its FQDN Contact (which carries the PBX
Contact) are enough to route in-dialog requests after a restart. What the new process must do
on the Teams side (reference section 2): open its OWN new TLS connection to Teams for requests
it relays (client certificate, SNI = the next hop's FQDN), and answer Teams' requests on the
connection Teams (re)opened.

1. PBX -> Teams, restart, the PBX hangs up (uac.xml):        BYE reaches Teams, 200 reaches the PBX
2. Teams -> PBX, restart, Teams hangs up (uas.xml):           Teams reconnects, BYE reaches the PBX
3. Teams -> PBX, restart, the PBX hangs up (uas_bye.xml):     BYE reaches Teams, 200 reaches the PBX
4. PBX -> Teams, restart, Teams hangs up (uac_callee_bye.xml): BYE reaches the PBX, 200 reaches Teams

Each also checks what Teams got from the SBC (reference sections 2, 3, 5).
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import ProcessManager, wait_for
from tests.support.sbc import SbcProcess
from tests.support.sipp import Sipp, SippResult, parse_message_log
from tests.support.teams_peer import ANSWER_CONTACT, CALLER_CONTACT, Received, TeamsPeer, uri_of

pytestmark = pytest.mark.e2e

HOLD_MS = 4000          # sipp's pause between ACK and its own BYE: room for one restart
TEAMS_PRIMARY = "sip.pstnhub.microsoft.com"
TEAMS_EDGE = "sip-du-a-us.pstnhub.microsoft.com"
UK_NATIONAL, UK_E164 = "02071234567", "+442071234567"
PBX_CALLER, PBX_CALLER_E164 = "01632960123", "+441632960123"


@dataclass
class Rig:
    sbc: SbcProcess
    peer: TeamsPeer
    pbx_port: int
    procs: ProcessManager
    tmp_path: Path

    def sipp(self, scenario: str, **kw) -> Sipp:
        """A PBX-side sipp over UDP on the PBX trunk address the SBC sends to."""
        kw.setdefault("timeout_s", 30)
        kw.setdefault("duration_ms", HOLD_MS)
        return Sipp(scenario, workdir=self.tmp_path, local_port=self.pbx_port, transport="u1",
                    procs=self.procs, **kw)

    def uac(self, scenario: str, **kw) -> Sipp:
        keys = {"ruri_user": UK_NATIONAL, "to_user": UK_NATIONAL, "from_user": PBX_CALLER}
        return self.sipp(scenario, remote=("127.0.0.1", self.sbc.pbx_listen_port), keys=keys, **kw)

    def diag(self, *results: SippResult) -> str:
        return "".join(r.describe() for r in results) + self.peer.describe() + "\n" + self.sbc.log()

    async def restart(self) -> set[int]:
        """Restart the SBC (SIGTERM, exit 0, start again on the same ports) and see every TLS
        connection of the old process closed. Returns the ids of those connections."""
        before = {c.id for c in self.peer.connections}
        old = [c for c in self.peer.connections if not c.closed.is_set()]
        await asyncio.to_thread(self.sbc.restart)
        try:
            await asyncio.wait_for(asyncio.gather(*(c.closed.wait() for c in old)), 5)
        except asyncio.TimeoutError:
            pytest.fail(f"connections of the old SBC process still open: {old}\n{self.diag()}")
        return before


@pytest.fixture
async def rig(procs, tmp_path, test_pki):
    peer_port, pbx_port = free_port("tcp"), free_port("both")
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=pbx_port, pbx_transport="udp",
                     teams_resolve={name: peer_port for name in TEAMS_NAMES})
    peer = TeamsPeer(test_pki, sbc_port=sbc.teams_port)
    await peer.listen(peer_port)
    try:
        await asyncio.to_thread(sbc.start)
        yield Rig(sbc, peer, pbx_port, procs, tmp_path)
    finally:
        await peer.close()


# --------------------------------------------------------------------------- helpers

def is_req(method: str):
    return lambda r: r.msg.is_request and r.msg.method == method


async def sipp_saw(s: Sipp, method: str, timeout: float = 10.0) -> None:
    """Bounded wait until sipp's message trace shows a received request ``method`` (so nothing
    of the call setup is still in flight inside the SBC when it is stopped)."""
    def seen():
        try:
            text = s.message_file.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return any(m.direction == "received" and m.is_request and m.method == method
                   for m in parse_message_log(text))
    await asyncio.to_thread(wait_for, seen, timeout, what=f"{s.name} to receive {method}",
                            alive=s.process)


def hostport_of(uri: str) -> str:
    """host:port of a sip: URI (user part and parameters removed)."""
    return re.sub(r"^sips?:(?:[^@;]+@)?", "", uri).split(";", 1)[0]


def assert_from_sbc(rec: Received, sbc: SbcProcess, sni: str, diag: str) -> None:
    """A request the SBC sent to Teams: on a connection the SBC opened, presenting its
    certificate, with SNI = the Teams FQDN it sent to; FQDN Via and Contact, X-MS-SBC."""
    m, me = rec.msg, f"{sbc.fqdn}:{sbc.teams_port}"
    assert rec.direction == "inbound", diag
    assert sbc.fqdn in rec.conn.peer_names, (rec.conn.peercert, diag)
    assert rec.conn.sni == sni, diag
    assert m.values("via")[0].startswith(f"SIP/2.0/TLS {me};"), diag
    contact = uri_of(m.header("contact") or "")
    assert hostport_of(contact) == me and ";transport=tls" in contact, diag
    assert m.header("x-ms-sbc"), diag


def assert_invite_to_teams(rec: Received, sbc: SbcProcess, diag: str) -> None:
    m = rec.msg
    assert_from_sbc(rec, sbc, TEAMS_PRIMARY, diag)
    assert m.request_uri == f"sip:{UK_E164}@{TEAMS_PRIMARY}:5061;user=phone;transport=tls", diag
    assert m.values("record-route")[0] == f"<sip:{sbc.fqdn}:{sbc.teams_port};transport=tls;lr;r2=on>", diag
    assert uri_of(m.header("from") or "").startswith(f"sip:{PBX_CALLER_E164}@"), diag
    assert "replaces" not in m.headers, diag


def assert_answer_from_sbc(rec: Received, sbc: SbcProcess, diag: str) -> None:
    """The SBC's 200 to Teams' INVITE: on the peer's own connection, FQDN Contact, X-MS-SBC."""
    m = rec.msg
    assert rec.direction == "outbound", diag
    contact = uri_of(m.header("contact") or "")
    assert hostport_of(contact) == f"{sbc.fqdn}:{sbc.teams_port}" and ";transport=tls" in contact, diag
    assert m.header("x-ms-sbc"), diag


def assert_all_marked(peer: TeamsPeer, sbc: SbcProcess, diag: str) -> None:
    """Reference 3/4: everything the SBC sent to Teams carries X-MS-SBC, and any Contact in it
    names the SBC FQDN and port with transport=tls (never an IP)."""
    assert peer.received, diag
    for rec in peer.received:
        m = rec.msg
        assert m.header("x-ms-sbc"), (f"no X-MS-SBC in {m.start_line!r}", diag)
        for c in m.values("contact"):
            uri = uri_of(c)
            assert hostport_of(uri) == f"{sbc.fqdn}:{sbc.teams_port}" and ";transport=tls" in uri, (c, diag)


def assert_new_inbound(rec: Received, before: set[int], diag: str) -> None:
    assert rec.conn.id not in before, ("arrived on a connection from before the restart", diag)
    assert rec.direction == "inbound", diag


# --------------------------------------------------------------------------- tests

async def test_pbx_to_teams_restart_then_pbx_hangs_up(rig):
    uac = rig.uac("uac.xml")
    await asyncio.to_thread(uac.start)
    invite = await rig.peer.wait_for(is_req("INVITE"), what="INVITE")
    assert_invite_to_teams(invite, rig.sbc, rig.diag())
    ack = await rig.peer.wait_for(is_req("ACK"), what="ACK for the 200")
    assert ack.msg.request_uri == uri_of(ANSWER_CONTACT), rig.diag()
    before = await rig.restart()

    bye = await rig.peer.wait_for(is_req("BYE"), timeout=HOLD_MS / 1000 + 10, what="BYE after the restart")
    res = await asyncio.to_thread(uac.wait)
    d = rig.diag(res)
    assert_new_inbound(bye, before, d)
    assert_from_sbc(bye, rig.sbc, TEAMS_EDGE, d)  # next hop: Teams' edge from its Record-Route
    assert bye.msg.request_uri == uri_of(ANSWER_CONTACT), d
    assert bye.msg.call_id == invite.msg.call_id, d
    assert rig.peer.calls[bye.msg.call_id].ended, d  # the peer matched the dialog, answered 200
    assert res.ok, d
    assert [m for m in res.received(200) if m.method == "BYE"], d
    assert_all_marked(rig.peer, rig.sbc, d)


async def test_teams_to_pbx_restart_then_teams_hangs_up(rig):
    uas = rig.sipp("uas.xml")
    await asyncio.to_thread(uas.start)
    call = await rig.peer.invite(to="+14255550100", from_="+12065550123")
    assert call.status == 200, rig.diag()
    assert_answer_from_sbc(call.final, rig.sbc, rig.diag())
    assert [p.msg.status for p in call.provisionals] == [100, 180], rig.diag()
    # route set: the SBC's two entries (Teams side first), Teams' own edge left out
    assert call.route == [f"<sip:{rig.sbc.fqdn}:{rig.sbc.teams_port};transport=tls;lr;r2=on>",
                          f"<sip:127.0.0.1:{rig.sbc.pbx_listen_port};lr;r2=on>"], rig.diag()
    await sipp_saw(uas, "ACK")
    old_conn = call.final.conn
    before = await rig.restart()

    final = await call.bye()
    res = await asyncio.to_thread(uas.wait)
    d = rig.diag(res)
    assert final.msg.status == 200, d
    assert final.direction == "outbound" and final.conn.id not in before, d  # reconnected
    assert old_conn.closed.is_set(), d
    assert res.ok, d
    bye = res.received("BYE")
    assert bye and bye[0].request_uri.startswith("sip:+14255550100@127.0.0.1:"), d
    assert_all_marked(rig.peer, rig.sbc, d)


async def test_teams_to_pbx_restart_then_pbx_hangs_up(rig):
    uas = rig.sipp("uas_bye.xml")
    await asyncio.to_thread(uas.start)
    call = await rig.peer.invite(to="+14255550100", from_="+12065550123")
    assert call.status == 200, rig.diag()
    assert_answer_from_sbc(call.final, rig.sbc, rig.diag())
    await sipp_saw(uas, "ACK")
    before = await rig.restart()

    bye = await rig.peer.wait_for(is_req("BYE"), timeout=HOLD_MS / 1000 + 10, what="BYE after the restart")
    res = await asyncio.to_thread(uas.wait)
    d = rig.diag(res)
    assert_new_inbound(bye, before, d)
    assert_from_sbc(bye, rig.sbc, TEAMS_EDGE, d)
    assert bye.msg.request_uri == uri_of(CALLER_CONTACT), d  # Teams' Contact, via its edge
    assert bye.msg.call_id == call.call_id and call.ended, d
    assert res.ok, d
    assert [m for m in res.received(200) if m.method == "BYE"], d
    assert_all_marked(rig.peer, rig.sbc, d)


async def test_pbx_to_teams_restart_then_teams_hangs_up(rig):
    uac = rig.uac("uac_callee_bye.xml")
    await asyncio.to_thread(uac.start)
    invite = await rig.peer.wait_for(is_req("INVITE"), what="INVITE")
    assert_invite_to_teams(invite, rig.sbc, rig.diag())
    await rig.peer.wait_for(is_req("ACK"), what="ACK for the 200")
    call = rig.peer.calls[invite.msg.call_id]
    before = await rig.restart()

    final = await call.bye()  # on the peer's own (new) connection, along the INVITE's Record-Route
    res = await asyncio.to_thread(uac.wait)
    d = rig.diag(res)
    assert final.msg.status == 200, d
    assert final.direction == "outbound" and final.conn.id not in before, d
    assert res.ok, d
    assert res.received("BYE"), d
    assert_all_marked(rig.peer, rig.sbc, d)
