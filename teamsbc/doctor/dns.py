"""Check `dns`: sbc.fqdn and every tenant FQDN resolve, in public DNS (what Teams uses), to an
address of this host. Teams connects to the name it finds in our Contact (Microsoft: the SBC
FQDN needs a public A record). `--public-ip` accepts a 1:1 NAT address, `--resolve NAME=IP`
replaces DNS (labs, split DNS).
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import dns.exception
import dns.resolver

from ..config import Config
from .report import FAIL, PASS, WARN, Result

SIOCGIFADDR = 0x8915


def names(config: Config) -> list[str]:
    """The names Teams must find: the base FQDN and each tenant FQDN."""
    return [config.sbc.fqdn, *config.teams.tenants]


def local_addresses() -> set[str]:
    """Addresses of this host's interfaces: `ip -j addr` when present, else ioctl (IPv4,
    one per interface) and /proc/net/if_inet6 (IPv6)."""
    out: set[str] = {"127.0.0.1", "::1"}
    ip = shutil.which("ip")
    if ip:
        try:
            r = subprocess.run([ip, "-j", "addr", "show"], capture_output=True, text=True, timeout=5)
            for iface in json.loads(r.stdout or "[]"):
                for a in iface.get("addr_info", []):
                    if a.get("local"):
                        out.add(str(ipaddress.ip_address(a["local"].split("%")[0])))
            return out
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                    out.add(socket.inet_ntoa(res[20:24]))
                except OSError:
                    continue
    except OSError:
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            out.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except (OSError, ValueError, IndexError):
        pass
    return out


def _is_local(addr: str, local: set[str]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_loopback or str(ip) in local


def check(config: Config, resolve: dict[str, str], public_ips: tuple[str, ...],
          timeout: float) -> list[Result]:
    local = local_addresses()
    public = set(public_ips)
    out = []
    for name in names(config):
        check = f"dns {name}"
        if name in resolve:
            addrs, how = [resolve[name]], "from --resolve, DNS not asked"
        else:
            addrs, how, err = _lookup(name, timeout)
            if err is not None:
                out.append(err)
                continue
        hits = [a for a in addrs if _is_local(a, local) or a in public]
        shown = ", ".join(addrs)
        if hits:
            where = "an address of this host" if any(_is_local(a, local) for a in hits) else "--public-ip"
            out.append(Result(PASS, check, f"{shown} ({how}; {hits[0]} is {where})"))
            continue
        if any(not ipaddress.ip_address(a).is_global for a in addrs):
            out.append(Result(FAIL, check, f"{shown} ({how}): a private address Teams cannot reach",
                              f"publish {name} in public DNS as an A record for this SBC's public address"))
        elif not any(ipaddress.ip_address(a).is_global for a in local):
            out.append(Result(WARN, check, f"{shown} ({how}) is not on this host, which has only "
                                           "private addresses (1:1 NAT?)",
                              f"if {shown} is forwarded here (TCP {config.teams.signaling_port} and "
                              f"the media ports), confirm with --public-ip {addrs[0]}"))
        else:
            out.append(Result(FAIL, check, f"{shown} ({how}) is not an address of this host "
                                           f"({', '.join(sorted(a for a in local if ipaddress.ip_address(a).is_global))})",
                              f"point the A record of {name} at this SBC (or pass --public-ip if it is NAT)"))
    return out


def _lookup(name: str, timeout: float) -> tuple[list[str], str, Result | None]:
    """Public DNS first (what Teams uses), then the system resolver (/etc/hosts)."""
    check = f"dns {name}"
    resolver = dns.resolver.Resolver()
    resolver.lifetime = timeout
    addrs: list[str] = []
    nx = False
    unreachable = None
    for rtype in ("A", "AAAA"):
        try:
            addrs += [r.to_text() for r in resolver.resolve(name, rtype)]
        except dns.resolver.NXDOMAIN:
            nx = True
        except dns.resolver.NoAnswer:
            pass
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
            unreachable = e
    if addrs:
        return addrs, "DNS", None
    local_only = _getaddrinfo(name)
    if local_only:
        return [], "", Result(FAIL, check, f"resolves only through the local resolver "
                                           f"(/etc/hosts?) to {', '.join(local_only)}, not in DNS: "
                                           "Teams uses public DNS",
                              f"publish an A record {name} -> this SBC's public address")
    if unreachable is not None and not nx:
        return [], "", Result(WARN, check, f"cannot tell: DNS not reachable ({type(unreachable).__name__})",
                              f"check /etc/resolv.conf, or pass --resolve {name}=IP")
    return [], "", Result(FAIL, check, "does not resolve (NXDOMAIN)" if nx else "no A/AAAA record",
                          f"publish an A record {name} -> this SBC's public address (Teams connects to it)")


def _getaddrinfo(name: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({i[4][0] for i in infos})
