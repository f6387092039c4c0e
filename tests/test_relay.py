"""The relay state machine (teamsbc/relay.py): its transition table and the deadline each state
keeps, with a float for a clock. The proxy's use of it is tested through whole call flows in
test_proxy.py, test_proxy_media.py and test_trunk_health.py."""
from __future__ import annotations

import pytest

from teamsbc.decisions import PBX, TEAMS, Destination, Forward, Source, Target
from teamsbc.relay import CANCEL_WAIT, TIMER_C, TRANSITIONS, Event, Relay, State
from teamsbc.sip.errors import LocalProtocolError
from teamsbc.sip.message import parse_message

INVITE = parse_message(
    b"INVITE sip:+4420@sbc.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10;branch=z9hG4bK1\r\n"
    b"From: <sip:1@10.0.0.10>;tag=a\r\nTo: <sip:2@sbc.example.com>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n")
BYE = parse_message(
    b"BYE sip:+4420@sbc.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.10;branch=z9hG4bK2\r\n"
    b"From: <sip:1@10.0.0.10>;tag=a\r\nTo: <sip:2@sbc.example.com>;tag=b\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\n"
    b"Content-Length: 0\r\n\r\n")
SRC = Source(PBX, "udp", ("10.0.0.10", 5060))


def relay(request=INVITE, targets: int = 3, failover: bool = True, offering: bool = False) -> Relay:
    dests = [Target(Destination(TEAMS, "tls", f"sip{i}.pstnhub.microsoft.com", 5061), "sip:x") for i in range(targets)]
    return Relay(None, SRC, request, Forward(request, dests, failover=failover), "loop", offering, 4.0)


def test_every_state_can_end_with_a_final_answer_and_done_is_final():
    for state in State:
        assert TRANSITIONS.get((state, Event.FINAL_SENT)) is State.DONE, state
    assert {new for (old, _), new in TRANSITIONS.items() if old is State.DONE} == {State.DONE}


def test_a_transition_not_in_the_table_is_our_bug():
    r = relay(offering=True)
    with pytest.raises(LocalProtocolError, match="cancel sent in state offering"):
        r.on(Event.CANCEL_SENT, 0.0)
    assert r.state is State.OFFERING


def test_failover_deadline_while_silent_then_timer_c_after_a_provisional():
    r = relay()
    r.index = 0
    r.on(Event.BRANCH_SENT, 10.0)
    assert (r.state, r.deadline, r.deadline_kind()) == (State.CALLING, 14.0, "failover")
    r.on(Event.BRANCH_RESPONDED, 11.0)         # 100 Trying: no failover on silence any more
    assert (r.state, r.deadline, r.deadline_kind()) == (State.PROCEEDING, 11.0 + TIMER_C, "timer_c")
    assert r.may_fail_over                     # ... but a 503 may still go to the next proxy
    r.on(Event.BRANCH_RESPONDED, 50.0)         # every provisional restarts Timer C (16.7 step 2)
    assert r.deadline == 50.0 + TIMER_C
    r.on(Event.RELAYED_PROVISIONAL, 50.0)      # a 180 went to the caller: never fail over now
    assert r.state is State.EARLY and not r.may_fail_over


def test_last_target_has_timer_c_not_failover():
    r = relay(targets=2)
    r.index = 1
    r.on(Event.BRANCH_SENT, 0.0)
    assert (r.deadline, r.deadline_kind()) == (TIMER_C, "timer_c")


def test_cancel_before_any_provisional_waits_then_sends():
    r = relay()
    r.index = 0
    r.on(Event.BRANCH_SENT, 0.0)
    r.on(Event.CANCELLED, 1.0)
    assert (r.state, r.deadline, r.deadline_kind()) == (State.CANCEL_PENDING, 1.0 + CANCEL_WAIT, "cancel")
    assert not r.may_fail_over and r.cancelled
    r.on(Event.BRANCH_RESPONDED, 2.0)          # the cancel deadline is not restarted
    assert r.deadline == 1.0 + CANCEL_WAIT
    r.on(Event.CANCEL_SENT, 2.0)
    assert r.state is State.CANCELLING and r.cancelled
    r.on(Event.FINAL_SENT, 3.0)                # the 487
    assert r.done and r.deadline is None and r.terminated


def test_non_invite_has_no_timer_c_and_no_failover():
    r = relay(BYE, targets=1, failover=False)
    r.index = 0
    r.on(Event.BRANCH_SENT, 0.0)
    assert r.deadline is None and r.deadline_kind() == "" and r.terminated
    r.on(Event.BRANCH_RESPONDED, 1.0)
    assert r.deadline is None


def test_offering_has_no_deadline_and_a_cancel_there_is_answered_by_the_proxy():
    r = relay(offering=True)
    assert r.state is State.OFFERING and r.deadline is None
    assert (State.OFFERING, Event.CANCELLED) not in TRANSITIONS   # the proxy answers 487 itself
    r.on(Event.FINAL_SENT, 0.0)
    assert r.done
