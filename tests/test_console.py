"""Issue 15, the pieces without sockets: credential masking, the flight recorder and its bounds,
the 24 h history, sessions and the login throttle, escaping, the ladder, alarms, the masked
configuration, CDR search, `teamsbc status` rendering. Real objects (HealthBook, Metrics,
CdrStore), a fake clock where time matters. The browser and the running SBC:
tests/test_console_e2e.py."""
from __future__ import annotations

import io
import json
import re
import socket
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from teamsbc import config as cfg
from teamsbc.cdr.export import csv_cell, format_rows
from teamsbc.cdr.search import SearchError
from teamsbc.cdr.store import search
from teamsbc.cdr.store import CdrStore
from teamsbc.console import auth, configview, ladder
from teamsbc.console.history import History
from teamsbc.console.html import Html, esc, table, tag
from teamsbc.console.recorder import FlightRecorder, SipEntry, display_name
from teamsbc.console.status import RecentErrors, alarms, snapshot
from teamsbc.console.term import Unreachable, fetch, render
from teamsbc.events import LegMedia, MediaStats
from teamsbc.health import HealthBook
from teamsbc.metrics import Metrics
from teamsbc.sip.mask import mask_message, mask_sdp
from tests.test_capture import read_pcap

TEAMS = ("52.114.14.70", 5061)
SBC_T = ("10.0.0.5", 5061)
SBC_P = ("10.0.1.5", 5060)
PBX = ("10.0.1.9", 5060)

KEY = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
SDP = ("v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
       "m=audio 40000 RTP/SAVP 0\r\n"
       f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^31|1:1\r\n"
       f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY[::-1]}\r\n"
       "a=ice-ufrag:abcd\r\na=ice-pwd:s3cretIcePassword0123456\r\n")


def msg(first: str, call_id: str = "c1@x", cseq: str = "1 INVITE", *, extra: str = "", body: str = "",
        from_: str = '"Alice" <sip:+4420@x>;tag=1') -> bytes:
    return (f"{first}\r\nVia: SIP/2.0/UDP 10.0.1.9;branch=z9hG4bK1\r\nFrom: {from_}\r\n"
            f"To: <sip:+1425@y>\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n{extra}"
            f"Content-Length: {len(body.encode())}\r\n\r\n{body}").encode()


# --------------------------------------------------------------------------- masking

def test_digest_response_and_cnonce_are_masked_the_rest_kept_same_length():
    auth_line = ('Proxy-Authorization: Digest username="1000", realm="pbx", nonce="abc", '
                 'uri="sip:+4420@sbc", response="0123456789abcdef0123456789abcdef", qop=auth, nc=00000001, '
                 'cnonce="deadbeef", algorithm=MD5\r\n')
    m = msg("INVITE sip:+4420@sbc SIP/2.0", extra=auth_line)
    out = mask_message(m)
    assert len(out) == len(m)
    assert b"0123456789abcdef0123456789abcdef" not in out and b"deadbeef" not in out
    assert b'response="' + b"*" * 32 + b'"' in out and b'cnonce="********"' in out
    assert b'username="1000"' in out and b'nonce="abc"' in out and b'realm="pbx"' in out


def test_basic_and_bearer_credentials_are_masked_whole():
    m = msg("REGISTER sip:sbc SIP/2.0", cseq="1 REGISTER", extra="Authorization: Basic dXNlcjpwYXNz\r\n"
                                                                 "authorization:Bearer abc.def.ghi\r\n")
    out = mask_message(m)
    assert b"dXNlcjpwYXNz" not in out and b"abc.def.ghi" not in out
    assert b"Authorization: Basic ************\r\n" in out and b"authorization:Bearer ***********\r\n" in out


def test_sdes_keys_and_ice_password_are_masked_and_content_length_stays_true():
    m = msg("SIP/2.0 200 OK", body=SDP, extra="Content-Type: application/sdp\r\n")
    out = mask_message(m)
    assert KEY.encode() not in out and KEY[::-1].encode() not in out and b"s3cretIcePassword" not in out
    assert f"inline:{'*' * len(KEY)}|2^31|1:1".encode() in out
    assert b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 " in out and b"a=ice-ufrag:abcd" in out
    head, body = out.split(b"\r\n\r\n", 1)
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == len(body)
    assert mask_sdp(SDP.encode()) == body


def test_a_message_without_credentials_is_unchanged():
    m = msg("INVITE sip:+4420@sbc SIP/2.0", body="v=0\r\nm=audio 4000 RTP/AVP 0\r\n")
    assert mask_message(m) == m


@given(st.binary(max_size=2000))
def test_masking_never_changes_the_length(data):
    assert len(mask_message(data)) == len(data)


# --------------------------------------------------------------------------- the flight recorder

def feed_call(rec: FlightRecorder, cid: str = "c1@x", t: float = 1000.0) -> None:
    inv = msg("INVITE sip:+1425@sbc SIP/2.0", cid, body=SDP)
    rec.sip("in", "pbx", "udp", SBC_P, PBX, inv, t)
    rec.sip("out", "pbx", "udp", SBC_P, PBX, msg("SIP/2.0 100 Trying", cid), t + 0.001)
    rec.media_command(cid, {"command": "offer", "call-id": cid, "sdp": SDP}, {"result": "ok", "sdp": SDP},
                      t + 0.002, t + 0.004)
    rec.sip("out", "teams", "tls", SBC_T, TEAMS, inv, t + 0.005)
    rec.call_started(cid, "pbx->teams", None, "+4420", "+1425", t + 0.005)
    rec.sip("in", "teams", "tls", SBC_T, TEAMS, msg("SIP/2.0 486 Busy Here", cid), t + 0.5)
    rec.sip("out", "pbx", "udp", SBC_P, PBX, msg("SIP/2.0 486 Busy Here", cid), t + 0.501)
    rec.call_failed(cid, 486, "Busy Here", t + 0.501)


def test_recorder_keeps_both_legs_of_a_call_and_ignores_out_of_dialog_requests():
    rec = FlightRecorder()
    rec.sip("in", "teams", "tls", SBC_T, TEAMS, msg("OPTIONS sip:sbc SIP/2.0", "ping@x", "1 OPTIONS"), 999.0)
    rec.sip("in", "pbx", "udp", SBC_P, PBX, msg("BYE sip:x SIP/2.0", "unknown@x", "2 BYE"), 999.0)
    feed_call(rec)
    assert list(rec.calls) == ["c1@x"]
    r = rec.get("c1@x")
    assert r.display == "Alice" and r.state == "failed" and (r.status, r.reason) == (486, "Busy Here")
    assert len(r.entries) == 6 and {e.leg for e in r.entries if isinstance(e, SipEntry)} == {"teams", "pbx"}
    assert r.summary()["caller"] == "+4420" and rec.bytes == r.size
    rec.sip("in", "pbx", "udp", SBC_P, PBX, msg("ACK sip:x SIP/2.0", "c1@x", "1 ACK"), 1000.6)
    assert len(r.entries) == 7     # in-dialog messages of a known call are kept


def test_recorder_bounds_calls_bytes_and_entries():
    rec = FlightRecorder(max_calls=3)
    for i in range(5):
        feed_call(rec, f"c{i}@x", 1000.0 + i)
    assert list(rec.calls) == ["c2@x", "c3@x", "c4@x"] and rec.evicted == 2
    assert rec.bytes == sum(r.size for r in rec.calls.values())

    one = len(msg("INVITE sip:+1425@sbc SIP/2.0", "b0@x", body=SDP))
    rec = FlightRecorder(max_bytes=one * 10)
    for i in range(8):
        rec.sip("in", "pbx", "udp", SBC_P, PBX, msg("INVITE sip:+1425@sbc SIP/2.0", f"b{i}@x", body=SDP), 1.0 + i)
        rec.sip("out", "teams", "tls", SBC_T, TEAMS, msg("INVITE sip:+1425@sbc SIP/2.0", f"b{i}@x", body=SDP), 1.0 + i)
    assert rec.bytes <= one * 10 and len(rec.calls) == 5 and list(rec.calls)[-1] == "b7@x"

    rec = FlightRecorder(max_entries=4)
    feed_call(rec)
    r = rec.get("c1@x")
    assert len(r.entries) == 4 and r.dropped == 2 and r.summary()["dropped"] == 2


def test_recorder_tells_listeners_of_call_events():
    rec = FlightRecorder()
    seen = []
    stop = rec.subscribe(lambda: seen.append(rec.version))
    feed_call(rec)
    assert seen == [1, 2]          # started, failed (messages are not call events)
    stop()
    feed_call(rec, "c2@x")
    assert seen == [1, 2] and rec.version == 4


@pytest.mark.parametrize("value, name", [
    ('"Alice Smith" <sip:a@x>;tag=1', "Alice Smith"),
    ('"say \\"hi\\" <script>" <sip:a@x>', 'say "hi" <script>'),
    ("Bob <sip:b@x>", "Bob"),
    ("<sip:c@x>;tag=2", None),
    ("sip:d@x;tag=3", None),
])
def test_display_name(value, name):
    assert display_name(value) == name


# --------------------------------------------------------------------------- the ladder and the pcap

def test_ladder_columns_arrows_in_time_order_and_masked_text(tmp_path):
    rec = FlightRecorder()
    feed_call(rec)
    rec.media_command("c1@x", {"command": "delete", "call-id": "c1@x"}, TimeoutError("no answer"), 1000.6, 1002.6)
    columns, arrows = ladder.build(rec.get("c1@x"), {"52.114.14.70": ["sip.pstnhub.microsoft.com"]})
    assert [(c.key, c.label, c.detail) for c in columns] == [
        ("teams 52.114.14.70", "Teams", "sip.pstnhub.microsoft.com"), ("sbc", "SBC", ""),
        ("pbx 10.0.1.9", "PBX", "10.0.1.9"), ("rtpengine", "rtpengine", "NG")]
    got = [(columns[a.src].key, columns[a.dst].key, a.label, a.failed) for a in arrows]
    assert got == [
        ("pbx 10.0.1.9", "sbc", "INVITE (SDP)", False), ("sbc", "pbx 10.0.1.9", "100 Trying", False),
        ("sbc", "rtpengine", "offer", False), ("rtpengine", "sbc", "ok", False),
        ("sbc", "teams 52.114.14.70", "INVITE (SDP)", False), ("teams 52.114.14.70", "sbc", "486 Busy Here", True),
        ("sbc", "pbx 10.0.1.9", "486 Busy Here", True), ("sbc", "rtpengine", "delete", False),
        ("rtpengine", "sbc", "delete: no answer", True)]
    assert [round(a.t, 3) for a in arrows[:5]] == [0.0, 0.001, 0.002, 0.004, 0.005]
    assert all(KEY not in a.text for a in arrows) and "inline:" + "*" * len(KEY) in arrows[0].text
    assert "inline:" + "*" * len(KEY) in arrows[2].text           # the SDP of the NG command too
    assert arrows[0].text.startswith("pbx in udp 10.0.1.9:5060 -> 10.0.1.5:5060 (")
    (tmp_path / "c.pcap").write_bytes(ladder.pcap(rec.get("c1@x")))
    payloads = [p["payload"] for p in read_pcap(tmp_path / "c.pcap")]
    assert len(payloads) == 5 and not any(KEY.encode() in p for p in payloads)
    assert payloads[0] == mask_message(msg("INVITE sip:+1425@sbc SIP/2.0", "c1@x", body=SDP))


# --------------------------------------------------------------------------- history

def test_history_samples_calls_and_peer_states_with_flaps_between_samples():
    m = Metrics()
    book = HealthBook()
    h = History(m, book, step=10.0)
    t0 = 1_700_000_000.0 - 1_700_000_000.0 % 60
    book.ok("sip.pstnhub.microsoft.com", 1.0, 0.02)
    h.sample(t0, 1.0)
    for i in range(5):
        m.call_started(f"c{i}", "teams->pbx", None, "+1", "+2", t0 + 1)
    h.sample(t0 + 10, 11.0)
    book.failed("sip.pstnhub.microsoft.com", 12.0, "OPTIONS timeout")
    book.ok("sip.pstnhub.microsoft.com", 13.0, 0.02)         # back before the next sample
    h.sample(t0 + 20, 21.0)
    book.failed("sip.pstnhub.microsoft.com", 70.0, "OPTIONS timeout")
    h.sample(t0 + 70, 71.0)
    d = h.as_dict(t0 + 70)
    assert d["fine"][1] == [t0 + 10, 0.5, 5]
    assert d["coarse"][0] == [t0, round((0 + 0.5 + 0) / 3, 3), 5]
    assert d["peers"]["sip.pstnhub.microsoft.com"] == [[t0, "failing"], [t0 + 60, "down"]]


def test_history_is_bounded():
    m, book = Metrics(), HealthBook()
    h = History(m, book, step=60.0)
    book.ok("pbx 10.0.1.9:5060", 1.0)
    for i in range(3000):
        h.sample(60.0 * i, float(i))
    d = h.as_dict(60.0 * 3000)
    assert len(d["fine"]) == 360 and len(d["coarse"]) == 1440 and len(d["peers"]["pbx 10.0.1.9:5060"]) == 1440


# --------------------------------------------------------------------------- sessions

class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_sessions_expire_idle_and_at_their_lifetime():
    c = Clock()
    s = auth.Sessions(idle=60, lifetime=300, clock=c)
    a = s.new("token")
    assert s.get(a.sid) is a and len(a.sid) >= 40 and a.csrf != a.sid
    c.t += 59
    assert s.get(a.sid) is a              # used: the idle clock restarts
    c.t += 61
    assert s.get(a.sid) is None
    b = s.new("token")
    for _ in range(6):
        c.t += 50
        assert s.get(b.sid) is b
    c.t += 1
    assert s.get(b.sid) is None           # 301 s after login, however busy
    assert s.get(None) is None and s.get("forged") is None


def test_at_most_max_sessions_the_oldest_go():
    s = auth.Sessions(max_sessions=3, clock=Clock())
    ids = [s.new("token").sid for _ in range(5)]
    assert [s.get(i) is not None for i in ids] == [False, False, True, True, True]


def test_login_throttle_per_address():
    c = Clock()
    s = auth.Sessions(clock=c)
    for _ in range(auth.MAX_FAILURES):
        assert s.throttled("10.0.0.1") == 0
        s.failed("10.0.0.1")
        c.t += 1
    assert 0 < s.throttled("10.0.0.1") <= auth.FAILURE_WINDOW
    assert s.throttled("10.0.0.2") == 0
    c.t += auth.FAILURE_WINDOW
    assert s.throttled("10.0.0.1") == 0
    s.failed("10.0.0.3")
    s.succeeded("10.0.0.3")
    assert s.throttled("10.0.0.3") == 0


@pytest.mark.parametrize("host, ok", [("127.0.0.1:8080", True), ("127.9.9.9", True), ("[::1]:8080", True),
                                      ("localhost:1", True), ("LOCALHOST", True), ("::1", True),
                                      ("evil.example:8080", False), ("10.0.0.5:8080", False),
                                      ("127.0.0.1.nip.io", False), ("", False), (None, False)])
def test_loopback_host(host, ok):
    assert auth.loopback_host(host) is ok


def test_origin_next_and_csrf_checks():
    assert auth.origin_ok(None, "127.0.0.1:8080", False)
    assert auth.origin_ok("http://127.0.0.1:8080", "127.0.0.1:8080", False)
    assert not auth.origin_ok("http://127.0.0.1:8080", "127.0.0.1:8080", True)
    assert not auth.origin_ok("null", "127.0.0.1:8080", False)
    assert not auth.origin_ok("http://evil.example", "127.0.0.1:8080", False)
    assert [auth.safe_next(x) for x in ("/console/calls?x=1", "//evil.example/", "https://evil.example",
                                        "/\\evil", None, "")] == ["/console/calls?x=1", "/", "/", "/", "/", "/"]
    s = auth.Sessions().new("token")
    assert auth.csrf_matches(s.csrf, s) and not auth.csrf_matches("", s) and not auth.csrf_matches(None, s)
    assert auth.token_matches(" secret-token \n", "secret-token") and not auth.token_matches("secret", "secret-token")


# --------------------------------------------------------------------------- escaping

def test_every_value_is_escaped_unless_it_is_markup():
    evil = '<script>alert("x")</script>&'
    assert esc(evil) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"
    assert tag("td", evil, title=evil) == f'<td title="{esc(evil)}">{esc(evil)}</td>'
    assert Html("<b>") + evil == "<b>" + str(esc(evil)) and evil + Html("<b>") == str(esc(evil)) + "<b>"
    assert tag("input", "", name="csrf", value='"><x') == '<input name="csrf" value="&quot;&gt;&lt;x">'
    t = table(["caller"], [[evil]])
    assert "<script>" not in t and esc(evil) in t


# --------------------------------------------------------------------------- status and alarms

def base_config(tmp_path: Path, test_pki, **extra) -> cfg.Config:
    data = {"sbc": {"fqdn": "sbc.example.com"},
            "teams": {"listen": "127.0.0.1:5061", "certificate": str(test_pki.sbc_fullchain),
                      "private_key": str(test_pki.sbc_key), "trusted_ca": str(test_pki.ca_cert)},
            "pbx": {"listen": "127.0.0.1:5060", "address": "10.0.1.9:5060",
                    "auth": {"realm": "pbx", "username": "trunk", "password": "pbx-secret-password"}},
            "admin": {"token": "admin-secret-token-0123456789"}, **extra}
    path = tmp_path / "teamsbc.yaml"
    import yaml
    path.write_text(yaml.safe_dump(data))
    return cfg.load(path)


def test_alarms_one_proxy_down_is_a_warning_all_down_critical_and_teams_silence(tmp_path, test_pki):
    c = base_config(tmp_path, test_pki)
    book = HealthBook()
    book.started = 0.0
    book.ok("sip.pstnhub.microsoft.com", 1.0)
    book.failed("sip2.pstnhub.microsoft.com", 2.0, "OPTIONS timeout")
    checks = [{"name": "teams", "ok": True, "required": True, "detail": "2 of 3 usable"}]
    st = snapshot(config=c, health=book, metrics=Metrics(), checks=checks, now=500.0, wall=1_700_000_000.0,
                  certificate={"days_left": 12.0})
    texts = [(a["severity"], a["text"]) for a in st["alarms"]]
    assert ("warning", "Teams proxy sip2.pstnhub.microsoft.com is down since 2023-11-14 22:05:02 UTC: "
                       "OPTIONS timeout") in texts
    assert any(s == "warning" and t.startswith("no OPTIONS from Teams since the SBC started 8 min ago") for s, t in texts)
    assert ("warning", "the certificate expires in 12.0 days") in texts
    assert st["ready"] is True and st["teams"]["proxies"][2]["state"] == "unknown"
    book.teams_pinged(100.0)
    checks = [{"name": "teams", "ok": False, "required": True, "detail": "0 of 3 usable"}]
    st = snapshot(config=c, health=book, metrics=Metrics(), checks=checks, now=500.0)
    assert st["ready"] is False and st["alarms"][0] == {"severity": "critical", "source": "teams",
                                                        "text": "teams: 0 of 3 usable"}
    assert not any("Teams proxy" in a["text"] for a in st["alarms"])     # said once, as critical
    assert any(a["text"].startswith("Teams has not sent OPTIONS for 7 min") for a in st["alarms"])


def test_recent_errors_counts_repeats_instead_of_filling_up():
    import logging
    h = RecentErrors(size=3)
    log = logging.getLogger("teamsbc.test_console")
    log.addHandler(h)
    log.propagate = False
    try:
        for i in range(10):
            log.warning("transport failure toward sip: refused call_id=%d@x", i)
        log.warning("other %s", "thing")
        log.info("not kept")
    finally:
        log.removeHandler(h)
    recs = list(h.records)
    assert [(r["message"][:17], r["repeated"]) for r in recs] == [("transport failure", 10), ("other thing", 1)]
    assert recs[0]["message"].endswith("call_id=9@x")


# --------------------------------------------------------------------------- configuration

def test_effective_config_masks_secrets_and_check_sees_the_file(tmp_path, test_pki):
    c = base_config(tmp_path, test_pki)
    eff = configview.effective(c)
    text = json.dumps(eff)
    assert "admin-secret-token" not in text and "pbx-secret-password" not in text
    assert eff["admin"]["token"] == configview.MASKED and eff["pbx"]["auth"]["password"] == configview.MASKED
    assert eff["pbx"]["auth"]["username"] == "trunk" and eff["teams"]["listen"] == "127.0.0.1:5061"
    assert eff["capture"]["password"] is None
    r = configview.check(c)
    assert r["ok"] and not r["changed"] and r["text"].endswith("ok (sbc sbc.example.com, teams 127.0.0.1:5061, "
                                                               "pbx udp 127.0.0.1:5060 -> 10.0.1.9:5060)")
    path = Path(c.source)
    path.write_text(path.read_text().replace("10.0.1.9:5060", "10.0.1.10:5060"))
    assert configview.check(c)["changed"] is True
    path.write_text(path.read_text() + "bogus: 1\n")
    r = configview.check(c)
    assert not r["ok"] and any("bogus: unknown section" in e for e in r["errors"])


# --------------------------------------------------------------------------- CDR search and CSV

def test_cdr_search_by_number_result_code_and_call_id(tmp_path):
    store = CdrStore(tmp_path / "cdr.sqlite", checkpoint_interval=None)
    rows = [("a@x", "+442071234567", "+14255550100", 200), ("b@x", "+442079460000", "+14255550100", 486),
            ("c@x", "+12065550123", "+442071234567", 487), ("d@x", "=HYPERLINK(\"x\")", "+1", 503)]
    for i, (cid, caller, callee, status) in enumerate(rows):
        row = store.insert(cid, "pbx->teams", None, caller, callee, 1000.0 + i)
        if status == 200:
            store.answered(row, 1001.0 + i)
            store.ended(row, cid, "pbx", 1010.0 + i)
        else:
            store.failed(row, status, "x", 1001.0 + i, None)
    store.close()
    p = tmp_path / "cdr.sqlite"

    def ids(**kw):
        return [r["call_id"] for r in search(p, **kw)]
    assert ids(number="207 123-4567") == ["a@x", "c@x"]
    assert ids(result="answered") == ["a@x"] and ids(result="failed") == ["b@x", "d@x"]
    assert ids(result="cancelled") == ["c@x"] and ids(result="486") == ["b@x"]
    assert ids(call_id="c@x") == ["c@x"] and ids(since=1001.0, until=1003.0) == ["b@x", "c@x"]
    assert ids(limit=2) == ["c@x", "d@x"]
    for bad in ({"number": "1' OR 1=1"}, {"result": "drop table"}, {"limit": 0}):
        with pytest.raises(SearchError):
            search(p, **bad)
    assert search(tmp_path / "none.sqlite") == []
    csv = format_rows(search(p), "csv")
    assert "'=HYPERLINK" in csv and ",+442071234567," in csv


@pytest.mark.parametrize("value, cell", [("+442071234567", "+442071234567"), ("-1.5", "-1.5"), ("=1+2", "'=1+2"),
                                         ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"), ("@SUM(1)", "'@SUM(1)"),
                                         (None, ""), (200, "200"), ("alice", "alice")])
def test_csv_cells_that_a_spreadsheet_would_run_are_defused(value, cell):
    assert csv_cell(value) == cell


# --------------------------------------------------------------------------- teamsbc status

def status_doc() -> dict:
    return {
        "sbc": {"fqdn": "sbc.example.com", "version": "0.1.0", "config": "/etc/teamsbc/teamsbc.yaml",
                "uptime": 7200, "now": "2024-05-01T12:00:00.000Z"},
        "ready": True,
        "certificate": {"readable": True, "subject": "CN=sbc.example.com", "days_left": 61.5,
                        "not_after": "2024-07-01T00:00:00.000Z", "serial": "ab",
                        "next_renewal": {"text": "due 2024-05-31 00:00 UTC", "how": "ACME"}},
        "teams": {"options_age": 35.0, "options_alarm": 180.0, "proxies": [
            {"peer": "sip.pstnhub.microsoft.com", "state": "up", "since": "2024-05-01T10:00:00.000Z",
             "last_sent": "2024-05-01T11:59:40.000Z", "last_ok": "2024-05-01T11:59:40.020Z", "rtt_ms": 20.0,
             "reason": "answered 200"},
            {"peer": "sip2.pstnhub.microsoft.com", "state": "down", "since": "2024-04-30T23:00:00.000Z",
             "last_sent": None, "last_ok": None, "rtt_ms": None, "reason": "OPTIONS timeout"}]},
        "pbx": [{"label": "pbx", "address": "10.0.1.9:5060", "transport": "udp", "peer": "pbx 10.0.1.9:5060",
                 "state": "up", "since": None, "last_sent": None, "last_ok": None, "rtt_ms": None, "reason": ""}],
        "tenants": [],
        "rtpengine": [{"address": "udp:127.0.0.1:2223", "healthy": True, "calls": 1, "rtt_ms": 0.4, "last_error": None}],
        "calls": {"active": 1, "answered": 1, "list": [
            {"direction": "teams->pbx", "caller": "+1206\x1b[2J", "display": "Eve\x07", "callee": "+4420",
             "state": "answered", "duration": 65.0,
             "media": {"packets": 3000, "bytes": 480000, "errors": 0, "lost": 2}}]},
        "alarms": [{"severity": "warning", "source": "teams", "text": "Teams proxy sip2 is down"}],
        "errors": [{"time": "2024-05-01T11:59:00.000Z", "level": "warning", "logger": "teamsbc.health",
                    "message": "peer sip2 is now down", "repeated": 4}],
    }


def test_status_rendering_plain_and_coloured():
    plain = render(status_doc(), color=False)
    assert "\x1b" not in plain
    assert "teamsbc 0.1.0 · sbc.example.com · up 2 h · READY" in plain
    assert re.search(r"sip2\.pstnhub\.microsoft\.com\s+down\s+2024-04-30 23:00\s+-\s+-\s+-\s+OPTIONS timeout", plain)
    assert re.search(r"sip\.pstnhub\.microsoft\.com\s+up\s+10:00:00\s+11:59:40\s+11:59:40\s+20\.0 ms", plain)
    assert "Teams' own OPTIONS: last 35 s ago (alarm after 3 min)" in plain
    assert '"Eve\\x07" +1206\\x1b[2J' in plain            # a caller cannot drive the terminal
    assert "3000 packets, 0 errors, 2 lost" in plain and "warning Teams proxy sip2 is down" in plain
    assert "peer sip2 is now down (4 times)" in plain
    coloured = render(status_doc(), color=True)
    assert "\x1b[1;32mREADY\x1b[0m" in coloured and "\x1b[1;31mdown\x1b[0m" in coloured


def test_fetch_says_unreachable_when_nothing_listens():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(Unreachable):
        fetch(f"http://127.0.0.1:{port}", None, timeout=2)
