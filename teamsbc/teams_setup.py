"""`teamsbc teams-setup -c FILE`: the tenant-side PowerShell and the firewall rules for this SBC.

Prints, generated from the config:
1. the MicrosoftTeams PowerShell that pairs the SBC (New-CsOnlinePSTNGateway with sbc.fqdn, or
   one per tenant FQDN in carrier mode), and the PSTN usage, voice route and voice routing
   policy that send calls to it, plus a per-user example;
2. an nftables table that lets only Teams reach the TLS port, only the PBX reach the PBX port,
   and only Teams' media processors reach the media ports on the Teams side.

Cmdlet parameter names were checked against Microsoft's cmdlet reference
(learn.microsoft.com/powershell/module/teams/<cmdlet>, MicrosoftTeams module):
  New-CsOnlinePSTNGateway -Fqdn <string> -SipSignalingPort <int> [-SendSipOptions <boolean>]
      [-MaxConcurrentSessions <int>] [-Enabled <boolean>]     (the -Fqdn parameter set)
  Set-CsOnlinePstnUsage [-Identity] <string> -Usage <Object>   (example: -Identity global -Usage @{add="..."})
  New-CsOnlineVoiceRoute [-Identity] <String> [-NumberPattern <String>]
      [-OnlinePstnGatewayList <Object>] [-Priority <Int32>] [-OnlinePstnUsages <Object>]
  New-CsOnlineVoiceRoutingPolicy [-Identity] <string> [-OnlinePstnUsages <Object>]
  Grant-CsOnlineVoiceRoutingPolicy [[-Identity] <string>] [[-PolicyName] <string>]
  Set-CsPhoneNumberAssignment -Identity -PhoneNumber -PhoneNumberType   (older module versions'
      reference; the newest reference page names them -TelephoneNumber / -NumberType)
Teams' address ranges: shared reference section 1 (commercial); GCC High 52.127.88.0/21 and
DoD 52.127.64.0/21 from Microsoft's direct-routing-plan page (media processor sections).
Re-check both at deployment time: Microsoft changes them.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import config as cfg
from .config import Config

# Signalling sources (SBC port) and media processors (SBC media ports), per cloud.
TEAMS_SIGNALLING = {
    "commercial": ("52.112.0.0/14", "52.120.0.0/14", "52.122.0.0/15"),
    "gcch": ("52.127.88.0/21",),
    "dod": ("52.127.64.0/21",),
}
TEAMS_MEDIA = {
    "commercial": ("52.112.0.0/14", "52.120.0.0/14", "52.122.0.0/15"),
    "gcch": ("52.127.88.0/21",),
    "dod": ("52.127.64.0/21",),
}
DEFAULT_MEDIA_PORTS = "30000-40000"   # deploy/rtpengine.conf port-min/port-max
FIREWALL_FILE = "/etc/teamsbc/firewall.nft"   # what teamsbc-firewall.service loads at boot


def _ps_string(s: str) -> str:
    """A PowerShell double-quoted string."""
    return '"' + s.replace("`", "``").replace('"', '`"').replace("$", "`$") + '"'


def gateways(config: Config) -> list[str]:
    """The FQDNs paired with New-CsOnlinePSTNGateway: the tenant FQDNs in carrier mode (each in
    its customer's tenant), else sbc.fqdn."""
    return list(config.teams.tenants) or [config.sbc.fqdn]


def powershell(config: Config, *, max_sessions: int = 100, usage: str = "teamsbc", route: str = "teamsbc",
               policy: str = "teamsbc", user: str = "user@contoso.com", number: str = "+14255550100") -> str:
    t = config.teams
    fqdn = config.sbc.fqdn
    domain = fqdn.split(".", 1)[1] if fqdn.count(".") >= 2 else fqdn
    carrier = bool(t.tenants)
    lines = [
        f"# teamsbc teams-setup for {fqdn} (from {config.source})",
        "# Run in PowerShell 7 with the MicrosoftTeams module (Install-Module MicrosoftTeams),",
        "# signed in as a Teams administrator of the tenant.",
        "# Parameter names checked against Microsoft's cmdlet reference (learn.microsoft.com/powershell/",
        "# module/teams): New-CsOnlinePSTNGateway -Fqdn -SipSignalingPort -SendSipOptions",
        "# -MaxConcurrentSessions -Enabled; Set-CsOnlinePstnUsage -Identity -Usage; New-CsOnlineVoiceRoute",
        "# -Identity -NumberPattern -OnlinePstnGatewayList -Priority -OnlinePstnUsages;",
        "# New-CsOnlineVoiceRoutingPolicy -Identity -OnlinePstnUsages; Grant-CsOnlineVoiceRoutingPolicy",
        "# -Identity -PolicyName.",
        "",
    ]
    if carrier:
        lines += [
            "# Carrier (hosting) mode: the base FQDN is never paired itself. Its domain",
            f"# ({fqdn}) must be a verified domain of the CARRIER tenant; each customer tenant adds",
            "# its subdomain (customer.<base FQDN>) as a verified domain, activates it (one licensed",
            "# user in that domain), and runs the block for its FQDN below in ITS tenant.",
            "",
        ]
    else:
        lines += [
            f"# Before: {domain} must be a verified domain of this tenant (Teams admin center >",
            "# Domains), with at least one licensed user in it; otherwise the pairing is refused.",
            "",
        ]
    for gw in gateways(config):
        if carrier:
            lines += [f"# ---- in the tenant of {gw} ----"]
        lines += [
            "Connect-MicrosoftTeams",
            "",
            f"# 1. Pair the SBC: Teams sends calls and OPTIONS to {gw}:{t.signaling_port} (TLS)",
            f"New-CsOnlinePSTNGateway -Fqdn {gw} -SipSignalingPort {t.signaling_port} -SendSipOptions $true "
            f"-MaxConcurrentSessions {max_sessions} -Enabled $true",
            "",
            "# 2. Which calls go to it: a PSTN usage, a voice route (every number) and a policy",
            f"Set-CsOnlinePstnUsage -Identity Global -Usage @{{Add={_ps_string(usage)}}}",
            f"New-CsOnlineVoiceRoute -Identity {route} -NumberPattern \".*\" -OnlinePstnGatewayList {gw} "
            f"-Priority 1 -OnlinePstnUsages {_ps_string(usage)}",
            f"New-CsOnlineVoiceRoutingPolicy -Identity {policy} -OnlinePstnUsages {_ps_string(usage)}",
            "",
            "# 3. Per user (example): a Direct Routing number, and the policy",
            f"Set-CsPhoneNumberAssignment -Identity {user} -PhoneNumber {_ps_string(number)} "
            "-PhoneNumberType DirectRouting",
            "#   (newer MicrosoftTeams versions name these -TelephoneNumber and -NumberType)",
            f"Grant-CsOnlineVoiceRoutingPolicy -Identity {user} -PolicyName {policy}",
            "",
            "# Check: Get-CsOnlinePSTNGateway -Identity " + gw + "; the SBC shows as active once",
            "# Teams answers our OPTIONS and sends its own (teamsbc doctor -c FILE tells both).",
            "",
        ]
    return "\n".join(lines)


def nftables(config: Config, *, media_ports: str = DEFAULT_MEDIA_PORTS,
             pbx_media: tuple[str, ...] | None = None) -> str:
    """An nftables table for this SBC (the shape of deploy/nftables-teamsbc.nft, values filled in)."""
    t, p = config.teams, config.pbx
    cloud = t.cloud
    pbx_hosts = sorted({p.address.host, *(x.pbx.host for x in t.tenants.values() if x.pbx)})
    media_from = pbx_media or tuple(pbx_hosts)
    v4 = lambda hosts: [h for h in hosts if ":" not in h]  # noqa: E731
    teams_addr = t.listen.host
    pub = "" if teams_addr in ("0.0.0.0", "::") else f"ip daddr {teams_addr} "
    priv = f"ip daddr {p.listen.host} " if ":" not in p.listen.host else ""
    proto = "udp" if p.transport == "udp" else "tcp"
    acme = config.acme
    http01 = acme.challenge == "http-01" and (acme.http01_listen or acme.serve_http01)
    http01_port = (acme.http01_listen or acme.serve_http01).port if http01 else None
    lines = [
        f"# nftables for teamsbc {config.sbc.fqdn} (teamsbc teams-setup; template: deploy/nftables-teamsbc.nft)",
        f"# Install: teamsbc teams-setup -c FILE --firewall  (writes {FIREWALL_FILE} and loads it;",
        "# teamsbc-firewall.service loads it at every boot, nftables.service not needed)",
        "# This table only DROPS what must not reach the SBC; it does not open anything. If your main",
        "# input chain drops by default, accept the same ports there too (an accept in one table does",
        "# not override a drop in another).",
        f"# Teams {cloud} ranges (re-check at deployment: Microsoft changes them).",
        f"define TEAMS_SIGNALLING = {{ {', '.join(TEAMS_SIGNALLING[cloud])} }}",
        f"define TEAMS_MEDIA = {{ {', '.join(TEAMS_MEDIA[cloud])} }}",
        f"define PBX_HOSTS = {{ {', '.join(v4(pbx_hosts)) or '127.0.0.1'} }}",
        f"define PBX_MEDIA = {{ {', '.join(v4(media_from)) or '127.0.0.1'} }}   # PBX (and phones, if they send RTP directly)",
        f"define SBC_TLS_PORT = {t.listen.port}",
        f"define SBC_PBX_PORT = {p.listen.port}",
        f"define MEDIA_PORTS = {media_ports}",
        "",
        "table inet teamsbc",
        "delete table inet teamsbc",
        "table inet teamsbc {",
        "    chain input {",
        "        type filter hook input priority filter; policy accept;",
        "        iif lo accept",
        "        # SIP over TLS from Teams only (Teams may use ANY address of its ranges)",
        f"        {pub}tcp dport $SBC_TLS_PORT ip saddr $TEAMS_SIGNALLING accept",
        f"        {pub}tcp dport $SBC_TLS_PORT drop",
        "        # the PBX trunk only",
        f"        {priv}{proto} dport $SBC_PBX_PORT ip saddr $PBX_HOSTS accept",
        f"        {priv}{proto} dport $SBC_PBX_PORT drop",
        "        # media (rtpengine): Teams' media processors on the Teams side, the PBX on its side",
        "        udp dport $MEDIA_PORTS ip saddr $TEAMS_MEDIA accept",
        "        udp dport $MEDIA_PORTS ip saddr $PBX_MEDIA accept",
        "        udp dport $MEDIA_PORTS drop",
        *([f"        # ACME HTTP-01 (acme.challenge): the CA validates from anywhere, port {http01_port} stays open",
           f"        tcp dport {http01_port} accept"] if http01 else []),
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def install_firewall(rules: str, path: Path) -> int:
    """Check the table with `nft -c`, write it to ``path`` (0644, atomically) and load it."""
    import os
    import shutil
    import subprocess
    import tempfile
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not Path(nft).exists():
        print("teamsbc teams-setup --firewall: nft not found (apt-get install nftables)", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".firewall-", suffix=".nft", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(rules)
        os.chmod(tmp, 0o644)
        for argv, what in (([nft, "-c", "-f", tmp], "checking"), ([nft, "-f", tmp], "loading")):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                print(f"teamsbc teams-setup --firewall: {what} the table failed: "
                      f"{(r.stderr or r.stdout).strip()}", file=sys.stderr)
                return 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"firewall: table inet teamsbc loaded and written to {path}; teamsbc-firewall.service "
          f"loads it at boot (systemctl enable teamsbc-firewall; see: nft list table inet teamsbc)")
    _firewall_unit_started(path)
    return 0


def _firewall_unit_started(path: Path) -> None:
    """Installed under a booted systemd, the unit was skipped at install (its file did not
    exist yet: ConditionPathExists): start it now, so `systemctl status teamsbc-firewall`
    says active, as it will after the next boot. It loads the same file again (the table
    deletes itself first) and is a no-op when already active."""
    import shutil
    import subprocess
    if str(path) != FIREWALL_FILE or not Path("/run/systemd/system").is_dir() or not shutil.which("systemctl"):
        return
    r = subprocess.run(["systemctl", "start", "teamsbc-firewall.service"], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        print(f"firewall: systemctl start teamsbc-firewall.service failed ({(r.stderr or r.stdout).strip()}); "
              "the table is loaded now, but nothing loads it at boot until deploy/install.sh installs "
              "that unit", file=sys.stderr)


def cmd_teams_setup(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(args.config)
    except cfg.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    if not re.fullmatch(r"\d{1,5}-\d{1,5}", args.media_ports):
        print(f"teamsbc teams-setup: --media-ports {args.media_ports!r}: expected LOW-HIGH", file=sys.stderr)
        return 2
    if args.firewall:
        return install_firewall(nftables(config, media_ports=args.media_ports,
                                         pbx_media=tuple(args.pbx_media) if args.pbx_media else None),
                                Path(args.firewall_file))
    if not args.firewall_only:
        print(powershell(config, max_sessions=args.max_sessions, usage=args.usage, route=args.route,
                         policy=args.policy, user=args.user, number=args.number))
    if not args.powershell_only:
        print(nftables(config, media_ports=args.media_ports,
                       pbx_media=tuple(args.pbx_media) if args.pbx_media else None))
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add `teamsbc teams-setup` to teamsbc's argparse sub-parsers."""
    p = subparsers.add_parser("teams-setup", help="print the tenant-side PowerShell and the firewall rules",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("-c", "--config", required=True, help="the SBC's YAML config")
    p.add_argument("--max-sessions", type=int, default=100, metavar="N",
                   help="-MaxConcurrentSessions of the gateway (default 100)")
    p.add_argument("--usage", default="teamsbc", help="PSTN usage name (default teamsbc)")
    p.add_argument("--route", default="teamsbc", help="voice route name (default teamsbc)")
    p.add_argument("--policy", default="teamsbc", help="voice routing policy name (default teamsbc)")
    p.add_argument("--user", default="user@contoso.com", help="user in the per-user example")
    p.add_argument("--number", default="+14255550100", help="number in the per-user example")
    p.add_argument("--media-ports", default=DEFAULT_MEDIA_PORTS, metavar="LOW-HIGH",
                   help=f"rtpengine's port range (default {DEFAULT_MEDIA_PORTS}, as deploy/rtpengine.conf)")
    p.add_argument("--pbx-media", action="append", metavar="CIDR",
                   help="where the PBX side's RTP comes from (default: the PBX addresses); repeatable")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--powershell-only", action="store_true", help="only the PowerShell")
    g.add_argument("--firewall-only", action="store_true", help="only the nftables rules")
    g.add_argument("--firewall", action="store_true",
                   help=f"write the nftables table to --firewall-file and load it now (root); "
                        f"teamsbc-firewall.service loads that file at boot")
    p.add_argument("--firewall-file", default=FIREWALL_FILE, metavar="PATH",
                   help=f"where --firewall writes the table (default {FIREWALL_FILE})")
    p.set_defaults(func=cmd_teams_setup)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teamsbc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["teams-setup", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
