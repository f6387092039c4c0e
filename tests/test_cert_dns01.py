"""DNS-01 end to end: pebble validates against a real bind9 that `teamsbc cert` updates through
RFC 2136 + TSIG, including a wildcard sharing `_acme-challenge` with its base name; records are
removed afterwards, also when the order fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from teamsbc.certs.gate import cert_names
from teamsbc.certs.store import live_paths
from tests.support.bind9 import start_bind9
from tests.support.pebble import (SBC_FQDN, pebble_acme, run_cert,
                                  start_challtestsrv, start_pebble, write_sbc_config)

# pebble and bind9 are installed by ./run-tests; a missing one fails the test (never a skip)
pytestmark = pytest.mark.e2e

CHALLENGE_NAME = f"_acme-challenge.{SBC_FQDN}."


@pytest.fixture
def bind9(procs, tmp_path):
    return start_bind9(procs, tmp_path, zone="example.com",
                       a_records={"sbc": "127.0.0.1"}, updatable=[CHALLENGE_NAME])


def dns01_config(tmp_path: Path, pebble, bind9, *, names=("*.sbc.example.com",), secret=None):
    roots = pebble.write_root(tmp_path / "pebble-root.pem")
    acme = pebble_acme(pebble, roots, challenge="dns-01", names=list(names), http01_listen=None,
                       rfc2136={"server": "127.0.0.1", "port": bind9.port,
                                "key_name": bind9.key_name,
                                "key_secret": secret or bind9.key_secret,
                                "key_algorithm": "hmac-sha256"})
    return write_sbc_config(tmp_path / "teamsbc.yaml", acme)


def test_wildcard_and_base_name_via_rfc2136(tmp_path, procs, bind9):
    pebble = start_pebble(procs, tmp_path, dns_server=bind9.address)
    cfg = dns01_config(tmp_path, pebble, bind9)
    serial0 = bind9.serial()
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{SBC_FQDN}: issued in ")
    leaf = x509.load_pem_x509_certificates(
        live_paths(tmp_path / "certs", SBC_FQDN).fullchain.read_bytes())[0]
    assert set(cert_names(leaf)) == {SBC_FQDN, f"*.{SBC_FQDN}"}
    # both TXT values went out in ONE update and were removed in ONE: serial +2, nothing left
    assert bind9.serial() == serial0 + 2
    assert bind9.txt(CHALLENGE_NAME) == set()


def test_records_removed_when_validation_fails(tmp_path, procs, bind9):
    """pebble asks challtestsrv (which never sees our records): the order fails after we
    published, and the records still go away."""
    dns = start_challtestsrv(procs, tmp_path)
    pebble = start_pebble(procs, tmp_path, dns_server=dns.dns_address)
    cfg = dns01_config(tmp_path, pebble, bind9)
    serial0 = bind9.serial()
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.startswith(f"{SBC_FQDN}: issuance failed: order: validation failed: dns-01 for ")
    assert "\n" not in err and err.endswith("; no certificate installed")
    assert bind9.serial() == serial0 + 2      # published, then deleted
    assert bind9.txt(CHALLENGE_NAME) == set()
    assert not live_paths(tmp_path / "certs", SBC_FQDN).directory.exists()


def test_wrong_tsig_secret_is_one_clear_line(tmp_path, procs, bind9):
    pebble = start_pebble(procs, tmp_path, dns_server=bind9.address)
    cfg = dns01_config(tmp_path, pebble, bind9,
                       secret="d3JvbmdrZXl3cm9uZ2tleXdyb25na2V5d3Jvbmdr")
    serial0 = bind9.serial()
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 1
    err = r.stderr.strip()
    assert f"DNS server 127.0.0.1:{bind9.port} refused our TSIG signature" in err
    assert "check acme.rfc2136.key_name, key_secret, key_algorithm" in err
    assert "\n" not in err
    assert bind9.serial() == serial0


def test_name_outside_update_policy_is_refused(tmp_path, procs, bind9):
    pebble = start_pebble(procs, tmp_path, dns_server=bind9.address)
    cfg = dns01_config(tmp_path, pebble, bind9, names=("tenant1.example.com",))
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 1
    assert "answered REFUSED" in r.stderr and "update-policy" in r.stderr
    assert bind9.txt(CHALLENGE_NAME) == set()
    assert bind9.txt("_acme-challenge.tenant1.example.com.") == set()
