"""Who may use the admin listener from a browser: sessions, CSRF, login throttling and the
Host check. Pure bookkeeping (no aiohttp); `admin.py`'s middleware asks these questions.

The rules (OWASP Session Management and CSRF Prevention cheat sheets):
- The admin token is the one credential. With a token configured the console asks for it once
  (login form) and then carries a session: a random 256-bit id in a cookie that is HttpOnly
  (scripts cannot read it), SameSite=Strict (no other site's request carries it), Secure when
  the request came over TLS, and that expires (`IDLE` without a request, `LIFETIME` at most).
  Logging in issues a new id (no fixation); logging out forgets it.
- Every state-changing request of a session (POST, DELETE) carries the session's CSRF token
  (a form field or the `X-CSRF-Token` header), compared in constant time, and an `Origin`, when
  the browser sends one, equal to the listener's own.
- Without a token (a loopback listener only: admin_settings refuses anything else) nobody logs
  in, but a browser still gets a session for the CSRF token, and the `Host` header must name the
  loopback: a page elsewhere that rebinds its DNS name to 127.0.0.1 (DNS rebinding) is refused.
- Wrong tokens are throttled per client address: `MAX_FAILURES` within `FAILURE_WINDOW` and
  that address waits `FAILURE_WINDOW` seconds.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

COOKIE = "teamsbc_session"
LOGIN_COOKIE = "teamsbc_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
IDLE = 3600.0               # s without a request
LIFETIME = 12 * 3600.0      # s at most, then log in again
MAX_SESSIONS = 200
MAX_FAILURES = 5
FAILURE_WINDOW = 60.0
MAX_TRACKED = 10_000        # client addresses tracked for throttling


@dataclass(slots=True)
class Session:
    sid: str
    csrf: str
    created: float
    seen: float
    user: str               # "token" (logged in) or "loopback" (no token configured)


class Sessions:
    def __init__(self, *, idle: float = IDLE, lifetime: float = LIFETIME, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic):
        self.idle, self.lifetime, self.max = idle, lifetime, max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    # ------------------------------------------------------------------ sessions
    def new(self, user: str) -> Session:
        now = self.clock()
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now, user)
        self._sessions[s.sid] = s
        while len(self._sessions) > self.max:
            self._sessions.popitem(last=False)
        return s

    def get(self, sid: str | None) -> Session | None:
        """The live session of a cookie value (its idle clock restarts), or None."""
        if not sid:
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        now = self.clock()
        if now - s.seen > self.idle or now - s.created > self.lifetime:
            del self._sessions[sid]
            return None
        s.seen = now
        self._sessions.move_to_end(sid)
        return s

    def end(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def max_age(self, s: Session) -> int:
        """Cookie Max-Age: what is left of the session's lifetime."""
        return max(1, int(self.lifetime - (self.clock() - s.created)))

    def __len__(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------------ login throttle
    def throttled(self, client: str) -> float:
        """Seconds `client` must wait before trying a token again (0: may try now)."""
        now = self.clock()
        recent = [t for t in self._failures.get(client, []) if now - t < FAILURE_WINDOW]
        if len(recent) < MAX_FAILURES:
            return 0.0
        return max(0.0, FAILURE_WINDOW - (now - recent[-MAX_FAILURES]))

    def failed(self, client: str) -> None:
        now = self.clock()
        times = [t for t in self._failures.pop(client, []) if now - t < FAILURE_WINDOW]
        times.append(now)
        self._failures[client] = times[-MAX_FAILURES:]
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def token_matches(given: str | None, token: str) -> bool:
    return hmac.compare_digest((given or "").strip().encode(), token.encode())


def csrf_matches(given: str | None, session: Session) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())   # type: ignore[union-attr]


def origin_ok(origin: str | None, host: str | None, secure: bool) -> bool:
    """No Origin (not a browser, or a same-origin GET) or exactly this listener's origin."""
    if origin is None:
        return True
    if not host:
        return False
    return origin in (f"{'https' if secure else 'http'}://{host}",)


def loopback_host(host: str | None) -> bool:
    """A Host header naming the loopback: `localhost`, 127.0.0.0/8 or ::1, with any port."""
    if not host:
        return False
    h = host
    if h.startswith("["):
        h = h[1:h.find("]")] if "]" in h else h
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    if h.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def safe_next(path: str | None) -> str:
    """Where to go after logging in: a local path only (never //evil.example or a URL)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path
