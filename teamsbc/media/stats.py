"""rtpengine's statistics of a call (the reply to `delete` or `query`) -> events.MediaStats,
parsed once for everyone who wants them (call detail records, metrics). Pure function.

rtpengine 10.5 answers a delete with only a call-id with a bare {"result": "ok"}; a delete
with the from-tag carries `totals` and per-tag `medias[].streams[]` with `stats`.

Who is the caller: the initial offer labels the offerer's side "caller" and the answer to it
labels the answerer's side "callee" (media/anchor.py); rtpengine keeps the labels for the whole
call and reports them per tag, so every delete (BYE from either side, CANCEL, a failed call)
and every query tells the sides apart. Neither the order of the tags in the reply (the callee's
came first in a real reply: issue 12) nor the From/To tags of a BYE (swapped when the callee
hangs up) can. A call without labels (set up before this version) gets no caller/callee.

Which streams count: every stream that carries RTP ("RTP" in its flags), whatever else they say.
Teams multiplexes RTCP on the RTP port (RFC 5761), so its stream is flagged `RTP, RTCP, filled,
ICE`; skipping streams flagged RTCP dropped all of Teams' packets. A stream flagged RTCP only
(the PBX's separate RTCP port, the unused fallback of a muxed one) is left out.
"""
from __future__ import annotations

from typing import Any

from ..events import LegMedia, MediaStats
from .anchor import CALLEE, CALLER


def parse_stats(call_id: str, reply: Any) -> MediaStats:
    """The statistics in `reply` (empty when it has none: `MediaStats.empty`). caller / callee:
    what rtpengine received FROM the caller's / callee's endpoints (RTP streams only); the
    callee sums every tag labelled callee (forked early dialogs)."""
    if not isinstance(reply, dict):
        return MediaStats(call_id)
    totals = reply.get("totals") if isinstance(reply.get("totals"), dict) else {}
    tags = reply.get("tags") if isinstance(reply.get("tags"), dict) else {}
    legs: list[LegMedia] = []
    labels: dict[str, list[LegMedia]] = {CALLER: [], CALLEE: []}
    for tag, t in tags.items():
        if isinstance(t, dict):
            leg = _leg(str(tag), t)
            legs.append(leg)
            label = t.get("label")
            if label in labels:
                labels[label].append(leg)
    return MediaStats(call_id, dict(totals), _sum(labels[CALLER]), _sum(labels[CALLEE]), tuple(legs))


def _sum(legs: list[LegMedia]) -> LegMedia | None:
    if not legs:
        return None
    if len(legs) == 1:
        return legs[0]
    return LegMedia(",".join(x.tag for x in legs), packets=sum(x.packets for x in legs),
                    bytes=sum(x.bytes for x in legs), errors=sum(x.errors for x in legs))


def _carries_rtp(stream: dict) -> bool:
    flags = stream.get("flags") or []
    return "RTP" in flags or "RTCP" not in flags


def _leg(tag: str, t: dict) -> LegMedia:
    packets = bytes_ = errors = 0
    endpoint = local = None
    for m in t.get("medias") or []:
        for s in (m.get("streams") or []) if isinstance(m, dict) else []:
            if not isinstance(s, dict) or not _carries_rtp(s):
                continue
            st = s.get("stats") or {}
            packets += int(st.get("packets") or 0)
            bytes_ += int(st.get("bytes") or 0)
            errors += int(st.get("errors") or 0)
            ep = s.get("endpoint") or {}
            if endpoint is None and ep.get("address"):
                endpoint = f"{ep.get('address')}:{ep.get('port')}"
                local = f"{s.get('local address')}:{s.get('local port')}"
    return LegMedia(tag, endpoint, local, packets, bytes_, errors)
