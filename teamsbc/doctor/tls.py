"""Check `tls`: the Teams listener answers a ClientHello like Teams' (TLS 1.2, its four
ECDHE-RSA suites, reference section 2) with one of them, and serves the certificate file
(a reload is pending if not).

An asyncio server that refuses the version or suites just closes the connection, like a
listener that drops sources outside Teams' ranges: a second offer with default settings tells
the two apart.
"""
from __future__ import annotations

import asyncio

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..addresses import HostPort
from ..config import Config
from .report import FAIL, PASS, WARN, Result
from .tlsprobe import TEAMS_SUITES, TLS_ALERTS, TLS_SUITES, server_hello

# a listener on every address is asked on loopback
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


async def check(config: Config, timeout: float) -> list[Result]:
    t = config.teams
    host = _WILDCARD_TO_LOOPBACK.get(t.listen.host, t.listen.host)
    check = "tls listener"
    where = str(HostPort(host, t.listen.port))
    fix = ("the SBC needs an RSA certificate and TLS 1.2 (Teams offers only ECDHE-RSA-AES256-GCM-SHA384, "
           "-AES128-GCM-SHA256, -AES256-SHA384, -AES128-SHA256)")
    try:
        hello = await server_hello(host, t.listen.port, config.sbc.fqdn, teams_only=True, timeout=timeout)
    except ConnectionRefusedError:
        return [Result(FAIL, check, f"nothing listens on {where}",
                       "start the SBC (systemctl start teamsbc; journalctl -u teamsbc)")]
    except asyncio.TimeoutError:
        return [Result(FAIL, check, f"no answer to a TLS ClientHello from {where} within {timeout:g}s",
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
        control = await server_hello(host, t.listen.port, config.sbc.fqdn, teams_only=False, timeout=timeout)
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
