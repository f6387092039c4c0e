"""Check `options`: OPTIONS to each teams.proxies entry (and Microsoft's test endpoint with
--test-endpoint) over mutual TLS, answered 200. Teams answers only an SBC it knows (paired
FQDN, trusted certificate, FQDN in Contact: reference section 9), so a 200 here is the pairing
working end to end. teams.resolve is honoured, like the SBC does.

The OPTIONS is the SBC's own (routing builds it), sent as the SBC sends it; the answer is framed
and parsed with teamsbc.sip, and Teams' certificate judged by the SBC's own rule (certnames).
"""
from __future__ import annotations

import asyncio
import ssl
import time

from ..addresses import HostPort
from ..certnames import dns_names, teams_name_problem
from ..config import Config
from ..routing import Router
from ..sip.message import KEEPALIVE_PING, Response, StreamFramer, parse_message
from ..tls import client_context
from .report import FAIL, PASS, Result

TEST_ENDPOINT = "sip.mspki.pstnhub.microsoft.com"


async def check(config: Config, timeout: float, test_endpoint: bool = False) -> list[Result]:
    targets = list(config.teams.proxies)
    if test_endpoint and TEST_ENDPOINT not in targets:
        targets.append(TEST_ENDPOINT)
    return list(await asyncio.gather(*(_options(config, p, timeout) for p in targets)))


async def _options(config: Config, peer: str, timeout: float) -> Result:
    t = config.teams
    check = f"options {peer}"
    req, dest = Router(config).options_request(peer)
    addr = t.resolve.get(peer)
    where = f"{addr} (teams.resolve)" if addr else str(HostPort(peer, dest.port))
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
            host, port, ssl=ctx, server_hostname=peer), timeout)
    except ssl.SSLCertVerificationError as e:
        return Result(FAIL, check, f"{where}: Teams' certificate is not trusted: {e.verify_message}",
                      "teams.trusted_ca must hold Teams' roots (null = the bundled Microsoft roots)")
    except ssl.SSLError as e:
        return Result(FAIL, check, f"{where} refused our TLS handshake: {e.reason or e}",
                      "Teams refuses an untrusted, expired or incomplete SBC certificate chain and one "
                      "without the SBC FQDN (see the cert checks)")
    except asyncio.TimeoutError:
        return Result(FAIL, check, f"{where}: no connection within {timeout:g}s", firewall)
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
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Result(FAIL, check, f"{where}: OPTIONS not answered within {timeout:g}s",
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
                if not isinstance(resp, Response) or resp.call_id != req.call_id or resp.status < 200:
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
        return Result(FAIL, check, f"{where}: OPTIONS not answered within {timeout:g}s",
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
