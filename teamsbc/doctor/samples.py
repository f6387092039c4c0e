"""The messages the identity check judges: what the SBC's own code sends toward Teams with
this config (the generator), and messages an operator captured (`--sample FILE`).

The generator drives the sans-IO core (`app.build`) with plain function calls, as the tests
do: a Teams OPTIONS (our answer), a PBX INVITE per identity (the relayed INVITE) and a Teams
INVITE answered 200 by the PBX (the relayed 200 OK), for the base FQDN and every tenant. The
messages fed in are built with teamsbc.sip (`new_request`, `make_response`). Media is left out
(signalling only), so no rtpengine is needed.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..app import build
from ..config import Config
from ..media.settings import MediaSection
from ..proxy import PBX, TEAMS, Destination, Source
from ..routing import Router
from ..teams import throwaway_keys
from ..sip.build import branch, new_request
from ..sip.message import (KEEPALIVE_PING, Message, Request, Response, StreamFramer,
                           make_response, parse_message)

KEYS = throwaway_keys()   # the samples seal nothing that must open elsewhere: no secret file made
TEAMS_ADDR = ("52.114.14.70", 41234)     # a Teams signalling address (52.112.0.0/14)
TEAMS_VIA = "SIP/2.0/TLS 52.114.14.70:5061"
TEAMS_CALLER = "<sip:+12065550123@sip.pstnhub.microsoft.com:5061;user=phone>"
CALLEE = "+442079460123"
SDP = (b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
       b"m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")


def _teams_request(method: str, ruri: str, n: int, extra: list[tuple[str, str]],
                   body: bytes = b"") -> bytes:
    if body:
        extra = [*extra, ("content-type", "application/sdp")]
    return new_request(method, ruri, via=f"{TEAMS_VIA};branch={branch(f'{method.lower()}{n}')}",
                       from_=f"{TEAMS_CALLER};tag=teams{n}", to=f"<{ruri.split(';')[0]}>",
                       call_id=f"doctor-{method.lower()}-{n}", cseq=1, extra=extra, body=body).to_bytes()


def _refusals(sends: list) -> str:
    answers = [parse_message(s.data) for s in sends]
    return ", ".join(f"{m.status} {m.reason}" for m in answers if isinstance(m, Response))


def sample_messages(config: Config) -> list[tuple[str, Message]]:
    """(label, message) of what the SBC's own code sends toward Teams with this config: our
    OPTIONS, our answer to Teams' OPTIONS, a relayed INVITE (PBX -> Teams) and a relayed
    200 OK (Teams -> PBX call), for the base FQDN and every tenant."""
    conf = dataclasses.replace(config, media=MediaSection())
    router = Router(conf)
    out: list[tuple[str, Message]] = []
    if conf.teams.proxies:
        out.append(("OPTIONS [ours]", router.options_request(conf.teams.proxies[0])[0]))
    teams_src = Source(TEAMS, "tls", TEAMS_ADDR, conn=object(),
                       peer_name=conf.teams.proxies[0] if conf.teams.proxies else None)
    port = conf.teams.signaling_port

    # our answer to Teams' OPTIONS
    proxy = build(conf, keys=KEYS)[1]
    sends = proxy.receive(_teams_request("OPTIONS", f"sip:{conf.sbc.fqdn}:{port}", len(out),
                                         [("contact", "<sip:sip.pstnhub.microsoft.com:5061;transport=tls>")]),
                          teams_src, 0.0)
    answers = [parse_message(s.data) for s in sends if s.to == teams_src]
    answers = [m for m in answers if isinstance(m, Response) and m.status >= 200]
    if not answers:
        raise ValueError("no answer to Teams' OPTIONS")
    out.append(("answer to Teams' OPTIONS [ours]", answers[0]))

    tenants = conf.teams.tenants
    identities = [(conf.sbc.fqdn, None), *tenants.items()]
    prefixes = [p for t in tenants.values() for p in t.numbers]
    for name, tenant in identities:
        # PBX -> Teams: a new call from the PBX trunk of that identity
        trunk = tenant.pbx if tenant is not None and tenant.pbx else conf.pbx.address
        if tenant is not None and not tenant.pbx:
            caller = tenant.numbers[0] + "0" * max(0, 11 - len(tenant.numbers[0]))
        else:
            caller = next(c for c in ("+19995550100", "+29995550100", "+89995550100")
                          if not any(c.startswith(p) for p in prefixes))
        pbx_src = Source(PBX, conf.pbx.transport, trunk.as_tuple())
        me = conf.pbx.listen
        n = len(out)
        invite = new_request(
            "INVITE", f"sip:{CALLEE}@{me}",
            via=f"SIP/2.0/{conf.pbx.transport.upper()} {trunk};branch={branch(f'doc{n}')}",
            from_=f"<sip:{caller}@{trunk.host}>;tag=pbx{n}", to=f"<sip:{CALLEE}@{me}>",
            call_id=f"doctor-pbx-{n}@{trunk.host}", cseq=1,
            extra=[("contact", f"<sip:1000@{trunk}>"), ("content-type", "application/sdp")], body=SDP)
        proxy = build(conf, keys=KEYS)[1]
        sends = proxy.receive(invite.to_bytes(), pbx_src, 0.0)
        fwd = [s for s in sends if isinstance(s.to, Destination) and s.to.leg == TEAMS]
        if not fwd:
            raise ValueError(f"a PBX INVITE for {name} was not relayed to Teams: {_refusals(sends)}")
        out.append((f"relayed INVITE [{name}]", parse_message(fwd[0].data)))

        # Teams -> PBX: a new call to that identity; the PBX answers 200 with its own Contact
        proxy = build(conf, keys=KEYS)[1]
        ruri = f"sip:{CALLEE}@{name}:{port};user=phone;transport=tls"
        sends = proxy.receive(_teams_request(
            "INVITE", ruri, len(out),
            [("record-route", "<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"),
             ("contact", "<sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=0a1b>")], SDP),
            teams_src, 0.0)
        to_pbx = [s for s in sends if isinstance(s.to, Destination) and s.to.leg == PBX]
        if not to_pbx:
            raise ValueError(f"an INVITE from Teams to {name} was not relayed to the PBX: {_refusals(sends)}")
        req = parse_message(to_pbx[0].data)
        assert isinstance(req, Request)
        dest = to_pbx[0].to
        ok = make_response(req, 200, "OK", to_tag="pbx200")
        for rr in req.headers.get_all("record-route"):
            ok.headers.add("record-route", rr)
        ok.headers.add("contact", f"<sip:{CALLEE}@{dest.host}:{dest.port}>")
        ok.headers.add("content-type", "application/sdp")
        ok.body = SDP
        sends = proxy.receive(ok.to_bytes(), Source(PBX, conf.pbx.transport, (dest.host, dest.port)), 0.1)
        relayed = [parse_message(s.data) for s in sends if s.to == teams_src]
        relayed = [m for m in relayed if isinstance(m, Response) and m.status == 200]
        if not relayed:
            raise ValueError(f"the PBX's 200 OK for a call to {name} was not relayed to Teams")
        out.append((f"relayed 200 OK [{name}]", relayed[0]))
    return out


def load_sample_file(path: Path) -> list[Message]:
    """SIP messages from a file (one, or several framed by Content-Length), as sent to Teams.
    Line ends are made CRLF first: captures pasted from a terminal or a log have bare LFs."""
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n").strip() + b"\r\n"
    if b"\r\n\r\n" not in raw:
        raw += b"\r\n"
    frames: list[bytes] = []
    if re.search(rb"(?im)^(content-length|l)\s*:", raw):
        try:
            frames = [f for f in StreamFramer().feed(raw) if f is not KEEPALIVE_PING]  # type: ignore[misc]
        except Exception:
            frames = []
    if not frames:
        frames = [raw]
    msgs = []
    for f in frames:
        try:
            msgs.append(parse_message(f))
        except Exception as e:
            raise ValueError(f"not a SIP message: {e}") from None
    if not msgs:
        raise ValueError("no SIP message found")
    return msgs
