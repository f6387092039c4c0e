"""The admin HTTP API (aiohttp): health, Prometheus metrics, calls, peers, reload, traces.

    app = make_admin_app(proxy=proxy, shell=shell, health=router.health, metrics=metrics,
                         cdr=store, config=config, token=settings.token,
                         media=pool, tracer=tracer)           # the last two optional
    runner = await start_admin(app, settings.listen)          # -> aiohttp AppRunner
    ...
    await runner.cleanup()

Endpoints (every one needs `Authorization: Bearer TOKEN` when a token is configured, or the
console's session cookie, with its CSRF token on POST and DELETE):
    GET  /health        live/ready + each check; 200 when ready, 503 otherwise
    GET  /metrics       Prometheus text format 0.0.4
    GET  /status        everything `teamsbc status` shows (console/status.py)
    GET  /history       24 h of peer health and call counts (console/history.py)
    GET  /calls         calls in progress
    GET  /calls/{id}    a recorded call: summary, ladder (credentials masked), media, CDR row
    GET  /calls/{id}/pcap   its SIP as a pcap (credentials masked)
    GET  /cdr           CDR rows (?since=ISO&until=ISO&limit=N&number=&result=&format=csv), newest last
    GET  /pair          ?challenge=HEX: HMAC proofs of the sealing secret, wall clock (doctor --pair)
    GET  /peers         peer health snapshots (+ rtpengine instances)
    POST /reload        reload the Teams certificate: 200 + its description, 409 + the problem
    GET  /certificate   the certificate served, its renewal, the archive, the last "renew now"
    POST /certificate/renew   renew now (ACME, in a thread); 200 + the outcome, 202 while it runs
    GET  /config        effective configuration (secrets masked) + `teamsbc check` of the file
    GET  /trace         trace rules and their files
    POST /trace         {"call_id": "..."} or {"number": "+4420", "calls": 1, "seconds": 3600}
    DELETE /trace/{id}
The web console (teamsbc/console/) is served on the same listener: `/` and `/console/...`.

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
from urllib.parse import urlencode

from aiohttp import web

from . import __version__
from .addresses import HostPort
from .admin_settings import AdminConfigError, AdminSettings, exposure_problem
from .capture.hep import HepObserver
from .capture.settings import CaptureSettings
from .capture.traces import CallTracer
from .cdr.export import export_rows, format_rows, parse_time
from .cdr.search import SearchError, normalise_number
from .cdr.settings import CdrSettings
from .cdr.writer import CdrObserver, CdrWriter, open_store
from .events import Observers
from .console.auth import (COOKIE, CSRF_FIELD, CSRF_HEADER, Sessions, csrf_matches, loopback_host,
                           origin_ok)
from .console.certinfo import Renewer
from .console.history import History
from .console.pages import SESSION
from .console.recorder import FlightRecorder
from .console import certinfo, configview, ladder
from .console.status import RecentErrors, Sources, collect, live_media, media_dict
from .console.web import forbidden, install as install_console, is_console, path_is_static, security_headers
from .console.web import set_session_cookie
from .metrics import CONTENT_TYPE, Metrics
from .timefmt import iso_utc

log = logging.getLogger("teamsbc.admin")

TOKEN = web.AppKey("teamsbc_admin_token", object)
API = web.AppKey("teamsbc_admin_api", object)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RENEW_WAIT = 120.0          # s POST /certificate/renew waits for the outcome before answering 202


INDEX = (
    ("GET", "/", "in a browser: the web console (dashboard, calls, CDRs, certificates, config)"),
    ("GET", "/status", "everything `teamsbc status` shows (JSON)"),
    ("GET", "/health", "readiness and each check (200 ready, 503 not)"),
    ("GET", "/metrics", "Prometheus metrics"),
    ("GET", "/calls", "calls in progress"),
    ("GET", "/cdr", "call detail records (?since=ISO&until=ISO&limit=N)"),
    ("GET", "/peers", "Teams proxies, PBX trunks, rtpengine: up/down and why"),
    ("POST", "/reload", "load the certificate from disk again"),
    ("GET", "/trace", "trace rules and their files"),
    ("POST", "/trace", '{"number": "+4420", "calls": 1} or {"call_id": "..."}'),
)


# ---------------------------------------------------------------------- the app

def make_admin_app(*, proxy: Any, shell: Any, health: Any, metrics: Metrics, cdr: CdrWriter | None,
                   config: Any, token: str | None, media: Any = None,
                   tracer: CallTracer | None = None, recorder: FlightRecorder | None = None,
                   history: History | None = None, errors: RecentErrors | None = None) -> web.Application:
    sessions = Sessions()
    app = web.Application(middlewares=[security_headers, _auth_middleware(token, sessions)])
    api = _Api(proxy, shell, health, metrics, cdr, config, media, tracer)
    renewer = Renewer(config, shell.reload_certificate if shell is not None else None) if config is not None else None
    api.src = Sources(config, health, metrics, api.checks, media=media, recorder=recorder, history=history,
                      errors=errors, cdr=cdr, renewer=renewer, tracer=tracer)
    app.router.add_get("/health", api.health)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/calls", api.calls)
    app.router.add_get("/cdr", api.cdr)
    app.router.add_get("/peers", api.peers)
    app.router.add_get("/pair", api.pair)
    app.router.add_post("/reload", api.reload)
    app.router.add_get("/trace", api.trace_list)
    app.router.add_post("/trace", api.trace_add)
    app.router.add_delete("/trace/{id}", api.trace_remove)
    if config is not None:
        app.router.add_get("/status", api.status)
        app.router.add_get("/history", api.history)
        app.router.add_get("/calls/{call_id}", api.call)
        app.router.add_get("/calls/{call_id}/pcap", api.call_pcap)
        app.router.add_get("/certificate", api.certificate)
        app.router.add_post("/certificate/renew", api.renew)
        app.router.add_get("/config", api.config_view)
        install_console(app, api.src, sessions, token=token, plain=api.index)
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


def _auth_middleware(token: str | None, sessions: Sessions):
    """Who may ask (console/auth.py has the rules): the bearer token (API clients), else the
    console's session cookie (with its CSRF token on POST/DELETE), else, without a configured
    token, anyone on the loopback whose Host is the loopback (DNS rebinding) and whose browser
    Origin, if any, is this listener. Console pages send a browser to the login form instead of
    answering 401."""
    expected = f"Bearer {token}".encode() if token else None

    def unauthorized() -> web.Response:
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="teamsbc"'})

    @web.middleware
    async def auth(request: web.Request, handler):
        path = request.path
        if path_is_static(path) or path == "/console/login":
            return await handler(request)     # the login form and its stylesheet; login checks itself
        if expected is None and not loopback_host(request.host):
            return forbidden(f"Host {request.host!r} is not the loopback: without admin.token the admin "
                             "listener answers only requests addressed to 127.0.0.1, ::1 or localhost")
        if expected is not None and hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return await handler(request)
        session = sessions.get(request.cookies.get(COOKIE))
        fresh = None
        if session is None and expected is None and is_console(path) and request.method in SAFE_METHODS:
            session = fresh = sessions.new("loopback")     # nothing to log in with: a session for CSRF
        if session is not None:
            if request.method not in SAFE_METHODS:
                given = request.headers.get(CSRF_HEADER)
                if given is None and request.content_type in ("application/x-www-form-urlencoded",
                                                              "multipart/form-data"):
                    given = str((await request.post()).get(CSRF_FIELD, ""))
                if not origin_ok(request.headers.get("Origin"), request.host, request.secure) \
                        or not csrf_matches(given, session):
                    return forbidden("Refused: the request did not carry this session's CSRF token "
                                     "(reload the page and try again)")
            request[SESSION] = session
            resp = await handler(request)
            if fresh is not None:
                set_session_cookie(resp, request, sessions, fresh)
            return resp
        if expected is None:
            if request.method not in SAFE_METHODS and not origin_ok(request.headers.get("Origin"), request.host,
                                                                   request.secure):
                return forbidden("Refused: a request from another site")
            return await handler(request)
        if is_console(path):        # a browser (a POST too: its session expired): to the login form
            target = request.path_qs if request.method in SAFE_METHODS else "/"
            raise web.HTTPSeeOther("/console/login?" + urlencode({"next": target}))
        return unauthorized()
    auth.token = token  # type: ignore[attr-defined]
    return auth


class _Api:
    def __init__(self, proxy, shell, health, metrics, cdr, config, media, tracer):
        self.proxy, self.shell, self.book, self.m = proxy, shell, health, metrics
        self.cdr_writer, self.config, self.media, self.tracer = cdr, config, media, tracer
        self.src: Sources | None = None

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

    # --- GET /: what this is and what to ask (a person with curl or a browser lands here first)
    async def index(self, request: web.Request) -> web.Response:
        checks = self.checks()
        failing = [ch["name"] for ch in checks if ch["required"] and not ch["ok"]]
        state = "ready" if not failing else f"NOT ready (failing: {', '.join(failing)})"
        lines = [f"teamsbc {__version__} admin API, SBC {self.config.sbc.fqdn}: {state}", ""]
        lines += [f"  {method:<6} {path:<14} {what}" for method, path, what in INDEX]
        lines += ["", "docs: operations.md (in /usr/share/doc/teamsbc when installed)", ""]
        return web.Response(text="\n".join(lines), content_type="text/plain")

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
        q = request.query
        try:
            since = parse_time(q["since"]) if "since" in q else None
            until = parse_time(q["until"]) if "until" in q else None
            limit = int(q.get("limit", "1000"))
            number, result = q.get("number") or None, q.get("result") or None
            if number is not None:
                normalise_number(number)
            fmt = q.get("format", "json")
            if fmt not in ("json", "csv"):
                raise ValueError(f"format {fmt!r}: json or csv")
        except Exception as e:  # noqa: BLE001
            return web.json_response({"error": str(e)}, status=400)
        if not 1 <= limit <= 100_000:
            return web.json_response({"error": "limit must be 1-100000"}, status=400)
        loop = asyncio.get_running_loop()
        writer = self.cdr_writer
        await loop.run_in_executor(None, writer.flush, 2.0)  # what happened until now is in
        try:
            if number or result:
                rows = await loop.run_in_executor(None, lambda: writer.store.search(
                    since=since, until=until, number=number, result=result, limit=limit))
            else:
                rows = await loop.run_in_executor(None, lambda: writer.store.query(since, until, limit, newest=True))
        except SearchError as e:
            return web.json_response({"error": str(e)}, status=400)
        except writer.store.errors as e:
            return web.json_response({"error": f"CDR database unavailable: {str(e).strip()}",
                                      "backlog": writer.backlog}, status=503)
        if fmt == "csv":
            return web.Response(text=format_rows(rows, "csv"), content_type="text/csv", charset="utf-8")
        return web.json_response({"count": len(rows), "calls": export_rows(rows)})

    # --- GET /status, /history
    async def status(self, request: web.Request) -> web.Response:
        assert self.src is not None
        return web.json_response(await collect(self.src))

    async def history(self, request: web.Request) -> web.Response:
        if self.src is None or self.src.history is None:
            return web.json_response({"error": "no history kept"}, status=404)
        return web.json_response(self.src.history.as_dict())

    # --- GET /calls/{call_id}[/pcap]
    def _recording(self, request: web.Request):
        rec = self.src.recorder.get(request.match_info["call_id"]) if self.src and self.src.recorder else None
        if rec is None:
            raise web.HTTPNotFound(text=json.dumps({"error": "no such call in the flight recorder"}),
                                   content_type="application/json")
        return rec

    async def call(self, request: web.Request) -> web.Response:
        rec = self._recording(request)
        columns, arrows = ladder.build(rec, ladder.teams_names(self.config))
        body = {"call": rec.summary(), "columns": [c.key for c in columns],
                "ladder": [a.as_dict() for a in arrows]}
        body["call"]["media"] = media_dict(rec.media)
        if rec.ended is None and self.media is not None:
            probe = [{"call_id": rec.call_id, "media": None}]
            await live_media(self.media, probe)
            body["call"]["media"] = probe[0]["media"] or body["call"]["media"]
        if self.cdr_writer is not None:
            writer = self.cdr_writer
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, writer.flush, 2.0)
            rows = await loop.run_in_executor(None, lambda: writer.store.search(call_id=rec.call_id))
            body["cdr"] = export_rows(rows)
        return web.json_response(body)

    async def call_pcap(self, request: web.Request) -> web.Response:
        rec = self._recording(request)
        name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in rec.call_id)[:60] or "call"
        return web.Response(body=ladder.pcap(rec), content_type="application/vnd.tcpdump.pcap",
                            headers={"Content-Disposition": f'attachment; filename="{name}.pcap"'})

    # --- certificate, renew now
    async def certificate(self, request: web.Request) -> web.Response:
        assert self.src is not None and self.src.renewer is not None
        loop = asyncio.get_running_loop()
        body = certinfo.certificate_info(self.config)
        body["archive"] = await loop.run_in_executor(None, certinfo.archive, self.config)
        body["renewal"] = self.src.renewer.last
        return web.json_response(body)

    async def renew(self, request: web.Request) -> web.Response:
        assert self.src is not None and self.src.renewer is not None
        task = self.src.renewer.start()
        try:
            outcome = await asyncio.wait_for(asyncio.shield(task), RENEW_WAIT)
        except asyncio.TimeoutError:
            return web.json_response(self.src.renewer.last, status=202)
        return web.json_response(outcome, status=200 if outcome["ok"] else 502)

    # --- GET /config
    async def config_view(self, request: web.Request) -> web.Response:
        check = await asyncio.get_running_loop().run_in_executor(None, configview.check, self.config)
        return web.json_response({"effective": configview.effective(self.config), "check": check})

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

    # --- GET /pair?challenge=HEX: what `teamsbc doctor --pair` compares (docs/ha.md)
    async def pair(self, request: web.Request) -> web.Response:
        from .keyfile import SecretFileError, keyring
        from .sealing import pair_proof
        challenge = request.query.get("challenge", "")
        if not 32 <= len(challenge) <= 128 or any(c not in "0123456789abcdef" for c in challenge):
            return web.json_response({"error": "challenge must be 32-128 lower-case hex digits"}, status=400)
        try:
            keys = keyring(self.config.sbc, create=False)
        except SecretFileError as e:
            return web.json_response({"error": str(e)}, status=503)
        raw = bytes.fromhex(challenge)
        return web.json_response({
            "fqdn": self.config.sbc.fqdn,
            "proof": pair_proof(keys.current, raw),
            "previous": pair_proof(keys.previous, raw) if keys.previous is not None else None,
            "configured": self.config.sbc.secret is not None,
            "time": time.time(),
        })

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
            self.cdr_writer = CdrWriter(open_store(self.cdr_settings))
            self.observers.add(CdrObserver(self.cdr_writer))
        self.hep: HepObserver | None = None
        if self.capture.hep:
            self.hep = HepObserver(self.capture.hep, self.capture.agent_id, self.capture.password)
            self.observers.add(self.hep)
        self.tracer = CallTracer(self.capture.trace_dir, self.capture.trace_format)
        self.observers.add(self.tracer)
        self.recorder = FlightRecorder()          # the console's call ladders
        if self.admin.enabled:
            self.observers.add(self.recorder)
        self.errors = RecentErrors()
        self.history: History | None = None
        self.runner: web.AppRunner | None = None

    async def start(self, *, proxy: Any, shell: Any, health: Any, config: Any, media: Any = None,
                    drops: Any = None) -> None:
        """Scrape-time sources and the admin API. `drops`: the guard's counters."""
        self.metrics.attach(proxy=proxy, shell=shell, health=health, media=media,
                            certificate=config.teams.certificate, drops=drops)
        if self.admin.enabled:
            self.history = History(self.metrics, health, media)
            self.history.start(asyncio.get_running_loop())
            logging.getLogger("teamsbc").addHandler(self.errors)
            app = make_admin_app(proxy=proxy, shell=shell, health=health, metrics=self.metrics,
                                 cdr=self.cdr_writer, config=config, token=self.admin.token,
                                 media=media, tracer=self.tracer, recorder=self.recorder,
                                 history=self.history, errors=self.errors)
            self.runner = await start_admin(app, self.admin.listen, token=self.admin.token)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.history is not None:
            self.history.stop()
        logging.getLogger("teamsbc").removeHandler(self.errors)
        self.tracer.close()
        if self.hep is not None:
            self.hep.close()
        if self.cdr_writer is not None:
            self.cdr_writer.close()  # commits what is queued, then closes the store
