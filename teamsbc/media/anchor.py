"""When a call's media goes through rtpengine, and with which NG command. Sans-IO.

The proxy asks at three moments: a request it is about to relay (offer, answer in an ACK,
delete on BYE/CANCEL), a response with SDP it is about to relay (answer, or the offer of an
offerless re-INVITE's 200), and a call that failed (delete). It gets back a `Step`: either a
command to run and wait for (the SDP in the reply replaces the body) or one to fire and forget.
A PBX INVITE without SDP gets an offer the SBC makes for it (`late_offer`), and Teams' 2xx to
it a second step, `for_late_offer` (late_offer.py). Tags and per-side options come from
sdp_policy (reference rtpengine.md).
"""
from __future__ import annotations

from typing import Any

from .settings import MediaSection
from ..decisions import MediaStep
from ..sip.message import Message, Request, Response
from . import sdp_policy

SDP_TYPE = "application/sdp"
# rtpengine labels on the two sides of a call, set by the initial offer and its answer and
# carried by every statistics reply (media/stats.py): who is who, whatever the tag order.
CALLER, CALLEE = "caller", "callee"


def _declared_sdp(msg: Message) -> bytes | None:
    """The body when its Content-Type says SDP, else None."""
    if not msg.body:
        return None
    ctype = (msg.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    return msg.body if ctype == SDP_TYPE else None


def sdp_of(msg: Message) -> str | None:
    body = _declared_sdp(msg)
    if body is None:
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _tags(msg: Message) -> tuple[str, str | None]:
    return msg.from_addr.tag or "", msg.to_addr.tag


class SdpScreen:
    """The media.max_* limits on every SDP, from either leg, with or without rtpengine: with
    it, one INVITE must not take media down for every call (issue 12); without it, an SDP
    bomb is not relayed to the other side either."""

    def __init__(self, settings: MediaSection):
        self.limits = sdp_policy.SdpLimits(settings.max_media_lines, settings.max_sdp_size,
                                           settings.max_sdp_attributes, settings.max_sdp_line_length)

    def refusal(self, msg: Message) -> str | None:
        """Why the SDP of this message is refused (a media.max_* limit, or a body declared as
        SDP that is not UTF-8 text), or None."""
        body = _declared_sdp(msg)
        if body is None:
            return None
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError:
            return "SDP is not UTF-8 text"
        return sdp_policy.limit_problem(sdp, self.limits)


class MediaAnchor:
    """The MediaPlanner of decisions.py."""

    def __init__(self, settings: MediaSection, pbx_host: str = "0.0.0.0"):
        self.s = settings
        self.pbx_host = pbx_host   # where a delayed offer's placeholder SDP points (port 9)
        self.screen = SdpScreen(settings)
        self.limits = self.screen.limits

    def sdp_refusal(self, msg: Message) -> str | None:
        """Asked before every command that would carry this message's SDP."""
        return self.screen.refusal(msg)

    def _side_kw(self, toward: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"inject_dtmf": self.s.info_dtmf}
        if toward == "teams":
            kw.update(ice=self.s.teams_ice, sdes_lifetime=self.s.sdes_lifetime)
        return kw

    def _offer_kw(self, toward: str) -> dict[str, Any]:
        kw = self._side_kw(toward)
        if toward == "teams":
            kw["hold_inactive"] = self.s.hold_inactive
        return kw

    def for_request(self, req: Request, toward: str) -> MediaStep | None:
        call_id = req.call_id
        if req.method == "BYE":
            # with both tags rtpengine still deletes the whole call and answers with its
            # per-stream statistics (for the call detail record)
            f, t = _tags(req)
            return MediaStep(sdp_policy.delete(call_id, f or None, t), wait=False)
        if req.method == "CANCEL":
            return MediaStep(sdp_policy.delete(call_id), wait=False)
        sdp = sdp_of(req)
        f, t = _tags(req)
        if sdp is None and req.method == "INVITE" and t is None and toward == "teams":
            # delayed offer from the PBX: the SBC offers for it (late_offer.py)
            synthetic = sdp_policy.synthetic_offer(self.s.pbx_codecs, self.pbx_host, 1)
            return MediaStep(sdp_policy.offer(
                synthetic, call_id, f, toward, interfaces=self.s.interfaces, initial=True,
                **self._offer_kw(toward)), wait=True, late_offer=True)
        if sdp is None:
            return None  # offerless re-INVITE: the offer comes in the 200, the answer in the ACK
        if req.method in ("INVITE", "UPDATE"):
            initial = t is None
            from_tag, to_tag = sdp_policy.ng_tags(f, t, in_request=True, is_offer=True)
            return MediaStep(sdp_policy.offer(
                sdp, call_id, from_tag, toward, to_tag=to_tag, codecs_to_pbx=self.s.pbx_codecs,
                interfaces=self.s.interfaces if initial else None, initial=initial,
                label=CALLER if initial else None, **self._offer_kw(toward)), wait=True)
        if req.method == "ACK" and t is not None:
            from_tag, to_tag = sdp_policy.ng_tags(f, t, in_request=True, is_offer=False)
            return MediaStep(sdp_policy.answer(sdp, call_id, from_tag, to_tag or "", toward,
                                          **self._side_kw(toward)), wait=True)
        return None

    def for_response(self, resp: Response, request: Request, toward: str) -> MediaStep | None:
        if request.method not in ("INVITE", "UPDATE") or not (180 <= resp.status < 300):
            return None
        sdp = sdp_of(resp)
        if sdp is None:
            return None
        f, t = _tags(resp)
        if t is None:
            return None  # a 18x/2xx without To tag is malformed: rtpengine would pick wrong ports
        if sdp_of(request) is not None:
            from_tag, to_tag = sdp_policy.ng_tags(f, t, in_request=False, is_offer=False)
            initial = request.method == "INVITE" and request.to_addr.tag is None
            return MediaStep(sdp_policy.answer(sdp, request.call_id, from_tag, to_tag or "", toward,
                                               label=CALLEE if initial else None,
                                               **self._side_kw(toward)), wait=True)
        # the 200 of an offerless re-INVITE carries the offer (tags swap: the callee offers)
        from_tag, to_tag = sdp_policy.ng_tags(f, t, in_request=False, is_offer=True)
        return MediaStep(sdp_policy.offer(sdp, request.call_id, from_tag, toward, to_tag=to_tag,
                                     codecs_to_pbx=self.s.pbx_codecs, initial=False,
                                     **self._offer_kw(toward)), wait=True)

    def for_late_offer(self, teams_sdp: str, resp: Response, request: Request) -> MediaStep:
        """Teams' 2xx to the offer the SBC made for a PBX without SDP: Teams' SDP, already taken
        as the answer, is offered to the PBX as if Teams had sent it (tags swap: the offer rides
        in a response); the PBX answers in its ACK, which is then taken like any late answer."""
        from_tag, to_tag = sdp_policy.ng_tags(request.from_addr.tag or "", resp.to_addr.tag,
                                              in_request=False, is_offer=True)
        return MediaStep(sdp_policy.offer(teams_sdp, request.call_id, from_tag, "pbx", to_tag=to_tag,
                                          codecs_to_pbx=self.s.pbx_codecs, initial=False,
                                          **self._offer_kw("pbx")), wait=True)

    def for_failed_call(self, request: Request) -> MediaStep | None:
        """A new call that ended without answer: its rtpengine session goes too."""
        if request.method == "INVITE" and request.to_addr.tag is None and sdp_of(request) is not None:
            return MediaStep(sdp_policy.delete(request.call_id), wait=False)
        return None

    def sdp_problem(self, sdp: str, toward: str, transport: str) -> str | None:
        """Why this SDP cannot go to the PBX over UDP (reference 5: Teams' SDP exceeds 1500
        bytes; rtpengine strips ICE toward the PBX, and what is left must fit)."""
        if toward == "pbx" and transport == "udp" and not sdp_policy.sdp_size_ok(sdp, self.s.max_sdp_to_pbx):
            return (f"SDP of {sdp_policy.sdp_size(sdp)} bytes exceeds media.max_sdp_to_pbx "
                    f"({self.s.max_sdp_to_pbx}) for a UDP PBX trunk: use pbx.transport tcp or fewer codecs")
        return None
