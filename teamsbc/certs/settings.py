"""The `acme:` section of the config file -> `AcmeSettings`, validated like teamsbc.config:
every error is collected as "FILE: acme.key: what is wrong (what is right)".

    r = SettingsReader(str(path), path.parent)
    acme = parse_acme(r, data.get("acme"), sbc_fqdn="sbc.example.com")
    r.raise_errors()

This module imports only the ground floor (teamsbc.addresses), so config.py may import it.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..addresses import AddressError, HostPort, is_ip, parse_hostport
from ..settings import SettingsReader

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# `--dry-run` never spends production rate limits: it swaps a known production directory for
# its staging twin (certbot does the same). Other CAs' directories are used as configured.
STAGING_OF = {LETSENCRYPT: LETSENCRYPT_STAGING}

CHALLENGES = ("http-01", "dns-01")
KEY_TYPES = {"rsa2048": 2048, "rsa3072": 3072, "rsa4096": 4096}
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1",
                   "hmac-md5")
# Teams offers only ECDHE-RSA suites and requires RSA >= 2048 (reference section 2).
MIN_RSA_BITS = 2048

KNOWN_KEYS = ("directory", "email", "names", "challenge", "http01_listen", "ca_bundle", "eab",
              "profile", "require_client_auth", "rfc2136", "key_type", "min_key_bits",
              "trusted_roots", "serve_http01")
RFC2136_KEYS = ("server", "port", "key_name", "key_secret", "key_algorithm", "zone",
                "propagation_seconds")

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_FQDN_RE = re.compile(rf"(?=.{{1,253}}\Z)({_LABEL}\.)+[A-Za-z]{{2,63}}\Z")
_EMAIL_RE = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+\Z")
_B64URL_RE = re.compile(r"[A-Za-z0-9_\-+/]+=*\Z")


@dataclass(frozen=True, slots=True)
class EabSettings:
    """External Account Binding (RFC 8555 section 7.3.4): both set, or neither."""
    kid: str | None = None
    hmac_key: str | None = None     # base64url, as CAs hand it out

    @property
    def enabled(self) -> bool:
        return bool(self.kid and self.hmac_key)


@dataclass(frozen=True, slots=True)
class Rfc2136Settings:
    """Where and how DNS-01 TXT records are written (RFC 2136 UPDATE signed with TSIG)."""
    server: str | None = None       # IP address or host name of the primary
    port: int = 53
    key_name: str | None = None
    key_secret: str | None = None   # base64, as in `tsig-keygen` output
    key_algorithm: str = "hmac-sha256"
    zone: str | None = None         # None: found by asking the server for the SOA
    propagation_seconds: float = 0  # extra wait after the primary serves the records (secondaries)


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    directory: str = LETSENCRYPT
    # No default contact: Let's Encrypt refuses example.com addresses (invalidContact), and an
    # account without contact is valid (RFC 8555 section 7.3).
    email: str | None = None
    names: tuple[str, ...] = ()     # beyond sbc.fqdn: tenant FQDNs, a wildcard (dns-01 only)
    challenge: str = "http-01"
    # None: no standalone responder; the running SBC (TokenStore) or a web server serving
    # <certs_dir>/acme-challenge/ answers HTTP-01.
    http01_listen: HostPort | None = None
    ca_bundle: Path | None = None   # trust for the ACME server's HTTPS; None: system store
    eab: EabSettings = field(default_factory=EabSettings)
    profile: str | None = None
    require_client_auth: bool = False
    rfc2136: Rfc2136Settings = field(default_factory=Rfc2136Settings)
    key_type: str = "rsa2048"
    min_key_bits: int = MIN_RSA_BITS
    # Roots the issued chain must verify up to (the gate); None: the system trust store.
    trusted_roots: Path | None = None
    # Where the running SBC serves HTTP-01 tokens from <certs_dir>/acme-challenge (with
    # http01_listen: null, `teamsbc cert` writes them there); None: the SBC serves none.
    serve_http01: HostPort | None = None

    @property
    def key_bits(self) -> int:
        return KEY_TYPES[self.key_type]

    def order_names(self, sbc_fqdn: str) -> tuple[str, ...]:
        """sbc.fqdn first (it becomes the CN), then acme.names, without duplicates."""
        out: list[str] = []
        for n in (sbc_fqdn, *self.names):
            n = n.lower().rstrip(".")
            if n not in out:
                out.append(n)
        return tuple(out)


def default_acme() -> AcmeSettings:
    """The settings an absent `acme:` section means (http01_listen 0.0.0.0:80)."""
    return AcmeSettings(http01_listen=HostPort("0.0.0.0", 80))


class _Errors:
    """`err(key, msg)` for keys under `acme.` of a SettingsReader."""

    def __init__(self, r: SettingsReader):
        self.r = r

    def __call__(self, key: str, msg: str) -> None:
        self.r.err(f"acme.{key}", msg)


def _opt_str(d: dict, key: str, where: str, err: _Errors) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        err(where, f"must be a non-empty string or null, got {v!r}")
        return None
    return v.strip()


def _path(d: dict, key: str, where: str, base: Path, err: _Errors, what: str) -> Path | None:
    v = _opt_str(d, key, where, err)
    if v is None:
        return None
    p = Path(v)
    if not p.is_absolute():
        p = base / p
    if not p.is_file():
        err(where, f"file {str(p)!r} does not exist or is not a file ({what})")
        return None
    return p


def _mapping(v: Any, where: str, known: tuple[str, ...], err: _Errors) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        err(where, f"must be a mapping, got {type(v).__name__}")
        return {}
    for k in v:
        if k not in known:
            err(f"{where}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
    return v


def _b64_ok(s: str) -> bool:
    if not _B64URL_RE.match(s):
        return False
    t = s.replace("-", "+").replace("_", "/")
    try:
        return len(base64.b64decode(t + "=" * (-len(t) % 4), validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


def _listen(v: Any, err: _Errors) -> HostPort | None:
    try:
        hp = parse_hostport(v, 80)
    except AddressError as e:
        err("http01_listen", f"{v!r} is not \"ip:port\": {e} (e.g. 0.0.0.0:80, [::]:80), or null "
                             "to let the running SBC answer HTTP-01")
        return None
    if not is_ip(hp.host):
        err("http01_listen", f"{v!r} is not \"ip:port\": {hp.host!r} is not an IP address (the "
                             "responder binds by address)")
        return None
    return hp


def parse_acme(r: SettingsReader, section: Any, sbc_fqdn: str | None = None) -> AcmeSettings:
    """Validate the `acme:` mapping (None = absent = all defaults). Errors go to the reader;
    the returned settings then hold defaults where a value was wrong. Relative paths resolve
    against `r.base` (the config file's directory). With ``sbc_fqdn`` the names are also
    checked against it (duplicates, wildcard covering it)."""
    err = _Errors(r)
    errors = r.errors
    base = r.base
    start = len(errors)
    if section is None:
        return default_acme()
    if not isinstance(section, dict):
        r.err("acme", f"must be a mapping, got {type(section).__name__}")
        return default_acme()
    for k in section:
        if k not in KNOWN_KEYS:
            err(str(k), f"unknown key (known: {', '.join(sorted(KNOWN_KEYS))})")

    directory = section.get("directory", LETSENCRYPT)
    if not isinstance(directory, str) or not re.match(r"https://[^\s/]+(/\S*)?\Z", directory):
        err("directory", f"{directory!r} is not an https:// URL of an ACME directory (RFC 8555 "
                         f"section 7.1.1; e.g. {LETSENCRYPT})")
        directory = LETSENCRYPT

    email = _opt_str(section, "email", "email", err)
    if email and not _EMAIL_RE.match(email.removeprefix("mailto:")):
        err("email", f"{email!r} is not an e-mail address (e.g. ops@your-company.com)")
        email = None
    elif email:
        email = email.removeprefix("mailto:")

    challenge = section.get("challenge", "http-01")
    if challenge not in CHALLENGES:
        err("challenge", f"{challenge!r} is not one of {', '.join(CHALLENGES)}")
        challenge = "http-01"

    names_v = section.get("names", []) or []
    names: list[str] = []
    if not isinstance(names_v, list):
        err("names", f"must be a list of FQDNs (tenant names, *.wildcard), got {names_v!r}")
        names_v = []
    for i, n in enumerate(names_v):
        if not isinstance(n, str):
            err(f"names[{i}]", f"{n!r} is not a domain name")
            continue
        n = n.strip().lower().rstrip(".")
        bare = n[2:] if n.startswith("*.") else n
        if not _FQDN_RE.match(bare) or "*" in bare:
            err(f"names[{i}]", f"{n!r} is not an FQDN or a wildcard like *.sbc.example.com "
                               "(the * must be the whole leftmost label)")
            continue
        if n.startswith("*.") and challenge != "dns-01":
            err(f"names[{i}]", f"{n!r}: wildcards can only be validated with dns-01 "
                               "(RFC 8555 section 7.1.3); set acme.challenge: dns-01")
            continue
        if n == (sbc_fqdn or "").lower() or n in names:
            err(f"names[{i}]", f"{n!r} is listed twice (sbc.fqdn is always included)")
            continue
        names.append(n)

    listen = default_acme().http01_listen
    if "http01_listen" in section:
        v = section["http01_listen"]
        listen = None if v is None else _listen(v, err)
    serve = section.get("serve_http01")
    serve = None if serve is None else _listen(serve, err)
    if serve is not None and listen is not None and (serve.host, serve.port) == (listen.host, listen.port):
        err("serve_http01", "the running SBC and `teamsbc cert` cannot both listen there: "
                            "set http01_listen: null so the command hands tokens to the SBC")

    ca_bundle = _path(section, "ca_bundle", "ca_bundle", base, err,
                      "PEM file of the CA that signed the ACME server's HTTPS certificate")
    trusted_roots = _path(section, "trusted_roots", "trusted_roots", base, err,
                          "PEM bundle of the roots the issued chain must lead to")

    e = _mapping(section.get("eab"), "eab", ("kid", "hmac_key"), err)
    kid = _opt_str(e, "kid", "eab.kid", err)
    hmac_key = _opt_str(e, "hmac_key", "eab.hmac_key", err)
    if bool(kid) != bool(hmac_key):
        missing = "eab.hmac_key" if kid else "eab.kid"
        err(missing, "required when the other EAB value is set (both come from your CA's "
                     "account page)")
    if hmac_key and not _b64_ok(hmac_key):
        err("eab.hmac_key", "is not base64url (copy the HMAC key exactly as the CA shows it)")
        hmac_key = None

    profile = _opt_str(section, "profile", "profile", err)
    if profile and not re.match(r"[A-Za-z0-9._-]{1,64}\Z", profile):
        err("profile", f"{profile!r} is not a profile name (e.g. tlsserver, classic, shortlived)")
        profile = None

    rca = section.get("require_client_auth", False)
    if not isinstance(rca, bool):
        err("require_client_auth", f"must be true or false, got {rca!r}")
        rca = False

    key_type = section.get("key_type", "rsa2048")
    if key_type not in KEY_TYPES:
        err("key_type", f"{key_type!r} is not one of {', '.join(KEY_TYPES)} (Teams' suites are "
                        "ECDHE-RSA: the key must be RSA)")
        key_type = "rsa2048"
    min_bits = section.get("min_key_bits", MIN_RSA_BITS)
    if isinstance(min_bits, bool) or not isinstance(min_bits, int) or not (
            MIN_RSA_BITS <= min_bits <= 8192):
        err("min_key_bits", f"must be an integer from {MIN_RSA_BITS} (Teams' minimum) to 8192, "
                            f"got {min_bits!r}")
        min_bits = MIN_RSA_BITS
    elif KEY_TYPES[key_type] < min_bits:
        err("min_key_bits", f"{min_bits} is more than key_type {key_type} gives; every "
                            "certificate would fail the gate (raise key_type)")

    r = _mapping(section.get("rfc2136"), "rfc2136", RFC2136_KEYS, err)
    server = _opt_str(r, "server", "rfc2136.server", err)
    port = r.get("port", 53)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        err("rfc2136.port", f"must be a port number 1-65535, got {port!r}")
        port = 53
    key_name = _opt_str(r, "key_name", "rfc2136.key_name", err)
    key_secret = _opt_str(r, "key_secret", "rfc2136.key_secret", err)
    if key_secret and not _b64_ok(key_secret):
        err("rfc2136.key_secret", "is not base64 (use the secret from `tsig-keygen` output)")
        key_secret = None
    algo = r.get("key_algorithm", "hmac-sha256")
    if algo not in TSIG_ALGORITHMS:
        err("rfc2136.key_algorithm", f"{algo!r} is not one of {', '.join(TSIG_ALGORITHMS)}")
        algo = "hmac-sha256"
    zone = _opt_str(r, "zone", "rfc2136.zone", err)
    if zone and not _FQDN_RE.match(zone.rstrip(".")):
        err("rfc2136.zone", f"{zone!r} is not a zone name (e.g. example.com)")
        zone = None
    prop = r.get("propagation_seconds", 0)
    if isinstance(prop, bool) or not isinstance(prop, (int, float)) or not 0 <= prop <= 3600:
        err("rfc2136.propagation_seconds", f"must be a number of seconds 0-3600, got {prop!r}")
        prop = 0
    if challenge == "dns-01":
        for k, v in (("server", server), ("key_name", key_name), ("key_secret", key_secret)):
            if not v and not any(f"acme.rfc2136.{k}:" in x for x in errors[start:]):
                err(f"rfc2136.{k}", "required for challenge dns-01 (updates are signed with TSIG: "
                                    "server, key_name and key_secret from `tsig-keygen`)")

    return AcmeSettings(
        directory=directory,
        email=email,
        names=tuple(names),
        challenge=challenge,
        http01_listen=listen,
        ca_bundle=ca_bundle,
        eab=EabSettings(kid, hmac_key) if kid and hmac_key else EabSettings(),
        profile=profile,
        require_client_auth=rca,
        rfc2136=Rfc2136Settings(server, port, key_name, key_secret, algo, zone, float(prop)),
        key_type=key_type,
        min_key_bits=min_bits,
        trusted_roots=trusted_roots,
        serve_http01=serve,
    )
