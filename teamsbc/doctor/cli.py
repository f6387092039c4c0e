"""`teamsbc doctor -c FILE`: the Teams pairing checklist as a command.

Every check prints one line, and a fix for anything not PASS:

    PASS  dns sbc.example.com: 203.0.113.10 (an address of this host)
    FAIL  cert validity: expired at 2025-01-01 00:00:00 UTC
      fix: renew it now (teamsbc cert renew -c FILE), then systemctl reload teamsbc

The exit code is the number of FAILs (0 = nothing known to be broken). The checks follow the
failures Microsoft reports for an SBC (docs/troubleshooting.md; shared reference section 9):
403 (IP or unknown FQDN in Contact), 488 (no SRTP), 504 / 5690xx (TLS: root, expiry, name),
408 1106 (Route/Contact handling), and an inactive trunk (no OPTIONS either way).

    dns        sbc.fqdn and every tenant FQDN resolve, to an address of this host
               (--public-ip for 1:1 NAT, --resolve NAME=IP instead of DNS: labs, split DNS)
    cert       chain up to a trusted root (system store, or teams.trusted_ca: labs), names
               (wildcard = one label), RSA >= 2048, serverAuth (FAIL) and clientAuth (WARN)
               EKUs, validity and days left (WARN < 30), private key matches
    tls        the Teams listener answers a ClientHello like Teams' (TLS 1.2, its four ECDHE-RSA
               suites) with one of them, and serves the certificate file (a reload is pending if not)
    options    OPTIONS to each teams.proxies entry (and the Microsoft test endpoint with
               --test-endpoint) over mutual TLS, answered 200 (teams.resolve is honoured)
    teams-ping Teams' own OPTIONS seen recently, from the running SBC's admin API (GET /peers)
    identity   messages the SBC's own code builds toward Teams (our OPTIONS, the answer to
               Teams' OPTIONS, a relayed INVITE and a relayed 200 OK, for the base FQDN and
               each tenant) carry the FQDN, never an IP, in Contact, Record-Route and Via;
               --sample FILE adds captured messages (what the SBC sent to Teams)
    media      rtpengine configured and answering NG ping (else Teams gets plain RTP: 488)
    clock      NTP synchronised (timedatectl, chronyc or ntpq)
    pair       with --pair URL (the other box's admin API): reachable, the same sbc.secret
               (an HMAC of a random challenge, never the secret), the same FQDN, clocks within
               0.5 s (docs/ha.md)

Everything runs offline against a lab (teams.trusted_ca, teams.resolve to loopback peers,
--resolve for the SBC FQDN): see tests/test_doctor.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from .. import config as cfg
from ..addresses import is_ip
from .options import TEST_ENDPOINT
from .report import exit_code, print_results
from .runner import CHECKS, Doctor, Options
from .teams_ping import DEFAULT_ADMIN


def _parse_resolve(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, ip = v.partition("=")
        if not sep or not is_ip(ip):
            raise argparse.ArgumentTypeError(f"--resolve {v!r}: expected NAME=IP")
        out[name.lower().rstrip(".")] = str(ipaddress.ip_address(ip))
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as e:
        for line in e.errors:
            print(f"FAIL  config: {line}")
        print("  fix: teamsbc check -c FILE lists every error with what would be right")
        return 1
    try:
        resolve = _parse_resolve(args.resolve or [])
    except argparse.ArgumentTypeError as e:
        print(f"teamsbc doctor: {e}", file=sys.stderr)
        return 2
    opts = Options(resolve=resolve, public_ips=tuple(args.public_ip or ()), test_endpoint=args.test_endpoint,
                   admin_url=args.admin, admin_token=args.admin_token,
                   samples=tuple(Path(p) for p in args.sample or ()), timeout=args.timeout,
                   skip=tuple(args.skip or ()), pair_url=args.pair)
    print(f"teamsbc doctor: {config.source} (sbc {config.sbc.fqdn}, cloud {config.teams.cloud})\n")
    results = Doctor(config, opts).run()
    print_results(results)
    return exit_code(results)


def register(subparsers) -> argparse.ArgumentParser:
    """Add `teamsbc doctor` to teamsbc's argparse sub-parsers."""
    p = subparsers.add_parser(
        "doctor", help="the Teams pairing checklist: PASS/WARN/FAIL per check, exit code = failures",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="the SBC's YAML config")
    p.add_argument("--resolve", action="append", metavar="NAME=IP",
                   help="use IP for NAME instead of DNS (labs, split DNS); repeatable")
    p.add_argument("--public-ip", action="append", metavar="IP",
                   help="a public address that reaches this host (1:1 NAT); repeatable")
    p.add_argument("--test-endpoint", action="store_true",
                   help=f"also send OPTIONS to Microsoft's test endpoint {TEST_ENDPOINT}:5061")
    p.add_argument("--admin", metavar="URL", help="the SBC's admin API (default from admin.listen, "
                                                   f"else http://{DEFAULT_ADMIN})")
    p.add_argument("--admin-token", metavar="TOKEN", help="admin API token (default admin.token)")
    p.add_argument("--sample", action="append", metavar="FILE",
                   help="also check SIP messages the SBC sent to Teams (e.g. from a trace); repeatable")
    p.add_argument("--pair", metavar="URL", help="the other box of an HA pair: its admin API, e.g. "
                   "http://10.0.0.12:8080 (checks the shared secret, reachability, clocks)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per network check (default 5)")
    p.add_argument("--skip", action="append", choices=CHECKS, help="leave a check out; repeatable")
    p.set_defaults(func=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teamsbc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
