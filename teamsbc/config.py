"""One YAML file -> typed, validated settings. Every error names the file, the key, what is
wrong and what would be right; all errors are collected so one `teamsbc check` shows them all.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .addresses import AddressError, HostPort, parse_hostport
from .certs.settings import AcmeSettings, default_acme, parse_acme

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


DEFAULT_PBX_CODECS = ("PCMA", "PCMU", "G722", "telephone-event")


class ConfigError(Exception):
    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class SbcSection:
    fqdn: str


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
    auth: Any = None                 # digest.DigestCredentials: the PBX must authenticate (optional)


@dataclass(frozen=True, slots=True)
class MediaSection:
    rtpengine: tuple[str, ...] = ()   # NG addresses: udp:IP:PORT | http://IP:PORT | ws://IP:PORT [;weight=N]
    pbx_codecs: tuple[str, ...] = ("PCMA", "PCMU", "G722", "telephone-event")  # = DEFAULT_PBX_CODECS
    interfaces: tuple[str, str] | None = None   # rtpengine interface names (teams side, pbx side)
    timeout: float = 2.0              # one NG command, retransmissions included
    teams_ice: str = "lite"           # lite | remove: ICE toward Teams
    ping_interval: float = 5.0        # health pings to each rtpengine
    down_after: int = 2               # failed pings in a row -> instance down
    max_sdp_to_pbx: int = 1300        # bytes; a larger SDP toward a UDP PBX is refused with a reason
    hold_inactive: bool = True        # hold toward Teams as a=inactive (reference 8)
    sdes_lifetime: bool = False       # send |2^31 with our SDES keys toward Teams


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
class Config:
    sbc: SbcSection
    teams: TeamsSection
    pbx: PbxSection
    media: MediaSection = field(default_factory=MediaSection)
    numbers: NumbersSection = field(default_factory=NumbersSection)
    log: LogSection = field(default_factory=LogSection)
    certs_dir: Path = Path("certs")
    source: str = "<embedded>"
    acme: AcmeSettings = field(default_factory=default_acme)
    security: "SecuritySection" = field(default_factory=lambda: SecuritySection())
    admin: Any = None      # admin.AdminSettings
    cdr: Any = None        # cdr.CdrSettings
    capture: Any = None    # capture.CaptureSettings


_FQDN_RE = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}\Z")


class _Reader:
    """Walks the YAML tree, records errors instead of raising so all are reported at once."""

    def __init__(self, source: str, base: Path):
        self.source = source
        self.base = base
        self.errors: list[str] = []

    def err(self, key: str, msg: str) -> None:
        self.errors.append(f"{self.source}: {key}: {msg}")

    def section(self, data: dict, key: str, known: set[str], required: bool = True) -> dict:
        v = data.get(key)
        if v is None:
            if required:
                self.err(key, "missing section")
            return {}
        if not isinstance(v, dict):
            self.err(key, f"must be a mapping, got {type(v).__name__}")
            return {}
        for k in v:
            if k not in known:
                self.err(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
        return v

    def str_(self, d: dict, path: str, key: str, default: Any = ..., choices: tuple | None = None):
        v = d.get(key, default)
        if v is ...:
            self.err(f"{path}.{key}", "required")
            return None
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip():
            self.err(f"{path}.{key}", f"must be a non-empty string, got {v!r}")
            return None
        if choices and v not in choices:
            self.err(f"{path}.{key}", f"{v!r} is not one of {', '.join(choices)}")
            return None
        return v.strip()

    def hostport(self, d: dict, path: str, key: str, default: Any = ..., default_port: int | None = None):
        v = d.get(key, default)
        where = f"{path}.{key}"
        if v is ...:
            self.err(where, "required (\"host:port\", e.g. 127.0.0.1:5060)")
            return None
        return self.parse_hostport(v, where, default_port)

    def parse_hostport(self, v: Any, where: str, default_port: int | None = None):
        try:
            return parse_hostport(v, default_port)
        except AddressError as e:
            self.err(where, str(e))
            return None

    def ip_hostport(self, d: dict, path: str, key: str, default: Any = ...):
        hp = self.hostport(d, path, key, default)
        if hp is not None:
            try:
                ipaddress.ip_address(hp.host)
            except ValueError:
                self.err(f"{path}.{key}", f"{hp.host!r} must be an IP address (listeners and trunks bind/send by address)")
                return None
        return hp

    def path(self, d: dict, path: str, key: str, default: Any = ..., must_exist: bool = True):
        v = self.str_(d, path, key, default)
        if v is None:
            return None
        p = Path(v)
        if not p.is_absolute():
            p = self.base / p
        if must_exist and not p.is_file():
            self.err(f"{path}.{key}", f"file {str(p)!r} does not exist or is not a file")
        return p

    def bool_(self, d: dict, path: str, key: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            self.err(f"{path}.{key}", f"must be true or false, got {v!r}")
            return default
        return v

    def number(self, d: dict, path: str, key: str, default: float, lo: float, hi: float):
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            self.err(f"{path}.{key}", f"must be a number between {lo} and {hi}, got {v!r}")
            return default
        return v


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{p}: {where}not valid YAML: {problem}"]) from None
    return from_dict(data, source=str(p), base=p.resolve().parent)


def from_dict(data: Any, *, source: str = "<dict>", base: Path | None = None) -> Config:
    r = _Reader(source, base or Path.cwd())
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: top level must be a mapping with sbc, teams, pbx sections"])
    known_top = {"sbc", "teams", "pbx", "media", "numbers", "log", "certs_dir", "acme", "admin", "cdr", "capture",
                 "security"}
    for k in data:
        if k not in known_top:
            r.err(k, f"unknown section (known: {', '.join(sorted(known_top))})")

    s = r.section(data, "sbc", {"fqdn"})
    fqdn = r.str_(s, "sbc", "fqdn")
    if fqdn and not _FQDN_RE.match(fqdn):
        r.err("sbc.fqdn", f"{fqdn!r} is not a fully qualified domain name (Teams refuses IPs: use e.g. sbc.example.com)")
        fqdn = None
    certs_dir_s = data.get("certs_dir", "certs")
    certs_dir = Path(certs_dir_s) if isinstance(certs_dir_s, str) else Path("certs")
    if not isinstance(certs_dir_s, str):
        r.err("certs_dir", f"must be a directory path, got {certs_dir_s!r}")
    if not certs_dir.is_absolute():
        certs_dir = r.base / certs_dir

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
            if not isinstance(h, str) or not _FQDN_RE.match(h):
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
    if not isinstance(san_v, list) or not san_v or not all(isinstance(x, str) and _FQDN_RE.match(x) for x in san_v):
        r.err("teams.require_san", f"must be a list of FQDNs, one of which Teams' certificate must carry (default {TEAMS_SAN[cloud]})")
        san_v = [TEAMS_SAN[cloud]]
    tenants = _tenants(r, t.get("tenants"), fqdn)

    pb = r.section(data, "pbx", {"listen", "transport", "address", "options_interval", "options_timeout",
                                 "auth"})
    pbx_listen = r.ip_hostport(pb, "pbx", "listen")
    if pbx_listen is not None and pbx_listen.host in ("0.0.0.0", "::"):
        r.err("pbx.listen", f"{pbx_listen.host} is not an address the PBX can be sent back to: use the SBC's own IP on the PBX network (it goes into Record-Route and Via)")
    pbx_transport = r.str_(pb, "pbx", "transport", "udp", ("udp", "tcp"))
    pbx_address = r.ip_hostport(pb, "pbx", "address")
    pbx_opt = float(r.number(pb, "pbx", "options_interval", 30, 0, 600))
    pbx_opt_timeout = float(r.number(pb, "pbx", "options_timeout", 5, 0.5, 32))
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
                from .digest import DigestCredentials
                pbx_auth = DigestCredentials(realm, user, pw)

    m = r.section(data, "media", {"rtpengine", "pbx_codecs", "interfaces", "timeout", "teams_ice",
                                  "ping_interval", "down_after", "max_sdp_to_pbx", "hold_inactive",
                                  "sdes_lifetime"}, required=False)
    rtp = m.get("rtpengine", []) or []
    if not isinstance(rtp, list) or not all(isinstance(x, str) for x in rtp):
        r.err("media.rtpengine", "must be a list of rtpengine addresses like udp:127.0.0.1:22222")
        rtp = []
    from .media.pool import parse_instance  # the pool owns the address syntax
    for i, spec in enumerate(rtp):
        try:
            parse_instance(spec)
        except ValueError as e:
            r.err(f"media.rtpengine[{i}]", f"{spec!r}: {e} (e.g. udp:127.0.0.1:22222, http://10.0.0.7:8080;weight=2)")
    down_after = int(r.number(m, "media", "down_after", 2, 1, 100))
    max_sdp = int(r.number(m, "media", "max_sdp_to_pbx", 1300, 200, 65000))
    hold_inactive = r.bool_(m, "media", "hold_inactive", True)
    sdes_lifetime = r.bool_(m, "media", "sdes_lifetime", False)
    codecs = m.get("pbx_codecs", list(DEFAULT_PBX_CODECS))
    if not isinstance(codecs, list) or not codecs or not all(isinstance(x, str) and x for x in codecs):
        r.err("media.pbx_codecs", "must be a list of codec names the PBX decodes, e.g. [PCMA, PCMU, G722]")
        codecs = list(DEFAULT_PBX_CODECS)
    if "telephone-event" not in codecs:
        codecs.append("telephone-event")  # DTMF to Teams is RFC 4733 only (reference 8)
    ifaces_v = m.get("interfaces")
    ifaces = None
    if ifaces_v is not None:
        if isinstance(ifaces_v, dict) and set(ifaces_v) == {"teams", "pbx"} and all(isinstance(v, str) for v in ifaces_v.values()):
            ifaces = (ifaces_v["teams"], ifaces_v["pbx"])
        else:
            r.err("media.interfaces", "must be {teams: IFACE, pbx: IFACE} with rtpengine interface names")
    media_timeout = float(r.number(m, "media", "timeout", 2.0, 0.2, 30))
    teams_ice = r.str_(m, "media", "teams_ice", "lite", ("lite", "remove")) or "lite"
    ping_iv = float(r.number(m, "media", "ping_interval", 5.0, 0.5, 300))

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

    acme = parse_acme(data.get("acme"), source=source, base=r.base, errors=r.errors, sbc_fqdn=fqdn)

    security = _security(r, data, cloud)

    lg = r.section(data, "log", {"level"}, required=False)
    level = r.str_(lg, "log", "level", "info", ("debug", "info", "warning", "error")) or "info"

    from .admin import parse_settings as admin_settings
    from .capture.settings import parse_settings as capture_settings
    from .cdr import parse_settings as cdr_settings
    admin, e1 = admin_settings(data.get("admin"), r.base)
    cdr, e2 = cdr_settings(data.get("cdr"), r.base)
    capture, e3 = capture_settings(data.get("capture"), r.base)
    for k, problem in (*e1, *e2, *e3):
        r.err(k, problem)

    if r.errors:
        raise ConfigError(r.errors)
    assert fqdn and listen and cert and key and pbx_listen and pbx_transport and pbx_address
    return Config(
        sbc=SbcSection(fqdn.lower()),
        teams=TeamsSection(listen, cert, key, trusted, proxies, port, resolve, signaling_port,
                           invite_timeout, cloud, options_interval, options_timeout, options_alarm,
                           allow_refer, opt503, tuple(x.lower() for x in san_v), tenants, keepalive,
                           max_age),
        pbx=PbxSection(pbx_listen, pbx_transport, pbx_address, pbx_opt, pbx_opt_timeout, pbx_auth),
        media=MediaSection(tuple(rtp), tuple(codecs), ifaces, media_timeout, teams_ice, ping_iv,
                           down_after, max_sdp, hold_inactive, sdes_lifetime),
        numbers=numbers,
        log=LogSection(level),
        certs_dir=certs_dir,
        source=source,
        acme=acme,
        security=security,
        admin=admin,
        cdr=cdr,
        capture=capture,
    )


def _tenants(r: _Reader, value: Any, base_fqdn: str | None) -> dict[str, TenantSection]:
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
        if not _FQDN_RE.match(fq):
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


# --- security (issue 6: hostile networks; docs/security.md) ------------------------------
# Teams' SIP signalling source ranges per cloud (Microsoft Learn, "Plan Direct Routing" and
# "Plan for media bypass with Direct Routing", section "SIP Signaling: FQDNs"). Teams may
# connect from any address in them. Newer pages list 52.112.0.0/14 + 52.122.0.0/15 for the
# commercial cloud; 52.122.0.0/15 lies inside 52.120.0.0/14, which older pages list.
TEAMS_RANGES = {
    "commercial": ("52.112.0.0/14", "52.120.0.0/14"),
    "gcch": ("52.127.88.0/21",),
    "dod": ("52.127.64.0/21",),
}

# User-Agent substrings of SIP scanners (case-insensitive). Sources: SIPVicious OSS sends
# "friendly-scanner" by default (sipvicious/libs/svhelper.py makeRequest); Kamailio's example
# configuration drops "friendly-scanner" and "sipcli" (misc/examples/kemi/
# kamailio-basic-kemi-lua.lua, ksr_route_reqinit); the rest are the tools seen in honeypot
# and operator block lists (sipsak-based "sip-scan", VaxSIPUserAgent, iWar, sundayddr,
# pplsip, "PortSIP VoIP SDK" toll-fraud INVITEs documented by ClearIP's user-agent block list).
SCANNER_USER_AGENTS = ("friendly-scanner", "sipvicious", "sipcli", "sip-scan", "sipscan",
                       "vaxsipuseragent", "vaxipuseragent", "iwar", "sundayddr", "pplsip",
                       "siparmyknife", "smap", "portsip voip sdk", "nmap nse")


@dataclass(frozen=True, slots=True)
class SecuritySection:
    """Who may talk to the SBC and how much (teamsbc/guard.py). Rates are per second; a rate
    of 0 means no limit. "Strangers" are sources that are neither a configured PBX nor in the
    Teams ranges: they never share a bucket with the PBX or Teams."""
    teams_ranges: tuple[str, ...] = TEAMS_RANGES["commercial"]
    unknown_source: str = "drop"          # drop | 403: non-PBX sources on the PBX leg
    scanner_user_agents: tuple[str, ...] = SCANNER_USER_AGENTS
    stranger_rate: float = 5.0            # requests per stranger address
    stranger_burst: float = 20.0
    strangers_rate: float = 200.0         # all strangers together (spoofed-source floods)
    strangers_burst: float = 400.0
    pbx_rate: float = 200.0               # new requests per PBX address
    pbx_burst: float = 400.0
    teams_rate: float = 100.0             # new requests per Teams address
    teams_burst: float = 200.0
    stranger_connect_rate: float = 1.0    # new TCP connections / TLS handshakes per address
    stranger_connect_burst: float = 5.0
    teams_connect_rate: float = 20.0
    teams_connect_burst: float = 100.0
    stranger_max_connections: int = 4     # open connections per address
    teams_max_connections: int = 200
    ban_after: int = 10                   # failures within ban_window -> banned for ban_time
    ban_window: float = 60.0
    ban_time: float = 600.0
    max_calls: int = 1000                 # concurrent calls; beyond: 503 + Retry-After
    max_calls_per_tenant: int = 0         # 0 = only max_calls
    retry_after: int = 30
    call_idle_timeout: float = 7200.0     # a call with no in-dialog request this long stops counting
    max_message_size: int = 65_535        # may only lower the parser's limits (sip/grammar.py)
    max_headers: int = 128
    max_line_length: int = 8_192
    max_sources: int = 50_000             # per-source entries kept (buckets, failures, bans)
    report_interval: float = 60.0         # counters logged this often when they changed; 0 = never
    topology_hiding: bool = False


_SECURITY_KEYS = {"teams_ranges", "unknown_source", "scanner_user_agents", "stranger_rate",
                  "stranger_burst", "strangers_rate", "strangers_burst", "pbx_rate", "pbx_burst",
                  "teams_rate", "teams_burst", "stranger_connect_rate", "stranger_connect_burst",
                  "teams_connect_rate", "teams_connect_burst", "stranger_max_connections",
                  "teams_max_connections", "ban_after", "ban_window", "ban_time", "max_calls",
                  "max_calls_per_tenant", "retry_after", "call_idle_timeout", "max_message_size",
                  "max_headers", "max_line_length", "max_sources", "report_interval",
                  "topology_hiding"}


def _security(r: _Reader, data: dict, cloud: str) -> SecuritySection:
    """security: {teams_ranges: [CIDR...], unknown_source: drop|403, limits...}."""
    from .sip import grammar as g  # the parser's hard limits: the config may only lower them

    s = r.section(data, "security", _SECURITY_KEYS, required=False)
    d = SecuritySection()
    ranges_v = s.get("teams_ranges", list(TEAMS_RANGES[cloud]))
    ranges: list[str] = []
    if isinstance(ranges_v, str):
        ranges_v = [ranges_v]
    if not isinstance(ranges_v, list) or not ranges_v:
        r.err("security.teams_ranges", f"must be a non-empty list of CIDR ranges Teams connects from "
              f"(default for teams.cloud {cloud}: {', '.join(TEAMS_RANGES[cloud])}; a lab: [127.0.0.0/8])")
    else:
        for i, v in enumerate(ranges_v):
            try:
                ranges.append(str(ipaddress.ip_network(str(v), strict=False)))
            except ValueError:
                r.err(f"security.teams_ranges[{i}]", f"{v!r} is not an address range like 52.112.0.0/14")
    unknown = s.get("unknown_source", "drop")
    if str(unknown) not in ("drop", "403"):
        r.err("security.unknown_source", f"{unknown!r} is not one of drop, 403 (drop: scanners get no answer)")
        unknown = "drop"
    uas_v = s.get("scanner_user_agents", list(SCANNER_USER_AGENTS))
    if not isinstance(uas_v, list) or not all(isinstance(x, str) and x.strip() for x in uas_v):
        r.err("security.scanner_user_agents", "must be a list of User-Agent substrings (case-insensitive), [] for none")
        uas_v = list(SCANNER_USER_AGENTS)

    def num(key: str, lo: float, hi: float) -> float:
        return float(r.number(s, "security", key, getattr(d, key), lo, hi))

    def whole(key: str, lo: int, hi: int) -> int:
        v = s.get(key, getattr(d, key))
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            r.err(f"security.{key}", f"must be a whole number between {lo} and {hi}, got {v!r}")
            return getattr(d, key)
        return v

    rates = {k: num(k, 0, 1e6) for k in ("stranger_rate", "stranger_burst", "strangers_rate",
                                         "strangers_burst", "pbx_rate", "pbx_burst", "teams_rate",
                                         "teams_burst", "stranger_connect_rate", "stranger_connect_burst",
                                         "teams_connect_rate", "teams_connect_burst")}
    for rate, burst in (("stranger_rate", "stranger_burst"), ("strangers_rate", "strangers_burst"),
                        ("pbx_rate", "pbx_burst"), ("teams_rate", "teams_burst"),
                        ("stranger_connect_rate", "stranger_connect_burst"),
                        ("teams_connect_rate", "teams_connect_burst")):
        if rates[rate] > 0 and rates[burst] < 1:
            r.err(f"security.{burst}", f"must be at least 1 when {rate} is set (the bucket holds whole requests)")
    return SecuritySection(
        teams_ranges=tuple(ranges) or d.teams_ranges,
        unknown_source=str(unknown),
        scanner_user_agents=tuple(x.strip().lower() for x in uas_v),
        **rates,
        stranger_max_connections=whole("stranger_max_connections", 0, 100_000),
        teams_max_connections=whole("teams_max_connections", 0, 100_000),
        ban_after=whole("ban_after", 0, 1_000_000),
        ban_window=num("ban_window", 1, 86400),
        ban_time=num("ban_time", 0, 30 * 86400),
        max_calls=whole("max_calls", 0, 1_000_000),
        max_calls_per_tenant=whole("max_calls_per_tenant", 0, 1_000_000),
        retry_after=whole("retry_after", 1, 3600),
        call_idle_timeout=num("call_idle_timeout", 60, 7 * 86400),
        max_message_size=whole("max_message_size", 1024, g.MAX_MESSAGE_SIZE),
        max_headers=whole("max_headers", 16, g.MAX_HEADERS),
        max_line_length=whole("max_line_length", 256, g.MAX_LINE_LENGTH),
        max_sources=whole("max_sources", 100, 10_000_000),
        report_interval=num("report_interval", 0, 86400),
        topology_hiding=r.bool_(s, "security", "topology_hiding", False),
    )
