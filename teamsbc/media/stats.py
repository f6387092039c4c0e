"""rtpengine's statistics of a call (the reply to `delete` or `query`) -> events.MediaStats,
parsed once for everyone who wants them (call detail records, metrics). Pure function.

rtpengine 10.5 answers a delete with only a call-id with a bare {"result": "ok"}; a delete
with the from-tag carries `totals` and per-tag `medias[].streams[]` with `stats`.
"""
from __future__ import annotations

from typing import Any

from ..events import LegMedia, MediaStats


def parse_stats(call_id: str, reply: Any) -> MediaStats:
    """The statistics in `reply` (empty when it has none: `MediaStats.empty`).

    caller / callee: what rtpengine received FROM the caller's / callee's endpoints (RTP
    streams only). rtpengine lists a call's tags in creation order: the first one is the
    offerer of the initial INVITE, i.e. the caller; every later one counts as the callee."""
    if not isinstance(reply, dict):
        return MediaStats(call_id)
    totals = reply.get("totals") if isinstance(reply.get("totals"), dict) else {}
    tags = reply.get("tags") if isinstance(reply.get("tags"), dict) else {}
    legs: list[LegMedia] = []
    for tag, t in tags.items():
        if isinstance(t, dict):
            legs.append(_leg(str(tag), t))
    caller = legs[0] if legs else None
    callee = None
    if len(legs) > 1:
        callee = LegMedia(",".join(x.tag for x in legs[1:]),
                          packets=sum(x.packets for x in legs[1:]),
                          bytes=sum(x.bytes for x in legs[1:]),
                          errors=sum(x.errors for x in legs[1:]))
    return MediaStats(call_id, dict(totals), caller, callee, tuple(legs))


def _leg(tag: str, t: dict) -> LegMedia:
    packets = bytes_ = errors = 0
    endpoint = local = None
    for m in t.get("medias") or []:
        for s in (m.get("streams") or []) if isinstance(m, dict) else []:
            if not isinstance(s, dict) or "RTCP" in (s.get("flags") or []):
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
