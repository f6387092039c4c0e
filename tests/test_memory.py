"""Issue 12 (items 2 and 3): what a call leaves behind in the sans-IO core, and what the cyclic
collector has to walk. A float is the clock; rtpengine's replies are fed by hand.

- A finished call is freed by reference counting alone: with the collector disabled, nothing of
  it (messages, transactions, relays) is left once its transactions have ended. Reference
  cycles (a relay and its server entry pointed at each other) or a timer heap that holds
  finished relays until their old Timer C would fail this.
- Header fields are immutable tuples of strings, which the collector stops tracking: a message
  carried ~35 tracked lists before, and collections over hundreds of thousands of them stalled
  the event loop for up to 900 ms.
The soak that measures the real process is bench/soak.py (bench/results/*-soak.md).
"""
from __future__ import annotations

import gc

import pytest

from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, MediaCall, Send, Source
from teamsbc.sip.message import parse_message

from .test_trunk_health import make

SDP = ("v=0\r\no=- 1 1 IN IP4 10.0.0.10\r\ns=-\r\nc=IN IP4 10.0.0.10\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
PER_CALL = ("Request", "Response", "Headers", "Relay", "ServerEntry", "ServerTransaction",
            "ClientTransaction", "Forward", "Target", "Destination", "Expire")


class Conn:
    """Stands for the shell's TLS connection object in a Source."""


class Calls:
    """Calls Teams -> PBX through the proxy: INVITE, offer, 100/180/200 from the PBX, answer,
    ACK from Teams, BYE from Teams (delete), 200 from the PBX."""

    def __init__(self, proxy):
        self.p = proxy
        self.teams = Source(TEAMS, "tls", ("52.114.14.70", 41234), conn=Conn())
        self.pbx = Source(PBX, "udp", ("10.0.0.10", 5060))

    def _run(self, out: list, now: float) -> list[Send]:
        sends: list[Send] = []
        for o in out:
            if isinstance(o, MediaCall):
                if o.op is not None:
                    sends += self._run(self.p.media_done(o.op, {"result": "ok", "sdp": SDP}, now), now)
            else:
                sends.append(o)
        self.p.next_events()
        return sends

    def rx(self, data: bytes, src: Source, now: float) -> list[Send]:
        return self._run(self.p.receive(data, src, now), now)

    def tick(self, now: float) -> None:
        self._run(self.p.handle_timer(now), now)

    def set_up(self, i: int, now: float):
        cid = f"call-{i}"
        inv = ("INVITE sip:+15551230000@sbc.example.com:5061;user=phone;transport=tls SIP/2.0\r\n"
               f"VIA: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bKt{i}\r\n"
               "RECORD-ROUTE: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
               "MAX-FORWARDS: 69\r\n"
               f"FROM: <sip:+4930123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=t{i}\r\n"
               "TO: <sip:+15551230000@sbc.example.com:5061;user=phone>\r\n"
               f"CALL-ID: {cid}\r\nCSEQ: 1 INVITE\r\n"
               "CONTACT: <sip:api-du-a-usea.pstnhub.microsoft.com:443;x-i=z;transport=tls>\r\n"
               f"CONTENT-TYPE: application/sdp\r\nCONTENT-LENGTH: {len(SDP)}\r\n\r\n{SDP}").encode()
        req = parse_message(next(s for s in self.rx(inv, self.teams, now) if s.to.leg == PBX).data)

        def resp(status: int, reason: str, body: str = "") -> bytes:
            lines = [f"SIP/2.0 {status} {reason}"] + [f"Via: {v}" for v in req.headers.get_all("via")]
            lines += [f"Record-Route: {r}" for r in req.headers.get_all("record-route")]
            lines += [f"From: {req.headers.get('from')}", f"To: {req.headers.get('to')};tag=p{i}",
                      f"Call-ID: {cid}", "CSeq: 1 INVITE", "Contact: <sip:+15551230000@10.0.0.10:5060>"]
            lines += (["Content-Type: application/sdp"] if body else []) + [f"Content-Length: {len(body)}", "", ""]
            return "\r\n".join(lines).encode() + body.encode()

        self.rx(resp(100, "Trying"), self.pbx, now + 0.01)
        self.rx(resp(180, "Ringing"), self.pbx, now + 0.02)
        ok = parse_message(next(s for s in self.rx(resp(200, "OK", SDP), self.pbx, now + 0.03)
                                if s.to.leg == TEAMS).data)
        route = [r for r in reversed(ok.headers.get_all("record-route")) if "sip-du-a-us" not in r]
        contact = ok.headers.get("contact")[1:].split(">")[0]

        def in_dialog(method: str, cseq: int) -> bytes:
            lines = [f"{method} {contact} SIP/2.0",
                     f"VIA: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bK{method}{i}", "MAX-FORWARDS: 70",
                     f"FROM: <sip:+4930123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=t{i}",
                     f"TO: {ok.headers.get('to')}", f"CALL-ID: {cid}", f"CSEQ: {cseq} {method}"]
            return "\r\n".join(lines + [f"ROUTE: {r}" for r in route] + ["CONTENT-LENGTH: 0", "", ""]).encode()

        assert self.rx(in_dialog("ACK", 1), self.teams, now + 0.04)
        return in_dialog

    def hang_up(self, in_dialog, now: float) -> None:
        bye = parse_message(next(s for s in self.rx(in_dialog("BYE", 2), self.teams, now) if s.to.leg == PBX).data)
        ok = ["SIP/2.0 200 OK"] + [f"Via: {v}" for v in bye.headers.get_all("via")]
        ok += [f"From: {bye.headers.get('from')}", f"To: {bye.headers.get('to')}", f"Call-ID: {bye.call_id}",
               "CSeq: 2 BYE", "Content-Length: 0", "", ""]
        assert self.rx("\r\n".join(ok).encode(), self.pbx, now + 0.01)


def census() -> dict[str, int]:
    """Objects of the per-call types the collector knows of, garbage in cycles included."""
    out = dict.fromkeys(PER_CALL, 0)
    for o in gc.get_objects():
        name = type(o).__name__
        if name in out:
            out[name] += 1
    return out


@pytest.fixture
def calls(tmp_path):
    core = build(make(tmp_path, media={"rtpengine": ["udp:127.0.0.1:22222"]}), 0.0)
    return Calls(core.proxy)


def test_finished_calls_are_freed_without_the_cyclic_collector(calls):
    gc.collect()
    gc.disable()
    try:
        before = census()
        for i in range(50):
            calls.hang_up(calls.set_up(i, i * 0.1), i * 0.1 + 2.0)
        during = census()
        assert during["Relay"] > 0      # the census sees the calls while they linger
        now = 8.0
        while now < 45.0:               # Timers J, K, L, M (64*T1) run out
            calls.tick(now)
            now += 0.5
        assert calls.p.t.server == {} and calls.p.t.client == {}
        assert census() == before
    finally:
        gc.enable()


def test_a_finished_call_is_off_the_timer_heap(calls):
    """Once its transactions have ended, nothing of a call is on the heap: not 3 minutes
    later, when its old Timer C would have come up."""
    for i in range(20):
        calls.hang_up(calls.set_up(i, i * 0.1), i * 0.1 + 2.0)
    now = 8.0
    while now < 40.0:
        calls.tick(now)
        now += 0.5
    assert [type(o).__name__ for o in calls.p.t.timer_objects()] == ["Guard"]
    assert len(calls.p.t._timers) <= 1 + 2 * 20 * 4   # emptied entries are bounded


def test_parsed_header_fields_are_not_tracked_by_the_collector(calls):
    in_dialog = calls.set_up(1, 0.0)
    msg = parse_message(in_dialog("BYE", 2))
    copy = msg.headers.copy()
    copy.set("max-forwards", "69")
    copy.add_first("via", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKx")
    gc.collect()
    entries = list(msg.headers._h) + list(copy._h)
    assert entries and not any(gc.is_tracked(e) for e in entries)
    assert copy.get("max-forwards") == "69" and msg.headers.get("max-forwards") == "70"


class Node:
    """A small object that can sit in a reference cycle."""

    def __init__(self):
        self.other = None


def test_the_collector_walks_only_young_objects_and_still_frees_everything():
    """collector.YoungOnly: survivors of a tick are frozen (never walked again) and still freed
    by reference counting; a cycle that became garbage before a tick is collected by it; a
    frozen set grown past `grow` times its base gets one full walk, which frees frozen cycles."""
    from teamsbc.collector import YoungOnly

    class Loop:
        def call_later(self, delay, fn):
            return None

    policy = YoungOnly(grow=1e9, check_every=1)
    try:
        policy.start(Loop())
        base = gc.get_freeze_count()
        kept = [Node() for _ in range(1000)]
        policy.tick()
        assert gc.get_freeze_count() >= base + 1000
        del kept                                   # frozen, yet freed by reference counting
        assert gc.get_freeze_count() < base + 1000
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        before = gc.get_freeze_count()
        policy.tick()                              # collected, not frozen
        assert gc.get_freeze_count() <= before
        c, d = Node(), Node()
        c.other, d.other = d, c
        policy.tick()                              # alive at the tick: frozen
        del c, d                                   # now garbage among frozen objects
        leaked = sum(1 for o in gc.get_objects() if isinstance(o, Node))
        assert leaked == 0                         # the collector does not see frozen objects
        policy.grow = 1.0
        policy.tick()                              # frozen set grew: one full walk
        assert policy.sweeps == 1
        gc.unfreeze()
        assert not [o for o in gc.get_objects() if isinstance(o, Node)]
        # under load the 25% rule waits for an idle moment
        busy = [True]
        policy = YoungOnly(grow=1e9, idle_grow=1.0, busy=lambda: busy[0])
        policy.start(Loop())
        kept = [Node() for _ in range(100)]
        policy.tick()
        assert policy.sweeps == 0
        busy[0] = False
        kept.append(Node())
        policy.tick()
        assert policy.sweeps == 1
        # under load the frozen set (counting it walks it) is counted every check_every ticks only
        policy = YoungOnly(grow=1.0, busy=lambda: True, check_every=3)
        policy.start(Loop())
        kept += [Node() for _ in range(100)]
        policy.tick()
        policy.tick()
        assert (policy.counts, policy.sweeps) == (0, 0)
        policy.tick()
        assert (policy.counts, policy.sweeps) == (1, 1)
    finally:
        gc.unfreeze()
