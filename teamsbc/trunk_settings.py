"""The SBC's own sections: `sbc`, `teams`, `pbx`, `numbers`, `log` -> typed settings.

    sbc:     {fqdn: sbc.example.com, secret: ..., previous_secret: ..., secret_file: ...}
    teams:   listen, certificate, private_key, trusted_ca, proxies, port, resolve, tenants, ...
    pbx:     listen, transport, address, options_interval, options_timeout, auth, prack, early_media,
             max_udp_size
    numbers: country_code, international_prefix, national_prefix
    log:     {level: info}

Every key and its default: docs/configuration.md. Parsers report through a SettingsReader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .addresses import HostPort
from .sealing import MIN_SECRET, Secret
from .settings import FQDN_RE, SettingsReader

SECRET_FILE = "sbc-secret"   # per-install secret when sbc.secret is not set (docs/ha.md)

TEAMS_PROXIES = {
    "commercial": ("sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com",
                   "sip3.pstnhub.microsoft.com"),
    "gcch": ("sip.pstnhub.gov.teams.microsoft.us",),
    "dod": ("sip.pstnhub.dod.teams.microsoft.us",),
}


# The name Teams' certificates must carry (reference section 2), per cloud.
TEAMS_SAN = {
    "commercial": "sip.pstnhub.microsoft.com",
    "gcch": "sip.pstnhub.gov.teams.microsoft.us",
    "dod": "sip.pstnhub.dod.teams.microsoft.us",
}


@dataclass(frozen=True, slots=True)
class SbcSection:
    fqdn: str
    secret: Secret | None = None           # shared by every box of a pair (docs/ha.md)
    previous_secret: Secret | None = None  # still accepted during a rotation
    secret_file: Path = Path(SECRET_FILE)  # without sbc.secret: this box's own, made on first start
    workers: int = 1                       # processes sharing the calls (teamsbc.workers)


@dataclass(frozen=True, slots=True)
class TenantSection:
    """Carrier (hosting) model: one customer tenant behind a subdomain of sbc.fqdn."""
    fqdn: str
    pbx: HostPort | None = None          # the tenant's PBX trunk (source of its calls, target of Teams' calls)
    numbers: tuple[str, ...] = ()        # +E.164 prefixes of the tenant's callers (when PBXs are shared)


@dataclass(frozen=True, slots=True)
class TeamsSection:
    listen: HostPort
    certificate: Path
    private_key: Path
    trusted_ca: Path | None
    proxies: tuple[str, ...]
    port: int
    resolve: dict[str, HostPort]
    signaling_port: int         # the port Teams knows for this SBC (-SipSignalingPort)
    invite_timeout: float       # seconds without any answer from a Teams proxy -> next proxy
    cloud: str = "commercial"
    options_interval: float = 60.0     # OPTIONS to each Teams proxy (reference section 4)
    options_timeout: float = 5.0       # a ping unanswered this long counts as a failure
    options_alarm: float = 180.0       # warn when Teams has not pinged us for this long
    allow_refer: bool = False          # REFER in Allow toward Teams (Teams then sends REFER to us)
    options_503_when_pbx_down: bool = False
    require_san: tuple[str, ...] = ("sip.pstnhub.microsoft.com",)
    tenants: dict[str, TenantSection] = field(default_factory=dict)
    keepalive_interval: float = 30.0   # CRLF keep-alive on our own idle connections
    connection_max_age: float = 3600.0 # our own connections are renewed after this long


@dataclass(frozen=True, slots=True)
class PbxSection:
    listen: HostPort
    transport: str              # udp | tcp
    address: HostPort
    options_interval: float = 30.0   # OPTIONS to the PBX; 0 = off (the PBX is then always up)
    options_timeout: float = 5.0
    auth: DigestCredentials | None = None  # the PBX must authenticate (optional)
    max_udp_size: int = 1472         # bytes per datagram toward a UDP PBX (RFC 3261 18.1.1)
    prack: str = "strip"        # strip | pass: 100rel ends at the SBC (Teams never does PRACK)
    early_media: str = "pass"   # pass | ringback: what the PBX hears while Teams rings


PRACK_MODES = ("strip", "pass")
EARLY_MEDIA_MODES = ("pass", "ringback")


@dataclass(frozen=True, slots=True)
class NumbersSection:
    """How numbers from the PBX become +E.164 toward Teams (reference section 5)."""
    country_code: str | None = None
    international_prefix: str = "00"
    national_prefix: str = "0"


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """pbx.auth: what the PBX must prove (teamsbc.digest checks it)."""
    realm: str
    username: str
    password: str


def parse_sbc(r: SettingsReader, data: dict) -> str | None:
    """sbc.fqdn, lower-cased; None (and an error) when missing or not an FQDN."""
    s = r.section(data, "sbc", {"fqdn", "secret", "previous_secret", "secret_file", "workers"})
    fqdn = r.str_(s, "sbc", "fqdn")
    if fqdn and not FQDN_RE.match(fqdn):
        r.err("sbc.fqdn", f"{fqdn!r} is not a fully qualified domain name (Teams refuses IPs: use e.g. sbc.example.com)")
        fqdn = None
    return fqdn.lower() if fqdn else None


MAX_WORKERS = 64


def parse_workers(r: SettingsReader, data: dict) -> int:
    """sbc.workers: how many processes share the calls (docs/architecture.md, "Workers"):
    a number from 1 to 64, or `auto` for one per core this process may run on."""
    s = data.get("sbc") if isinstance(data, dict) else None
    v = s.get("workers", 1) if isinstance(s, dict) else 1
    if v == "auto":
        import os
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WORKERS:
        r.err("sbc.workers", f"must be a whole number from 1 to {MAX_WORKERS} or auto (got {v!r})")
        return 1
    return v


def parse_sbc_keys(r: SettingsReader, data: dict, env: dict[str, str] | None = None
                   ) -> tuple[Secret | None, Secret | None, Path]:
    """sbc.secret, sbc.previous_secret and sbc.secret_file. Values are never echoed in an
    error. Without sbc.secret the box seals with its own secret in sbc.secret_file (default:
    `sbc-secret` in $STATE_DIRECTORY, which systemd sets from StateDirectory=, else next to the
    config file), created on the first start: fine for one box, not for a pair."""
    import os

    s = data.get("sbc") if isinstance(data, dict) else None
    s = s if isinstance(s, dict) else {}
    secret = _secret(r, s, "secret")
    previous = _secret(r, s, "previous_secret")
    if previous is not None and secret is None:
        r.err("sbc.previous_secret", "needs sbc.secret (the new secret; the previous one is only "
                                     "accepted, never used to seal)")
    if secret is not None and previous is not None and secret == previous:
        r.err("sbc.previous_secret", "is the same as sbc.secret (remove it, or put the old secret here)")
    state = (env if env is not None else os.environ).get("STATE_DIRECTORY", "").split(":")[0]
    default = str(Path(state) / SECRET_FILE) if state else SECRET_FILE
    path = r.path(s, "sbc", "secret_file", default, must_exist=False) or r.base / SECRET_FILE
    return secret, previous, path


def _secret(r: SettingsReader, s: dict, key: str) -> Secret | None:
    v = s.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        r.err(f"sbc.{key}", f"must be a string of at least {MIN_SECRET} characters (got a "
                            f"{type(v).__name__}; quote it in YAML)")
        return None
    if len(v) < MIN_SECRET:
        r.err(f"sbc.{key}", f"must be at least {MIN_SECRET} characters, got {len(v)} (e.g. the "
                            "output of: openssl rand -base64 33)")
        return None
    if v != v.strip() or any(ord(c) < 32 for c in v):
        r.err(f"sbc.{key}", "must not contain spaces at either end or control characters")
        return None
    return Secret(v)


def parse_certs_dir(r: SettingsReader, data: dict) -> Path:
    certs_dir_s = data.get("certs_dir", "certs")
    certs_dir = Path(certs_dir_s) if isinstance(certs_dir_s, str) else Path("certs")
    if not isinstance(certs_dir_s, str):
        r.err("certs_dir", f"must be a directory path, got {certs_dir_s!r}")
    if not certs_dir.is_absolute():
        certs_dir = r.base / certs_dir
    return certs_dir


def parse_teams(r: SettingsReader, data: dict, fqdn: str | None, certs_dir: Path) -> TeamsSection | None:
    t = r.section(data, "teams", {"listen", "certificate", "private_key", "trusted_ca", "proxies",
                                  "port", "resolve", "signaling_port", "invite_timeout", "cloud",
                                  "options_interval", "options_timeout", "options_alarm", "allow_refer",
                                  "options_503_when_pbx_down", "require_san", "tenants",
                                  "keepalive_interval", "connection_max_age"})
    listen = r.ip_hostport(t, "teams", "listen", "0.0.0.0:5061")
    live = certs_dir / "live" / (fqdn or "_")
    # the default live files may not exist yet: `teamsbc cert issue` creates them
    cert = r.path(t, "teams", "certificate", str(live / "fullchain.pem"), must_exist="certificate" in t)
    key = r.path(t, "teams", "private_key", str(live / "privkey.pem"), must_exist="private_key" in t)
    trusted = r.path(t, "teams", "trusted_ca", None)
    cloud = r.str_(t, "teams", "cloud", "commercial", tuple(TEAMS_PROXIES)) or "commercial"
    proxies_v = t.get("proxies", list(TEAMS_PROXIES[cloud]))
    proxies: tuple[str, ...] = ()
    if not isinstance(proxies_v, list) or not proxies_v:
        r.err("teams.proxies", "must be a non-empty list of Teams SIP proxy FQDNs in order (sip, sip2, sip3)")
    else:
        for i, h in enumerate(proxies_v):
            if not isinstance(h, str) or not FQDN_RE.match(h):
                r.err(f"teams.proxies[{i}]", f"{h!r} is not an FQDN")
            elif h == "sip-all.pstnhub.microsoft.com":
                r.err(f"teams.proxies[{i}]", "sip-all.pstnhub.microsoft.com was retired in 2022; use sip, sip2, sip3.pstnhub.microsoft.com")
        proxies = tuple(h.lower() for h in proxies_v if isinstance(h, str))
    port = int(r.number(t, "teams", "port", 5061, 1, 65535))
    resolve_v = t.get("resolve", {}) or {}
    resolve: dict[str, HostPort] = {}
    if not isinstance(resolve_v, dict):
        r.err("teams.resolve", "must be a mapping FQDN -> \"ip:port\"")
    else:
        for name, target in resolve_v.items():
            hp = r.parse_hostport(target, f"teams.resolve.{name}", port)
            if hp:
                resolve[str(name).lower()] = hp
    signaling_port = int(r.number(t, "teams", "signaling_port", listen.port if listen else 5061, 1, 65535))
    invite_timeout = float(r.number(t, "teams", "invite_timeout", 4.0, 0.5, 32.0))
    options_interval = float(r.number(t, "teams", "options_interval", 60, 0, 600))  # 0 = off (labs only)
    options_timeout = float(r.number(t, "teams", "options_timeout", 5, 0.5, 32))
    options_alarm = float(r.number(t, "teams", "options_alarm", 180, 10, 3600))
    allow_refer = r.bool_(t, "teams", "allow_refer", False)
    opt503 = r.bool_(t, "teams", "options_503_when_pbx_down", False)
    keepalive = float(r.number(t, "teams", "keepalive_interval", 30, 1, 110))
    max_age = float(r.number(t, "teams", "connection_max_age", 3600, 10, 86400))
    san_v = t.get("require_san", [TEAMS_SAN[cloud]])
    if isinstance(san_v, str):
        san_v = [san_v]
    if not isinstance(san_v, list) or not san_v or not all(isinstance(x, str) and FQDN_RE.match(x) for x in san_v):
        r.err("teams.require_san", f"must be a list of FQDNs, one of which Teams' certificate must carry (default {TEAMS_SAN[cloud]})")
        san_v = [TEAMS_SAN[cloud]]
    tenants = _tenants(r, t.get("tenants"), fqdn)
    if listen is None or cert is None or key is None:
        return None
    return TeamsSection(listen, cert, key, trusted, proxies, port, resolve, signaling_port,
                        invite_timeout, cloud, options_interval, options_timeout, options_alarm,
                        allow_refer, opt503, tuple(x.lower() for x in san_v), tenants, keepalive,
                        max_age)


def parse_pbx(r: SettingsReader, data: dict, fqdn: str | None) -> PbxSection | None:
    pb = r.section(data, "pbx", {"listen", "transport", "address", "options_interval", "options_timeout",
                                 "auth", "prack", "early_media", "max_udp_size"})
    pbx_listen = r.ip_hostport(pb, "pbx", "listen")
    if pbx_listen is not None and pbx_listen.host in ("0.0.0.0", "::"):
        r.err("pbx.listen", f"{pbx_listen.host} is not an address the PBX can be sent back to: use the SBC's own IP on the PBX network (it goes into Record-Route and Via)")
    pbx_transport = r.str_(pb, "pbx", "transport", "udp", ("udp", "tcp"))
    pbx_address = r.ip_hostport(pb, "pbx", "address")
    pbx_opt = float(r.number(pb, "pbx", "options_interval", 30, 0, 600))
    pbx_opt_timeout = float(r.number(pb, "pbx", "options_timeout", 5, 0.5, 32))
    # 1500-byte Ethernet MTU less the IPv4 and UDP headers; a jumbo-frame path may raise it
    max_udp = r.whole(pb, "pbx", "max_udp_size", 1472, 576, 65507)
    pbx_auth = None
    if pb.get("auth") is not None:
        a = pb.get("auth")
        if not isinstance(a, dict):
            r.err("pbx.auth", "must be {realm: ..., username: ..., password: ...}")
        else:
            for k in a:
                if k not in ("realm", "username", "password"):
                    r.err(f"pbx.auth.{k}", "unknown key (known: password, realm, username)")
            realm = r.str_(a, "pbx.auth", "realm", fqdn or "teamsbc")
            user = r.str_(a, "pbx.auth", "username")
            pw = r.str_(a, "pbx.auth", "password")
            if pw is not None and len(pw) < 12:
                r.err("pbx.auth.password", "must be at least 12 characters (trunk credentials are brute-forced)")
            elif realm and user and pw:
                pbx_auth = DigestCredentials(realm, user, pw)
    prack = r.str_(pb, "pbx", "prack", "strip", PRACK_MODES) or "strip"
    early_media = r.str_(pb, "pbx", "early_media", "pass", EARLY_MEDIA_MODES) or "pass"
    if pbx_listen is None or pbx_transport is None or pbx_address is None:
        return None
    return PbxSection(pbx_listen, pbx_transport, pbx_address, pbx_opt, pbx_opt_timeout, pbx_auth,
                      max_udp, prack, early_media)


def parse_numbers(r: SettingsReader, data: dict) -> NumbersSection:
    n = r.section(data, "numbers", {"country_code", "international_prefix", "national_prefix"}, required=False)
    numbers = NumbersSection()
    if n:
        cc = n.get("country_code")
        if cc is not None:
            cc = str(cc).lstrip("+")
            if not cc.isdigit() or not 1 <= len(cc) <= 3:
                r.err("numbers.country_code", f"{n.get('country_code')!r} is not an E.164 country code (1-3 digits, e.g. 44)")
                cc = None
        ip = str(n.get("international_prefix", "00"))
        np_ = str(n.get("national_prefix", "0"))
        for k, v in (("international_prefix", ip), ("national_prefix", np_)):
            if v and not v.isdigit():
                r.err(f"numbers.{k}", f"{v!r} must be digits (e.g. \"00\", \"011\", \"0\")")
        numbers = NumbersSection(cc, ip, np_)
    return numbers


def parse_log(r: SettingsReader, data: dict) -> LogSection:
    lg = r.section(data, "log", {"level"}, required=False)
    level = r.str_(lg, "log", "level", "info", ("debug", "info", "warning", "error")) or "info"
    return LogSection(level)


def _tenants(r: SettingsReader, value: Any, base_fqdn: str | None) -> dict[str, TenantSection]:
    """teams.tenants: {customer.sbc.example.com: {pbx: "ip:port", numbers: ["+4420"]}}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        r.err("teams.tenants", "must be a mapping tenant FQDN -> {pbx: \"ip:port\", numbers: [\"+prefix\"]}")
        return {}
    out: dict[str, TenantSection] = {}
    for name, spec in value.items():
        where = f"teams.tenants.{name}"
        fq = str(name).lower()
        if not FQDN_RE.match(fq):
            r.err(where, "is not an FQDN")
            continue
        if base_fqdn and not fq.endswith("." + base_fqdn):
            r.err(where, f"must be a subdomain of sbc.fqdn ({base_fqdn}): Teams finds the tenant by it and the wildcard certificate *.{base_fqdn} covers it")
            continue
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            r.err(where, "must be a mapping with pbx and/or numbers")
            continue
        for k in spec:
            if k not in ("pbx", "numbers"):
                r.err(f"{where}.{k}", "unknown key (known: numbers, pbx)")
        pbx = r.ip_hostport(spec, where, "pbx", None) if spec.get("pbx") is not None else None
        nums = spec.get("numbers", []) or []
        if not isinstance(nums, list) or not all(isinstance(n, str) and n.startswith("+") and n[1:].isdigit() for n in nums):
            r.err(f"{where}.numbers", "must be a list of +E.164 prefixes like \"+4420\"")
            nums = []
        if pbx is None and not nums:
            r.err(where, "needs pbx (the tenant's trunk) or numbers (its caller prefixes)")
            continue
        out[fq] = TenantSection(fq, pbx, tuple(nums))
    return out
