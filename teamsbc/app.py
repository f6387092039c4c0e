"""Wires config, router, proxy and transports together and runs until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import signal

from .config import Config
from .proxy import Proxy
from .routing import Router
from .tls import client_context, server_context
from .transport import Shell

log = logging.getLogger("teamsbc")


def build(config: Config) -> tuple[Router, Proxy]:
    router = Router(config)
    proxy = Proxy(router, router.legs, invite_timeout=config.teams.invite_timeout)
    return router, proxy


async def serve(config: Config, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    _, proxy = build(config)
    t = config.teams
    shell = Shell(config, proxy, server_context(t.certificate, t.private_key, t.trusted_ca),
                  client_context(t.certificate, t.private_key, t.trusted_ca))
    await shell.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    log.info("teamsbc ready: sbc %s", config.sbc.fqdn)
    if ready:
        ready.set()
    await stop.wait()
    log.info("stopping: draining %d pending requests", proxy.pending_requests)
    await shell.stop()
    log.info("stopped")
