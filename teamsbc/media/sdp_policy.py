"""The NG commands the SBC sends to rtpengine, per moment of a call (pure functions, no I/O).

Option sets follow ``shared/reference/rtpengine.md`` ("Option sets that gave working
SRTP(SDES) <-> RTP"), rtpengine 10.5:

- an **offer** carries the options of the side that RECEIVES the offer (``toward``), plus
  ``direction`` (the two rtpengine interfaces) on the initial offer only;
- an **answer** carries the options of the side that receives the answer, i.e. the original
  offerer (``toward`` is that side);
- both carry the common options: ``replace: [origin, session-connection]`` and the flags
  ``trust-address`` (use the SDP address, not the signalling source) and ``port-latching``
  (keep the same local ports across re-offers: Teams ignores media address changes).

Toward Teams (reference section 8): ``RTP/SAVP``, DTLS off (no fingerprint lines), SDES with only
``AES_CM_128_HMAC_SHA1_80`` (rtpengine 10.5 offers 12 suites unless each other one is excluded
by name), rtcp-mux offered (and never flipped in a re-offer: Teams answers 488
"CannotChangeRtcpMultiplexing"), ICE as ICE-lite (default) or removed.
Toward the PBX: ``RTP/AVP``, no ICE, no SDES/DTLS, RTCP on its own port (demux), and only the
codecs the PBX can decode (rtpengine 10.5 cannot transcode SILK; ``telephone-event`` always kept).

Tags (``from-tag`` / ``to-tag``)
--------------------------------
rtpengine keys each side of a call by tag. ``from-tag`` must be the tag of the party that made
the OFFER, ``to-tag`` the tag of the party that answers it -- in the ``offer`` command and in the
matching ``answer``. With wrong tags rtpengine still says ok, with the wrong ports. For SDP in a
request that is simply the message's own From tag ("the From tag of the message that carries
the SDP"), so:

===============================================  =============  ==========  ==========
SDP carried by                                   NG command     from-tag    to-tag
===============================================  =============  ==========  ==========
INVITE (new call, caller offers)                 offer          From        --
183/200 to it (callee answers)                   answer         From        To
re-INVITE / UPDATE from the caller               offer          From        To
re-INVITE / UPDATE from the CALLEE               offer          From (*)    To (*)
200 to an offerless re-INVITE (late offer)       offer          To          From
ACK carrying the answer to that late offer       answer         To          From
===============================================  =============  ==========  ==========

(*) In a request from the callee, the From header carries the callee's tag, so "From tag of the
message" already swaps the roles relative to the initial INVITE; the proxy need not swap, it
must only take the tags from the message carrying the SDP, not from its stored dialog.
:func:`ng_tags` encodes the whole table: tags swap exactly when an offer rides in a response or
an answer rides in a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

__all__ = [
    "Side",
    "SDES_SUITES",
    "TEAMS_SUITE",
    "DEFAULT_CODECS_TO_PBX",
    "TEAMS_ONLY_ATTRIBUTES",
    "offer",
    "answer",
    "delete",
    "query",
    "play_dtmf",
    "synthetic_offer",
    "ng_tags",
    "strip_attributes",
    "sdp_size",
    "sdp_size_ok",
    "SDP_LIMIT_UDP",
    "SdpLimits",
    "limit_problem",
    "reply_bound",
]

Side = Literal["pbx", "teams"]
IceMode = Literal["lite", "remove"]

TEAMS_SUITE = "AES_CM_128_HMAC_SHA1_80"
# Every suite rtpengine 10.5 offers by default; all but TEAMS_SUITE are excluded toward Teams
# ("Offer nothing exotic (AEAD/DTLS offers have broken calls)", reference section 8).
SDES_SUITES = (
    "AEAD_AES_256_GCM",
    "AEAD_AES_128_GCM",
    "AES_256_CM_HMAC_SHA1_80",
    "AES_256_CM_HMAC_SHA1_32",
    "AES_192_CM_HMAC_SHA1_80",
    "AES_192_CM_HMAC_SHA1_32",
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
    "F8_128_HMAC_SHA1_80",
    "F8_128_HMAC_SHA1_32",
    "NULL_HMAC_SHA1_80",
    "NULL_HMAC_SHA1_32",
)
DEFAULT_CODECS_TO_PBX = ("PCMA", "PCMU", "G722", "telephone-event")
# Teams-private SDP attributes that rtpengine 10.5 passes through untouched (it has no
# ``sdp-attr`` manipulation yet): removed from SDP going to the PBX.
TEAMS_ONLY_ATTRIBUTES = ("x-candidate-ipv6",)
# A SIP message over UDP should stay under the path MTU (RFC 3261 section 18.1.1: 1300 bytes
# for the whole request when the MTU is unknown); this is the SDP's share of it by default.
SDP_LIMIT_UDP = 1300

_SENDONLY = re.compile(r"^a=sendonly(?=\r?$)", re.MULTILINE)

_REPLACE = ("origin", "session-connection")
_COMMON_FLAGS = ("trust-address", "port-latching")


def _check(toward: str, ice: str) -> None:
    if toward not in ("pbx", "teams"):
        raise ValueError(f"toward must be 'pbx' or 'teams', not {toward!r}")
    if ice not in ("lite", "remove"):
        raise ValueError(f"ice must be 'lite' or 'remove', not {ice!r}")


def _side_options(toward: Side, *, ice: IceMode, sdes_lifetime: bool) -> dict[str, Any]:
    """Options describing the SDP that rtpengine writes for ``toward``."""
    if toward == "pbx":
        return {
            "transport-protocol": "RTP/AVP",
            "ICE": "remove",
            "DTLS": "off",
            "SDES": ["off"],
            "rtcp-mux": ["demux"],
        }
    sdes = ["no-" + s for s in SDES_SUITES if s != TEAMS_SUITE]
    if sdes_lifetime:
        sdes.append("lifetime")
    return {
        "transport-protocol": "RTP/SAVP",
        "DTLS": "off",
        "SDES": sdes,
        "rtcp-mux": ["offer"],
        "ICE": "force" if ice == "lite" else "remove",
    }


def _base(command: str, sdp: str | None, call_id: str, from_tag: str, to_tag: str | None) -> dict:
    cmd: dict[str, Any] = {"command": command, "call-id": call_id, "from-tag": from_tag}
    if to_tag:
        cmd["to-tag"] = to_tag
    if sdp is not None:
        cmd["sdp"] = sdp
    return cmd


def offer(
    sdp: str,
    call_id: str,
    from_tag: str,
    toward: Side = "pbx",
    *,
    to_tag: str | None = None,
    codecs_to_pbx: Sequence[str] = DEFAULT_CODECS_TO_PBX,
    interfaces: tuple[str, str] | None = None,
    initial: bool = True,
    ice: IceMode = "lite",
    sdes_lifetime: bool = False,
    hold_inactive: bool = True,
    inject_dtmf: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """The ``offer`` command for an SDP offer travelling ``toward`` "pbx" or "teams".

    ``interfaces`` = (Teams-side rtpengine interface, PBX-side interface), e.g. ("pub", "priv"),
    in that fixed order whatever ``toward`` is: this function orders them into ``direction``
    ([from, to] = [Teams, PBX] toward the PBX, [PBX, Teams] toward Teams), on the ``initial``
    offer only (rtpengine keeps it for the call).
    ``to_tag`` for re-offers inside a dialog (see the module's tag table and :func:`ng_tags`).
    ``codecs_to_pbx``: the codecs kept toward the PBX, in the offerer's order (all others
    stripped; ``telephone-event`` always kept). ``ice``: "lite" (rtpengine answers Teams as an
    ICE-lite agent) or "remove" (no ICE toward Teams). ``sdes_lifetime``: send ``|2^31``.
    ``hold_inactive``: toward Teams, a PBX's ``a=sendonly`` hold becomes ``a=inactive``, the only
    hold Teams knows (reference section 8; rtpengine already replaces ``c=0.0.0.0``).
    ``inject_dtmf``: the ``inject-DTMF`` flag, which rtpengine needs in the offer and the answer
    before ``play DTMF`` can put RFC 4733 events into the stream (it then routes all audio of
    the call through its transcoding engine).
    ``label``: names the offerer's side in rtpengine ("caller" on the initial offer), which its
    statistics then carry (media/stats.py).
    """
    _check(toward, ice)
    cmd = _base("offer", sdp, call_id, from_tag, to_tag)
    if label:
        cmd["label"] = label
    flags = list(_COMMON_FLAGS)
    cmd["replace"] = list(_REPLACE)
    if toward == "pbx":
        cmd["sdp"] = strip_attributes(sdp, TEAMS_ONLY_ATTRIBUTES)
        cmd.update(_side_options("pbx", ice=ice, sdes_lifetime=sdes_lifetime))
        keep = list(dict.fromkeys([*codecs_to_pbx, "telephone-event"]))
        cmd["codec"] = {"strip": ["all"], "except": keep}
        # The offer comes from Teams: how rtpengine will later answer Teams about ICE.
        if ice == "lite":
            cmd["ICE-lite"] = "backward"
        else:
            flags.append("reject-ICE")
    else:
        if hold_inactive:
            cmd["sdp"] = _SENDONLY.sub("a=inactive", sdp)
        cmd.update(_side_options("teams", ice=ice, sdes_lifetime=sdes_lifetime))
        if ice == "lite":
            cmd["ICE-lite"] = "forward"
    if inject_dtmf:
        flags.append("inject-DTMF")
    cmd["flags"] = flags
    if initial and interfaces:
        teams_iface, pbx_iface = interfaces
        cmd["direction"] = [teams_iface, pbx_iface] if toward == "pbx" else [pbx_iface, teams_iface]
    return cmd


def answer(
    sdp: str,
    call_id: str,
    from_tag: str,
    to_tag: str,
    toward: Side = "teams",
    *,
    ice: IceMode = "lite",
    sdes_lifetime: bool = False,
    inject_dtmf: bool = False,
    label: str | None = None,
) -> dict[str, Any]:
    """The ``answer`` command for an SDP answer travelling ``toward`` the original offerer.

    No codec policy here: the answerer picked from what the offer allowed, and stripping again
    could remove the codec it picked. ``label`` names the answerer's side (rtpengine 10.5 puts
    the label of an answer on the to-tag's side): "callee" on the answer to the initial offer.
    """
    _check(toward, ice)
    if not to_tag:
        raise ValueError("an answer needs the to-tag of the answering side")
    cmd = _base("answer", sdp, call_id, from_tag, to_tag)
    if label:
        cmd["label"] = label
    cmd["replace"] = list(_REPLACE)
    cmd.update(_side_options(toward, ice=ice, sdes_lifetime=sdes_lifetime))
    if toward == "pbx":
        cmd["sdp"] = strip_attributes(sdp, TEAMS_ONLY_ATTRIBUTES)
    cmd["flags"] = list(_COMMON_FLAGS) + (["inject-DTMF"] if inject_dtmf else [])
    return cmd


def play_dtmf(call_id: str, from_tag: str, digit: str, duration_ms: int) -> dict[str, Any]:
    """``play DTMF``: one digit as RFC 4733 events, sent as if by the party of ``from_tag`` (the
    one that signalled it), toward the other side. rtpengine 10.5 plays it only in calls set up
    with the ``inject-DTMF`` flag; ``duration`` is clamped to its range (100-5000 ms)."""
    return {"command": "play DTMF", "call-id": call_id, "from-tag": from_tag, "code": digit,
            "duration": max(100, min(5000, duration_ms))}


# Static payload types (RFC 3551) and the clock rates of the codecs a PBX trunk speaks; a
# name in media.pbx_codecs outside this table cannot be offered on the PBX's behalf.
_STATIC_PT = {"PCMU": (0, 8000), "PCMA": (8, 8000), "G722": (9, 8000), "G729": (18, 8000)}
DTMF_PT = 101


def synthetic_offer(codecs: Sequence[str], address: str, session: int) -> str:
    """The offer the SBC makes for a PBX that sent INVITE without SDP (delayed offer, RFC 3261
    13.2.1): Teams needs an offer in the INVITE (reference section 5), so the PBX side is
    described from ``media.pbx_codecs`` at the PBX's own address, port 9 (discard, RFC 3264
    practice for "address not known yet"). rtpengine turns it into the SRTP offer toward Teams;
    the PBX's real address arrives with its answer in the ACK."""
    ip6 = ":" in address
    pts = [(n, *_STATIC_PT[n.upper()]) for n in codecs if n.upper() in _STATIC_PT]
    lines = ["v=0", f"o=- {session} 1 IN IP{6 if ip6 else 4} {address}", "s=-",
             f"c=IN IP{6 if ip6 else 4} {address}", "t=0 0",
             "m=audio 9 RTP/AVP " + " ".join(str(pt) for _, pt, _ in pts) + f" {DTMF_PT}"]
    lines += [f"a=rtpmap:{pt} {name.upper()}/{rate}" for name, pt, rate in pts]
    lines += [f"a=rtpmap:{DTMF_PT} telephone-event/8000", f"a=fmtp:{DTMF_PT} 0-16", "a=ptime:20",
              "a=sendrecv", ""]
    return "\r\n".join(lines)


def delete(call_id: str, from_tag: str | None = None, to_tag: str | None = None) -> dict[str, Any]:
    """``delete``: the whole call with only ``call_id``; with tags, rtpengine deletes the call
    when that leaves no other branch (a forked early dialog can be dropped by its to-tag)."""
    cmd: dict[str, Any] = {"command": "delete", "call-id": call_id}
    if from_tag:
        cmd["from-tag"] = from_tag
    if to_tag:
        if not from_tag:
            raise ValueError("a to-tag without a from-tag means nothing to rtpengine")
        cmd["to-tag"] = to_tag
    return cmd


def query(call_id: str, from_tag: str | None = None) -> dict[str, Any]:
    """``query``: per-stream counters of a call (packets, bytes, errors per side)."""
    cmd: dict[str, Any] = {"command": "query", "call-id": call_id}
    if from_tag:
        cmd["from-tag"] = from_tag
    return cmd


def ng_tags(from_tag: str, to_tag: str | None, *, in_request: bool, is_offer: bool) -> tuple[str, str | None]:
    """(NG from-tag, NG to-tag) for SDP found in a SIP message with these From/To tags.

    ``in_request``: the SDP rides in a request (INVITE, re-INVITE, UPDATE, ACK) rather than a
    response. ``is_offer``: the SDP is an offer (else an answer). The offerer's tag must be the NG
    from-tag; in a request the sender's tag is the From tag, in a response the responder's tag
    is the To tag -- hence the swap for offers in responses and answers in requests.
    """
    if in_request == is_offer:
        return from_tag, to_tag
    if not to_tag:
        raise ValueError("late offer / answer in ACK: the message has no To tag")
    return to_tag, from_tag


# --------------------------------------------------------------------------- SDP helpers

def strip_attributes(sdp: str, names: Iterable[str]) -> str:
    """``sdp`` without any ``a=NAME`` / ``a=NAME:...`` line for the given names (line endings
    kept)."""
    names = tuple(names)
    if not names:
        return sdp
    pattern = re.compile(
        r"^a=(?:" + "|".join(re.escape(n) for n in names) + r")(?::[^\r\n]*)?(?:\r\n|\n|$)",
        re.MULTILINE,
    )
    return pattern.sub("", sdp)


def sdp_size(sdp: str | bytes) -> int:
    """Size of an SDP body in bytes, as it goes on the wire (UTF-8)."""
    return len(sdp) if isinstance(sdp, bytes) else len(sdp.encode("utf-8"))


def sdp_size_ok(sdp: str | bytes, limit: int = SDP_LIMIT_UDP) -> bool:
    """True if the SDP fits in ``limit`` bytes.

    Use on the SDP rtpengine returns toward a UDP PBX (ICE and crypto already stripped there,
    so a Teams offer of ~1.5 KB comes back at ~0.5 KB). When it still does not fit, the proxy
    should not send a message the network may fragment or drop: answer the caller ``488`` /
    ``500`` with a reason naming the size and the limit, or use TCP toward the PBX.
    """
    return sdp_size(sdp) <= limit


# --------------------------------------------------------------------------- limits (issue 12)

# What rtpengine 10.5 adds per m-line toward Teams (a=crypto, ICE candidates, ice-ufrag/pwd,
# rtcp-mux, a=rtcp): 320-390 bytes measured; a reply is bounded by the SDP plus this per m-line.
REPLY_GROWTH_PER_MEDIA = 1024
REPLY_OVERHEAD = 2048            # the reply's other keys, bencode framing, the cookie
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class SdpLimits:
    """What an SDP may hold before any of it reaches rtpengine (media.max_* in the config).

    rtpengine 10.5 takes any SDP: 300 m-lines abort it (bencode.c: 'str_len <= 99999'), 250
    make an NG reply too large for a UDP datagram, 2,900 use up its ports. Teams sends one
    m-line (audio), sometimes video and data; a PBX the same."""
    max_media_lines: int = 8
    max_size: int = 16384
    max_attributes: int = 256
    max_line_length: int = 1024


def limit_problem(sdp: str, limits: SdpLimits) -> str | None:
    """Which limit this SDP exceeds, naming the configuration key, or None. Also refused:
    control characters (NUL, lone CR...) in a line: RFC 4566 5 allows none."""
    size = sdp_size(sdp)
    if size > limits.max_size:
        return f"SDP of {size} bytes exceeds media.max_sdp_size ({limits.max_size})"
    lines = sdp.split("\n")
    media = attributes = 0
    for line in lines:
        if len(line) > limits.max_line_length + 1:   # + the CR of a CRLF line end
            return (f"SDP line of {len(line.rstrip(chr(13)))} characters exceeds media.max_sdp_line_length "
                    f"({limits.max_line_length})")
        if line[:2] == "m=":
            media += 1
        elif line[:2] == "a=":
            attributes += 1
    if media > limits.max_media_lines:
        return f"SDP with {media} m-lines exceeds media.max_media_lines ({limits.max_media_lines})"
    if attributes > limits.max_attributes:
        return f"SDP with {attributes} attributes exceeds media.max_sdp_attributes ({limits.max_attributes})"
    if _CONTROL.search(sdp.replace("\r\n", "\n")):
        return "SDP with a control character (RFC 4566 5)"
    return None


def reply_bound(sdp: str) -> int:
    """An upper bound of the size of rtpengine's reply to a command carrying this SDP."""
    return sdp_size(sdp) + REPLY_OVERHEAD + REPLY_GROWTH_PER_MEDIA * max(1, sdp.count("\nm=") + sdp.startswith("m="))
