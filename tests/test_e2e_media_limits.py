"""Issue 12, item 1 end to end: no INVITE can take media down for everyone.

The real SBC process and a real rtpengine 10.5 (tests/test_e2e_media.py's rig). Each "bomb"
is an INVITE whose SDP breaks a media.max_* limit, from Teams (TLS) and from the PBX (UDP):
300 m-lines made rtpengine abort (bencode.c assertion), 250 made its reply too large for a UDP
datagram (the offer timed out and the instance was marked down), 2,900 used up its ports. Each
gets 488 with a Warning naming the limit; rtpengine never sees it (its log has no command for
that Call-ID), is still running and answers pings; the next legitimate call has media both ways
(SRTP toward Teams, RTP toward the PBX); the instance was never marked down and /health stays
200.
"""
from __future__ import annotations

import asyncio
import json
import re
import secrets
import urllib.request

import pytest

from tests.support.rtpengine import PBX_IP, RtpEngine
from tests.test_e2e_media import (LOOPBACK, PBX_CALLER, TEAMS_CALLEE, TEAMS_CALLER, UK_NATIONAL,
                                  _branch, _finish, _is_response, call_from_pbx, call_from_teams,
                                  hang_up, ng_calls, ng_commands, rig, until_calls)

pytestmark = pytest.mark.e2e

HEAD = f"v=0\r\no=- 1 1 IN IP4 {PBX_IP}\r\ns=-\r\nc=IN IP4 {PBX_IP}\r\nt=0 0\r\n"
AUDIO = "m=audio 20000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"

BOMBS = [
    # (what, SDP, the limit the Warning names)
    ("300 m-lines", HEAD + "".join(f"m=audio {20000 + 2 * i} RTP/AVP 0\r\n" for i in range(300)),
     "media.max_media_lines"),
    ("250 m-lines", HEAD + "".join(f"m=audio {20000 + 2 * i} RTP/AVP 0\r\n" for i in range(250)),
     "media.max_media_lines"),
    ("2,900 m-lines", HEAD + "m=audio 9 RTP/AVP 0\r\n" * 2900, "media.max_sdp_size"),  # 61 KB: size first
    ("20 KB of SDP", HEAD + AUDIO + ("a=x-pad:" + "p" * 1000 + "\r\n") * 20, "media.max_sdp_size"),
    ("400 attributes", HEAD + AUDIO + "a=x-n:1\r\n" * 400, "media.max_sdp_attributes"),
    ("a 4,000-character line", HEAD + AUDIO + "a=fmtp:0 " + "q" * 4000 + "\r\n", "media.max_sdp_line_length"),
]


async def pbx_invite_with(r, sdp: str) -> tuple[str, object]:
    """A new call from the PBX UA with this SDP; waits for the final response."""
    call_id = f"{secrets.token_hex(8)}@pbx"
    lines = [f"INVITE sip:{UK_NATIONAL}@{r.pbx.sbc[0]}:{r.pbx.sbc[1]} SIP/2.0",
             f"Via: SIP/2.0/UDP {LOOPBACK}:{r.pbx.port};branch={_branch()};rport", "Max-Forwards: 70",
             f"From: <sip:{PBX_CALLER}@{LOOPBACK}>;tag={secrets.token_hex(4)}",
             f"To: <sip:{UK_NATIONAL}@{LOOPBACK}>", f"Call-ID: {call_id}", "CSeq: 1 INVITE",
             f"Contact: <sip:{PBX_CALLER}@{LOOPBACK}:{r.pbx.port}>"]
    r.pbx._send(_finish(lines, sdp), r.pbx.sbc)
    final = await r.pbx.wait_for(lambda m: _is_response(m, call_id, 1, "INVITE") and m.status >= 200,
                                 what=f"final response call_id={call_id}")
    return call_id, final


async def refused_unrelayed(r, leg: str, what: str, sdp: str, limit: str) -> tuple[str, str]:
    """A new call from `leg` with this SDP: 488 naming `limit`, and neither side got a request
    of it. Returns the Call-ID and a diagnostic."""
    if leg == "teams":
        call = await r.peer.invite(to=TEAMS_CALLEE, from_=TEAMS_CALLER, sdp=sdp)
        call_id, status, warning = call.call_id, call.status, call.final.msg.header("warning")
    else:
        call_id, final = await pbx_invite_with(r, sdp)
        status, warning = final.status, final.header("warning")
    d = f"{what} from {leg}\n{r.diag()}"
    assert status == 488, d
    assert limit in (warning or ""), (warning, d)
    assert not r.pbx.find(lambda m: m.call_id == call_id and m.is_request), d
    assert not r.peer.find(lambda m: m.msg.call_id == call_id and m.msg.is_request), d
    return call_id, d


def health(r) -> int:
    admin = r.sbc.config["admin"]["listen"]
    try:
        with urllib.request.urlopen(f"http://{admin}/health", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


async def test_sdp_bombs_from_either_leg_never_reach_rtpengine(procs, tmp_path, test_pki):
    eng = RtpEngine(procs).start()
    async with rig(procs, tmp_path, test_pki, [eng.ng_udp], [eng]) as r:
        for what, sdp, limit in BOMBS:
            for leg in ("teams", "pbx"):
                call_id, d = await refused_unrelayed(r, leg, what, sdp, limit)
                assert eng.process.running, d
                assert eng.command({"command": "ping"})["result"] == "pong", d
                assert ng_commands(eng, call_id) == [], d          # rtpengine never saw it
            # the next legitimate calls have media, both ways
            c = await (call_from_teams(r) if what != "250 m-lines" else call_from_pbx(r))
            await c.media(10)
            await hang_up(r, c, "teams")
            await until_calls(eng, [], r.diag)
        assert await ng_calls(eng) == []
        assert not [l for l in r.log_lines() if "is down" in l], r.diag()
        assert await asyncio.to_thread(health, r) == 200, r.diag()
        body = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(
            f"http://{r.sbc.config['admin']['listen']}/health", timeout=5)))
        assert re.search(r"up", json.dumps(body)), body


async def test_without_rtpengine_the_limits_still_hold_and_nothing_is_relayed(procs, tmp_path, test_pki):
    """Signalling only (media.rtpengine: []), the real SBC process: a 300-m-line SDP from
    either leg gets 488 naming media.max_media_lines and never reaches the other side (a
    stranger's install relayed it to Teams as it was); the next call is relayed."""
    async with rig(procs, tmp_path, test_pki, [], []) as r:
        what, sdp, limit = BOMBS[0]
        for leg in ("teams", "pbx"):
            await refused_unrelayed(r, leg, what, sdp, limit)
        call_id, final = await pbx_invite_with(r, HEAD + AUDIO)   # a normal offer goes through
        assert final.status == 200, r.diag()
        assert r.peer.find(lambda m: m.msg.call_id == call_id and m.msg.is_request), r.diag()
