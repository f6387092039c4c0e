"""pbx.auth end to end: a PBX that authenticates to its trunk (407 dance over real UDP), a
PBX that registers (401 dance), wrong credentials refused, and no credential reaching Teams."""
from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess
from tests.support.sipp import parse_sip_message
from tests.support.teams_peer import TeamsPeer
from tests.test_digest import answer
from teamsbc.digest import DigestAuth, DigestCredentials

pytestmark = pytest.mark.e2e

CREDS = {"realm": "sbc.example.com", "username": "pbx-trunk", "password": "correct horse battery"}
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


class Pbx(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        start, headers, body = parse_sip_message(data.decode())
        self.queue.put_nowait((start, headers))

    async def expect(self, pred, timeout=5.0):
        while True:
            start, headers = await asyncio.wait_for(self.queue.get(), timeout)
            if pred(start, headers):
                return start, headers


def request(method, ruri, port, cseq, extra="", body=""):
    branch = os.urandom(6).hex()
    return (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:02079460000@127.0.0.1>;tag=pbx1\r\nTo: <sip:{ruri[4:].split('@')[0]}@127.0.0.1>\r\n"
            f"Call-ID: auth-{method}@127.0.0.1\r\nCSeq: {cseq} {method}\r\nContact: <sip:pbx@127.0.0.1:{port}>\r\n"
            f"{extra}" + (f"Content-Type: application/sdp\r\n" if body else "") +
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


async def test_pbx_authenticates_registers_and_credentials_stay_here(tmp_path, procs, test_pki):
    teams_port, pbx_port = free_port("tcp"), free_port("both")
    peer = TeamsPeer(test_pki, sbc_port=0)
    await peer.listen(teams_port)
    sbc = SbcProcess(tmp_path, procs, test_pki, teams_resolve={n: teams_port for n in TEAMS_NAMES},
                     pbx_port=pbx_port, extra={"pbx": {"auth": CREDS}}).start()
    loop = asyncio.get_running_loop()
    tr, pbx = await loop.create_datagram_endpoint(Pbx, local_addr=("127.0.0.1", pbx_port))
    sbc_addr = ("127.0.0.1", sbc.pbx_listen_port)
    helper = DigestAuth(DigestCredentials(**CREDS))
    try:
        # a trace of the call: the credentials must not be in it (issue 12)
        import json as _json
        import urllib.request
        admin = sbc.config["admin"]["listen"]
        req = urllib.request.Request(f"http://{admin}/trace", method="POST",
                                     data=_json.dumps({"call_id": "auth-INVITE@127.0.0.1"}).encode())
        await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=5).read())
        ruri = f"sip:02071234567@127.0.0.1:{sbc.pbx_listen_port}"
        tr.sendto(request("INVITE", ruri, pbx_port, 1, body=SDP), sbc_addr)
        start, h = await pbx.expect(lambda s, h: s.startswith("SIP/2.0 407"))
        challenge = h["proxy-authenticate"][0]
        wrong = answer(helper, challenge, "INVITE", ruri, "not the password")
        tr.sendto(request("INVITE", ruri, pbx_port, 2, f"Proxy-Authorization: {wrong}\r\n", SDP), sbc_addr)
        await pbx.expect(lambda s, h: s.startswith("SIP/2.0 407") and "2 INVITE" in h["cseq"][0])
        good = answer(helper, challenge, "INVITE", ruri, CREDS["password"])
        tr.sendto(request("INVITE", ruri, pbx_port, 3, f"Proxy-Authorization: {good}\r\n", SDP), sbc_addr)
        await pbx.expect(lambda s, h: s.startswith("SIP/2.0 200") and "3 INVITE" in h["cseq"][0], 10)
        inv = await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "INVITE", 5)
        assert inv.msg.header("proxy-authorization") is None  # never relayed to Teams
        assert "PBX authentication failed: wrong password" in sbc.log()
        secret = good.split('response="')[1].split('"')[0]
        traces = [f.read_bytes() for f in (sbc.dir / "traces").iterdir()]
        assert len(traces) == 2 and all(secret.encode() not in t for t in traces)
        assert all(t.count(b'response="***"') == 2 for t in traces)  # the wrong and the good one
        # a PBX that registers to its trunk
        reg_uri = f"sip:127.0.0.1:{sbc.pbx_listen_port}"
        tr.sendto(request("REGISTER", reg_uri, pbx_port, 1, "Expires: 600\r\n"), sbc_addr)
        start, h = await pbx.expect(lambda s, h: s.startswith("SIP/2.0 401"))
        auth = answer(helper, h["www-authenticate"][0], "REGISTER", reg_uri, CREDS["password"])
        tr.sendto(request("REGISTER", reg_uri, pbx_port, 2, f"Authorization: {auth}\r\nExpires: 600\r\n"), sbc_addr)
        start, h = await pbx.expect(lambda s, h: s.startswith("SIP/2.0 200") and "REGISTER" in h["cseq"][0])
        assert h["expires"] == ["600"] and h["contact"] == [f"<sip:pbx@127.0.0.1:{pbx_port}>"]
    finally:
        tr.close()
        await peer.close()


def test_svcrack_from_the_pbx_address_gets_five_guesses_then_nothing(tmp_path, procs, test_pki):
    """Issue 12: svcrack guessed 5,000 passwords from the PBX address. With the defaults
    (security.ban_auth_after 5 within ban_window), at most 5 of its guesses are evaluated; then
    the address is locked out (one WARNING line) and svcrack hears nothing more."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    svcrack = str(Path(sys.executable).with_name("sipvicious_svcrack"))
    sbc = SbcProcess(tmp_path, procs, test_pki, teams_resolve={n: free_port("tcp") for n in TEAMS_NAMES},
                     pbx_port=free_port("udp"), pbx_host="127.0.0.1",
                     extra={"pbx": {"auth": CREDS}, "security": {"report_interval": 1}}).start()
    r = subprocess.run([svcrack, "-u", CREDS["username"], "-r", "1-5000", "--maximumtime", "4",
                        "-b", "127.0.0.1", "-p", str(sbc.pbx_listen_port), "127.0.0.1"],
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert CREDS["password"] not in out and "| Password" not in out, out
    log = sbc.log()
    guesses = re.findall(r"PBX authentication failed: wrong password", log)
    assert 1 <= len(guesses) <= 5, (len(guesses), log[-3000:])
    assert len(re.findall(r"locked out 127\.0\.0\.1 for 600s after 5 failed authentications", log)) == 1, log[-3000:]
    reports = [json.loads(m) for m in re.findall(r"guard counters: (\{.*\})", log)]
    assert reports and reports[-1].get("auth_locked_out", 0) > 0, log[-3000:]
