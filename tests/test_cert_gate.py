"""The gate: each check fails for exactly its reason, and says which."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from teamsbc.certs.gate import GatePolicy, name_covered, run_gate

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ku(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not ca,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                         crl_sign=ca, encipher_only=False, decipher_only=False)


def intermediate(root, root_key, cn="Test Intermediate"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    c = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(root.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - dt.timedelta(days=400)).not_valid_after(NOW + dt.timedelta(days=900))
         .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
         .add_extension(_ku(True), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                        critical=False)
         .sign(root_key, hashes.SHA256()))
    return c, key


def leaf(issuer, issuer_key, names, *, key=None, ekus=(ExtendedKeyUsageOID.SERVER_AUTH,
         ExtendedKeyUsageOID.CLIENT_AUTH), start=None, days=90):
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = start or NOW - dt.timedelta(hours=1)
    b = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(issuer.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_ku(False), critical=True)
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False))
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage(list(ekus)), critical=False)
    return b.sign(issuer_key, hashes.SHA256()), key


def pem(*certs) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def kpem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_root(cn: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    c = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - dt.timedelta(days=2000)).not_valid_after(NOW + dt.timedelta(days=2000))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(_ku(True), critical=True)
         .add_extension(ski, critical=False)
         .sign(key, hashes.SHA256()))
    return c, key


@pytest.fixture(scope="module")
def ca():
    root, root_key = make_root("Test Root")
    inter, inter_key = intermediate(root, root_key)
    return root, root_key, inter, inter_key


def policy(ca, names=("sbc.example.com",), **kw) -> GatePolicy:
    return GatePolicy(tuple(names), (ca[0],), "the test roots", **kw)


def failed(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures}


def test_good_certificate_passes_every_check(ca):
    root, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"])
    r = run_gate(pem(c, inter), kpem(k), policy(ca))
    assert r.ok, r.lines()
    assert {c.name for c in r.checks} == {"chain", "names", "key", "validity", "server_auth",
                                          "client_auth", "key_match"}
    assert r.lines() == []
    assert "CN=Test Root" in next(x.detail for x in r.checks if x.name == "chain")


def test_missing_intermediate(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"])
    r = run_gate(pem(c), kpem(k), policy(ca))
    assert set(failed(r)) == {"chain"}
    assert "no intermediates" in failed(r)["chain"]


def test_wrong_order(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"])
    r = run_gate(pem(inter, c), kpem(k), policy(ca))
    assert "chain" in failed(r)


def test_untrusted_root(ca):
    _, _, inter, ik = ca
    other, _ = make_root("Other Root")
    c, k = leaf(inter, ik, ["sbc.example.com"])
    r = run_gate(pem(c, inter), kpem(k), GatePolicy(("sbc.example.com",), (other,), "other.pem"))
    assert set(failed(r)) == {"chain"}
    assert "does not verify up to a root in other.pem" in failed(r)["chain"]
    assert r.lines()[0].startswith("gate: chain: ")


def test_names_not_covered(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"])
    r = run_gate(pem(c, inter), kpem(k), policy(ca, ("sbc.example.com", "t1.example.com")))
    assert set(failed(r)) == {"names"}
    assert failed(r)["names"].startswith("not covered: t1.example.com")


def test_wildcard_covers_one_label():
    assert name_covered("sbc.example.com", ["*.example.com"])
    assert not name_covered("a.sbc.example.com", ["*.example.com"])
    assert not name_covered("example.com", ["*.example.com"])
    assert name_covered("*.sbc.example.com", ["*.sbc.example.com"])
    assert not name_covered("*.sbc.example.com", ["x.sbc.example.com"])
    assert not name_covered("sbc.com", ["*.com"])


def test_ec_key_refused(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"], key=ec.generate_private_key(ec.SECP256R1()))
    r = run_gate(pem(c, inter), kpem(k), policy(ca))
    assert set(failed(r)) == {"key"}
    assert "ECDHE-RSA" in failed(r)["key"]


def test_key_size_below_policy(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"])
    r = run_gate(pem(c, inter), kpem(k), policy(ca, min_key_bits=3072))
    assert failed(r) == {"key": "RSA 2048 bits, at least 3072 required"}


def test_expired_reported_once(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"], start=NOW - dt.timedelta(days=100), days=90)
    r = run_gate(pem(c, inter), kpem(k), policy(ca))
    assert set(failed(r)) == {"validity"}
    assert failed(r)["validity"].startswith("expired at ")


def test_not_yet_valid(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"], start=NOW + dt.timedelta(days=1))
    r = run_gate(pem(c, inter), kpem(k), policy(ca))
    assert set(failed(r)) == {"validity"}
    assert "not valid before" in failed(r)["validity"]


def test_server_auth_required(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"], ekus=(ExtendedKeyUsageOID.CLIENT_AUTH,))
    r = run_gate(pem(c, inter), kpem(k), policy(ca))
    assert set(failed(r)) == {"server_auth"}
    assert "serverAuth missing" in failed(r)["server_auth"]


def test_client_auth_reported_and_required_only_on_request(ca):
    _, _, inter, ik = ca
    c, k = leaf(inter, ik, ["sbc.example.com"], ekus=(ExtendedKeyUsageOID.SERVER_AUTH,))
    r = run_gate(pem(c, inter), kpem(k), policy(ca))
    assert r.ok
    assert next(x.detail for x in r.checks if x.name == "client_auth") == "clientAuth absent"
    r = run_gate(pem(c, inter), kpem(k), policy(ca, require_client_auth=True))
    assert set(failed(r)) == {"client_auth"}
    assert "acme.require_client_auth is true" in failed(r)["client_auth"]


def test_key_mismatch(ca):
    _, _, inter, ik = ca
    c, _ = leaf(inter, ik, ["sbc.example.com"])
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = run_gate(pem(c, inter), kpem(other), policy(ca))
    assert failed(r) == {"key_match": "the private key does not belong to the certificate"}


def test_several_failures_one_line_each(ca):
    _, _, inter, ik = ca
    c, _ = leaf(inter, ik, ["other.example.com"], ekus=())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = run_gate(pem(c), kpem(other), policy(ca))
    assert [line.split(":")[1].strip() for line in r.lines()] == \
        ["chain", "names", "server_auth", "key_match"]


def test_not_pem():
    r = run_gate(b"garbage", b"", GatePolicy(("a.example.com",), ()))
    assert not r.ok and r.failures[0].name == "parse"
