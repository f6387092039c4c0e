"""teamsbc.labpki: lab CA and leaves; OpenSSL accepts them for mutual TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teamsbc import labpki

TEAMS = ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com"]


@pytest.fixture(scope="module")
def ca():
    return labpki.make_ca("unit CA")


def eku(cert):
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def test_make_ca(ca):
    cert, key = ca
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < life <= dt.timedelta(days=3651)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)


def test_make_leaf_names_and_eku(ca):
    ca_cert, ca_key = ca
    cert, key = labpki.make_leaf(ca_cert, ca_key, ["sbc.example.com", "127.0.0.1", "::1"])
    assert key.key_size == 2048
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sbc.example.com"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sbc.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(ca_cert)
    assert cert.issuer == ca_cert.subject

    server_only, _ = labpki.make_leaf(ca_cert, ca_key, ["a.example"], client_auth=False)
    assert eku(server_only) == {ExtendedKeyUsageOID.SERVER_AUTH}
    client_only, _ = labpki.make_leaf(ca_cert, ca_key, ["a.example"], server_auth=False)
    assert eku(client_only) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_make_leaf_validity_window(ca):
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    cert, _ = labpki.make_leaf(*ca, ["old.example"], days=10, not_before=start)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + dt.timedelta(days=10)
    with pytest.raises(ValueError):
        labpki.make_leaf(*ca, [])


def test_write_helpers_modes_and_order(tmp_path, ca):
    ca_cert, ca_key = ca
    leaf, key = labpki.make_leaf(ca_cert, ca_key, ["x.example"])
    chain = labpki.write_cert_chain(tmp_path / "chain.pem", [leaf, ca_cert])
    keyp = labpki.write_key(tmp_path / "k.pem", key)
    both = labpki.write_pem(tmp_path / "both.pem", [leaf, ca_cert], key)
    only = labpki.write_pem(tmp_path / "only.pem", leaf)
    assert stat.S_IMODE(os.stat(keyp).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(both).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(chain).st_mode) == 0o644
    assert labpki.load_cert_chain(chain) == [leaf, ca_cert]
    assert labpki.load_cert_chain(only) == [leaf]
    assert labpki.load_key(keyp).private_numbers() == key.private_numbers()
    assert b"PRIVATE KEY" in both.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def _mtimes(p: labpki.LabPki):
    return {f: os.stat(getattr(p, f)).st_mtime_ns
            for f in ("ca_cert", "ca_key", "sbc_fullchain", "sbc_key", "teams_fullchain", "teams_key")}


def test_ensure_lab_pki_creates_then_reuses(tmp_path):
    d = tmp_path / "lab"
    p = labpki.ensure_lab_pki(d, "sbc.example.com", TEAMS)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(p.sbc_key).st_mode) == 0o600
    ca = labpki.load_cert_chain(p.ca_cert)[0]
    sbc_chain = labpki.load_cert_chain(p.sbc_fullchain)
    assert sbc_chain[1] == ca
    sbc_chain[0].verify_directly_issued_by(ca)
    teams = labpki.load_cert_chain(p.teams_fullchain)[0]
    san = teams.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == TEAMS

    before = _mtimes(p)
    p2 = labpki.ensure_lab_pki(d, "sbc.example.com", TEAMS)
    assert p2 == p and _mtimes(p2) == before


def test_ensure_lab_pki_reissues_what_is_stale(tmp_path):
    d = tmp_path / "lab"
    p = labpki.ensure_lab_pki(d, "sbc.example.com", TEAMS)
    first = _mtimes(p)

    # another SBC name: only the SBC leaf is re-issued, by the same CA
    p = labpki.ensure_lab_pki(d, "sbc2.example.com", TEAMS)
    now = _mtimes(p)
    assert now["ca_cert"] == first["ca_cert"] and now["teams_key"] == first["teams_key"]
    assert now["sbc_fullchain"] != first["sbc_fullchain"]
    leaf = labpki.load_cert_chain(p.sbc_fullchain)[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sbc2.example.com"

    # an expired Teams leaf is replaced
    ca_cert = labpki.load_cert_chain(p.ca_cert)[0]
    ca_key = labpki.load_key(p.ca_key)
    old, old_key = labpki.make_leaf(ca_cert, ca_key, TEAMS, days=1,
                                    not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30))
    labpki.write_cert_chain(p.teams_fullchain, [old, ca_cert])
    labpki.write_key(p.teams_key, old_key)
    p = labpki.ensure_lab_pki(d, "sbc2.example.com", TEAMS)
    assert labpki.load_cert_chain(p.teams_fullchain)[0].not_valid_after_utc > dt.datetime.now(dt.timezone.utc)

    # a CA whose key does not match: everything is re-made
    other_key = labpki.make_ca("x")[1]
    labpki.write_key(p.ca_key, other_key)
    p = labpki.ensure_lab_pki(d, "sbc2.example.com", TEAMS)
    ca2 = labpki.load_cert_chain(p.ca_cert)[0]
    assert ca2 != ca_cert
    labpki.load_cert_chain(p.sbc_fullchain)[0].verify_directly_issued_by(ca2)
    labpki.load_cert_chain(p.teams_fullchain)[0].verify_directly_issued_by(ca2)


def test_lab_pki_mutual_tls_with_openssl(tmp_path):
    """The SBC and Teams certificates work for mutual TLS 1.2 with Teams' ECDHE-RSA suites."""
    p = labpki.ensure_lab_pki(tmp_path, "sbc.example.com", TEAMS)
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(p.sbc_fullchain, p.sbc_key)
    srv.load_verify_locations(p.ca_cert)
    srv.verify_mode = ssl.CERT_REQUIRED
    cli = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cli.maximum_version = ssl.TLSVersion.TLSv1_2
    cli.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
    cli.load_cert_chain(p.teams_fullchain, p.teams_key)
    cli.load_verify_locations(p.ca_cert)

    a, b = socket.socketpair()
    result = {}

    def server():
        with srv.wrap_socket(a, server_side=True) as s:
            result["peer"] = s.getpeercert()
            s.sendall(b"ok")

    t = threading.Thread(target=server)
    t.start()
    with cli.wrap_socket(b, server_hostname="sbc.example.com") as c:
        assert c.recv(2) == b"ok"
        assert c.version() == "TLSv1.2"
        assert c.cipher()[0].startswith("ECDHE-RSA-AES")
    t.join(5)
    sans = [v for k, v in result["peer"]["subjectAltName"] if k == "DNS"]
    assert sans == TEAMS
