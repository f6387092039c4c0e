"""Issue 7 end to end: a real SBC process with metrics, CDRs, HEP, traces and the admin API;
sipp on the PBX side (UDP), the Python TeamsPeer with real mutual TLS on the Teams side, the
admin API over real HTTP, the CDR database read back after a SIGKILL.

The SBC runs from SBC_ENTRY: the real `python -m teamsbc run -c FILE`.

1. 3 answered and 2 refused (486) PBX->Teams calls: exact counters in /metrics, /calls empty,
   /cdr and the database rows, which survive a SIGKILL of the SBC; `teamsbc cdr` reads them.
2. A Teams->PBX call: /calls lists it while it lasts; a trace requested by number (POST
   /trace) holds its decrypted Teams-leg SIP in a pcap (byte for byte) and a text file.
3. HEP: every message of an OPTIONS on each leg reaches a UDP collector; decoded, the payload
   is the exact bytes sent on the wire (decrypted on TLS), with the right addresses.
4. /health: 200 while the PBX answers OPTIONS, 503 (with the failing check) once it stops,
   200 again when it answers again.
5. Token on every endpoint; POST /reload 200 / 409; certificate expiry follows the reload;
   an expired certificate makes /health 503; a non-loopback listener without token refused.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from teamsbc.admin import AdminConfigError, make_admin_app, start_admin
from teamsbc.cdr.store import COLUMNS
from teamsbc.addresses import HostPort
from teamsbc.metrics import Metrics
from teamsbc.tls import days_left
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import wait_port
from tests.support.sbc import LOOPBACK, SbcProcess
from tests.support.sipp import Sipp, parse_sip_message
from tests.support.teams_peer import Answer, TeamsPeer
from tests.test_capture import decode_hep3, read_pcap
from tests.test_metrics import parse_prometheus, sample

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
SBC_ENTRY = [sys.executable, "-m", "teamsbc"]

TOKEN = "test-token-" + secrets.token_hex(12)
UK_NATIONAL, UK_E164 = "02071234567", "+442071234567"
PBX_CALLER, PBX_CALLER_E164 = "01632960123", "+441632960123"
PBX_KEYS = {"ruri_user": UK_NATIONAL, "to_user": UK_NATIONAL, "from_user": PBX_CALLER}
WAIT = 15.0


# --------------------------------------------------------------------------- the SBC

@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def metrics(self) -> dict:
        assert self.status == 200, self
        assert self.headers.get("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
        return parse_prometheus(self.body.decode())[0]


class ObservedSbc(SbcProcess):
    """SbcProcess started from SBC_ENTRY, with admin/cdr/capture sections in its config."""

    def __init__(self, tmp_path, procs, pki, *, admin: dict | None = None, cdr: dict | None = None,
                 capture: dict | None = None, **kw):
        super().__init__(tmp_path, procs, pki, **kw)
        self.admin_port = free_port("tcp")
        self.config["admin"] = {"listen": f"{LOOPBACK}:{self.admin_port}", **(admin or {})}
        self.config["cdr"] = {"path": "cdr.sqlite", **(cdr or {})}        # relative: next to the config
        self.config["capture"] = {"trace_dir": "traces", **(capture or {})}
        self.token = self.config["admin"].get("token")

    @property
    def cdr_path(self) -> Path:
        return self.dir / "cdr.sqlite"

    def start(self, timeout: float = 15.0) -> "ObservedSbc":
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.generation += 1
        argv = [*SBC_ENTRY, "run", "-c", str(self.config_path)]
        self.process = self.procs.start(f"teamsbc-{self.generation}", argv, cwd=ROOT, logdir=self.dir)
        wait_port(LOOPBACK, self.teams_port, "tcp", timeout=timeout, process=self.process)
        wait_port(LOOPBACK, self.pbx_listen_port, "udp" if self.pbx_transport == "udp" else "tcp",
                  timeout=timeout, process=self.process)
        wait_port(LOOPBACK, self.admin_port, "tcp", timeout=timeout, process=self.process)
        return self

    def kill(self) -> int:
        """SIGKILL (a crash), by PID."""
        os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=10)

    def http(self, method: str, path: str, *, token: str | None | bool = True, body: Any = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{LOOPBACK}:{self.admin_port}{path}", method=method, data=data)
        tok = self.token if token is True else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return Reply(r.status, dict(r.headers), r.read())
        except urllib.error.HTTPError as e:
            return Reply(e.code, dict(e.headers), e.read())

    async def ahttp(self, method: str, path: str, **kw) -> Reply:
        return await asyncio.to_thread(self.http, method, path, **kw)


async def until(predicate: Callable[[], Any], timeout: float, what: str, diag: Callable[[], str] = lambda: "") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"no {what} within {timeout}s\n{diag()}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def make_rig(procs, tmp_path, test_pki):
    """make_rig(**ObservedSbc keywords) -> (sbc, TeamsPeer, PBX trunk port): the SBC started,
    every Teams FQDN resolved to the peer's listener; the peer is closed at the end."""
    peers: list[TeamsPeer] = []

    async def make(**kw):
        peer_port, pbx_port = free_port("tcp"), free_port("both")
        sbc = ObservedSbc(tmp_path, procs, test_pki, pbx_port=pbx_port, pbx_transport="udp",
                          teams_resolve={name: peer_port for name in TEAMS_NAMES}, **kw)
        peer = TeamsPeer(test_pki, sbc_port=sbc.teams_port)
        peers.append(peer)
        await peer.listen(peer_port)
        await asyncio.to_thread(sbc.start)
        return sbc, peer, pbx_port

    try:
        yield make
    finally:
        for peer in peers:
            await peer.close()


def pbx_sipp(tmp_path, procs, sbc, pbx_port, scenario, **kw) -> Sipp:
    return Sipp(scenario, workdir=tmp_path, local_port=pbx_port, transport="u1",
                remote=(LOOPBACK, sbc.pbx_listen_port), procs=procs, timeout_s=30, **kw)


def db_rows(path: Path) -> dict[str, dict]:
    db = sqlite3.connect(path)
    try:
        return {r[1]: dict(zip(COLUMNS, r)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM calls")}
    finally:
        db.close()


# --------------------------------------------------------------------------- 1. calls, metrics, CDR, SIGKILL

async def test_pbx_calls_in_metrics_and_cdr_rows_that_survive_sigkill(make_rig, tmp_path, procs, test_pki):
    sbc, peer, pbx_port = await make_rig(admin={"token": TOKEN})
    t0 = time.time()
    ok = await asyncio.to_thread(pbx_sipp(tmp_path, procs, sbc, pbx_port, "uac.xml", calls=3,
                                          keys=PBX_KEYS, name="pbx-answered").run)
    assert ok.ok, ok.describe() + peer.describe() + sbc.log()
    peer.answers.extend([Answer(486), Answer(486)])
    busy = await asyncio.to_thread(pbx_sipp(tmp_path, procs, sbc, pbx_port, "uac_reject.xml", calls=2,
                                            keys={**PBX_KEYS, "code": 486}, name="pbx-busy").run)
    assert busy.ok, busy.describe() + peer.describe() + sbc.log()
    t1 = time.time()
    answered_ids = sorted({m.call_id for m in ok.messages_sent() if m.method == "INVITE" and m.is_request})
    busy_ids = sorted({m.call_id for m in busy.messages_sent() if m.method == "INVITE" and m.is_request})
    assert len(answered_ids) == 3 and len(busy_ids) == 2

    # three datagrams from an address that is not the PBX: the guard drops them, /metrics counts them
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))
    for _ in range(3):
        stranger.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", (LOOPBACK, sbc.pbx_listen_port))
    stranger.close()

    async def dropped():
        s = (await sbc.ahttp("GET", "/metrics")).metrics()
        return s if sample(s, "teamsbc_ratelimit_drops_total", reason="unknown_source") == 3 else None
    s = await until(dropped, WAIT, "3 unknown_source drops in /metrics")
    assert sample(s, "teamsbc_calls_total", direction="pbx->teams") == 5
    assert sample(s, "teamsbc_calls_total", direction="teams->pbx") == 0
    assert sample(s, "teamsbc_calls_answered_total", direction="pbx->teams") == 3
    assert sample(s, "teamsbc_calls_failed_total", direction="pbx->teams", code="486") == 2
    assert sample(s, "teamsbc_calls_ended_total", direction="pbx->teams", by="pbx") == 3
    assert sample(s, "teamsbc_calls_active", direction="pbx->teams") == 0
    assert sample(s, "teamsbc_sip_requests_total", leg="pbx", method="INVITE") == 5
    assert sample(s, "teamsbc_sip_requests_total", leg="pbx", method="BYE") == 3
    assert sample(s, "teamsbc_sip_responses_total", leg="teams", code="200", method="INVITE") == 3
    assert sample(s, "teamsbc_sip_responses_total", leg="teams", code="486", method="INVITE") == 2
    assert sample(s, "teamsbc_sip_responses_total", leg="teams", code="200", method="BYE") == 3
    sbc_opened = [c for c in peer.connections if c.direction == "inbound"]
    assert sample(s, "teamsbc_tls_handshakes_total") == len(sbc_opened) >= 1
    assert sample(s, "teamsbc_tls_failures_total") == 0
    assert abs(sample(s, "teamsbc_certificate_expiry_seconds") - days_left(test_pki.sbc_fullchain) * 86400) < 60
    assert (await sbc.ahttp("GET", "/calls")).json() == {"count": 0, "calls": []}
    api_rows = (await sbc.ahttp("GET", "/cdr")).json()
    assert api_rows["count"] == 5 and {r["call_id"] for r in api_rows["calls"]} == set(answered_ids + busy_ids)
    last2 = (await sbc.ahttp("GET", "/cdr?limit=2")).json()["calls"]
    assert [r["call_id"] for r in last2] == [r["call_id"] for r in api_rows["calls"]][-2:]
    assert (await sbc.ahttp("GET", "/cdr?since=yesterday")).status == 400

    assert sbc.kill() == -signal.SIGKILL                     # crash: no close, no checkpoint
    rows = db_rows(sbc.cdr_path)                             # reopened by a new connection
    assert sorted(rows) == sorted(answered_ids + busy_ids)
    for cid in answered_ids:
        r = rows[cid]
        assert (r["direction"], r["status"], r["reason"], r["ended_by"]) == ("pbx->teams", 200, "OK", "pbx")
        assert t0 <= r["setup_time"] <= r["answer_time"] <= r["end_time"] <= t1, r
        assert (r["caller"], r["callee"]) == (PBX_CALLER_E164, UK_E164)
    for cid in busy_ids:
        r = rows[cid]
        assert (r["direction"], r["status"], r["reason"], r["answer_time"], r["ended_by"]) == \
            ("pbx->teams", 486, "Busy Here", None, None)
        assert t0 <= r["setup_time"] <= r["end_time"] <= t1

    out = subprocess.run([sys.executable, "-m", "teamsbc.cdr", "-c", str(sbc.config_path), "--format", "json",
                          "--since", datetime.fromtimestamp(t0 - 1, timezone.utc).isoformat()],
                         capture_output=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr.decode()
    listed = json.loads(out.stdout)
    assert [r["status"] for r in listed].count(200) == 3 and [r["status"] for r in listed].count(486) == 2


# --------------------------------------------------------------------------- 2. /calls and a trace

async def test_active_call_listed_and_traced_with_the_decrypted_teams_leg(make_rig, tmp_path, procs):
    sbc, peer, pbx_port = await make_rig(admin={"token": TOKEN})
    rule = await sbc.ahttp("POST", "/trace", body={"number": "+14255550100", "calls": 1})
    assert rule.status == 201 and rule.json()["number"] == "+14255550100"
    uas = pbx_sipp(tmp_path, procs, sbc, pbx_port, "uas.xml", calls=1, name="pbx-uas")
    uas.remote = None
    await asyncio.to_thread(uas.start)
    call = await peer.invite(to="+14255550100", from_="+12065550123")
    assert call.status == 200, peer.describe() + sbc.log()

    listed = (await sbc.ahttp("GET", "/calls")).json()
    assert listed["count"] == 1
    c = listed["calls"][0]
    assert (c["call_id"], c["direction"], c["caller"], c["callee"]) == (call.call_id, "teams->pbx",
                                                                        "+12065550123", "+14255550100")
    assert c["started"] <= c["answered"] and c["tenant"] == sbc.fqdn
    s = (await sbc.ahttp("GET", "/metrics")).metrics()
    assert sample(s, "teamsbc_calls_active", direction="teams->pbx") == 1
    assert sample(s, "teamsbc_calls_answered_active", direction="teams->pbx") == 1
    rules = (await sbc.ahttp("GET", "/trace")).json()["rules"]
    assert len(rules) == 1 and rules[0]["calls_left"] == 0 and len(rules[0]["files"]) == 2

    final = await call.bye()
    assert final.msg.status == 200
    res = await asyncio.to_thread(uas.wait)
    assert res.ok, res.describe()
    assert (await sbc.ahttp("GET", "/calls")).json()["count"] == 0
    s = (await sbc.ahttp("GET", "/metrics")).metrics()
    assert sample(s, "teamsbc_calls_ended_total", direction="teams->pbx", by="teams") == 1

    pcap = Path(rules[0]["files"][0] if rules[0]["files"][0].endswith(".pcap") else rules[0]["files"][1])
    text = pcap.with_suffix(".txt")

    def traced() -> list:
        pkts = read_pcap(pcap)
        return pkts if sum(1 for p in pkts if p["payload"].startswith(b"SIP/2.0 200") and b"BYE" in p["payload"]) >= 2 else []
    pkts = await until(traced, WAIT, "the BYE's 200 on both legs in the trace")
    sent = [t.split("\n", 1)[1] for t in peer.transcript if t.startswith("-->") and t.split("\n", 1)[1].startswith("INVITE ")]
    inv = pkts[0]
    [own] = [c for c in peer.connections if c.direction == "outbound"]   # the peer's own TLS connection
    assert inv["payload"] == sent[0].encode()                 # byte for byte, decrypted
    assert inv["src"] == (LOOPBACK, own.local_port) and inv["dst"] == (LOOPBACK, sbc.teams_port)
    to_pbx = [p for p in pkts if p["payload"].startswith(b"INVITE ") and p["dst"] == (LOOPBACK, pbx_port)]
    assert len(to_pbx) == 1 and to_pbx[0]["src"] == (LOOPBACK, sbc.pbx_listen_port)
    for p in pkts:
        _, headers, _ = parse_sip_message(p["payload"].decode())
        assert headers["call-id"] == [call.call_id]
    body = text.read_text()
    assert f"teams in tls {LOOPBACK}:{own.local_port} -> {LOOPBACK}:{sbc.teams_port}" in body
    assert body.count("\nINVITE sip:") == 2 and body.count("\nBYE sip:") == 2


# --------------------------------------------------------------------------- 3. HEP

class Collector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets.append(data)


async def test_hep_packets_decode_to_the_bytes_on_the_wire(make_rig):
    hep_port = free_port("udp")
    loop = asyncio.get_running_loop()
    transport, col = await loop.create_datagram_endpoint(Collector, local_addr=(LOOPBACK, hep_port))
    sbc, peer, _ = await make_rig(capture={"hep": f"{LOOPBACK}:{hep_port}", "agent_id": 2001, "password": "hep-secret"})
    try:
        # PBX leg, UDP: an OPTIONS from the PBX's address, answered by the SBC itself
        answers: asyncio.Queue = asyncio.Queue()

        class Pbx(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                answers.put_nowait(data)
        udp, _ = await loop.create_datagram_endpoint(Pbx, local_addr=(LOOPBACK, 0))
        me = udp.get_extra_info("sockname")[:2]
        cid_pbx = f"hep-pbx-{secrets.token_hex(4)}"
        options = (f"OPTIONS sip:{LOOPBACK}:{sbc.pbx_listen_port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:pbx@{me[0]}>;tag=p1\r\nTo: <sip:{LOOPBACK}:{sbc.pbx_listen_port}>\r\n"
                   f"Call-ID: {cid_pbx}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
        before = time.time()
        udp.sendto(options, (LOOPBACK, sbc.pbx_listen_port))
        answer = await asyncio.wait_for(answers.get(), WAIT)
        assert answer.startswith(b"SIP/2.0 200")

        # Teams leg, TLS: an OPTIONS on the peer's own connection, answered by the SBC
        text, cid_teams = peer.options_request()
        conn = await peer.connect()
        conn.send(text)
        resp = await peer.wait_for(lambda r: r.msg.call_id == cid_teams and not r.msg.is_request, timeout=WAIT)
        after = time.time()

        def decoded() -> list[dict]:
            got = [decode_hep3(p) for p in col.packets]
            mine = [h for h in got if cid_pbx.encode() in h["payload"] or cid_teams.encode() in h["payload"]]
            return mine if len(mine) >= 4 else []
        hep = await until(decoded, WAIT, "4 HEP packets")
        by_payload = {h["payload"]: h for h in hep}
        assert len(hep) == 4, [h["payload"][:40] for h in hep]

        pbx_in = by_payload[options]
        assert (pbx_in["src"], pbx_in["dst"], pbx_in["ip_proto"]) == (me, (LOOPBACK, sbc.pbx_listen_port), 17)
        pbx_out = by_payload[answer]
        assert (pbx_out["src"], pbx_out["dst"], pbx_out["ip_proto"]) == ((LOOPBACK, sbc.pbx_listen_port), me, 17)
        teams_in = by_payload[text.encode()]
        assert (teams_in["src"], teams_in["dst"], teams_in["ip_proto"]) == \
            ((LOOPBACK, conn.local_port), (LOOPBACK, sbc.teams_port), 22)
        teams_out = by_payload[resp.msg.raw.encode()]
        assert (teams_out["src"], teams_out["dst"], teams_out["ip_proto"]) == \
            ((LOOPBACK, sbc.teams_port), (LOOPBACK, conn.local_port), 22)
        for h in hep:
            assert (h["family"], h["proto_type"], h["agent_id"], h["auth"]) == (2, 1, 2001, b"hep-secret")
            assert before - 1 <= h["ts"] <= after + 1
        udp.close()
    finally:
        transport.close()


# --------------------------------------------------------------------------- 4. /health and the PBX

class OptionsPbx(asyncio.DatagramProtocol):
    """A PBX trunk that answers OPTIONS 200 while `answer` is true."""

    def __init__(self) -> None:
        self.answer = True
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        text = data.decode(errors="replace")
        if not self.answer or not text.startswith("OPTIONS "):
            return
        head = text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]
        keep = []
        for line in head:
            name = line.split(":", 1)[0].strip().lower()
            if name in ("via", "v", "from", "f", "call-id", "i", "cseq"):
                keep.append(line)
            elif name in ("to", "t"):
                keep.append(line + ";tag=pbx")
        resp = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
        self.transport.sendto(resp.encode(), addr)


async def test_health_follows_the_pbx(make_rig):
    sbc, _peer, pbx_port = await make_rig(admin={"token": TOKEN}, extra={"pbx": {"options_interval": 1, "options_timeout": 1}})
    loop = asyncio.get_running_loop()
    transport, pbx = await loop.create_datagram_endpoint(OptionsPbx, local_addr=(LOOPBACK, pbx_port))
    peer_name = f"pbx {LOOPBACK}:{pbx_port}"
    try:
        async def health(ready: bool):
            r = await sbc.ahttp("GET", "/health")
            body = r.json()
            check = {c["name"]: c for c in body["checks"]}
            want_detail = "is now" if False else ("up (answered 200)" if ready else "down")
            if r.status == (200 if ready else 503) and body["ready"] is ready and want_detail in check["pbx"]["detail"]:
                return body
            return None

        body = await until(lambda: health(True), WAIT, "/health 200 with the PBX up")
        checks = {c["name"]: c for c in body["checks"]}
        assert body["live"] is True and all(c["ok"] for c in body["checks"] if c["required"])
        assert set(checks) >= {"listeners", "pbx", "teams", "certificate", "teams_options"}
        assert "rtpengine" not in checks                      # not configured
        s = (await sbc.ahttp("GET", "/metrics")).metrics()
        assert sample(s, "teamsbc_peer_state", peer=peer_name, state="up") == 1
        assert sample(s, "teamsbc_peer_usable", peer=peer_name) == 1
        assert sample(s, "teamsbc_peer_rtt_seconds", peer=peer_name) < 1

        pbx.answer = False
        body = await until(lambda: health(False), WAIT, "/health 503 with the PBX down")
        checks = {c["name"]: c for c in body["checks"]}
        assert checks["pbx"]["ok"] is False and checks["pbx"]["required"] is True
        assert "OPTIONS timed out" in checks["pbx"]["detail"]
        assert [c["name"] for c in body["checks"] if c["required"] and not c["ok"]] == ["pbx"]
        s = (await sbc.ahttp("GET", "/metrics")).metrics()
        assert sample(s, "teamsbc_peer_state", peer=peer_name, state="down") == 1
        assert sample(s, "teamsbc_peer_state", peer=peer_name, state="up") == 0
        peers = {p["peer"]: p for p in (await sbc.ahttp("GET", "/peers")).json()["peers"]}
        assert peers[peer_name]["state"] == "down" and peers[peer_name]["since"].endswith("Z")

        pbx.answer = True
        await until(lambda: health(True), WAIT, "/health 200 again")
    finally:
        transport.close()


# --------------------------------------------------------------------------- 5. token, reload, exposure

@pytest.fixture
def own_cert(tmp_path, test_pki):
    d = tmp_path / "certs"
    d.mkdir()
    shutil.copy(test_pki.sbc_fullchain, d / "fullchain.pem")
    shutil.copy(test_pki.sbc_key, d / "privkey.pem")
    return d


def test_token_reload_and_certificate(tmp_path, procs, test_pki, own_cert):
    sbc = ObservedSbc(tmp_path, procs, test_pki, pbx_port=free_port("both"), admin={"token": TOKEN},
                      extra={"teams": {"certificate": str(own_cert / "fullchain.pem"),
                                       "private_key": str(own_cert / "privkey.pem")}}).start()
    for method, path in (("GET", "/health"), ("GET", "/metrics"), ("GET", "/calls"), ("GET", "/peers"),
                         ("GET", "/cdr"), ("GET", "/trace"), ("POST", "/reload"), ("POST", "/trace"),
                         ("DELETE", "/trace/1"), ("GET", "/nothing")):
        for tok in (None, "wrong-" + TOKEN, TOKEN.upper()):
            r = sbc.http(method, path, token=tok, body={} if method == "POST" else None)
            assert r.status == 401, (method, path, tok, r)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert sbc.http("GET", "/health").status == 200
    s = sbc.http("GET", "/metrics").metrics()
    assert sample(s, "teamsbc_certificate_reloads_total") == 0   # the refused POSTs did nothing

    r = sbc.http("POST", "/reload")
    assert r.status == 200 and r.json()["reloaded"] is True
    assert "CN=sbc.example.com" in r.json()["certificate"] and "days left" in r.json()["certificate"]

    chain, key = test_pki.issue("two-days", ["sbc.example.com"], days=2)
    shutil.copy(chain, own_cert / "fullchain.pem")
    shutil.copy(test_pki.teams_key, own_cert / "privkey.pem")   # a key of another certificate
    r = sbc.http("POST", "/reload")
    assert r.status == 409 and r.json()["reloaded"] is False
    assert "do not load together" in r.json()["problem"]
    shutil.copy(key, own_cert / "privkey.pem")
    assert sbc.http("POST", "/reload").status == 200
    s = sbc.http("GET", "/metrics").metrics()
    assert sample(s, "teamsbc_certificate_reloads_total") == 2
    expiry = sample(s, "teamsbc_certificate_expiry_seconds")
    assert abs(expiry - days_left(own_cert / "fullchain.pem") * 86400) < 60 and 86400 < expiry <= 2 * 86400

    chain, key = test_pki.issue("expired", ["sbc.example.com"], days=1,
                                not_before=datetime.now(timezone.utc) - timedelta(days=10))
    shutil.copy(chain, own_cert / "fullchain.pem")
    shutil.copy(key, own_cert / "privkey.pem")
    assert sbc.http("POST", "/reload").status == 200
    r = sbc.http("GET", "/health")
    assert r.status == 503 and r.json()["ready"] is False and r.json()["live"] is True
    cert = {c["name"]: c for c in r.json()["checks"]}["certificate"]
    assert cert["ok"] is False and cert["detail"].startswith("-")
    assert sample(sbc.http("GET", "/metrics").metrics(), "teamsbc_certificate_expiry_seconds") < -8 * 86400

    r = sbc.http("POST", "/trace", body={"number": "not a number"})
    assert r.status == 400
    r = sbc.http("POST", "/trace", body={"call_id": "abc@x", "seconds": 60})
    assert r.status == 201 and sbc.http("DELETE", f"/trace/{r.json()['id']}").status == 204
    assert sbc.http("DELETE", f"/trace/{r.json()['id']}").status == 404


def test_open_listener_without_token_is_refused(tmp_path, procs, test_pki):
    sbc = ObservedSbc(tmp_path, procs, test_pki, pbx_port=free_port("both"),
                      admin={"listen": f"0.0.0.0:{free_port('tcp')}"})
    sbc.config_path.write_text(yaml.safe_dump(sbc.config))
    p = subprocess.run([*SBC_ENTRY, "run", "-c", str(sbc.config_path)], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    assert "admin.listen" in p.stderr and "not a loopback address" in p.stderr and "admin.token" in p.stderr


async def test_start_admin_refuses_an_open_listener_without_token():
    app = make_admin_app(proxy=None, shell=None, health=None, metrics=Metrics(), cdr=None, config=None, token=None)
    with pytest.raises(AdminConfigError, match="not a loopback address"):
        await start_admin(app, HostPort("0.0.0.0", free_port("tcp")))
    port = free_port("tcp")
    runner = await start_admin(make_admin_app(proxy=None, shell=None, health=None, metrics=Metrics(), cdr=None,
                                              config=None, token=TOKEN), HostPort("0.0.0.0", port))
    try:
        r = await asyncio.to_thread(urllib.request.urlopen, urllib.request.Request(
            f"http://{LOOPBACK}:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}), timeout=10)
        assert r.status == 200 and b"teamsbc_calls_total" in r.read()
    finally:
        await runner.cleanup()
