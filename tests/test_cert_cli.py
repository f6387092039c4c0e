"""`teamsbc cert` without a CA: parser contract, config errors, status, not-due renew, jitter,
deploy hook, one-line errors."""

from __future__ import annotations

import argparse
import datetime as dt
import random

import pytest
import yaml

from teamsbc import labpki
from teamsbc.certs import cli
from teamsbc.certs.cli import load_target, register
from teamsbc.certs.manager import CertManager, expiry_line
from teamsbc.certs.store import CertStore
from tests.support.pebble import SBC_FQDN, write_sbc_config

# Nothing listens there: ARI lookups fail fast and fall back to the lifetime rule.
DEAD_CA = "https://127.0.0.1:9/dir"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="teamsbc")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_parser_contract():
    p = parser()
    for sub in ("issue", "renew", "status"):
        a = p.parse_args(["cert", sub, "-c", "x.yaml", "--dry-run"])
        assert a.config == "x.yaml" and a.dry_run and callable(a.func)
    a = p.parse_args(["cert", "renew", "-c", "x", "--force", "--jitter", "30",
                      "--deploy-hook", "systemctl reload teamsbc"])
    assert a.force and a.jitter == 30 and a.deploy_hook == "systemctl reload teamsbc"
    assert p.parse_args(["cert", "renew", "-c", "x", "--no-jitter"]).no_jitter
    with pytest.raises(SystemExit):
        p.parse_args(["cert", "renew", "-c", "x", "--no-jitter", "--jitter", "5"])
    with pytest.raises(SystemExit):
        p.parse_args(["cert", "status"])          # -c is required


@pytest.fixture
def lab(tmp_path):
    """A lab CA as the gate's trust anchor and a config using it."""
    ca = labpki.make_ca("cli test CA")
    roots = labpki.write_cert_chain(tmp_path / "roots.pem", [ca[0]])
    cfg = write_sbc_config(tmp_path / "teamsbc.yaml",
                           {"directory": DEAD_CA, "trusted_roots": str(roots)})
    return ca, cfg


def install(tmp_path, ca, *, days=90, not_before=None, names=(SBC_FQDN,)):
    from cryptography.hazmat.primitives import serialization
    cert, key = labpki.make_leaf(*ca, list(names), days=days, not_before=not_before)
    # a real chain has an intermediate; the lab CA as "intermediate" issued by itself is enough
    # for the store, and the gate's chain check accepts a leaf issued by a trusted root
    chain = cert.public_bytes(serialization.Encoding.PEM)
    CertStore(tmp_path / "certs", SBC_FQDN).install(chain, labpki._key_pem(key))
    return cert


def test_config_errors_exit_2_with_every_line(tmp_path, capsys):
    cfg = write_sbc_config(tmp_path / "teamsbc.yaml", {"challenge": "dns-01", "key_type": "ec"})
    assert cli.main(["cert", "issue", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert f"{cfg}: acme.key_type: 'ec' is not one of rsa2048, rsa3072, rsa4096 (Teams' suites " \
           "are ECDHE-RSA: the key must be RSA)" in err
    assert any(e.startswith(f"{cfg}: acme.rfc2136.server: required for challenge dns-01") for e in err)


def test_other_config_errors_still_reported(tmp_path, capsys):
    cfg = tmp_path / "teamsbc.yaml"
    cfg.write_text(yaml.safe_dump({"sbc": {"fqdn": "not a name"}, "acme": {}}))
    assert cli.main(["cert", "status", "-c", str(cfg)]) == 2
    assert "sbc.fqdn" in capsys.readouterr().err


def test_missing_certificate_files_do_not_block_the_cert_commands(tmp_path):
    cfg = write_sbc_config(tmp_path / "teamsbc.yaml", {"email": "ops@teamsbc.test"})
    t = load_target(cfg)
    assert t.name == SBC_FQDN and t.certs_dir == tmp_path / "certs"
    assert t.acme.email == "ops@teamsbc.test"


def test_status_without_certificate(tmp_path, lab, capsys):
    _, cfg = lab
    assert cli.main(["cert", "status", "-c", str(cfg)]) == 1
    out = capsys.readouterr().out.strip()
    assert out == (f"{SBC_FQDN}: no certificate in {tmp_path}/certs/live/{SBC_FQDN} "
                   "(run `teamsbc cert issue -c FILE`)")


def test_status_lines_and_expiry_warning(tmp_path, lab, capsys):
    ca, cfg = lab
    cert = install(tmp_path, ca, days=20)
    assert cli.main(["cert", "status", "-c", str(cfg)]) == 0
    cap = capsys.readouterr()
    line = cap.out.splitlines()[0]
    assert line.startswith(f"{SBC_FQDN}: serial {cert.serial_number:x}, not after ")
    for part in ("(20 days left)", "EKU serverAuth+clientAuth", "issuer CN=cli test CA",
                 f"names {SBC_FQDN}", "renewal due "):
        assert part in line
    assert "ARI unavailable" in cap.out          # the dead directory: lifetime rule used
    assert cap.err.startswith(f"WARNING {SBC_FQDN}: expires in 20.0 days")
    assert not (tmp_path / "certs" / "accounts").exists()   # status writes nothing
    msg, warn = expiry_line(tmp_path / "certs", SBC_FQDN)
    assert warn and "20.0 days left" in msg


def test_renew_not_due_is_exit_0_and_touches_nothing(tmp_path, lab, capsys):
    ca, cfg = lab
    install(tmp_path, ca, days=90)
    files = {p: p.read_bytes() for p in (tmp_path / "certs" / "live").rglob("*.pem")}
    assert cli.main(["cert", "renew", "-c", str(cfg), "--deploy-hook", "false"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{SBC_FQDN}: not due for renewal, 90 days left; renewal due ")
    assert {p: p.read_bytes() for p in files} == files
    assert not (tmp_path / "certs" / "archive").exists()


def test_due_renewal_against_unreachable_ca_fails_in_one_line(tmp_path, lab, capsys):
    ca, cfg = lab
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=70)
    cert = install(tmp_path, ca, days=90, not_before=start)
    assert cli.main(["cert", "renew", "-c", str(cfg), "--no-jitter"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{SBC_FQDN}: renewal failed: fetching the ACME directory {DEAD_CA}: "
                             "cannot connect to the ACME server")
    assert err[0].endswith(f"live certificate unchanged (serial {cert.serial_number:x}, not after "
                           f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)")


def test_jitter_only_when_due(tmp_path, lab):
    ca, cfg = lab
    install(tmp_path, ca, days=90)
    slept: list[float] = []
    mgr = CertManager(load_target(cfg))
    assert mgr.renew(jitter=100, sleep=slept.append).action == "not-due"
    assert slept == []
    install(tmp_path, ca, days=90, not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=80))
    out = mgr.renew(jitter=100, sleep=slept.append, rng=random.Random(7))
    assert not out.ok                        # the dead CA
    assert len(slept) == 1 and 0 <= slept[0] <= 100


def test_deploy_hook_environment_and_failure(tmp_path, lab):
    ca, cfg = lab
    install(tmp_path, ca)
    mgr = CertManager(load_target(cfg))
    out = tmp_path / "env"
    assert mgr.run_deploy_hook(f"echo \"$TEAMSBC_CERT_NAME $RENEWED_DOMAINS\" > {out}") is None
    assert out.read_text().strip() == f"{SBC_FQDN} {SBC_FQDN}"
    err = mgr.run_deploy_hook("echo starting; echo 'unit teamsbc not found' >&2; exit 5")
    assert err == "`echo starting; echo 'unit teamsbc not found' >&2; exit 5` exited 5: " \
                  "unit teamsbc not found"
