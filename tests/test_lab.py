"""teamsbc.lab against the real SBC process: `start_lab_peers(config)` puts Teams on the
config's teams.resolve addresses and the PBX on pbx.address (UDP and TCP), and calls go
through both ways, Teams' keep-alive OPTIONS answered. (`teamsbc demo`, tests/test_demo.py,
and every TeamsPeer test use the same peers.)"""
from __future__ import annotations

import asyncio

import pytest

from teamsbc import config as cfg
from teamsbc.lab import start_lab_peers
from teamsbc.lab.messages import respond, teams_bytes
from teamsbc.labpki import LabPki, ensure_lab_pki
from teamsbc.sip.build import new_request
from teamsbc.sip.message import Response, parse_message
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_lab_peers_on_the_config_addresses_call_both_ways(procs, tmp_path, test_pki, transport):
    teams_port, pbx_port = free_port("tcp"), free_port("both")
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_transport=transport, pbx_port=pbx_port,
                     teams_resolve={name: teams_port for name in TEAMS_NAMES})
    await asyncio.to_thread(sbc.start)
    peers = await start_lab_peers(cfg.load(sbc.config_path), test_pki, options_interval=0.5)
    try:
        diag = lambda: peers.teams.describe() + sbc.log()  # noqa: E731
        assert peers.teams.ports == [teams_port] and peers.pbx.me.port == pbx_port

        call = await peers.pbx.invite("02079460123", "01632960001")
        assert call.status == 200, diag()
        got = peers.teams.calls[call.call_id].invite
        assert got is not None and got.sip.uri.startswith("sip:+442079460123@sip.pstnhub.microsoft.com"), diag()
        assert (await call.bye()).status == 200, diag()

        tcall = await peers.teams.invite("+441632960001", "+12065550123")
        assert tcall.status == 200, diag()
        assert peers.pbx.calls[tcall.call_id].role == "uas"
        assert (await tcall.bye()).sip.status == 200, diag()
        assert peers.pbx.calls[tcall.call_id].ended and peers.pbx.acks >= 1

        await peers.teams.wait_for(lambda r: isinstance(r.sip, Response) and r.sip.cseq.method == "OPTIONS"
                                   and r.sip.status == 200, 5, "an answer to Teams' OPTIONS")
    finally:
        await peers.stop()


def test_lab_pki_is_found_next_to_the_trusted_ca(tmp_path):
    made = ensure_lab_pki(tmp_path / "lab", "sbc.teamsbc.test", TEAMS_NAMES[:1])
    assert LabPki.at(made.ca_cert.parent) == made


def test_teams_writes_header_names_in_capitals():
    req = new_request("OPTIONS", "sip:sbc.example.com", via="SIP/2.0/TLS 52.114.132.46:5061;branch=z9hG4bK-1",
                      from_="<sip:sip.pstnhub.microsoft.com>;tag=a", to="<sip:sbc.example.com>",
                      call_id="c1", cseq=1)
    data = teams_bytes(respond(req, 200, extra=[("allow", "INVITE,ACK")], body="v=0\r\n"))
    head = data.split(b"\r\n\r\n")[0].decode()
    assert [line.split(":")[0] for line in head.split("\r\n")[1:]] == [
        "VIA", "FROM", "TO", "CALL-ID", "CSEQ", "ALLOW", "CONTENT-TYPE", "CONTENT-LENGTH"]
    back = parse_message(data)
    assert isinstance(back, Response) and back.status == 200 and back.body == b"v=0\r\n"
