"""Hostile networks against the real SBC process (issue 6): scanners, floods, foreign sources,
open-relay attempts and TLS downgrades, on loopback only.

    sipvicious (svmap/svwar/svcrack, UDP only) -> SBC PBX listener          from 127.0.0.2
    sipvicious -> socat (UDP -> TLS) -> SBC Teams listener                  from 127.0.0.1 / .3
    flooder (2000 req/s, 127.0.0.2) + sipp PBX caller (127.0.0.1) -> SBC -> stunnel -> sipp "Teams"

What reached the other side is watched with sinks (a UDP socket where the PBX would be, a TCP
listener behind the Teams-side stunnel). The SBC logs its guard counters every second
(security.report_interval: 1); the tests read the last report. sipvicious comes from PyPI
(`pip install sipvicious`, in the test extra); socat, stunnel4 and sipp from Debian.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import wait_for
from tests.support.sbc import SbcProcess
from tests.support.sipp import Sipp, teams_callee
from tests.support.stunnel import Stunnel, TeamsServer

pytestmark = pytest.mark.e2e



def _script(name: str) -> str:
    """sipvicious' console scripts sit next to the interpreter running the tests (the venv of
    ./run-tests, which puts sipvicious in the test extra); a missing one fails, never skips."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: pip install -e '.[test]' (sipvicious)")
    return found


SVMAP, SVWAR, SVCRACK = (_script(n) for n in ("sipvicious_svmap", "sipvicious_svwar", "sipvicious_svcrack"))
STRANGER_IP, OUTSIDE_IP, PBX_IP = "127.0.0.2", "127.0.0.3", "127.0.0.5"


# ------------------------------------------------------------------ sinks and the lab
class UdpSink:
    """A UDP socket that records every datagram (where the PBX or a foreign host would be)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port or 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.got: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.got.append(self.sock.recvfrom(70000)[0])
            except OSError:
                pass

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()


class TcpSink:
    """A TCP listener that records every connection and byte (behind the Teams-side stunnel)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.data = b""
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            c.settimeout(0.2)
            try:
                while not self._stop.is_set():
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    self.data += chunk
            except OSError:
                pass
            c.close()

    def close(self):
        self._stop.set()
        self._t.join(2)
        self.sock.close()


class HostileLab:
    """The SBC with a Teams-side stunnel server (its Teams proxies) and sinks on both sides."""

    def __init__(self, tmp_path, procs, pki, *, security=None, teams_sink=True, pbx_sink=True):
        self.tmp, self.procs, self.pki = tmp_path, procs, pki
        self.pbx_port = free_port("both")
        self.server_port = free_port("tcp")
        # The PBX is 127.0.0.5: svwar and svcrack ignore -b for their socket and send from
        # 127.0.0.1 (sipvicious 0.3.8), so 127.0.0.1 must be a stranger here.
        self.pbx_sink = UdpSink(host=PBX_IP, port=self.pbx_port) if pbx_sink else None
        self.teams_sink = TcpSink() if teams_sink else None
        sec = {"report_interval": 1}
        sec.update(security or {})
        self.sbc = SbcProcess(tmp_path, procs, pki, teams_resolve={n: self.server_port for n in TEAMS_NAMES},
                              pbx_port=self.pbx_port, pbx_host=PBX_IP, extra={"security": sec})
        if self.teams_sink:
            Stunnel(tmp_path, [TeamsServer.for_pki(pki, accept_port=self.server_port,
                                                   connect_port=self.teams_sink.port)], procs=procs).start()
        self.sbc.start()

    def counters(self) -> dict:
        found = re.findall(r"guard counters: (\{.*\})", self.sbc.log())
        return json.loads(found[-1]) if found else {}

    def wait_counters(self, pred, timeout: float = 10.0) -> dict:
        wait_for(lambda: pred(self.counters()), timeout, what=f"guard counters (last: {self.counters()})",
                 alive=self.sbc.process)
        return self.counters()

    def nothing_relayed(self) -> None:
        if self.pbx_sink:
            assert self.pbx_sink.got == [], self.pbx_sink.got[:3]
        if self.teams_sink:
            assert self.teams_sink.data == b"", self.teams_sink.data[:500]

    def close(self):
        for s in (self.pbx_sink, self.teams_sink):
            if s:
                s.close()


@pytest.fixture
def hostile(tmp_path, procs, test_pki):
    labs = []

    def make(**kw):
        lab = HostileLab(tmp_path, procs, test_pki, **kw)
        labs.append(lab)
        return lab
    yield make
    for lab in labs:
        lab.close()


def run(argv: list[str], timeout: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def sipvicious(port: int, bind: str, host: str = "127.0.0.1") -> dict[str, subprocess.CompletedProcess]:
    """svmap, svwar and svcrack against host:port, bound to `bind` (never -A/-R: no traffic
    leaves the machine)."""
    common = ["-b", bind, "-x", bind, "-p", str(port)]
    return {
        "svmap": run([SVMAP, host, *common, "-m", "OPTIONS"]),
        "svmap-invite": run([SVMAP, host, *common, "-m", "INVITE"]),
        "svwar": run([SVWAR, "-e100-120", "-m", "INVITE", *common, host]),
        "svwar-register": run([SVWAR, "-e100-110", *common, host]),
        "svcrack": run([SVCRACK, "-u", "100", "-r", "1-30", *common, host]),
    }


def assert_found_nothing(results: dict[str, subprocess.CompletedProcess]) -> None:
    for name, r in results.items():
        out = r.stdout + r.stderr
        assert "found nothing" in out, f"{name}: {out[-2000:]}"
        assert "| SIP Device" not in out and "| Extension" not in out and "| Password" not in out, out


# ------------------------------------------------------------------ scanners
def test_sipvicious_finds_nothing_on_the_pbx_listener(hostile):
    lab = hostile()
    results = sipvicious(lab.sbc.pbx_listen_port, STRANGER_IP)
    assert_found_nothing(results)
    # each tool gives up after its first unanswered probe: silence is what scanners should get
    counters = lab.wait_counters(lambda c: c.get("unknown_source", 0) >= len(results))
    lab.nothing_relayed()
    assert set(counters) == {"unknown_source"}, counters


def test_sipvicious_with_403_policy_is_banned_and_finds_nothing(hostile):
    lab = hostile(security={"unknown_source": "403", "ban_after": 3})
    results = sipvicious(lab.sbc.pbx_listen_port, STRANGER_IP)
    assert_found_nothing(results)
    counters = lab.wait_counters(lambda c: c.get("bans", 0) >= 1)
    assert counters["scanner_user_agent"] >= 3, counters
    lab.nothing_relayed()


def socat_udp_to_tls(lab: HostileLab, *, bind: str, cert=None, key=None) -> int:
    """A UDP port in front of the Teams listener: each datagram goes over its own TLS
    connection from `bind` (sipvicious has no TLS: 'Protocol scheme tls is not supported')."""
    udp = free_port("udp")
    target = f"OPENSSL:127.0.0.1:{lab.sbc.teams_port},bind={bind},verify=0"
    if cert:
        target += f",cert={cert},key={key}"
    p = lab.procs.start("socat", ["socat", "-T", "2", f"UDP4-RECVFROM:{udp},bind=127.0.0.1,fork", target])
    wait_for(lambda: p.poll() is None and _udp_bound(udp), 5, what="socat", alive=p)
    return udp


def _udp_bound(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def test_sipvicious_through_tls_finds_nothing_on_the_teams_listener(hostile, test_pki):
    lab = hostile(security={"teams_ranges": ["127.0.0.1/32"]})
    # 1. from outside the Teams ranges: closed at accept, before any TLS
    outside = socat_udp_to_tls(lab, bind=OUTSIDE_IP, cert=test_pki.teams_fullchain, key=test_pki.teams_key)
    assert_found_nothing({"svmap": run([SVMAP, "127.0.0.1", "-p", str(outside), "-b", "127.0.0.1", "-x", "127.0.0.1"])})
    lab.wait_counters(lambda c: c.get("outside_teams_ranges", 0) >= 1)
    # 2. from inside, with a certificate of an unrelated CA: the handshake fails
    rogue = socat_udp_to_tls(lab, bind="127.0.0.1", cert=test_pki.rogue_fullchain, key=test_pki.rogue_key)
    assert_found_nothing({"svmap": run([SVMAP, "127.0.0.1", "-p", str(rogue), "-b", "127.0.0.1", "-x", "127.0.0.1"])})
    lab.wait_counters(lambda c: c.get("handshake_failed", 0) >= 1)
    # 3. worst case, a scanner holding a Teams certificate: its User-Agent gives it away
    insider = socat_udp_to_tls(lab, bind="127.0.0.1", cert=test_pki.teams_fullchain, key=test_pki.teams_key)
    assert_found_nothing(sipvicious(insider, "127.0.0.1"))
    counters = lab.wait_counters(lambda c: c.get("scanner_user_agent", 0) >= 5)
    assert counters.get("bans", 0) == 0  # Teams addresses are never banned
    lab.nothing_relayed()


# ------------------------------------------------------------------ flood
def flood(rate: int, seconds: float, stop: threading.Event, stats: dict) -> None:
    """New requests (OPTIONS and INVITE junk, fresh Call-ID and branch each) from 127.0.0.2."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((STRANGER_IP, 0))
    target = stats["target"]
    n, t0 = 0, time.monotonic()
    total = int(rate * seconds)
    while n < total and not stop.is_set():
        due = t0 + n / rate
        if time.monotonic() < due:
            stop.wait(due - time.monotonic())
        method = "INVITE" if n % 2 else "OPTIONS"
        msg = (f"{method} sip:{1000 + n % 9000}@127.0.0.1 SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {STRANGER_IP}:5060;branch=z9hG4bKflood{n}\r\nMax-Forwards: 70\r\n"
               f"From: <sip:flood@{STRANGER_IP}>;tag=f{n}\r\nTo: <sip:{1000 + n % 9000}@127.0.0.1>\r\n"
               f"Call-ID: flood-{n}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n").encode()
        try:
            s.sendto(msg if n % 10 else msg[: n % 97], target)  # one in ten truncated junk
        except OSError:
            stats["errors"] = stats.get("errors", 0) + 1
        n += 1
    stats["sent"], stats["seconds"] = n, time.monotonic() - t0
    s.close()


def test_flood_from_a_stranger_costs_the_pbx_no_call(tmp_path, procs, test_pki):
    """2000 new requests/s from 127.0.0.2 while the PBX (127.0.0.1) places 30 calls/s for 10 s
    toward Teams: every legitimate call succeeds, the flood is dropped and counted."""
    teams_sipp_port = free_port("tcp")
    pbx_port, server_port = free_port("both"), free_port("tcp")
    sbc = SbcProcess(tmp_path, procs, test_pki, teams_resolve={n: server_port for n in TEAMS_NAMES},
                     pbx_port=pbx_port, extra={"security": {"report_interval": 1}})
    Stunnel(tmp_path, [TeamsServer.for_pki(test_pki, accept_port=server_port, connect_port=teams_sipp_port)],
            procs=procs).start()
    sbc.start()
    calls, rate = 300, 30
    teams = Sipp("uas.xml", workdir=tmp_path, local_port=teams_sipp_port, transport="t1", calls=calls,
                 procs=procs, name="teams-uas", timeout_s=60, **teams_callee()).start()
    pbx = Sipp("uac.xml", workdir=tmp_path, local_port=free_port("both"), remote=("127.0.0.1", sbc.pbx_listen_port),
               transport="u1", calls=calls, rate=rate, procs=procs, name="pbx-uac", timeout_s=60,
               keys={"ruri_user": "02071234567", "to_user": "02071234567", "from_user": "02079460000"})
    stop, stats = threading.Event(), {"target": ("127.0.0.1", sbc.pbx_listen_port)}
    flooder = threading.Thread(target=flood, args=(2000, 12.0, stop, stats), daemon=True)
    flooder.start()
    t0 = time.monotonic()
    try:
        res = pbx.run()
    finally:
        stop.set()
        flooder.join(30)
    call_seconds = time.monotonic() - t0
    uas = teams.wait(30)

    def log_counters():
        found = re.findall(r"guard counters: (\{.*\})", sbc.log())
        return json.loads(found[-1]) if found else {}
    wait_for(lambda: log_counters().get("unknown_source", 0) >= stats["sent"] * 0.99, 15,
             what=f"flood counted (sent {stats['sent']}, counters {log_counters()})", alive=sbc.process)
    counters = log_counters()
    print(f"\nFLOOD: sent {stats['sent']} requests in {stats['seconds']:.1f} s "
          f"({stats['sent'] / stats['seconds']:.0f}/s) from {STRANGER_IP}; dropped and counted "
          f"{counters.get('unknown_source')}; PBX calls {res.successful} ok / {res.failed} failed of "
          f"{calls} at {rate}/s in {call_seconds:.1f} s")
    assert res.ok and res.successful == calls and (res.failed or 0) == 0, res.describe() + sbc.log()[-3000:]
    assert uas.successful == calls, uas.describe()
    # the flood ran at rate for the whole call stream (it stops when the calls are done)
    assert stats["sent"] / stats["seconds"] >= 1900 and stats["seconds"] >= call_seconds - 1, stats
    invites = {m.call_id for m in uas.received("INVITE")}
    assert not any(c.startswith("flood-") for c in invites) and len(invites) == calls


# ------------------------------------------------------------------ Teams ranges
def tls_client(pki, *, bind: str, port: int, cert=True, timeout=5.0, **ctx_kw) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if cert:
        ctx.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))
    for k, v in ctx_kw.items():
        setattr(ctx, k, v)
    raw = socket.socket()
    raw.settimeout(timeout)
    raw.bind((bind, 0))
    raw.connect(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname=pki.sbc_fqdn)


def sip_over(sock, msg: bytes) -> bytes:
    sock.sendall(msg)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_connections_from_outside_the_teams_ranges_are_dropped_and_counted(hostile, test_pki):
    lab = hostile(security={"teams_ranges": ["127.0.0.1/32"]})
    for _ in range(3):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_client(test_pki, bind=OUTSIDE_IP, port=lab.sbc.teams_port).close()
    with tls_client(test_pki, bind="127.0.0.1", port=lab.sbc.teams_port) as ok:
        assert ok.version() in ("TLSv1.2", "TLSv1.3")
    counters = lab.wait_counters(lambda c: c.get("outside_teams_ranges", 0) >= 3)
    assert counters == {"outside_teams_ranges": 3}, counters
    assert "TLS handshake from 127.0.0.3" not in lab.sbc.log()  # refused before any TLS


# ------------------------------------------------------------------ open relay
def request(method: str, ruri: str, *, via: str, frm: str, to: str, call_id: str, extra: str = "") -> bytes:
    return (f"{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\n"
            f"From: {frm};tag=r1\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n{extra}"
            f"Content-Length: 0\r\n\r\n").encode()


def test_open_relay_attempts_are_refused(hostile, test_pki):
    lab = hostile()
    foreign = UdpSink(host="127.0.0.9")
    try:
        pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        pbx.bind((PBX_IP, 0))   # the PBX's address (any port)
        pbx.settimeout(5)
        me = f"UDP {PBX_IP}:{pbx.getsockname()[1]};rport"
        sbc_pbx = ("127.0.0.1", lab.sbc.pbx_listen_port)
        pbx_rr = f"<sip:127.0.0.1:{lab.sbc.pbx_listen_port};lr;r2=on>"
        teams_rr = f"<sip:{test_pki.sbc_fqdn}:{lab.sbc.teams_port};transport=tls;lr;r2=on>"
        evil = f"<sip:127.0.0.9:{foreign.port};lr>"

        def ask(msg: bytes) -> int:
            pbx.sendto(msg, sbc_pbx)
            while True:
                data = pbx.recv(65536)
                if not data.startswith(b"SIP/2.0 100"):
                    return int(data[8:11])

        # in-dialog request from the PBX with a Route set we never built
        assert ask(request("BYE", f"sip:victim@127.0.0.9:{foreign.port}", via=me, frm="<sip:1@127.0.0.1>",
                           to="<sip:2@127.0.0.9>;tag=x", call_id="relay1", extra=f"Route: {evil}\r\n")) == 403
        # our Route first, then a hop that is not Teams
        assert ask(request("BYE", f"sip:victim@127.0.0.9:{foreign.port}", via=me, frm="<sip:1@127.0.0.1>",
                           to="<sip:2@127.0.0.9>;tag=x", call_id="relay2",
                           extra=f"Route: {pbx_rr}, {teams_rr}, {evil}\r\n")) == 403
        # a new request with a foreign R-URI and a crafted Route: only ever toward Teams (OPTIONS is
        # answered here, an INVITE without SDP is refused: nothing goes to 127.0.0.9)
        assert ask(request("OPTIONS", f"sip:x@127.0.0.9:{foreign.port}", via=me, frm="<sip:1@127.0.0.1>",
                           to=f"<sip:x@127.0.0.9>", call_id="relay3", extra=f"Route: {evil}\r\n")) == 200
        assert ask(request("INVITE", f"sip:02071234567@127.0.0.9:{foreign.port}", via=me,
                           frm="<sip:1@127.0.0.1>", to="<sip:x@127.0.0.9>", call_id="relay4",
                           extra=f"Route: {evil}\r\nContact: <sip:1@127.0.0.1>\r\n")) == 488
        # from Teams: a new call for a host that is not us, and in-dialog without our route
        with tls_client(test_pki, bind="127.0.0.1", port=lab.sbc.teams_port) as t:
            via = f"TLS 127.0.0.1:{t.getsockname()[1]}"
            r = sip_over(t, request("INVITE", f"sip:+15551230000@127.0.0.9:{foreign.port};transport=udp", via=via,
                                    frm="<sip:+4930@sip.pstnhub.microsoft.com>", to="<sip:+15551230000@127.0.0.9>",
                                    call_id="relay5", extra="Contact: <sip:a@sip.pstnhub.microsoft.com>\r\n"))
            assert r.startswith(b"SIP/2.0 404"), r
            r = sip_over(t, request("BYE", f"sip:victim@127.0.0.9:{foreign.port}", via=via,
                                    frm="<sip:+4930@sip.pstnhub.microsoft.com>", to="<sip:v@127.0.0.9>;tag=z",
                                    call_id="relay6", extra=f"Route: {evil}\r\n"))
            assert r.startswith(b"SIP/2.0 403"), r
        pbx.close()
        assert foreign.got == []
        lab.nothing_relayed()
    finally:
        foreign.close()


# ------------------------------------------------------------------ TLS hardening
def test_tls_downgrades_and_foreign_suites_are_refused(hostile, test_pki):
    lab = hostile(teams_sink=False, pbx_sink=False)
    port = lab.sbc.teams_port
    # TLS 1.1 (refused by Microsoft since 2022): s_client at security level 0 really offers it
    r = run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
             "-cert", str(test_pki.teams_fullchain), "-key", str(test_pki.teams_key)], timeout=15)
    assert r.returncode != 0 and "Cipher is (NONE)" in r.stdout, r.stdout + r.stderr
    # TLS 1.2 with suites that are not Teams' four ECDHE-RSA ones
    for suites in ("AES256-SHA", "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256", "AES128-GCM-SHA256"):
        ctx = ssl.create_default_context(cafile=str(test_pki.ca_cert))
        ctx.load_cert_chain(str(test_pki.teams_fullchain), str(test_pki.teams_key))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(suites)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                ctx.wrap_socket(raw, server_hostname=test_pki.sbc_fqdn)
    # three refusals for the same reason from one source: one line, the others counted (issue 12)
    wait_for(lambda: lab.counters().get("handshake_failed", 0) >= 4, 5, what="four handshake failures counted")
    assert len(re.findall(r"refused: .*NO_SHARED_CIPHER", lab.sbc.log())) == 1, lab.sbc.log()[-3000:]
    assert re.search(r"TLS handshake from 127\.0\.0\.1:\d+ refused: .*UNSUPPORTED_PROTOCOL", lab.sbc.log())
    # a Teams-conformant client still gets in
    with tls_client(test_pki, bind="127.0.0.1", port=port, maximum_version=ssl.TLSVersion.TLSv1_2) as ok:
        assert ok.cipher()[0] in ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256",
                                  "ECDHE-RSA-AES256-SHA384", "ECDHE-RSA-AES128-SHA256")


def test_tls_renegotiation_is_refused(hostile, test_pki):
    lab = hostile(teams_sink=False, pbx_sink=False)
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{lab.sbc.teams_port}", "-tls1_2",
            "-cert", str(test_pki.teams_fullchain), "-key", str(test_pki.teams_key),
            "-CAfile", str(test_pki.ca_cert), "-servername", test_pki.sbc_fqdn]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # "R" on a line of its own asks s_client to renegotiate (TLS 1.2); OP_NO_RENEGOTIATION
        # makes the SBC answer with a no_renegotiation alert and the session ends.
        out, _ = p.communicate(b"R\n", timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        pytest.fail(f"s_client still running: {out[-2000:]!r}")
    text = out.decode(errors="replace")
    assert "RENEGOTIATING" in text, text
    assert re.search(r"no renegotiation|alert|errno|error", text, re.I), text


def test_idle_connection_without_client_hello_is_closed_after_the_handshake_timeout(hostile):
    lab = hostile(teams_sink=False, pbx_sink=False)
    with socket.create_connection(("127.0.0.1", lab.sbc.teams_port), timeout=12) as s:
        t0 = time.monotonic()
        try:
            data = s.recv(1)  # blocks until the SBC closes (or 12 s)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - t0
    assert data == b"" and 4.0 <= elapsed <= 8.0, elapsed  # TLS_HANDSHAKE_TIMEOUT = 5 s
    lab.wait_counters(lambda c: c.get("handshake_failed", 0) >= 1)
