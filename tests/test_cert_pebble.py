"""`teamsbc cert` against a real ACME server: pebble + pebble-challtestsrv (Debian packages) on
loopback ports picked at run time, every process stopped by PID (the `procs` fixture)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from teamsbc.certs.cli import load_target
from teamsbc.certs.gate import GatePolicy, load_roots, run_gate
from teamsbc.certs.manager import CertManager, issue_async
from teamsbc.certs.policy import lifetime_due_at
from teamsbc.certs.store import CertStore, live_paths
from teamsbc.certs.challenges import TokenStore
from tests.support.pebble import (SBC_FQDN, cert_command, pebble_acme, run_cert,
                                  start_challtestsrv, start_pebble, write_sbc_config)
from tests.support.ports import free_port
from tests.support.procs import wait_for

# pebble and bind9 are installed by ./run-tests; a missing one fails the test (never a skip)
pytestmark = pytest.mark.e2e

EAB_KID = "kid-1"
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


@pytest.fixture
def challtestsrv(procs, tmp_path):
    return start_challtestsrv(procs, tmp_path)


@pytest.fixture
def pebble(procs, tmp_path, challtestsrv):
    return start_pebble(procs, tmp_path, dns_server=challtestsrv.dns_address)


def setup_config(tmp_path: Path, pebble, **acme_extra) -> Path:
    roots = pebble.write_root(tmp_path / "pebble-root.pem")
    return write_sbc_config(tmp_path / "teamsbc.yaml", pebble_acme(pebble, roots, **acme_extra))


def live(tmp_path: Path):
    return live_paths(tmp_path / "certs", SBC_FQDN)


def snapshot(tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under certs/live and certs/archive with its content and inode."""
    out = {}
    for sub in ("live", "archive"):
        for p in sorted((tmp_path / "certs" / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(tmp_path))] = (p.read_bytes(), p.stat().st_ino)
    return out


def leaf_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def verify_independently(pebble, fullchain: Path, name: str = SBC_FQDN) -> None:
    """Full Web PKI server validation (cryptography's verifier, serverAuth and SAN included)
    of the served chain up to the root pebble generated at start."""
    chain = x509.load_pem_x509_certificates(fullchain.read_bytes())
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(name))
    verified = verifier.verify(chain[0], chain[1:])
    assert verified[-1] == root


def test_issue_http01_standalone(tmp_path, pebble):
    cfg = setup_config(tmp_path, pebble, require_client_auth=True)
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{SBC_FQDN}: issued in "), r.stdout
    assert "ACME account registered at https://127.0.0.1:" in r.stdout
    assert r.stderr == ""
    p = live(tmp_path)
    assert os.stat(p.privkey).st_mode & 0o777 == 0o600
    verify_independently(pebble, p.fullchain)
    chain = x509.load_pem_x509_certificates(p.fullchain.read_bytes())
    assert len(chain) == 2 and chain[0].public_key().key_size == 2048
    # the account is kept: 0600 key and its URL, reused by the next command
    accounts = list((tmp_path / "certs" / "accounts").iterdir())
    assert len(accounts) == 1
    assert os.stat(accounts[0] / "private_key.pem").st_mode & 0o777 == 0o600
    assert "/my-account/" in (accounts[0] / "account.json").read_text()

    st = run_cert("status", "-c", str(cfg))
    assert st.returncode == 0, st.stderr
    line = st.stdout.strip()
    assert line.startswith(f"{SBC_FQDN}: serial {chain[0].serial_number:x}, not after ")
    for part in ("days left", "EKU serverAuth+clientAuth", "issuer CN=Pebble Intermediate CA",
                 "renewal due ", "2/3 of the lifetime"):
        assert part in line

    again = run_cert("issue", "-c", str(cfg))
    assert again.returncode == 0 and "already installed" in again.stdout
    assert "ACME account registered" not in again.stdout


def test_renew_not_due_changes_nothing(tmp_path, pebble):
    cfg = setup_config(tmp_path, pebble)
    assert run_cert("issue", "-c", str(cfg)).returncode == 0
    before = snapshot(tmp_path)
    hook_flag = tmp_path / "hook-ran"
    r = run_cert("renew", "-c", str(cfg), "--deploy-hook", f"touch {hook_flag}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{SBC_FQDN}: not due for renewal, ")
    assert len(r.stdout.strip().splitlines()) == 1 and r.stderr == ""
    assert snapshot(tmp_path) == before
    assert not hook_flag.exists()


def test_renew_when_due_archives_old_and_runs_hook(tmp_path, procs, challtestsrv):
    pebble = start_pebble(procs, tmp_path, dns_server=challtestsrv.dns_address,
                          validity_seconds=8)
    cfg = setup_config(tmp_path, pebble)
    assert run_cert("issue", "-c", str(cfg)).returncode == 0
    old = leaf_of(live(tmp_path).fullchain)
    assert old.not_valid_after_utc - old.not_valid_before_utc < dt.timedelta(seconds=10)
    # under 10 days of lifetime: due at half of it
    due = lifetime_due_at(old)
    wait_for(lambda: dt.datetime.now(dt.timezone.utc) >= due, 15, what="renewal due")
    env_file = tmp_path / "hook-env"
    hook = f"env | grep -E '^(TEAMSBC_CERT|RENEWED)' > {env_file}"
    r = run_cert("renew", "-c", str(cfg), "--no-jitter", "--deploy-hook", hook)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"{SBC_FQDN}: renewed in ") and "(previous in " in lines[0]
    assert lines[-1] == f"{SBC_FQDN}: deploy hook ran: {hook}"
    new = leaf_of(live(tmp_path).fullchain)
    assert new.serial_number != old.serial_number
    archives = CertStore(tmp_path / "certs", SBC_FQDN).archives()
    assert len(archives) == 1
    assert leaf_of(archives[0] / "fullchain.pem").serial_number == old.serial_number
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["TEAMSBC_CERT_FULLCHAIN"] == str(live(tmp_path).fullchain.resolve())
    assert env["TEAMSBC_CERT_PRIVKEY"] == str(live(tmp_path).privkey.resolve())
    assert env["RENEWED_LINEAGE"] == str(live(tmp_path).directory.resolve())
    assert env["RENEWED_DOMAINS"] == SBC_FQDN


def test_gate_failure_leaves_live_certificate(tmp_path, pebble):
    """The CA's chain does not lead to the roots we trust: the answer is refused."""
    cfg = setup_config(tmp_path, pebble)
    assert run_cert("issue", "-c", str(cfg)).returncode == 0
    before = snapshot(tmp_path)
    serial = leaf_of(live(tmp_path).fullchain).serial_number
    wrong = pebble_acme(pebble, pebble.https_ca)          # an unrelated root
    write_sbc_config(cfg, wrong)
    r = run_cert("renew", "-c", str(cfg), "--force", "--no-jitter", "--deploy-hook", "false")
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert err[0] == (f"{SBC_FQDN}: renewal failed: the new certificate failed the gate and was "
                      f"NOT installed; live certificate unchanged (serial {serial:x}, not after "
                      f"{leaf_of(live(tmp_path).fullchain).not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)")
    assert err[1].startswith(f"{SBC_FQDN}: gate: chain: does not verify up to a root in ")
    assert len(err) == 2 and "Traceback" not in r.stderr
    assert snapshot(tmp_path) == before


def test_gate_failure_wrong_names_through_the_api(tmp_path, pebble):
    """A CA answer without a name we require (simulated by requiring one the order lacks)."""
    cfg = setup_config(tmp_path, pebble)
    assert run_cert("issue", "-c", str(cfg)).returncode == 0
    before = snapshot(tmp_path)
    target = load_target(cfg)
    roots, label = load_roots(target.acme.trusted_roots)
    strict = GatePolicy((SBC_FQDN, "tenant1.example.com"), roots, label)
    out = CertManager(target, gate_policy=strict).renew(force=True)
    assert not out.ok and out.action == "failed"
    assert out.details == [f"gate: names: not covered: tenant1.example.com (certificate names: "
                           f"{SBC_FQDN})"]
    assert "live certificate unchanged" in out.line
    assert snapshot(tmp_path) == before


def test_two_renewals_at_once_do_not_corrupt_the_store(tmp_path, procs, challtestsrv):
    pebble = start_pebble(procs, tmp_path, dns_server=challtestsrv.dns_address,
                          validity_seconds=8)
    cfg = setup_config(tmp_path, pebble)
    assert run_cert("issue", "-c", str(cfg)).returncode == 0
    due = lifetime_due_at(leaf_of(live(tmp_path).fullchain))
    wait_for(lambda: dt.datetime.now(dt.timezone.utc) >= due, 15, what="renewal due")
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(repo)}
    runs = [procs.start(f"renew-{i}", cert_command("renew", "-c", str(cfg), "--no-jitter"),
                        cwd=repo, env=env) for i in range(2)]
    codes = [p.wait(timeout=120) for p in runs]
    outs = [p.stdout_text() for p in runs]
    assert codes == [0, 0], [p.stderr_text() for p in runs]
    renewed = sum(": renewed in " in o for o in outs)
    assert renewed >= 1
    assert all(": renewed in " in o or ": not due for renewal" in o for o in outs), outs
    store = CertStore(tmp_path / "certs", SBC_FQDN)
    assert len(store.archives()) == renewed
    chain, key = store.read()
    target = load_target(cfg)
    report = run_gate(chain, key, GatePolicy.build(target.acme, SBC_FQDN))
    assert report.ok, report.lines()
    assert sorted(p.name for p in store.paths.directory.iterdir()) == ["fullchain.pem",
                                                                       "privkey.pem"]


def test_bad_nonce_is_retried(tmp_path, procs, challtestsrv):
    pebble = start_pebble(procs, tmp_path, dns_server=challtestsrv.dns_address, nonce_reject=40)
    cfg = setup_config(tmp_path, pebble)
    out = CertManager(load_target(cfg)).issue()
    assert out.ok, out.line
    assert out.bad_nonce_retries > 0   # 40% of nonces refused: dozens of POSTs got through


def test_external_account_binding(tmp_path, procs, challtestsrv):
    pebble = start_pebble(procs, tmp_path, dns_server=challtestsrv.dns_address,
                          eab_keys={EAB_KID: EAB_KEY})
    cfg = setup_config(tmp_path, pebble)
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"{SBC_FQDN}: issuance failed: the ACME server "
                                f"{pebble.directory_url} requires External Account Binding: set "
                                "acme.eab.kid and acme.eab.hmac_key (from your CA's account "
                                "page); no certificate installed")
    shutil.rmtree(tmp_path / "certs" / "accounts")
    setup_config(tmp_path, pebble, eab={"kid": EAB_KID, "hmac_key": EAB_KEY[:-4] + "AAAA"})
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 1 and "registering the ACME account: the CA answered" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    shutil.rmtree(tmp_path / "certs" / "accounts")
    setup_config(tmp_path, pebble, eab={"kid": EAB_KID, "hmac_key": EAB_KEY})
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert ": issued in " in r.stdout and "ACME account registered" in r.stdout


def test_profile_not_offered_is_refused_before_ordering(tmp_path, pebble):
    cfg = setup_config(tmp_path, pebble, profile="tlsserver")
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"{SBC_FQDN}: issuance failed: acme.profile 'tlsserver' is set but "
                                f"{pebble.directory_url} offers no profiles (no meta.profiles in "
                                "its directory): remove acme.profile; no certificate installed")


def test_validation_failure_is_one_line(tmp_path, pebble):
    cfg = setup_config(tmp_path, pebble, http01_listen=f"127.0.0.1:{free_port('tcp')}")
    r = run_cert("issue", "-c", str(cfg))
    assert r.returncode == 1
    err = r.stderr.strip()
    assert err.startswith(f"{SBC_FQDN}: issuance failed: order: validation failed: http-01 for "
                          f"{SBC_FQDN}: connection: ")
    assert err.endswith("; no certificate installed") and "\n" not in err
    assert not live(tmp_path).directory.exists()


async def test_http01_answered_by_the_running_sbc_token_store(tmp_path, pebble):
    """The SBC's own aiohttp listener serves the tokens; issuance runs in a worker thread."""
    cfg = setup_config(tmp_path, pebble, http01_listen=None)
    store = TokenStore()
    app = web.Application()
    store.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", pebble.http_port).start()
    try:
        out = await issue_async(load_target(cfg), token_store=store)
    finally:
        await runner.cleanup()
    assert out.ok and out.action == "issued", out.line
    assert store.served >= 1 and len(store) == 0
    verify_independently(pebble, live(tmp_path).fullchain)


async def test_http01_webroot_for_a_separate_cli_process(tmp_path, pebble):
    """`teamsbc cert issue` while the SBC runs: the CLI writes token files, the SBC's TokenStore
    (webroot=certs_dir/acme-challenge) serves them."""
    import asyncio
    cfg = setup_config(tmp_path, pebble, http01_listen=None)
    store = TokenStore(webroot=tmp_path / "certs" / "acme-challenge")
    app = web.Application()
    store.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", pebble.http_port).start()
    try:
        r = await asyncio.to_thread(run_cert, "issue", "-c", str(cfg))
    finally:
        await runner.cleanup()
    assert r.returncode == 0, r.stderr
    assert store.served >= 1
    assert list((tmp_path / "certs" / "acme-challenge").iterdir()) == []


def test_dry_run_installs_nothing(tmp_path, pebble):
    cfg = setup_config(tmp_path, pebble)
    r = run_cert("issue", "-c", str(cfg), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{SBC_FQDN}: dry run OK: {pebble.directory_url} issued serial ")
    assert "has no known staging twin" in r.stdout
    assert not live(tmp_path).directory.exists()
    assert run_cert("issue", "-c", str(cfg)).returncode == 0
    before = snapshot(tmp_path)
    flag = tmp_path / "hook-ran"
    r = run_cert("renew", "-c", str(cfg), "--dry-run", "--deploy-hook", f"touch {flag}")
    assert r.returncode == 0 and ": dry run OK: " in r.stdout, r.stderr
    assert snapshot(tmp_path) == before and not flag.exists()
