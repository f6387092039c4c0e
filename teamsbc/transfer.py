"""Transfers by REFER (Microsoft's "option 2", `teams.allow_refer: true`), sans-IO policy.

With REFER in our Allow, Teams transfers a call by sending REFER to the SBC (reference 7). The
SBC is a proxy: the REFER goes to the PBX, which as the transferee sends a new INVITE through
the SBC to the `Refer-To` URI. That URI names a Teams host and is one of

    sip:+14255550100@sip.pstnhub.microsoft.com;user=phone           a PSTN number
    sip:sip.pstnhub.microsoft.com;x-m=8:orgid:...;x-t=<tenant id>   a Teams user: NO user part

and Teams wants it back as the Request-URI exactly as it sent it (the x-* parameters are how it
finds the user and the tenant), with `Referred-By` as it sent it (up to 400 characters).

So a new INVITE from the PBX whose Request-URI names a Teams host with a `+` user or no user is
a transfer target: it is passed unchanged when it has the shape of a Refer-To (a +E.164 user,
or no user and both x-m and x-t), refused otherwise. (A national number at a Teams host is an
ordinary call from a PBX whose trunk names Teams: made +E.164 as always.) It still only ever goes to the configured Teams proxies, never to the
host in the URI: the SBC relays nothing anywhere but Teams <-> PBX.

A transferee that does not copy Referred-By into its INVITE (RFC 3892 says it SHOULD; baresip,
for one, does not) gets the one Teams sent with the REFER put back: `TransferBook` remembers,
for a short while, the Referred-By of each Refer-To it saw go to the PBX. Two transfers to the
same target at once with different Referred-By cannot be told apart: then none is added.
"""
from __future__ import annotations

from collections import OrderedDict

from .sip.errors import ParseError
from .sip.uri import SipUri, parse_name_addr

REMEMBER_FOR = 64.0      # s: the transferee's INVITE follows its 202 at once (64*T1 is plenty)
REMEMBER_AT_MOST = 1024  # REFERs remembered at the same time (oldest forgotten first)
MAX_REFERRED_BY = 400    # reference 7: Teams' Referred-By can be this long; it passes unchanged


def refused_target(uri: SipUri) -> str | None:
    """Why a Request-URI naming a Teams host cannot be a transfer target, or None when it can."""
    if uri.user is not None:
        user = uri.user.split(";", 1)[0]
        if user.startswith("+") and user[1:].isdigit() and 3 <= len(user) - 1 <= 15:
            return None
        return f"{uri.user!r} is not a +E.164 number (a Refer-To toward Teams carries +E.164 or x-m/x-t)"
    missing = [p for p in ("x-m", "x-t") if not uri.params.get(p)]
    if missing:
        return f"a Teams URI without a user part needs {' and '.join(missing)} (the Refer-To of a Teams user)"
    return None


def refer_to_uri(value: str | None) -> str | None:
    """The URI of a Refer-To header value (RFC 3515 2.1), or None if there is none to read."""
    if not value:
        return None
    try:
        return parse_name_addr(value).uri
    except ParseError:
        return None


AMBIGUOUS = ""   # two different Referred-By for one Refer-To within REMEMBER_FOR


class TransferBook:
    """Refer-To URI -> the Referred-By Teams sent with it, for REMEMBER_FOR seconds. Bounded:
    only REFERs from Teams (mutually authenticated) are written, at most REMEMBER_AT_MOST."""

    def __init__(self) -> None:
        self._book: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def remember(self, refer_to: str, referred_by: str, now: float) -> None:
        self._expire(now)
        old = self._book.pop(refer_to, None)
        if old is not None and old[0] != referred_by:
            referred_by = AMBIGUOUS
        self._book[refer_to] = (referred_by, now + REMEMBER_FOR)
        while len(self._book) > REMEMBER_AT_MOST:
            self._book.popitem(last=False)

    def referred_by(self, uri: str, now: float) -> str | None:
        self._expire(now)
        entry = self._book.get(uri)
        return entry[0] if entry and entry[0] != AMBIGUOUS else None

    def _expire(self, now: float) -> None:
        while self._book:  # oldest first
            oldest, (_, until) = next(iter(self._book.items()))
            if until > now:
                break
            del self._book[oldest]

    def __len__(self) -> int:
        return len(self._book)
