"""The doctor: runs the checks in order (DNS and the certificate first, the network checks
side by side, then identity and clock) and collects their findings.

    results = Doctor(config, Options(resolve={"sbc.example.com": "127.0.0.1"})).run()

Each check is a module of this package with a `check(...)` function; the methods below are
the doctor's names for them (tests and the command line call these).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from . import cert, clock, dns, identity, media, options, pair, teams_ping, tls
from .report import Result

CHECKS = ("dns", "cert", "tls", "options", "teams-ping", "identity", "media", "clock", "pair")


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
    pair_url: str | None = None                              # --pair URL (the other box's admin API)


class Doctor:
    def __init__(self, config: Config, options: Options | None = None):
        self.config = config
        self.o = options or Options()

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
        if self.o.pair_url and "pair" not in skip:
            out += await self.check_pair()
        return out

    def run(self) -> list[Result]:
        return asyncio.run(self.run_async())

    def check_dns(self) -> list[Result]:
        return dns.check(self.config, self.o.resolve, self.o.public_ips, self.o.timeout)

    def check_certificate(self) -> list[Result]:
        return cert.check(self.config)

    async def check_tls_listener(self) -> list[Result]:
        return await tls.check(self.config, self.o.timeout)

    async def check_options(self) -> list[Result]:
        return await options.check(self.config, self.o.timeout, self.o.test_endpoint)

    async def check_teams_ping(self) -> list[Result]:
        return await teams_ping.check(self.config, self.o.admin_url, self.o.admin_token, self.o.timeout)

    teams_ping_age = staticmethod(teams_ping.ping_age)

    def check_identity(self) -> list[Result]:
        return identity.check(self.config, self.o.samples)

    async def check_media(self) -> list[Result]:
        return await media.check(self.config, self.o.timeout)

    def check_clock(self) -> list[Result]:
        return clock.check()

    async def check_pair(self) -> list[Result]:
        assert self.o.pair_url
        return await pair.check(self.config, self.o.pair_url, self.o.admin_token, self.o.timeout)
