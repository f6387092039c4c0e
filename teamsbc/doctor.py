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

Everything runs offline against a lab (teams.trusted_ca, teams.resolve to loopback peers,
--resolve for the SBC FQDN): see tests/test_doctor.py.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import fcntl
import ipaddress
import json
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from . import config as cfg
from .certnames import dns_names, teams_name_problem
from .config import Config, MediaSection
from .tls import TEAMS_CIPHERS, client_context

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
TEST_ENDPOINT = "sip.mspki.pstnhub.microsoft.com"
DEFAULT_ADMIN = "127.0.0.1:8080"
EXPIRY_WARN_DAYS = 30
CHECKS = ("dns", "cert", "tls", "options", "teams-ping", "identity", "media", "clock")

# IANA codes of Teams' four TLS 1.2 suites (reference section 2) and a few others for messages
TEAMS_SUITES = {0xC030: "ECDHE-RSA-AES256-GCM-SHA384", 0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
                0xC028: "ECDHE-RSA-AES256-SHA384", 0xC027: "ECDHE-RSA-AES128-SHA256"}
TLS_SUITES = {**TEAMS_SUITES, 0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
              0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256",
              0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384"}
TLS_ALERTS = {40: "handshake_failure", 47: "illegal_parameter", 70: "protocol_version",
              71: "insufficient_security", 80: "internal_error", 112: "unrecognized_name"}


@dataclass
class ServerHello:
    """What a TLS server's first flight said, read in the clear."""
    version: int | None = None   # ServerHello.legacy_version (0x0303 = TLS 1.2)
    suite: int | None = None
    leaf: bytes | None = None    # DER of the first certificate (TLS 1.2: not encrypted)
    alert: int | None = None
    complete: bool = False       # ServerHelloDone seen, or an alert, or TLS 1.3 (rest encrypted)


def parse_server_flight(buf: bytes) -> ServerHello:
    """Parse TLS records from a server's first flight (RFC 5246 6.2, 7.4)."""
    out = ServerHello()
    hs = b""
    encrypted = False
    i = 0
    while i + 5 <= len(buf):
        rtype, length = buf[i], int.from_bytes(buf[i + 3:i + 5], "big")
        body = buf[i + 5:i + 5 + length]
        if len(body) < length:
            break
        i += 5 + length
        if rtype == 21 and len(body) >= 2:        # alert
            out.alert, out.complete = body[1], True
            return out
        if rtype == 22:
            hs += body
        elif rtype in (20, 23):                    # ChangeCipherSpec / encrypted: TLS 1.3 from here
            encrypted = True
    j = 0
    while j + 4 <= len(hs):
        mtype, mlen = hs[j], int.from_bytes(hs[j + 1:j + 4], "big")
        msg = hs[j + 4:j + 4 + mlen]
        if len(msg) < mlen:
            break
        j += 4 + mlen
        if mtype == 2 and len(msg) >= 38:          # ServerHello
            out.version = int.from_bytes(msg[0:2], "big")
            sid = msg[34]
            out.suite = int.from_bytes(msg[35 + sid:37 + sid], "big")
        elif mtype == 11 and len(msg) >= 6:        # Certificate
            first = int.from_bytes(msg[3:6], "big")
            out.leaf = msg[6:6 + first]
        elif mtype == 14:                          # ServerHelloDone
            out.complete = True
    if encrypted and out.suite is not None:        # TLS 1.3: the rest of the flight is encrypted
        out.complete = True
    return out


@dataclass
class Result:
    status: str     # PASS | WARN | FAIL
    check: str
    finding: str
    fix: str | None = None

    def lines(self) -> list[str]:
        out = [f"{self.status}  {self.check}: {self.finding}"]
        if self.status != PASS and self.fix:
            out.append(f"  fix: {self.fix}")
        return out


@dataclass
class Options:
    resolve: dict[str, str] = field(default_factory=dict)   # --resolve NAME=IP
    public_ips: tuple[str, ...] = ()                         # --public-ip
    test_endpoint: bool = False
    admin_url: str | None = None                             # --admin URL
    admin_token: str | None = None
    samples: tuple[Path, ...] = ()                           # --sample FILE
    timeout: float = 5.0
    skip: tuple[str, ...] = ()


# ============================================================================ helpers
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


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
                    res = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
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


def _uri_host_port(value: str) -> tuple[str, int | None, str]:
    """(host, port, uri text) of a name-addr / addr-spec header value."""
    from .sip.uri import parse_name_addr, parse_uri
    na = parse_name_addr(value)
    u = parse_uri(na.uri)
    return u.host_bare, u.port, na.uri


def _split_values(values: Iterable[str]) -> list[str]:
    from .teams import list_values
    out: list[str] = []
    for v in values:
        out += list_values(v)
    return out


def _admin_settings(config: Config) -> tuple[str, str | None]:
    """admin.listen / admin.token: from the config object once it has an `admin` section,
    else from the YAML file itself (teamsbc.config accepts the key, the admin API reads it)."""
    admin = getattr(config, "admin", None)
    listen, token = None, None
    if admin is not None:
        listen, token = getattr(admin, "listen", None), getattr(admin, "token", None)
    else:
        try:
            data = yaml.safe_load(Path(config.source).read_text()) or {}
            section = data.get("admin") or {}
            if isinstance(section, dict):
                listen, token = section.get("listen"), section.get("token")
                if not token and section.get("token_file"):
                    tf = Path(str(section["token_file"]))
                    tf = tf if tf.is_absolute() else Path(config.source).parent / tf
                    token = tf.read_text().strip()
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    listen = str(listen) if listen else DEFAULT_ADMIN
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    hostpart = f"[{host}]" if ":" in host else host
    return f"http://{hostpart}:{port}", (str(token) if token else None)


# ============================================================================ the doctor
class Doctor:
    def __init__(self, config: Config, options: Options | None = None):
        self.config = config
        self.o = options or Options()

    # ------------------------------------------------------------------ driver
    async def run_async(self) -> list[Result]:
        skip = set(self.o.skip)
        out: list[Result] = []
        if "dns" not in skip:
            out += await asyncio.to_thread(self.check_dns)
        if "cert" not in skip:
            out += self.check_certificate()
        parallel = []
        if "tls" not in skip:
            parallel.append(self.check_tls_listener())
        if "options" not in skip:
            parallel.append(self.check_options())
        if "teams-ping" not in skip:
            parallel.append(self.check_teams_ping())
        if "media" not in skip:
            parallel.append(self.check_media())
        for group in await asyncio.gather(*parallel):
            out += group
        if "identity" not in skip:
            out += self.check_identity()
        if "clock" not in skip:
            out += await asyncio.to_thread(self.check_clock)
        return out

    def run(self) -> list[Result]:
        return asyncio.run(self.run_async())

    # ------------------------------------------------------------------ dns
    def names(self) -> list[str]:
        return [self.config.sbc.fqdn, *self.config.teams.tenants]

    def check_dns(self) -> list[Result]:
        local = local_addresses()
        public = set(self.o.public_ips)
        out = []
        for name in self.names():
            check = f"dns {name}"
            if name in self.o.resolve:
                addrs, how = [self.o.resolve[name]], "from --resolve, DNS not asked"
            else:
                addrs, how, err = self._lookup(name)
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
                                  f"if {shown} is forwarded here (TCP {self.config.teams.signaling_port} and "
                                  f"the media ports), confirm with --public-ip {addrs[0]}"))
            else:
                out.append(Result(FAIL, check, f"{shown} ({how}) is not an address of this host "
                                               f"({', '.join(sorted(a for a in local if ipaddress.ip_address(a).is_global))})",
                                  f"point the A record of {name} at this SBC (or pass --public-ip if it is NAT)"))
        return out

    def _lookup(self, name: str) -> tuple[list[str], str, Result | None]:
        """Public DNS first (what Teams uses), then the system resolver (/etc/hosts)."""
        check = f"dns {name}"
        try:
            import dns.exception
            import dns.resolver
        except ImportError:  # pragma: no cover - dnspython is a dependency
            dns = None
        if dns is not None:
            resolver = dns.resolver.Resolver()
            resolver.lifetime = self.o.timeout
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
            local_only = self._getaddrinfo(name)
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
        addrs = self._getaddrinfo(name)
        if addrs:
            return addrs, "system resolver", None
        return [], "", Result(FAIL, check, "does not resolve", f"publish an A record {name} -> this SBC's public address")

    @staticmethod
    def _getaddrinfo(name: str) -> list[str]:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            return []
        return sorted({i[4][0] for i in infos})

    # ------------------------------------------------------------------ certificate
    def check_certificate(self) -> list[Result]:
        from .certs.gate import GatePolicy, load_roots, run_gate
        t = self.config.teams
        c = "cert"
        try:
            chain_pem, key_pem = t.certificate.read_bytes(), t.private_key.read_bytes()
        except OSError as e:
            return [Result(FAIL, f"{c} files", f"cannot read {e.filename}: {e.strerror}",
                           "check teams.certificate / teams.private_key (teamsbc cert issue creates them)")]
        names = tuple(self.names())
        with warnings.catch_warnings():  # odd entries of a distribution bundle are not our finding
            warnings.simplefilter("ignore")
            sys_roots, sys_label = load_roots(None)
        report = run_gate(chain_pem, key_pem, GatePolicy(names, sys_roots, sys_label))
        by = {k.name: k for k in report.checks}
        if "parse" in by:
            return [Result(FAIL, f"{c} files", by["parse"].detail, "teams.certificate must be PEM: leaf first, then intermediates")]
        out: list[Result] = []

        chain = by["chain"]
        if chain.ok:
            out.append(Result(PASS, f"{c} chain", f"{chain.detail} ({sys_label})"))
        else:
            lab = None
            if t.trusted_ca is not None:
                lab_roots, lab_label = load_roots(t.trusted_ca)
                lab = run_gate(chain_pem, key_pem, GatePolicy(names, lab_roots, lab_label))
            lab_chain = next((k for k in lab.checks if k.name == "chain"), None) if lab else None
            if lab_chain is not None and lab_chain.ok:
                out.append(Result(PASS, f"{c} chain", f"{lab_chain.detail} in teams.trusted_ca "
                                  "(lab: Teams itself trusts only CAs of the Microsoft Trusted Root Program)"))
            else:
                detail = chain.detail + (f"; with teams.trusted_ca: {lab_chain.detail}" if lab_chain else "")
                out.append(Result(FAIL, f"{c} chain", detail,
                                  "serve the full chain (fullchain.pem: leaf + intermediates) from a public CA "
                                  "in the Microsoft Trusted Root Program; Teams answers 504 (5690xx) otherwise"))
        n = by["names"]
        out.append(Result(PASS, f"{c} names", f"{', '.join(names)} covered ({n.detail})") if n.ok else
                   Result(FAIL, f"{c} names", n.detail,
                          f"get a certificate for {', '.join(names)} (a wildcard covers one label): "
                          "teamsbc cert issue -c FILE"))
        k = by["key"]
        out.append(Result(PASS, f"{c} key", k.detail) if k.ok else
                   Result(FAIL, f"{c} key", k.detail, "issue an RSA 2048+ certificate (Teams' suites are ECDHE-RSA)"))
        sa = by["server_auth"]
        out.append(Result(PASS, f"{c} serverAuth", sa.detail) if sa.ok else
                   Result(FAIL, f"{c} serverAuth", sa.detail, "get a TLS server certificate (EKU serverAuth)"))
        ca = by["client_auth"]
        out.append(Result(PASS, f"{c} clientAuth", ca.detail) if "present" in ca.detail else
                   Result(WARN, f"{c} clientAuth", "clientAuth absent from the EKU: the SBC presents this certificate "
                          "as a TLS client to Teams, which required clientAuth from March 2024 (public CAs drop it in 2026)",
                          "if Teams refuses our connections (certificate_unknown), use a CA profile with clientAuth"))
        out.append(self._validity(report.leaf))
        km = next((x for x in report.checks if x.name == "key_match"), None)
        if km is not None:
            out.append(Result(PASS, f"{c} key match", km.detail) if km.ok else
                       Result(FAIL, f"{c} key match", km.detail,
                              "teams.private_key must be the key of teams.certificate (both from the same issuance)"))
        return out

    def _validity(self, leaf) -> Result:
        now = dt.datetime.now(dt.timezone.utc)
        nb, na = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        check = "cert validity"
        if now < nb:
            return Result(FAIL, check, f"not valid before {nb:%Y-%m-%d %H:%M:%S} UTC",
                          "check this host's clock (see the clock check), or wait")
        if now >= na:
            return Result(FAIL, check, f"expired at {na:%Y-%m-%d %H:%M:%S} UTC",
                          "renew it now (teamsbc cert renew -c FILE), then systemctl reload teamsbc")
        left = (na - now).total_seconds() / 86400
        if left < EXPIRY_WARN_DAYS:
            return Result(WARN, check, f"{left:.1f} days left (until {na:%Y-%m-%d})",
                          "renew it (teamsbc cert renew -c FILE; is teamsbc-renew.timer enabled?)")
        return Result(PASS, check, f"{left:.0f} days left (until {na:%Y-%m-%d})")

    # ------------------------------------------------------------------ tls listener
    async def check_tls_listener(self) -> list[Result]:
        """Offer what Teams offers (TLS 1.2, its four ECDHE-RSA suites) and read the listener's
        first flight (ServerHello, Certificate) in the clear: a TLS 1.2 server sends it before it
        looks at the client certificate, which the doctor could not provide (the listener wants
        Teams'). An asyncio server that refuses the version or suites just closes the connection,
        like a listener that drops sources outside Teams' ranges: a second offer with default
        settings tells the two apart."""
        t = self.config.teams
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(t.listen.host, t.listen.host)
        check = "tls listener"
        where = f"{host}:{t.listen.port}"
        fix = ("the SBC needs an RSA certificate and TLS 1.2 (Teams offers only ECDHE-RSA-AES256-GCM-SHA384, "
               "-AES128-GCM-SHA256, -AES256-SHA384, -AES128-SHA256)")
        try:
            hello = await self._server_hello(host, t.listen.port, teams_only=True)
        except ConnectionRefusedError:
            return [Result(FAIL, check, f"nothing listens on {where}",
                           "start the SBC (systemctl start teamsbc; journalctl -u teamsbc)")]
        except asyncio.TimeoutError:
            return [Result(FAIL, check, f"no answer to a TLS ClientHello from {where} within {self.o.timeout:g}s",
                           "is teamsbc running and teams.listen right? (systemctl status teamsbc)")]
        except OSError as e:
            return [Result(FAIL, check, f"cannot connect to {where}: {e.strerror or e}", "start the SBC")]
        if hello.suite is not None:
            name = TLS_SUITES.get(hello.suite, f"0x{hello.suite:04X}")
            if hello.version != 0x0303 or hello.suite not in TEAMS_SUITES:
                return [Result(FAIL, check, f"{where} chose {name} (version 0x{hello.version:04X}), "
                                            "not one of Teams' suites", fix)]
            out = [Result(PASS, check, f"{where} speaks TLS 1.2 with {name}")]
            try:
                from cryptography import x509
                from cryptography.hazmat.primitives.serialization import Encoding
                leaf = x509.load_pem_x509_certificates(t.certificate.read_bytes())[0]
                if hello.leaf is not None and leaf.public_bytes(Encoding.DER) != hello.leaf:
                    out.append(Result(WARN, "tls certificate", "the listener serves another certificate than "
                                      f"{t.certificate} (a renewal not loaded yet?)",
                                      "systemctl reload teamsbc (SIGHUP reloads the certificate)"))
            except (OSError, ValueError, IndexError):
                pass
            return out
        if hello.alert is not None:
            return [Result(FAIL, check, f"{where} refused TLS 1.2 with Teams' ECDHE-RSA suites "
                                        f"(alert {TLS_ALERTS.get(hello.alert, hello.alert)})", fix)]
        try:
            control = await self._server_hello(host, t.listen.port, teams_only=False)
        except (OSError, asyncio.TimeoutError):
            control = None
        if control is not None and control.suite is not None:
            return [Result(FAIL, check, f"{where} closed the connection on TLS 1.2 with Teams' suites; with "
                                        f"default settings it chooses {TLS_SUITES.get(control.suite, hex(control.suite))}",
                           fix)]
        return [Result(WARN, check, f"cannot tell: {where} closed the connection without answering a "
                                    "ClientHello, with Teams' settings and with default ones: the SBC admits only "
                                    "Teams' addresses (security.teams_ranges) on its TLS port",
                       "see the SBC log (outside_teams_ranges); the options and teams-ping checks still tell")]

    async def _server_hello(self, host: str, port: int, teams_only: bool) -> "ServerHello":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if teams_only:
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(TEAMS_CIPHERS)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname=self.config.sbc.fqdn)
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        client_hello = outgoing.read()
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.o.timeout)
        hello = ServerHello()
        try:
            writer.write(client_hello)
            buf = b""
            deadline = time.monotonic() + self.o.timeout
            while not hello.complete:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise asyncio.TimeoutError
                try:
                    data = await asyncio.wait_for(reader.read(65536), left)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                buf += data
                hello = parse_server_flight(buf)
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (asyncio.TimeoutError, OSError):
                pass
        return hello

    # ------------------------------------------------------------------ OPTIONS to Teams
    async def check_options(self) -> list[Result]:
        targets = list(self.config.teams.proxies)
        if self.o.test_endpoint and TEST_ENDPOINT not in targets:
            targets.append(TEST_ENDPOINT)
        return list(await asyncio.gather(*(self._options(p) for p in targets)))

    async def _options(self, peer: str) -> Result:
        from .routing import Router
        from .sip.message import KEEPALIVE_PING, StreamFramer, parse_message
        t = self.config.teams
        check = f"options {peer}"
        req, dest = Router(self.config).options_request(peer)
        addr = t.resolve.get(peer)
        where = f"{addr} (teams.resolve)" if addr else f"{peer}:{dest.port}"
        try:
            ctx = client_context(t.certificate, t.private_key, t.trusted_ca)
        except Exception as e:  # TlsConfigError: reported by the cert checks too
            return Result(FAIL, check, f"cannot build the TLS client: {e}", "fix the certificate (see cert checks)")
        started = time.monotonic()
        host, port = (addr.host, addr.port) if addr else (peer, dest.port)
        firewall = ("allow outbound TCP 5061 to 52.112.0.0/14 and 52.120.0.0/14 (52.122.0.0/15), "
                    "and check DNS for the Teams FQDNs")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=peer), self.o.timeout)
        except ssl.SSLCertVerificationError as e:
            return Result(FAIL, check, f"{where}: Teams' certificate is not trusted: {e.verify_message}",
                          "teams.trusted_ca must hold Teams' roots (null = the bundled Microsoft roots)")
        except ssl.SSLError as e:
            return Result(FAIL, check, f"{where} refused our TLS handshake: {e.reason or e}",
                          "Teams refuses an untrusted, expired or incomplete SBC certificate chain and one "
                          "without the SBC FQDN (see the cert checks)")
        except asyncio.TimeoutError:
            return Result(FAIL, check, f"{where}: no connection within {self.o.timeout:g}s", firewall)
        except ConnectionRefusedError:
            return Result(FAIL, check, f"{where}: connection refused", firewall)
        except OSError as e:
            return Result(FAIL, check, f"{where}: cannot connect: {e.strerror or e}", firewall)
        try:
            cert = writer.get_extra_info("peercert") or {}
            names = dns_names(cert)
            if peer != TEST_ENDPOINT and teams_name_problem(names, t.require_san):
                return Result(FAIL, check, f"{where}: certificate names {names} lack {' or '.join(t.require_san)}: "
                                           "the SBC refuses this peer", "check teams.require_san / teams.cloud")
            writer.write(req.to_bytes())
            framer = StreamFramer()
            deadline = started + self.o.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return Result(FAIL, check, f"{where}: OPTIONS not answered within {self.o.timeout:g}s",
                                  "Teams does not answer an SBC it does not know: pair the FQDN "
                                  "(teamsbc teams-setup), and check our Contact FQDN (identity check)")
                data = await asyncio.wait_for(reader.read(65536), left)
                if not data:
                    return Result(FAIL, check, f"{where} closed the connection without answering OPTIONS",
                                  "Teams closes on an unknown SBC FQDN or a certificate it does not accept")
                for frame in framer.feed(data):
                    if frame is KEEPALIVE_PING:
                        continue
                    resp = parse_message(frame)  # type: ignore[arg-type]
                    if getattr(resp, "status", None) is None or resp.call_id != req.call_id or resp.status < 200:
                        continue
                    rtt = (time.monotonic() - started) * 1000
                    if resp.status == 200:
                        return Result(PASS, check, f"{where}: 200 OK in {rtt:.0f} ms over mutual TLS "
                                                   f"(peer {names[0] if names else '?'})")
                    hint = {403: "Teams does not know this SBC: pair sbc.fqdn (teamsbc teams-setup) and make "
                                 "sure its domain is verified in the tenant",
                            503: "Teams is busy or the SBC is not enabled (-Enabled $true)"}.get(
                        resp.status, "see docs/troubleshooting.md")
                    return Result(FAIL, check, f"{where} answered {resp.status} {resp.reason}", hint)
        except asyncio.TimeoutError:
            return Result(FAIL, check, f"{where}: OPTIONS not answered within {self.o.timeout:g}s",
                          "Teams does not answer an SBC it does not know: pair the FQDN (teamsbc teams-setup)")
        except (OSError, ssl.SSLError) as e:
            return Result(FAIL, check, f"{where}: connection failed during OPTIONS: {e}", firewall)
        except Exception as e:  # a reply that does not parse
            return Result(FAIL, check, f"{where}: unreadable answer: {e}", "see docs/troubleshooting.md")
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (asyncio.TimeoutError, ssl.SSLError, OSError):
                pass

    # ------------------------------------------------------------------ Teams' OPTIONS
    async def check_teams_ping(self) -> list[Result]:
        check = "teams-ping"
        url, token = _admin_settings(self.config)
        url = (self.o.admin_url or url).rstrip("/")
        token = self.o.admin_token or token
        import aiohttp
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=min(self.o.timeout, 3))) as s:
                async with s.get(f"{url}/peers", headers=headers) as r:
                    if r.status != 200:
                        return [Result(WARN, check, f"cannot tell: {url}/peers answered HTTP {r.status}",
                                       "set admin.token in the config (or --admin-token)")]
                    data = await r.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            return [Result(WARN, check, f"cannot tell: SBC admin API not reachable ({url}: {type(e).__name__})",
                           "start the SBC, or set admin.listen / --admin URL")]
        age, never = self.teams_ping_age(data)
        alarm = self.config.teams.options_alarm
        why = ("Teams pings only an SBC it knows and can reach: check that the FQDN is paired "
               "(teamsbc teams-setup), TCP 5061 is open from 52.112.0.0/14 + 52.120.0.0/14, our Contact "
               "carries the FQDN, and the certificate is trusted")
        if never:
            return [Result(FAIL, check, "no OPTIONS from Teams since the SBC started", why)]
        if age is None:
            return [Result(WARN, check, "cannot tell: /peers has no teams_options_last", "update teamsbc")]
        if age > alarm:
            return [Result(FAIL, check, f"last OPTIONS from Teams {age:.0f} s ago (teams.options_alarm {alarm:g} s): "
                                        "Teams demotes this trunk", why)]
        return [Result(PASS, check, f"last OPTIONS from Teams {age:.0f} s ago")]

    @staticmethod
    def teams_ping_age(data: Any) -> tuple[float | None, bool]:
        """(seconds since Teams' last OPTIONS, never seen) from a /peers answer. Accepted shapes:
        a dict with `teams_options_age` (seconds) or `teams_options_last` (epoch seconds, or the
        SBC's monotonic clock, optionally with `now` on the same clock), at the top or under any
        key; a list of snapshots, one of which carries those keys."""
        found: list[dict] = []

        def walk(v: Any) -> None:
            if isinstance(v, dict):
                if "teams_options_age" in v or "teams_options_last" in v:
                    found.append(v)
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
        walk(data)
        if not found:
            return None, False
        d = found[0]
        age = d.get("teams_options_age")
        if isinstance(age, (int, float)):
            return float(age), False
        last = d.get("teams_options_last")
        if last is None:
            return None, "teams_options_last" in d
        if not isinstance(last, (int, float)):
            try:
                last = dt.datetime.fromisoformat(str(last)).timestamp()
            except ValueError:
                return None, False
        now = d.get("now")
        if isinstance(now, (int, float)):
            return max(0.0, float(now) - float(last)), False
        if last > 1e9:
            return max(0.0, time.time() - float(last)), False
        # the SBC's loop clock is time.monotonic(): the same clock for every process on this host
        return max(0.0, time.monotonic() - float(last)), False

    # ------------------------------------------------------------------ identity
    def check_identity(self) -> list[Result]:
        check = "identity"
        try:
            samples = sample_messages(self.config)
        except Exception as e:  # the core refused or broke on a plain call: that is a finding
            return [Result(FAIL, check, f"cannot build sample messages with this config: {e}",
                           "teamsbc check -c FILE; report a bug if the config is valid")]
        for path in self.o.samples:
            try:
                samples += [(f"{path.name} #{i + 1}", m) for i, m in enumerate(load_sample_file(path))]
            except (OSError, ValueError) as e:
                return [Result(FAIL, check, f"cannot read sample {path}: {e}", "give a file with SIP messages")]
        names = {self.config.sbc.fqdn, *self.config.teams.tenants}
        problems = []
        for label, msg in samples:
            problems += [f"{label}: {p}" for p in identity_problems(msg, names, self.config.teams.signaling_port,
                                                                    self.config)]
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            return [Result(FAIL, check, problems[0] + more,
                           "Teams answers 403 to an IP (or an unknown FQDN) in Contact and needs the same FQDN "
                           "in the top Record-Route: every Contact/Record-Route/Via toward Teams must carry "
                           "sbc.fqdn (or the tenant FQDN) and teams.signaling_port")] + \
                   [Result(FAIL, check, p) for p in problems[1:]]
        kinds = ", ".join(sorted({label.split(" [")[0] for label, _ in samples}))
        return [Result(PASS, check, f"{len(samples)} messages toward Teams ({kinds}) carry only "
                                    f"{'/'.join(sorted(names))}:{self.config.teams.signaling_port} in "
                                    "Contact, Record-Route and Via")]

    # ------------------------------------------------------------------ media
    async def check_media(self) -> list[Result]:
        check = "media"
        addrs = self.config.media.rtpengine
        if not addrs:
            return [Result(WARN, check, "no media.rtpengine: SDP passes unchanged, so Teams gets the PBX's "
                                        "plain RTP and answers 488 unless the PBX itself offers SRTP (SDES) "
                                        "with rtcp-mux",
                           "install rtpengine (install.sh --with-rtpengine) and set media.rtpengine: "
                           "[udp:127.0.0.1:22222]")]
        from .media.ng import NgClient, NgException
        out = []
        for spec in addrs:
            addr = spec.split(";", 1)[0]
            client = NgClient(addr, timeout=min(self.o.timeout, 2.0))
            try:
                rtt = await client.ping()
                out.append(Result(PASS, f"{check} {addr}", f"rtpengine answers NG ping in {rtt * 1000:.1f} ms"))
            except (NgException, OSError, ValueError) as e:
                out.append(Result(FAIL, f"{check} {addr}", f"rtpengine does not answer: {e}",
                                  "systemctl status rtpengine-daemon (listen-ng must match media.rtpengine)"))
            finally:
                await client.close()
        if len(out) > 1 and any(r.status == PASS for r in out):
            for r in out:
                if r.status == FAIL:
                    r.status = WARN  # others carry the calls
        return out

    # ------------------------------------------------------------------ clock
    def check_clock(self) -> list[Result]:
        check = "clock"
        fix = "enable NTP: timedatectl set-ntp true (or apt-get install chrony)"

        def run(argv: list[str]) -> str | None:
            if not shutil.which(argv[0]):
                return None
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            except (OSError, subprocess.SubprocessError):
                return None
            return r.stdout if r.returncode == 0 else None

        out = run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
        if out is not None and out.strip() in ("yes", "no"):
            if out.strip() == "yes":
                return [Result(PASS, check, "NTP synchronized (timedatectl)")]
            return [Result(WARN, check, "not NTP synchronized (timedatectl): certificate validity and "
                                        "Teams' TLS need a correct clock", fix)]
        out = run(["chronyc", "-n", "tracking"])
        if out is not None:
            m = re.search(r"System time\s*:\s*([0-9.]+) seconds", out)
            offset = float(m.group(1)) if m else None
            if offset is not None and offset > 60:
                return [Result(FAIL, check, f"clock {offset:.0f} s off NTP time (chronyc)", "chronyc makestep")]
            if re.search(r"Leap status\s*:\s*Normal", out):
                return [Result(PASS, check, "NTP synchronized (chronyc)" +
                               (f", offset {offset * 1000:.1f} ms" if offset is not None else ""))]
            return [Result(WARN, check, "chrony is not synchronised", "check chronyc sources")]
        out = run(["ntpq", "-pn"])
        if out is not None:
            if any(line.startswith("*") for line in out.splitlines()):
                return [Result(PASS, check, "NTP synchronized (ntpq: a selected peer)")]
            return [Result(WARN, check, "ntpd has no selected peer", "check ntpq -p")]
        return [Result(WARN, check, "cannot tell: no timedatectl (with systemd), chronyc or ntpq answered", fix)]


# ============================================================================ sample messages
def sample_messages(config: Config) -> list[tuple[str, Any]]:
    """What the SBC's own code sends toward Teams with this config, as (label, message):
    our OPTIONS, our answer to Teams' OPTIONS, a relayed INVITE (PBX -> Teams) and a relayed
    200 OK (Teams -> PBX call), for the base FQDN and every tenant. Media is left out
    (signalling only), so no rtpengine is needed."""
    from .app import build
    from .proxy import PBX, TEAMS, Destination, Source
    from .routing import Router
    from .sip.message import Request, Response, parse_message

    conf = dataclasses.replace(config, media=MediaSection())
    router = Router(conf)
    out: list[tuple[str, Any]] = []
    if conf.teams.proxies:
        out.append(("OPTIONS [ours]", router.options_request(conf.teams.proxies[0])[0]))
    teams_src = Source(TEAMS, "tls", ("52.114.14.70", 41234), conn=object(), peer_name=conf.teams.proxies[0]
                       if conf.teams.proxies else None)
    port = conf.teams.signaling_port
    sdp = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
           b"m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")

    def teams_request(method: str, ruri: str, body: bytes = b"", extra: str = "") -> bytes:
        head = (f"{method} {ruri} SIP/2.0\r\n"
                f"VIA: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bK{method.lower()}{len(out)}\r\n"
                f"MAX-FORWARDS: 70\r\n"
                f"FROM: <sip:+12065550123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=teams{len(out)}\r\n"
                f"TO: <{ruri.split(';')[0]}>\r\nCALL-ID: doctor-{method.lower()}-{len(out)}\r\n"
                f"CSEQ: 1 {method}\r\n{extra}")
        if body:
            head += "CONTENT-TYPE: application/sdp\r\n"
        return f"{head}CONTENT-LENGTH: {len(body)}\r\n\r\n".encode() + body

    # our answer to Teams' OPTIONS
    proxy = build(conf)[1]
    sends = proxy.receive(teams_request("OPTIONS", f"sip:{conf.sbc.fqdn}:{port}",
                                        extra="CONTACT: <sip:sip.pstnhub.microsoft.com:5061;transport=tls>\r\n"),
                          teams_src, 0.0)
    answers = [parse_message(s.data) for s in sends if s.to == teams_src]
    answers = [m for m in answers if isinstance(m, Response) and m.status >= 200]
    if not answers:
        raise ValueError("no answer to Teams' OPTIONS")
    out.append(("answer to Teams' OPTIONS [ours]", answers[0]))

    tenants = conf.teams.tenants
    identities: list[tuple[str, Any]] = [(conf.sbc.fqdn, None), *tenants.items()]
    prefixes = [p for t in tenants.values() for p in t.numbers]
    for name, tenant in identities:
        # PBX -> Teams: a new call from the PBX trunk of that identity
        trunk = tenant.pbx if tenant is not None and tenant.pbx else conf.pbx.address
        if tenant is not None and not tenant.pbx:
            caller = tenant.numbers[0] + "0" * max(0, 11 - len(tenant.numbers[0]))
        else:
            caller = next(c for c in ("+19995550100", "+29995550100", "+89995550100")
                          if not any(c.startswith(p) for p in prefixes))
        pbx_src = Source(PBX, conf.pbx.transport, (trunk.host, trunk.port))
        me = conf.pbx.listen
        invite = (f"INVITE sip:+442079460123@{me} SIP/2.0\r\n"
                  f"Via: SIP/2.0/{conf.pbx.transport.upper()} {trunk};branch=z9hG4bKdoc{len(out)}\r\n"
                  f"Max-Forwards: 70\r\nFrom: <sip:{caller}@{trunk.host}>;tag=pbx{len(out)}\r\n"
                  f"To: <sip:+442079460123@{me}>\r\nCall-ID: doctor-pbx-{len(out)}@{trunk.host}\r\n"
                  f"CSeq: 1 INVITE\r\nContact: <sip:1000@{trunk}>\r\n"
                  f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n").encode() + sdp
        proxy = build(conf)[1]
        sends = proxy.receive(invite, pbx_src, 0.0)
        fwd = [s for s in sends if isinstance(s.to, Destination) and s.to.leg == TEAMS]
        if not fwd:
            refused = [parse_message(s.data) for s in sends]
            raise ValueError(f"a PBX INVITE for {name} was not relayed to Teams: "
                             f"{', '.join(f'{m.status} {m.reason}' for m in refused if isinstance(m, Response))}")
        out.append((f"relayed INVITE [{name}]", parse_message(fwd[0].data)))

        # Teams -> PBX: a new call to that identity; the PBX answers 200 with its own Contact
        proxy = build(conf)[1]
        ruri = f"sip:+442079460123@{name}:{port};user=phone;transport=tls"
        sends = proxy.receive(teams_request(
            "INVITE", ruri, sdp, "RECORD-ROUTE: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
                                 "CONTACT: <sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=0a1b>\r\n"),
            teams_src, 0.0)
        to_pbx = [s for s in sends if isinstance(s.to, Destination) and s.to.leg == PBX]
        if not to_pbx:
            refused = [parse_message(s.data) for s in sends]
            raise ValueError(f"an INVITE from Teams to {name} was not relayed to the PBX: "
                             f"{', '.join(f'{m.status} {m.reason}' for m in refused if isinstance(m, Response))}")
        req = parse_message(to_pbx[0].data)
        assert isinstance(req, Request)
        dest = to_pbx[0].to
        lines = ["SIP/2.0 200 OK"] + [f"Via: {v}" for v in req.headers.get_all("via")]
        lines += [f"Record-Route: {r}" for r in req.headers.get_all("record-route")]
        lines += [f"From: {req.headers.get('from')}", f"To: {req.headers.get('to')};tag=pbx200",
                  f"Call-ID: {req.call_id}", f"CSeq: {req.headers.get('cseq')}",
                  f"Contact: <sip:+442079460123@{dest.host}:{dest.port}>",
                  "Content-Type: application/sdp", f"Content-Length: {len(sdp)}", "", ""]
        sends = proxy.receive("\r\n".join(lines).encode() + sdp,
                              Source(PBX, conf.pbx.transport, (dest.host, dest.port)), 0.1)
        ok = [parse_message(s.data) for s in sends if s.to == teams_src]
        ok = [m for m in ok if isinstance(m, Response) and m.status == 200]
        if not ok:
            raise ValueError(f"the PBX's 200 OK for a call to {name} was not relayed to Teams")
        out.append((f"relayed 200 OK [{name}]", ok[0]))
    return out


def load_sample_file(path: Path) -> list[Any]:
    """SIP messages from a file (one, or several framed by Content-Length), as sent to Teams."""
    from .sip.message import KEEPALIVE_PING, StreamFramer, parse_message
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").strip() + b"\r\n"
    if b"\r\n\r\n" not in raw:
        raw += b"\r\n"
    frames: list[bytes] = []
    if re.search(rb"(?im)^(content-length|l)\s*:", raw):
        try:
            frames = [f for f in StreamFramer().feed(raw) if f is not KEEPALIVE_PING]  # type: ignore[misc]
        except Exception:
            frames = []
    if not frames:
        frames = [raw]
    msgs = []
    for f in frames:
        try:
            msgs.append(parse_message(f))
        except Exception as e:
            raise ValueError(f"not a SIP message: {e}") from None
    if not msgs:
        raise ValueError("no SIP message found")
    return msgs


def identity_problems(msg: Any, names: set[str], port: int, config: Config | None = None) -> list[str]:
    """Why Teams would refuse or misroute this message (sent by the SBC toward Teams)."""
    from .sip.message import Request
    from .teams import TeamsIdentity
    teams_hosts = TeamsIdentity(config) if config is not None else None

    def is_teams(host: str) -> bool:
        if teams_hosts is not None:
            return teams_hosts.is_teams_host(host)
        return host.endswith(".pstnhub.microsoft.com")

    problems: list[str] = []
    is_req = isinstance(msg, Request)
    contacts = _split_values(msg.headers.get_all("contact"))
    contact_host = None
    needs_contact = is_req and msg.method in ("INVITE", "OPTIONS") or \
        (not is_req and 200 <= msg.status < 300 and msg.cseq.method in ("INVITE", "OPTIONS"))
    if not contacts and needs_contact:
        problems.append("no Contact (Teams refuses it: \"Record-Route and Contact headers are missing\")")
    for c in contacts:
        try:
            host, cport, uri = _uri_host_port(c)
        except Exception:
            problems.append(f"Contact {c!r} does not parse")
            continue
        if _is_ip(host):
            problems.append(f"Contact <{uri}> carries an IP address (Teams answers 403)")
        elif host not in names:
            problems.append(f"Contact <{uri}>: {host} is neither sbc.fqdn nor a tenant FQDN (Teams finds the trunk by it: 403)")
        elif cport is not None and cport != port:
            problems.append(f"Contact <{uri}>: port {cport} is not teams.signaling_port {port}")
        contact_host = contact_host or host
    rrs = _split_values(msg.headers.get_all("record-route"))
    ordered = rrs if is_req else list(reversed(rrs))  # from Teams' side inward
    for r in ordered:
        try:
            host, rport, uri = _uri_host_port(r)
        except Exception:
            problems.append(f"Record-Route {r!r} does not parse")
            break
        if is_teams(host):
            continue  # Teams' own entry (its edge proxy)
        if _is_ip(host):
            problems.append(f"Record-Route <{uri}> (the hop Teams routes to) carries an IP address")
        elif contact_host and host != contact_host:
            problems.append(f"Record-Route host {host} differs from the Contact host {contact_host} (Teams: they must match)")
        elif rport is not None and rport != port:
            problems.append(f"Record-Route <{uri}>: port {rport} is not teams.signaling_port {port}")
        break
    if is_req:
        try:
            via = msg.top_via
            if _is_ip(via.host.strip("[]")):
                problems.append(f"top Via sent-by {via.host} is an IP address")
        except Exception:
            problems.append("no parsable Via")
    return problems


# ============================================================================ command line
def _parse_resolve(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, ip = v.partition("=")
        if not sep or not _is_ip(ip):
            raise argparse.ArgumentTypeError(f"--resolve {v!r}: expected NAME=IP")
        out[name.lower().rstrip(".")] = str(ipaddress.ip_address(ip))
    return out


def print_results(results: list[Result], stream=None) -> None:
    stream = stream or sys.stdout
    for r in results:
        for line in r.lines():
            print(line, file=stream)
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, WARN, FAIL)}
    print(f"\n{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed", file=stream)


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
                   skip=tuple(args.skip or ()))
    print(f"teamsbc doctor: {config.source} (sbc {config.sbc.fqdn}, cloud {config.teams.cloud})\n")
    results = Doctor(config, opts).run()
    print_results(results)
    return min(sum(1 for r in results if r.status == FAIL), 125)


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
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per network check (default 5)")
    p.add_argument("--skip", action="append", choices=CHECKS, help="leave a check out; repeatable")
    p.set_defaults(func=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="teamsbc")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
