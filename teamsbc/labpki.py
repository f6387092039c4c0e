"""Lab PKI: a private CA plus leaf certificates for running the SBC without a public CA.

Used by the SBC when started without a configuration (it then generates an SBC certificate and
a stand-in "Teams" certificate issued by one lab CA), and by the test-suite.

Keys are RSA 2048: Teams only offers ECDHE-RSA suites, so the SBC key must be RSA.
Nothing produced here is trusted by real Teams: it is for loopback/lab use only.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "LabPki",
    "make_ca",
    "make_leaf",
    "write_pem",
    "write_cert_chain",
    "write_key",
    "load_cert_chain",
    "load_key",
    "ensure_lab_pki",
]

KEY_SIZE = 2048
CA_DAYS = 3650
# Backdate notBefore a little so that small clock differences between hosts do not matter.
_BACKDATE = _dt.timedelta(minutes=5)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(common_name: str, *, days: int = CA_DAYS) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Self-signed CA certificate (CA:TRUE, keyCertSign+cRLSign) and its RSA key."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now() - _BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    names: Sequence[str],
    *,
    server_auth: bool = True,
    client_auth: bool = True,
    days: int = 365,
    not_before: _dt.datetime | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Leaf certificate issued by ``ca_cert`` for ``names``.

    SAN holds every name (an IP address entry when the name parses as one); CN is the first
    name. EKU holds serverAuth and/or clientAuth as asked (no EKU extension if neither).
    ``not_before`` (aware or naive-UTC datetime) allows making not-yet-valid or expired
    certificates for negative tests; ``days`` counts from it.
    """
    if not names:
        raise ValueError("make_leaf needs at least one name")
    key = _new_key()
    if not_before is None:
        start = _now() - _BACKDATE
    else:
        start = not_before if not_before.tzinfo else not_before.replace(tzinfo=_dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    usages = []
    if server_auth:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


# --------------------------------------------------------------------------- files


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # umask may have narrowed/widened it
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_cert_chain(path: Path | str, certs: Iterable[x509.Certificate]) -> Path:
    """Write certificates (leaf first) as concatenated PEM, mode 0644."""
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomic(Path(path), data, 0o644)
    return Path(path)


def write_key(path: Path | str, key: rsa.RSAPrivateKey) -> Path:
    """Write an unencrypted PKCS#8 PEM private key, mode 0600."""
    _write_atomic(Path(path), _key_pem(key), 0o600)
    return Path(path)


def write_pem(
    path: Path | str,
    cert_or_chain: x509.Certificate | Sequence[x509.Certificate],
    key: rsa.RSAPrivateKey | None = None,
) -> Path:
    """Write a certificate or chain, optionally followed by the key, into one PEM file.

    With a key the file is mode 0600 (it holds a secret), else 0644.
    """
    certs = [cert_or_chain] if isinstance(cert_or_chain, x509.Certificate) else list(cert_or_chain)
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    if key is not None:
        data += _key_pem(key)
    _write_atomic(Path(path), data, 0o600 if key is not None else 0o644)
    return Path(path)


def load_cert_chain(path: Path | str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def load_key(path: Path | str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA key")
    return key


# --------------------------------------------------------------------------- lab PKI


@dataclass(frozen=True)
class LabPki:
    directory: Path
    ca_cert: Path
    ca_key: Path
    sbc_fullchain: Path
    sbc_key: Path
    teams_fullchain: Path
    teams_key: Path

    @classmethod
    def at(cls, directory: Path | str) -> "LabPki":
        """The files of a lab PKI that `ensure_lab_pki` made in ``directory`` (not checked)."""
        return _paths(Path(directory))


def _paths(directory: Path) -> LabPki:
    d = Path(directory)
    return LabPki(
        directory=d,
        ca_cert=d / "ca.pem",
        ca_key=d / "ca.key",
        sbc_fullchain=d / "sbc-fullchain.pem",
        sbc_key=d / "sbc.key",
        teams_fullchain=d / "teams-fullchain.pem",
        teams_key=d / "teams.key",
    )


def _san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    out = set(san.get_values_for_type(x509.DNSName))
    out.update(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return out


def _not_after(cert: x509.Certificate) -> _dt.datetime:
    if hasattr(cert, "not_valid_after_utc"):  # cryptography >= 42
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=_dt.timezone.utc)


def _not_before(cert: x509.Certificate) -> _dt.datetime:
    if hasattr(cert, "not_valid_before_utc"):
        return cert.not_valid_before_utc
    return cert.not_valid_before.replace(tzinfo=_dt.timezone.utc)


def _leaf_ok(
    chain_path: Path, key_path: Path, ca: x509.Certificate, names: Sequence[str], margin: _dt.timedelta
) -> bool:
    try:
        chain = load_cert_chain(chain_path)
        key = load_key(key_path)
    except (OSError, ValueError):
        return False
    if not chain:
        return False
    leaf = chain[0]
    now = _now()
    if _not_before(leaf) > now or _not_after(leaf) - margin < now:
        return False
    if leaf.issuer != ca.subject:
        return False
    try:
        leaf.verify_directly_issued_by(ca)
    except Exception:  # noqa: BLE001 - any failure means "regenerate"
        return False
    if leaf.public_key().public_numbers() != key.public_key().public_numbers():
        return False
    return set(names) <= _san_names(leaf)


def ensure_lab_pki(
    directory: Path | str,
    sbc_fqdn: str,
    teams_names: Sequence[str],
    *,
    renew_margin: _dt.timedelta = _dt.timedelta(days=7),
) -> LabPki:
    """Create (once) a lab CA, an SBC certificate and a "Teams" certificate under ``directory``.

    Re-running reuses what is there when still valid: the CA is kept if its key matches and it
    is valid for longer than ``renew_margin``; a leaf is re-issued when missing, expiring within
    ``renew_margin``, not issued by the current CA, not matching its key or lacking a name.
    Both leaves carry serverAuth + clientAuth (mutual TLS in both directions).
    """
    p = _paths(Path(directory))
    p.directory.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(p.directory, 0o700)
    except PermissionError:
        pass

    ca_cert: x509.Certificate | None = None
    ca_key: rsa.RSAPrivateKey | None = None
    try:
        ca_cert = load_cert_chain(p.ca_cert)[0]
        ca_key = load_key(p.ca_key)
        now = _now()
        if (
            ca_cert.public_key().public_numbers() != ca_key.public_key().public_numbers()
            or _not_after(ca_cert) - renew_margin < now
            or _not_before(ca_cert) > now
        ):
            ca_cert = ca_key = None
    except (OSError, ValueError, IndexError):
        ca_cert = ca_key = None

    if ca_cert is None or ca_key is None:
        ca_cert, ca_key = make_ca("teamsbc lab CA")
        write_key(p.ca_key, ca_key)
        write_cert_chain(p.ca_cert, [ca_cert])

    for names, chain_path, key_path in (
        ([sbc_fqdn], p.sbc_fullchain, p.sbc_key),
        (list(teams_names), p.teams_fullchain, p.teams_key),
    ):
        if not names:
            raise ValueError("ensure_lab_pki: empty name list")
        if not _leaf_ok(chain_path, key_path, ca_cert, names, renew_margin):
            cert, key = make_leaf(ca_cert, ca_key, names, server_auth=True, client_auth=True)
            write_key(key_path, key)
            write_cert_chain(chain_path, [cert, ca_cert])
    return p
