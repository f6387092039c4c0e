"""The gate a certificate passes before it goes live: everything Teams checks, checked first.

Teams refuses an SBC certificate that is expired, self-signed or untrusted, lacks
intermediates, does not name the SBC, has a non-RSA key (its suites are ECDHE-RSA) or lacks
serverAuth (reference section 2). clientAuth was required from March 2024 but public CAs drop it
in 2026: its presence is always reported and is fatal only with acme.require_client_auth.

    report = run_gate(fullchain_pem, key_pem, GatePolicy.build(settings, sbc_fqdn))
    if not report.ok:
        for c in report.failures: print(f"gate: {c.name}: {c.detail}")

Each check is independent and named (chain, names, key, validity, server_auth, client_auth,
key_match), so one answer lists every reason at once.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (ExtensionPolicy, PolicyBuilder, Store,
                                            VerificationError)

from ..certnames import name_covered

__all__ = ["Check", "GatePolicy", "GateReport", "run_gate", "load_roots", "system_roots_path",
           "name_covered", "cert_names", "eku_names"]

_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def system_roots_path() -> Path | None:
    """The system trust store as a PEM bundle (Debian: ca-certificates), else certifi's."""
    paths = ssl.get_default_verify_paths()
    for p in (os.environ.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile,
              "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if p and Path(p).is_file():
            return Path(p)
    try:
        import certifi
        return Path(certifi.where())
    except ImportError:  # pragma: no cover - requests depends on certifi
        return None


def load_roots(path: Path | None) -> tuple[tuple[x509.Certificate, ...], str]:
    """Roots from a PEM bundle (None: system store) and a label for messages. Certificates that
    do not parse are skipped: one odd entry in a distribution bundle must not stop renewals."""
    p = path or system_roots_path()
    if p is None:
        return (), "the system trust store (not found)"
    label = f"{p}" if path else f"the system trust store ({p})"
    roots = []
    for block in _PEM_CERT_RE.findall(Path(p).read_bytes()):
        try:
            roots.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return tuple(roots), label


@dataclass(frozen=True)
class GatePolicy:
    names: tuple[str, ...]                       # every one must be covered
    roots: tuple[x509.Certificate, ...]          # the chain must lead to one of these
    roots_label: str = "the trusted roots"
    min_key_bits: int = 2048
    require_client_auth: bool = False

    @classmethod
    def build(cls, settings, sbc_fqdn: str) -> "GatePolicy":
        """From AcmeSettings: names = sbc.fqdn + acme.names, roots = acme.trusted_roots or the
        system store."""
        roots, label = load_roots(settings.trusted_roots)
        return cls(settings.order_names(sbc_fqdn), roots, label, settings.min_key_bits,
                   settings.require_client_auth)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class GateReport:
    checks: tuple[Check, ...]
    chain: tuple[x509.Certificate, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None

    def lines(self) -> list[str]:
        """One line per failed check: "gate: <check>: <why>"."""
        return [f"gate: {c.name}: {c.detail}" for c in self.failures]


def cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names in the SAN; the CN only when there is no SAN (RFC 6125 section 6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return tuple(n.lower() for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in cns)


def eku_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ()
    names = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
             ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}
    return tuple(names.get(o, o.dotted_string) for o in eku)


def _subject(c: x509.Certificate) -> str:
    return c.subject.rfc4514_string() or "(empty subject)"


def _check_chain(chain: Sequence[x509.Certificate], policy: GatePolicy, now: dt.datetime) -> Check:
    leaf = chain[0]
    if not policy.roots:
        return Check("chain", False, f"no trusted roots loaded from {policy.roots_label}")
    root_subjects = {r.subject for r in policy.roots}
    if len(chain) == 1 and leaf.issuer not in root_subjects:
        return Check("chain", False, "only the leaf certificate, no intermediates (Teams drops "
                                     "connections with an incomplete chain)")
    for i in range(len(chain) - 1):
        child, parent = chain[i], chain[i + 1]
        if child.issuer != parent.subject:
            return Check("chain", False, f"certificate {i + 2} ({_subject(parent)}) did not issue "
                                         f"certificate {i + 1} ({_subject(child)}): wrong order "
                                         "or a missing intermediate")
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError) as e:
            return Check("chain", False, f"signature of certificate {i + 1} does not verify "
                                         f"with certificate {i + 2}: {str(e) or type(e).__name__}")
    # Path validation at a time inside the leaf's validity, so an expired or not-yet-valid leaf
    # is reported once, by the validity check, and not again here.
    second = dt.timedelta(seconds=1)
    t = min(max(now, leaf.not_valid_before_utc + second), leaf.not_valid_after_utc - second)
    intermediates = [c for c in chain[1:] if c.subject != c.issuer]
    try:
        verifier = (PolicyBuilder().store(Store(list(policy.roots))).time(t)
                    .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                        ee_policy=ExtensionPolicy.permit_all())
                    .build_client_verifier())
        verified = verifier.verify(leaf, intermediates)
    except VerificationError as e:
        top = chain[-1]
        return Check("chain", False, f"does not verify up to a root in {policy.roots_label} "
                                     f"(top of the served chain: {_subject(top)}, issued by "
                                     f"{top.issuer.rfc4514_string()}): {e}")
    root = verified.chain[-1]
    return Check("chain", True, f"{len(chain)} certificate(s) up to {_subject(root)}")


def run_gate(fullchain_pem: bytes, key_pem: bytes, policy: GatePolicy,
             now: dt.datetime | None = None) -> GateReport:
    now = now or dt.datetime.now(dt.timezone.utc)
    checks: list[Check] = []
    try:
        chain = tuple(x509.load_pem_x509_certificates(fullchain_pem))
    except ValueError as e:
        return GateReport((Check("parse", False, f"the certificate chain is not PEM: {e}"),))
    if not chain:
        return GateReport((Check("parse", False, "no certificate in the chain"),))
    leaf = chain[0]
    key = None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        checks.append(Check("key_match", False, f"the private key does not load: {e}"))

    checks.append(_check_chain(chain, policy, now))

    present = cert_names(leaf)
    missing = [n for n in policy.names if not name_covered(n, present)]
    checks.append(Check("names", not missing,
                        f"not covered: {', '.join(missing)} (certificate names: "
                        f"{', '.join(present) or 'none'})" if missing else ", ".join(present)))

    pub = leaf.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        ok = pub.key_size >= policy.min_key_bits
        checks.append(Check("key", ok, f"RSA {pub.key_size}" if ok else
                            f"RSA {pub.key_size} bits, at least {policy.min_key_bits} required"))
    else:
        kind = f"EC {pub.curve.name}" if isinstance(pub, ec.EllipticCurvePublicKey) else \
            type(pub).__name__
        checks.append(Check("key", False, f"{kind} key: Teams' cipher suites are ECDHE-RSA, the "
                                          f"key must be RSA >= {policy.min_key_bits} bits"))

    nb, na = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now < nb:
        checks.append(Check("validity", False, f"not valid before {nb:%Y-%m-%d %H:%M:%S} UTC "
                                               "(check this host's clock)"))
    elif now >= na:
        checks.append(Check("validity", False, f"expired at {na:%Y-%m-%d %H:%M:%S} UTC"))
    else:
        checks.append(Check("validity", True, f"until {na:%Y-%m-%d %H:%M:%S} UTC"))

    ekus = eku_names(leaf)
    checks.append(Check("server_auth", "serverAuth" in ekus,
                        "serverAuth present" if "serverAuth" in ekus else
                        f"serverAuth missing from the EKU ({', '.join(ekus) or 'no EKU extension'})"
                        ": Teams requires it"))
    has_client = "clientAuth" in ekus
    checks.append(Check("client_auth", has_client or not policy.require_client_auth,
                        "clientAuth present" if has_client else
                        "clientAuth absent and acme.require_client_auth is true (ask the CA for "
                        "a profile with clientAuth, or set it false: Microsoft accepts serverAuth "
                        "alone)" if policy.require_client_auth else "clientAuth absent"))

    if key is not None:
        same = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == pub.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
        checks.append(Check("key_match", same, "private key matches" if same else
                            "the private key does not belong to the certificate"))
    return GateReport(tuple(checks), chain)
