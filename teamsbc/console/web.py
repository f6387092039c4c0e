"""The console on the admin listener: its routes, the login form, the live call stream
(server-sent events), static files and the headers every answer carries.

    sessions = Sessions()
    app = web.Application(middlewares=[security_headers, admin_auth])   # admin.py
    install(app, src, sessions, token=token)                           # adds the routes below

| route | what |
|---|---|
| `GET /` | the dashboard (pages.Pages) |
| `GET /console/{calls,call,cdr,cdr.csv,certificates,config}` | the other pages |
| `POST /console/certificates/renew` | start "renew now", then back to the certificates page |
| `GET,POST /console/login`, `POST /console/logout` | the token form; the session cookie |
| `GET /console/events` | server-sent events: the calls in progress, pushed on every call event |
| `GET /console/static/{name}` | console.css, console.js (no login needed) |

The page script is a file (CSP `script-src 'self'`, no inline script anywhere), pictures are
inline SVG styled by classes, and nothing comes from another origin (appliances often have no
internet): the headers below forbid it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from . import auth
from .html import Html, render, static_file, tag
from .pages import Pages
from .status import Sources, active_calls

log = logging.getLogger("teamsbc.console")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
           "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin"}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".txt": "text/plain"}
MAX_STREAMS = 16            # live call streams at once (each is a long-lived connection)
STREAM_KEEPALIVE = 15.0     # s between SSE comments while nothing happens
STREAM_MIN_GAP = 0.2        # s: call events closer than this are sent as one update
LIVE_ROWS = 500             # calls per update (the newest)
NEW_SESSION = "teamsbc_console_new_session"


def is_console(path: str) -> bool:
    return path == "/" or path.startswith("/console/")


def set_session_cookie(resp: web.StreamResponse, request: web.Request, sessions: auth.Sessions,
                       s: auth.Session) -> None:
    resp.set_cookie(auth.COOKIE, s.sid, httponly=True, samesite="Strict", path="/",
                    max_age=sessions.max_age(s), secure=request.secure)


@web.middleware
async def security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        resp = e
        for k, v in HEADERS.items():
            resp.headers.setdefault(k, v)
        raise
    for k, v in HEADERS.items():
        resp.headers.setdefault(k, v)
    if path_is_static(request.path) and resp.status == 200:
        resp.headers["Cache-Control"] = "private, max-age=300"
    return resp


def path_is_static(path: str) -> bool:
    return path.startswith("/console/static/")


class Console:
    def __init__(self, src: Sources, sessions: auth.Sessions, token: str | None):
        self.src, self.sessions, self.token = src, sessions, token
        self.pages = Pages(src, token_required=token is not None)
        self.streams = 0
        self.closing = asyncio.Event()

    # ------------------------------------------------------------------ login
    def _login_page(self, request: web.Request, *, error: str = "", status: int = 200,
                    next_: str | None = None) -> web.Response:
        nonce = secrets.token_urlsafe(24)     # login CSRF: this cookie and the form field must match
        text = render("login.html", fqdn=self.src.config.sbc.fqdn, nonce=nonce,
                      next=auth.safe_next(next_ if next_ is not None else request.query.get("next")),
                      error=tag("p", error, class_="alarm critical", id="login-error") if error else Html(""))
        resp = web.Response(text=text, content_type="text/html", charset="utf-8", status=status)
        resp.set_cookie(auth.LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/console/login",
                        max_age=600, secure=request.secure)
        return resp

    async def login_form(self, request: web.Request) -> web.Response:
        if self.token is None or self.sessions.get(request.cookies.get(auth.COOKIE)) is not None:
            raise web.HTTPSeeOther(auth.safe_next(request.query.get("next")))
        return self._login_page(request)

    async def login(self, request: web.Request) -> web.Response:
        if self.token is None:
            raise web.HTTPSeeOther("/")
        client = request.remote or "?"
        form = await request.post()
        next_ = auth.safe_next(str(form.get("next", "/")))
        wait = self.sessions.throttled(client)
        if wait:
            log.debug("console: login from %s throttled (%d wrong tokens in %.0f s)", client,
                        auth.MAX_FAILURES, auth.FAILURE_WINDOW)
            return self._login_page(request, error=f"Too many wrong tokens from {client}: wait {wait:.0f} s.",
                                    status=429, next_=next_)
        if not auth.origin_ok(request.headers.get("Origin"), request.host, request.secure):
            return self._login_page(request, error="Refused: the form was sent from another site.", status=403,
                                    next_=next_)
        nonce = request.cookies.get(auth.LOGIN_COOKIE)
        if not nonce or not auth.token_matches(str(form.get("nonce", "")), nonce):
            return self._login_page(request, error="The form expired: enter the token again.", status=403,
                                    next_=next_)
        if not auth.token_matches(str(form.get("token", "")), self.token):
            self.sessions.failed(client)
            log.warning("console: wrong admin token from %s", client)
            return self._login_page(request, error="Wrong token.", status=401, next_=next_)
        self.sessions.succeeded(client)
        self.sessions.end(request.cookies.get(auth.COOKIE))
        s = self.sessions.new("token")
        log.info("console: login from %s", client)
        resp = web.HTTPSeeOther(next_)
        set_session_cookie(resp, request, self.sessions, s)
        resp.del_cookie(auth.LOGIN_COOKIE, path="/console/login")
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.end(request.cookies.get(auth.COOKIE))
        resp = web.HTTPSeeOther("/console/login" if self.token else "/")
        resp.del_cookie(auth.COOKIE, path="/")
        raise resp

    # ------------------------------------------------------------------ static
    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = static_file(name)
        ext = name[name.rfind("."):] if "." in name else ""
        if data is None or ext not in STATIC_TYPES:
            raise web.HTTPNotFound()
        return web.Response(body=data, content_type=STATIC_TYPES[ext], charset="utf-8")

    # ------------------------------------------------------------------ live calls
    def live(self) -> dict:
        wall = time.time()
        calls = active_calls(self.src.metrics, self.src.recorder, wall)
        rows = []
        for c in calls[-LIVE_ROWS:]:
            rec = self.src.recorder.get(c["call_id"]) if self.src.recorder is not None else None
            rows.append({"call_id": c["call_id"], "direction": c["direction"], "caller": c["caller"],
                         "display": c["display"], "callee": c["callee"], "state": c["state"],
                         "started": c["started"], "started_at": rec.started if rec is not None else None,
                         "answered_at": rec.answered if rec is not None else None,
                         "duration": c["duration"]})
        return {"now": wall, "count": len(calls), "calls": rows}

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.streams >= MAX_STREAMS:
            raise web.HTTPServiceUnavailable(text=f"more than {MAX_STREAMS} live views open")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        changed = asyncio.Event()
        unsubscribe = self.src.recorder.subscribe(changed.set) if self.src.recorder is not None else (lambda: None)
        closing = asyncio.ensure_future(self.closing.wait())
        self.streams += 1
        try:
            await resp.write(b"retry: 2000\n\n")
            while not self.closing.is_set():
                changed.clear()
                await resp.write(b"event: calls\ndata: " + json.dumps(self.live()).encode() + b"\n\n")
                await asyncio.sleep(STREAM_MIN_GAP)     # call events of a burst: one update
                while not changed.is_set():     # until a call event (keep-alive comments meanwhile) or shutdown
                    waiter = asyncio.ensure_future(changed.wait())
                    done, _ = await asyncio.wait({waiter, closing}, timeout=STREAM_KEEPALIVE,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if done:
                        break
                    await resp.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass            # the browser went away
        finally:
            closing.cancel()
            unsubscribe()
            self.streams -= 1
        return resp

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing.set()      # long-lived streams end now: the SBC stops without waiting for them


def install(app: web.Application, src: Sources, sessions: auth.Sessions, *, token: str | None,
            plain: Any = None) -> Console:
    """The console's routes. ``plain``: the handler for `GET /` when the client does not ask for
    HTML (curl, scripts): the admin API's text index; browsers get the dashboard."""
    c = Console(src, sessions, token)
    p = c.pages
    r = app.router

    async def root(request: web.Request) -> web.StreamResponse:
        if plain is not None and "text/html" not in request.headers.get("Accept", ""):
            return await plain(request)
        return await p.dashboard(request)

    r.add_get("/", root)
    r.add_get("/console/", lambda request: _redirect("/"))
    r.add_get("/console/calls", p.calls)
    r.add_get("/console/call", p.call)
    r.add_get("/console/cdr", p.cdr)
    r.add_get("/console/cdr.csv", p.cdr_csv)
    r.add_get("/console/certificates", p.certificates)
    r.add_post("/console/certificates/renew", p.renew)
    r.add_get("/console/config", p.config)
    r.add_get("/console/login", c.login_form)
    r.add_post("/console/login", c.login)
    r.add_post("/console/logout", c.logout)
    r.add_get("/console/events", c.events)
    r.add_get("/console/static/{name}", c.static)
    app.on_shutdown.append(c.on_shutdown)
    return c


async def _redirect(to: str) -> web.Response:
    raise web.HTTPSeeOther(to)


def forbidden(text: str) -> web.Response:
    return web.Response(text=render("error.html", title="Refused", message=text), status=403,
                        content_type="text/html", charset="utf-8")
