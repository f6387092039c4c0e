"""In-dialog requests from the PBX that the SBC answers itself, per method. Sans-IO policy.

Teams' Allow is `INVITE, ACK, OPTIONS, CANCEL, BYE, NOTIFY` (reference 6): relaying anything
else only earns a 405 from Teams, which some PBXs take as a reason to end the call. What a PBX
expects instead:

    UPDATE without SDP    200 here (RFC 3311: a session-timer refresh or a target refresh that
                          changes nothing Teams must know); Contact = its own Request-URI, so the
                          PBX keeps sending to Teams' target; Session-Expires echoed (RFC 4028 9)
    UPDATE with SDP       488 here with a Warning: Teams cannot take a new offer outside a
                          re-INVITE (RFC 3311 5.2 leaves the session as it was)
    INFO with DTMF        (application/dtmf-relay, application/dtmf) with `media.info_dtmf` and
                          rtpengine anchoring the media: rtpengine plays the digit toward Teams
                          as RFC 4733 events (`play DTMF`), then 200; Teams takes DTMF only as
                          telephone-event (reference 8)
    any other INFO        405 here, with the Allow of the PBX leg (without INFO unless
                          media.info_dtmf), never bothering Teams
    PRACK (pbx.prack: strip) is the SBC's own: see reliable.py; one matching nothing gets 481.
"""
from __future__ import annotations

import re

from .decisions import Reply
from .media import sdp_policy
from .sip.message import Request

ALLOW_BASE = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, UPDATE, REFER"
DTMF_TYPES = ("application/dtmf-relay", "application/dtmf")
DTMF_DURATION_MS = 250   # rtpengine's default when the INFO names none
_SIGNAL = re.compile(r"^\s*signal\s*=\s*(\S)", re.I | re.M)
_DURATION = re.compile(r"^\s*duration\s*=\s*(\d{1,5})\s*$", re.I | re.M)
_DIGITS = "0123456789*#ABCD"
# application/dtmf-relay also writes the events 0-15 as numbers (Signal=10 is '*', 11 '#')
_EVENT_NUMBERS = {str(i): _DIGITS[i] for i in range(16)}


def allow_toward_pbx(prack: bool, info: bool) -> str:
    """The methods the PBX may send us (OPTIONS answers): PRACK when the SBC absorbs it,
    INFO when DTMF in INFO becomes RFC 4733."""
    return ALLOW_BASE + (", PRACK" if prack else "") + (", INFO" if info else "")


def content_type(req: Request) -> str:
    return (req.headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def dtmf_of(req: Request) -> tuple[str, int] | None:
    """(digit, duration in ms) of a DTMF INFO (application/dtmf-relay `Signal=5` /
    `Duration=160`, or application/dtmf `5`), or None."""
    ctype = content_type(req)
    try:
        body = req.body.decode("ascii")
    except UnicodeDecodeError:
        return None
    if ctype == "application/dtmf-relay":
        m = _SIGNAL.search(body)
        if m is None:
            return None
        signal = m.group(1).upper()
        rest = body[m.end(1):].split("\n", 1)[0].strip()
        if signal.isdigit() and rest.isdigit():  # Signal=10, Signal=11
            signal = _EVENT_NUMBERS.get(signal + rest, "")
        d = _DURATION.search(body)
        duration = int(d.group(1)) if d else DTMF_DURATION_MS
    elif ctype == "application/dtmf":
        signal = body.strip().upper()
        signal = _EVENT_NUMBERS.get(signal, signal)
        duration = DTMF_DURATION_MS
    else:
        return None
    if len(signal) != 1 or signal not in _DIGITS:
        return None
    return signal, duration


def update_answer(req: Request) -> Reply:
    if req.body:
        return Reply(488, "Not Acceptable Here", [(
            "Warning", '399 sbc "SDP in UPDATE is not supported toward Teams: use re-INVITE"')],
            log="UPDATE with SDP from the PBX (Teams takes offers only in re-INVITE)")
    headers = [("Contact", f"<{req.uri}>")]
    se = req.headers.get("session-expires")
    if se:
        value = se if "refresher=" in se.lower() else f"{se};refresher=uac"
        headers.append(("Session-Expires", value))
        if "timer" in (req.headers.get("supported") or "").lower():
            headers.append(("Require", "timer"))
    return Reply(200, "OK", headers)


def info_answer(req: Request, dtmf_to_rfc4733: bool, allow: str) -> Reply:
    dtmf = dtmf_of(req) if dtmf_to_rfc4733 else None
    if dtmf is None:
        why = ("INFO without DTMF" if dtmf_to_rfc4733 else
               "INFO from the PBX (Teams takes DTMF only as RFC 4733; media.info_dtmf is off)")
        return Reply(405, "Method Not Allowed", [("Allow", allow)], log=why)
    digit, duration = dtmf
    command = sdp_policy.play_dtmf(req.call_id, req.from_addr.tag or "", digit, duration)
    return Reply(200, "OK", media=command, log=f"DTMF {digit} as RFC 4733")
