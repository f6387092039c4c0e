"""Issue 15 end to end: the web console in a real browser and `teamsbc status` in a terminal,
against the real SBC process with real calls.

Browser: Debian's headless Chromium driven by chromedriver over W3C WebDriver
(tests/support/browser.py). Calls: sipp on both sides, the Teams side through stunnel (real
mutual TLS), real rtpengine (tests/test_e2e_calls.py's Lab); the Python TeamsPeer where a Teams
proxy must answer OPTIONS and then go away. Screenshots are saved as artifacts in
test-artifacts/console/ (TEAMSBC_TEST_ARTIFACTS overrides); with TEAMSBC_DOCS_SCREENSHOTS=1
the ones docs/operations.md shows are written to docs/images/ too.

1. Login required, a wrong token refused (and throttled), the session cookie HttpOnly,
   SameSite=Strict and expiring, CSP without inline script, POST without CSRF token refused,
   logout ends the session, no token: Host must be the loopback (DNS rebinding).
2. Live calls: a PBX->Teams call whose From display name is `<script>...` appears in the live
   list pushed by the server (no reload) and leaves it after BYE; the name is text everywhere.
3. Ladders: the right arrows in the right order for a Teams->PBX and a PBX->Teams call
   (rtpengine commands included), a click shows the message with the SDES key masked, the
   pcap download holds the call's SIP masked, CDR search and CSV export find the call.
4. Dashboard and `teamsbc status` while a Teams proxy goes down (its listener stops).
5. `teamsbc status`: not running (exit 3, how to start it), the lab default like `run`,
   --json, colours only on a terminal, --watch.
6. Certificates: "renew now" against pebble, the outcome shown, the new certificate served.
"""
from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from tests.support.browser import Browser
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import port_listening, wait_for
from tests.support.rtpengine import RtpEngine
from tests.support.sbc import LOOPBACK, SbcProcess
from tests.support.sipp import Sipp
from tests.support.teams_peer import TeamsPeer
from tests.test_capture import read_pcap
from tests.test_e2e_calls import Lab

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "console-token-" + "0123456789abcdef"
XSS_NAME = "<script>window.__xss=1</script><img src=x onerror=window.__xss=2>"
ARTIFACTS = Path(os.environ.get("TEAMSBC_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "console"
DOCS_IMAGES = ROOT / "docs" / "images"
ENTRY = [sys.executable, "-m", "teamsbc"]


# --------------------------------------------------------------------------- helpers

def shot(browser: Browser, name: str, *, docs: str | None = None, full: bool = True) -> Path:
    """Save a screenshot as an artifact (and into docs/images with TEAMSBC_DOCS_SCREENSHOTS=1)."""
    path = (browser.full_screenshot if full else browser.screenshot)(ARTIFACTS / f"{name}.png")
    if docs and os.environ.get("TEAMSBC_DOCS_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / docs)
    return path


def admin_url(sbc: SbcProcess) -> str:
    return f"http://{sbc.config['admin']['listen']}"


def login(browser: Browser, base: str, token: str = TOKEN) -> None:
    browser.get(base + "/")
    browser.find("#token").type(token)
    browser.find("#login").click()
    browser.wait(lambda: browser.title.startswith("Dashboard"), 10, "the dashboard after login")


def submit_login(browser: Browser, token: str, *, same_page: bool = True) -> None:
    """Type the token and submit; with `same_page`, wait for the answer page (a new form)."""
    form = browser.wait_find("#login-form")
    browser.find("#token").type(token)
    browser.find("#login").click()
    if same_page:
        browser.wait(lambda: browser.find("#login-form").id != form.id, 10, "the login page's answer")


def http(method: str, url: str, *, headers: dict | None = None, data: bytes | None = None,
         opener: urllib.request.OpenerDirector | None = None) -> tuple[int, dict, bytes]:
    """One request, no redirect followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):
            return None
    op = opener or urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with op.open(req, timeout=15) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def session_cookie(browser: Browser) -> str:
    c = {c["name"]: c for c in browser.cookies()}["teamsbc_session"]
    return f"teamsbc_session={c['value']}"


def arrows(browser: Browser) -> list[tuple[str, str, str]]:
    return [(a.attr("data-from"), a.attr("data-to"), a.attr("data-label"))
            for a in browser.find_all("svg.ladder a")]


def sip_only(seq: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [a for a in seq if "rtpengine" not in (a[0], a[1])]


def open_call(browser: Browser, base: str, call_id: str) -> None:
    from urllib.parse import quote
    browser.get(f"{base}/console/call?id={quote(call_id, safe='')}")
    browser.wait(lambda: browser.find_all("svg.ladder a"), 10, f"the ladder of {call_id}")


def invite_call_id(result) -> str:
    ids = {m.call_id for m in result.messages_sent() if m.is_request and m.method == "INVITE"}
    assert len(ids) == 1, ids
    return ids.pop()


@pytest.fixture
def browser(procs, tmp_path):
    b = Browser(procs, tmp_path).start()
    try:
        yield b
    finally:
        b.close()


def media_lab(tmp_path, procs, pki, **kw) -> Lab:
    eng = RtpEngine(procs).start()
    lab = Lab(tmp_path, procs, pki, extra={"admin": {"token": TOKEN}, "media": {"rtpengine": [eng.ng_udp]},
                                           **kw.pop("extra", {})}, **kw)
    lab.rtpengine = eng     # type: ignore[attr-defined]
    return lab


# --------------------------------------------------------------------------- 1. login and the rules

def test_login_required_wrong_token_refused_and_the_session_rules(tmp_path, procs, test_pki, browser):
    lab = Lab(tmp_path, procs, test_pki, extra={"admin": {"token": TOKEN}})
    base = admin_url(lab.sbc)
    browser.get(base + "/console/calls")
    assert browser.url.startswith(base + "/console/login"), browser.url
    assert browser.find("#login-form").displayed
    shot(browser, "login", docs="console-login.png", full=False)

    submit_login(browser, "wrong-" + TOKEN)
    browser.wait_text("#login-error", "Wrong token.")
    assert "teamsbc_session" not in {c["name"] for c in browser.cookies()}
    status, _, _ = http("GET", base + "/status", headers={"Cookie": "teamsbc_session=guessed"})
    assert status == 401

    submit_login(browser, TOKEN, same_page=False)
    browser.wait(lambda: browser.title.startswith("Calls"), 10, "the calls page after login (next=)")
    cookie = {c["name"]: c for c in browser.cookies()}["teamsbc_session"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert 0 < cookie["expiry"] - time.time() <= 12 * 3600 + 60
    assert browser.js("return document.cookie").find("teamsbc_session") < 0   # HttpOnly: not for scripts

    # every page: a CSP without inline script, no framing; the session works for the JSON API too
    status, headers, body = http("GET", base + "/", headers={"Cookie": session_cookie(browser)})
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert b"<script>" not in body and b" on" + b"click=" not in body
    assert http("GET", base + "/status", headers={"Cookie": session_cookie(browser)})[0] == 200

    # the configuration page and GET /config: the token never shown
    browser.get(base + "/console/config")
    effective = browser.wait_find("#effective").text
    assert "token: '******** (set)'" in effective and TOKEN not in effective and "fqdn: sbc.example.com" in effective
    assert browser.find("#check").text.startswith("ok ") and "teamsbc.yaml: ok (sbc sbc.example.com" in browser.find("#check").text
    status, _, body = http("GET", base + "/config", headers={"Cookie": session_cookie(browser)})
    assert status == 200 and TOKEN.encode() not in body and json.loads(body)["check"]["ok"] is True
    status, _, body = http("GET", base + "/history", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["fine"] and json.loads(body)["step"] == 10.0

    # a POST of the session without its CSRF token, or from another site, is refused
    cookie_header = {"Cookie": session_cookie(browser), "Content-Type": "application/x-www-form-urlencoded"}
    assert http("POST", base + "/console/certificates/renew", headers=cookie_header, data=b"")[0] == 403
    csrf = browser.js("return document.body.dataset.csrf")
    assert len(csrf) >= 32
    assert http("POST", base + "/console/certificates/renew", data=f"csrf={csrf}".encode(),
                headers={**cookie_header, "Origin": "http://evil.example"})[0] == 403
    assert http("POST", base + "/reload", headers={"Cookie": session_cookie(browser)})[0] == 403

    # log out: the session is gone on the server too
    old = session_cookie(browser)
    browser.find("form.logout button").click()
    browser.wait(lambda: "/console/login" in browser.url, 10, "the login page after logout")
    assert http("GET", base + "/status", headers={"Cookie": old})[0] == 401

    # throttled: 5 wrong tokens from one address in a minute, then 429 even for the right one
    for _ in range(5):
        submit_login(browser, "nope-" + TOKEN)
        browser.wait_text("#login-error", "Wrong token.")
    submit_login(browser, TOKEN)
    browser.wait_text("#login-error", "Too many wrong tokens")
    assert browser.url.startswith(base + "/console/login")
    assert "wrong admin token from 127.0.0.1" in lab.sbc.log()


def test_without_token_only_the_loopback_host_is_served(tmp_path, procs, test_pki, browser):
    """No admin.token (loopback listener): no login, but the Host must name the loopback, and
    cross-site POSTs are refused (a page elsewhere cannot drive the SBC through the browser)."""
    lab = Lab(tmp_path, procs, test_pki)
    base = admin_url(lab.sbc)
    port = lab.sbc.config["admin"]["listen"].rsplit(":", 1)[1]
    browser.get(base + "/")
    assert browser.title.startswith("Dashboard")
    assert browser.find_all("form.logout") == []
    assert http("GET", base + "/status", headers={"Host": f"rebound.example:{port}"})[0] == 403
    assert http("GET", base + "/status", headers={"Host": f"localhost:{port}"})[0] == 200
    assert http("POST", base + "/reload", headers={"Origin": "http://rebound.example"})[0] == 403
    assert http("POST", base + "/reload")[0] == 200          # curl on the SBC host: as before


# --------------------------------------------------------------------------- 2-3. live calls, ladders

TEAMS_TO_PBX_SIP = [
    ("teams 127.0.0.1", "sbc", "INVITE (SDP)"), ("sbc", "teams 127.0.0.1", "100 Trying"),
    ("sbc", "pbx 127.0.0.1", "INVITE (SDP)"),
    ("pbx 127.0.0.1", "sbc", "180 Ringing"), ("sbc", "teams 127.0.0.1", "180 Ringing"),
    ("pbx 127.0.0.1", "sbc", "200 OK"), ("sbc", "teams 127.0.0.1", "200 OK"),
    ("teams 127.0.0.1", "sbc", "ACK"), ("sbc", "pbx 127.0.0.1", "ACK"),
    ("teams 127.0.0.1", "sbc", "BYE"), ("sbc", "pbx 127.0.0.1", "BYE"),
    ("pbx 127.0.0.1", "sbc", "200 OK"), ("sbc", "teams 127.0.0.1", "200 OK"),
]
PBX_TO_TEAMS_SIP = [
    ("pbx 127.0.0.1", "sbc", "INVITE (SDP)"), ("sbc", "pbx 127.0.0.1", "100 Trying"),
    ("sbc", "teams 127.0.0.1", "INVITE (SDP)"),
    ("teams 127.0.0.1", "sbc", "180 Ringing"), ("sbc", "pbx 127.0.0.1", "180 Ringing"),
    ("teams 127.0.0.1", "sbc", "200 OK"), ("sbc", "pbx 127.0.0.1", "200 OK"),
    ("pbx 127.0.0.1", "sbc", "ACK"), ("sbc", "teams 127.0.0.1", "ACK"),
    ("pbx 127.0.0.1", "sbc", "BYE"), ("sbc", "teams 127.0.0.1", "BYE"),
    ("teams 127.0.0.1", "sbc", "200 OK"), ("sbc", "pbx 127.0.0.1", "200 OK"),
]


def assert_media_arrows(seq: list[tuple[str, str, str]], invite_out: tuple, answer_out: tuple, bye_in: tuple) -> None:
    """rtpengine's commands where the SBC must send them: the offer answered before the INVITE
    leaves, the answer before the 200 leaves, the delete after the BYE came (its reply may race
    the BYE's 200: fire and forget)."""
    ng = [(i, a) for i, a in enumerate(seq) if "rtpengine" in (a[0], a[1])]
    assert [a for _, a in ng] == [("sbc", "rtpengine", "offer"), ("rtpengine", "sbc", "ok"),
                                  ("sbc", "rtpengine", "answer"), ("rtpengine", "sbc", "ok"),
                                  ("sbc", "rtpengine", "delete"), ("rtpengine", "sbc", "ok")], seq
    at = {a: i for i, a in reversed(list(enumerate(seq)))}    # first position of each arrow
    offer_ok, answer_ok, delete = ng[1][0], ng[3][0], ng[4][0]
    assert offer_ok < at[invite_out] and answer_ok < at[answer_out] and delete > at[bye_in], seq


def test_live_list_ladders_masking_and_script_in_a_display_name(tmp_path, procs, test_pki, browser):
    lab = media_lab(tmp_path, procs, test_pki)
    base = admin_url(lab.sbc)
    login(browser, base)
    browser.get(base + "/console/calls")
    browser.wait_text("#live-status", "Live: updated")
    browser.js("window.__marker = 'no reload'")
    assert browser.find_all("#live-calls tbody tr[data-call-id]") == []

    # a PBX->Teams call held 8 s, whose caller's display name is markup
    teams = lab.teams_uas(calls=1)
    pbx = lab.pbx_uac(calls=1, duration_ms=8000, keys={"from_name": f'"{XSS_NAME}" '})
    pbx.start()
    row = browser.wait(lambda: browser.find_all("#live-calls tbody tr[data-call-id]"), 8, "the call in the live list")[0]
    latency = float(row.attr("data-shown-at")) - float(row.attr("data-started-at"))
    (ARTIFACTS / "live-latency.txt").parent.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "live-latency.txt").write_text(f"{latency:.3f} s from CallStarted in the SBC to the row on screen\n")
    assert latency < 2.0, f"the call took {latency:.3f} s to appear"
    cells = row.find_all("td")
    assert cells[0].text == "pbx->teams" and cells[2].text == "+442071234567"
    assert cells[1].text == f'"{XSS_NAME}" +442079460000'       # text, not markup
    assert browser.js("return window.__xss === undefined && window.__marker") == "no reload"
    assert browser.find("#live-count").text == "1"
    browser.wait_text("#live-calls tbody tr[data-call-id] td span.badge", "answered")
    shot(browser, "live-calls", docs="console-calls.png", full=False)
    res_pbx, res_teams = pbx.wait(), teams.wait()
    lab.check(res_pbx, res_teams)
    browser.wait(lambda: not browser.find_all("#live-calls tbody tr[data-call-id]"), 10, "the call leaving the list")
    assert browser.find("#live-count").text == "0"
    assert browser.js("return window.__marker") == "no reload"
    pbx_call = invite_call_id(res_pbx)

    # a Teams->PBX call
    pbx_side = lab.pbx_uas(calls=1)
    teams_side = lab.teams_uac(calls=1).run()
    lab.check(teams_side, pbx_side.wait())
    teams_call = invite_call_id(teams_side)

    # recent calls: both, the display name as text
    browser.get(base + "/console/calls")
    rows = browser.wait(lambda: [r for r in browser.find_all("#recent-calls tbody tr") if r.find_all("a")], 10,
                        "recent calls")
    assert [r.find_all("td")[1].text for r in rows[:2]] == ["teams->pbx", "pbx->teams"]
    assert rows[1].find_all("td")[2].text == f'"{XSS_NAME}" +442079460000'

    # the ladders
    open_call(browser, base, teams_call)
    seq = arrows(browser)
    assert sip_only(seq) == TEAMS_TO_PBX_SIP, seq
    assert_media_arrows(seq, ("sbc", "pbx 127.0.0.1", "INVITE (SDP)"), ("sbc", "teams 127.0.0.1", "200 OK"),
                        ("teams 127.0.0.1", "sbc", "BYE"))
    assert browser.find("#call-summary").text.count("teams->pbx") == 1
    shot(browser, "ladder-teams-to-pbx")

    open_call(browser, base, pbx_call)
    seq = arrows(browser)
    assert sip_only(seq) == PBX_TO_TEAMS_SIP, seq
    assert_media_arrows(seq, ("sbc", "teams 127.0.0.1", "INVITE (SDP)"), ("sbc", "pbx 127.0.0.1", "200 OK"),
                        ("pbx 127.0.0.1", "sbc", "BYE"))
    assert XSS_NAME in browser.find("#call-summary").text
    assert browser.js("return window.__xss === undefined && document.scripts.length") == 1

    # click the INVITE toward Teams: its message, with rtpengine's SDES key masked
    index = seq.index(("sbc", "teams 127.0.0.1", "INVITE (SDP)"))
    msg = browser.find(f"#msg-{index}")
    assert not msg.displayed
    browser.find(f"#arrow-{index} .label").click()
    browser.wait(lambda: msg.displayed, 5, "the message of the clicked arrow")
    text = msg.text
    sent_key = re.search(r"inline:([A-Za-z0-9+/=]{20,})", res_teams.received("INVITE")[0].body).group(1)
    assert "INVITE sip:+442071234567@" in text and f'From: "{XSS_NAME}" <sip:' in text
    assert sent_key not in text and "inline:" + "*" * len(sent_key) in text
    assert "selected" in browser.find(f"#arrow-{index}").attr("class")
    shot(browser, "ladder-pbx-to-teams", docs="console-call.png")

    # the same ladder from the JSON API
    status, _, body = http("GET", f"{base}/calls/{pbx_call}", headers={"Authorization": f"Bearer {TOKEN}"})
    data = json.loads(body)
    assert status == 200 and data["call"]["display"] == XSS_NAME and data["cdr"][0]["call_id"] == pbx_call
    assert [(data["columns"][a["from"]], data["columns"][a["to"]], a["label"]) for a in data["ladder"]] == seq
    assert sent_key not in body.decode()

    # media per leg (rtpengine's delete reply) and the CDR row
    assert len(browser.find_all("#media tbody tr")) == 2
    assert "200" in browser.find("#cdr-row").text and pbx_call in browser.find("#cdr-row").text

    # the pcap: every SIP message of the call, the key masked, lengths kept
    cookie = {"Cookie": session_cookie(browser)}
    href = browser.find("#pcap").attr("href")
    status, headers, pcap = http("GET", base + href, headers=cookie)
    assert status == 200 and headers["Content-Type"] == "application/vnd.tcpdump.pcap"
    (tmp_path / "call.pcap").write_bytes(pcap)
    payloads = [p["payload"] for p in read_pcap(tmp_path / "call.pcap")]
    assert len(payloads) == len(PBX_TO_TEAMS_SIP)
    invite = next(p for p in payloads if p.startswith(b"INVITE") and b"a=crypto" in p)
    assert sent_key.encode() not in pcap and b"inline:" + b"*" * len(sent_key) in invite
    head, body = invite.split(b"\r\n\r\n", 1)
    assert int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1)) == len(body)

    # CDRs: search by number and result, CSV export
    browser.get(base + "/console/cdr")
    browser.wait_find("#cdr-search input[name=number]").type("2079460000")
    browser.find("#cdr-search button").click()
    browser.wait(lambda: "number=2079460000" in browser.url, 10, "the search")
    found = browser.find_all("#cdr-table tbody tr")
    assert len(found) == 1 and pbx_call in found[0].text
    shot(browser, "cdr-search", docs="console-cdr.png", full=False)
    status, headers, csv = http("GET", base + browser.find("#cdr-csv").attr("href"), headers=cookie)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    lines = csv.decode().splitlines()
    assert len(lines) == 2 and lines[0].startswith("id,call_id,") and pbx_call in lines[1]
    status, _, body = http("GET", base + "/cdr?result=failed", headers=cookie)
    assert status == 200 and json.loads(body)["count"] == 0
    status, _, body = http("GET", base + "/cdr?number=%2B14255550100&result=answered", headers=cookie)
    assert [c["call_id"] for c in json.loads(body)["calls"]] == [teams_call]


# --------------------------------------------------------------------------- 4. a Teams proxy goes down

def status_cmd(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ENTRY, "status", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def in_a_terminal(argv: list[str], *, until: str | None = None, count: int = 1, timeout: float = 60) -> tuple[int, str]:
    """Run `argv` with stdout on a pseudo-terminal; with `until`, SIGINT (by PID) once `until`
    was printed `count` times. Returns (exit status, output)."""
    master, slave = pty.openpty()
    import fcntl
    import termios
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
    # Ctrl-C as a terminal delivers it: a suite started in the background by a non-interactive
    # shell (`./run-tests &`) has SIGINT ignored, children inherit that, and Python then keeps
    # it ignored, so the SIGINT below would be lost (seen as a TimeoutExpired in a clean-clone run)
    p = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if until is not None and out.decode(errors="replace").count(until) >= count and p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    until = None
            elif p.poll() is not None:
                break
        try:
            return p.wait(timeout=10), out.decode(errors="replace")
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{argv[3:]} still running {timeout:g} s after it started; "
                                 f"{'it did not stop on SIGINT' if until is None else f'{until!r} not printed {count} times'}; "
                                 f"output:\n{out.decode(errors='replace')[-3000:]}") from None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


async def test_dashboard_and_status_while_a_teams_proxy_goes_down(tmp_path, procs, test_pki, browser):
    port_a, port_b, pbx_port = free_port("tcp"), free_port("tcp"), free_port("both")
    resolve = {name: (port_a if name == "sip.pstnhub.microsoft.com" else port_b) for name in TEAMS_NAMES}
    sbc = SbcProcess(tmp_path, procs, test_pki, teams_resolve=resolve, pbx_port=pbx_port, keepalive=True,
                     extra={"admin": {"token": TOKEN}, "teams": {"options_interval": 1, "options_timeout": 1},
                            "pbx": {"options_interval": 0}})
    peer = TeamsPeer(test_pki, sbc_port=sbc.teams_port)
    try:
        await peer.listen(port_a)
        await peer.listen(port_b)
        await asyncio.to_thread(sbc.start)
        base = admin_url(sbc)
        cfg = str(sbc.config_path)
        pbx = Sipp("uas.xml", workdir=tmp_path, local_port=pbx_port, transport="u1", calls=1, procs=procs,
                   name="pbx-uas").start()

        def status_json() -> dict:
            return json.loads(http("GET", base + "/status", headers={"Authorization": f"Bearer {TOKEN}"})[2])

        def states() -> dict:
            return {p["peer"]: p["state"] for p in status_json()["teams"]["proxies"]}
        await asyncio.to_thread(wait_for, lambda: set(states().values()) == {"up"}, 15, what="3 Teams proxies up")
        await peer.options()                                  # Teams pings the SBC
        call = await peer.invite(to="+442071234567", from_="+12065550123")
        assert call.status == 200

        # teamsbc status, not a terminal: no colours; the call, the proxies, Teams' OPTIONS
        r = await asyncio.to_thread(status_cmd, "-c", cfg)
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        assert "\x1b[" not in out and "READY" in out and "sbc.example.com" in out
        assert re.search(r"sip2\.pstnhub\.microsoft\.com\s+up\s", out), out
        assert re.search(r"teams->pbx\s+\+12065550123\s+\+442071234567\s+answered", out), out
        assert "Teams' own OPTIONS: last" in out and "never" not in out.split("Teams' own OPTIONS")[1].splitlines()[0]
        assert "CN=sbc.example.com" in out and "days left" in out and "how: not managed by teamsbc" in out
        (ARTIFACTS / "status.txt").write_text(out)
        js = json.loads((await asyncio.to_thread(status_cmd, "-c", cfg, "--json")).stdout)
        assert js["ready"] is True and js["calls"]["active"] == 1
        assert js["calls"]["list"][0]["caller"] == "+12065550123"
        assert {p["peer"]: p["state"] for p in js["teams"]["proxies"]} == dict.fromkeys(
            ["sip.pstnhub.microsoft.com", "sip2.pstnhub.microsoft.com", "sip3.pstnhub.microsoft.com"], "up")
        assert all(p["last_sent"] and p["last_ok"] and p["rtt_ms"] is not None for p in js["teams"]["proxies"])
        rc, tty_out = await asyncio.to_thread(in_a_terminal, [*ENTRY, "status", "-c", cfg])
        assert rc == 0 and "\x1b[1;32mREADY" in tty_out, tty_out
        await call.bye()
        pbx.wait()

        # the dashboard: all up; then sip's listener stops and the SBC's OPTIONS to it fail
        # browser work runs off this event loop: the Teams peer on it answers the SBC's OPTIONS
        # (1 s timeout), and a blocked loop would take a proxy down for the wrong reason
        def dashboard_states() -> dict[str, str]:
            login(browser, base)
            return {r.find_all("td")[1].text.split("\n")[0]: r.find_all("td")[2].text
                    for r in browser.find_all("#trunks tbody tr")}
        assert (await asyncio.to_thread(dashboard_states))["sip.pstnhub.microsoft.com"] == "up"
        await peer.stop_listening(port_a)

        def sip_row_down():
            browser.refresh()
            for r in browser.find_all("#trunks tbody tr"):
                cells = r.find_all("td")
                if cells[1].text.startswith("sip.pstnhub.microsoft.com") and cells[2].text == "down" \
                        and r.find_all("svg.strip rect.st-down"):
                    return r
            return None
        row = await asyncio.to_thread(browser.wait, sip_row_down, 40, "sip.pstnhub.microsoft.com down on the dashboard")
        def down_page() -> tuple[str, str, dict[str, str]]:
            return (row.find_all("td")[7].text, browser.find("#alarms").text,
                    {r.find_all("td")[1].text: r.find_all("td")[2].text for r in browser.find_all("#trunks tbody tr")})
        reason, alarm, other = await asyncio.to_thread(down_page)
        assert "OPTIONS" in reason                                    # the reason
        assert "Teams proxy sip.pstnhub.microsoft.com is down" in alarm, alarm
        assert other["sip2.pstnhub.microsoft.com"] == "up" and other["sip3.pstnhub.microsoft.com"] == "up"
        await asyncio.to_thread(shot, browser, "dashboard-proxy-down", docs="console-dashboard.png")

        r = await asyncio.to_thread(status_cmd, "-c", cfg)
        assert r.returncode == 0, r.stdout + r.stderr        # 2 of 3 usable: ready, with a warning
        assert re.search(r"sip\.pstnhub\.microsoft\.com\s+down\s", r.stdout), r.stdout
        assert "warning Teams proxy sip.pstnhub.microsoft.com is down" in r.stdout
        (ARTIFACTS / "status-proxy-down.txt").write_text(r.stdout)
        rc, watched = await asyncio.to_thread(in_a_terminal, [*ENTRY, "status", "-c", cfg, "--watch", "--interval", "1"],
                                              until="Teams proxies", count=2)
        assert rc == 0 and watched.count("\x1b[H\x1b[2J") >= 2 and "Traceback" not in watched, watched

        # every proxy down: not ready (exit 1), a critical alarm
        await peer.stop_listening(port_b)
        await asyncio.to_thread(wait_for, lambda: set(states().values()) == {"down"}, 20, what="all proxies down")
        r = await asyncio.to_thread(status_cmd, "-c", cfg)
        assert r.returncode == 1 and "NOT READY" in r.stdout and "CRITICAL teams: 0 of 3 usable" in r.stdout, r.stdout
    finally:
        await peer.close()

    # stopped: exit 3, how to start it, no traceback; a wrong token: exit 2
    assert sbc.stop() == 0
    r = await asyncio.to_thread(status_cmd, "-c", cfg)
    assert r.returncode == 3 and r.stdout == "", r
    assert f"teamsbc is not running: nothing answers on {base}" in r.stderr
    assert f"teamsbc run -c {cfg}" in r.stderr and "systemctl start teamsbc" in r.stderr and "Traceback" not in r.stderr


def test_status_without_config_asks_the_lab_default_and_a_wrong_token_is_a_config_error(
        tmp_path, procs, test_pki, monkeypatch):
    from teamsbc.cli import lab_config
    monkeypatch.setenv("TEAMSBC_LAB_DIR", str(tmp_path / "lab"))
    lab_admin = lab_config().admin.listen           # what `teamsbc run` without -c would listen on
    r = status_cmd()
    url = f"http://127.0.0.1:{lab_admin.port}"
    if port_listening("127.0.0.1", lab_admin.port):
        # something else holds the lab's admin port on this machine: it was asked all the same
        assert url in r.stderr or r.returncode in (0, 1), r
    else:
        assert r.returncode == 3, r
        assert f"nothing answers on {url} (admin.listen of <embedded lab default" in r.stderr
        assert "Start it: teamsbc run " in r.stderr and "Traceback" not in r.stderr

    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=free_port("both"),
                     extra={"admin": {"token": TOKEN}}).start()
    other = tmp_path / "other.yaml"
    import yaml
    data = yaml.safe_load(sbc.config_path.read_text())
    data["admin"]["token"] = "another-token-0123456789"
    other.write_text(yaml.safe_dump(data))
    r = status_cmd("-c", str(other))
    assert r.returncode == 2 and "refused the admin token" in r.stderr and "Traceback" not in r.stderr, r
    bad = tmp_path / "bad.yaml"
    bad.write_text("sbc: {fqdn: 'not a name'}\n")
    r = status_cmd("-c", str(bad))
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr, r


# --------------------------------------------------------------------------- 6. renew now

def test_renew_now_from_the_console_against_pebble(tmp_path, procs, test_pki, browser):
    from tests.support.pebble import pebble_acme, start_challtestsrv, start_pebble
    from tests.test_e2e_reload import handshake_serial, serial_of
    chall = start_challtestsrv(procs, tmp_path)
    pebble = start_pebble(procs, tmp_path, dns_server=chall.dns_address)
    roots = pebble.write_root(tmp_path / "pebble-root.pem")
    both = tmp_path / "teams-trust.pem"
    both.write_bytes(test_pki.ca_cert.read_bytes() + roots.read_bytes())
    certs = tmp_path / "certs"
    live = certs / "live" / test_pki.sbc_fqdn
    live.mkdir(parents=True)
    shutil.copyfile(test_pki.sbc_fullchain, live / "fullchain.pem")
    shutil.copyfile(test_pki.sbc_key, live / "privkey.pem")
    acme = pebble_acme(pebble, roots, http01_listen=None, serve_http01=f"127.0.0.1:{pebble.http_port}")
    lab = Lab(tmp_path, procs, test_pki, stunnel_ca=both,
              extra={"certs_dir": str(certs), "acme": acme, "admin": {"token": TOKEN}},
              extra_teams={"certificate": str(live / "fullchain.pem"), "private_key": str(live / "privkey.pem"),
                           "trusted_ca": str(both)})
    old = serial_of(live / "fullchain.pem")
    base = admin_url(lab.sbc)
    login(browser, base)
    browser.get(base + "/console/certificates")
    kv = browser.wait_find("#certificate").text
    assert "CN=sbc.example.com" in kv and "ACME " + pebble.directory_url in kv and "teamsbc-renew.timer" in kv
    assert "no earlier certificates" in browser.find("#archive").text

    browser.find("#renew").click()
    assert browser.accept_alert() == "Order a new certificate now?"
    outcome = browser.wait(lambda: next((e for e in browser.find_all("#renew-outcome h3")
                                         if e.text.startswith(("Succeeded", "Failed"))), None),
                           30, "the renewal's outcome on the page (it refreshes while running)")
    text = browser.find("#renew-outcome").text
    assert outcome.text.startswith("Succeeded (renewed"), text
    assert "reloaded: new TLS handshakes present the new certificate" in text
    new = serial_of(live / "fullchain.pem")
    assert new != old and format(new, "x") in text
    assert handshake_serial(test_pki, lab.sbc.teams_port, ca=both) == new     # served at once
    archive = browser.find_all("#archive tbody tr")
    assert len(archive) == 1 and format(old, "x") in archive[0].text
    assert format(new, "x") in browser.find("#certificate").text
    shot(browser, "certificates-renewed", docs="console-certificates.png")

    # the JSON API: the same outcome; a second renewal through it answers with its outcome
    status, _, body = http("GET", base + "/certificate", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["renewal"]["ok"] is True
    status, _, body = http("POST", base + "/certificate/renew", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and json.loads(body)["action"] == "renewed", body
    assert serial_of(live / "fullchain.pem") not in (old, new)
    assert "console renewal:" in lab.sbc.log()
