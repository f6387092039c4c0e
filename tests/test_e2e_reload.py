"""Certificate hot reload in the running SBC: SIGHUP and file changes, under a call stream."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl

import pytest
from cryptography import x509

from tests.support.procs import wait_for
from tests.test_e2e_calls import Lab

pytestmark = pytest.mark.e2e


def serial_of(path) -> int:
    return x509.load_pem_x509_certificate(open(path, "rb").read()).serial_number


def handshake_serial(pki, port: int, ca=None) -> int:
    """A fresh TLS handshake as Teams would make it: which certificate does the SBC present?"""
    ctx = ssl.create_default_context(cafile=str(ca or pki.ca_cert))
    ctx.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=pki.sbc_fqdn) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def install(src_chain, src_key, live_chain, live_key) -> None:
    """Like the certificate store: write next to the live file, then rename over it."""
    for src, dst in ((src_key, live_key), (src_chain, live_chain)):
        tmp = dst.with_suffix(".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


class ReloadLab(Lab):
    def __init__(self, tmp_path, procs, pki):
        self.live = tmp_path / "live"
        self.live.mkdir()
        self.chain, self.key = self.live / "fullchain.pem", self.live / "privkey.pem"
        shutil.copyfile(pki.sbc_fullchain, self.chain)
        shutil.copyfile(pki.sbc_key, self.key)
        super().__init__(tmp_path, procs, pki, extra_teams={
            "certificate": str(self.chain), "private_key": str(self.key)})

    def sbc_log(self) -> str:
        return self.sbc.log()


def test_sighup_reload_under_a_call_stream_loses_no_call(tmp_path, procs, test_pki):
    lab = ReloadLab(tmp_path, procs, test_pki)
    old_serial = handshake_serial(test_pki, lab.sbc.teams_port)
    assert old_serial == serial_of(test_pki.sbc_fullchain)
    new_chain, new_key = test_pki.issue("sbc-renewed", [test_pki.sbc_fqdn])
    teams = lab.teams_uas(calls=120)
    pbx = lab.pbx_uac(calls=120, rate=40, duration_ms=500)
    pbx.start()
    # reload in the middle of the stream: once some calls went through
    wait_for(lambda: "BYE" in (teams.dir / "messages.log").read_text(errors="replace")
             if (teams.dir / "messages.log").exists() else False, 20, what="first calls completed")
    install(new_chain, new_key, lab.chain, lab.key)
    os.kill(lab.sbc.process.pid, signal.SIGHUP)
    wait_for(lambda: "certificate reloaded (SIGHUP)" in lab.sbc_log(), 10, what="reload logged")
    assert handshake_serial(test_pki, lab.sbc.teams_port) == serial_of(new_chain)
    res_pbx, res_teams = pbx.wait(), teams.wait()
    lab.check(res_pbx, res_teams)
    assert res_pbx.successful == 120 and res_pbx.failed == 0
    assert "renewing connection to sip.pstnhub.microsoft.com" in lab.sbc_log()


def test_file_change_is_picked_up_without_signal(tmp_path, procs, test_pki):
    lab = ReloadLab(tmp_path, procs, test_pki)
    new_chain, new_key = test_pki.issue("sbc-watched", [test_pki.sbc_fqdn])
    install(new_chain, new_key, lab.chain, lab.key)
    wait_for(lambda: "certificate reloaded (certificate files changed)" in lab.sbc_log(), 15,
             what="file watch reload")
    assert handshake_serial(test_pki, lab.sbc.teams_port) == serial_of(new_chain)


def test_bad_pair_is_refused_and_the_live_certificate_stays(tmp_path, procs, test_pki):
    lab = ReloadLab(tmp_path, procs, test_pki)
    other_chain, _ = test_pki.issue("sbc-other", [test_pki.sbc_fqdn])
    _, wrong_key = test_pki.issue("sbc-wrongkey", [test_pki.sbc_fqdn])
    install(other_chain, wrong_key, lab.chain, lab.key)
    os.kill(lab.sbc.process.pid, signal.SIGHUP)
    wait_for(lambda: "certificate reload (SIGHUP) refused, the current one stays" in lab.sbc_log(), 10,
             what="refusal logged")
    assert handshake_serial(test_pki, lab.sbc.teams_port) == serial_of(test_pki.sbc_fullchain)
    # and calls still work
    teams = lab.teams_uas(calls=1)
    lab.check(lab.pbx_uac(calls=1).run(), teams.wait())
