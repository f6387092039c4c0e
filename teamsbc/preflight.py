"""What `teamsbc run` needs from the machine before it starts, checked the same way by
`teamsbc check` (and so by the unit's ExecStartPre): a config that parses is not yet a config
that runs.

    findings = preflight.run_checks(config)          # [Finding], errors and warnings
    status = preflight.report(findings, config.source, print_to_stderr)   # 0, or 2 on errors

| key | error when | warning when |
| --- | --- | --- |
| teams.certificate / teams.private_key | missing, unreadable, not PEM, key not matching, chain not leaf-first, not covering sbc.fqdn and every tenant FQDN, expired or not yet valid | expires within 7 days |
| teams.trusted_ca | not a PEM bundle OpenSSL loads | |
| teams.listen, pbx.listen, admin.listen, acme.serve_http01 | two listeners on the same port and protocol with overlapping addresses | |
| cdr.path, capture.trace_dir | the SBC's user cannot create or write there | |

`store_findings` is the part `teamsbc cert issue|renew` check before anything else, also when
nothing is due: a certificate store its user cannot write fails on the first run, not 60 days
later at the first real renewal.

Every finding names the config key and the path, says what is wrong and how to fix it.
"""
from __future__ import annotations

import datetime as dt
import os
import pwd
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .addresses import HostPort

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Finding", "run_checks", "certificate_findings", "listener_findings", "state_findings",
           "store_findings", "report", "EXPIRY_WARN_DAYS"]

EXPIRY_WARN_DAYS = 7
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class Finding:
    key: str            # the config key, e.g. teams.certificate
    problem: str        # what is wrong, naming the path
    fix: str            # what to do about it
    error: bool = True  # False: a warning (run starts, check exits 0)

    def lines(self, source: str) -> list[str]:
        tag = "" if self.error else "warning: "
        return [f"{source}: {self.key}: {tag}{self.problem}", f"  fix: {self.fix}"]


def user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def cert_command(certs_dir: Path | None, args: str) -> str:
    """`teamsbc cert ARGS` as the admin must type it: run as root on an installed box, where
    certs_dir belongs to the renewal unit's user, it needs `runuser -u USER --` (root would
    be refused: the new key would be unreadable to the SBC)."""
    cmd = f"teamsbc cert {args}"
    if certs_dir is None or os.geteuid() != 0:
        return cmd
    try:
        owner = _nearest_existing(Path(certs_dir)).stat().st_uid
        who = pwd.getpwuid(owner).pw_name
    except (OSError, KeyError):
        return cmd
    return cmd if owner == 0 else f"runuser -u {who} -- {cmd}"


def config_hint(config: Config) -> str:
    """The config file's path for a hint, FILE for an embedded or in-memory config."""
    src = config.source
    return src if not src.startswith("<") else "FILE"


# --------------------------------------------------------------------------- certificate
def certificate_findings(cert_path: Path, key_path: Path, names: Iterable[str], *,
                         config_file: str = "FILE", now: dt.datetime | None = None,
                         trusted_ca: Path | None = None, certs_dir: Path | None = None) -> list[Finding]:
    """The Teams certificate and key as the TLS listener will load them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .certs.gate import cert_names, name_covered
    now = now or dt.datetime.now(dt.timezone.utc)
    issue = cert_command(certs_dir, f"issue -c {config_file}")
    out: list[Finding] = []

    def unreadable(key: str, path: Path, e: OSError) -> Finding:
        if isinstance(e, FileNotFoundError):
            return Finding(key, f"{path} does not exist",
                           f"get a certificate: {issue} (as the user the SBC runs as), or point "
                           f"{key} at an existing PEM file")
        return Finding(key, f"cannot read {path}: {e.strerror} (running as {user_name()})",
                       f"the SBC's user must read it: create it as that user ({issue} run as "
                       "it does so), or chown/chmod the file and its directories")

    try:
        chain_pem = Path(cert_path).read_bytes()
    except OSError as e:
        out.append(unreadable("teams.certificate", cert_path, e))
        chain_pem = None
    try:
        key_pem = Path(key_path).read_bytes()
    except OSError as e:
        out.append(unreadable("teams.private_key", key_path, e))
        key_pem = None

    chain: list = []
    if chain_pem is not None:
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError:
            out.append(Finding("teams.certificate", f"{cert_path} is not a PEM certificate chain "
                               "(expected -----BEGIN CERTIFICATE----- blocks)",
                               f"point teams.certificate at the full chain (leaf first, then its "
                               f"intermediates), e.g. what {issue} writes: fullchain.pem"))
    key = None
    if key_pem is not None:
        try:
            # only its public half is compared here; OpenSSL's own load below checks the rest
            key = serialization.load_pem_private_key(key_pem, password=None,
                                                     unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError) as e:
            why = "is encrypted" if isinstance(e, TypeError) else "is not a PEM private key"
            out.append(Finding("teams.private_key", f"{key_path} {why} (expected an unencrypted "
                               "-----BEGIN PRIVATE KEY----- or RSA PRIVATE KEY block)",
                               "point teams.private_key at the key of the certificate "
                               f"(privkey.pem next to fullchain.pem when {issue} made it)"))
    if not chain:
        return out
    leaf = chain[0]
    if key is not None:
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
            out.append(Finding("teams.private_key", f"{key_path} is not the key of the certificate "
                               f"in {cert_path} (serial {leaf.serial_number:x})",
                               "use the key the certificate was issued for (the pair written "
                               f"together), or get a new pair: {issue}"))
    for i, (cert, issuer) in enumerate(zip(chain, chain[1:])):
        try:
            cert.verify_directly_issued_by(issuer)
        except Exception:  # noqa: BLE001 - ValueError, TypeError, InvalidSignature: all "not its issuer"
            out.append(Finding("teams.certificate", f"{cert_path}: certificate {i + 2} "
                               f"({issuer.subject.rfc4514_string()}) did not issue certificate "
                               f"{i + 1} ({cert.subject.rfc4514_string()}): the chain is not in order",
                               "put the leaf first, then each certificate's issuer after it "
                               "(Teams drops connections with broken chains)"))
            break
    required = [n.lower() for n in names]
    present = cert_names(leaf)
    missing = [n for n in required if not name_covered(n, present)]
    if missing:
        out.append(Finding("teams.certificate", f"{cert_path} does not cover {', '.join(missing)} "
                           f"(it names {', '.join(present) or 'nothing'})",
                           "Teams refuses a certificate without the SBC's FQDN: get one for "
                           f"sbc.fqdn and every tenant FQDN ({issue}; tenants via acme.names)"))
    if leaf.not_valid_after_utc <= now:
        out.append(Finding("teams.certificate", f"{cert_path} expired on "
                           f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                           f"renew it: {cert_command(certs_dir, f'renew --force -c {config_file}')}"))
    elif leaf.not_valid_before_utc > now:
        out.append(Finding("teams.certificate", f"{cert_path} is not valid before "
                           f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                           "check this host's clock (timedatectl; NTP)"))
    elif leaf.not_valid_after_utc - now < dt.timedelta(days=EXPIRY_WARN_DAYS):
        days = (leaf.not_valid_after_utc - now).total_seconds() / 86400
        out.append(Finding("teams.certificate", f"{cert_path} expires in {days:.1f} days",
                           f"renew it: {cert_command(certs_dir, f'renew -c {config_file}')}; check that "
                           "teamsbc-renew.timer runs (systemctl list-timers teamsbc-renew)",
                           error=False))
    if not any(f.error for f in out):
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            probe.load_cert_chain(str(cert_path), str(key_path))
        except (ssl.SSLError, OSError) as e:
            out.append(Finding("teams.certificate", f"{cert_path} / {key_path}: OpenSSL refuses "
                               f"the pair: {e.reason or e if isinstance(e, ssl.SSLError) else e}",
                               f"get a new pair: {issue}"))
    if trusted_ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=str(trusted_ca))
        except (ssl.SSLError, OSError) as e:
            out.append(Finding("teams.trusted_ca", f"{trusted_ca} is not a PEM bundle OpenSSL "
                               f"loads: {e.strerror or e if isinstance(e, OSError) and not isinstance(e, ssl.SSLError) else e}",
                               "point teams.trusted_ca at the CA certificates that sign Teams' "
                               "certificate, or remove it (the bundled Microsoft roots)"))
    return out


# --------------------------------------------------------------------------- listeners
def _listeners(config: Config) -> list[tuple[str, str, HostPort]]:
    """(key, protocol, HostPort) of every socket the SBC binds."""
    out = [("teams.listen", "tcp", config.teams.listen),
           ("pbx.listen", config.pbx.transport, config.pbx.listen)]
    if config.admin.enabled:
        out.append(("admin.listen", "tcp", config.admin.listen))
    serve = config.acme.serve_http01
    if serve is not None:
        out.append(("acme.serve_http01", "tcp", serve))
    return out


def listener_findings(config: Config) -> list[Finding]:
    """Two sockets of the same protocol on the same port with overlapping addresses: the
    second bind fails (EADDRINUSE) and run would stop."""
    out = []
    seen = _listeners(config)
    for i, (k1, p1, a) in enumerate(seen):
        for k2, p2, b in seen[i + 1:]:
            if p1 != p2 or a.port != b.port:
                continue
            if a.host == b.host or a.host in WILDCARD_HOSTS or b.host in WILDCARD_HOSTS:
                out.append(Finding(k2, f"{b} clashes with {k1} {a} (both {p1.upper()} port "
                                   f"{a.port}): the second listener cannot start",
                                   f"give {k1} and {k2} different ports"))
    return out


# --------------------------------------------------------------------------- state paths
def _nearest_existing(path: Path) -> Path:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def writable_problem(path: Path, *, directory: bool) -> str | None:
    """Why the current user cannot create or write ``path`` (a directory, or a file in its
    parent), or None. os.access honours read-only mounts (ProtectSystem=strict) as well."""
    p = Path(path)
    if p.exists():
        if directory and not p.is_dir():
            return f"{p} exists and is not a directory"
        if not os.access(p, os.W_OK | (os.X_OK if directory else 0)):
            return f"{p} is not writable by {user_name()}"
        if not directory and not os.access(p.parent, os.W_OK | os.X_OK):
            return f"{p.parent} is not writable by {user_name()} (SQLite adds files beside {p.name})"
        return None
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        return f"{base} is not a directory, so {p} cannot be created"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{p} cannot be created: {base} is not writable by {user_name()}"
    return None


STATE_FIX = ("use a path the SBC's user owns: installed, that is the state directory "
             "/var/lib/teamsbc (systemd StateDirectory=teamsbc), e.g. {example}")


def state_findings(config: Config) -> list[Finding]:
    out = []
    cdr = config.cdr
    if cdr.enabled:
        problem = writable_problem(cdr.path, directory=False)
        if problem:
            out.append(Finding("cdr.path", problem,
                               STATE_FIX.format(example="cdr.path: /var/lib/teamsbc/cdr.sqlite")
                               + "; or cdr.enabled: false"))
    cap = config.capture
    problem = writable_problem(cap.trace_dir, directory=True)
    if problem:
        out.append(Finding("capture.trace_dir", problem,
                           STATE_FIX.format(example="capture.trace_dir: /var/lib/teamsbc/traces")))
    return out


def store_findings(certs_dir: Path, name: str) -> list[Finding]:
    """What `teamsbc cert issue|renew` will write: certs_dir (lock, live/, archive/,
    accounts/, acme-challenge/)."""
    certs_dir = Path(certs_dir)
    fix_dir = ("certs_dir must belong to the user that runs `teamsbc cert` and the SBC; "
               "installed: /var/lib/teamsbc/certs, owned by teamsbc (chown -R teamsbc:teamsbc "
               f"{certs_dir})")
    out = []
    owner_path = _nearest_existing(certs_dir)
    try:
        owner = owner_path.stat().st_uid
    except OSError:
        owner = os.geteuid()
    if os.geteuid() == 0 and owner != 0:
        try:
            who = pwd.getpwuid(owner).pw_name
        except KeyError:
            who = f"uid {owner}"
        out.append(Finding("certs_dir", f"{owner_path} belongs to {who}, and this runs as root: "
                           f"the new key would be root's, unreadable to the SBC",
                           f"run it as {who}: runuser -u {who} -- teamsbc cert ...; or "
                           "systemctl start teamsbc-renew.service (the renewal unit runs as "
                           f"{who} and may bind port 80)"))
        return out
    for p, is_dir in ((certs_dir, True), (certs_dir / ".lock", False),
                      (certs_dir / "live" / name, True), (certs_dir / "accounts", True),
                      (certs_dir / "archive" / name, True)):
        if not p.exists() and p != certs_dir:
            continue
        problem = writable_problem(p, directory=is_dir) if is_dir else (
            None if os.access(p, os.W_OK) else f"{p} is not writable by {user_name()}")
        if problem:
            out.append(Finding("certs_dir", problem, fix_dir))
            break
    return out


# --------------------------------------------------------------------------- together
def run_checks(config: Config, *, now: dt.datetime | None = None) -> list[Finding]:
    """Everything `teamsbc run` would otherwise fail on (or serve wrongly) at start."""
    t = config.teams
    names = [config.sbc.fqdn, *t.tenants]
    return (certificate_findings(t.certificate, t.private_key, names,
                                 config_file=config_hint(config), now=now,
                                 trusted_ca=t.trusted_ca, certs_dir=config.certs_dir)
            + listener_findings(config) + state_findings(config))


def report(findings: list[Finding], source: str, emit: Callable[[str], None]) -> int:
    """Emit every finding (errors first); 2 when any is an error, else 0."""
    for f in sorted(findings, key=lambda f: not f.error):
        for line in f.lines(source):
            emit(line)
    return 2 if any(f.error for f in findings) else 0
