"""Wires config, router, proxy, health and transports together and runs until SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Callable, NamedTuple

from .admin import Observability
from .collector import YoungOnly
from .config import Config
from .entropy import POOL
from .guard import Guard
from .health import HealthBook, Pinger
from .keyfile import keyring
from .media.anchor import MediaAnchor, SdpScreen
from .media.pool import MediaPool
from .proxy import Proxy
from .routing import Router
from .sealing import Keyring
from .sip.transaction import Timers
from .tls import client_context, describe_certificate, server_context
from .transport import Shell
from .workers import SNAPSHOT_INTERVAL, Forwarder, Mesh, Team, WholeProxy, WholeShell, snapshot, summed_drops

log = logging.getLogger("teamsbc")


class Core(NamedTuple):
    router: Router
    proxy: Proxy
    guard: Guard


def build(config: Config, now: float | None = None, *, keepalive: bool = False,
          entropy: Callable[[int], bytes] = POOL, keys: Keyring | None = None,
          team: Team | None = None, on_ban: Callable[[str, float], None] | None = None) -> Core:
    """The sans-IO core. With `keepalive`, OPTIONS pings start at `now` (the first ones at once).
    `keys` seal what we hand out in URIs; by default sbc.secret, else this box's secret file
    (created on first use: teamsbc.keyfile). `team`: this worker's part of sbc.workers
    (its share of the limits, the Call-IDs it owns); `on_ban`: bans for the other workers."""
    health = HealthBook()
    router = Router(config, health, entropy=entropy, keys=keys or keyring(config.sbc),
                    owns=team.owns if team is not None else None)
    media = MediaAnchor(config.media, config.pbx.address.host) if config.media.rtpengine else None
    guard = Guard(config, router.tenant_of_call, share=team.share if team is not None else 1.0,
                  on_ban=on_ban)  # who may talk to us and how much
    proxy = Proxy(router, guard, entropy=entropy, media=media,
                  invite_timeout=config.teams.invite_timeout, prack=config.pbx.prack,
                  early_media=config.pbx.early_media,
                  sdp_screen=(media.screen if media is not None else SdpScreen(config.media)).refusal)
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


async def serve(config: Config, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                team: Team | None = None) -> None:
    """Run until SIGTERM/SIGINT (or `stop`). `team`: this process's part of sbc.workers
    (workers.py); worker 0 also runs the admin API, the CDR writer and the keep-alive."""
    loop = asyncio.get_running_loop()
    mesh = Mesh(team, loop) if team is not None and team.count > 1 else None
    secondary = mesh is not None and not mesh.team.primary
    obs = None if secondary else Observability(admin=config.admin, cdr=config.cdr, capture=config.capture)
    router, proxy, guard = build(config, loop.time(), keepalive=not secondary,
                                 team=team if mesh is not None else None,
                                 on_ban=(lambda ip, until: mesh.broadcast(("B", ip, until))) if mesh else None)
    t = config.teams
    pool = None
    if config.media.rtpengine:
        m = config.media
        pool = MediaPool(m.rtpengine, timeout=m.timeout, ping_interval=m.ping_interval,
                         down_after=m.down_after)
        await pool.start()
        log.info("media: rtpengine %s", ", ".join(
            f"{i['address']} {'up' if i['healthy'] else 'DOWN'}" for i in pool.status()))
    observers = Forwarder(mesh) if secondary else obs.observers  # type: ignore[union-attr]
    shell = Shell(config, proxy, guard, server_context(t.certificate, t.private_key, t.trusted_ca),
                  client_context(t.certificate, t.private_key, t.trusted_ca),
                  observers=observers, media=pool, mesh=mesh)
    stop = stop or asyncio.Event()
    if mesh is not None:
        _wire_workers(mesh, shell, proxy, guard, router, obs, stop)
    await shell.start()
    if obs is not None:
        try:
            whole_proxy, whole_shell, drops = proxy, shell, guard.drops
            if mesh is not None:
                whole_proxy, whole_shell, drops = WholeProxy(proxy, mesh), WholeShell(shell, mesh), summed_drops(guard, mesh)
            await obs.start(proxy=whole_proxy, shell=whole_shell, health=router.health, config=config,
                            media=pool, drops=drops)
        except BaseException:
            await shell.stop(grace=0)
            await obs.stop()
            raise
    http01 = await _serve_http01(config) if not secondary else None
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if not secondary:
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: shell.reload_certificate("SIGHUP"))
        except (NotImplementedError, RuntimeError):
            pass
    log.info("teamsbc ready: sbc %s, certificate %s%s", config.sbc.fqdn, describe_certificate(t.certificate),
             f", worker {team.index} of {team.count}" if mesh is not None else "")
    # The collector walks only young objects (collector.py): a young generation of 50,000
    # objects and per-call reference cycles made single collections of up to 900 ms (issue 12).
    collector = YoungOnly(busy=lambda: proxy.active_transactions > 0 or guard.calls.count() > 0)
    collector.start(loop)
    shell.kick()  # first OPTIONS go out now
    if ready:
        ready.set()
    await stop.wait()
    collector.stop()
    log.info("stopping: draining %d pending requests", proxy.pending_requests)
    if mesh is not None and mesh.team.primary:
        mesh.broadcast(("T",))  # every worker drains its own calls
    try:
        await shell.stop()
    finally:
        if mesh is not None and mesh.team.primary:
            await _reap(mesh.team)
        if obs is not None:
            await obs.stop()
        if mesh is not None:
            mesh.close()
    if http01 is not None:
        await http01.cleanup()
    if pool is not None:
        await pool.close()
    log.info("stopped")


def _wire_workers(mesh: Mesh, shell: Shell, proxy: Proxy, guard: Guard, router: Router,
                  obs: Observability | None, stop: asyncio.Event) -> None:
    """What each worker answers on its channels (workers.Mesh), and the timers that keep
    worker 0 informed (counters) and the others (peer health)."""
    loop = mesh.loop
    team = mesh.team
    mesh.handlers.update({
        "B": lambda k, ip, until: guard.ban(ip, until),
        "R": lambda k, why: shell.reload_certificate(why),
        "T": lambda k: stop.set(),
    })
    if team.primary:
        assert obs is not None
        fanout = obs.observers

        def observed(k: int, batch: list) -> None:
            for method, args in batch:
                getattr(fanout, method)(*args)

        def lost(k: int) -> None:
            if not stop.is_set():
                log.error("worker %d (pid %s) ended: its calls' pending transactions are lost, "
                          "its share of new calls goes to the other workers", k, team.pids.get(k))

        def tell_health() -> None:
            now = loop.time()
            mesh.broadcast(("H", {p.name: (p.state, p.since, p.reason, p.cooling_until)
                                  for p in router.health.peers.values()}))
            if not stop.is_set():
                loop.call_at(now + SNAPSHOT_INTERVAL, tell_health)

        mesh.handlers.update({"O": observed, "S": lambda k, snap: mesh.snapshots.__setitem__(k, snap)})
        mesh.on_lost = lost
        loop.call_soon(tell_health)
    else:
        def health(k: int, peers: dict) -> None:
            for name, (state, since, reason, cooling) in peers.items():
                p = router.health.peer(name)
                p.state, p.since, p.reason, p.cooling_until = state, since, reason, cooling

        def report() -> None:
            mesh.send(0, ("S", snapshot(proxy, shell, guard)))
            if not stop.is_set():
                loop.call_later(SNAPSHOT_INTERVAL, report)

        def lost(k: int) -> None:
            if k == 0 and not stop.is_set():
                log.error("worker 0 is gone: worker %d stops", team.index)
                stop.set()

        mesh.handlers["H"] = health
        mesh.on_lost = lost
        loop.call_soon(report)
    mesh.start()


async def _reap(team: Team, grace: float = 10.0) -> None:
    """Worker 0 waits for the others to drain and exit (SIGKILL after `grace`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    waiting = dict(team.pids)
    while waiting:
        for k, pid in list(waiting.items()):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del waiting[k]
        if not waiting:
            break
        if loop.time() >= deadline:
            for k, pid in waiting.items():
                log.error("worker %d (pid %d) did not stop within %gs: killed", k, pid, grace)
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
            break
        await asyncio.sleep(0.05)


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
