"""`teamsbc run` (and `./run-sbc`) without a config: the lab. The SBC runs on loopback with a
generated lab certificate, and the Teams and PBX peers it talks to are simulated in the same
process (teamsbc.lab, the peers of `teamsbc demo` and the tests), so the lab SBC is what a healthy one looks like:
its OPTIONS are answered, /health says ready, and one log line says what to try next.

| what | where (default) |
| --- | --- |
| SBC, Teams side (TLS) | 127.0.0.1:5061 |
| SBC, PBX side (UDP) | 127.0.0.1:5060 |
| admin API | http://127.0.0.1:7061/ (the configured default, admin_settings.DEFAULT_LISTEN) |
| simulated Teams (sip, sip2, sip3.pstnhub.microsoft.com via teams.resolve) | 127.0.0.1:15061 |
| simulated PBX trunk (UDP) | 127.0.0.1:5080 |
| lab CA, certificates, CDRs, traces | $TEAMSBC_LAB_DIR, else $XDG_STATE_HOME/teamsbc/lab (~/.local/state/teamsbc/lab) |

TEAMSBC_LAB_PORTS="SBC_TLS,SBC_PBX,ADMIN,TEAMS_PEER,PBX_PEER" moves them (tests use free ports).
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from . import config as cfg
from .admin_settings import DEFAULT_LISTEN as ADMIN_DEFAULT

log = logging.getLogger("teamsbc")

LAB_FQDN = "sbc.teamsbc.test"
DEFAULT_PORTS = (5061, 5060, ADMIN_DEFAULT[1], 15061, 5080)


def lab_dir() -> Path:
    env = os.environ.get("TEAMSBC_LAB_DIR")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "teamsbc" / "lab"


def lab_ports() -> tuple[int, int, int, int, int]:
    env = os.environ.get("TEAMSBC_LAB_PORTS")
    if not env:
        return DEFAULT_PORTS
    try:
        ports = tuple(int(p) for p in env.split(","))
    except ValueError:
        ports = ()
    if len(ports) != 5 or not all(0 < p < 65536 for p in ports):
        raise cfg.ConfigError([f"TEAMSBC_LAB_PORTS={env!r}: expected five ports "
                               "SBC_TLS,SBC_PBX,ADMIN,TEAMS_PEER,PBX_PEER"])
    return ports  # type: ignore[return-value]


def lab_config() -> cfg.Config:
    """The embedded lab default: loopback listeners, a lab PKI generated on first use, the
    simulated peers as Teams' proxies and as the PBX trunk."""
    from .labpki import ensure_lab_pki
    d = lab_dir()
    tls, pbx, admin, teams_peer, pbx_peer = lab_ports()
    proxies = list(cfg.TEAMS_PROXIES["commercial"])
    pki = ensure_lab_pki(d, LAB_FQDN, proxies)
    data = {
        "sbc": {"fqdn": LAB_FQDN},
        "teams": {
            "listen": f"127.0.0.1:{tls}",
            "certificate": str(pki.sbc_fullchain),
            "private_key": str(pki.sbc_key),
            "trusted_ca": str(pki.ca_cert),
            "proxies": proxies,
            "resolve": {p: f"127.0.0.1:{teams_peer}" for p in proxies},
        },
        "pbx": {"listen": f"127.0.0.1:{pbx}", "transport": "udp", "address": f"127.0.0.1:{pbx_peer}"},
        "numbers": {"country_code": "44"},
        "admin": {"listen": f"127.0.0.1:{admin}"},
    }
    return cfg.from_dict(data, source=f"<embedded lab default, PKI in {d}>", base=d)


async def serve_with_peers(config: cfg.Config) -> None:
    """The simulated Teams and PBX (teamsbc.lab) on their lab ports, then the SBC."""
    from .app import serve
    from .lab import start_lab_peers
    admin = lab_ports()[2]
    peers = await start_lab_peers(config)
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def hint() -> None:
        await ready.wait()
        log.info("lab ready: simulated Teams (%s) and PBX (%s) answer the SBC; try "
                 "`curl http://127.0.0.1:%d/health`, `teamsbc demo` (a call each way with its SIP "
                 "ladder), then a real SBC: docs/operations.md",
                 ", ".join(str(p) for p in peers.teams.ports), peers.pbx.me, admin)

    hinted = loop.create_task(hint())
    try:
        await serve(config, ready=ready)
    finally:
        hinted.cancel()
        await peers.stop()
