"""What the PBX hears while Teams rings: `pbx.early_media: pass | ringback`. Sans-IO policy.

Teams answers a call to a Teams user with 180s (one per ringing endpoint), then a 183 whose SDP
is its media processor's, which sends silence until someone answers (reference 6). Some PBXs and
carriers stop their local ringback on any 183 with SDP, so the caller hears nothing
(dSIPRouter's "silent ringback", issue 421 there, fixed by not forwarding that 183).

    pass      every provisional goes to the PBX as Teams sent it (default)
    ringback  the first provisional the PBX gets is a 180 without SDP, so it plays its own
              ringback, unless that first provisional is a 183 with SDP: nothing rings yet and
              the media carries something (an announcement, the far end's ringback when Teams
              forwards to the PSTN), and then early media flows as sent. Once a 180 went, later
              183s with SDP are not forwarded; later 180s are.

As a table (the h11 rule: the cases in one place), per relayed INVITE from the PBX:

    heard so far   provisional from Teams         action   heard now
    NOTHING        180 without SDP                pass     RINGING
    NOTHING        183 with SDP                   pass     EARLY_MEDIA
    NOTHING        other 18x (no SDP, or 180+SDP) as_180   RINGING
    RINGING        180 without SDP                pass     RINGING
    RINGING        anything else                  drop     RINGING
    EARLY_MEDIA    anything                       pass     EARLY_MEDIA
"""
from __future__ import annotations

import enum


class Heard(enum.Enum):
    NOTHING = "nothing"
    RINGING = "ringing"            # a 180 without SDP went: the PBX plays its own ringback
    EARLY_MEDIA = "early media"    # a 183 with SDP went: the PBX plays the media


class Action(enum.Enum):
    PASS = "pass"
    AS_180 = "as 180"    # sent as "180 Ringing" without a body
    DROP = "drop"


class Kind(enum.Enum):
    RING = "180 without SDP"
    MEDIA = "183 with SDP"
    OTHER = "other"


RINGBACK: dict[tuple[Heard, Kind], tuple[Action, Heard]] = {
    (Heard.NOTHING, Kind.RING): (Action.PASS, Heard.RINGING),
    (Heard.NOTHING, Kind.MEDIA): (Action.PASS, Heard.EARLY_MEDIA),
    (Heard.NOTHING, Kind.OTHER): (Action.AS_180, Heard.RINGING),
    (Heard.RINGING, Kind.RING): (Action.PASS, Heard.RINGING),
    (Heard.RINGING, Kind.MEDIA): (Action.DROP, Heard.RINGING),
    (Heard.RINGING, Kind.OTHER): (Action.DROP, Heard.RINGING),
    (Heard.EARLY_MEDIA, Kind.RING): (Action.PASS, Heard.EARLY_MEDIA),
    (Heard.EARLY_MEDIA, Kind.MEDIA): (Action.PASS, Heard.EARLY_MEDIA),
    (Heard.EARLY_MEDIA, Kind.OTHER): (Action.PASS, Heard.EARLY_MEDIA),
}


def kind_of(status: int, has_sdp: bool) -> Kind:
    if status == 180 and not has_sdp:
        return Kind.RING
    if status == 183 and has_sdp:
        return Kind.MEDIA
    return Kind.OTHER


def toward_pbx(mode: str, heard: Heard, status: int, has_sdp: bool) -> tuple[Action, Heard]:
    """What to do with one provisional (101-199) on its way to the PBX."""
    if mode != "ringback":
        return Action.PASS, heard
    return RINGBACK[(heard, kind_of(status, has_sdp))]
