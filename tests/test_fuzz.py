"""Mutated real messages through the whole pipeline (issue 6: robust parsing everywhere).

A short deterministic run for CI; `python tests/fuzz/run.py --count 100000` is the full one.
The engine (tests/fuzz/engine.py) sends mutated seeds, RFC 4475 messages and the regression
corpus from the PBX, from Teams (through a StreamFramer, as the shell does) and from a
stranger, answers what the proxy relays, fails transports and runs the timers on a fake clock.

The last tests pin leaks the fuzzer found in proxy.py (fixed there).
"""
from __future__ import annotations

import logging

import pytest

from teamsbc.app import build
from teamsbc.decisions import PBX, TEAMS, Source
from teamsbc.sip.message import parse_message

from .fuzz.engine import RFC4475, SEEDS, Fuzzer, fuzz_config
from .test_proxy import PBX_SRC, TEAMS_SRC, response_to, teams_invite

# Once the timers have run out nothing may be left (the leaks the fuzzer found are fixed;
# the regression tests at the end pin them).
KNOWN_LEAK_ALLOWANCE = 0


@pytest.fixture(autouse=True)
def quiet():
    logging.disable(logging.WARNING)  # the fuzz logs thousands of refusals by design
    yield
    logging.disable(logging.NOTSET)


def drain(proxy, start: float) -> None:
    for t in range(int(start) + 1, int(start) + 2000, 7):  # every timer, however chained
        proxy.handle_timer(float(t))


def test_short_fuzz_run_no_crash_no_hang_no_leak(tmp_path):
    report = Fuzzer(seed=20240601, tmp=tmp_path).run(3000, memory_every=1000)
    assert not report.failures, report.failures[0].trace + repr(report.failures[0].data[:500])
    assert report.slowest < 1.0, report.slowest_input[:300]
    assert report.receives >= 3000
    leftover = sum(report.tables_after.values())
    assert leftover <= KNOWN_LEAK_ALLOWANCE, report.tables_after
    assert report.tables_after["timers"] == 0  # nothing left with a timer still to run
    growth = report.memory[-1][1] - report.memory[0][1]
    assert growth < 2 << 20, report.memory  # flat within 2 MiB after the first 1,000 messages
    assert report.guard.get("malformed", 0) > 100  # the mutations do reach the parser


def test_every_seed_and_torture_message_passes_both_legs_unmutated(tmp_path):
    _, proxy, _ = build(fuzz_config(tmp_path))
    assert len(SEEDS) >= 10 and len(RFC4475) >= 40
    for i, path in enumerate(SEEDS + RFC4475):
        data = path.read_bytes()
        proxy.receive(data, PBX_SRC, float(i))
        proxy.receive(data, Source(TEAMS, "tls", ("52.114.14.70", 5061), conn=object()), float(i))
    drain(proxy, len(SEEDS + RFC4475))
    assert proxy.active_transactions == 0


def test_contact_star_outside_register_is_refused_by_the_guard(tmp_path):
    _, proxy, _ = build(fuzz_config(tmp_path))
    inv = proxy.receive(teams_invite(), TEAMS_SRC, 0.0)[1]
    ok = response_to(inv.data, 200, "OK", contact="*")
    assert proxy.receive(ok, PBX_SRC, 0.1) == []      # a response is never answered
    assert proxy.gate.counters["malformed"] == 1
    drain(proxy, 0.1)
    assert proxy.active_transactions == 0 and proxy.pending_requests == 0


# ------------------------------------------------------------------ leaks the fuzzer found (fixed)
class OpenGate:
    """A Gate (decisions.py) that lets everything through: the proxy's own robustness, without
    the guard's checks in front of it."""

    def admit(self, src, now):
        return True

    def check_limits(self, msg, size):
        pass

    def parse_failed(self, src, now):
        pass

    def screen(self, req, src, now):
        return None

    def answered(self, req, src, out, now):
        pass

    def track(self, event, now):
        pass


def test_parse_error_while_relaying_a_response_strands_nothing(tmp_path):
    _, proxy, _ = build(fuzz_config(tmp_path))
    proxy.gate = OpenGate()  # what the guard's Contact * check hides
    inv = proxy.receive(teams_invite(), TEAMS_SRC, 0.0)[1]
    proxy.receive(response_to(inv.data, 200, "OK", contact="*"), PBX_SRC, 0.1)
    drain(proxy, 0.1)
    assert proxy.active_transactions == 0 and proxy.pending_requests == 0


def test_invite_with_provisional_and_no_final_ends(tmp_path):
    _, proxy, _ = build(fuzz_config(tmp_path))
    inv = proxy.receive(teams_invite(), TEAMS_SRC, 0.0)[1]
    proxy.receive(response_to(inv.data, 180, "Ringing", to_tag="x"), PBX_SRC, 0.1)
    drain(proxy, 0.1)
    assert proxy.active_transactions == 0 and proxy.pending_requests == 0


def test_response_without_the_upstream_via_still_ends_the_transaction(tmp_path):
    _, proxy, _ = build(fuzz_config(tmp_path))
    bye = ("BYE sip:api@sip-du-a-eu.pstnhub.microsoft.com SIP/2.0\r\n"
           "Via: SIP/2.0/UDP 10.0.0.10:5060;branch=z9hG4bKbye1;rport\r\n"
           "Route: <sip:10.0.0.5:5060;lr;r2=on>, <sip:sbc.example.com:5061;transport=tls;lr;r2=on>, "
           "<sip:sip-du-a-eu.pstnhub.microsoft.com:5061;transport=tls;lr>\r\n"
           "Max-Forwards: 70\r\nFrom: <sip:1@10.0.0.10>;tag=a\r\nTo: <sip:2@x>;tag=b\r\nCall-ID: c3\r\n"
           "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    fwd = parse_message(proxy.receive(bye, PBX_SRC, 0.0)[0].data)
    ok = ("SIP/2.0 200 OK\r\nVia: " + fwd.headers.get_all("via")[0] + "\r\nFrom: <sip:1@10.0.0.10>;tag=a\r\n"
          "To: <sip:2@x>;tag=b\r\nCall-ID: c3\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    proxy.receive(ok, Source(TEAMS, "tls", ("52.114.75.24", 5061), conn=object()), 0.1)
    drain(proxy, 0.1)
    assert proxy.active_transactions == 0
