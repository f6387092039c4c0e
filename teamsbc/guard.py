"""Hostile networks (issue 6): who may talk to the SBC, how much of it, and who is banned.

Sans-IO: every question takes `now` (seconds on any monotonic clock) and answers with a
verdict; nothing here touches a socket. The shell asks at the door, the proxy per message:

    TCP accept (before TLS)   admit_connection()   Teams ranges, PBX addresses, bans, connection
                                                   rate and open connections per source
    TLS handshake failed      handshake_failed()   counts toward a ban
    UDP datagram              admit_address()      unknown PBX-leg source, bans (no parsing at all)
    before parsing            admit()              the same, plus the strangers' token buckets
    after parsing             check_limits()       security.max_* below the parser's own limits
                              parse_failed()       counts toward a ban
    before routing a request  screen()             scanner User-Agents, new-request buckets of
                                                   the PBX and Teams, concurrent calls (503)
    after answering it        answered()           403/404/484 to strangers count toward a ban; a
                                                   401/407 to credentials that failed counts toward
                                                   a digest lockout, for any source

Sources fall in three classes that never share a limit, so a flood from one cannot use up
what another gets:

    pbx       a configured PBX address (pbx.address, teams.tenants.*.pbx): its own generous
              bucket for new requests, no connection limits, never banned, User-Agent not judged
    teams     at accept: an address in security.teams_ranges (or a teams.resolve target); after
              that every message on the Teams leg (mutual TLS): its own generous buckets for
              new requests and connections, never banned
    stranger  anything else: dropped at the door on the Teams listener and, by default
              (security.unknown_source: drop), on the PBX leg; with `403` it gets small per-address
              buckets for every message plus one bucket shared by all strangers (spoofed-source
              floods), and is banned after security.ban_after failures in ban_window seconds

Digest guessing (pbx.auth; svcrack made 5,000 guesses from the PBX address, issue 12): a source
whose credentials fail security.ban_auth_after times within ban_window is locked out for
ban_time, whatever its class: its new requests that would need credentials are dropped unheard,
so no further guess is evaluated. A PBX address locked out this way keeps its dialogs
(in-dialog requests, responses, OPTIONS pass) but cannot start calls until the lockout ends:
over UDP a spoofed source can cause that (docs/security.md: use TCP on the PBX leg).

Every drop or refusal increments `counters[reason]` (the metrics' `rate-limit drops`). Tables
keyed by source are bounded by security.max_sources (the oldest entry goes first), so a flood of
spoofed addresses costs bounded memory.
"""
from __future__ import annotations

import ipaddress
import json
import logging
from collections import OrderedDict, deque
from typing import Any, Callable

from .config import Config
from .decisions import PBX, TEAMS, Drop, Reply, Send, Source
from .digest import AUTH_EXEMPT
from .events import CallEnded, CallEvent, CallFailed, CallStarted
from .sip import grammar as g
from .sip.errors import ParseError
from .sip.message import Message, Request, Response
from .sip.uri import parse_via

log = logging.getLogger("teamsbc.guard")

PBX_CLASS, TEAMS_CLASS, STRANGER = "pbx", "teams", "stranger"
_REFUSALS = {b"403": "refused_403", b"404": "refused_404", b"484": "refused_484"}
_CHALLENGES = {b"401": "authorization", b"407": "proxy-authorization"}  # -> the header that failed
_CLASS_CACHE = 4096


class TokenBuckets:
    """One token bucket per key (rate tokens per second, at most `burst`); `max_keys` buckets
    at most, the least recently used one forgotten first. rate 0 = no limit."""

    __slots__ = ("rate", "burst", "max_keys", "_b")

    def __init__(self, rate: float, burst: float, max_keys: int):
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._b: OrderedDict[Any, list[float]] = OrderedDict()

    def take(self, key: Any, now: float) -> bool:
        if self.rate <= 0:
            return True
        b = self._b.get(key)
        if b is None:
            if len(self._b) >= self.max_keys:
                self._b.popitem(last=False)
            b = self._b[key] = [self.burst, now]
        else:
            self._b.move_to_end(key)
            if now > b[1]:
                b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
                b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False

    def forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they are what a new bucket would be."""
        full = [k for k, (t, at) in self._b.items() if t + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._b[k]

    def __len__(self) -> int:
        return len(self._b)


class CallTable:
    """Calls in progress, per tenant, for security.max_calls / max_calls_per_tenant. Fed by the
    proxy's call events (Gate.track): a call counts from CallStarted until CallFailed or
    CallEnded; one without any in-dialog request for call_idle_timeout seconds stops counting
    (a BYE lost across a restart must not hold capacity forever)."""

    def __init__(self, guard: "Guard"):
        self.guard = guard
        self.active: OrderedDict[str, list] = OrderedDict()   # call-id -> [tenant, last seen]
        self.per_tenant: dict[str, int] = {}

    def track(self, ev: CallEvent, now: float) -> None:
        if isinstance(ev, CallStarted):
            self._start(ev.call_id, ev.tenant, now)
        elif isinstance(ev, (CallFailed, CallEnded)):
            self._end(ev.call_id)

    def _start(self, call_id: str, tenant: str | None, now: float) -> None:
        if call_id in self.active:
            return
        cap = max(2 * self.guard.settings.max_calls, 100_000)
        while len(self.active) >= cap:
            self._end(next(iter(self.active)))
        t = (tenant or self.guard.base).lower()
        self.active[call_id] = [t, now]
        self.per_tenant[t] = self.per_tenant.get(t, 0) + 1

    # --- guard side
    def touch(self, call_id: str, now: float) -> None:
        e = self.active.get(call_id)
        if e is not None:
            e[1] = now
            self.active.move_to_end(call_id)

    def expire(self, now: float) -> None:
        idle = self.guard.settings.call_idle_timeout
        while self.active:
            call_id, (_, seen) = next(iter(self.active.items()))
            if seen > now - idle:
                break
            self._end(call_id)

    def count(self, tenant: str | None = None) -> int:
        return len(self.active) if tenant is None else self.per_tenant.get(tenant, 0)

    def _end(self, call_id: str) -> None:
        e = self.active.pop(call_id, None)
        if e is not None:
            n = self.per_tenant.get(e[0], 0) - 1
            if n > 0:
                self.per_tenant[e[0]] = n
            else:
                self.per_tenant.pop(e[0], None)


class Guard:
    """The Gate and the Door of decisions.py."""

    terminated = False  # on the proxy's timer heap (add_timed) for reports and housekeeping

    def __init__(self, config: Config,
                 tenant_of_call: Callable[[Request, Source], str | None] | None = None, *,
                 share: float = 1.0, on_ban: Callable[[str, float], None] | None = None):
        """`share`: the part of the calls this guard sees (1/N with sbc.workers = N: each
        worker enforces its share of every rate, burst and call limit, rounded up, so the
        SBC as a whole never admits more than configured). `on_ban(ip, until)`: a ban this
        guard decided, for the other workers (`ban`)."""
        s = self.settings = config.security
        self.on_ban = on_ban
        part = (lambda v: v * share) if share < 1.0 else (lambda v: v)
        whole = (lambda v: -(-v * share // 1) if v else v) if share < 1.0 else (lambda v: v)
        self.max_calls = int(whole(s.max_calls))
        self.max_calls_per_tenant = int(whole(s.max_calls_per_tenant))
        self.ban_after = int(whole(s.ban_after))
        self.base = config.sbc.fqdn
        self.tenants = set(config.teams.tenants)
        self._tenant_of_call = tenant_of_call  # carrier mode: routing.Router.tenant_of_call
        nets = [ipaddress.ip_network(r) for r in s.teams_ranges]
        for hp in config.teams.resolve.values():
            try:  # where the operator says Teams is (a lab) is Teams too
                nets.append(ipaddress.ip_network(hp.host))
            except ValueError:
                pass
        self._teams_nets = nets
        self.pbx_hosts = {config.pbx.address.host} | {t.pbx.host for t in config.teams.tenants.values() if t.pbx}
        self._ua = tuple(u.lower() for u in s.scanner_user_agents)
        cap = s.max_sources
        self._requests = {
            STRANGER: TokenBuckets(part(s.stranger_rate), whole(s.stranger_burst), cap),
            PBX_CLASS: TokenBuckets(part(s.pbx_rate), whole(s.pbx_burst), cap),
            TEAMS_CLASS: TokenBuckets(part(s.teams_rate), whole(s.teams_burst), cap),
        }
        self._strangers = TokenBuckets(part(s.strangers_rate), whole(s.strangers_burst), 1)
        self._connects = {
            STRANGER: TokenBuckets(s.stranger_connect_rate, s.stranger_connect_burst, cap),
            TEAMS_CLASS: TokenBuckets(s.teams_connect_rate, s.teams_connect_burst, cap),
        }
        self._max_conns = {STRANGER: s.stranger_max_connections, TEAMS_CLASS: s.teams_max_connections}
        self._conns: dict[str, list] = {}           # ip -> open connection handles (is_closing())
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._bans: OrderedDict[str, float] = OrderedDict()   # ip -> banned until
        self._auth_failures: OrderedDict[str, deque] = OrderedDict()
        self._auth_locked: OrderedDict[str, float] = OrderedDict()  # ip -> no credentials checked until
        self._class: dict[tuple[str, str], str] = {}
        self.counters: dict[str, int] = {}
        self.calls = CallTable(self)
        self.now = 0.0
        self._noted: set[str] = set()
        self._reported: dict[str, int] = {}
        self._next_report: float | None = None
        self._lower_limits = (s.max_message_size < g.MAX_MESSAGE_SIZE or s.max_headers < g.MAX_HEADERS
                              or s.max_line_length < g.MAX_LINE_LENGTH)

    @property
    def drops(self) -> dict[str, int]:
        """What metrics read as `rate-limit drops` (reason -> count)."""
        return self.counters

    # ------------------------------------------------------------------ who is it
    def classify(self, ip: str, leg: str) -> str:
        """The class of a message's source. Every message on the Teams leg arrives over mutual
        TLS on a connection that passed the range check at accept, or on one we opened to a
        Teams name: it is Teams, whatever the address (a range Microsoft adds later must not
        turn our own connections into strangers)."""
        if leg == PBX:
            return PBX_CLASS if ip in self.pbx_hosts else STRANGER
        return TEAMS_CLASS

    def in_teams_ranges(self, ip: str) -> bool:
        k = self._class.get(ip)
        if k is None:
            k = STRANGER
            try:
                a = ipaddress.ip_address(ip.split("%", 1)[0])
                if a.version == 6 and a.ipv4_mapped is not None:
                    a = a.ipv4_mapped
                if any(a in n for n in self._teams_nets):
                    k = TEAMS_CLASS
            except ValueError:
                pass
            if len(self._class) >= _CLASS_CACHE:
                self._class.clear()
            self._class[ip] = k
        return k == TEAMS_CLASS

    def banned(self, ip: str, now: float) -> bool:
        until = self._bans.get(ip)
        if until is None:
            return False
        if until <= now:
            del self._bans[ip]
            return False
        return True

    # ------------------------------------------------------------------ the door
    def admit_connection(self, addr: tuple, leg: str, now: float, handle: Any = None) -> bool:
        """A TCP connection was accepted (TLS not started). False: close it at once.
        `handle` (anything with is_closing()) lets the guard count open connections."""
        self.now = now
        ip = str(addr[0])
        k = (TEAMS_CLASS if self.in_teams_ranges(ip) else STRANGER) if leg == TEAMS else self.classify(ip, leg)
        if k == STRANGER:
            if leg == TEAMS:
                return self._drop("outside_teams_ranges", ip)
            if self.settings.unknown_source == "drop":
                return self._drop("unknown_source", ip)
            if self.banned(ip, now):
                return self._drop("banned", ip)
        if k == PBX_CLASS:
            return True
        limit = self._max_conns[k] if handle is not None else 0
        live = [h for h in self._conns.get(ip, ()) if not h.is_closing()] if limit else []
        if len(live) >= limit > 0:
            self._fail(ip, k, now)
            return self._drop("connections_per_source", ip)
        if not self._connects[k].take(ip, now):
            self._fail(ip, k, now)
            return self._drop("connection_rate", ip)
        if limit:
            live.append(handle)
            self._conns[ip] = live
        return True

    def handshake_failed(self, addr: tuple, now: float) -> None:
        ip = str(addr[0])
        self._count("handshake_failed", ip)
        self._fail(ip, TEAMS_CLASS if self.in_teams_ranges(ip) else STRANGER, now)

    def admit_address(self, ip: str, leg: str, now: float) -> bool:
        """Cheap, before anything is parsed: a non-PBX source on the PBX leg (drop policy) or a
        banned stranger gets nothing at all."""
        if leg == PBX and ip in self.pbx_hosts:
            return True
        if leg == PBX and self.settings.unknown_source == "drop":
            return self._drop("unknown_source", ip)
        if leg == PBX and self._bans and self.banned(ip, now):
            return self._drop("banned", ip)
        return True

    def admit(self, src: Source, now: float) -> bool:
        """Before parsing a message: admit_address(), then strangers pay for every message
        (requests, responses, ACKs, retransmissions) from their own and the shared bucket."""
        self.now = now
        ip = src.addr[0]
        if not self.admit_address(ip, src.leg, now):
            return False
        if self.classify(ip, src.leg) != STRANGER:
            return True
        if not self._requests[STRANGER].take(ip, now):
            self._fail(ip, STRANGER, now)
            return self._drop("rate_limited", ip)
        if not self._strangers.take(None, now):
            return self._drop("strangers_rate_limited", ip)
        return True

    # ------------------------------------------------------------------ parsed messages
    def check_limits(self, msg: Message, size: int) -> None:
        """security.max_message_size / max_headers / max_line_length when set below the parser's
        own limits: the same ParseError (and so the same 513/400 answer) the parser would give.
        Also "Contact: *", legal only in REGISTER (RFC 3261 10.2.2, 20.10): the parser lets it
        through, the Teams rewriting cannot parse it, and a 2xx carrying it would strand its
        transactions in the proxy (reported: proxy.py _client_events is not exception-safe)."""
        if not (isinstance(msg, Request) and msg.method == "REGISTER") and "*" in msg.headers.get_all("contact"):
            raise ParseError("Contact * outside REGISTER")
        if isinstance(msg, Response):
            vias = msg.headers.get_all("via")
            if len(vias) > 1:
                parse_via(vias[1])  # the parser checks the top Via only; this one goes on top upstream
        if not self._lower_limits:
            return
        s = self.settings
        if size > s.max_message_size:
            raise ParseError("Message too large", 513)
        if len(msg.headers) > s.max_headers:
            raise ParseError("Too many headers")
        if s.max_line_length < g.MAX_LINE_LENGTH:
            for name, value in msg.headers:
                if len(name) + len(value) + 2 > s.max_line_length:
                    raise ParseError("Header line too long")

    def parse_failed(self, src: Source, now: float) -> None:
        ip = src.addr[0]
        self._count("malformed", ip)
        self._fail(ip, self.classify(ip, src.leg), now)

    def screen(self, req: Request, src: Source, now: float) -> Drop | Reply | None:
        """A request that is not a retransmission, before routing: None (go on), Drop (no
        answer) or Reply (503 + Retry-After beyond a limit: Teams then fails over)."""
        self.now = now
        ip = src.addr[0]
        k = self.classify(ip, src.leg)
        if k == STRANGER and src.leg == PBX and self.settings.unknown_source == "drop":
            self._drop("unknown_source", ip)
            return Drop(f"{ip} is not a configured PBX")
        if k != PBX_CLASS and self._ua:
            ua = (req.headers.get("user-agent") or "").lower()
            if ua and any(p in ua for p in self._ua):
                self._fail(ip, k, now)
                self._drop("scanner_user_agent", ip)
                return Drop(f"scanner User-Agent {ua[:60]!r}")
        new = req.to_addr.tag is None
        if not new:
            self.calls.touch(req.call_id, now)
            return None
        if self._auth_locked and req.method not in AUTH_EXEMPT and self._locked_out(ip, now):
            self._drop("auth_locked_out", ip)
            return Drop(f"{ip} is locked out after security.ban_auth_after failed authentications")
        if k != STRANGER and req.method not in ("ACK", "CANCEL") and not self._requests[k].take(ip, now):
            self._drop(f"rate_limited_{k}", ip)
            return self._busy(f"more than security.{k}_rate new requests per second from {ip}")
        if req.method == "INVITE" and not (k == STRANGER and src.leg == PBX):
            return self._admit_call(req, src, now)
        return None

    def answered(self, req: Request, src: Source, out: list, now: float) -> None:
        """What we answered a stranger's request: 403/404/484 count toward a ban. For any
        source, 401/407 to a request whose credentials failed (not a first challenge, not a
        stale nonce: RFC 7616 3.5) counts toward a digest lockout."""
        ip = src.addr[0]
        if self.settings.ban_auth_after:
            for s in out:
                if isinstance(s, Send) and s.to is src and s.data[8:11] in _CHALLENGES:
                    if req.headers.get(_CHALLENGES[s.data[8:11]]) and b"stale=true" not in s.data:
                        self._auth_failed(ip, now)
        if self.classify(ip, src.leg) != STRANGER:
            return
        for s in out:
            if isinstance(s, Send) and s.to is src and s.data[:8] == b"SIP/2.0 ":
                reason = _REFUSALS.get(s.data[8:11])
                if reason is not None:
                    self._count(reason, ip)
                    self._fail(ip, STRANGER, now)

    # ------------------------------------------------------------------ calls
    def track(self, event: CallEvent, now: float) -> None:
        self.calls.track(event, now)

    def tenant_of(self, req: Request, src: Source) -> str:
        if src.leg == TEAMS:
            host = req.ruri.host.lower().rstrip(".")
            return host if host in self.tenants else self.base
        if self._tenant_of_call is not None:
            return (self._tenant_of_call(req, src) or self.base).lower()
        return self.base

    def _admit_call(self, req: Request, src: Source, now: float) -> Reply | None:
        s = self.settings
        if not (self.max_calls or self.max_calls_per_tenant):
            return None
        self.calls.expire(now)
        if self.max_calls and self.calls.count() >= self.max_calls:
            self._drop("calls_total", src.addr[0])
            return self._busy(f"{s.max_calls} calls in progress (security.max_calls)")
        if self.max_calls_per_tenant:
            tenant = self.tenant_of(req, src)
            if self.calls.count(tenant) >= self.max_calls_per_tenant:
                self._drop("calls_tenant", src.addr[0])
                return self._busy(f"{s.max_calls_per_tenant} calls in progress for {tenant} "
                                  "(security.max_calls_per_tenant)")
        return None

    def _busy(self, why: str) -> Reply:
        return Reply(503, "Service Unavailable", [("Retry-After", str(self.settings.retry_after))], log=why)

    # ------------------------------------------------------------------ failures and bans
    def _fail(self, ip: str, klass: str, now: float) -> None:
        """One failure of a stranger; the PBX and Teams are never banned (they would lose calls)."""
        s = self.settings
        if klass != STRANGER or self.ban_after <= 0 or s.ban_time <= 0:
            return
        q = self._failures.get(ip)
        if q is None:
            if len(self._failures) >= s.max_sources:
                self._failures.popitem(last=False)
            q = self._failures[ip] = deque()
        else:
            self._failures.move_to_end(ip)
        q.append(now)
        while q and q[0] <= now - s.ban_window:
            q.popleft()
        if len(q) >= self.ban_after:
            del self._failures[ip]
            self.ban(ip, now + s.ban_time)
            self.counters["bans"] = self.counters.get("bans", 0) + 1
            log.warning("banned %s for %gs after %d failures within %gs", ip, s.ban_time,
                        len(q), s.ban_window)
            if self.on_ban is not None:
                self.on_ban(ip, now + s.ban_time)

    def ban(self, ip: str, until: float) -> None:
        """Refuse `ip` until `until` (this guard's decision, or another worker's)."""
        if ip not in self._bans and len(self._bans) >= self.settings.max_sources:
            self._bans.popitem(last=False)
        self._bans[ip] = until
        self._bans.move_to_end(ip)

    def _auth_failed(self, ip: str, now: float) -> None:
        s = self.settings
        self._count("auth_failed", ip)
        q = self._auth_failures.get(ip)
        if q is None:
            if len(self._auth_failures) >= s.max_sources:
                self._auth_failures.popitem(last=False)
            q = self._auth_failures[ip] = deque()
        q.append(now)
        while q and q[0] <= now - s.ban_window:
            q.popleft()
        if len(q) >= s.ban_auth_after:
            del self._auth_failures[ip]
            if len(self._auth_locked) >= s.max_sources:
                self._auth_locked.popitem(last=False)
            self._auth_locked[ip] = now + s.ban_time
            self._auth_locked.move_to_end(ip)
            self.counters["auth_lockouts"] = self.counters.get("auth_lockouts", 0) + 1
            log.warning("locked out %s for %gs after %d failed authentications within %gs: its new "
                        "requests are dropped unheard (security.ban_auth_after)", ip, s.ban_time,
                        s.ban_auth_after, s.ban_window)

    def _locked_out(self, ip: str, now: float) -> bool:
        until = self._auth_locked.get(ip)
        if until is None:
            return False
        if until <= now:
            del self._auth_locked[ip]
            return False
        return True

    def _count(self, reason: str, ip: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        if reason not in self._noted:
            # one line per reason per report period: logging every drop would itself be a flood
            self._noted.add(reason)
            log.info("guard: %s from %s (further ones counted, not logged, until the next report)",
                     reason.replace("_", " "), ip)

    def _drop(self, reason: str, ip: str) -> bool:
        self._count(reason, ip)
        return False

    # ------------------------------------------------------------------ clock
    def start(self, now: float) -> None:
        """Report counters and forget stale entries every security.report_interval seconds
        (the proxy runs this through add_timed())."""
        self.now = now
        if self.settings.report_interval > 0:
            self._next_report = now + self.settings.report_interval

    def next_timer(self) -> float | None:
        return self._next_report

    def handle_timer(self, now: float) -> list:
        self.now = now
        self.housekeeping(now)
        if self.counters != self._reported:
            log.info("guard counters: %s", json.dumps(self.counters, sort_keys=True))
            self._reported = dict(self.counters)
        self._noted.clear()
        if self._next_report is not None:
            self._next_report = now + self.settings.report_interval
        return []

    def housekeeping(self, now: float) -> None:
        while self._bans:
            ip, until = next(iter(self._bans.items()))
            if until > now:
                break  # bans are ordered by expiry: all have the same length
            del self._bans[ip]
        while self._auth_locked and next(iter(self._auth_locked.values())) <= now:
            self._auth_locked.popitem(last=False)
        window = self.settings.ban_window
        for table in (self._failures, self._auth_failures):
            for ip in [ip for ip, q in table.items() if not q or q[-1] <= now - window]:
                del table[ip]
        for ip in list(self._conns):
            live = [h for h in self._conns[ip] if not h.is_closing()]
            if live:
                self._conns[ip] = live
            else:
                del self._conns[ip]
        for b in (*self._requests.values(), *self._connects.values()):
            b.forget_full(now)
        self.calls.expire(now)

    def sizes(self) -> dict[str, int]:
        """How many entries each table holds (tests: memory stays bounded)."""
        return {"requests": sum(len(b) for b in self._requests.values()),
                "connects": sum(len(b) for b in self._connects.values()),
                "failures": len(self._failures), "bans": len(self._bans), "conns": len(self._conns),
                "auth_failures": len(self._auth_failures), "auth_locked": len(self._auth_locked),
                "calls": len(self.calls.active), "class_cache": len(self._class)}
