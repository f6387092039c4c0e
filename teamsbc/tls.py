"""TLS contexts for the Teams leg (reference section 2).

Server and client contexts both present the SBC certificate (mutual TLS both ways), accept
TLS 1.2+ only with Teams' ECDHE-RSA suites for 1.2, and verify Teams against the configured
bundle or the bundled Microsoft roots.
"""
from __future__ import annotations

import ssl
from importlib import resources
from pathlib import Path

# Teams' TLS 1.2 suites (OpenSSL names). TLS 1.3 suites are not affected by set_ciphers().
TEAMS_CIPHERS = ("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256")


class TlsConfigError(Exception):
    pass


def bundled_roots() -> Path:
    return Path(str(resources.files("teamsbc") / "data" / "microsoft-roots.pem"))


def _base(ctx: ssl.SSLContext, cert: Path, key: Path, trusted: Path | None) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TEAMS_CIPHERS)
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        raise TlsConfigError(f"certificate {cert} / key {key} unusable: {e.reason or e}") from None
    except OSError as e:
        raise TlsConfigError(f"cannot read certificate {cert} or key {key}: {e.strerror}") from None
    ca = trusted or bundled_roots()
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as e:
        raise TlsConfigError(f"trusted CA bundle {ca} unusable: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(cert: Path, key: Path, trusted: Path | None) -> ssl.SSLContext:
    """For connections Teams opens to us: Teams must present a certificate we trust."""
    return _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, trusted)


def client_context(cert: Path, key: Path, trusted: Path | None) -> ssl.SSLContext:
    """For connections we open to Teams: we present our certificate (Teams aborts with
    certificate_unknown otherwise) and check Teams' name (SNI = the Teams FQDN)."""
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, trusted)
    ctx.check_hostname = True
    return ctx


def certificate_problem(cert: Path, key: Path) -> str | None:
    """Why this certificate/key pair cannot go live in the running SBC, or None.
    (The full ACME gate runs before files are installed; this is the last check at reload.)"""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        probe.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        return f"certificate and key do not load together: {e.reason or e}"
    except OSError as e:
        return f"cannot read {e.filename}: {e.strerror}"
    return None


def reload_contexts(contexts: list[ssl.SSLContext], cert: Path, key: Path) -> str | None:
    """Load a new certificate into live contexts: handshakes from now on present it, existing
    connections keep theirs. Returns the problem instead of half-loading."""
    problem = certificate_problem(cert, key)
    if problem:
        return problem
    for ctx in contexts:
        ctx.load_cert_chain(str(cert), str(key))
    return None


def describe_certificate(path: Path) -> str:
    """`serial 0x.., CN=.., not after YYYY-MM-DD (N days left)` for log lines."""
    from datetime import datetime, timezone
    from cryptography import x509
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    left = (cert.not_valid_after_utc - datetime.now(timezone.utc)).days
    return (f"serial {cert.serial_number:#x}, {cert.subject.rfc4514_string()}, "
            f"not after {cert.not_valid_after_utc:%Y-%m-%d} ({left} days left)")


def days_left(path: Path) -> float | None:
    from datetime import datetime, timezone
    from cryptography import x509
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return (cert.not_valid_after_utc - datetime.now(timezone.utc)).total_seconds() / 86400
