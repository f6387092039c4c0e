"""A recorded call as a ladder diagram (sngrep's view): columns for the parties, one arrow per
SIP message or rtpengine command, in the order they happened, each with the message it
carried, credentials masked (`teamsbc.sip.mask`). Also the call's SIP as a pcap.

Columns, left to right: the Teams proxies (one per IP address: Teams connects from ephemeral
ports), the SBC, the PBX side (one per IP address), rtpengine. An arrow is `in` (a party to the
SBC) or `out` (the SBC to a party); rtpengine commands go from the SBC to rtpengine, their
replies come back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..capture.traces import fake_udp_packet, pcap_global_header, pcap_record
from ..sip.mask import mask_message, mask_text
from .recorder import NgEntry, Recording, SipEntry

SBC = "sbc"
RTPENGINE = "rtpengine"


@dataclass(slots=True)
class Column:
    key: str
    label: str
    detail: str


@dataclass(slots=True)
class Arrow:
    index: int
    t: float                # seconds since the first arrow
    wall: float
    src: int                # column index
    dst: int
    label: str              # INVITE, 180 Ringing, offer, ok ...
    kind: str               # request | response | ng | ng-reply
    leg: str                # teams | pbx | rtpengine
    cseq: str               # CSeq method of a SIP message ("" for rtpengine)
    failed: bool            # an error response, or an NG command that failed
    text: str               # the message, masked

    def as_dict(self) -> dict:
        return {"index": self.index, "t": round(self.t, 6), "wall": self.wall, "from": self.src,
                "to": self.dst, "label": self.label, "kind": self.kind, "leg": self.leg,
                "cseq": self.cseq, "failed": self.failed, "text": self.text}


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("utf-8", "replace")


def _cseq(data: bytes) -> str:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"cseq":
            parts = value.split()
            return parts[1].decode("ascii", "replace").upper() if len(parts) > 1 else ""
    return ""


def sip_label(data: bytes) -> tuple[str, str, bool]:
    """(label, kind, failed) of a SIP message: `INVITE` / `180 Ringing`."""
    line = _first_line(data)
    if line.upper().startswith("SIP/"):
        parts = line.split(" ", 2)
        code = parts[1] if len(parts) > 1 else "?"
        reason = parts[2] if len(parts) > 2 else ""
        failed = code.isdigit() and int(code) >= 400
        return f"{code} {reason}".strip(), "response", failed
    method = line.split(" ", 1)[0]
    has_sdp = b"\r\n\r\nv=0" in data
    return method + (" (SDP)" if has_sdp else ""), "request", False


def _party(leg: str, remote: tuple) -> str:
    return f"{leg} {remote[0]}"


def _ng_text(d: dict | None) -> str:
    """An NG command or reply: its dictionary as JSON, the SDP below it as text (masked)."""
    if d is None:
        return ""
    shown, sdp = {}, None
    for k, v in d.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        if k == "sdp" and isinstance(v, str):
            sdp = v
            continue
        shown[k] = v
    text = json.dumps(shown, indent=1, default=str, ensure_ascii=False)
    return text if sdp is None else f"{text}\n\nsdp:\n{mask_text(sdp)}"


def build(rec: Recording, names: dict[str, list[str]] | None = None) -> tuple[list[Column], list[Arrow]]:
    """Columns and arrows of a recording. `names`: IP address -> the Teams names that resolve
    there (config teams.resolve), to label Teams columns."""
    names = names or {}
    teams: list[str] = []
    pbx: list[str] = []
    use_ng = False
    events: list[tuple[float, int, Any]] = []
    for seq, e in enumerate(rec.entries):
        if isinstance(e, SipEntry):
            party = _party(e.leg, e.remote)
            side = teams if e.leg == "teams" else pbx
            if party not in side:
                side.append(party)
            events.append((e.wall, seq * 2, e))
        else:
            use_ng = True
            events.append((e.sent, seq * 2, ("cmd", e)))
            events.append((e.wall, seq * 2 + 1, ("reply", e)))
    columns: list[Column] = []
    for p in teams:
        ip = p.split(" ", 1)[1]
        known = names.get(ip, [])
        columns.append(Column(p, "Teams", f"{known[0]}" + (f" +{len(known) - 1}" if len(known) > 1 else "")
                              if known else ip))
    columns.append(Column(SBC, "SBC", ""))
    for p in pbx:
        columns.append(Column(p, "PBX", p.split(" ", 1)[1]))
    if use_ng:
        columns.append(Column(RTPENGINE, "rtpengine", "NG"))
    where = {c.key: i for i, c in enumerate(columns)}
    sbc, ng = where[SBC], where.get(RTPENGINE, -1)
    events.sort(key=lambda x: (x[0], x[1]))
    t0 = events[0][0] if events else rec.first
    arrows: list[Arrow] = []
    for wall, _, e in events:
        i = len(arrows)
        if isinstance(e, SipEntry):
            party = where[_party(e.leg, e.remote)]
            src, dst = (party, sbc) if e.direction == "in" else (sbc, party)
            label, kind, failed = sip_label(e.data)
            text = mask_message(e.data).decode("utf-8", "replace")
            head = (f"{e.leg} {e.direction} {e.transport} "
                    f"{_addr(e.remote if e.direction == 'in' else e.local)} -> "
                    f"{_addr(e.local if e.direction == 'in' else e.remote)} ({len(e.data)} bytes)")
            arrows.append(Arrow(i, wall - t0, wall, src, dst, label, kind, e.leg, _cseq(e.data), failed,
                                head + "\n\n" + text))
        else:
            what, ngc = e
            assert isinstance(ngc, NgEntry)
            name = str(ngc.command.get("command", "?"))
            if what == "cmd":
                arrows.append(Arrow(i, wall - t0, wall, sbc, ng, name, "ng", RTPENGINE, "", False,
                                    f"NG {name}\n\n{_ng_text(ngc.command)}"))
            else:
                if ngc.reply is None:
                    label, failed, text = f"{name}: {ngc.error}", True, f"NG {name} failed: {ngc.error}"
                else:
                    result = str(ngc.reply.get("result", "?"))
                    failed = result not in ("ok", "pong")
                    label = result if not failed else f"{result}: {ngc.reply.get('error-reason', '')}".strip()
                    text = f"NG {name} reply ({(ngc.wall - ngc.sent) * 1000:.1f} ms)\n\n{_ng_text(ngc.reply)}"
                arrows.append(Arrow(i, wall - t0, wall, ng, sbc, label, "ng-reply", RTPENGINE, "", failed, text))
    return columns, arrows


def _addr(a: tuple) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in str(a[0]) else f"{a[0]}:{a[1]}"


def pcap(rec: Recording) -> bytes:
    """The call's SIP as a pcap (fake UDP around each message, as capture/traces.py writes),
    credentials masked (same lengths: Content-Length stays true)."""
    out = [pcap_global_header()]
    for e in rec.entries:
        if isinstance(e, SipEntry):
            src, dst = (e.remote, e.local) if e.direction == "in" else (e.local, e.remote)
            out.append(pcap_record(e.wall, fake_udp_packet(src, dst, mask_message(e.data))))
    return b"".join(out)


def teams_names(config: Any) -> dict[str, list[str]]:
    """IP address -> Teams names resolving there by teams.resolve (labs, split DNS)."""
    out: dict[str, list[str]] = {}
    if config is not None:
        order = {name: i for i, name in enumerate(config.teams.proxies)}     # sip, sip2, sip3 first
        for name, hp in sorted(config.teams.resolve.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
            out.setdefault(hp.host, []).append(name)
    return out
