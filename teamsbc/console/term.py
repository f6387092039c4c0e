"""`teamsbc status [-c FILE] [--json] [--watch]`: the running SBC on one terminal screen, from
its admin API (`GET /status`, the same data as the console's dashboard).

Exit status: 0 running and ready; 1 running but not ready (a required check fails: see the
alarms), or the admin API answered something unexpected; 2 the config cannot be used to ask
(invalid, admin disabled, token refused); 3 not running (nothing answers on admin.listen),
with how to start it. Never a traceback. Colours only when stdout is a terminal (and NO_COLOR
is not set); `--json` prints the API's answer as is, for scripts; `--watch` redraws every
`--interval` seconds until Ctrl-C (with `--json`: one JSON document per line).
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

EXIT_READY, EXIT_NOT_READY, EXIT_CONFIG, EXIT_NOT_RUNNING = 0, 1, 2, 3
TIMEOUT = 5.0
_WILDCARD_TO_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


class Unreachable(Exception):
    """Nothing answers: the SBC is not running (or admin.listen is not where it listens)."""


class Refused(Exception):
    """The admin API answered, but not with a status (token, version)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def endpoint(config: Any) -> tuple[str, str | None]:
    """(base URL, token) of the admin API of `config`; a wildcard listener is asked on loopback."""
    listen = config.admin.listen
    host = _WILDCARD_TO_LOOPBACK.get(listen.host, listen.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{listen.port}", config.admin.token


def fetch(url: str, token: str | None, timeout: float = TIMEOUT) -> dict:
    req = urllib.request.Request(url + "/status", headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise Refused(f"{url} refused the admin token (admin.token or admin.token_file of this config "
                          "differs from the running SBC's)", EXIT_CONFIG) from None
        if e.code == 404:
            raise Refused(f"{url}/status: not found: the running SBC is older than this teamsbc "
                          "(restart it to use the new version)", EXIT_NOT_READY) from None
        raise Refused(f"{url}/status answered HTTP {e.code}", EXIT_NOT_READY) from None
    except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError) as e:
        raise Unreachable(str(e)) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (ConnectionRefusedError, ConnectionResetError, OSError)) and \
                not isinstance(e.reason, TimeoutError):
            raise Unreachable(str(e.reason)) from None
        raise Refused(f"{url} did not answer within {timeout:g} s: the SBC is overloaded or stuck "
                      f"({e.reason})", EXIT_NOT_READY) from None
    except TimeoutError:
        raise Refused(f"{url} did not answer within {timeout:g} s: the SBC is overloaded or stuck",
                      EXIT_NOT_READY) from None
    except (ValueError, OSError) as e:
        raise Refused(f"{url}/status: {e}", EXIT_NOT_READY) from None


def not_running_text(url: str, config: Any) -> str:
    src = config.source
    how = "teamsbc run" if src.startswith("<") else f"teamsbc run -c {src}"
    return (f"teamsbc is not running: nothing answers on {url} (admin.listen of {src}).\n"
            f"Start it: {how}   (installed as a service: systemctl start teamsbc; "
            "its log: journalctl -u teamsbc)")


# ---------------------------------------------------------------------- rendering

class Style:
    def __init__(self, color: bool):
        self.color = color

    def __call__(self, text: Any, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else str(text)

    def state(self, state: str | None, text: Any = None) -> str:
        code = {"up": "32", "answered": "32", "down": "1;31", "cooling": "33", "setup": "33",
                "unknown": "2"}.get(state or "", "0")
        return self(state if text is None else text, code)


def _hms(iso: str | None, today: str) -> str:
    if not iso:
        return "-"
    return iso[11:19] if iso.startswith(today) else iso[:16].replace("T", " ")


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * size:
            return f"{s / size:.0f} {unit}"
    return f"{s:.0f} s"


def _table(rows: list[list[str]], widths_from: list[list[str]] | None = None, indent: str = "  ") -> list[str]:
    """Columns padded to the widest visible text (colour codes do not count)."""
    import re
    plain = [[re.sub(r"\x1b\[[0-9;]*m", "", c) for c in r] for r in (widths_from or rows)]
    widths = [max(len(r[i]) for r in plain) for i in range(len(plain[0]))] if plain else []
    out = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            visible = len(re.sub(r"\x1b\[[0-9;]*m", "", c))
            cells.append(c + " " * (widths[i] - visible) if i < len(r) - 1 else c)
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def render(st: dict, *, color: bool = False) -> str:
    s = Style(color)
    sbc = st["sbc"]
    today = (sbc.get("now") or "")[:10]
    title = s("teamsbc " + sbc["version"], "1")
    lines = [f"{title} · {sbc['fqdn']} · up {_span(sbc.get('uptime'))} · "
             + (s("READY", "1;32") if st["ready"] else s("NOT READY", "1;31"))
             + f"    {(sbc.get('now') or '')[:19].replace('T', ' ')} UTC",
             f"config {sbc['config']}", ""]
    c = st.get("certificate") or {}
    if c.get("readable"):
        left = c["days_left"]
        state = "down" if left <= 0 else "cooling" if left <= 30 else "up"
        nr = c["next_renewal"]
        lines += [f"{s('Certificate', '1')}  {c['subject']} · {s.state(state, f'{left:.1f} days left')} "
                  f"(not after {c['not_after'][:10]}, serial {c['serial']})",
                  f"             renewal {nr['text']}",
                  f"             how: {nr['how']}"]
    else:
        lines.append(f"{s('Certificate', '1')}  {s.state('down', 'unreadable')}: {c.get('problem', '?')}")
    lines.append("")
    head = ["", "state", "since", "last sent", "last answer", "RTT", "reason"]

    def peer_rows(items: list[dict], label: Any) -> list[list[str]]:
        return [[label(p), s.state(p["state"]), _hms(p["since"], today), _hms(p["last_sent"], today),
                 _hms(p["last_ok"], today), "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.1f} ms", p["reason"] or ""]
                for p in items]
    teams = peer_rows(st["teams"]["proxies"], lambda p: p["peer"])
    pbx = peer_rows(st["pbx"], lambda p: f"{p['label']} {p['address']} ({p['transport']})")
    allrows = [head] + teams + pbx
    lines.append(s("Teams proxies", "1"))
    lines += _table([head] + teams, allrows)
    t = st["teams"]
    seen = "never since the SBC started" if t["options_age"] is None else f"{_span(t['options_age'])} ago"
    lines.append(f"  Teams' own OPTIONS: last {seen} (alarm after {_span(t['options_alarm'])})")
    lines += ["", s("PBX trunks", "1")]
    lines += _table([head] + pbx, allrows)
    if st.get("tenants"):
        lines += ["", s("Tenants", "1")]
        lines += _table([[x["fqdn"], x["pbx"] or "(shared PBX)", ", ".join(x["numbers"]) or ""] for x in st["tenants"]])
    lines += ["", s("rtpengine", "1")]
    if st.get("rtpengine") is None:
        lines.append("  not configured (media.rtpengine): media flows end to end, Teams needs SRTP")
    else:
        lines += _table([[r["address"], s.state("up" if r["healthy"] else "down"), f"{r['calls']} calls",
                          "-" if r["rtt_ms"] is None else f"RTT {r['rtt_ms']:.1f} ms", r["last_error"] or ""]
                         for r in st["rtpengine"]]) or ["  no instance"]
    calls = st["calls"]
    lines += ["", f"{s('Calls', '1')}: {calls['active']} active ({calls['answered']} answered)"]
    if calls["list"]:
        rows = [["direction", "caller", "callee", "state", "duration", "media"]]
        for x in calls["list"][-30:]:
            m = x.get("media")
            media = "-" if not m else (f"{m['packets']} packets, {m['errors']} errors"
                                       + ("" if m.get("lost") is None else f", {m['lost']} lost"))
            who = f'"{x["display"]}" {x["caller"]}' if x.get("display") else x["caller"]
            rows.append([x["direction"], _printable(who), _printable(x["callee"]), s.state(x["state"]),
                         _span(x["duration"]) if x["duration"] is not None else "ringing", media])
        lines += _table(rows)
        if len(calls["list"]) > 30:
            lines.append(f"  ... and {len(calls['list']) - 30} more (teamsbc status --json)")
    lines += ["", s("Alarms", "1")]
    if st["alarms"]:
        for a in st["alarms"]:
            mark = s("CRITICAL", "1;31") if a["severity"] == "critical" else s("warning", "33")
            lines.append(f"  {mark} {_printable(a['text'])}")
    else:
        lines.append("  " + s("none", "32"))
    if st.get("errors"):
        lines += ["", s("Last warnings and errors", "1")]
        for e in st["errors"][:8]:
            times = f" ({e['repeated']} times)" if e.get("repeated", 1) > 1 else ""
            lines.append(f"  {_hms(e['time'], today)} {e['level']:<7} {_printable(e['message'])[:160]}{times}")
    return "\n".join(lines) + "\n"


def _printable(text: Any) -> str:
    """SIP values on a terminal: control characters (escape sequences) shown, not obeyed."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(text or ""))


# ---------------------------------------------------------------------- the command

def run(config: Any, *, as_json: bool = False, watch: bool = False, interval: float = 2.0,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    if not config.admin.enabled:
        print(f"{config.source}: admin.enabled is false: teamsbc status reads the SBC's admin API "
              "(set admin: {enabled: true} and restart the SBC)", file=err)
        return EXIT_CONFIG
    url, token = endpoint(config)
    tty = out.isatty()
    color = tty and not os.environ.get("NO_COLOR")
    try:
        return _loop(config, url, token, as_json=as_json, watch=watch, interval=interval, out=out, err=err,
                     tty=tty, color=color)
    except KeyboardInterrupt:
        return EXIT_READY if watch else 130     # --watch ends with Ctrl-C


def _loop(config: Any, url: str, token: str | None, *, as_json: bool, watch: bool, interval: float,
          out: TextIO, err: TextIO, tty: bool, color: bool) -> int:
    while True:
        try:
            st = fetch(url, token)
        except Unreachable:
            code, text, to = EXIT_NOT_RUNNING, not_running_text(url, config), err
        except Refused as e:
            code, text, to = e.exit_code, str(e), err
        else:
            code = EXIT_READY if st.get("ready") else EXIT_NOT_READY
            text = (json.dumps(st, separators=(",", ":")) if watch else json.dumps(st, indent=1)) if as_json \
                else render(st, color=color)
            to = out
        if watch and tty and not as_json:
            out.write("\x1b[H\x1b[2J")
            if to is err:
                out.flush()
        print(text.rstrip("\n"), file=to)
        to.flush()
        if not watch:
            return code
        time.sleep(interval)
