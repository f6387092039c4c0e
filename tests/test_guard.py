"""The guard (teamsbc/guard.py), sans-IO: who may talk to the SBC, how much, who is banned.

Through the whole pipeline where it matters (`build(config)[1].receive(...)`), with a float
for a clock. The end of the file holds the topology-hiding tests (issue 6, item 6): they
state what Teams must and must not see and fail until proxy.py implements it.
"""
from __future__ import annotations

import logging
import re

import pytest

from teamsbc import config as cfg
from teamsbc.app import build
from teamsbc.events import CallStarted
from teamsbc.guard import Guard
from teamsbc.decisions import PBX, TEAMS, Destination, Drop, Reply, Source
from teamsbc.sip.message import parse_message

from .test_proxy import PBX_SRC, SDP, TEAMS_SRC, pbx_invite, response_to, teams_invite

STRANGER = ("192.0.2.66", 5060)


def make(tmp_path, security=None, teams=None, pbx=None):
    for n in ("c.pem", "k.pem"):
        (tmp_path / n).write_text("x")
    data = {
        "sbc": {"fqdn": "sbc.example.com"},
        "teams": {"listen": "0.0.0.0:5061", "certificate": "c.pem", "private_key": "k.pem", **(teams or {})},
        "pbx": {"listen": "10.0.0.5:5060", "transport": "udp", "address": "10.0.0.10:5060", **(pbx or {})},
        "numbers": {"country_code": "44"},
    }
    if security is not None:
        data["security"] = security
    return cfg.from_dict(data, base=tmp_path)


def proxy_for(tmp_path, **kw):
    return build(make(tmp_path, **kw))[1]


def statuses(sends):
    return [getattr(m, "status", None) or m.method for m in (parse_message(s.data) for s in sends)]


def options(branch: str, ua: str | None = None, via_host: str = "192.0.2.66") -> bytes:
    lines = [f"OPTIONS sip:100@10.0.0.5 SIP/2.0", f"Via: SIP/2.0/UDP {via_host}:5060;branch=z9hG4bK{branch}",
             "Max-Forwards: 70", "From: <sip:100@192.0.2.66>;tag=s1", "To: <sip:100@10.0.0.5>",
             f"Call-ID: scan-{branch}", "CSeq: 1 OPTIONS"]
    if ua:
        lines.append(f"User-Agent: {ua}")
    return ("\r\n".join(lines + ["Content-Length: 0", "", ""])).encode()


# ------------------------------------------------------------------ configuration
def test_defaults_and_ranges_per_cloud(tmp_path):
    s = make(tmp_path).security
    assert s.teams_ranges == ("52.112.0.0/14", "52.120.0.0/14")
    assert s.unknown_source == "drop" and s.topology_hiding is False
    assert (s.max_message_size, s.max_headers, s.max_line_length) == (65535, 128, 8192)
    assert make(tmp_path, teams={"cloud": "gcch"}).security.teams_ranges == ("52.127.88.0/21",)
    assert make(tmp_path, teams={"cloud": "dod"}).security.teams_ranges == ("52.127.64.0/21",)
    lab = make(tmp_path, security={"teams_ranges": ["127.0.0.0/8"], "unknown_source": 403})
    assert lab.security.teams_ranges == ("127.0.0.0/8",) and lab.security.unknown_source == "403"


def test_config_errors_are_precise(tmp_path):
    with pytest.raises(cfg.ConfigError) as e:
        make(tmp_path, security={"teams_ranges": ["52.112.0.0/33"], "unknown_source": "reject",
                                 "max_line_length": 10_000, "stranger_burst": 0, "bogus": 1})
    text = "\n".join(e.value.errors)
    assert "security.teams_ranges[0]: '52.112.0.0/33' is not an address range" in text
    assert "security.unknown_source: 'reject' is not one of drop, 403" in text
    assert "security.max_line_length: must be a whole number between 256 and 8192" in text
    assert "security.stranger_burst: must be at least 1 when stranger_rate is set" in text
    assert "security.bogus: unknown key" in text


# ------------------------------------------------------------------ Teams listener
def test_teams_ranges_checked_at_accept_before_tls(tmp_path):
    g = Guard(make(tmp_path))
    assert g.admit_connection(("52.114.14.70", 41234), TEAMS, 0.0)
    assert g.admit_connection(("52.123.1.1", 41234), TEAMS, 0.0)       # 52.122.0.0/15 (newer pages)
    assert g.admit_connection(("::ffff:52.113.0.9", 41234), TEAMS, 0.0)  # dual-stack listener
    assert not g.admit_connection(("198.51.100.7", 41234), TEAMS, 0.0)
    assert not g.admit_connection(("52.127.88.1", 41234), TEAMS, 0.0)    # GCC High is not commercial
    assert g.counters == {"outside_teams_ranges": 2}
    lab = Guard(make(tmp_path, security={"teams_ranges": ["127.0.0.1/32"]}))
    assert lab.admit_connection(("127.0.0.1", 1), TEAMS, 0.0)
    assert not lab.admit_connection(("127.0.0.3", 1), TEAMS, 0.0)


def test_teams_resolve_targets_count_as_teams(tmp_path):
    g = Guard(make(tmp_path, teams={"resolve": {"sip.pstnhub.microsoft.com": "127.0.0.1:5071"}}))
    assert g.admit_connection(("127.0.0.1", 1), TEAMS, 0.0)
    assert not g.admit_connection(("127.0.0.2", 1), TEAMS, 0.0)


class Handle:
    def __init__(self):
        self.closing = False

    def is_closing(self):
        return self.closing


def test_teams_connections_rate_and_per_source_limit_are_generous_and_separate(tmp_path):
    g = Guard(make(tmp_path, security={"teams_connect_rate": 1, "teams_connect_burst": 3,
                                       "teams_max_connections": 2, "teams_ranges": ["52.112.0.0/14", "127.0.0.0/8"]}))
    hs = [Handle() for _ in range(3)]
    assert g.admit_connection(("52.114.1.1", 1), TEAMS, 0.0, hs[0])
    assert g.admit_connection(("52.114.1.1", 2), TEAMS, 0.0, hs[1])
    assert not g.admit_connection(("52.114.1.1", 3), TEAMS, 0.0, hs[2])   # 2 open already
    hs[0].closing = True
    assert g.admit_connection(("52.114.1.1", 4), TEAMS, 0.0, hs[2])       # one closed: room again
    hs[1].closing = True
    assert not g.admit_connection(("52.114.1.1", 5), TEAMS, 0.0, Handle())  # bucket of 3 empty
    assert g.admit_connection(("52.114.9.9", 5), TEAMS, 0.0, Handle())    # another address: its own
    assert g.counters == {"connections_per_source": 1, "connection_rate": 1}
    assert g.sizes()["bans"] == 0  # Teams is never banned


def test_failed_handshakes_ban_strangers_never_teams(tmp_path):
    g = Guard(make(tmp_path, security={"ban_after": 3, "teams_ranges": ["0.0.0.0/0"],
                                       "teams_connect_burst": 100}))
    for _ in range(5):
        g.handshake_failed(("52.114.1.1", 1), 0.0)
    assert g.admit_connection(("52.114.1.1", 1), TEAMS, 0.0)  # 0.0.0.0/0: everyone is "Teams"
    g2 = Guard(make(tmp_path, security={"ban_after": 3, "unknown_source": "403"}))
    for _ in range(3):
        g2.handshake_failed(("192.0.2.9", 1), 0.0)
    assert g2.counters["bans"] == 1
    assert not g2.admit_connection(("192.0.2.9", 1), PBX, 1.0)
    assert g2.admit_connection(("192.0.2.9", 1), PBX, 601.0)  # ban_time 600 s is over


# ------------------------------------------------------------------ PBX leg
def test_unknown_pbx_source_is_dropped_silently_and_counted(tmp_path):
    proxy = proxy_for(tmp_path)
    assert proxy.receive(pbx_invite(), Source(PBX, "udp", STRANGER), 0.0) == []
    assert proxy.receive(options("x1"), Source(PBX, "tcp", STRANGER, conn=object()), 0.0) == []
    assert proxy.gate.counters == {"unknown_source": 2}
    assert proxy.active_transactions == 0
    assert not proxy.gate.admit_address("192.0.2.66", PBX, 0.0)  # the UDP socket asks first
    assert not proxy.gate.admit_connection(STRANGER, PBX, 0.0, Handle())  # TCP: closed at accept
    # the PBX itself is untouched
    assert statuses(proxy.receive(pbx_invite(), PBX_SRC, 0.0)) == [100, "INVITE"]


def test_403_policy_answers_then_bans(tmp_path):
    proxy = proxy_for(tmp_path, security={"unknown_source": "403", "ban_after": 3, "ban_time": 60})
    src = Source(PBX, "udp", STRANGER)
    for i in range(3):
        assert statuses(proxy.receive(options(f"b{i}"), src, float(i))) == [403]
    assert proxy.gate.counters["refused_403"] == 3 and proxy.gate.counters["bans"] == 1
    assert proxy.receive(options("b9"), src, 3.0) == []       # banned: nothing at all
    assert proxy.gate.counters["banned"] == 1
    assert statuses(proxy.receive(options("b10"), src, 64.0)) == [403]  # the ban expired
    assert statuses(proxy.receive(pbx_invite(), PBX_SRC, 3.0)) == [100, "INVITE"]


def test_scanner_user_agents_are_dropped_but_the_pbx_is_not_judged(tmp_path):
    proxy = proxy_for(tmp_path, security={"unknown_source": "403", "ban_after": 2})
    for i, ua in enumerate(("friendly-scanner", "sipcli/v1.8", "SIPVicious/0.3.4")):
        assert proxy.receive(options(f"u{i}", ua), Source(PBX, "udp", (f"192.0.2.{i}", 5060)), 0.0) == []
    assert proxy.gate.counters["scanner_user_agent"] == 3
    # one failure each: not banned yet; a second one from the same address bans it
    proxy.receive(options("u9", "friendly-scanner"), Source(PBX, "udp", ("192.0.2.0", 5060)), 0.0)
    assert proxy.gate.counters["bans"] == 1
    # a PBX whose vendor string matches a pattern still gets its calls through
    inv = pbx_invite(extra="User-Agent: PortSIP VoIP SDK 11.2\r\n")
    assert statuses(proxy.receive(inv, PBX_SRC, 0.0)) == [100, "INVITE"]
    # Teams never sends such a User-Agent: dropped, counted, never banned
    opt = options("t1", "friendly-scanner").replace(b"sip:100@10.0.0.5", b"sip:sbc.example.com:5061")
    assert proxy.receive(opt, TEAMS_SRC, 0.0) == []
    assert proxy.gate.counters["scanner_user_agent"] == 5 and proxy.gate.counters["bans"] == 1


def test_a_stranger_flood_cannot_starve_the_pbx_or_teams(tmp_path):
    """403 policy (the most exposed one): one address and a thousand spoofed ones flood; the
    PBX and Teams keep their own buckets and get every call through."""
    proxy = proxy_for(tmp_path, security={"unknown_source": "403", "ban_after": 1000})
    now = 0.0
    sent = answered = 0
    for i in range(3000):
        src = Source(PBX, "udp", (f"198.51.{i % 1000 // 250}.{i % 250}", 5060) if i % 2 else STRANGER)
        answered += len(proxy.receive(options(f"f{i}"), src, now))
        sent += 1
    assert answered <= 20 + 400 + 5  # per-address burst + the strangers' shared burst (+ refill)
    drops = proxy.gate.counters
    assert drops["rate_limited"] + drops["strangers_rate_limited"] + drops["banned"] == sent - answered
    for n in range(50):  # the PBX, at the same instant
        out = proxy.receive(pbx_invite(f"z9hG4bKp{n}").replace(b"call-1@", f"call-{n}@".encode()), PBX_SRC, now)
        assert statuses(out) == [100, "INVITE"], n
    for n in range(50):  # and Teams
        inv = teams_invite(f"z9hG4bKt{n}").replace(b"teams-call-1", f"teams-call-{n}".encode())
        assert statuses(proxy.receive(inv, TEAMS_SRC, now)) == [100, "INVITE"], n


def test_pbx_and_teams_buckets_answer_503_for_new_requests_only(tmp_path):
    proxy = proxy_for(tmp_path, security={"pbx_rate": 1, "pbx_burst": 2})
    for n in range(2):
        out = proxy.receive(pbx_invite(f"z9hG4bKq{n}").replace(b"call-1@", f"call-{n}@".encode()), PBX_SRC, 0.0)
        assert statuses(out) == [100, "INVITE"]
    out = proxy.receive(pbx_invite("z9hG4bKq2").replace(b"call-1@", b"call-2@"), PBX_SRC, 0.0)
    resp = parse_message(out[0].data)
    assert resp.status == 503 and resp.headers.get("retry-after") == "30"
    assert proxy.gate.counters == {"rate_limited_pbx": 1}


def test_a_flood_beyond_the_rate_is_counted_not_logged_line_by_line(tmp_path, caplog):
    """A PBX that floods REGISTERs (a stranger's install: 2,450 INFO lines in 0.8 s) gets its
    503s; the log says it once per report period, and the counters say how many."""
    proxy = proxy_for(tmp_path, security={"pbx_rate": 1, "pbx_burst": 2})
    caplog.set_level(logging.INFO, logger="teamsbc")
    answers = []
    for n in range(500):
        reg = (f"REGISTER sip:10.0.0.5 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKr{n}\r\n"
               f"From: <sip:100@10.0.0.5>;tag=r{n}\r\nTo: <sip:100@10.0.0.5>\r\nCall-ID: reg-{n}\r\n"
               f"CSeq: 1 REGISTER\r\nContact: <sip:100@10.0.0.5>\r\nMax-Forwards: 70\r\n"
               f"Content-Length: 0\r\n\r\n").encode()
        answers += [parse_message(s.data).status for s in proxy.receive(reg, PBX_SRC, 0.0)
                    if s.data.startswith(b"SIP/2.0")]
    assert answers.count(503) == 498 and proxy.gate.counters["rate_limited_pbx"] == 498
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) <= 3, lines
    assert any(f"rate limited pbx from {PBX_SRC.addr[0]}" in m for m in lines), lines
    # in-dialog requests are never limited (a call in progress must be able to end)
    bye = ("BYE sip:api@sip-du-a-eu.pstnhub.microsoft.com SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKbye1;rport\r\n"
           "Route: <sip:10.0.0.5:5060;lr;r2=on>, <sip:sbc.example.com:5061;transport=tls;lr;r2=on>, "
           "<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:1@10.0.0.10>;tag=pbxtag\r\nTo: <sip:2@x>;tag=teamstag\r\n"
           "Call-ID: call-0@10.0.0.10\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    assert statuses(proxy.receive(bye, PBX_SRC, 0.0)) == ["BYE"]
    # a second later the bucket has a token again
    out = proxy.receive(pbx_invite("z9hG4bKq3").replace(b"call-1@", b"call-3@"), PBX_SRC, 1.0)
    assert statuses(out) == [100, "INVITE"]


# ------------------------------------------------------------------ concurrent calls
def test_concurrent_calls_total_limit_503_with_retry_after_and_release(tmp_path):
    proxy = proxy_for(tmp_path, security={"max_calls": 2})
    outs = [proxy.receive(pbx_invite(f"z9hG4bKc{n}").replace(b"call-1@", f"call-{n}@".encode()), PBX_SRC, 0.0)
            for n in range(2)]
    assert all(statuses(o) == [100, "INVITE"] for o in outs)
    third = proxy.receive(teams_invite(), TEAMS_SRC, 0.1)
    resp = parse_message(third[0].data)
    assert (resp.status, resp.headers.get("retry-after")) == (503, "30")
    assert len(third) == 1  # no 100 Trying first: Teams fails over to another SBC (reference 6)
    assert proxy.gate.counters == {"calls_total": 1}
    # the first call is declined by Teams: its capacity is free again
    proxy.receive(response_to(outs[0][1].data, 486, "Busy Here"), TEAMS_SRC, 0.2)
    assert proxy.gate.calls.count() == 1
    again = proxy.receive(teams_invite("z9hG4bKteams2"), TEAMS_SRC, 0.3)
    assert statuses(again) == [100, "INVITE"]
    # the second call is answered, then ended with a BYE
    ok = response_to(outs[1][1].data, 200, "OK", contact="<sip:api-du@sip-du-a-eu.pstnhub.microsoft.com>",
                     rr=["<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>"]
                     + parse_message(outs[1][1].data).headers.get_all("record-route"), body=SDP)
    proxy.receive(ok, TEAMS_SRC, 0.4)
    assert proxy.gate.calls.count() == 2
    bye = ("BYE sip:api-du@sip-du-a-eu.pstnhub.microsoft.com SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKbye2;rport\r\n"
           "Route: <sip:10.0.0.5:5060;lr;r2=on>, <sip:sbc.example.com:5061;transport=tls;lr;r2=on>, "
           "<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:1@10.0.0.10>;tag=pbxtag\r\nTo: <sip:2@x>;tag=teamstag\r\n"
           "Call-ID: call-1@10.0.0.10\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    proxy.receive(bye, PBX_SRC, 0.5)
    assert proxy.gate.calls.count() == 1


def test_calls_idle_for_too_long_stop_counting(tmp_path):
    proxy = proxy_for(tmp_path, security={"max_calls": 1, "call_idle_timeout": 60})
    assert statuses(proxy.receive(pbx_invite(), PBX_SRC, 0.0)) == [100, "INVITE"]
    assert statuses(proxy.receive(teams_invite(), TEAMS_SRC, 1.0)) == [503]
    # the INVITE's transactions time out meanwhile (408 upstream ends the call) - so take a
    # call that was answered and whose BYE got lost: started, never ended
    proxy.gate.track(CallStarted("lost", "pbx->teams", None, "", ""), 0.0)
    proxy.gate.calls.active.pop("call-1@10.0.0.10", None)
    proxy.gate.calls.per_tenant["sbc.example.com"] = 1
    assert statuses(proxy.receive(teams_invite("z9hG4bKt3"), TEAMS_SRC, 100.0)) == [100, "INVITE"]


def test_concurrent_calls_per_tenant(tmp_path):
    proxy = proxy_for(tmp_path, security={"max_calls_per_tenant": 1}, teams={"tenants": {
        "alpha.sbc.example.com": {"pbx": "10.0.1.10:5060"}, "beta.sbc.example.com": {"pbx": "10.0.2.10:5060"}}})
    alpha = teams_invite().replace(b"@sbc.example.com:5061;user=phone;transport=tls", b"@alpha.sbc.example.com:5061;user=phone;transport=tls")
    beta = teams_invite("z9hG4bKb").replace(b"@sbc.example.com:5061;user=phone;transport=tls", b"@beta.sbc.example.com:5061;user=phone;transport=tls").replace(b"teams-call-1", b"teams-call-b")
    assert statuses(proxy.receive(alpha, TEAMS_SRC, 0.0)) == [100, "INVITE"]
    assert statuses(proxy.receive(beta, TEAMS_SRC, 0.0)) == [100, "INVITE"]
    alpha2 = alpha.replace(b"teams-call-1", b"teams-call-a2").replace(b"z9hG4bKteams1", b"z9hG4bKa2")
    assert statuses(proxy.receive(alpha2, TEAMS_SRC, 0.0)) == [503]
    # the PBX of tenant alpha calls out: counted for alpha too
    out = proxy.receive(pbx_invite("z9hG4bKpa"), Source(PBX, "udp", ("10.0.1.10", 5060)), 0.0)
    assert statuses(out) == [503]
    assert proxy.gate.counters == {"calls_tenant": 2}


# ------------------------------------------------------------------ limits and memory
def test_lowered_parser_limits_answer_like_the_parser(tmp_path):
    proxy = proxy_for(tmp_path, security={"max_headers": 16, "max_message_size": 1024})
    many = pbx_invite(extra="".join(f"X-H{i}: {i}\r\n" for i in range(10)))
    out = proxy.receive(many, PBX_SRC, 0.0)
    resp = parse_message(out[0].data)
    assert (resp.status, resp.reason) == (400, "Too many headers")
    big = pbx_invite(extra=f"X-Pad: {'a' * 1200}\r\n")
    resp = parse_message(proxy.receive(big, PBX_SRC, 0.0)[0].data)
    assert (resp.status, resp.reason) == (513, "Message too large")
    assert proxy.gate.counters == {"malformed": 2}


AUTH = {"realm": "sbc.example.com", "username": "pbx-trunk", "password": "correct horse battery"}


def test_digest_guessing_from_the_pbx_address_is_locked_out_after_ban_auth_after(tmp_path, caplog):
    """Issue 12: svcrack made 5,000 guesses from the PBX address. After security.ban_auth_after
    (5) failed credentials within ban_window, new requests needing credentials are dropped
    unheard for ban_time; the first challenge and a stale nonce do not count; OPTIONS and
    in-dialog requests still pass; after ban_time credentials are checked again."""
    from tests.test_digest import answer
    caplog.set_level(logging.INFO)
    core = build(make(tmp_path, pbx={"auth": AUTH}, security={"ban_time": 60}), 0.0)
    proxy, guard = core.proxy, core.guard
    auth = core.router.auth
    assert guard.settings.ban_auth_after == 5

    def invite(n: int, now: float, password: str | None) -> list:
        creds = ""
        if password is not None:
            creds = f"Proxy-Authorization: {answer(auth, auth.challenge(now), 'INVITE', 'sip:02071234567@10.0.0.5:5060', password)}\r\n"
        return statuses(proxy.receive(pbx_invite(branch=f"z9hG4bKg{n}", extra=creds).replace(
            b"call-1@", f"call-{n}@".encode()), PBX_SRC, now))

    assert invite(0, 1.0, None) == [407]                      # the challenge: not a failure
    stale = answer(auth, auth.challenge(1.0), "INVITE", "sip:02071234567@10.0.0.5:5060", AUTH["password"])
    out = statuses(proxy.receive(pbx_invite(branch="z9hG4bKstale", extra=f"Proxy-Authorization: {stale}\r\n")
                                 .replace(b"call-1@", b"call-st@"), PBX_SRC, 400.0))
    assert out == [407]                                       # stale nonce, right password: not a failure
    for n in range(1, 6):
        assert invite(n, 401.0 + n, f"guess{n}") == [407]
    assert invite(6, 407.0, "guess6") == []                   # locked out: not even evaluated
    assert invite(7, 408.0, AUTH["password"]) == []           # nor the right one (until ban_time)
    assert guard.counters["auth_lockouts"] == 1 and guard.counters["auth_locked_out"] == 2
    assert len([r for r in caplog.records if "authentication failed: wrong password" in r.getMessage()]) == 5
    assert [r.getMessage() for r in caplog.records if "locked out 10.0.0.10" in r.getMessage()]
    assert statuses(proxy.receive(options("keep").replace(b"192.0.2.66", b"10.0.0.10"), PBX_SRC, 409.0)) == [200]
    assert invite(8, 470.0, AUTH["password"]) == [100, "INVITE"]   # ban_time (60 s) over


def test_digest_lockout_can_be_turned_off(tmp_path):
    core = build(make(tmp_path, pbx={"auth": AUTH}, security={"ban_auth_after": 0}), 0.0)
    bad = 'Digest username="x", realm="sbc.example.com", nonce="1.2", uri="sip:a", response="00"'
    for n in range(20):
        out = core.proxy.receive(pbx_invite(branch=f"z9hG4bKo{n}", extra=f"Proxy-Authorization: {bad}\r\n"),
                                 PBX_SRC, float(n))
        assert statuses(out) == [407]


def test_tables_stay_bounded_under_a_spoofed_source_flood(tmp_path):
    proxy = proxy_for(tmp_path, security={"unknown_source": "403", "max_sources": 100, "ban_after": 2})
    g = proxy.gate
    for i in range(5000):
        src = Source(PBX, "udp", (f"172.{16 + i // 65536 % 16}.{i // 256 % 256}.{i % 256}", 5060))
        proxy.receive(options(f"s{i}", "friendly-scanner" if i % 3 == 0 else None), src, i * 0.001)
    sizes = g.sizes()
    assert sizes["requests"] <= 101 and sizes["failures"] <= 100 and sizes["bans"] <= 100, sizes
    proxy.handle_timer(10_000.0)
    g.housekeeping(10_000.0)
    assert g.sizes()["bans"] == 0 and g.sizes()["failures"] == 0 and g.sizes()["requests"] == 0


def test_counters_are_reported_by_the_core_clock(tmp_path, caplog):
    router, proxy, _ = build(make(tmp_path, security={"report_interval": 5}), 0.0)
    assert proxy.next_timer() == 5.0
    proxy.receive(pbx_invite(), Source(PBX, "udp", STRANGER), 1.0)
    with caplog.at_level(logging.INFO, logger="teamsbc.guard"):
        assert proxy.handle_timer(5.0) == []
    assert 'guard counters: {"unknown_source": 1}' in caplog.text
    assert proxy.next_timer() == 10.0
    assert proxy.gate.drops is proxy.gate.counters  # what teamsbc.metrics reads


# ------------------------------------------------------------------ topology hiding (item 6)
# Design (for proxy.py; not implemented yet). With security.topology_hiding: true, toward Teams:
# - Record-Route: the PBX-side entry of the RFC 5658 pair, <sip:PBX_LISTEN_IP:PORT;lr;r2=on>, and
#   every Record-Route entry the PBX side added below it are folded into ONE entry in the FQDN
#   form, <sip:SBC_FQDN:PORT;transport=tls;lr;r2=on;x-tsbc-rr=TOKEN>, where TOKEN is the
#   original entries, encrypted and authenticated with a key of the SBC (so Teams cannot read
#   them and nobody can forge a route through us). is_own_uri() already matches it (FQDN), so
#   Teams' in-dialog requests pop it like today; the PBX-side route set is restored from TOKEN.
#   Toward the PBX the entries are written as today (the PBX must see its own route set).
# - Via: the Vias below ours (the PBX's and any internal proxies') are removed toward Teams and
#   kept with the server transaction (they are needed only for the response going back, which
#   the proxy already sends through the server transaction); for stray 2xx retransmissions after
#   the transaction is gone, they are also carried encrypted in a parameter of our own Via.
# - Contact: already the FQDN with x-tsbc-c (base64url of the PBX Contact): make that value
#   encrypted too (today it is readable: it reveals the PBX address).
# - Not covered: Call-ID (end to end; a proxy must not change it: a PBX that puts its IP there
#   has to be configured not to), SDP (rtpengine anchors media), headers the SBC does not
#   touch (e.g. a PBX's P-Asserted-Identity host, which numbers normalisation already rewrites).
INTERNAL = re.compile(r"10\.0\.\d+\.\d+")
HIDDEN_HEADERS = ("via", "record-route", "route", "contact")


def hiding_proxy(tmp_path):
    return proxy_for(tmp_path, security={"topology_hiding": True})


def assert_nothing_internal(msg):
    for name in HIDDEN_HEADERS:
        for v in msg.headers.get_all(name):
            assert not INTERNAL.search(v), f"{name}: {v}"


def test_hidden_invite_toward_teams_names_no_internal_address(tmp_path):
    proxy = hiding_proxy(tmp_path)
    out = proxy.receive(pbx_invite(extra="Record-Route: <sip:10.0.0.77;lr>\r\n"), PBX_SRC, 0.0)
    inv = parse_message(out[1].data)
    assert out[1].to == Destination(TEAMS, "tls", "sip.pstnhub.microsoft.com", 5061)
    assert_nothing_internal(inv)
    rr = inv.headers.get_all("record-route")
    assert rr[0] == "<sip:sbc.example.com:5061;transport=tls;lr;r2=on>"
    assert all("sbc.example.com" in v for v in rr)  # every entry Teams sees names us


def test_hidden_responses_toward_teams_name_no_internal_address(tmp_path):
    proxy = hiding_proxy(tmp_path)
    out = proxy.receive(teams_invite(), TEAMS_SRC, 0.0)
    inv_out = out[1]
    inv = parse_message(inv_out.data)
    rr = ["<sip:10.0.0.77;lr>"] + inv.headers.get_all("record-route")  # an internal proxy of the PBX
    ringing = response_to(inv_out.data, 180, "Ringing", to_tag="p1", contact="<sip:+15551230000@10.0.0.10:5060>", rr=rr)
    ok = response_to(inv_out.data, 200, "OK", to_tag="p1", contact="<sip:+15551230000@10.0.0.10:5060>", rr=rr, body=SDP)
    for raw in (ringing, ok):
        sends = proxy.receive(raw, PBX_SRC, 0.1)
        resp = parse_message(sends[0].data)
        assert sends[0].to == TEAMS_SRC
        assert_nothing_internal(resp)
        # Teams' own entries stay as they were, at the end of the list
        assert resp.headers.get_all("record-route")[-1] == "<sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>"


def test_hidden_route_set_still_carries_teams_bye_to_the_pbx(tmp_path):
    """What Teams learned from a hidden 200 OK is enough to reach the PBX, even after a restart."""
    proxy = hiding_proxy(tmp_path)
    inv_out = proxy.receive(teams_invite(), TEAMS_SRC, 0.0)[1]
    rr = ["<sip:10.0.0.77;lr>"] + parse_message(inv_out.data).headers.get_all("record-route")
    ok = response_to(inv_out.data, 200, "OK", to_tag="p1", contact="<sip:+15551230000@10.0.0.10:5060>", rr=rr, body=SDP)
    resp = parse_message(proxy.receive(ok, PBX_SRC, 0.1)[0].data)
    assert_nothing_internal(resp)
    # Teams (the UAC) builds its route set from the Record-Route as received
    routes = resp.headers.get_all("record-route")[:-1]  # without its own edge entry
    contact = resp.headers.get("contact").strip("<>")
    bye = (f"BYE {contact} SIP/2.0\r\n"
           "VIA: SIP/2.0/TLS 52.114.14.70:5061;branch=z9hG4bKhbye\r\n"
           + "".join(f"ROUTE: {r}\r\n" for r in reversed(routes)) +
           "MAX-FORWARDS: 70\r\nFROM: <sip:+4930123@sip.pstnhub.microsoft.com:5061;user=phone>;tag=t1\r\n"
           "TO: <sip:+15551230000@sbc.example.com:5061;user=phone>;tag=p1\r\nCALL-ID: teams-call-1\r\n"
           "CSEQ: 2 BYE\r\nCONTENT-LENGTH: 0\r\n\r\n").encode()
    restarted = hiding_proxy(tmp_path)
    sends = restarted.receive(bye, TEAMS_SRC, 5.0)
    fwd = parse_message(sends[0].data)
    assert sends[0].to == Destination(PBX, "udp", "10.0.0.10", 5060)
    # the PBX gets its own route set back: its internal proxy, nothing of ours
    assert fwd.headers.get_all("route") == ["<sip:10.0.0.77;lr>"]
    assert fwd.uri == "sip:+15551230000@10.0.0.10:5060"


def test_hidden_vias_come_back_for_the_pbx(tmp_path):
    """Teams' answer to a PBX INVITE reaches the PBX with the PBX's own Via stack intact."""
    proxy = hiding_proxy(tmp_path)
    inv = pbx_invite().replace(b"Max-Forwards: 70\r\n",
                               b"Via: SIP/2.0/UDP 10.0.0.99:5060;branch=z9hG4bKinner\r\nMax-Forwards: 70\r\n")
    inv_out = proxy.receive(inv, PBX_SRC, 0.0)[1]
    toward_teams = parse_message(inv_out.data)
    assert_nothing_internal(toward_teams)
    assert len(toward_teams.headers.get_all("via")) == 1
    sends = proxy.receive(response_to(inv_out.data, 180, "Ringing"), TEAMS_SRC, 0.1)
    up = parse_message(sends[0].data)
    assert sends[0].to == PBX_SRC
    assert up.headers.get_all("via") == ["SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKpbx1;rport=5060",
                                         "SIP/2.0/UDP 10.0.0.99:5060;branch=z9hG4bKinner"]


def test_without_topology_hiding_teams_sees_the_pbx_side_entry(tmp_path):
    """Today's default, stated so the switch above has something to switch."""
    out = proxy_for(tmp_path).receive(pbx_invite(), PBX_SRC, 0.0)
    assert "<sip:10.0.0.5:5060;lr;r2=on>" in parse_message(out[1].data).headers.get_all("record-route")
