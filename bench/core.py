"""The sans-IO core alone: CPU per call of `Proxy.receive` with no sockets, TLS or sipp.

    .venv/bin/python bench/core.py                 # 3,000 calls each way, microseconds per call
    .venv/bin/python bench/core.py --profile       # and cProfile's top functions (own time)

A development tool beside bench/run (which measures the whole SBC against Kamailio): it
replays sipp's uac.xml/uas.xml call (INVITE, 100, 180, 200, ACK, BYE, 200) through the proxy in
both directions, the callee's answers built from what the proxy sent, and times only the
proxy's own calls (`receive` and the draining of its events). Absolute numbers depend on the
machine; compare two revisions on the same one.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from teamsbc import config as cfg  # noqa: E402
from teamsbc.app import build  # noqa: E402
from teamsbc.decisions import PBX, TEAMS, Source  # noqa: E402
from teamsbc.sealing import Keyring, Secret  # noqa: E402
from teamsbc.sip.message import parse_message  # noqa: E402

PBX_ADDR = ("127.0.0.1", 5080)
TEAMS_ADDR = ("127.0.0.1", 41234)
SDP = (b"v=0\r\no=sipp-uac 42 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n")


def make_config(tmp: Path) -> cfg.Config:
    for n in ("c.pem", "k.pem"):
        (tmp / n).write_text("x")
    return cfg.from_dict({
        "sbc": {"fqdn": "sbc.example.com", "secret": "0" * 64},
        "teams": {"listen": "127.0.0.1:5061", "certificate": "c.pem", "private_key": "k.pem",
                  "options_interval": 600},
        "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.1:5080",
                "options_interval": 0},
        "numbers": {"country_code": "44"},
        "log": {"level": "warning"},
        "security": {"teams_rate": 0, "pbx_rate": 0, "teams_connect_rate": 0, "max_calls": 1_000_000},
    }, base=tmp)


def invite(n: int, leg: str) -> bytes:
    if leg == TEAMS:
        via, ruri = f"SIP/2.0/TLS 127.0.0.1:41234;branch=z9hG4bK-1-{n}-inv;rport", "sip:+442079460000@sbc.example.com:5061"
        contact = "sip:+14255550100@sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls"
        rr = "Record-Route: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
        frm, to = "<sip:+14255550100@sip.pstnhub.microsoft.com>", "<sip:+442079460000@sbc.example.com>"
    else:
        via, ruri = f"SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-1-{n}-inv;rport", "sip:02079460000@127.0.0.1:5060"
        contact, rr = "sip:sipp@127.0.0.1:5080", ""
        frm, to = "<sip:1000@127.0.0.1>", "<sip:02079460000@127.0.0.1>"
    return (f"INVITE {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n{rr}"
            f"From: {frm};tag=1SIPpTag00{n}\r\nTo: {to}\r\nCall-ID: {n}-1@127.0.0.1\r\n"
            f"CSeq: 1 INVITE\r\nContact: <{contact}>\r\nAllow: INVITE,ACK,OPTIONS,CANCEL,BYE,NOTIFY\r\n"
            f"User-Agent: teamsbc-tests sipp\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(SDP)}\r\n\r\n").encode() + SDP


def answer(req: bytes, status: int, reason: str, contact: str, body: bytes = b"") -> bytes:
    r = parse_message(req)
    lines = [f"SIP/2.0 {status} {reason}"] + [f"Via: {v}" for v in r.headers.get_all("via")]
    lines += [f"Record-Route: {v}" for v in r.headers.get_all("record-route")]
    to = r.headers.get("to") or ""
    if status > 100:
        to += ";tag=callee1"
    lines += [f"From: {r.headers.get('from')}", f"To: {to}", f"Call-ID: {r.call_id}",
              f"CSeq: {r.headers.get('cseq')}", f"Contact: <{contact}>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def in_dialog(method: str, n: int, resp200: bytes, cseq: int, caller: str) -> bytes:
    """ACK/BYE from the caller along the 200's route set (what sipp's rrs="true" does)."""
    r = parse_message(resp200)
    rr = list(reversed(r.headers.get_all("record-route")))
    target = r.headers.get("contact") or ""
    target = target[target.find("<") + 1:target.find(">")]
    via = (f"SIP/2.0/TLS 127.0.0.1:41234;branch=z9hG4bK-1-{n}-{cseq}-{method};rport" if caller == TEAMS
           else f"SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-1-{n}-{cseq}-{method};rport")
    lines = [f"{method} {target} SIP/2.0", f"Via: {via}"]
    if rr:
        lines.append("Route: " + ", ".join(rr))
    lines += ["Max-Forwards: 70", f"From: {r.headers.get('from')}", f"To: {r.headers.get('to')}",
              f"Call-ID: {r.call_id}", f"CSeq: {cseq} {method}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


class Driver:
    def __init__(self, direction: str):
        self.tmp = tempfile.TemporaryDirectory()
        conf = make_config(Path(self.tmp.name))
        self.core = build(conf, 0.0, keys=Keyring(Secret("0" * 64)))
        self.proxy = self.core.proxy
        self.caller = TEAMS if direction == "tls-udp" else PBX
        self.callee = PBX if self.caller == TEAMS else TEAMS
        conn = object()
        self.src = {TEAMS: Source(TEAMS, "tls", TEAMS_ADDR, conn), PBX: Source(PBX, "udp", PBX_ADDR)}
        self.busy = 0.0
        self.now = 1.0

    def feed(self, data: bytes, leg: str) -> list:
        t = time.perf_counter()
        out = self.proxy.receive(data, self.src[leg], self.now)
        self.proxy.next_events()
        self.busy += time.perf_counter() - t
        return out

    def timers(self) -> None:
        t = time.perf_counter()
        self.proxy.handle_timer(self.now)
        self.busy += time.perf_counter() - t

    def setup(self, n: int) -> None:
        """A call up to its ACK, held (no BYE)."""
        caller, callee = self.caller, self.callee
        out = self.feed(invite(n, caller), caller)
        fwd = next(s.data for s in out if s.to.__class__.__name__ == "Destination")
        contact = "sip:sipp@127.0.0.1:5080" if callee == PBX else \
            "sip:+442079460000@sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls"
        self.feed(answer(fwd, 100, "Trying", contact), callee)
        self.feed(answer(fwd, 180, "Ringing", contact), callee)
        up = [s.data for s in self.feed(answer(fwd, 200, "OK", contact, SDP), callee)]
        self.feed(in_dialog("ACK", n, up[-1], 1, caller), caller)
        self.now += 0.002

    def call(self, n: int) -> None:
        caller, callee = self.caller, self.callee
        out = self.feed(invite(n, caller), caller)
        fwd = next(s.data for s in out if s.to.__class__.__name__ == "Destination")
        contact = "sip:sipp@127.0.0.1:5080" if callee == PBX else \
            "sip:+442079460000@sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls"
        self.feed(answer(fwd, 100, "Trying", contact), callee)
        self.feed(answer(fwd, 180, "Ringing", contact), callee)
        ok = answer(fwd, 200, "OK", contact, SDP)
        up = [s.data for s in self.feed(ok, callee)]
        self.feed(in_dialog("ACK", n, up[-1], 1, caller), caller)
        out = self.feed(in_dialog("BYE", n, up[-1], 2, caller), caller)
        bye = next(s.data for s in out if s.to.__class__.__name__ == "Destination")
        self.feed(answer(bye, 200, "OK", contact), callee)
        self.now += 0.002
        if n % 50 == 0:
            self.timers()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--directions", default="tls-udp,udp-tls")
    ap.add_argument("--hold", type=int, default=0,
                    help="instead: set up this many calls and hold them; bytes the core keeps per call "
                         "(tracemalloc) while their transactions linger (64*T1) and after")
    a = ap.parse_args()
    if a.hold:
        import tracemalloc
        for direction in a.directions.split(","):
            d = Driver(direction)
            for n in range(100):
                d.setup(n)
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for n in range(100, 100 + a.hold):
                d.setup(n)
            gc.collect()  # what is garbage (cycles included) is not held
            held = tracemalloc.get_traced_memory()[0] - base
            d.now += 40.0  # past Timer L/M (64*T1): the transactions end
            d.timers()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            print(f"{direction}: {held / a.hold:.0f} bytes per held call while its transactions "
                  f"linger, {after / a.hold:.0f} after")
        return
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # as app.serve
    for direction in a.directions.split(","):
        d = Driver(direction)
        for n in range(200):  # warm up
            d.call(n)
        prof = cProfile.Profile() if a.profile else None
        if prof:
            prof.enable()
        blocks = []
        block = max(a.calls // 5, 1)
        for b in range(5):
            d.busy = 0.0
            for n in range(200 + b * block, 200 + (b + 1) * block):
                d.call(n)
            blocks.append(d.busy / block * 1e6)
        if prof:
            prof.disable()
        print(f"{direction}: {min(blocks):.0f} us of proxy time per call (best of 5 blocks of "
              f"{block} calls; median {sorted(blocks)[2]:.0f})")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
