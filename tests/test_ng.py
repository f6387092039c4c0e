"""NG client (teamsbc.media.ng) and instance pool (teamsbc.media.pool).

Unit tests use in-test UDP peers (a black hole, a lossy relay) and fake clients; the others run
against a real rtpengine 10.5 started by the test (tests/support/rtpengine.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest

from teamsbc.media import sdp_policy
from teamsbc.media.bencode import decode, encode
from teamsbc.media.ng import (
    NgAddress,
    NgClient,
    NgConnectionError,
    NgError,
    NgProtocolError,
    NgTimeout,
    NgTooLarge,
    NgUnavailable,
    RttStats,
    parse_address,
)
from teamsbc.media.pool import InstanceSpec, MediaPool, NoMediaAvailable, UnknownCall, parse_instance
from tests.support.ports import free_port
from tests.support.procs import wait_for
from tests.support.rtpengine import RtpEngine

# --------------------------------------------------------------------------- helpers

SIMPLE_SDP = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
    "m=audio 40000 RTP/AVP 8 0 101", "a=rtpmap:8 PCMA/8000", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000", "a=sendrecv", ""])
ANSWER_SDP = SIMPLE_SDP.replace("40000", "40100").replace("127.0.0.1", "127.0.0.2")


def plain_offer(call_id: str, from_tag: str = "ft") -> dict[str, Any]:
    return {"command": "offer", "call-id": call_id, "from-tag": from_tag, "sdp": SIMPLE_SDP,
            "replace": ["origin", "session-connection"], "flags": ["trust-address"]}


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 recording what it gets; answers with ``reply(data)`` if set."""

    def __init__(self, reply=None) -> None:
        self.reply = reply
        self.received: list[bytes] = []
        self.arrived = asyncio.Event()
        self.transport = None

    @classmethod
    async def open(cls, reply=None) -> "UdpPeer":
        peer = cls(reply)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport) -> None:
        self.transport = transport

    @property
    def port(self) -> int:
        return self.transport.get_extra_info("sockname")[1]

    @property
    def address(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)
        self.arrived.set()
        if self.reply is not None:
            out = self.reply(data)
            if out is not None:
                self.transport.sendto(out, addr)

    def close(self) -> None:
        self.transport.close()


class LossyRelay:
    """client <-> relay <-> upstream NG port; drops the first ``drop_requests`` requests and the
    first ``drop_replies`` replies, and records the cookies that went through."""

    def __init__(self, upstream_port: int, *, drop_requests: int = 0, drop_replies: int = 0) -> None:
        self.upstream_port = upstream_port
        self.drop_requests, self.drop_replies = drop_requests, drop_replies
        self.requests: list[bytes] = []   # every request seen (dropped or not)
        self.replies: list[bytes] = []
        self.client_addr = None

    async def start(self) -> "LossyRelay":
        loop = asyncio.get_running_loop()
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.client_addr = addr
                relay.requests.append(data)
                if relay.drop_requests > 0:
                    relay.drop_requests -= 1
                    return
                relay.back.sendto(data)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.replies.append(data)
                if relay.drop_replies > 0:
                    relay.drop_replies -= 1
                    return
                relay.front.sendto(data, relay.client_addr)

        self.front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=("127.0.0.1", self.upstream_port))
        return self

    @property
    def address(self) -> str:
        return f"udp:127.0.0.1:{self.front.get_extra_info('sockname')[1]}"

    def cookies(self) -> list[bytes]:
        return [r.partition(b" ")[0] for r in self.requests]

    def close(self) -> None:
        self.front.close()
        self.back.close()


def ng_reply(body: dict) -> Any:
    """An in-test NG server: echo the cookie with ``body``."""
    return lambda data: data.partition(b" ")[0] + b" " + encode(body)


@pytest.fixture
def rtpengine(procs) -> RtpEngine:
    return RtpEngine(procs).start()


# --------------------------------------------------------------------------- addresses, stats

@pytest.mark.parametrize("text, expected", [
    ("udp:127.0.0.1:22222", NgAddress("udp", "127.0.0.1", 22222)),
    ("udp:[::1]:22222", NgAddress("udp", "::1", 22222)),
    ("udp:rtp.example.com:2223", NgAddress("udp", "rtp.example.com", 2223)),
    ("http://10.0.0.7:8080", NgAddress("http", "10.0.0.7", 8080)),
    ("http://10.0.0.7:8080/", NgAddress("http", "10.0.0.7", 8080)),
    ("http://10.0.0.7:8080/rtpengine/ng", NgAddress("http", "10.0.0.7", 8080, "/rtpengine/ng")),
    ("ws://[2001:db8::7]:8080", NgAddress("ws", "2001:db8::7", 8080)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


def test_address_urls():
    assert parse_address("http://10.0.0.7:8080").url == "http://10.0.0.7:8080/ng"
    assert parse_address("ws://10.0.0.7:8080").url == "ws://10.0.0.7:8080/"
    assert str(parse_address("udp:[::1]:5")) == "udp:[::1]:5"


@pytest.mark.parametrize("text", [
    "udp:127.0.0.1", "udp:127.0.0.1:x", "udp:127.0.0.1:0", "udp:127.0.0.1:70000", "tcp:1.2.3.4:5",
    "udp://127.0.0.1:22222", "http://10.0.0.7", "https://10.0.0.7:443", "ws://h:1?x=1", "22222",
])
def test_parse_address_errors(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_rtt_stats_nearest_rank():
    rtt = RttStats(maxlen=200)
    assert rtt.median() is None and rtt.p99() is None
    for ms in range(1, 201):
        rtt.record(ms / 1000)
    assert rtt.median() == 0.100
    assert rtt.p99() == 0.198
    rtt.record(1.0)  # maxlen: the oldest sample (1 ms) goes
    assert len(rtt) == 200 and rtt.total == 201 and min(rtt.samples) == 0.002
    assert rtt.summary()["max"] == 1.0


# --------------------------------------------------------------------------- instance syntax

def test_parse_instance_forms():
    assert parse_instance("udp:127.0.0.1:22222") == InstanceSpec(parse_address("udp:127.0.0.1:22222"), 1)
    assert parse_instance("http://10.0.0.7:8080; weight=3").weight == 3
    assert parse_instance({"address": "ws://10.0.0.8:8080", "weight": 0}).weight == 0
    assert str(parse_instance("udp:127.0.0.1:22222;weight=2")) == "udp:127.0.0.1:22222;weight=2"


@pytest.mark.parametrize("spec", [
    "udp:127.0.0.1:22222;weight=-1", "udp:127.0.0.1:22222;weight=x", "udp:127.0.0.1:22222;prio=1",
    "udp:127.0.0.1:22222;weight", {"weight": 2}, {"address": "udp:1.2.3.4:5", "wieght": 2},
    {"address": "udp:1.2.3.4:5", "weight": True}, "udp:127.0.0.1:22222;weight=5000", 42,
])
def test_parse_instance_errors(spec):
    with pytest.raises(ValueError):
        parse_instance(spec)


# --------------------------------------------------------------------------- UDP client, in-test peers

async def test_udp_timeout_retransmits_with_the_same_cookie():
    hole = await UdpPeer.open()
    client = NgClient(hole.address, timeout=0.5, retransmit_intervals=(0.1, 0.2))
    try:
        started = time.monotonic()
        with pytest.raises(NgTimeout, match="no reply to ping within 0.5 s"):
            await client.ping()
        assert 0.45 <= time.monotonic() - started < 1.5
        cookies = {d.partition(b" ")[0] for d in hole.received}
        assert len(hole.received) >= 3 and len(cookies) == 1     # sent at 0, 0.1, 0.3 s
        assert client.retransmissions == len(hole.received) - 1
        assert decode(hole.received[0].partition(b" ")[2]) == {b"command": b"ping"}
    finally:
        await client.close()
        hole.close()


async def test_udp_nothing_listening_fails_fast():
    port = free_port("udp")
    client = NgClient(f"udp:127.0.0.1:{port}", timeout=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(NgConnectionError) as info:
            await client.ping()
        assert isinstance(info.value, NgUnavailable)
        assert time.monotonic() - started < 0.5   # ICMP port unreachable, not the 2 s timeout
    finally:
        await client.close()


async def test_udp_reply_error_and_protocol_errors():
    peer = await UdpPeer.open(ng_reply({"result": "error", "error-reason": "Unknown call-id"}))
    client = NgClient(peer.address, timeout=1)
    with pytest.raises(NgError) as info:
        await client.request({"command": "query", "call-id": "x"})
    assert info.value.reason == "Unknown call-id" and info.value.command == "query"
    assert info.value.reply == {"result": "error", "error-reason": "Unknown call-id"}

    peer.reply = lambda d: d.partition(b" ")[0] + b" not-bencode"
    with pytest.raises(NgProtocolError, match="bad bencode"):
        await client.ping()
    peer.reply = lambda d: d.partition(b" ")[0] + b" l4:ponge"
    with pytest.raises(NgProtocolError, match="not a dictionary"):
        await client.ping()
    peer.reply = ng_reply({"sdp": "v=0"})
    with pytest.raises(NgProtocolError, match="no result"):
        await client.ping()
    peer.reply = ng_reply({"result": "ok"})
    with pytest.raises(NgProtocolError, match="ping answered 'ok'"):
        await client.ping()
    with pytest.raises(ValueError):
        await client.request({"call-id": "no command"})
    await client.close()
    peer.close()


async def test_udp_replies_matched_by_cookie_out_of_order():
    """Replies to concurrent requests come back in reverse order, plus stray cookies."""
    pending: list[tuple[bytes, Any]] = []
    peer = await UdpPeer.open()

    def hold(data):
        pending.append((data, None))
        if len(pending) == 3:
            for d, _ in reversed(pending):
                cookie, _, body = d.partition(b" ")
                n = decode(body)[b"n"]
                peer.transport.sendto(b"stray " + encode({"result": "ok"}), peer.last_addr)
                peer.transport.sendto(cookie + b" " + encode({"result": "ok", "n": n}), peer.last_addr)
        return None

    peer.reply = hold
    orig = peer.datagram_received

    def remember(data, addr):
        peer.last_addr = addr
        orig(data, addr)

    peer.datagram_received = remember
    client = NgClient(peer.address, timeout=1)
    replies = await asyncio.gather(*(client.request({"command": "x", "n": i}) for i in range(3)))
    assert [r["n"] for r in replies] == [0, 1, 2]
    assert client.retransmissions == 0
    await client.close()
    peer.close()


# --------------------------------------------------------------------------- real rtpengine

@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["udp", "http", "ws"])
async def test_ping_and_call_commands_over_each_transport(rtpengine, transport):
    address = {"udp": rtpengine.ng_udp, "http": rtpengine.ng_http, "ws": rtpengine.ng_ws}[transport]
    async with NgClient(address) as client:
        assert await client.ping() < 1.0
        call_id = f"call-{transport}"
        reply = await client.request(plain_offer(call_id))
        assert reply["result"] == "ok" and reply["sdp"].startswith("v=0")
        assert "c=IN IP4 127.0.0.1" in reply["sdp"]
        reply = await client.request({"command": "answer", "call-id": call_id, "from-tag": "ft",
                                      "to-tag": "tt", "sdp": ANSWER_SDP})
        assert reply["result"] == "ok"
        query = await client.request({"command": "query", "call-id": call_id})
        assert set(query["tags"]) == {"ft", "tt"}
        assert (await client.request({"command": "list"}))["calls"] == [call_id]
        deleted = await client.request({"command": "delete", "call-id": call_id})
        assert deleted["result"] == "ok"
        assert (await client.request({"command": "list"}))["calls"] == []
        with pytest.raises(NgError, match="Unknown call-id"):
            await client.request({"command": "query", "call-id": call_id})
        with pytest.raises(NgError, match="Unrecognized command"):
            await client.request({"command": "no-such-command"})
        assert client.rtt.total == 9 and client.rtt_by_command["offer"].total == 1


@pytest.mark.e2e
async def test_http_keeps_one_connection_alive(rtpengine):
    async with NgClient(rtpengine.ng_http) as client:
        for _ in range(5):
            await client.ping()
    sources = set(re.findall(r"HTTP POST from 127\.0\.0\.1:(\d+)", rtpengine.log()))
    assert len(sources) == 1, sources


@pytest.mark.e2e
async def test_websocket_one_request_in_flight_per_connection(rtpengine):
    """Many concurrent requests over a pool of 3 WebSockets: every reply is the right one
    (rtpengine 10.5 mixes replies when requests share a connection)."""
    async with NgClient(rtpengine.ng_ws, ws_connections=3) as client:
        calls = [f"ws-{i}" for i in range(24)]
        replies = await asyncio.gather(*(client.request(plain_offer(c, from_tag=f"tag-{c}")) for c in calls))
        assert all(r["result"] == "ok" for r in replies)
        queries = await asyncio.gather(*(client.request({"command": "query", "call-id": c}) for c in calls))
        for c, q in zip(calls, queries):   # each reply is the one of its own call
            assert f"tag-{c}" in q["tags"], (c, list(q["tags"]))
        assert sorted((await client.request({"command": "list"}))["calls"]) == sorted(calls)
        assert len(client._transport.idle) <= 3
        await asyncio.gather(*(client.request({"command": "delete", "call-id": c}) for c in calls))
        assert (await client.request({"command": "list"}))["calls"] == []


@pytest.mark.e2e
async def test_udp_lost_request_is_retransmitted(rtpengine):
    relay = await LossyRelay(rtpengine.ng_port, drop_requests=1).start()
    try:
        async with NgClient(relay.address, retransmit_intervals=(0.05, 0.1)) as client:
            reply = await client.request(plain_offer("lost-request"))
            assert reply["result"] == "ok"
            assert client.retransmissions == 1
        cookies = relay.cookies()
        assert len(cookies) == 2 and cookies[0] == cookies[1]
        log = rtpengine.log()
        assert log.count("Received command 'offer'") == 1
        assert "as a duplicate" not in log
    finally:
        relay.close()


@pytest.mark.e2e
async def test_udp_lost_reply_is_replayed_not_rerun(rtpengine):
    """The reply is lost: the retransmission (same cookie) gets rtpengine's cached reply and
    the offer runs once."""
    relay = await LossyRelay(rtpengine.ng_port, drop_replies=1).start()
    try:
        async with NgClient(relay.address, retransmit_intervals=(0.05, 0.1)) as client:
            reply = await client.request(plain_offer("lost-reply"))
        assert reply["result"] == "ok"
        assert len(relay.requests) == 2 and len(set(relay.cookies())) == 1
        assert len(relay.replies) == 2 and relay.replies[0] == relay.replies[1]  # replayed verbatim
        wait_for(lambda: "as a duplicate" in rtpengine.log(), 2, what="duplicate detection in the log")
        log = rtpengine.log()
        assert log.count("Received command 'offer'") == 1
        assert log.count("as a duplicate") == 1
        assert rtpengine.calls() == ["lost-reply"]
    finally:
        relay.close()


@pytest.mark.e2e
async def test_http_and_ws_nothing_listening():
    port = free_port("tcp")
    for address in (f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"):
        async with NgClient(address, timeout=1) as client:
            with pytest.raises(NgConnectionError):
                await client.ping()


# --------------------------------------------------------------------------- pool, fake clients

class FakeWorld:
    """Behaviour per address for FakeClient: "ok", "timeout", "refused"; calls known per address."""

    def __init__(self) -> None:
        self.mode: dict[str, str] = {}
        self.calls: dict[str, set[str]] = {}
        self.log: list[tuple[str, str, str | None, str]] = []  # (address, command, call-id, cookie)
        self.cookie = 0

    def factory(self, address, timeout):
        return FakeClient(self, str(address))


class FakeClient:
    def __init__(self, world: FakeWorld, address: str) -> None:
        self.world, self.address = world, address
        self.rtt = RttStats()

    async def request(self, command, timeout=None):
        w = self.world
        w.cookie += 1
        name, cid = command["command"], command.get("call-id")
        w.log.append((self.address, name, cid, str(w.cookie)))
        mode = w.mode.get(self.address, "ok")
        if mode == "timeout":
            raise NgTimeout("no reply", address=self.address)
        if mode == "refused":
            raise NgConnectionError("refused", address=self.address)
        calls = w.calls.setdefault(self.address, set())
        if name == "ping":
            return {"result": "pong"}
        if name == "offer":
            calls.add(cid)
            return {"result": "ok", "sdp": f"sdp from {self.address}"}
        if cid not in calls:
            if name == "delete":
                return {"result": "ok", "warning": "Call-ID not found or tags didn't match"}
            raise NgError("Unknown call-id", command=name, address=self.address)
        if name == "delete" and not command.get("to-tag"):
            calls.discard(cid)
        return {"result": "ok"}

    async def ping(self, timeout=None):
        await self.request({"command": "ping"})
        return 0.0

    async def close(self):
        pass


def fake_pool(world: FakeWorld, specs, **kw) -> MediaPool:
    return MediaPool(specs, client_factory=world.factory, ping_interval=3600, **kw)


A, B, C = "udp:10.0.0.1:2222", "udp:10.0.0.2:2222", "udp:10.0.0.3:2222"


async def test_pool_weights_spread_new_calls():
    world = FakeWorld()
    pool = fake_pool(world, [f"{A};weight=2", B, f"{C};weight=0"])
    for i in range(30):
        await pool.request(sdp_policy.offer(SIMPLE_SDP, f"c{i}", "ft"))
    owners = [pool.owner(f"c{i}").address for i in range(30)]
    assert owners.count(A) == 20 and owners.count(B) == 10 and owners.count(C) == 0
    assert owners[:3] == [A, B, A]   # smooth: no bursts
    await pool.close()


async def test_pool_later_commands_go_to_the_owner_and_delete_forgets():
    world = FakeWorld()
    pool = fake_pool(world, [A, B])
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "call-1", "ft"))
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "call-2", "ft"))
    assert pool.owner("call-1").address == A and pool.owner("call-2").address == B
    await pool.request(sdp_policy.answer(SIMPLE_SDP, "call-1", "ft", "tt"))
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "call-1", "tt", "teams", to_tag="ft", initial=False))
    await pool.request(sdp_policy.delete("call-1", "ft", "tt2"), keep_owner=True)  # one forked branch
    assert pool.owner("call-1").address == A
    await pool.request(sdp_policy.delete("call-1"))
    assert pool.owner("call-1") is None
    assert [(a, n) for a, n, c, _ in world.log if c == "call-1"] == [
        (A, "offer"), (A, "answer"), (A, "offer"), (A, "delete"), (A, "delete")]
    assert pool.calls == {"call-2": pool.instance(B)}
    with pytest.raises(ValueError):
        await pool.request({"command": "list"})
    await pool.close()


async def test_pool_new_call_fails_over_with_a_fresh_cookie():
    world = FakeWorld()
    pool = fake_pool(world, [A, B, C])
    world.mode[A] = "timeout"
    world.mode[B] = "refused"
    reply = await pool.request(sdp_policy.offer(SIMPLE_SDP, "call-x", "ft"))
    assert reply["sdp"] == f"sdp from {C}"
    attempts = [(a, cookie) for a, n, c, cookie in world.log if c == "call-x"]
    assert [a for a, _ in attempts] == [A, B, C]
    assert len({cookie for _, cookie in attempts}) == 3
    await pool.settle()   # each failed command is checked with a ping, which fails here too
    assert [i.healthy for i in pool.instances] == [False, False, True]
    assert pool.owner("call-x").address == C
    await pool.close()


async def test_pool_no_healthy_instance():
    world = FakeWorld()
    pool = fake_pool(world, [A, B])
    world.mode[A] = world.mode[B] = "timeout"
    with pytest.raises(NoMediaAvailable, match="no rtpengine for call c1"):
        await pool.request(sdp_policy.offer(SIMPLE_SDP, "c1", "ft"))
    await pool.settle()
    with pytest.raises(NoMediaAvailable, match="no healthy rtpengine"):
        await pool.request(sdp_policy.offer(SIMPLE_SDP, "c2", "ft"))
    assert [n for _, n, c, _ in world.log if c == "c2"] == []   # nobody asked: all were down
    await pool.close()


async def test_pool_health_down_after_k_failed_pings_and_back_up():
    world = FakeWorld()
    pool = fake_pool(world, [A, B], down_after=2)
    await pool.start()
    assert all(i.healthy for i in pool.instances)
    world.mode[A] = "timeout"
    await pool.check_all()
    assert pool.instance(A).healthy and pool.instance(A).failures == 1
    await pool.check_all()
    assert not pool.instance(A).healthy
    for i in range(4):
        await pool.request(sdp_policy.offer(SIMPLE_SDP, f"c{i}", "ft"))
        assert pool.owner(f"c{i}").address == B
    world.mode[A] = "ok"
    await pool.check_all()
    assert pool.instance(A).healthy and pool.instance(A).failures == 0
    await pool.close()


async def test_pool_owner_down_is_an_error_not_a_move():
    world = FakeWorld()
    pool = fake_pool(world, [A, B])
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "c1", "ft"))
    world.mode[A] = "refused"
    with pytest.raises(NgUnavailable):
        await pool.request(sdp_policy.answer(SIMPLE_SDP, "c1", "ft", "tt"))
    await pool.settle()
    assert not pool.instance(A).healthy and pool.owner("c1").address == A
    with pytest.raises(NgUnavailable):
        await pool.request(sdp_policy.delete("c1"))
    assert pool.owner("c1") is None  # forgotten anyway: the call is over for the SBC
    await pool.close()


async def test_pool_moves_a_call_to_the_instance_that_shares_it_when_the_owner_dies(caplog):
    """rtpengines sharing calls through Redis (docs/ha.md): B holds A's call as a foreign call,
    so when A dies the call moves to B, on a failed command or once A is known to be down."""
    world = FakeWorld()
    pool = fake_pool(world, [A, B])
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "c1", "ft"))
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "c2", "ft"))
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "c3", "ft"))
    assert [pool.owner(c).address for c in ("c1", "c2", "c3")] == [A, B, A]
    world.calls[B] |= {"c1", "c3"}          # what Redis gave B
    world.mode[A] = "refused"
    reply = await pool.request(sdp_policy.answer(SIMPLE_SDP, "c1", "ft", "tt"))
    assert reply["result"] == "ok" and pool.owner("c1").address == B
    assert not pool.instance(A).healthy
    await pool.request(sdp_policy.delete("c3"))   # A already down: straight to B
    assert [(a, n) for a, n, c, _ in world.log if c == "c3"][-2:] == [(B, "query"), (B, "delete")]
    assert pool.moved == 2
    assert "call c1: rtpengine udp:10.0.0.1:2222 did not answer answer" in caplog.text
    assert "moved to udp:10.0.0.2:2222" in caplog.text
    await pool.close()


async def test_pool_finds_the_owner_of_an_unknown_call_after_a_restart():
    world = FakeWorld()
    pool = fake_pool(world, [A, B])
    world.calls[B] = {"old-call"}          # placed by the SBC before its restart
    reply = await pool.request(sdp_policy.offer(SIMPLE_SDP, "old-call", "tt", "teams", to_tag="ft",
                                                initial=False))
    assert reply["sdp"] == f"sdp from {B}" and pool.owner("old-call").address == B
    assert (await pool.request(sdp_policy.delete("nobody-has-it")))["warning"].startswith("Call-ID not found")
    with pytest.raises(UnknownCall):
        await pool.request(sdp_policy.answer(SIMPLE_SDP, "nobody-has-it", "ft", "tt"))
    await pool.close()


async def test_pool_concurrent_commands_wait_for_the_first_offer():
    world = FakeWorld()
    pool = fake_pool(world, [A, B])
    results = await asyncio.gather(
        pool.request(sdp_policy.offer(SIMPLE_SDP, "c1", "ft")),
        pool.request(sdp_policy.answer(SIMPLE_SDP, "c1", "ft", "tt")),
    )
    assert [r["result"] for r in results] == ["ok", "ok"]
    assert [(a, n) for a, n, c, _ in world.log] == [(A, "offer"), (A, "answer")]
    await pool.close()


async def test_pool_status_and_owner_expiry():
    world = FakeWorld()
    now = [1000.0]
    pool = fake_pool(world, [A, f"{B};weight=3"], owner_ttl=60, clock=lambda: now[0])
    await pool.request(sdp_policy.offer(SIMPLE_SDP, "c1", "ft"))
    status = {s["address"]: s for s in pool.status()}
    assert status[B]["calls"] == 1 and status[B]["weight"] == 3 and status[A]["calls"] == 0
    now[0] += 61
    await pool.check_all()
    assert pool.owner("c1") is None
    # ... and is found again by query
    await pool.request(sdp_policy.answer(SIMPLE_SDP, "c1", "ft", "tt"))
    assert pool.owner("c1").address == B
    await pool.close()


def test_pool_config_errors():
    with pytest.raises(ValueError, match="at least one"):
        MediaPool([])
    with pytest.raises(ValueError, match="listed twice"):
        MediaPool([A, f"{A};weight=2"])


async def test_pool_a_failed_command_is_not_a_failed_ping():
    """Issue 12: an offer whose reply never came (too large for UDP, lost) does not take down
    an instance that still answers pings; it is counted apart, and calls keep going there."""
    world = FakeWorld()
    pool = fake_pool(world, [A], down_after=2)

    class SwallowsOffers(FakeClient):
        async def request(self, command, timeout=None):
            if command["command"] == "offer" and command.get("call-id") == "bomb":
                self.world.log.append((self.address, "offer", "bomb", "lost"))
                raise NgTimeout("no reply to offer within 2 s", address=self.address)
            return await super().request(command, timeout)

    pool.instances[0].client = SwallowsOffers(world, A)
    with pytest.raises(NoMediaAvailable):
        await pool.request(sdp_policy.offer(SIMPLE_SDP, "bomb", "ft"))
    await pool.settle()
    inst = pool.instance(A)
    assert inst.healthy and inst.failures == 0 and inst.command_failures == 1
    assert [n for _, n, c, _ in world.log if c is None] == ["ping"]   # the check, at once
    assert (await pool.request(sdp_policy.offer(SIMPLE_SDP, "next", "ft")))["result"] == "ok"
    assert pool.status()[0]["command_failures"] == 1
    await pool.close()


async def test_udp_ng_refuses_up_front_a_reply_larger_than_a_datagram():
    """Never a silent timeout: an offer whose reply could not fit one UDP datagram is refused
    before anything is sent (rtpengine 10.5 drops such replies)."""
    hole = await UdpPeer.open()
    try:
        bomb = "v=0\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n" + "m=audio 2000 RTP/AVP 0\r\n" * 250
        async with NgClient(hole.address, timeout=0.5) as ng:
            with pytest.raises(NgTooLarge, match="more than one UDP datagram"):
                await ng.request({"command": "offer", "call-id": "c", "from-tag": "f", "sdp": bomb})
        assert hole.received == []
    finally:
        hole.close()


# --------------------------------------------------------------------------- pool, real rtpengines

@pytest.mark.e2e
async def test_pool_failover_between_two_real_rtpengines(procs):
    first = RtpEngine(procs, name="rtpengine-a").start()
    second = RtpEngine(procs, name="rtpengine-b").start()
    async with MediaPool([first.ng_udp, second.ng_udp], ping_interval=3600) as pool:
        for i in range(4):
            await pool.request(plain_offer(f"before-{i}"))
        owners = {f"before-{i}": pool.owner(f"before-{i}").address for i in range(4)}
        assert sorted(owners.values()) == sorted([first.ng_udp, second.ng_udp] * 2)
        assert sorted(first.calls()) == sorted(c for c, a in owners.items() if a == first.ng_udp)

        first.kill()   # by PID, SIGKILL

        for i in range(4):
            reply = await pool.request(plain_offer(f"after-{i}"))
            assert reply["result"] == "ok"
            assert pool.owner(f"after-{i}").address == second.ng_udp
        await pool.settle()
        assert not pool.instance(first.ng_udp).healthy
        # existing calls keep their owner: on the live one they go on, on the dead one they fail
        for cid, address in owners.items():
            answer = {"command": "answer", "call-id": cid, "from-tag": "ft", "to-tag": "tt", "sdp": ANSWER_SDP}
            if address == second.ng_udp:
                assert (await pool.request(answer))["result"] == "ok"
            else:
                with pytest.raises(NgUnavailable):
                    await pool.request(answer)
            assert pool.owner(cid).address == address
        for cid in list(owners) + [f"after-{i}" for i in range(4)]:
            try:
                await pool.request(sdp_policy.delete(cid))
            except NgUnavailable:
                assert owners.get(cid) == first.ng_udp
            assert pool.owner(cid) is None
        assert second.calls() == []

        first.start()   # same ports: back up after one good ping
        await pool.check_all()
        assert pool.instance(first.ng_udp).healthy
        await pool.request(plain_offer("later-1"))
        await pool.request(plain_offer("later-2"))
        assert {pool.owner("later-1").address, pool.owner("later-2").address} == {first.ng_udp, second.ng_udp}


@pytest.mark.e2e
async def test_pool_new_call_offer_times_out_then_next_instance(rtpengine):
    """The first instance swallows the offer (timeout, retransmissions with one cookie); the
    same call goes to the next healthy instance with a fresh cookie."""
    hole = await UdpPeer.open()
    relay = await LossyRelay(rtpengine.ng_port).start()
    try:
        pool = MediaPool([f"{hole.address};weight=5", relay.address], timeout=0.5, ping_interval=3600)
        reply = await pool.request(plain_offer("timed-out-first"))
        assert reply["result"] == "ok" and pool.owner("timed-out-first").address == relay.address
        offers = [d for d in hole.received if b"7:command5:offer" in d]   # not the ping that checks it
        hole_cookies = {d.partition(b" ")[0] for d in offers}
        assert len(offers) >= 2 and len(hole_cookies) == 1
        assert relay.cookies()[0] not in hole_cookies
        await pool.settle()   # the hole does not answer the ping that checks it either
        assert not pool.instance(hole.address).healthy
        assert rtpengine.calls() == ["timed-out-first"]
        await pool.close()
    finally:
        hole.close()
        relay.close()


# --------------------------------------------------------------------------- round-trip times

def _ms(v: float | None) -> str:
    return f"{v * 1000:.3f} ms" if v is not None else "-"


@pytest.mark.e2e
async def test_measure_ng_round_trip_times(rtpengine, capsys):
    """200 pings and 200 offers (+ deletes) per transport; prints median and p99."""
    lines = []
    for name, address in (("udp", rtpengine.ng_udp), ("http", rtpengine.ng_http), ("ws", rtpengine.ng_ws)):
        async with NgClient(address) as client:
            await client.ping()  # warm up (HTTP/WS connection)
            ping, offer = RttStats(), RttStats()
            for _ in range(200):
                t = time.perf_counter()
                await client.ping()
                ping.record(time.perf_counter() - t)
            for i in range(200):
                cid = f"rtt-{name}-{i}"
                cmd = sdp_policy.offer(TEAMS_LIKE_SDP, cid, "ft", "pbx", interfaces=("pub", "priv"))
                t = time.perf_counter()
                await client.request(cmd)
                offer.record(time.perf_counter() - t)
                await client.request(sdp_policy.delete(cid))
            lines.append(f"NG {name:4}: ping median {_ms(ping.median())} p99 {_ms(ping.p99())}; "
                         f"offer median {_ms(offer.median())} p99 {_ms(offer.p99())}")
            assert ping.median() < 0.05 and offer.median() < 0.05
    assert rtpengine.calls() == []
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# A Teams offer of realistic size (~1.5 KB with the NG options) for the offer RTT.
TEAMS_LIKE_SDP = "\r\n".join([
    "v=0", "o=- 0 0 IN IP4 127.0.0.1", "s=session", "c=IN IP4 127.0.0.1", "b=CT:10000000", "t=0 0",
    "m=audio 50010 RTP/SAVP 104 9 103 111 18 0 8 97 101 13 118", "c=IN IP4 127.0.0.1", "a=rtcp:50011",
    "a=ice-ufrag:ZdkB", "a=ice-pwd:ri0BF8YTHMUStkuuuK1YIwcG",
    "a=candidate:1 1 UDP 2130706431 127.0.0.1 50010 typ host",
    "a=candidate:1 2 UDP 2130705918 127.0.0.1 50011 typ host",
    "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:WnD7c1ksDGs+dIefCEo8omPg4uO8DYIinNGL5yxQ|2^31|1:1",
    "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:oRjTN6ra3WhO5+MSGdPE2KGXovrTWn7PR4ko5GBk|2^31",
    "a=maxptime:200", "a=rtcp-mux", "a=rtpmap:104 SILK/16000", "a=rtpmap:9 G722/8000",
    "a=rtpmap:103 SILK/8000", "a=rtpmap:111 SIREN/16000", "a=fmtp:111 bitrate=16000",
    "a=rtpmap:18 G729/8000", "a=fmtp:18 annexb=no", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:97 RED/8000", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16",
    "a=rtpmap:13 CN/8000", "a=rtpmap:118 CN/16000", "a=ptime:20", ""])
