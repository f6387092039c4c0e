"""Counters and gauges for Prometheus (`GET /metrics` on the admin API).

`Metrics` is an `events.Observer`: the shell hands it the call events and each SIP message on
the wire, so what happens there is a dictionary increment and nothing else. Everything that
already lives somewhere else (the proxy's per-method counters, shell counters, peer health,
rtpengine, the certificate) is read when Prometheus scrapes, from the objects handed to
`attach()`:

    metrics = Metrics()
    observers.add(metrics)                     # the shell's fan-out (events.Observers)
    metrics.attach(proxy=proxy, shell=shell, health=router.health,
                   certificate=config.teams.certificate,
                   media=pool,                 # optional: anything with status() -> list[dict]
                   drops=guard.drops)          # optional: Mapping[reason, count] or a callable
    text = metrics.render()                    # Prometheus text format 0.0.4

Read at scrape time (all optional): the proxy's `counters`, `stats`, `pending_requests` and
`active_transactions`; the shell's `stats` and `conns`; the `HealthBook`; the `MediaPool`'s
`status()`; the guard's drop counters (a mapping or a callable returning one).

The same object keeps the table of calls in progress that `GET /calls` shows.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from . import __version__
from .events import Counters, MediaStats, Observer
from .timefmt import iso_utc

if TYPE_CHECKING:
    from .health import HealthBook
    from .media.pool import MediaPool
    from .proxy import Proxy
    from .transport import Shell

DIRECTIONS = ("teams->pbx", "pbx->teams")
LEGS = ("teams", "pbx")
PEER_STATES = ("up", "down", "cooling")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MAX_CALLS = 100_000          # calls tracked at once; the oldest goes first beyond that
CALL_TTL = 24 * 3600.0       # a call without BYE (lost across a restart) is forgotten after this


class ActiveCall:
    __slots__ = ("call_id", "direction", "tenant", "caller", "callee", "started", "answered")

    def __init__(self, call_id: str, direction: str, tenant: str | None, caller: str, callee: str,
                 started: float):
        self.call_id, self.direction, self.tenant = call_id, direction, tenant
        self.caller, self.callee, self.started = caller, callee, started
        self.answered: float | None = None

    def as_dict(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        return {"call_id": self.call_id, "direction": self.direction, "tenant": self.tenant,
                "caller": self.caller, "callee": self.callee,
                "started": iso_utc(self.started), "answered": iso_utc(self.answered),
                "duration": round(now - self.answered, 3) if self.answered else None}


class Metrics(Observer):
    def __init__(self, *, max_calls: int = MAX_CALLS, call_ttl: float = CALL_TTL,
                 clock: Callable[[], float] = time.monotonic):
        # hot-path counters: nested dicts, no tuple keys on the per-message path
        self.messages: dict[str, dict[str, list[int]]] = {d: {leg: [0, 0] for leg in LEGS}
                                                          for d in ("in", "out")}  # [count, bytes]
        self.calls_total: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
        self.calls_answered: dict[str, int] = dict.fromkeys(DIRECTIONS, 0)
        self.calls_failed: dict[tuple[str, int], int] = {}
        self.calls_ended: dict[tuple[str, str], int] = {}
        self.media_deletes = 0
        self.media_totals = {"packets": 0, "bytes": 0, "errors": 0}
        self.calls: dict[str, ActiveCall] = {}
        self.max_calls = max_calls
        self.call_ttl = call_ttl
        self.started = time.time()
        self.clock = clock   # the core's clock (loop.time() == time.monotonic() on Linux)
        # scrape-time sources (attach())
        self.proxy: Proxy | None = None
        self.shell: Shell | None = None
        self.health: HealthBook | None = None
        self.media: MediaPool | None = None
        self.certificate: Path | None = None
        self.drops: Mapping[str, int] | Callable[[], Mapping[str, int]] | None = None
        self._cert_cache: tuple[Any, float | None, float] = (None, None, 0.0)

    def attach(self, *, proxy: Proxy | None = None, shell: Shell | None = None,
               health: HealthBook | None = None, media: MediaPool | None = None,
               certificate: Path | str | None = None,
               drops: Mapping[str, int] | Callable[[], Mapping[str, int]] | None = None) -> "Metrics":
        """Sources read when Prometheus scrapes (each optional; attach again to change one)."""
        if proxy is not None:
            self.proxy = proxy
        if shell is not None:
            self.shell = shell
        if health is not None:
            self.health = health
        if media is not None:
            self.media = media
        if drops is not None:   # an empty mapping too: the guard's counters fill up later
            self.drops = drops
        if certificate is not None:
            self.certificate = Path(certificate)
        return self

    # ------------------------------------------------------------------ Observer (hot path)
    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        c = self.messages[direction][leg]
        c[0] += 1
        c[1] += len(data)

    def call_started(self, call_id: str, direction: str, tenant: str | None, caller: str,
                     callee: str, wall: float) -> None:
        calls = self.calls
        if call_id in calls:
            return
        if len(calls) >= self.max_calls:
            del calls[next(iter(calls))]  # the oldest (insertion order)
        calls[call_id] = ActiveCall(call_id, direction, tenant, caller, callee, wall)
        self.calls_total[direction] = self.calls_total.get(direction, 0) + 1

    def call_answered(self, call_id: str, wall: float) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.answered is None:
            call.answered = wall
            self.calls_answered[call.direction] = self.calls_answered.get(call.direction, 0) + 1

    def call_failed(self, call_id: str, status: int, reason: str, wall: float) -> None:
        call = self.calls.pop(call_id, None)
        k = (call.direction if call else "unknown", status)
        self.calls_failed[k] = self.calls_failed.get(k, 0) + 1

    def call_ended(self, call_id: str, by: str, wall: float) -> None:
        call = self.calls.pop(call_id, None)
        k = (call.direction if call else "unknown", by)
        self.calls_ended[k] = self.calls_ended.get(k, 0) + 1

    def media_stats(self, stats: MediaStats, wall: float) -> None:
        self.media_deletes += 1
        for k, v in stats.rtp.items():
            self.media_totals[k] += v

    # ------------------------------------------------------------------ calls in progress
    def active_calls(self, now: float | None = None) -> list[dict]:
        now = time.time() if now is None else now
        self._expire(now)
        return [c.as_dict(now) for c in self.calls.values()]

    def _expire(self, now: float) -> None:
        cutoff = now - self.call_ttl
        while self.calls:
            first = next(iter(self.calls.values()))
            if first.started >= cutoff:
                break
            del self.calls[first.call_id]

    # ------------------------------------------------------------------ rendering
    def render(self, now: float | None = None) -> str:
        """The Prometheus text exposition (format 0.0.4). `now` is the core's clock (for peer
        health); wall-clock values use time.time()."""
        now = self.clock() if now is None else now
        wall = time.time()
        self._expire(wall)
        w = _Writer()
        w.family("teamsbc_build_info", "gauge", "Version of the running SBC.",
                 [({"version": __version__}, 1)])
        w.family("teamsbc_start_time_seconds", "gauge", "When this process started (Unix time).",
                 [({}, self.started)])

        active = dict.fromkeys(DIRECTIONS, 0)
        answered = dict.fromkeys(DIRECTIONS, 0)
        for c in self.calls.values():
            active[c.direction] = active.get(c.direction, 0) + 1
            if c.answered is not None:
                answered[c.direction] = answered.get(c.direction, 0) + 1
        w.family("teamsbc_calls_active", "gauge", "Calls in progress (set up or answered, not ended).",
                 [({"direction": d}, n) for d, n in active.items()])
        w.family("teamsbc_calls_answered_active", "gauge", "Answered calls in progress.",
                 [({"direction": d}, n) for d, n in answered.items()])
        w.family("teamsbc_calls_total", "counter", "New calls relayed or refused, by direction.",
                 [({"direction": d}, n) for d, n in self.calls_total.items()])
        w.family("teamsbc_calls_answered_total", "counter", "Calls answered (2xx to the INVITE).",
                 [({"direction": d}, n) for d, n in self.calls_answered.items()])
        w.family("teamsbc_calls_failed_total", "counter",
                 "Calls that ended without answer, by final status code sent to the caller.",
                 [({"direction": d, "code": str(code)}, n)
                  for (d, code), n in sorted(self.calls_failed.items())])
        w.family("teamsbc_calls_ended_total", "counter",
                 "Answered calls ended by a BYE, by the leg the BYE came from.",
                 [({"direction": d, "by": by}, n) for (d, by), n in sorted(self.calls_ended.items())])

        counters = self.proxy.counters if self.proxy is not None else Counters()
        w.family("teamsbc_sip_requests_total", "counter", "SIP requests received, by leg and method.",
                 [({"leg": leg, "method": m}, n) for leg, d in counters.requests.items()
                  for m, n in sorted(d.items())])
        w.family("teamsbc_sip_responses_total", "counter",
                 "SIP responses received, by leg, status code and CSeq method.",
                 [({"leg": leg, "code": str(code), "method": m}, n) for leg, d in counters.responses.items()
                  for (code, m), n in sorted(d.items())])
        w.family("teamsbc_sip_messages_total", "counter", "SIP messages on the wire (decrypted on TLS).",
                 [({"leg": leg, "direction": dr}, c[0]) for dr, legs in self.messages.items()
                  for leg, c in legs.items()])
        w.family("teamsbc_sip_bytes_total", "counter", "Bytes of SIP messages on the wire.",
                 [({"leg": leg, "direction": dr}, c[1]) for dr, legs in self.messages.items()
                  for leg, c in legs.items()])
        w.family("teamsbc_transaction_timeouts_total", "counter",
                 "Client transactions that timed out (Timer B/F), by method.",
                 [({"method": m}, n) for m, n in sorted(counters.timeouts.items())])

        self._render_proxy(w)
        self._render_shell(w)
        self._render_health(w, now)
        self._render_media(w)
        self._render_certificate(w)
        self._render_drops(w)
        return w.text()

    def _render_proxy(self, w: "_Writer") -> None:
        p = self.proxy
        if p is None:
            return
        stats = p.stats
        for key, name, help_ in (
                ("parse_errors", "teamsbc_sip_parse_errors_total", "Messages that did not parse."),
                ("rejected", "teamsbc_sip_rejected_total", "Requests refused or dropped by the SBC itself."),
                ("failovers", "teamsbc_failovers_total", "Calls moved to the next Teams proxy.")):
            if key in stats:
                w.family(name, "counter", help_, [({}, stats[key])])
        w.family("teamsbc_requests_pending", "gauge", "Relayed requests waiting for a final response.",
                 [({}, p.pending_requests)])
        w.family("teamsbc_transactions_active", "gauge", "Server and client transactions alive.",
                 [({}, p.active_transactions)])

    def _render_shell(self, w: "_Writer") -> None:
        s = self.shell
        if s is None:
            return
        stats = s.stats
        for key, name, help_ in (
                ("tls_handshakes", "teamsbc_tls_handshakes_total", "TLS handshakes completed with Teams (both directions)."),
                ("tls_failures", "teamsbc_tls_failures_total", "TLS handshakes failed or refused (both directions)."),
                ("cert_reloads", "teamsbc_certificate_reloads_total", "Certificates reloaded into the live TLS contexts."),
                ("worker_handovers", "teamsbc_worker_handovers_total",
                 "Messages read by one worker and handed to the worker that owns the call (sbc.workers)."),
                ("workers", "teamsbc_workers", "Worker processes alive (sbc.workers).")):
            if key in stats:
                w.family(name, "counter", help_, [({}, stats[key])])
        conns: dict[tuple[str, str], int] = {}
        for c in list(s.conns):
            if c.closed:
                continue
            k = (c.leg, c.proto)
            conns[k] = conns.get(k, 0) + 1
        w.family("teamsbc_connections", "gauge", "Open TCP/TLS connections, by leg and transport.",
                 [({"leg": leg, "transport": t}, n) for (leg, t), n in sorted(conns.items())])

    def _render_health(self, w: "_Writer", now: float) -> None:
        h = self.health
        if h is None:
            return
        peers = sorted(h.peers.items())
        w.family("teamsbc_peer_state", "gauge",
                 "Peer health: 1 for the state the peer is in (up, down, cooling), 0 for the others.",
                 [({"peer": name, "state": st}, 1 if p.state == st else 0)
                  for name, p in peers for st in PEER_STATES])
        w.family("teamsbc_peer_usable", "gauge", "1 when routing would use the peer now.",
                 [({"peer": name}, 1 if p.usable(now) else 0) for name, p in peers])
        w.family("teamsbc_peer_rtt_seconds", "gauge", "Round-trip time of the peer's last answered OPTIONS.",
                 [({"peer": name}, p.rtts[-1]) for name, p in peers if p.rtts])
        last = h.teams_options_last
        w.family("teamsbc_teams_options_age_seconds", "gauge",
                 "Seconds since Teams last sent us an OPTIONS (absent: never).",
                 [({}, max(0.0, now - last))] if last is not None else [])

    def _render_media(self, w: "_Writer") -> None:
        w.family("teamsbc_media_deletes_total", "counter", "rtpengine delete replies seen.",
                 [({}, self.media_deletes)])
        w.family("teamsbc_media_packets_total", "counter",
                 "RTP packets of ended calls (rtpengine delete replies, both directions).",
                 [({}, self.media_totals["packets"])])
        w.family("teamsbc_media_bytes_total", "counter", "RTP bytes of ended calls (rtpengine delete replies).",
                 [({}, self.media_totals["bytes"])])
        w.family("teamsbc_media_errors_total", "counter", "RTP errors of ended calls (rtpengine delete replies).",
                 [({}, self.media_totals["errors"])])
        m = self.media
        if m is None:
            return
        try:
            status = list(m.status())
        except Exception:  # noqa: BLE001 - a scrape must not fail because of one source
            return
        up, calls, rtt, rmax = [], [], [], []
        for inst in status:
            addr = str(inst.get("address"))
            up.append(({"instance": addr}, 1 if inst.get("healthy") else 0))
            if "calls" in inst:
                calls.append(({"instance": addr}, inst["calls"]))
            r = inst.get("rtt") or {}
            for q, key in (("0.5", "median"), ("0.99", "p99")):
                if r.get(key) is not None:
                    rtt.append(({"instance": addr, "quantile": q}, r[key]))
            if r.get("max") is not None:
                rmax.append(({"instance": addr}, r["max"]))
        w.family("teamsbc_rtpengine_up", "gauge", "1 when the rtpengine instance answers pings.", up)
        w.family("teamsbc_rtpengine_calls", "gauge", "Calls owned by the rtpengine instance.", calls)
        w.family("teamsbc_rtpengine_rtt_seconds", "gauge",
                 "NG command round-trip time over the last requests (quantiles).", rtt)
        w.family("teamsbc_rtpengine_rtt_max_seconds", "gauge", "Slowest NG round trip over the last requests.", rmax)

    def _render_certificate(self, w: "_Writer") -> None:
        if self.certificate is None:
            return
        left = self.certificate_days_left()
        w.family("teamsbc_certificate_readable", "gauge", "1 when the Teams certificate file parses.",
                 [({}, 0 if left is None else 1)])
        w.family("teamsbc_certificate_expiry_seconds", "gauge",
                 "Seconds until the Teams certificate expires (negative: expired).",
                 [({}, left * 86400.0)] if left is not None else [])

    def certificate_days_left(self) -> float | None:
        """tls.days_left() of the certificate; the file is parsed again only when it changed."""
        from .tls import days_left
        assert self.certificate is not None
        try:
            st = os.stat(self.certificate)
            key: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return None
        cached_key, value, at = self._cert_cache
        if cached_key != key:
            value, at = days_left(self.certificate), time.time()
            self._cert_cache = (key, value, at)
            return value
        return None if value is None else value - (time.time() - at) / 86400

    def _render_drops(self, w: "_Writer") -> None:
        d = self.drops
        if d is None:
            return
        try:
            values = d() if callable(d) else d
            items = sorted(dict(values).items())
        except Exception:  # noqa: BLE001
            return
        w.family("teamsbc_ratelimit_drops_total", "counter",
                 "Requests dropped by the rate-limit guard, by reason.",
                 [({"reason": str(k)}, v) for k, v in items])


# ---------------------------------------------------------------------- text format 0.0.4

def escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[Mapping[str, str], float | int]]) -> None:
        lines = self.lines
        lines.append(f"# HELP {name} {escape_help(help_)}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{escape_label(str(v))}"' for k, v in labels.items())
                lines.append(f"{name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{name} {format_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
