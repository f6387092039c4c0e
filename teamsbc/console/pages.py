"""The console's pages, rendered on the server from the same data as the admin API's JSON
(status.collect, the recorder, the history, CDR search, certinfo, configview). Every value
goes through `html.esc`; pictures are `svg`. The pages work without script; the small
static/console.js only keeps the live call list current (server-sent events) and confirms
"renew now".

| page | path |
|---|---|
| dashboard: trunk health with 24 h strips, calls graph, certificate, rtpengine, alarms, last errors | `/` |
| calls: the live list and the recent calls | `/console/calls` |
| call detail: ladder of both legs, messages (credentials masked), media per leg, CDR row, pcap | `/console/call?id=CALL-ID` |
| CDRs: search by number, dates and result; CSV export | `/console/cdr` |
| certificates: status, renewal, archive, renew now | `/console/certificates` |
| configuration: effective (secrets masked) and `teamsbc check` | `/console/config` |
"""
from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote, urlencode

import yaml
from aiohttp import web

from .. import __version__
from ..cdr.export import export_rows, format_rows, parse_time
from ..cdr.search import SearchError
from ..timefmt import iso_utc
from . import certinfo, configview, ladder, svg
from .html import Html, esc, join, render, table, tag
from .status import Sources, collect, media_dict

SESSION = "teamsbc_console_session"     # request key: the console Session (auth.Session)
NAV = (("/", "Dashboard", "dashboard"), ("/console/calls", "Calls", "calls"), ("/console/cdr", "CDRs", "cdr"),
       ("/console/certificates", "Certificates", "certificates"), ("/console/config", "Configuration", "config"))
CDR_PAGE_LIMIT = 500


def call_link(call_id: str, text: Any = None) -> Html:
    return tag("a", call_id if text is None else text, href=f"/console/call?id={quote(call_id, safe='')}")


def badge(state: str | None, text: Any = None) -> Html:
    return tag("span", state if text is None else text, class_=f"badge st-{state or 'unknown'}")


def _t(iso: str | None) -> str:
    """ISO UTC -> `2024-05-01 12:00:00` for tables (the page says UTC once), the time alone today."""
    if not iso:
        return ""
    if iso[:10] == time.strftime("%Y-%m-%d", time.gmtime()):
        return iso[11:19]
    return iso[:19].replace("T", " ")


def caller_text(c: dict) -> str:
    name = c.get("display")
    return f'"{name}" {c.get("caller") or ""}' if name else str(c.get("caller") or "")


class Pages:
    def __init__(self, src: Sources, *, token_required: bool):
        self.src = src
        self.token_required = token_required

    # ------------------------------------------------------------------ layout
    def page(self, request: web.Request, title: str, body: Html, *, active: str = "", head: Html = Html(""),
             status: int = 200) -> web.Response:
        session = request.get(SESSION)
        csrf = session.csrf if session is not None else ""
        nav = join(tag("a", label, href=href, class_="active" if key == active else None) for href, label, key in NAV)
        logout = Html("")
        if self.token_required and session is not None:
            logout = tag("form", tag("input", "", type="hidden", name="csrf", value=csrf)
                         + tag("button", "Log out", type="submit"), method="post", action="/console/logout",
                         class_="logout")
        text = render("layout.html", title=title, fqdn=self.src.config.sbc.fqdn, version=__version__, csrf=csrf,
                      page=active, nav=nav, logout=logout, body=body, head=head,
                      now=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        return web.Response(text=text, content_type="text/html", charset="utf-8", status=status)

    # ------------------------------------------------------------------ dashboard
    async def dashboard(self, request: web.Request) -> web.Response:
        st = await collect(self.src, media=False)
        window = 86400.0 if request.query.get("window") == "24h" else 3600.0
        now = time.time()
        hist = self.src.history.as_dict(now) if self.src.history is not None else {"peers": {}, "fine": [], "coarse": []}
        strips = hist["peers"]
        cards = join([
            self._card("SBC", badge("up" if st["ready"] else "down", "ready" if st["ready"] else "NOT READY"),
                       f"{st['sbc']['fqdn']} · teamsbc {st['sbc']['version']} · up {_span(st['sbc']['uptime'] or 0)}"),
            self._card("Calls now", f"{st['calls']['active']}", f"{st['calls']['answered']} answered",
                       href="/console/calls"),
            self._cert_card(st["certificate"]),
            self._card("Teams OPTIONS", _ago(st["teams"]["options_age"]) if st["teams"]["options_age"] is not None
                       else "never", f"alarm after {_span(st['teams']['options_alarm'])}"),
        ])
        alarms = st["alarms"]
        alarm_html = (tag("ul", join(tag("li", a["text"], class_=f"alarm {a['severity']}") for a in alarms),
                          class_="alarms", id="alarms") if alarms
                      else tag("p", "No active alarms.", class_="ok", id="alarms"))
        rows = []
        for p in st["teams"]["proxies"]:
            rows.append(self._peer_row("Teams", p, strips.get(p["peer"], []), now))
        for p in st["pbx"]:
            rows.append(self._peer_row(p["label"].upper() if p["label"] == "pbx" else p["label"], p,
                                       strips.get(p["peer"], []), now, detail=f"{p['transport']} {p['address']}"))
        trunks = table(["", "peer", "state", "since", "last OPTIONS sent", "last answer", "RTT", "reason",
                        "last 24 h"], rows, id_="trunks", cls="trunks")
        media = Html("")
        if st["rtpengine"] is not None:
            mrows = [[badge("up" if r["healthy"] else "down"), r["address"], r["calls"], _ms(r["rtt_ms"]),
                      r["last_error"] or "", svg.strip(strips.get(f"rtpengine {r['address']}", []), now,
                                                       label=r["address"])] for r in st["rtpengine"]]
            media = join([tag("h2", "rtpengine"), table(["", "instance", "calls", "RTT", "last error", "last 24 h"],
                                                        mrows, id_="rtpengine", empty="no media pool")])
        points = hist["fine"] if window <= 3600 else hist["coarse"]
        graph = svg.graph(points, now - window, now)
        toggle = join([tag("a", "1 h", href="/", class_="active" if window <= 3600 else None), Html(" · "),
                       tag("a", "24 h", href="/?window=24h", class_="active" if window > 3600 else None)])
        errors = table(["time (UTC)", "level", "logger", "message", "times"],
                       [[_t(e["time"]), e["level"], e["logger"], e["message"], e["repeated"]] for e in st["errors"][:15]],
                       id_="errors", empty="no warnings or errors logged")
        body = join([
            tag("section", cards, class_="cards"),
            tag("h2", "Active alarms"), alarm_html,
            tag("h2", "Trunks"), trunks, media,
            tag("h2", Html(esc("Calls ") + tag("span", toggle, class_="toggle"))), graph,
            tag("h2", "Last warnings and errors"), errors,
        ])
        head = Html('<meta http-equiv="refresh" content="5">')
        return self.page(request, "Dashboard", body, active="dashboard", head=head)

    @staticmethod
    def _card(title: str, value: Any, detail: Any, href: str | None = None) -> Html:
        inner = join([tag("h3", title), tag("div", value, class_="value"), tag("div", detail, class_="detail")])
        return tag("a" if href else "div", inner, class_="card", href=href)

    def _cert_card(self, cert: dict | None) -> Html:
        if not cert or not cert.get("readable"):
            return self._card("Certificate", badge("down", "unreadable"), (cert or {}).get("problem", ""),
                              href="/console/certificates")
        left = cert["days_left"]
        state = "down" if left <= 0 else "cooling" if left <= 30 else "up"
        return self._card("Certificate", badge(state, f"{left:.0f} days left"),
                          f"renewal {cert['next_renewal']['text']}", href="/console/certificates")

    @staticmethod
    def _peer_row(kind: str, p: dict, strip: list, now: float, detail: str = "") -> list:
        return [kind, Html(esc(p["peer"]) + (tag("div", detail, class_="detail") if detail else "")),
                badge(p["state"]), _t(p["since"]), _t(p["last_sent"]), _t(p["last_ok"]), _ms(p["rtt_ms"]),
                p["reason"], svg.strip(strip, now, label=p["peer"])]

    # ------------------------------------------------------------------ calls
    async def calls(self, request: web.Request) -> web.Response:
        from .status import active_calls
        wall = time.time()
        live = active_calls(self.src.metrics, self.src.recorder, wall)
        rows = [[c["direction"], caller_text(c), c["callee"], badge(c["state"]), _t(c["started"]),
                 "" if c["duration"] is None else f"{c['duration']:.0f} s", call_link(c["call_id"], "detail")]
                for c in live]
        live_table = table(["direction", "caller", "callee", "state", "started (UTC)", "duration", ""], rows,
                           id_="live-calls", cls="live", empty="no calls in progress")
        recent = self.src.recorder.recent(50) if self.src.recorder is not None else []
        rrows = []
        for rec in recent:
            s = rec.summary(wall)
            result = (f"{s['status']} {s['reason'] or ''}".strip() if s["status"] else s["state"])
            rrows.append([_t(iso_utc(s["started"])), s["direction"] or "", caller_text(s), s["callee"] or "",
                          badge(s["state"], result), s["ended_by"] or "", call_link(rec.call_id)])
        body = join([
            tag("h2", Html(esc("Calls in progress ") + tag("span", str(len(live)), id="live-count", class_="count"))),
            tag("p", "Updated as calls come and go.", class_="hint", id="live-status"),
            live_table,
            tag("h2", "Recent calls"),
            tag("p", "The flight recorder keeps the SIP of the last calls in memory: pick one for its ladder.",
                class_="hint"),
            table(["started (UTC)", "direction", "caller", "callee", "result", "ended by", "Call-ID"], rrows,
                  id_="recent-calls", empty="no calls recorded since the SBC started"),
        ])
        return self.page(request, "Calls", body, active="calls")

    async def call(self, request: web.Request) -> web.Response:
        cid = request.query.get("id", "")
        rec = self.src.recorder.get(cid) if self.src.recorder is not None else None
        cdr_rows = await self._cdr_rows(call_id=cid) if cid else []
        if rec is None and not cdr_rows:
            body = join([tag("h2", "Call not found"),
                         tag("p", f"No call {cid!r} in the flight recorder (it keeps the last calls) "
                                  "or the CDRs.")])
            return self.page(request, "Call", body, active="calls", status=404)
        parts = []
        if rec is not None:
            s = rec.summary()
            parts.append(table(["", ""], [
                ["direction", s["direction"] or ""], ["caller", caller_text(s)], ["callee", s["callee"] or ""],
                ["state", badge(s["state"])], ["started", _t(iso_utc(s["started"]))],
                ["answered", _t(iso_utc(s["answered"]))], ["ended", _t(iso_utc(s["ended"]))],
                ["result", f"{s['status'] or ''} {s['reason'] or ''}".strip()], ["ended by", s["ended_by"] or ""],
                ["messages", f"{s['messages']}" + (f" ({s['dropped']} not kept)" if s["dropped"] else "")],
            ], id_="call-summary", cls="kv"))
            columns, arrows = ladder.build(rec, ladder.teams_names(self.src.config))
            parts += [
                tag("h2", "SIP ladder"),
                tag("p", Html(esc("Click an arrow to see its message (credentials masked). ")
                              + tag("a", "Download pcap", href=f"/calls/{quote(cid, safe='')}/pcap",
                                    id="pcap", download=f"{_safe_name(cid)}.pcap")), class_="hint"),
                tag("div", svg.ladder(columns, arrows), class_="ladder-wrap"),
                tag("div", join(tag("pre", Html(tag("span", f"#{a.index} {a.label}", class_="msghead") + esc("\n")
                                               + esc(a.text)), id=f"msg-{a.index}", class_="msg")
                                for a in arrows), class_="messages", id="messages"),
            ]
            parts += [tag("h2", "Media"), await self._media(rec)]
        parts.append(tag("h2", "Call detail record"))
        if cdr_rows:
            shown = export_rows(cdr_rows)
            keys = [k for k in shown[-1] if k != "media"]
            parts.append(table(["", ""], [[k, "" if shown[-1][k] is None else shown[-1][k]] for k in keys],
                               id_="cdr-row", cls="kv"))
        else:
            parts.append(tag("p", "No CDR row (CDRs disabled, or not written yet).", class_="hint"))
        return self.page(request, f"Call {cid}", join(parts), active="calls")

    async def _media(self, rec: Any) -> Html:
        m = None
        if rec.ended is None and self.src.media is not None:
            from .status import live_media
            probe = [{"call_id": rec.call_id, "media": None}]
            await live_media(self.src.media, probe)
            m, when = probe[0]["media"], "now (rtpengine query)"
        if m is None and rec.media is not None:
            m, when = media_dict(rec.media), "at the end of the call (rtpengine delete)"
        if m is None:
            return tag("p", "No media statistics (no rtpengine, or none reported).", class_="hint", id="media")
        rows = [[leg["tag"], leg["endpoint"] or "", leg["local"] or "", leg["packets"], leg["bytes"], leg["errors"]]
                for leg in m["legs"]]
        lost = "" if m["lost"] is None else f", {m['lost']} lost (RTCP)"
        return join([tag("p", f"{m['packets']} RTP packets, {m['bytes']} bytes, {m['errors']} errors{lost}; {when}",
                         class_="hint"),
                     table(["leg (tag)", "endpoint", "rtpengine port", "packets in", "bytes in", "errors"], rows,
                           id_="media")])

    # ------------------------------------------------------------------ CDRs
    async def _cdr_rows(self, **kw: Any) -> list[dict]:
        if self.src.cdr is None:
            return []
        writer = self.src.cdr
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, writer.flush, 2.0)
        return await loop.run_in_executor(None, lambda: writer.store.search(**kw))

    def _cdr_query(self, request: web.Request) -> dict:
        q = request.query
        kw: dict[str, Any] = {}
        if q.get("number", "").strip():
            kw["number"] = q["number"]
        if q.get("result", "").strip():
            kw["result"] = q["result"]
        for key in ("since", "until"):
            if q.get(key, "").strip():
                try:
                    kw[key] = parse_time(q[key])
                except Exception:  # noqa: BLE001 - argparse's error type; said on the page
                    raise SearchError(f"{key} {q[key]!r}: not a date (e.g. 2024-05-01 or 2024-05-01T13:00)") from None
        if "until" in kw and len(q["until"].strip()) == 10:
            kw["until"] += 86400        # a date "until" means until the end of that day
        return kw

    async def cdr(self, request: web.Request) -> web.Response:
        q = request.query
        error = Html("")
        rows: list[dict] = []
        try:
            kw = self._cdr_query(request)
            rows = await self._cdr_rows(**kw, limit=CDR_PAGE_LIMIT)
        except SearchError as e:
            error = tag("p", str(e), class_="alarm critical", id="cdr-error")
        sel = q.get("result", "")
        options = join(tag("option", label, value=v, selected="selected" if v == sel else None)
                       for v, label in (("", "any result"), ("answered", "answered"), ("failed", "failed"),
                                        ("cancelled", "cancelled (487)")))
        form = tag("form", join([
            tag("label", Html(esc("Number ") + _input("number", q.get("number", ""), placeholder="+4420..."))),
            tag("label", Html(esc("From ") + _input("since", q.get("since", ""), type_="date"))),
            tag("label", Html(esc("To ") + _input("until", q.get("until", ""), type_="date"))),
            tag("label", Html(esc("Result ") + tag("select", options, name="result"))),
            tag("button", "Search", type="submit"),
        ]), method="get", action="/console/cdr", class_="search", id="cdr-search")
        params = {k: v for k, v in q.items() if k in ("number", "since", "until", "result") and v}
        export = tag("a", "Export CSV", href="/console/cdr.csv" + ("?" + urlencode(params) if params else ""),
                     id="cdr-csv", class_="button")
        shown = export_rows(rows)[::-1]
        trows = [[_t(r["setup_time"]), r["direction"], r["caller"] or "", r["callee"] or "",
                  f"{r['status'] or ''} {r['reason'] or ''}".strip(),
                  "" if r["duration"] is None else f"{r['duration']:.1f} s", r["ended_by"] or "",
                  call_link(r["call_id"])] for r in shown]
        note = "CDRs are disabled (cdr.enabled: false)." if self.src.cdr is None else \
            f"{len(rows)} call(s), newest first" + (f" (the newest {CDR_PAGE_LIMIT})" if len(rows) >= CDR_PAGE_LIMIT else "")
        body = join([tag("h2", "Call detail records"), form, error, tag("p", Html(esc(note + " · ") + export),
                                                                       class_="hint"),
                     table(["setup (UTC)", "direction", "caller", "callee", "result", "duration", "ended by",
                            "Call-ID"], trows, id_="cdr-table", empty="no matching calls")])
        return self.page(request, "CDRs", body, active="cdr")

    async def cdr_csv(self, request: web.Request) -> web.Response:
        try:
            rows = await self._cdr_rows(**self._cdr_query(request), limit=100_000)
        except SearchError as e:
            return web.Response(text=str(e) + "\n", status=400)
        name = time.strftime("teamsbc-cdr-%Y%m%dT%H%M%SZ.csv", time.gmtime())
        return web.Response(text=format_rows(rows, "csv"), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ------------------------------------------------------------------ certificates
    async def certificates(self, request: web.Request) -> web.Response:
        c = self.src.config
        info = certinfo.certificate_info(c)
        arch = await asyncio.get_running_loop().run_in_executor(None, certinfo.archive, c)
        session = request.get(SESSION)
        parts = [tag("h2", "Certificate in use")]
        if info.get("readable"):
            nr = info["next_renewal"]
            parts.append(table(["", ""], [
                ["file", info["path"]], ["subject", info["subject"]], ["names", ", ".join(info["names"])],
                ["issuer", info["issuer"]], ["serial", info["serial"]], ["key", info["key"]],
                ["valid", f"{_t(info['not_before'])} to {_t(info['not_after'])} UTC"],
                ["days left", badge("down" if info["days_left"] <= 0 else "cooling" if info["days_left"] <= 30
                                    else "up", f"{info['days_left']:.1f}")],
                ["next renewal", nr["text"]], ["how", nr["how"]],
            ], id_="certificate", cls="kv"))
        else:
            parts.append(tag("p", info.get("problem", "unreadable"), class_="alarm critical"))
        r = self.src.renewer
        running = r is not None and r.running
        parts.append(tag("h2", "Renew now"))
        parts.append(tag("p", f"Orders a new certificate from {c.acme.directory} now ({c.acme.challenge}), "
                              "checks it and installs it; the SBC reloads it at once. Same as "
                              "`teamsbc cert renew --force`.", class_="hint"))
        if r is not None:
            parts.append(tag("form", join([
                tag("input", "", type="hidden", name="csrf", value=session.csrf if session else ""),
                tag("button", "Renewal running…" if running else "Renew now", type="submit", id="renew",
                    disabled="disabled" if running else None, data_confirm="Order a new certificate now?"),
            ]), method="post", action="/console/certificates/renew", id="renew-form"))
            last = r.last
            if last is not None:
                if last.get("running"):
                    parts.append(tag("p", f"Renewal started {_t(last['started'])} UTC, running…", class_="hint",
                                     id="renew-outcome"))
                else:
                    lines = [last["line"], *last["details"], *last["notes"]]
                    parts.append(tag("div", join([tag("h3", ("Succeeded" if last["ok"] else "Failed")
                                                       + f" ({last['action']}, {last['seconds']} s, "
                                                         f"finished {_t(last['finished'])} UTC)"),
                                                  tag("pre", "\n".join(lines))]),
                                     class_=f"outcome {'ok' if last['ok'] else 'failed'}", id="renew-outcome"))
        parts.append(tag("h2", "Archive"))
        parts.append(table(["archived", "serial", "not after (UTC)", "subject"],
                           [[a["archived"], a.get("serial", ""), _t(a.get("not_after")), a.get("subject", a.get("problem", ""))]
                            for a in arch], id_="archive", empty="no earlier certificates"))
        head = Html('<meta http-equiv="refresh" content="2">') if running else Html("")
        return self.page(request, "Certificates", join(parts), active="certificates", head=head)

    async def renew(self, request: web.Request) -> web.Response:
        if self.src.renewer is not None:
            self.src.renewer.start()
        raise web.HTTPSeeOther("/console/certificates")

    # ------------------------------------------------------------------ configuration
    async def config(self, request: web.Request) -> web.Response:
        c = self.src.config
        result = await asyncio.get_running_loop().run_in_executor(None, configview.check, c)
        state = "up" if result["ok"] and not result["changed"] else "cooling" if result["ok"] else "down"
        check = [tag("p", Html(badge(state, "ok" if result["ok"] else "errors") + esc(" " + result["text"])),
                     id="check")]
        if result["errors"]:
            check.append(tag("pre", "\n".join(result["errors"]), class_="errors"))
        if result["ok"] and result["changed"]:
            check.append(tag("p", "The file differs from the running configuration: restart the SBC "
                                  "(systemctl restart teamsbc) to apply it.", class_="alarm warning"))
        text = yaml.safe_dump(configview.effective(c), sort_keys=False, allow_unicode=True, width=100)
        body = join([tag("h2", "teamsbc check"), join(check),
                     tag("h2", "Effective configuration"),
                     tag("p", f"From {c.source}, with every default filled in; secrets are masked.", class_="hint"),
                     tag("pre", text, id="effective", class_="config")])
        return self.page(request, "Configuration", body, active="config")


def _input(name: str, value: str, *, type_: str = "text", placeholder: str | None = None) -> Html:
    return tag("input", "", type=type_, name=name, value=value, placeholder=placeholder)


def _safe_name(cid: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in cid)[:60] or "call"


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.1f} ms"


def _span(seconds: float) -> str:
    s = float(seconds)
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} d"
    if s >= 2 * 3600:
        return f"{s / 3600:.0f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.0f} s"


def _ago(age: float) -> str:
    return f"{_span(age)} ago"
