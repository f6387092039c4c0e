"""The lab: Teams and a PBX simulated on loopback, so the SBC can be seen working without
either. Used by `teamsbc demo`, by the tests (tests/support/teams_peer.py adds test-only helpers
around the same Teams) and by the embedded lab default of `teamsbc run`.

    teams.py     the Teams Direct Routing proxy: mutual TLS, Teams' connection model, answers
                 and calls like Teams
    pbx.py       a PBX trunk over UDP or TCP: answers and calls
    messages.py  what both say on the wire, built and read with teamsbc.sip

    peers = await start_lab_peers(config)        # Teams on teams.resolve, the PBX on pbx.address
    call = await peers.pbx.invite("02079460123")  # a call PBX -> SBC -> Teams
    await peers.stop()
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Protocol

from ..addresses import is_loopback
from ..config import Config
from ..labpki import LabPki
from .pbx import PbxUa
from .teams import Answer, TeamsProxy

__all__ = ["start_lab_peers", "LabPeers", "TeamsProxy", "PbxUa", "Answer"]

log = logging.getLogger("teamsbc.lab")

# a listener on every address is reached on loopback
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class TeamsCertificates(Protocol):
    """Where the stand-in Teams certificate is: a LabPki, or the tests' PKI."""
    teams_fullchain: object
    teams_key: object
    ca_cert: object


@dataclass
class LabPeers:
    teams: TeamsProxy
    pbx: PbxUa
    _pinger: asyncio.Task | None = field(default=None, repr=False)

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            await asyncio.gather(self._pinger, return_exceptions=True)
        await self.teams.close()
        await self.pbx.close()


async def start_lab_peers(config: Config, pki: TeamsCertificates | None = None, *,
                          options_interval: float = 60.0) -> LabPeers:
    """Start Teams on every loopback address of `teams.resolve` and the PBX on `pbx.address`
    (its transport), both talking to this config's SBC. ``pki``: where Teams' certificate is;
    by default the lab PKI next to `teams.trusted_ca` (the embedded lab default keeps them in
    one directory). Teams pings the SBC with OPTIONS every ``options_interval`` seconds, as
    the real one does (0: never)."""
    if pki is None:
        if config.teams.trusted_ca is None:
            raise ValueError("the lab needs Teams' certificate: give the lab PKI (teams.trusted_ca is not set)")
        pki = LabPki.at(config.teams.trusted_ca.parent)
    t = config.teams
    sbc_host = _WILDCARD_TO_LOOPBACK.get(t.listen.host, t.listen.host)
    teams = TeamsProxy(pki.teams_fullchain, pki.teams_key, pki.ca_cert,  # type: ignore[arg-type]
                       sbc_fqdn=config.sbc.fqdn, sbc_host=sbc_host, sbc_port=t.listen.port)
    pbx_listen = config.pbx.listen
    pbx = PbxUa(config.pbx.address.host, config.pbx.address.port,
                sbc=(_WILDCARD_TO_LOOPBACK.get(pbx_listen.host, pbx_listen.host), pbx_listen.port),
                transport=config.pbx.transport)
    try:
        for hp in dict.fromkeys(t.resolve.values()):
            if is_loopback(hp.host):
                await teams.listen(hp.port, hp.host)
        await pbx.start()
    except BaseException:
        await teams.close()
        await pbx.close()
        raise
    peers = LabPeers(teams, pbx)
    if options_interval > 0:
        peers._pinger = asyncio.get_running_loop().create_task(_ping(teams, options_interval))
    log.info("lab peers: Teams on %s, PBX %s %s", ", ".join(str(p) for p in teams.ports) or "(none)",
             config.pbx.transport, pbx.me)
    return peers


async def _ping(teams: TeamsProxy, interval: float) -> None:
    """Teams' keep-alive OPTIONS to the SBC (it takes an SBC that stops answering out of service)."""
    while True:
        try:
            await teams.options(timeout=min(interval, 10.0))
        except Exception as e:  # noqa: BLE001 - the SBC may not be up yet: try again next time
            log.debug("lab Teams OPTIONS to the SBC: %s", e)
        await asyncio.sleep(interval)
