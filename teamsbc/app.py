"""Wires config, router, proxy, health and transports together and runs until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from typing import Callable, NamedTuple

from .admin import Observability
from .config import Config
from .entropy import POOL
from .guard import Guard
from .health import HealthBook, Pinger
from .keyfile import keyring
from .media.anchor import MediaAnchor
from .media.pool import MediaPool
from .proxy import Proxy
from .routing import Router
from .sealing import Keyring
from .sip.transaction import Timers
from .tls import client_context, describe_certificate, server_context
from .transport import Shell

log = logging.getLogger("teamsbc")


class Core(NamedTuple):
    router: Router
    proxy: Proxy
    guard: Guard


def build(config: Config, now: float | None = None, *, keepalive: bool = False,
          entropy: Callable[[int], bytes] = POOL, keys: Keyring | None = None) -> Core:
    """The sans-IO core. With `keepalive`, OPTIONS pings start at `now` (the first ones at once).
    `keys` seal what we hand out in URIs; by default sbc.secret, else this box's secret file
    (created on first use: teamsbc.keyfile)."""
    health = HealthBook()
    router = Router(config, health, entropy=entropy, keys=keys or keyring(config.sbc))
    media = MediaAnchor(config.media, config.pbx.address.host) if config.media.rtpengine else None
    guard = Guard(config, router.tenant_of_call)  # who may talk to us and how much
    proxy = Proxy(router, guard, entropy=entropy, media=media,
                  invite_timeout=config.teams.invite_timeout, prack=config.pbx.prack,
                  early_media=config.pbx.early_media)
    if now is not None:
        guard.start(now)
        proxy.add_timed(guard)  # counters report and stale-entry cleanup
    if keepalive:
        assert now is not None
        timeouts = {}

        def send(peer: str, at: float, on_result) -> list:
            req, dest = router.options_request(peer)
            # a ping's timeout is its transaction's own Timer F
            return proxy.originate(req, dest, at, on_result, Timers(timeout=timeouts[peer]))

        pinger = Pinger(health, send, now, alarm_after=config.teams.options_alarm)
        for peer, interval, timeout in router.ping_targets():
            timeouts[peer] = timeout
            pinger.add(peer, interval, now)
        proxy.add_timed(pinger)
    return Core(router, proxy, guard)


async def serve(config: Config, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    obs = Observability(admin=config.admin, cdr=config.cdr, capture=config.capture)
    router, proxy, guard = build(config, loop.time(), keepalive=True)
    t = config.teams
    pool = None
    if config.media.rtpengine:
        m = config.media
        pool = MediaPool(m.rtpengine, timeout=m.timeout, ping_interval=m.ping_interval,
                         down_after=m.down_after)
        await pool.start()
        log.info("media: rtpengine %s", ", ".join(
            f"{i['address']} {'up' if i['healthy'] else 'DOWN'}" for i in pool.status()))
    shell = Shell(config, proxy, guard, server_context(t.certificate, t.private_key, t.trusted_ca),
                  client_context(t.certificate, t.private_key, t.trusted_ca),
                  observers=obs.observers, media=pool)
    await shell.start()
    try:
        await obs.start(proxy=proxy, shell=shell, health=router.health, config=config, media=pool,
                        drops=guard.drops)
    except BaseException:
        await shell.stop(grace=0)
        await obs.stop()
        raise
    http01 = await _serve_http01(config)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        loop.add_signal_handler(signal.SIGHUP, lambda: shell.reload_certificate("SIGHUP"))
    except (NotImplementedError, RuntimeError):
        pass
    log.info("teamsbc ready: sbc %s, certificate %s", config.sbc.fqdn, describe_certificate(t.certificate))
    # Full cyclic collections of a large heap took 35-200 ms under load (bench/results): keep
    # the start-up heap out of them and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    shell.kick()  # first OPTIONS go out now
    if ready:
        ready.set()
    await stop.wait()
    log.info("stopping: draining %d pending requests", proxy.pending_requests)
    try:
        await shell.stop()
    finally:
        await obs.stop()
    if http01 is not None:
        await http01.cleanup()
    if pool is not None:
        await pool.close()
    log.info("stopped")


async def _serve_http01(config: Config):
    """ACME HTTP-01 answered by the running SBC (acme.serve_http01): `teamsbc cert` run with
    acme.http01_listen: null drops its tokens into <certs_dir>/acme-challenge."""
    listen = config.acme.serve_http01
    if listen is None:
        return None
    from aiohttp import web

    from .certs.challenges import TokenStore
    app = web.Application()
    webroot = config.certs_dir / "acme-challenge"
    TokenStore(webroot=webroot).add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, listen.host, listen.port).start()
    log.info("serving ACME HTTP-01 tokens from %s on %s", webroot, listen)
    return runner
