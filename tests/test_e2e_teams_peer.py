"""Quick checks of the Python Teams peer (tests/support/teams_peer.py) against the real SBC.

- the SBC answers the peer's out-of-dialog OPTIONS with 200, its FQDN Contact and X-MS-SBC,
  on the connection the peer opened;
- a peer presenting a certificate from an unrelated CA cannot talk to the SBC's Teams listener
  (TLS 1.2: the handshake fails; TLS 1.3: the SBC aborts right after it, no SIP answer);
- no answer: the PBX's CANCEL reaches Teams on the INVITE's connection, 487 goes back;
- per-call answers: 503 (no provisional) from sip.pstnhub makes the SBC try sip2 (the SBC's
  connection to it carries SNI sip2); 603 is final (no failover).
"""
from __future__ import annotations

import asyncio
import re
import ssl

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess
from tests.support.sipp import Sipp
from tests.support.teams_peer import ANSWER_CONTACT, Answer, TeamsPeer, uri_of

pytestmark = pytest.mark.e2e


@pytest.fixture
async def sbc_and_peer(procs, tmp_path, test_pki):
    peer_port, pbx_port = free_port("tcp"), free_port("both")
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=pbx_port,
                     teams_resolve={name: peer_port for name in TEAMS_NAMES})
    peer = TeamsPeer(test_pki, sbc_port=sbc.teams_port)
    await peer.listen(peer_port)
    try:
        await asyncio.to_thread(sbc.start)
        yield sbc, peer, pbx_port
    finally:
        await peer.close()


async def test_options_answered_with_fqdn_contact(sbc_and_peer):
    sbc, peer, _ = sbc_and_peer
    resp = await peer.options()
    diag = peer.describe() + sbc.log()
    m = resp.msg
    assert m.status == 200, diag
    assert m.header("contact") == f"<sip:{sbc.fqdn}:{sbc.teams_port};transport=tls>", diag
    assert m.header("x-ms-sbc"), diag
    assert "OPTIONS" in (m.header("allow") or ""), diag
    assert resp.direction == "outbound", diag  # answered on the connection the peer opened
    assert sbc.fqdn in resp.conn.peer_names  # the SBC's certificate, verified against the test CA
    assert not [c for c in peer.connections if c.direction == "inbound"], diag


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, None], ids=["tls12", "tls13"])
async def test_rogue_ca_client_refused(sbc_and_peer, test_pki, tls_max):
    sbc, _, _ = sbc_and_peer
    rogue = TeamsPeer(test_pki, sbc_port=sbc.teams_port, cert=test_pki.rogue_fullchain,
                      key=test_pki.rogue_key, tls_max=tls_max)
    try:
        try:
            conn = await rogue.connect()
        except (ssl.SSLError, ConnectionError):
            conn = None  # the handshake itself failed
        if tls_max == ssl.TLSVersion.TLSv1_2:
            assert conn is None, "TLS 1.2 handshake with a rogue-CA client certificate completed"
        if conn is not None:
            # TLS 1.3: the client's side of the handshake is done before the server checks the
            # client certificate; the server must then abort without answering anything.
            text, _ = rogue.options_request()
            try:
                conn.send(text)
            except ConnectionError:
                pass
            try:
                await asyncio.wait_for(conn.closed.wait(), 10)
            except asyncio.TimeoutError:
                pytest.fail("the SBC kept a connection whose client certificate is from an "
                            "unrelated CA open for 10 s\n" + rogue.describe())
        assert not rogue.received, rogue.describe()
    finally:
        await rogue.close()
    # and the SBC still serves a legitimate peer
    good = TeamsPeer(test_pki, sbc_port=sbc.teams_port)
    try:
        assert (await good.options()).msg.status == 200, good.describe() + sbc.log()
    finally:
        await good.close()


async def test_503_fails_over_to_sip2(sbc_and_peer, procs, tmp_path):
    sbc, peer, pbx_port = sbc_and_peer
    peer.answers.append(Answer(503, ringing=False, retry_after=30))
    uac = Sipp("uac.xml", workdir=tmp_path, local_port=pbx_port, remote=("127.0.0.1", sbc.pbx_listen_port),
               keys={"ruri_user": "02071234567", "to_user": "02071234567"}, procs=procs,
               duration_ms=100, timeout_s=20)
    await asyncio.to_thread(uac.start)
    res = await asyncio.to_thread(uac.wait)
    diag = res.describe() + peer.describe() + sbc.log()
    assert res.ok, diag
    invites = peer.find(lambda r: r.msg.method == "INVITE" and r.msg.is_request)
    assert [i.conn.sni for i in invites] == ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com"], diag
    assert [re.sub(r"^sip:[^@]+@", "", i.msg.request_uri) for i in invites] == [
        "sip.pstnhub.microsoft.com:5061;user=phone;transport=tls",
        "sip2.pstnhub.microsoft.com:5061;user=phone;transport=tls"], diag
    # the 503 was ACKed hop-by-hop on the connection it went out on; the 2xx ACK and the BYE
    # followed the route set to Teams' edge (sip-du-a-us), R-URI = the 200's Contact
    acks = peer.find(lambda r: r.msg.method == "ACK" and r.msg.is_request)
    assert any(a.conn is invites[0].conn for a in acks), diag
    for method in ("ACK", "BYE"):
        rec = await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == method
                                  and r.conn.sni == "sip-du-a-us.pstnhub.microsoft.com", what=method)
        assert rec.msg.request_uri == uri_of(ANSWER_CONTACT), diag


async def test_603_is_final(sbc_and_peer, procs, tmp_path):
    sbc, peer, pbx_port = sbc_and_peer
    peer.answers.append(Answer(603, ringing=False))
    uac = Sipp("uac_reject.xml", workdir=tmp_path, local_port=pbx_port,
               remote=("127.0.0.1", sbc.pbx_listen_port), keys={"code": 603}, procs=procs, timeout_s=20)
    await asyncio.to_thread(uac.start)
    res = await asyncio.to_thread(uac.wait)
    diag = res.describe() + peer.describe() + sbc.log()
    assert res.ok, diag
    invites = peer.find(lambda r: r.msg.method == "INVITE" and r.msg.is_request)
    assert [i.conn.sni for i in invites] == ["sip.pstnhub.microsoft.com"], diag


async def _cancelled_call(sbc, peer, pbx_port, procs, tmp_path):
    peer.default_answer = Answer(None)  # ring, never answer
    uac = Sipp("uac_cancel.xml", workdir=tmp_path, local_port=pbx_port,
               remote=("127.0.0.1", sbc.pbx_listen_port),
               keys={"ruri_user": "02071234567", "to_user": "02071234567"}, procs=procs, timeout_s=20)
    await asyncio.to_thread(uac.start)
    res = await asyncio.to_thread(uac.wait)
    diag = res.describe() + peer.describe() + sbc.log()
    assert res.ok, diag
    return diag


async def test_cancel_while_ringing(sbc_and_peer, procs, tmp_path):
    diag = await _cancelled_call(*sbc_and_peer, procs, tmp_path)
    peer = sbc_and_peer[1]
    invite = (await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "INVITE")).conn
    cancel = await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "CANCEL")
    ack = await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "ACK")
    assert cancel.conn is invite and ack.conn is invite, diag  # same hop, same connection


async def test_sbc_built_cancel_and_ack_carry_x_ms_sbc(sbc_and_peer, procs, tmp_path):
    diag = await _cancelled_call(*sbc_and_peer, procs, tmp_path)
    peer = sbc_and_peer[1]
    await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "ACK")
    for method in ("CANCEL", "ACK"):
        rec = peer.find(lambda r: r.msg.is_request and r.msg.method == method)[0]
        assert rec.msg.header("x-ms-sbc"), (method, diag)
