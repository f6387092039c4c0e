"""Issue 14, the parts that make the SBC faster and smaller, held to what they promise:

- the parser's one-pass reading of an unfolded head gives the same message as the
  line-by-line reader (which still gives every precise error);
- parsed views are shared while a header keeps its string, and parsed afresh once it changes;
- the entropy pool hands out fresh bytes and forgets them in a forked child;
- what the proxy holds for an answered call: no 2xx in the server transaction, no parsed views,
  no stale timer entries holding finished calls;
- sbc.workers: the Call-ID read from raw bytes, one owner per call in every process, the
  guard's share of every limit, bans sent on.
(Timing is bench/'s business: nothing here measures time.)
"""
from __future__ import annotations

import os

import pytest

from teamsbc import config as cfg
from teamsbc.app import build
from teamsbc.entropy import EntropyPool
from teamsbc.guard import Guard
from teamsbc.relay import Relay
from teamsbc.sip.message import _read_fields, parse_message
from teamsbc.sip.transaction import ServerTransaction
from teamsbc.tables import COMPACT_AFTER
from teamsbc.workers import Team, call_id_of

from .test_guard import make
from .test_proxy import PBX_SRC, SDP, TEAMS_SRC, pbx_invite, response_to


# ------------------------------------------------------------------ parsing once
def test_one_pass_and_line_reader_agree():
    msg = pbx_invite(extra="v: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx\r\nX-Odd :  spaced value \t\r\n")
    head = msg.split(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")
    fast = parse_message(msg)
    folded = parse_message(msg.replace(b"X-Odd :  spaced value", b"X-Odd :  spaced\r\n value"))
    assert [(n, v) for n, v in fast.headers] == [(n, v) for n, v in folded.headers]
    assert fast.headers.get("x-odd") == "spaced value"
    assert fast.headers.get_all("via")[1] == "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx"
    assert [(n, v.rstrip(" \t")) for n, v in _read_fields(lines)] == \
        [(n, v) for n, v in _read_fields(lines)]


@pytest.mark.parametrize("bad, reason", [
    (b"Bad Line Here\r\n", "Header line without colon"),
    (b": empty name\r\n", "Empty header name"),
    (b"Bad Name: x\r\n", "Bad header name"),
])
def test_a_line_the_one_pass_cannot_read_gets_the_precise_error(bad, reason):
    from teamsbc.sip.errors import ParseError
    with pytest.raises(ParseError) as e:
        parse_message(pbx_invite(extra=bad.decode()))
    assert e.value.reason == reason


def test_views_are_parsed_once_and_again_after_a_change():
    req = parse_message(pbx_invite())
    assert req.to_addr is req.to_addr and req.top_via is req.top_via and req.ruri is req.ruri
    first = req.to_addr
    req.headers.set("to", "<sip:other@10.0.0.5>;tag=x")
    assert req.to_addr is not first and req.to_addr.tag == "x"
    uri = req.ruri
    req.uri = "sip:9@10.0.0.5"
    assert req.ruri is not uri and req.ruri.user == "9"
    copy = type(req)(req.method, req.uri, req.headers.copy(), req.body)
    copy.share_views(req)
    assert copy.to_addr is req.to_addr              # a relayed copy reuses what was parsed
    copy.headers.set("to", "<sip:a@b>")
    assert req.headers.get("to") == "<sip:other@10.0.0.5>;tag=x"  # copies never share a field


# ------------------------------------------------------------------ entropy
def test_entropy_pool_gives_fresh_bytes_and_forgets_them_after_fork():
    pool = EntropyPool()
    draws = [pool(12) for _ in range(1000)]          # more than one 4 KiB block
    assert len(set(draws)) == 1000 and all(len(d) == 12 for d in draws)
    assert len(pool(5000)) == 5000
    pool(1)                                          # a new block, 4095 bytes left in it
    r, w = os.pipe()
    parent_next = pool._buf[pool._at:pool._at + 12]
    pid = os.fork()
    if pid == 0:  # the child must not hand out what the parent will
        from teamsbc.entropy import POOL
        POOL(1)
        os.write(w, b"1" if POOL._at == 1 and len(POOL._buf) == 4096 else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    assert pool(12) == parent_next                    # this (non-global) pool is the parent's own


# ------------------------------------------------------------------ what an answered call keeps
def answered_call(proxy, n: int) -> None:
    inv = pbx_invite(f"z9hG4bKm{n}").replace(b"call-1@", f"call-{n}@".encode())
    out = proxy.receive(inv, PBX_SRC, float(n))
    fwd = out[1].data
    proxy.receive(response_to(fwd, 180, "Ringing"), TEAMS_SRC, float(n))
    proxy.receive(response_to(fwd, 200, "OK", contact="<sip:+14255550100@sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls>",
                              body=SDP), TEAMS_SRC, float(n))


def test_an_answered_call_keeps_no_2xx_and_no_parsed_views(tmp_path):
    proxy = build(make(tmp_path))[1]
    answered_call(proxy, 1)
    (sv,) = proxy.t.server.values()
    assert sv.st.state == "accepted" and sv.st.last_response is None
    assert sv.relay.request._views == {}
    (_, ctx, _), = proxy.t.client.values()
    assert ctx.state == "accepted" and ctx.request._views == {}
    # a server transaction built with the default still keeps it (RFC 6026 7.1 TUs)
    st = ServerTransaction(parse_message(pbx_invite()), reliable=False, now=0.0)
    assert st.keep_2xx


def test_finished_calls_leave_no_timer_entries_behind(tmp_path):
    proxy = build(make(tmp_path, security={"pbx_rate": 0, "max_calls": 0}))[1]
    calls = 3 * COMPACT_AFTER
    for n in range(calls):
        answered_call(proxy, n)
    # every relay is done; its old Timer C entry (180 s away) would hold the whole call: the
    # heap lets go of a relay the moment it finishes (tables.Tables.schedule)
    assert all(r.done for r in proxy.t.relays())
    assert [o for o in proxy.t.timer_objects() if isinstance(o, Relay) and o.done] == []


# ------------------------------------------------------------------ workers
def test_call_id_of_raw_bytes_reads_the_head_only():
    msg = pbx_invite()
    assert call_id_of(msg) == b"call-1@10.0.0.10"
    compact = msg.replace(b"Call-ID: ", b"i:  ")
    assert call_id_of(compact) == b"call-1@10.0.0.10"
    body = b"SIP/2.0 200 OK\r\nCall-ID: inside\r\n"
    notify = (b"NOTIFY sip:a@b SIP/2.0\r\nCall-ID: outer\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    assert call_id_of(notify) == b"outer"
    assert call_id_of(b"garbage") is None


def test_every_process_agrees_on_the_owner_and_a_dead_worker_is_shared_out():
    teams = [Team(i, 3, {}) for i in range(3)]
    ids = [f"{n}-call@pbx" for n in range(300)]
    owners = [teams[0].owner(c) for c in ids]
    assert all(t.owner(c) == o for t in teams for c, o in zip(ids, owners))
    assert {0, 1, 2} == set(owners)
    assert sum(teams[1].owns(c) for c in ids) == owners.count(1)
    for t in teams:
        t.alive.remove(2)                            # every process sees the channel close
    after = [teams[0].owner(c) for c in ids]
    assert all(teams[1].owner(c) == o for c, o in zip(ids, after))
    assert {after[i] for i, o in enumerate(owners) if o == 2} == {0, 1}   # its calls shared out
    assert all(a == o for a, o in zip(after, owners) if o != 2)         # nobody else's moved


def test_workers_share_every_limit_and_pass_bans_on(tmp_path):
    conf = make(tmp_path, security={"pbx_rate": 10, "pbx_burst": 20, "max_calls": 5,
                                    "max_calls_per_tenant": 3, "ban_after": 5, "unknown_source": "403"})
    banned = []
    g = Guard(conf, share=0.5, on_ban=lambda ip, until: banned.append((ip, until)))
    assert (g.max_calls, g.max_calls_per_tenant, g.ban_after) == (3, 2, 3)   # rounded up
    assert g._requests["pbx"].rate == 5 and g._requests["pbx"].burst == 10
    whole = Guard(conf)
    assert (whole.max_calls, whole.ban_after, whole._requests["pbx"].rate) == (5, 5, 10)
    for _ in range(3):
        g.handshake_failed(("192.0.2.9", 1), 0.0)
    assert banned == [("192.0.2.9", 600.0)]
    other = Guard(conf, share=0.5)
    other.ban("192.0.2.9", 600.0)                    # what the other worker does with it
    assert not other.admit_address("192.0.2.9", "pbx", 1.0)
    assert other.admit_address("192.0.2.9", "pbx", 601.0)


def test_options_we_send_carry_a_call_id_this_worker_owns(tmp_path):
    team = Team(1, 2, {})
    router = build(make(tmp_path), team=team).router
    for peer in ("sip.pstnhub.microsoft.com", "pbx 10.0.0.10:5060"):
        for _ in range(20):
            req, _ = router.options_request(peer)
            assert team.owns(req.call_id)


def test_sbc_workers_setting(tmp_path):
    def conf(v):
        for n in ("c.pem", "k.pem"):
            (tmp_path / n).write_text("x")
        return cfg.from_dict({"sbc": {"fqdn": "sbc.example.com", "workers": v},
                              "teams": {"listen": "0.0.0.0:5061", "certificate": "c.pem", "private_key": "k.pem"},
                              "pbx": {"listen": "10.0.0.5:5060", "address": "10.0.0.10:5060"}}, base=tmp_path)
    assert conf(2).sbc.workers == 2
    assert conf("auto").sbc.workers == len(os.sched_getaffinity(0))
    for bad in (0, 65, "two", True):
        with pytest.raises(cfg.ConfigError) as e:
            conf(bad)
        assert any("sbc.workers: must be a whole number from 1 to 64 or auto" in line
                   for line in e.value.errors), e.value.errors
