"""The `security:` section (teamsbc/guard.py; docs/security.md) -> SecuritySection.

Who may talk to the SBC and how much: Teams' source ranges, what happens to strangers, rate
limits, bans, call limits, message limits, topology hiding.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .settings import SettingsReader
from .sip import grammar as g  # the parser's hard limits: the config may only lower them

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
    ban_auth_after: int = 5               # failed digest attempts within ban_window -> locked out for ban_time
    max_calls: int = 1000                 # concurrent calls; beyond: 503 + Retry-After
    max_calls_per_tenant: int = 0         # 0 = only max_calls
    retry_after: int = 30
    call_idle_timeout: float = 7200.0     # a call with no in-dialog request this long stops counting
    max_message_size: int = 65_535        # may only lower the parser's limits (sip/grammar.py)
    max_headers: int = 128
    max_line_length: int = 8_192
    max_sources: int = 50_000             # per-source entries kept (buckets, failures, bans)
    report_interval: float = 60.0         # counters logged this often when they changed; 0 = never
    header_timeout: float = 10.0          # a message must be complete this long after its first byte,
                                          # and a connection we accepted must bring its first one
    idle_timeout: float = 120.0           # an accepted connection with no message and no transaction
                                          # this long is closed (Teams drops idle ones at 2 min too)
    topology_hiding: bool = False


_SECURITY_KEYS = {"teams_ranges", "unknown_source", "scanner_user_agents", "stranger_rate",
                  "stranger_burst", "strangers_rate", "strangers_burst", "pbx_rate", "pbx_burst",
                  "teams_rate", "teams_burst", "stranger_connect_rate", "stranger_connect_burst",
                  "teams_connect_rate", "teams_connect_burst", "stranger_max_connections",
                  "teams_max_connections", "ban_after", "ban_window", "ban_time", "ban_auth_after", "max_calls",
                  "max_calls_per_tenant", "retry_after", "call_idle_timeout", "max_message_size",
                  "max_headers", "max_line_length", "max_sources", "report_interval",
                  "header_timeout", "idle_timeout",
                  "topology_hiding"}


def parse_security(r: SettingsReader, data: dict, cloud: str) -> SecuritySection:
    """security: {teams_ranges: [CIDR...], unknown_source: drop|403, limits...}."""
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
        return r.whole(s, "security", key, getattr(d, key), lo, hi)

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
        ban_auth_after=whole("ban_auth_after", 0, 1_000_000),
        max_calls=whole("max_calls", 0, 1_000_000),
        max_calls_per_tenant=whole("max_calls_per_tenant", 0, 1_000_000),
        retry_after=whole("retry_after", 1, 3600),
        call_idle_timeout=num("call_idle_timeout", 60, 7 * 86400),
        max_message_size=whole("max_message_size", 1024, g.MAX_MESSAGE_SIZE),
        max_headers=whole("max_headers", 16, g.MAX_HEADERS),
        max_line_length=whole("max_line_length", 256, g.MAX_LINE_LENGTH),
        max_sources=whole("max_sources", 100, 10_000_000),
        report_interval=num("report_interval", 0, 86400),
        header_timeout=num("header_timeout", 1, 300),
        idle_timeout=num("idle_timeout", 10, 86400),
        topology_hiding=r.bool_(s, "security", "topology_hiding", False),
    )
