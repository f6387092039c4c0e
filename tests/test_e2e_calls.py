"""Calls through the real SBC process, real sipp on both sides, real mutual TLS on the Teams side.

    Teams-side sipp (TCP) <-> stunnel (TLS, Teams certificate) <-> SBC <-> sipp PBX (UDP or TCP)

The Teams-side stunnel has two services: "teams client" (sipp -> SBC, presenting the Teams
certificate) and "teams server" (SBC -> sipp, requiring the SBC's client certificate). The SBC
maps every Teams FQDN to the latter with `teams.resolve`.
"""
from __future__ import annotations

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess
from tests.support.sipp import Sipp, teams_callee, teams_caller
from tests.support.stunnel import Stunnel, TeamsClient, TeamsServer

pytestmark = pytest.mark.e2e

PBX_DIALLED = "02071234567"       # national UK number as the PBX sends it
PBX_CALLER = "02079460000"
TEAMS_CALLEE = "+14255550100"


def merge(base: dict, **kw) -> dict:
    out = {"keys": dict(base.get("keys", {})), "extra_headers": list(base.get("extra_headers", []))}
    out["keys"].update(kw.pop("keys", {}))
    out["extra_headers"] += kw.pop("extra_headers", [])
    out.update(kw)
    return out


class Lab:
    def __init__(self, tmp_path, procs, pki, *, pbx_transport="udp", resolve=None, invite_timeout=None,
                 extra_teams=None, extra=None, stunnel_ca=None):
        self.tmp, self.procs, self.pki = tmp_path, procs, pki
        self.pbx_transport = pbx_transport
        self.sipp_t = "u1" if pbx_transport == "udp" else "t1"
        self.teams_sipp_port = free_port("tcp")
        self.pbx_port = free_port("both")
        self.client_port, self.server_port = free_port("tcp"), free_port("tcp")
        mapping = {name: self.server_port for name in TEAMS_NAMES}
        mapping.update(resolve or {})
        self.sbc = SbcProcess(tmp_path, procs, pki, teams_resolve=mapping, pbx_transport=pbx_transport,
                              pbx_port=self.pbx_port, invite_timeout=invite_timeout,
                              extra={**(extra or {}), **({"teams": extra_teams} if extra_teams else {})})
        ca = {"ca_file": stunnel_ca} if stunnel_ca else {}
        self.stunnel = Stunnel(tmp_path, [
            TeamsClient.for_pki(pki, accept_port=self.client_port, connect_port=self.sbc.teams_port, **ca),
            TeamsServer.for_pki(pki, accept_port=self.server_port, connect_port=self.teams_sipp_port, **ca),
        ], procs=procs).start()
        self.sbc.start()

    # --- Teams side (sipp over TCP, wrapped in TLS by stunnel)
    def teams_uac(self, scenario="uac.xml", calls=2, **kw) -> Sipp:
        args = merge(teams_caller(sbc_port=self.sbc.teams_port, callee=TEAMS_CALLEE), **kw)
        return Sipp(scenario, workdir=self.tmp, local_port=self.teams_sipp_port,
                    remote=("127.0.0.1", self.client_port), transport="t1", calls=calls,
                    procs=self.procs, name=f"teams-{scenario[:-4]}", **args)

    def teams_uas(self, scenario="uas.xml", calls=2, **kw) -> Sipp:
        args = merge(teams_callee(), **kw)
        return Sipp(scenario, workdir=self.tmp, local_port=self.teams_sipp_port, transport="t1",
                    calls=calls, procs=self.procs, name=f"teams-{scenario[:-4]}", **args).start()

    # --- PBX side (sipp over UDP or TCP, straight to the SBC's PBX listener)
    def pbx_uas(self, scenario="uas.xml", calls=2, **kw) -> Sipp:
        return Sipp(scenario, workdir=self.tmp, local_port=self.pbx_port, transport=self.sipp_t,
                    calls=calls, procs=self.procs, name=f"pbx-{scenario[:-4]}", **kw).start()

    def pbx_uac(self, scenario="uac.xml", calls=2, local_ip="127.0.0.1", **kw) -> Sipp:
        keys = {"ruri_user": PBX_DIALLED, "to_user": PBX_DIALLED, "from_user": PBX_CALLER,
                "ruri_params": ";transport=tcp" if self.pbx_transport == "tcp" else ""}
        keys.update(kw.pop("keys", {}))
        return Sipp(scenario, workdir=self.tmp, local_port=free_port("both"), local_ip=local_ip,
                    remote=("127.0.0.1", self.sbc.pbx_listen_port), transport=self.sipp_t,
                    calls=calls, procs=self.procs, name=f"pbx-{scenario[:-4]}", keys=keys, **kw)

    @property
    def teams_rr(self) -> str:
        return f"<sip:{self.pki.sbc_fqdn}:{self.sbc.teams_port};transport=tls;lr;r2=on>"

    @property
    def pbx_rr(self) -> str:
        t = ";transport=tcp" if self.pbx_transport == "tcp" else ""
        return f"<sip:127.0.0.1:{self.sbc.pbx_listen_port}{t};lr;r2=on>"

    def check(self, *results):
        assert all(r.ok for r in results), "\n".join(r.describe() for r in results) + self.sbc.log()


@pytest.fixture(params=["udp", "tcp"])
def lab(request, tmp_path, procs, test_pki):
    return Lab(tmp_path, procs, test_pki, pbx_transport=request.param)


def assert_toward_teams(lab: Lab, msg, *, is_request: bool):
    """What every message the SBC sends to Teams must carry (reference sections 3-5)."""
    contact = msg.values("contact")[0]
    assert contact.startswith("<sip:") and f"@{lab.pki.sbc_fqdn}:{lab.sbc.teams_port};transport=tls;" in contact, contact
    assert msg.header("x-ms-sbc") == "teamsbc/sbc/0.1.0"
    assert "REFER" not in (msg.header("allow") or "")
    if is_request:
        assert msg.values("via")[0].startswith(f"SIP/2.0/TLS {lab.pki.sbc_fqdn}:{lab.sbc.teams_port};branch=z9hG4bK")
        assert msg.header("replaces") is None


def test_teams_to_pbx_call_caller_hangs_up(lab):
    pbx = lab.pbx_uas()
    teams = lab.teams_uac().run()
    lab.check(teams, pbx.wait())
    res = pbx.wait()
    inv = res.received("INVITE")[0]
    t = ";transport=tcp" if lab.pbx_transport == "tcp" else ""
    assert inv.request_uri == f"sip:{TEAMS_CALLEE}@127.0.0.1:{lab.pbx_port};user=phone{t}"
    assert inv.values("record-route") == [lab.pbx_rr, lab.teams_rr,
                                          "<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"]
    assert inv.values("via")[0].startswith(f"SIP/2.0/{lab.pbx_transport.upper()} 127.0.0.1:{lab.sbc.pbx_listen_port};branch=z9hG4bK")
    assert inv.header("x-ms-sbc") is None
    bye = res.received("BYE")
    assert len(bye) == 2 and not bye[0].values("route")  # our two Route entries popped
    oks = [m for m in teams.received(200) if m.header("cseq").endswith("INVITE")]
    assert len(oks) == 2
    for m in oks:
        assert_toward_teams(lab, m, is_request=False)
        assert m.values("record-route")[:2] == [lab.pbx_rr, lab.teams_rr]


def test_teams_to_pbx_callee_hangs_up(lab):
    pbx = lab.pbx_uas("uas_bye.xml")
    teams = lab.teams_uac("uac_callee_bye.xml").run()
    lab.check(teams, pbx.wait())
    bye = teams.received("BYE")
    assert len(bye) == 2
    assert bye[0].values("via")[0].startswith(f"SIP/2.0/TLS {lab.pki.sbc_fqdn}:{lab.sbc.teams_port};branch=z9hG4bK")
    assert bye[0].header("x-ms-sbc") == "teamsbc/sbc/0.1.0"
    assert bye[0].values("route") == ["<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"]


def test_pbx_to_teams_call_caller_hangs_up(lab):
    teams = lab.teams_uas()
    pbx = lab.pbx_uac(extra_headers=["Replaces: abc@10.0.0.10;to-tag=a;from-tag=b",
                                     "Allow: INVITE, ACK, BYE, CANCEL, REFER, OPTIONS"]).run()
    lab.check(pbx, teams.wait())
    res = teams.wait()
    inv = res.received("INVITE")[0]
    assert inv.request_uri == "sip:+442071234567@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls"
    assert inv.values("record-route")[:2] == [lab.teams_rr, lab.pbx_rr]
    assert inv.header("from").startswith(f"<sip:+442079460000@{lab.pki.sbc_fqdn};user=phone>;tag=")
    assert inv.header("to") == "<sip:+442071234567@sip.pstnhub.microsoft.com;user=phone>"
    assert_toward_teams(lab, inv, is_request=True)
    # the PBX's Contact user is kept, its address travels encoded in x-tsbc-c
    assert inv.values("contact")[0].startswith(
        f"<sip:+14255550199@{lab.pki.sbc_fqdn}:{lab.sbc.teams_port};transport=tls;x-tsbc-c=")
    assert "INVITE" in inv.header("allow") and "NOTIFY" in inv.header("allow")
    bye = res.received("BYE")
    assert len(bye) == 2
    assert bye[0].values("via")[0].startswith(f"SIP/2.0/TLS {lab.pki.sbc_fqdn}:{lab.sbc.teams_port};branch=z9hG4bK")
    assert bye[0].header("x-ms-sbc") == "teamsbc/sbc/0.1.0"
    assert bye[0].values("route") == ["<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"]


def test_pbx_to_teams_callee_hangs_up(lab):
    teams = lab.teams_uas("uas_bye.xml")
    caller = lab.pbx_uac("uac_callee_bye.xml")
    pbx = caller.run()
    lab.check(pbx, teams.wait())
    bye = pbx.received("BYE")
    assert len(bye) == 2
    # Teams' BYE reached the PBX's own Contact, decoded from the FQDN Contact Teams used
    assert bye[0].request_uri == f"sip:+14255550199@127.0.0.1:{caller.local_port};transport={lab.pbx_transport}"
    assert bye[0].values("route") == []


def test_cancel_before_answer_both_ways(lab):
    teams = lab.teams_uas("uas_cancel.xml")
    pbx = lab.pbx_uac("uac_cancel.xml").run()
    lab.check(pbx, teams.wait())
    assert len(teams.wait().received("CANCEL")) == 2
    pbx2 = lab.pbx_uas("uas_cancel.xml")
    teams2 = lab.teams_uac("uac_cancel.xml").run()
    lab.check(teams2, pbx2.wait())
    assert [m.status for m in teams2.received(487)] == [487, 487]


@pytest.mark.parametrize("code", [486, 603])
def test_rejected_calls_both_ways(lab, code):
    teams = lab.teams_uas("uas_reject.xml", keys={"code": code})
    pbx = lab.pbx_uac("uac_reject.xml", keys={"code": code}).run()
    lab.check(pbx, teams.wait())
    assert len(pbx.received(code)) == 2
    assert len(teams.wait().received("ACK")) == 2  # hop-by-hop ACK from the SBC
    pbx2 = lab.pbx_uas("uas_reject.xml", keys={"code": code})
    teams2 = lab.teams_uac("uac_reject.xml", keys={"code": code}).run()
    lab.check(teams2, pbx2.wait())


def test_reinvite_hold_both_ways(lab):
    teams = lab.teams_uas("uas_reinvite.xml")
    pbx = lab.pbx_uac("uac_reinvite.xml").run()
    lab.check(pbx, teams.wait())
    reinv = [m for m in teams.wait().received("INVITE") if "a=inactive" in m.body]
    assert len(reinv) == 2
    assert_toward_teams(lab, reinv[0], is_request=True)
    pbx2 = lab.pbx_uas("uas_reinvite.xml")
    teams2 = lab.teams_uac("uac_reinvite.xml").run()
    lab.check(teams2, pbx2.wait())


def test_failover_from_unreachable_sip_to_sip2(tmp_path, procs, test_pki):
    dead = free_port("tcp")  # nothing listens there: connection refused
    lab = Lab(tmp_path, procs, test_pki, resolve={"sip.pstnhub.microsoft.com": dead})
    teams = lab.teams_uas()
    pbx = lab.pbx_uac().run()
    lab.check(pbx, teams.wait())
    invs = teams.wait().received("INVITE")
    assert [m.request_uri.split("@")[1].split(":")[0] for m in invs] == ["sip2.pstnhub.microsoft.com"] * 2


def test_requests_from_other_addresses_are_refused(tmp_path, procs, test_pki):
    lab = Lab(tmp_path, procs, test_pki, extra={"security": {"unknown_source": "403"}})
    teams = lab.teams_uas(calls=1)
    intruder = lab.pbx_uac("uac_reject.xml", calls=1, local_ip="127.0.0.2", keys={"code": 403}).run()
    assert intruder.ok, intruder.describe()
    teams.stop()
    assert teams.wait().received("INVITE") == []


def test_topology_hiding_calls_both_ways(tmp_path, procs, test_pki):
    """security.topology_hiding: Teams sees only our FQDN in Via and Record-Route; the route
    set still works both ways (ACK, BYE from either end)."""
    lab = Lab(tmp_path, procs, test_pki, extra={"security": {"topology_hiding": True}})
    internal = f"127.0.0.1:{lab.sbc.pbx_listen_port}"
    teams = lab.teams_uas("uas_bye.xml", calls=1)
    pbx = lab.pbx_uac("uac_callee_bye.xml", calls=1).run()
    lab.check(pbx, teams.wait())
    inv = teams.wait().received("INVITE")[0]
    assert len(inv.values("via")) == 1 and inv.values("via")[0].startswith(f"SIP/2.0/TLS {test_pki.sbc_fqdn}:")
    assert all(test_pki.sbc_fqdn in v and internal not in v for v in inv.values("record-route"))
    pbx_uas = lab.pbx_uas(calls=1)
    teams2 = lab.teams_uac(calls=1).run()
    lab.check(teams2, pbx_uas.wait())
    ok = [m for m in teams2.received(200) if m.header("cseq").endswith("INVITE")][0]
    assert not any(internal in v for v in ok.values("record-route") + ok.values("contact"))
    assert ok.values("record-route")[-1] == "<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"
