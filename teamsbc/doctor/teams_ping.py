"""Check `teams-ping`: Teams' own OPTIONS seen recently, from the running SBC's admin API
(GET /peers). Teams pings an SBC it knows every minute or so and takes a trunk that has not
answered for a while out of service (reference section 9: "inactive trunk"); the SBC records
when the last one came (teams.options_alarm is its threshold).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import aiohttp

from ..addresses import HostPort, parse_hostport
from ..admin_settings import DEFAULT_LISTEN
from ..config import Config
from .report import FAIL, PASS, WARN, Result

DEFAULT_ADMIN = "%s:%d" % DEFAULT_LISTEN
# a listener on every address is asked on loopback
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def admin_endpoint(config: Config) -> tuple[str, str | None]:
    """(URL, token) of the SBC's admin API from admin.listen / admin.token (the token file is
    read by the config), else the default listener without a token."""
    admin = config.admin
    listen = admin.listen if admin is not None else parse_hostport(DEFAULT_ADMIN)
    token = admin.token if admin is not None else None
    host = _WILDCARD_TO_LOOPBACK.get(listen.host, listen.host)
    return f"http://{HostPort(host, listen.port)}", token


async def check(config: Config, admin_url: str | None, admin_token: str | None,
                timeout: float) -> list[Result]:
    check = "teams-ping"
    url, token = admin_endpoint(config)
    url = (admin_url or url).rstrip("/")
    token = admin_token or token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=min(timeout, 3))) as s:
            async with s.get(f"{url}/peers", headers=headers) as r:
                if r.status != 200:
                    return [Result(WARN, check, f"cannot tell: {url}/peers answered HTTP {r.status}",
                                   "set admin.token in the config (or --admin-token)")]
                data = await r.json(content_type=None)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
        return [Result(WARN, check, f"cannot tell: SBC admin API not reachable ({url}: {type(e).__name__})",
                       "start the SBC, or set admin.listen / --admin URL")]
    age, never = ping_age(data)
    alarm = config.teams.options_alarm
    why = ("Teams pings only an SBC it knows and can reach: check that the FQDN is paired "
           "(teamsbc teams-setup), TCP 5061 is open from 52.112.0.0/14 + 52.120.0.0/14, our Contact "
           "carries the FQDN, and the certificate is trusted")
    if never:
        return [Result(FAIL, check, "no OPTIONS from Teams since the SBC started", why)]
    if age is None:
        return [Result(WARN, check, "cannot tell: /peers has no teams_options_last", "update teamsbc")]
    if age > alarm:
        return [Result(FAIL, check, f"last OPTIONS from Teams {age:.0f} s ago (teams.options_alarm {alarm:g} s): "
                                    "Teams demotes this trunk", why)]
    return [Result(PASS, check, f"last OPTIONS from Teams {age:.0f} s ago")]


def ping_age(data: Any) -> tuple[float | None, bool]:
    """(seconds since Teams' last OPTIONS, never seen) from a /peers answer. Accepted shapes:
    a dict with `teams_options_age` (seconds) or `teams_options_last` (epoch seconds, or the
    SBC's monotonic clock, optionally with `now` on the same clock), at the top or under any
    key; a list of snapshots, one of which carries those keys."""
    found: list[dict] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if "teams_options_age" in v or "teams_options_last" in v:
                found.append(v)
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(data)
    if not found:
        return None, False
    d = found[0]
    age = d.get("teams_options_age")
    if isinstance(age, (int, float)):
        return float(age), False
    last = d.get("teams_options_last")
    if last is None:
        return None, "teams_options_last" in d
    if not isinstance(last, (int, float)):
        try:
            last = dt.datetime.fromisoformat(str(last)).timestamp()
        except ValueError:
            return None, False
    now = d.get("now")
    if isinstance(now, (int, float)):
        return max(0.0, float(now) - float(last)), False
    if last > 1e9:
        return max(0.0, time.time() - float(last)), False
    # the SBC's loop clock is time.monotonic(): the same clock for every process on this host
    return max(0.0, time.monotonic() - float(last)), False
