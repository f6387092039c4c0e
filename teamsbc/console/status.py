"""One picture of the running SBC: what `GET /status` answers, `teamsbc status` prints and the
console's dashboard draws. Built from objects the SBC already has (config, peer health,
metrics' calls in progress, the media pool, the flight recorder, the admin API's readiness
checks); nothing here blocks but `live_media`, which asks rtpengine (NG `query`) and is awaited.

Alarms are the things an operator must act on, one line each, worst first:
- a required readiness check failing (`critical`): no Teams proxy usable, PBX down, no
  rtpengine, listeners down, certificate expired or unreadable;
- `warning`: one Teams proxy down or cooling, an rtpengine instance down, a tenant's PBX down,
  Teams silent for longer than `teams.options_alarm` (reference section 4: Teams demotes a
  trunk whose SBC it has not pinged), the certificate within 30 days of expiry.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .. import __version__
from ..timefmt import iso_utc

WARN_DAYS = 30
MEDIA_QUERIES = 20          # calls whose media are asked from rtpengine per status request
MEDIA_TIMEOUT = 1.0
RECENT_ERRORS = 50
_CALL_ID = re.compile(r"\s*call_id=\S+")


class RecentErrors(logging.Handler):
    """The last warnings and errors the SBC logged (bounded), for "the last errors" in the
    status. Attach to the `teamsbc` logger; records are formatted at once (no arguments kept)."""

    def __init__(self, size: int = RECENT_ERRORS):
        super().__init__(logging.WARNING)
        self.records: deque[dict] = deque(maxlen=size)
        self._index: dict[tuple, dict] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            msg = str(record.msg)
        msg = msg[:500]
        key = (record.name, record.levelno, _CALL_ID.sub("", msg))
        seen = self._index.pop(key, None)
        if seen is not None:        # the same line again (a peer failing every ping): counted, not repeated
            seen["time"], seen["message"] = iso_utc(record.created), msg
            seen["repeated"] += 1
            self.records.remove(seen)
            entry = seen
        else:
            entry = {"time": iso_utc(record.created), "level": record.levelname.lower(),
                     "logger": record.name, "message": msg, "repeated": 1}
            if len(self.records) == self.records.maxlen:
                oldest = self.records[0]
                self._index = {k: v for k, v in self._index.items() if v is not oldest}
        self.records.append(entry)
        self._index[key] = entry


def _wall(core_t: float | None, now: float, wall: float) -> str | None:
    """A time on the core's clock (loop.time()) as ISO wall-clock time."""
    return None if core_t is None else iso_utc(wall - (now - core_t))


def peer_dict(book: Any, name: str, now: float, wall: float) -> dict:
    p = book.peers.get(name) if book is not None else None
    sent = book.last_sent.get(name) if book is not None else None
    if p is None:
        return {"peer": name, "state": "unknown", "usable": True, "since": None,
                "reason": "not probed (OPTIONS off)" if sent is None else "no answer yet",
                "last_sent": _wall(sent, now, wall), "last_ok": None, "last_failure": None,
                "rtt_ms": None, "cooling_until": None}
    since = p.since or book.started     # 0: in this state since the SBC started
    return {"peer": name, "state": p.state, "usable": p.usable(now), "since": _wall(since, now, wall),
            "reason": p.reason, "last_sent": _wall(sent, now, wall), "last_ok": _wall(p.last_ok, now, wall),
            "last_failure": _wall(p.last_failure, now, wall),
            "rtt_ms": round(p.rtts[-1] * 1000, 2) if p.rtts else None,
            "cooling_until": _wall(p.cooling_until, now, wall) if p.cooling_until else None}


def snapshot(*, config: Any, health: Any, metrics: Any, checks: list[dict], media: Any = None,
             recorder: Any = None, errors: RecentErrors | None = None, certificate: dict | None = None,
             now: float, wall: float | None = None) -> dict:
    """The status of the SBC. `now`: the core's clock; `wall`: Unix time."""
    from ..routing import pbx_peer
    wall = time.time() if wall is None else wall
    c = config
    ready = all(ch["ok"] for ch in checks if ch["required"])
    last = health.teams_options_last if health is not None else None
    started = health.started if health is not None else None
    teams = {
        "options_last": _wall(last, now, wall),
        "options_age": round(now - last, 1) if last is not None else None,
        "options_alarm": c.teams.options_alarm,
        "proxies": [peer_dict(health, h, now, wall) for h in c.teams.proxies],
    }
    pbx = [{"label": "pbx", "address": str(c.pbx.address), "transport": c.pbx.transport,
            "listen": str(c.pbx.listen), **peer_dict(health, pbx_peer(c.pbx.address), now, wall)}]
    tenants = []
    for t in c.teams.tenants.values():
        tenants.append({"fqdn": t.fqdn, "pbx": str(t.pbx) if t.pbx else None, "numbers": list(t.numbers)})
        if t.pbx:
            pbx.append({"label": f"tenant {t.fqdn}", "address": str(t.pbx), "transport": c.pbx.transport,
                        "listen": str(c.pbx.listen), **peer_dict(health, pbx_peer(t.pbx), now, wall)})
    rtpengine = None
    if c.media.rtpengine:
        rtpengine = []
        if media is not None:
            for inst in media.status():
                rtt = inst.get("rtt") or {}
                rtpengine.append({"address": inst.get("address"), "healthy": bool(inst.get("healthy")),
                                  "weight": inst.get("weight"), "calls": inst.get("calls"),
                                  "rtt_ms": round(rtt["median"] * 1000, 2) if rtt.get("median") is not None else None,
                                  "last_error": inst.get("last_error")})
    calls = active_calls(metrics, recorder, wall)
    return {
        "sbc": {"fqdn": c.sbc.fqdn, "version": __version__, "config": c.source,
                "started": iso_utc(metrics.started) if metrics is not None else None,
                "uptime": round(wall - metrics.started) if metrics is not None else None,
                "now": iso_utc(wall)},
        "ready": ready,
        "certificate": certificate,
        "teams": teams,
        "pbx": pbx,
        "tenants": tenants,
        "rtpengine": rtpengine,
        "calls": {"active": len(calls), "answered": sum(1 for x in calls if x["answered"]), "list": calls},
        "alarms": alarms(checks, teams, pbx, rtpengine, certificate, now, started),
        "errors": list(errors.records)[::-1] if errors is not None else [],
        "checks": checks,
    }


def active_calls(metrics: Any, recorder: Any, wall: float) -> list[dict]:
    """Calls in progress (metrics' table), with what the recorder knows (display name)."""
    out = []
    for call in metrics.active_calls(wall) if metrics is not None else []:
        rec = recorder.get(call["call_id"]) if recorder is not None else None
        call["display"] = rec.display if rec is not None else None
        call["state"] = "answered" if call["answered"] else "setup"
        call["age"] = round(wall - rec.first, 1) if rec is not None else None
        call["media"] = None
        out.append(call)
    return out


async def live_media(pool: Any, calls: list[dict], *, limit: int = MEDIA_QUERIES,
                     timeout: float = MEDIA_TIMEOUT) -> None:
    """Fill `media` of the newest `limit` calls from rtpengine (NG query), in place."""
    if pool is None or not calls:
        return
    from ..media.stats import parse_stats

    async def one(call: dict) -> None:
        try:
            reply = await asyncio.wait_for(pool.request({"command": "query", "call-id": call["call_id"]}), timeout)
        except Exception:  # noqa: BLE001 - a call rtpengine does not know shows no media
            return
        call["media"] = media_dict(parse_stats(call["call_id"], reply), reply)

    await asyncio.gather(*(one(c) for c in calls[-limit:]))


def media_dict(stats: Any, reply: Any = None) -> dict | None:
    """Per leg: packets, bytes, errors received from that party's endpoint; `lost` from RTCP
    (rtpengine's SSRC statistics) when the endpoints send RTCP."""
    if stats is None or stats.empty:
        return None
    legs = []
    for leg in stats.legs:
        legs.append({"tag": leg.tag, "endpoint": leg.endpoint, "local": leg.local, "packets": leg.packets,
                     "bytes": leg.bytes, "errors": leg.errors})
    lost = None
    ssrc = reply.get("SSRC") if isinstance(reply, dict) else None
    if isinstance(ssrc, dict) and ssrc:
        values = [v.get("packets lost") for v in ssrc.values() if isinstance(v, dict)]
        values = [v for v in values if isinstance(v, int)]
        lost = sum(values) if values else None
    rtp = stats.rtp
    return {"packets": rtp.get("packets", 0), "bytes": rtp.get("bytes", 0), "errors": rtp.get("errors", 0),
            "lost": lost, "legs": legs}


def alarms(checks: list[dict], teams: dict, pbx: list[dict], rtpengine: list | None,
           certificate: dict | None, now: float, started: float | None) -> list[dict]:
    out: list[dict] = []
    for ch in checks:
        if ch["required"] and not ch["ok"]:
            out.append({"severity": "critical", "source": ch["name"], "text": f"{ch['name']}: {ch['detail']}"})
    if not any(a["source"] == "teams" for a in out):
        for p in teams["proxies"]:
            if p["state"] in ("down", "cooling"):
                out.append({"severity": "warning", "source": "teams",
                            "text": f"Teams proxy {p['peer']} is {p['state']} since {_utc(p['since'])}: {p['reason']}"})
    for p in pbx[1:]:
        if p["state"] in ("down", "cooling"):
            out.append({"severity": "warning", "source": "pbx",
                        "text": f"{p['label']} PBX {p['address']} is {p['state']}: {p['reason']}"})
    if rtpengine and any(r["healthy"] for r in rtpengine):
        for r in rtpengine:
            if not r["healthy"]:
                out.append({"severity": "warning", "source": "rtpengine",
                            "text": f"rtpengine {r['address']} is down: {r['last_error'] or 'no answer to ping'}"})
    age, limit = teams["options_age"], teams["options_alarm"]
    if age is not None and age >= limit:
        out.append({"severity": "warning", "source": "teams_options",
                    "text": f"Teams has not sent OPTIONS for {_span(age)} (alarm after {_span(limit)}): "
                            "Teams demotes a trunk it cannot ping"})
    elif age is None and started is not None and now - started >= limit:
        out.append({"severity": "warning", "source": "teams_options",
                    "text": f"no OPTIONS from Teams since the SBC started {_span(now - started)} ago: "
                            "is the SBC paired and reachable from Teams?"})
    if certificate and certificate.get("days_left") is not None and 0 < certificate["days_left"] <= WARN_DAYS:
        out.append({"severity": "warning", "source": "certificate",
                    "text": f"the certificate expires in {certificate['days_left']:.1f} days"})
    return out


def _utc(iso: str | None) -> str:
    return "?" if not iso else iso[:19].replace("T", " ") + " UTC"


def _span(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


@dataclass
class Sources:
    """Everything the status, the console and the admin API's new endpoints read."""
    config: Any
    health: Any
    metrics: Any
    checks: Callable[[], list[dict]]
    media: Any = None           # the MediaPool
    recorder: Any = None        # the FlightRecorder
    history: Any = None         # the History
    errors: RecentErrors | None = None
    cdr: Any = None             # the CdrWriter (its store's path is searched)
    renewer: Any = None         # certinfo.Renewer
    tracer: Any = None

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()     # the core's clock (peer health uses it)


async def collect(src: Sources, *, media: bool = True) -> dict:
    """The status of the running SBC (what GET /status answers)."""
    from .certinfo import certificate_info
    snap = snapshot(config=src.config, health=src.health, metrics=src.metrics, checks=src.checks(),
                    media=src.media, recorder=src.recorder, errors=src.errors,
                    certificate=certificate_info(src.config), now=src.now())
    if media:
        await live_media(src.media, snap["calls"]["list"])
    return snap
