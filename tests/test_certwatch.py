"""teamsbc.certwatch with real certificate files and real SSL contexts (the running SBC's side
is in test_e2e_reload.py / test_admin_e2e.py): a changed chain file reloads, a pair that does
not load is refused and changes nothing, the expiry line comes at start and then daily."""
from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import ssl
import threading

from cryptography import x509

from teamsbc.certwatch import CertificateWatch
from teamsbc.tls import server_context


def serial(path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def presented_serial(ctx: ssl.SSLContext, pki) -> int:
    """A handshake against `ctx` (in memory, over a socket pair): which certificate is served."""
    a, b = socket.socketpair()
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    client.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))

    def serve():
        try:
            with ctx.wrap_socket(b, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass
    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(a, server_hostname=pki.sbc_fqdn) as tls:
        der = tls.getpeercert(binary_form=True)
    t.join(5)
    return x509.load_der_x509_certificate(der).serial_number


def replace(src, dst) -> None:
    tmp = dst.with_suffix(".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_changed_files_reload_bad_pair_refused_expiry_daily(tmp_path, test_pki, caplog):
    chain, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    shutil.copyfile(test_pki.sbc_fullchain, chain)
    shutil.copyfile(test_pki.sbc_key, key)
    ctx = server_context(chain, key, test_pki.ca_cert)
    reloaded = []
    watch = CertificateWatch(chain, key, [ctx], on_reloaded=lambda: reloaded.append(1))
    caplog.set_level(logging.INFO, logger="teamsbc.transport")

    watch.tick(100.0)                                  # at start: the expiry line, no reload
    assert reloaded == [] and "certificate valid for" in caplog.text
    caplog.clear()
    watch.tick(105.0)
    assert caplog.text == ""                            # nothing changed, expiry not due

    new_chain, new_key = test_pki.issue("watch-renewed", [test_pki.sbc_fqdn], days=20)
    replace(new_key, key)
    replace(new_chain, chain)
    watch.tick(110.0)
    assert reloaded == [1], caplog.text
    assert "certificate reloaded (certificate files changed): serial" in caplog.text
    assert presented_serial(ctx, test_pki) == serial(new_chain)

    caplog.clear()
    other_chain, _ = test_pki.issue("watch-other", [test_pki.sbc_fqdn])
    replace(other_chain, chain)                        # a chain without its key
    assert watch.reload("SIGHUP") is not None
    assert "certificate reload (SIGHUP) refused, the current one stays" in caplog.text
    assert reloaded == [1] and presented_serial(ctx, test_pki) == serial(new_chain)

    caplog.clear()
    replace(new_chain, chain)                          # the pair is whole again
    watch.tick(100.0 + 86400)                           # and a day later: 20 days left is a warning
    assert reloaded == [1, 1], caplog.text
    assert any(r.levelno == logging.WARNING and re.fullmatch(
        r"certificate expires in (19|20)\.\d days: renew it \(teamsbc cert renew\)", r.getMessage())
        for r in caplog.records), caplog.text
