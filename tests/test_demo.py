"""`teamsbc demo` runs as a newcomer would run it: a subprocess, exit 0, both calls' ladders on
both legs with the headers that matter, in well under 10 seconds."""
from __future__ import annotations

import re
import subprocess
import sys
import time


def demo_command() -> list[str]:
    """`python -m teamsbc demo` once the CLI has the sub-command, else the module itself."""
    probe = subprocess.run([sys.executable, "-m", "teamsbc", "demo", "--help"], capture_output=True,
                           text=True, timeout=60)
    return ["-m", "teamsbc", "demo"] if probe.returncode == 0 else ["-m", "teamsbc.demo"]


def test_demo_places_a_call_each_way_and_prints_both_ladders():
    argv = [sys.executable, *demo_command()]
    started = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert elapsed < 10, f"demo took {elapsed:.1f}s"
    assert "2 of 2 calls completed" in out

    calls = out.split("=" * 100)
    call1 = next(c for c in calls if c.strip().startswith("Call 1: PBX -> SBC -> Teams"))
    call2 = next(c for c in calls if c.strip().startswith("Call 2: Teams -> SBC -> PBX"))
    for call in (call1, call2):
        assert "INVITE 200, BYE 200" in call
        pbx_leg, teams_leg = call.split("-- PBX leg (UDP)")[1].split("-- Teams leg (TLS, mutual)")
        for leg in (pbx_leg, teams_leg):
            # the whole ladder on each leg
            for step in ("INVITE sip:", "100 Trying", "180 Ringing", "200 OK  (INVITE)", "ACK sip:",
                         "BYE sip:", "200 OK  (BYE)"):
                assert step in leg, f"{step!r} missing from\n{leg}"
            assert re.search(r"(?i)record-route: ", leg) and re.search(r"(?i)contact: ", leg)
            assert re.search(r"(?i)via: SIP/2.0/", leg)
            assert "SDP m=audio" in leg
        # toward Teams: FQDN Contact and Record-Route, X-MS-SBC; no X-MS-SBC toward the PBX
        assert "X-MS-SBC: teamsbc/" in teams_leg and "X-MS-SBC" not in pbx_leg
        assert "@sbc.demo.teamsbc.test:" in teams_leg
        assert "<sip:sbc.demo.teamsbc.test:" in teams_leg and ";r2=on>" in teams_leg
        # Teams' UPPER CASE header names are shown as they were on the wire
        assert "RECORD-ROUTE: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>" in call

    # call 1: the PBX dials a national number, Teams gets +E.164 at sip.pstnhub; in-dialog
    # requests from the PBX carry the route set (Route headers)
    assert "INVITE sip:02079460123@127.0.0.1:" in call1
    assert "INVITE sip:+442079460123@sip.pstnhub.microsoft.com:5061;user=phone;transport=tls" in call1
    assert "Route: <sip:sip-du-a-us.pstnhub.microsoft.com:5061;transport=tls;lr>" in call1
    # call 2: Teams' ACK/BYE go to the FQDN Contact and route through the SBC's own entries
    assert re.search(r"ACK sip:\+441632960001@sbc\.demo\.teamsbc\.test:\d+;transport=tls;x-tsbc-c=", call2)
    assert "ROUTE: <sip:sbc.demo.teamsbc.test:" in call2
    # the SDP protocol of each side is named
    assert "[RTP/AVP, plain RTP]" in out and "[RTP/SAVP, SRTP]" in out
    # TLS on the Teams leg is what Teams speaks
    assert "TLSv1.2 ECDHE-RSA-" in out
    assert "media " in out  # rtpengine: found (media would be anchored) or not installed


def test_register_adds_the_three_sub_commands():
    import argparse
    from teamsbc import demo, doctor, teams_setup
    p = argparse.ArgumentParser(prog="teamsbc")
    sub = p.add_subparsers(dest="command", required=True)
    for mod in (doctor, teams_setup, demo):
        mod.register(sub)
    a = p.parse_args(["doctor", "-c", "x.yaml", "--resolve", "sbc.example.com=127.0.0.1", "--skip", "clock"])
    assert a.func is doctor.cmd_doctor and a.config == "x.yaml" and a.skip == ["clock"]
    a = p.parse_args(["teams-setup", "-c", "x.yaml", "--max-sessions", "7"])
    assert a.func is teams_setup.cmd_teams_setup and a.max_sessions == 7
    a = p.parse_args(["demo"])
    assert a.func is demo.cmd_demo and a.verbose is False
