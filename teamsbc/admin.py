"""The admin HTTP API (aiohttp): health, Prometheus metrics, calls, peers, reload, traces.

    app = make_admin_app(proxy=proxy, shell=shell, health=router.health, metrics=metrics,
                         cdr=store, config=config, token=settings.token,
                         media=pool, tracer=tracer)           # the last two optional
    runner = await start_admin(app, settings.listen)          # -> aiohttp AppRunner
    ...
    await runner.cleanup()

Endpoints (every one needs `Authorization: Bearer TOKEN` when a token is configured):
    GET  /health        live/ready + each check; 200 when ready, 503 otherwise
    GET  /metrics       Prometheus text format 0.0.4
    GET  /calls         calls in progress
    GET  /cdr           CDR rows (?since=ISO&until=ISO&limit=N), newest last
    GET  /peers         peer health snapshots (+ rtpengine instances)
    POST /reload        reload the Teams certificate: 200 + its description, 409 + the problem
    GET  /trace         trace rules and their files
    POST /trace         {"call_id": "..."} or {"number": "+4420", "calls": 1, "seconds": 3600}
    DELETE /trace/{id}

Config (proposed): `admin: {enabled: true, listen: 127.0.0.1:7061, token: null,
token_file: null}`. A listener that is not loopback without a token is refused
(`AdminConfigError`): the API can reload certificates and write SIP traces.

`Observability` bundles issue 7 for app.py: the observers (metrics, CDR, HEP, traces) to
hand to the Proxy, and the admin API started once the shell is up.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .addresses import HostPort
from .admin_settings import AdminConfigError, AdminSettings, exposure_problem
from .capture.hep import HepObserver
from .capture.settings import CaptureSettings
from .capture.traces import CallTracer
from .cdr.export import export_rows, parse_time
from .cdr.settings import CdrSettings
from .cdr.store import CdrStore
from .cdr.writer import CdrObserver, CdrWriter
from .events import Observers
from .metrics import CONTENT_TYPE, Metrics
from .timefmt import iso_utc

log = logging.getLogger("teamsbc.admin")

TOKEN = web.AppKey("teamsbc_admin_token", object)
API = web.AppKey("teamsbc_admin_api", object)


# ---------------------------------------------------------------------- the app

def make_admin_app(*, proxy: Any, shell: Any, health: Any, metrics: Metrics, cdr: CdrWriter | None,
                   config: Any, token: str | None, media: Any = None,
                   tracer: CallTracer | None = None) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(token)])
    api = _Api(proxy, shell, health, metrics, cdr, config, media, tracer)
    app.router.add_get("/health", api.health)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/calls", api.calls)
    app.router.add_get("/cdr", api.cdr)
    app.router.add_get("/peers", api.peers)
    app.router.add_post("/reload", api.reload)
    app.router.add_get("/trace", api.trace_list)
    app.router.add_post("/trace", api.trace_add)
    app.router.add_delete("/trace/{id}", api.trace_remove)
    app[API] = api
    app[TOKEN] = token
    return app


async def start_admin(app: web.Application, listen: Any, *, token: str | None = None) -> web.AppRunner:
    """Serve `app` on `listen` (a HostPort). Refuses a non-loopback listener without a token
    (pass the token here or build the app with one)."""
    if token is None:
        token = app.get(TOKEN)  # type: ignore[assignment]
    problem = exposure_problem(listen, token)
    if problem:
        raise AdminConfigError(problem)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(e.errno, f"admin API cannot listen on {listen}: {e.strerror}") from None
    log.info("admin API on http://%s/ (%s)", listen, "token required" if token else "no token, loopback only")
    return runner


def _auth_middleware(token: str | None):
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def auth(request: web.Request, handler):
        if expected is not None:
            got = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(got, expected):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="teamsbc"'})
        return await handler(request)
    auth.token = token  # type: ignore[attr-defined]
    return auth


class _Api:
    def __init__(self, proxy, shell, health, metrics, cdr, config, media, tracer):
        self.proxy, self.shell, self.book, self.m = proxy, shell, health, metrics
        self.cdr_writer, self.config, self.media, self.tracer = cdr, config, media, tracer

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()   # the core's clock (peer health uses it)

    # --- GET /health
    def checks(self) -> list[dict]:
        from .routing import pbx_peer
        from .tls import days_left
        now = self._now()
        c = self.config
        out = []

        def add(name: str, ok: bool, detail: str, required: bool = True) -> None:
            out.append({"name": name, "ok": bool(ok), "required": required, "detail": detail})

        serving = self.shell.is_listening()
        add("listeners", serving, f"teams tls {c.teams.listen}, pbx {c.pbx.transport} {c.pbx.listen}"
            + ("" if serving else ": not listening"))

        trunks = [("pbx", c.pbx.address, True)] + [
            (f"pbx tenant {t.fqdn}", t.pbx, False) for t in c.teams.tenants.values() if t.pbx]
        for label, hp, required in trunks:
            name = pbx_peer(hp)
            p = self.book.peers.get(name)
            usable = self.book.usable(name, now)
            detail = f"{name}: {p.state} ({p.reason})" if p else f"{name}: not probed (pbx.options_interval 0: assumed up)"
            add(label, usable, detail, required)

        usable = [h for h in c.teams.proxies if self.book.usable(h, now)]
        states = ", ".join(f"{h} {self.book.peers[h].state}" if h in self.book.peers else f"{h} not probed"
                           for h in c.teams.proxies)
        add("teams", bool(usable), f"{len(usable)} of {len(c.teams.proxies)} usable: {states}")

        if c.media.rtpengine:
            if self.media is None:
                add("rtpengine", False, "media.rtpengine is configured but no media pool is running")
            else:
                try:
                    status = list(self.media.status())
                except Exception as e:  # noqa: BLE001
                    status, err = [], str(e)
                else:
                    err = ""
                up = [s for s in status if s.get("healthy")]
                add("rtpengine", bool(up), err or f"{len(up)} of {len(status)} instances up: "
                    + ", ".join(f"{s.get('address')} {'up' if s.get('healthy') else 'down'}" for s in status))

        left = days_left(c.teams.certificate)
        if left is None:
            add("certificate", False, f"{c.teams.certificate} unreadable")
        else:
            add("certificate", left > 0, f"{left:.1f} days left" + (" (renew: teamsbc cert renew)" if left < 30 else ""))

        last = self.book.teams_options_last
        alarm = c.teams.options_alarm
        if last is None:
            add("teams_options", False, "no OPTIONS from Teams yet", required=False)
        else:
            age = now - last
            add("teams_options", age < alarm, f"last OPTIONS from Teams {age:.0f} s ago", required=False)
        return out

    async def health(self, request: web.Request) -> web.Response:
        checks = self.checks()
        ready = all(ch["ok"] for ch in checks if ch["required"])
        body = {"live": True, "ready": ready, "version": __version__, "sbc": self.config.sbc.fqdn,
                "checks": checks}
        return web.json_response(body, status=200 if ready else 503)

    # --- GET /metrics
    async def metrics(self, request: web.Request) -> web.Response:
        text = self.m.render(self._now())
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    # --- GET /calls
    async def calls(self, request: web.Request) -> web.Response:
        calls = self.m.active_calls()
        return web.json_response({"count": len(calls), "calls": calls})

    # --- GET /cdr
    async def cdr(self, request: web.Request) -> web.Response:
        if self.cdr_writer is None:
            return web.json_response({"error": "CDRs are disabled (cdr.enabled: false)"}, status=404)
        try:
            since = parse_time(request.query["since"]) if "since" in request.query else None
            until = parse_time(request.query["until"]) if "until" in request.query else None
            limit = int(request.query.get("limit", "1000"))
        except Exception as e:  # noqa: BLE001
            return web.json_response({"error": str(e)}, status=400)
        if not 1 <= limit <= 100_000:
            return web.json_response({"error": "limit must be 1-100000"}, status=400)
        loop = asyncio.get_running_loop()
        writer = self.cdr_writer
        await loop.run_in_executor(None, writer.flush, 2.0)  # what happened until now is in
        rows = await loop.run_in_executor(None, lambda: writer.store.query(since, until, limit, newest=True))
        return web.json_response({"count": len(rows), "calls": export_rows(rows)})

    # --- GET /peers
    async def peers(self, request: web.Request) -> web.Response:
        now = self._now()
        wall = time.time()
        peers = []
        for name, p in sorted(self.book.peers.items()):
            snap = p.snapshot(now)
            for k in ("since", "last_ok", "last_failure", "cooling_until"):   # core clock -> wall clock
                if snap.get(k):
                    snap[k] = iso_utc(wall - (now - snap[k]))
            peers.append(snap)
        last = self.book.teams_options_last
        body: dict[str, Any] = {"peers": peers,
                                "teams_options_last": iso_utc(wall - (now - last)) if last is not None else None}
        if self.media is not None:
            try:
                body["rtpengine"] = list(self.media.status())
            except Exception as e:  # noqa: BLE001
                body["rtpengine"] = {"error": str(e)}
        return web.json_response(body)

    # --- POST /reload
    async def reload(self, request: web.Request) -> web.Response:
        from .tls import describe_certificate
        problem = self.shell.reload_certificate("admin request")
        if problem:
            return web.json_response({"reloaded": False, "problem": problem}, status=409)
        return web.json_response({"reloaded": True,
                                  "certificate": describe_certificate(self.config.teams.certificate)})

    # --- traces
    async def trace_list(self, request: web.Request) -> web.Response:
        if self.tracer is None:
            return web.json_response({"error": "tracing not available"}, status=404)
        return web.json_response({"directory": str(self.tracer.dir), "rules": self.tracer.describe()})

    async def trace_add(self, request: web.Request) -> web.Response:
        if self.tracer is None:
            return web.json_response({"error": "tracing not available"}, status=404)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        ttl = body.get("seconds", 3600)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 1 <= ttl <= 86400:
            return web.json_response({"error": "seconds must be 1-86400"}, status=400)
        cid, number = body.get("call_id"), body.get("number")
        if isinstance(cid, str) and cid and number is None:
            rule = self.tracer.trace_call(cid, ttl)
        elif isinstance(number, str) and number.lstrip("+").isdigit() and cid is None:
            calls = body.get("calls", 1)
            if isinstance(calls, bool) or not isinstance(calls, int) or not 1 <= calls <= 1000:
                return web.json_response({"error": "calls must be 1-1000"}, status=400)
            rule = self.tracer.trace_number(number, calls, ttl)
        else:
            return web.json_response(
                {"error": 'give {"call_id": "..."} or {"number": "+4420...", "calls": N}'}, status=400)
        return web.json_response(rule.as_dict(), status=201)

    async def trace_remove(self, request: web.Request) -> web.Response:
        if self.tracer is None:
            return web.json_response({"error": "tracing not available"}, status=404)
        try:
            rid = int(request.match_info["id"])
        except ValueError:
            return web.json_response({"error": "no such rule"}, status=404)
        if not self.tracer.remove(rid):
            return web.json_response({"error": "no such rule"}, status=404)
        return web.Response(status=204)


# ---------------------------------------------------------------------- everything of issue 7

class Observability:
    """Metrics, CDRs, HEP, traces and the admin API of one SBC process.

        obs = Observability(admin=config.admin, cdr=config.cdr, capture=config.capture)
        router, proxy, guard = build(config, loop.time(), keepalive=True)
        shell = Shell(..., observers=obs.observers)  # the shell fans events out to them
        await shell.start()
        await obs.start(proxy=proxy, shell=shell, health=router.health, config=config, media=pool)
        ...
        await obs.stop()
    """

    def __init__(self, *, admin: AdminSettings | None = None, cdr: CdrSettings | None = None,
                 capture: CaptureSettings | None = None):
        self.admin = admin or AdminSettings()
        self.cdr_settings = cdr or CdrSettings(enabled=False)
        self.capture = capture or CaptureSettings()
        if self.admin.enabled:
            problem = exposure_problem(self.admin.listen, self.admin.token)
            if problem:
                raise AdminConfigError(problem)
        self.metrics = Metrics()
        self.observers = Observers(self.metrics)  # the shell's fan-out of call events and SIP
        self.cdr_writer: CdrWriter | None = None
        if self.cdr_settings.enabled:
            store = CdrStore(self.cdr_settings.path, synchronous=self.cdr_settings.synchronous)
            self.cdr_writer = CdrWriter(store)
            self.observers.add(CdrObserver(self.cdr_writer))
        self.hep: HepObserver | None = None
        if self.capture.hep:
            self.hep = HepObserver(self.capture.hep, self.capture.agent_id, self.capture.password)
            self.observers.add(self.hep)
        self.tracer = CallTracer(self.capture.trace_dir, self.capture.trace_format)
        self.observers.add(self.tracer)
        self.runner: web.AppRunner | None = None

    async def start(self, *, proxy: Any, shell: Any, health: Any, config: Any, media: Any = None,
                    drops: Any = None) -> None:
        """Scrape-time sources and the admin API. `drops`: the guard's counters."""
        self.metrics.attach(proxy=proxy, shell=shell, health=health, media=media,
                            certificate=config.teams.certificate, drops=drops)
        if self.admin.enabled:
            app = make_admin_app(proxy=proxy, shell=shell, health=health, metrics=self.metrics,
                                 cdr=self.cdr_writer, config=config, token=self.admin.token,
                                 media=media, tracer=self.tracer)
            self.runner = await start_admin(app, self.admin.listen, token=self.admin.token)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.tracer.close()
        if self.hep is not None:
            self.hep.close()
        if self.cdr_writer is not None:
            self.cdr_writer.close()  # commits what is queued, then closes the store
