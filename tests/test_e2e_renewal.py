"""Issue 5 end to end: `teamsbc cert renew` against a real ACME server (pebble), HTTP-01
answered by the running SBC, the new certificate reloaded under a steady call stream."""
from __future__ import annotations

import shutil

import pytest

from tests.support.pebble import pebble_acme, run_cert, start_challtestsrv, start_pebble
from tests.support.procs import wait_for
from tests.test_e2e_calls import Lab
from tests.test_e2e_reload import handshake_serial, serial_of

pytestmark = pytest.mark.e2e


def test_renewal_and_reload_under_a_call_stream_lose_no_call(tmp_path, procs, test_pki):
    chall = start_challtestsrv(procs, tmp_path)
    pebble = start_pebble(procs, tmp_path, dns_server=chall.dns_address)
    roots = pebble.write_root(tmp_path / "pebble-root.pem")
    # Teams' side trusts both the test CA (the certificate in use) and pebble's root (the next one)
    both = tmp_path / "teams-trust.pem"
    both.write_bytes(test_pki.ca_cert.read_bytes() + roots.read_bytes())
    certs = tmp_path / "certs"
    live = certs / "live" / test_pki.sbc_fqdn
    live.mkdir(parents=True)
    shutil.copyfile(test_pki.sbc_fullchain, live / "fullchain.pem")
    shutil.copyfile(test_pki.sbc_key, live / "privkey.pem")
    acme = pebble_acme(pebble, roots, http01_listen=None, serve_http01=f"127.0.0.1:{pebble.http_port}")
    lab = Lab(tmp_path, procs, test_pki, stunnel_ca=both, extra={"certs_dir": str(certs), "acme": acme},
              extra_teams={"certificate": str(live / "fullchain.pem"), "private_key": str(live / "privkey.pem"),
                           "trusted_ca": str(both)})
    old = handshake_serial(test_pki, lab.sbc.teams_port)
    teams = lab.teams_uas(calls=150)
    pbx = lab.pbx_uac(calls=150, rate=30, duration_ms=300)
    pbx.start()
    wait_for(lambda: (teams.dir / "messages.log").exists() and "BYE" in (teams.dir / "messages.log").read_text(
        errors="replace"), 20, what="first calls completed")
    renew = run_cert("renew", "-c", str(lab.sbc.config_path), "--force", "--no-jitter",
                     "--deploy-hook", f"kill -HUP {lab.sbc.process.pid}")
    assert renew.returncode == 0, renew.stdout + renew.stderr
    new_serial = serial_of(live / "fullchain.pem")
    assert new_serial != old
    wait_for(lambda: "certificate reloaded" in lab.sbc.log(), 10, what="reload in the SBC")
    assert handshake_serial(test_pki, lab.sbc.teams_port, ca=both) == new_serial
    res_pbx, res_teams = pbx.wait(), teams.wait()
    lab.check(res_pbx, res_teams)
    assert (res_pbx.successful, res_pbx.failed) == (150, 0)
    assert "serving ACME HTTP-01 tokens" in lab.sbc.log()
