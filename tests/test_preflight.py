"""`teamsbc check` refuses what `teamsbc run` would refuse at start (issue 11), each finding with
the config key, the path and a fix; `run` refuses the same; `teamsbc cert renew` checks its
store on every run. Real files, real certificates (teamsbc.labpki), the real command line; the
"another user" cases run the command as nobody (setpriv), since root reads everything."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from teamsbc import config as cfg
from teamsbc import labpki, preflight
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parent.parent
FQDN = "sbc.example.com"


@pytest.fixture
def open_dir():
    """A directory the user nobody can traverse (pytest's tmp_path is 0700 root)."""
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="teamsbc-preflight-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ca():
    return labpki.make_ca("preflight test CA")


def pair(d: Path, ca, names=(FQDN,), **kw) -> tuple[Path, Path]:
    leaf, key = labpki.make_leaf(*ca, list(names), **kw)
    d.mkdir(parents=True, exist_ok=True)
    return (labpki.write_cert_chain(d / "fullchain.pem", [leaf, ca[0]]), labpki.write_key(d / "privkey.pem", key))


def write_config(d: Path, cert: Path, key: Path, **sections) -> Path:
    data = {"sbc": {"fqdn": FQDN},
            "teams": {"listen": f"127.0.0.1:{free_port('tcp')}", "certificate": str(cert), "private_key": str(key)},
            "pbx": {"listen": f"127.0.0.1:{free_port('both')}", "address": "127.0.0.1:5080"},
            "cdr": {"path": str(d / "cdr.sqlite")}, "capture": {"trace_dir": str(d / "traces")},
            "admin": {"listen": f"127.0.0.1:{free_port('tcp')}"}}
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    path = d / "teamsbc.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def teamsbc(*args: str, as_nobody: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "teamsbc", *args]
    if as_nobody:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/", env=env)


def findings(path: Path) -> list[preflight.Finding]:
    return preflight.run_checks(cfg.load(path))


def only_error(path: Path, key: str, *words: str) -> preflight.Finding:
    errors = [f for f in findings(path) if f.error]
    assert [f.key for f in errors] == [key], errors
    for w in words:
        assert w in errors[0].problem + " fix: " + errors[0].fix, errors[0]
    return errors[0]


def test_a_good_pair_passes_check_and_the_same_config_runs(tmp_path, ca):
    path = write_config(tmp_path, *pair(tmp_path / "live", ca))
    assert findings(path) == []
    r = teamsbc("check", "-c", str(path))
    assert r.returncode == 0 and ": ok (" in r.stdout, r.stderr


def test_missing_certificate_says_teamsbc_cert_issue(tmp_path):
    path = write_config(tmp_path, tmp_path / "none/fullchain.pem", tmp_path / "none/privkey.pem")
    # config.load wants explicit files to exist; the default location may be empty
    data = yaml.safe_load(path.read_text())
    del data["teams"]["certificate"], data["teams"]["private_key"]
    data["certs_dir"] = str(tmp_path / "certs")
    path.write_text(yaml.safe_dump(data))
    r = teamsbc("check", "-c", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{path}: teams.certificate: {tmp_path}/certs/live/{FQDN}/fullchain.pem does not exist" in r.stderr
    assert f"fix: get a certificate: teamsbc cert issue -c {path}" in r.stderr
    run = teamsbc("run", "-c", str(path))
    assert run.returncode == 2 and "teams.certificate" in run.stderr and "teamsbc cert issue" in run.stderr


def test_as_root_on_an_installed_box_the_fix_says_runuser(tmp_path):
    """Installed, certs_dir belongs to the renewal unit's user and root is refused by `teamsbc
    cert` (a root-owned key is unreadable to the SBC): the hint is the command that works
    (found by a stranger's install: the hints said `teamsbc cert issue` alone)."""
    if os.geteuid() != 0:
        pytest.fail("runs as root (as the admin does): the hint depends on it")
    path = write_config(tmp_path, tmp_path / "none/fullchain.pem", tmp_path / "none/privkey.pem")
    data = yaml.safe_load(path.read_text())
    del data["teams"]["certificate"], data["teams"]["private_key"]
    data["certs_dir"] = str(tmp_path / "certs")
    path.write_text(yaml.safe_dump(data))
    (tmp_path / "certs").mkdir()
    os.chown(tmp_path / "certs", 65534, 65534)
    r = teamsbc("check", "-c", str(path))
    assert r.returncode == 2, r.stderr
    assert f"fix: get a certificate: runuser -u nobody -- teamsbc cert issue -c {path}" in r.stderr
    assert preflight.cert_command(tmp_path / "certs", "renew") == "runuser -u nobody -- teamsbc cert renew"
    os.chown(tmp_path / "certs", 0, 0)  # a root-owned (lab) store: root runs it itself
    assert preflight.cert_command(tmp_path / "certs", "renew") == "teamsbc cert renew"


def test_garbage_pem_and_key(tmp_path, ca):
    cert, key = pair(tmp_path / "live", ca)
    cert.write_text("not a certificate\n")
    path = write_config(tmp_path, cert, key)
    only_error(path, "teams.certificate", "is not a PEM certificate chain", str(cert))
    cert, key = pair(tmp_path / "live2", ca)
    key.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    only_error(write_config(tmp_path, cert, key), "teams.private_key", "is not a PEM private key", str(key))


def test_key_not_matching_the_certificate(tmp_path, ca):
    cert, _ = pair(tmp_path / "a", ca)
    _, other_key = pair(tmp_path / "b", ca)
    path = write_config(tmp_path, cert, other_key)
    only_error(path, "teams.private_key", "is not the key of the certificate", str(other_key))
    r = teamsbc("run", "-c", str(path))
    assert r.returncode == 2 and "is not the key of the certificate" in r.stderr


def test_chain_in_the_wrong_order(tmp_path, ca):
    cert, key = pair(tmp_path / "live", ca)
    leaf, _ = labpki.load_cert_chain(cert)
    other_ca, _ = labpki.make_ca("another CA")
    labpki.write_cert_chain(cert, [leaf, other_ca])   # the leaf's issuer is not what follows it
    only_error(write_config(tmp_path, cert, key), "teams.certificate", "not in order", "leaf first")


def test_certificate_for_another_name_and_uncovered_tenants(tmp_path, ca):
    path = write_config(tmp_path, *pair(tmp_path / "live", ca, names=("other.example.net",)))
    only_error(path, "teams.certificate", f"does not cover {FQDN}", "other.example.net")
    r = teamsbc("run", "-c", str(path))   # never "ready" with a certificate Teams refuses
    assert r.returncode == 2 and "ready" not in r.stderr and f"does not cover {FQDN}" in r.stderr
    tenants = {"tenants": {f"a.{FQDN}": {"pbx": "127.0.0.1:5090"}}}
    path = write_config(tmp_path, *pair(tmp_path / "live2", ca), teams=tenants)
    only_error(path, "teams.certificate", f"does not cover a.{FQDN}")
    path = write_config(tmp_path, *pair(tmp_path / "live3", ca, names=(FQDN, f"*.{FQDN}")), teams=tenants)
    assert findings(path) == []


def test_expired_is_an_error_expiring_soon_a_warning(tmp_path, ca):
    now = dt.datetime.now(dt.timezone.utc)
    path = write_config(tmp_path, *pair(tmp_path / "old", ca, not_before=now - dt.timedelta(days=30), days=10))
    only_error(path, "teams.certificate", "expired on", "teamsbc cert renew")
    path = write_config(tmp_path, *pair(tmp_path / "soon", ca, not_before=now - dt.timedelta(days=30), days=33))
    [w] = findings(path)
    assert not w.error and "expires in" in w.problem
    r = teamsbc("check", "-c", str(path))
    assert r.returncode == 0 and "warning: " in r.stderr and "expires in" in r.stderr


@pytest.mark.parametrize("pbx_transport, clash", [("tcp", True), ("udp", False)])
def test_listeners_on_one_port(tmp_path, ca, pbx_transport, clash):
    cert, key = pair(tmp_path / "live", ca)
    port = free_port("both")
    path = write_config(tmp_path, cert, key, teams={"listen": f"0.0.0.0:{port}"},
                        pbx={"listen": f"127.0.0.1:{port}", "transport": pbx_transport})
    if clash:
        only_error(path, "pbx.listen", "clashes with teams.listen", "different ports")
    else:
        assert findings(path) == []   # TCP and UDP may share a port number


def test_admin_api_on_the_teams_port(tmp_path, ca):
    cert, key = pair(tmp_path / "live", ca)
    teams = f"127.0.0.1:{free_port('tcp')}"
    path = write_config(tmp_path, cert, key, teams={"listen": teams}, admin={"listen": teams})
    only_error(path, "admin.listen", "clashes with teams.listen")


def test_state_paths_the_user_cannot_write(open_dir, ca):
    tmp_path = open_dir
    d = tmp_path / "conf"
    d.mkdir()
    cert, key = pair(d / "live", ca)
    os.chmod(key, 0o644)   # nobody reads the key in this test; the state paths are the point
    locked = tmp_path / "etc-like"
    locked.mkdir(mode=0o755)
    path = write_config(d, cert, key, cdr={"path": str(locked / "cdr.sqlite")},
                        capture={"trace_dir": str(locked / "traces")})
    for p in (tmp_path, d, d / "live", path):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    r = teamsbc("check", "-c", str(path), as_nobody=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"cdr.path: {locked / 'cdr.sqlite'} cannot be created: {locked} is not writable by nobody" in r.stderr
    assert f"capture.trace_dir: {locked / 'traces'} cannot be created" in r.stderr
    assert "/var/lib/teamsbc" in r.stderr   # the fix names the state directory


def test_unreadable_key_names_the_user(open_dir, ca):
    tmp_path = open_dir
    cert, key = pair(tmp_path / "live", ca)
    path = write_config(tmp_path, cert, key)
    for p in (tmp_path, tmp_path / "live"):
        os.chmod(p, 0o755)
    os.chmod(path, 0o644)
    os.chmod(key, 0o600)   # root's: nobody cannot read it
    r = teamsbc("check", "-c", str(path), as_nobody=True)
    assert r.returncode == 2
    assert f"teams.private_key: cannot read {key}: Permission denied (running as nobody)" in r.stderr


def test_renew_checks_the_store_even_when_nothing_is_due(open_dir, ca):
    tmp_path = open_dir
    certs = tmp_path / "certs"
    cert, key = pair(certs / "live" / FQDN, ca)
    path = write_config(tmp_path, cert, key, acme={"directory": "https://127.0.0.1:1/dir"})
    data = yaml.safe_load(path.read_text())
    data["certs_dir"] = str(certs)
    path.write_text(yaml.safe_dump(data))
    for p in (tmp_path, certs, certs / "live", certs / "live" / FQDN):
        os.chmod(p, 0o755)
    os.chmod(path, 0o644)
    os.chmod(key, 0o644)
    r = teamsbc("cert", "renew", "-c", str(path), as_nobody=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"certs_dir: {certs} is not writable by nobody" in r.stderr and "fix:" in r.stderr


def test_cert_as_root_refuses_a_store_of_another_user(tmp_path, ca):
    if os.geteuid() != 0:
        pytest.skip("the refusal is about root")   # the suite runs as root (./run-tests)
    certs = tmp_path / "certs"
    certs.mkdir()
    os.chown(certs, 65534, 65534)
    cert, key = pair(tmp_path / "live", ca)
    path = write_config(tmp_path, cert, key)
    data = yaml.safe_load(path.read_text())
    data["certs_dir"] = str(certs)
    path.write_text(yaml.safe_dump(data))
    r = teamsbc("cert", "issue", "-c", str(path))
    assert r.returncode == 1 and f"certs_dir: {certs} belongs to nobody" in r.stderr, r.stderr
    assert "runuser -u nobody -- teamsbc cert" in r.stderr
