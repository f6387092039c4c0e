"""`teamsbc doctor` in a lab: the real SBC process (tests/support/sbc.py), Python Teams peers
with real mutual TLS (tests/support/teams_peer.py) on loopback, the test CA as teams.trusted_ca.

What each seeded fault is, precisely:
- expired certificate: the SBC runs with a certificate whose notAfter is 9 days past; the CLI
  prints FAIL for its validity and the exit code is the number of FAIL lines;
- wrong SAN: the SBC runs with a certificate for other.example.com only;
- IP in Contact: (1) the SBC's own code made to put an IP in its identity (monkeypatched
  TeamsIdentity), so the messages the doctor builds with the SBC's code carry it; (2) the OPTIONS
  the real SBC sent to the Teams peer, captured, checked as is (PASS) and with its Contact host
  edited to an IP (FAIL) through `--sample FILE`. The running SBC itself never emits an IP in
  Contact toward Teams (sbc.fqdn must be an FQDN): that is what (1) guards;
- no OPTIONS answered: sip -> a healthy peer, sip2 -> a closed port, sip3 -> a peer that never
  answers OPTIONS.
The DNS check gets `--resolve sbc.example.com=127.0.0.1` (no DNS in tests); Teams' own OPTIONS
come from a stub of the admin API's GET /peers (same JSON shape as teamsbc/admin.py).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import shutil
import signal
import ssl
import sys
import time

import pytest
import yaml
from aiohttp import web

from teamsbc import config as cfg
from teamsbc import doctor as doc
from teamsbc.doctor import FAIL, PASS, WARN, Doctor, Options
from tests.support.pki import SBC_FQDN, TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.sbc import SbcProcess
from tests.support.teams_peer import TeamsPeer

LOOP = "127.0.0.1"


def by_check(results) -> dict[str, doc.Result]:
    return {r.check: r for r in results}


def show(results) -> str:
    return "\n".join(line for r in results for line in r.lines())


# --------------------------------------------------------------------------- helpers
class AdminStub:
    """GET /peers like teamsbc/admin.py: {"peers": [...], "teams_options_last": ISO | null}."""

    def __init__(self, body, status=200):
        self.body, self.status = body, status
        self.runner = None
        self.port = free_port("tcp")

    async def __aenter__(self):
        app = web.Application()

        async def peers(request):
            return web.json_response(self.body, status=self.status)
        app.router.add_get("/peers", peers)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, LOOP, self.port).start()
        return f"http://{LOOP}:{self.port}"

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def iso_ago(seconds: float) -> str:
    t = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def start_lab(procs, tmp_path, pki, *, resolve: dict[str, int], extra=None, keepalive=False):
    sbc = SbcProcess(tmp_path, procs, pki, pbx_port=free_port("both"), teams_resolve=resolve,
                     extra=extra, keepalive=keepalive)
    await asyncio.to_thread(sbc.start)
    return sbc


async def start_lab_serving(procs, tmp_path, pki, chain, key, *, resolve: dict[str, int], trusted=None):
    """An SBC serving ``chain``/``key``, which `teamsbc run` refuses at start (expired, another
    name): it starts with the good pair, which is then replaced on disk the way a renewal does
    it (key first, chain last); the SBC's file watch loads it, as it would in production."""
    import shutil
    live = tmp_path / "live"
    live.mkdir()
    live_chain, live_key = live / "fullchain.pem", live / "privkey.pem"
    shutil.copyfile(pki.sbc_fullchain, live_chain)
    shutil.copyfile(pki.sbc_key, live_key)
    teams = {"certificate": str(live_chain), "private_key": str(live_key)}
    if trusted is not None:
        teams["trusted_ca"] = str(trusted)
    sbc = await start_lab(procs, tmp_path, pki, resolve=resolve, extra={"teams": teams})
    for src, dst in ((key, live_key), (chain, live_chain)):
        shutil.copyfile(src, dst.with_suffix(".new"))
        os.replace(dst.with_suffix(".new"), dst)
    for _ in range(150):   # the watch looks every 5 s
        if "certificate reloaded (certificate files changed)" in sbc.log():
            return sbc
        await asyncio.sleep(0.1)
    pytest.fail("the SBC did not load the replaced certificate:\n" + sbc.log())


async def run_cli(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """`python -m teamsbc.doctor ...` as a subprocess, while this loop keeps serving the peers."""
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "teamsbc.doctor", *argv,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                             start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout)
    except asyncio.TimeoutError:
        os.killpg(p.pid, signal.SIGKILL)
        await p.wait()
        pytest.fail(f"doctor did not finish within {timeout}s")
    return p.returncode, out.decode()


def closed_admin() -> str:
    return f"http://{LOOP}:{free_port('tcp')}"   # reserved, nothing listens


def expired_pair(tmp_path, test_pki):
    """A leaf that expired 2 days ago from a CA a year old (the session's test CA is younger than
    any expired leaf), and a trust bundle of both CAs: the SBC still trusts the Teams peer."""
    from teamsbc import labpki
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID
    now = dt.datetime.now(dt.timezone.utc)
    _, ca_key = labpki.make_ca("old lab CA")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old lab CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=400))
          .not_valid_after(now + dt.timedelta(days=3000))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf, key = labpki.make_leaf(ca, ca_key, [SBC_FQDN], days=28, not_before=now - dt.timedelta(days=30))
    chain = labpki.write_cert_chain(tmp_path / "expired-fullchain.pem", [leaf, ca])
    keyp = labpki.write_key(tmp_path / "expired.key", key)
    bundle = tmp_path / "trusted.pem"
    bundle.write_bytes(test_pki.ca_cert.read_bytes() + ca.public_bytes(Encoding.PEM))
    return chain, keyp, bundle


# --------------------------------------------------------------------------- healthy lab
@pytest.mark.e2e
async def test_healthy_lab_all_pass_but_what_cannot_pass_offline(procs, tmp_path, test_pki):
    port = free_port("tcp")
    extra = None
    engine = None
    if shutil.which("rtpengine"):
        from tests.support.rtpengine import RtpEngine
        engine = RtpEngine(procs, http=False)
        await asyncio.to_thread(engine.start)
        extra = {"media": {"rtpengine": [engine.ng_udp]}}
    peer = TeamsPeer(test_pki, sbc_port=0)
    await peer.listen(port)
    try:
        sbc = await start_lab(procs, tmp_path, test_pki, resolve={n: port for n in TEAMS_NAMES}, extra=extra)
        peer.sbc_port = sbc.teams_port
        assert (await peer.options()).msg.status == 200   # Teams pings the SBC
        config = cfg.load(sbc.config_path)
        async with AdminStub({"peers": [], "teams_options_last": iso_ago(3)}) as admin:
            results = await Doctor(config, Options(resolve={SBC_FQDN: LOOP}, timeout=3,
                                                   admin_url=admin)).run_async()
    finally:
        await peer.close()
    print("\n" + show(results))
    checks = by_check(results)
    allowed = {"clock": (PASS, WARN)}            # no NTP daemon in a test container
    if engine is None:
        allowed["media"] = (WARN,)                # no rtpengine installed: signalling only
    for r in results:
        assert r.status in allowed.get(r.check, (PASS,)), show(results) + "\n" + sbc.log()
    for name in ("dns sbc.example.com", "cert chain", "cert names", "cert key", "cert serverAuth",
                 "cert clientAuth", "cert validity", "cert key match", "tls listener",
                 "options sip.pstnhub.microsoft.com", "options sip2.pstnhub.microsoft.com",
                 "options sip3.pstnhub.microsoft.com", "teams-ping", "identity", "clock"):
        assert name in checks, name
    assert "speaks TLS 1.2 with ECDHE-RSA-" in checks["tls listener"].finding
    assert "200 OK" in checks["options sip2.pstnhub.microsoft.com"].finding
    assert "teams.trusted_ca" in checks["cert chain"].finding
    if engine is not None:
        assert checks[f"media {engine.ng_udp}"].status == PASS


# --------------------------------------------------------------------------- seeded faults
@pytest.mark.e2e
async def test_expired_certificate_fails_and_the_exit_code_counts_it(procs, tmp_path, test_pki):
    chain, key, bundle = expired_pair(tmp_path, test_pki)
    port = free_port("tcp")
    peer = TeamsPeer(test_pki, sbc_port=0)
    await peer.listen(port)
    try:
        sbc = await start_lab_serving(procs, tmp_path, test_pki, chain, key, trusted=bundle,
                                      resolve={n: port for n in TEAMS_NAMES})
        rc, out = await run_cli(["-c", str(sbc.config_path), "--resolve", f"{SBC_FQDN}={LOOP}",
                                 "--timeout", "3", "--admin", closed_admin()])
    finally:
        await peer.close()
    print(out)
    fails = [l for l in out.splitlines() if l.startswith("FAIL  ")]
    assert re.search(r"(?m)^FAIL  cert validity: expired at \d{4}-\d\d-\d\d", out), out
    # only the expiry is wrong with the certificate itself; the listener still offers TLS 1.2
    assert re.search(r"(?m)^PASS  cert chain: ", out) and re.search(r"(?m)^PASS  cert names: ", out), out
    assert re.search(r"(?m)^PASS  tls listener: .* speaks TLS 1.2 with ECDHE-RSA-", out), out
    assert rc == len(fails) >= 1, out
    # Teams (the peer) refuses an expired client certificate: the OPTIONS checks fail too
    assert re.search(r"(?m)^FAIL  options sip\.pstnhub\.microsoft\.com: ", out), out
    assert "  fix: renew it now" in out
    assert re.search(rf"(?m)^\d+ passed, \d+ warnings, {rc} failed$", out)


@pytest.mark.e2e
async def test_wrong_san_fails_cert_names(procs, tmp_path, test_pki):
    chain, key = test_pki.issue("wrongsan", ["other.example.com"])
    port = free_port("tcp")
    peer = TeamsPeer(test_pki, sbc_port=0)
    await peer.listen(port)
    try:
        sbc = await start_lab_serving(procs, tmp_path, test_pki, chain, key,
                                      resolve={n: port for n in TEAMS_NAMES})
        results = await Doctor(cfg.load(sbc.config_path),
                               Options(resolve={SBC_FQDN: LOOP}, timeout=3, admin_url=closed_admin())).run_async()
    finally:
        await peer.close()
    names = by_check(results)["cert names"]
    assert names.status == FAIL, show(results)
    assert "not covered: sbc.example.com" in names.finding and "other.example.com" in names.finding
    assert "a wildcard covers one label" in names.fix
    assert by_check(results)["cert validity"].status == PASS
    assert by_check(results)["tls listener"].status == PASS


async def test_ip_in_contact_from_the_sbc_code_fails_identity(tmp_path, test_pki, monkeypatch):
    """Seed the fault in the SBC's own code: its Teams identity becomes an IP."""
    from teamsbc import teams
    real_init = teams.TeamsIdentity.__init__

    def with_ip(self, config, *args, **kw):
        real_init(self, config, *args, **kw)
        self.fqdn = "192.0.2.10"
    config = cfg.from_dict({
        "sbc": {"fqdn": SBC_FQDN},
        "teams": {"listen": "127.0.0.1:5061", "certificate": str(test_pki.sbc_fullchain),
                  "private_key": str(test_pki.sbc_key), "trusted_ca": str(test_pki.ca_cert)},
        "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.2:5060"},
        "numbers": {"country_code": "44"}}, base=tmp_path)
    assert Doctor(config).check_identity()[0].status == PASS   # control
    monkeypatch.setattr(teams.TeamsIdentity, "__init__", with_ip)
    results = Doctor(config).check_identity()
    assert results[0].status == FAIL
    text = show(results)
    assert "Contact <sip:192.0.2.10:5061;transport=tls> carries an IP address (Teams answers 403)" in text
    assert "top Via sent-by 192.0.2.10 is an IP address" in text
    assert "Record-Route <sip:192.0.2.10:5061;transport=tls;lr;r2=on>" in text
    assert "fix: Teams answers 403" in text


@pytest.mark.e2e
async def test_ip_in_a_captured_contact_fails_through_sample(procs, tmp_path, test_pki):
    """The OPTIONS the real SBC sent to Teams passes; the same message with an IP in its
    Contact fails, and the CLI's exit code counts it."""
    port = free_port("tcp")
    peer = TeamsPeer(test_pki, sbc_port=0)
    await peer.listen(port)
    try:
        sbc = await start_lab(procs, tmp_path, test_pki, resolve={n: port for n in TEAMS_NAMES}, keepalive=True)
        got = await peer.wait_for(lambda r: r.msg.is_request and r.msg.method == "OPTIONS", 10,
                                  what="the SBC's OPTIONS")
        captured = tmp_path / "captured.sip"
        captured.write_text(got.msg.raw)
        seeded = tmp_path / "seeded.sip"
        seeded.write_text(re.sub(r"(?im)^(contact:\s*<sip:)[^:;>]+", r"\g<1>127.0.0.1", got.msg.raw))
        assert "Contact: <sip:127.0.0.1:" in seeded.read_text()
        common = ["-c", str(sbc.config_path), "--resolve", f"{SBC_FQDN}={LOOP}", "--timeout", "3",
                  "--admin", closed_admin(), "--skip", "clock", "--skip", "media", "--skip", "teams-ping"]
        rc_ok, out_ok = await run_cli(common + ["--sample", str(captured)])
        rc_bad, out_bad = await run_cli(common + ["--sample", str(seeded)])
    finally:
        await peer.close()
    assert re.search(r"(?m)^PASS  identity: 5 messages toward Teams", out_ok), out_ok
    assert rc_ok == 0, out_ok
    assert re.search(r"(?m)^FAIL  identity: seeded\.sip #1: Contact <sip:127\.0\.0\.1:\d+;transport=tls> "
                     r"carries an IP address \(Teams answers 403\)", out_bad), out_bad
    assert rc_bad == 1 == len([l for l in out_bad.splitlines() if l.startswith("FAIL  ")]), out_bad


@pytest.mark.e2e
async def test_options_not_answered_fails_per_proxy(procs, tmp_path, test_pki):
    healthy, silent_port, closed = free_port("tcp"), free_port("tcp"), free_port("tcp")
    peer = TeamsPeer(test_pki, sbc_port=0)
    silent = TeamsPeer(test_pki, sbc_port=0)
    silent.options_code = None      # accepts the connection, never answers OPTIONS
    await peer.listen(healthy)
    await silent.listen(silent_port)
    resolve = {"sip.pstnhub.microsoft.com": healthy, "sip2.pstnhub.microsoft.com": closed,
               "sip3.pstnhub.microsoft.com": silent_port, "sip-du-a-us.pstnhub.microsoft.com": healthy}
    try:
        sbc = await start_lab(procs, tmp_path, test_pki, resolve=resolve)
        results = await Doctor(cfg.load(sbc.config_path),
                               Options(resolve={SBC_FQDN: LOOP}, timeout=1.5,
                                       skip=("clock", "media", "teams-ping"))).run_async()
    finally:
        await peer.close()
        await silent.close()
    c = by_check(results)
    assert c["options sip.pstnhub.microsoft.com"].status == PASS, show(results)
    assert c["options sip2.pstnhub.microsoft.com"].status == FAIL
    assert "connection refused" in c["options sip2.pstnhub.microsoft.com"].finding
    assert "52.112.0.0/14" in c["options sip2.pstnhub.microsoft.com"].fix
    assert c["options sip3.pstnhub.microsoft.com"].status == FAIL
    assert "not answered within 1.5s" in c["options sip3.pstnhub.microsoft.com"].finding
    assert "pair the FQDN" in c["options sip3.pstnhub.microsoft.com"].fix
    assert silent.find(lambda r: r.msg.is_request and r.msg.method == "OPTIONS"), "the OPTIONS reached it"


async def test_options_answered_503_fails(tmp_path, test_pki):
    port = free_port("tcp")
    peer = TeamsPeer(test_pki, sbc_port=0)
    peer.options_code = 403
    await peer.listen(port)
    config = cfg.from_dict({
        "sbc": {"fqdn": SBC_FQDN},
        "teams": {"listen": "127.0.0.1:5061", "certificate": str(test_pki.sbc_fullchain),
                  "private_key": str(test_pki.sbc_key), "trusted_ca": str(test_pki.ca_cert),
                  "proxies": ["sip.pstnhub.microsoft.com"],
                  "resolve": {"sip.pstnhub.microsoft.com": f"{LOOP}:{port}"}},
        "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.2:5060"}}, base=tmp_path)
    try:
        [r] = await Doctor(config, Options(timeout=3)).check_options()
    finally:
        await peer.close()
    assert r.status == FAIL and "answered 403" in r.finding and "teams-setup" in r.fix
    # what the SBC's code sends is what went out: FQDN Contact, X-MS-SBC
    sent = peer.find(lambda x: x.msg.is_request and x.msg.method == "OPTIONS")[0].msg
    assert sent.header("contact") == f"<sip:{SBC_FQDN}:5061;transport=tls>" and sent.header("x-ms-sbc")


@pytest.mark.parametrize("names,expect", [(["*.pstnhub.microsoft.com"], PASS), (["*.microsoft.com"], FAIL)],
                         ids=["one-label-wildcard", "two-label-wildcard"])
async def test_options_to_a_wildcard_teams_certificate_as_the_sbc_judges_it(tmp_path, test_pki, names, expect):
    """The SBC accepts a Teams certificate whose wildcard covers one label (teamsbc.certnames):
    the doctor says so too, and refuses the same peer the SBC refuses. The two-label wildcard
    fails in the TLS client already (the hostname check), before the name rule is asked."""
    chain, key = test_pki.issue(f"teams-{len(names[0])}", names)
    port = free_port("tcp")
    peer = TeamsPeer(test_pki, sbc_port=0)
    await peer.listen(port, cert=chain, key=key)
    config = cfg.from_dict({
        "sbc": {"fqdn": SBC_FQDN},
        "teams": {"listen": "127.0.0.1:5061", "certificate": str(test_pki.sbc_fullchain),
                  "private_key": str(test_pki.sbc_key), "trusted_ca": str(test_pki.ca_cert),
                  "proxies": ["sip.pstnhub.microsoft.com"],
                  "resolve": {"sip.pstnhub.microsoft.com": f"{LOOP}:{port}"}},
        "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.2:5060"}}, base=tmp_path)
    try:
        [r] = await Doctor(config, Options(timeout=3)).check_options()
    finally:
        await peer.close()
    assert r.status == expect, r
    if expect == PASS:
        assert "200 OK" in r.finding and "peer *.pstnhub.microsoft.com" in r.finding


# --------------------------------------------------------------------------- TLS listener
def lab_config(tmp_path, test_pki, listen_port: int) -> cfg.Config:
    return cfg.from_dict({
        "sbc": {"fqdn": SBC_FQDN},
        "teams": {"listen": f"127.0.0.1:{listen_port}", "certificate": str(test_pki.sbc_fullchain),
                  "private_key": str(test_pki.sbc_key), "trusted_ca": str(test_pki.ca_cert)},
        "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.2:5060"}}, base=tmp_path)


async def test_tls_listener_without_tls12_fails(tmp_path, test_pki):
    port = free_port("tcp")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3          # no TLS 1.2: Teams could not connect
    ctx.load_cert_chain(str(test_pki.sbc_fullchain), str(test_pki.sbc_key))

    async def handler(reader, writer):
        writer.close()
    server = await asyncio.start_server(handler, LOOP, port, ssl=ctx)
    try:
        [r] = await Doctor(lab_config(tmp_path, test_pki, port), Options(timeout=3)).check_tls_listener()
    finally:
        server.close()
        await server.wait_closed()
    assert r.status == FAIL, r
    assert "closed the connection on TLS 1.2 with Teams' suites; with default settings it chooses TLS_AES_" in r.finding
    [r] = await Doctor(lab_config(tmp_path, test_pki, free_port("tcp")), Options(timeout=3)).check_tls_listener()
    assert r.status == FAIL and "nothing listens" in r.finding


async def test_tls_listener_that_drops_this_source_cannot_tell(tmp_path, test_pki):
    """Like the SBC's guard for a source outside Teams' ranges: accept, close, no TLS at all."""
    port = free_port("tcp")

    async def handler(reader, writer):
        writer.close()
    server = await asyncio.start_server(handler, LOOP, port)
    try:
        [r] = await Doctor(lab_config(tmp_path, test_pki, port), Options(timeout=3)).check_tls_listener()
    finally:
        server.close()
        await server.wait_closed()
    assert r.status == WARN and r.finding.startswith("cannot tell: ") and "security.teams_ranges" in r.finding


# --------------------------------------------------------------------------- Teams' OPTIONS
AGO = object()  # placeholder: the timestamp is made when the test runs, not at import


@pytest.mark.parametrize("body,ago,status,expect,words", [
    ({"peers": [], "teams_options_last": AGO}, 20, 200, PASS, "s ago"),
    ({"peers": [], "teams_options_last": AGO}, 900, 200, FAIL, "Teams demotes this trunk"),
    ({"peers": [], "teams_options_last": None}, None, 200, FAIL, "no OPTIONS from Teams since the SBC started"),
    ({"error": "missing or wrong bearer token"}, None, 401, WARN, "HTTP 401"),
])
async def test_teams_ping_from_the_admin_api(tmp_path, test_pki, body, ago, status, expect, words):
    body = {k: (iso_ago(ago) if v is AGO else v) for k, v in body.items()}
    config = lab_config(tmp_path, test_pki, 5061)
    async with AdminStub(body, status) as url:
        [r] = await Doctor(config, Options(admin_url=url)).check_teams_ping()
    assert r.status == expect and words in r.finding, r


async def test_teams_ping_cannot_tell_without_admin_api(tmp_path, test_pki):
    [r] = await Doctor(lab_config(tmp_path, test_pki, 5061), Options(admin_url=closed_admin())).check_teams_ping()
    assert r.status == WARN and r.finding.startswith("cannot tell: SBC admin API not reachable")


def test_teams_ping_age_shapes():
    age, never = Doctor.teams_ping_age({"peers": [], "teams_options_last": iso_ago(12)})
    assert 11 <= age <= 14 and not never
    assert Doctor.teams_ping_age([{"peer": "x"}, {"teams_options_age": 7}]) == (7.0, False)
    assert Doctor.teams_ping_age({"teams_options_last": time.time() - 30})[0] == pytest.approx(30, abs=2)
    assert Doctor.teams_ping_age({"teams_options_last": 100.0, "now": 160.0}) == (60.0, False)
    assert Doctor.teams_ping_age({"teams_options_last": None}) == (None, True)
    assert Doctor.teams_ping_age({"peers": []}) == (None, False)


# --------------------------------------------------------------------------- DNS, clock
def test_dns_with_resolve_overrides(tmp_path, test_pki):
    config = lab_config(tmp_path, test_pki, 5061)
    [r] = Doctor(config, Options(resolve={SBC_FQDN: LOOP})).check_dns()
    assert r.status == PASS and "from --resolve" in r.finding
    [r] = Doctor(config, Options(resolve={SBC_FQDN: "10.9.9.9"})).check_dns()
    assert r.status == FAIL and "private address" in r.finding
    [r] = Doctor(config, Options(resolve={SBC_FQDN: "203.0.113.7"}, public_ips=("203.0.113.7",))).check_dns()
    assert r.status == PASS and "--public-ip" in r.finding


@pytest.mark.parametrize("answer,expect", [("yes", PASS), ("no", WARN)])
def test_clock_from_timedatectl(tmp_path, monkeypatch, answer, expect):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "timedatectl"
    fake.write_text(f"#!/bin/sh\necho {answer}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    [r] = Doctor.check_clock(Doctor.__new__(Doctor))
    assert r.status == expect and "timedatectl" in r.finding


def test_clock_cannot_tell_without_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))   # no timedatectl, chronyc or ntpq
    [r] = Doctor.check_clock(Doctor.__new__(Doctor))
    assert r.status == WARN and r.finding.startswith("cannot tell")


def test_config_errors_are_one_failure(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sbc": {"fqdn": "10.0.0.1"}}))
    import subprocess
    r = subprocess.run([sys.executable, "-m", "teamsbc.doctor", "-c", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stdout.startswith("FAIL  config: ")
