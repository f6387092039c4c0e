"""Check `cert`: the certificate Teams will be shown. The chain up to a trusted root (system
store, or teams.trusted_ca: labs), the names (wildcard = one label), RSA >= 2048, serverAuth
(FAIL) and clientAuth (WARN) EKUs, validity and days left (WARN < 30), the private key matches.
Teams answers 504 (5690xx) to an untrusted, expired or misnamed certificate (reference section
2); the checks are the certificate gate's (certs/gate.py), run on the files the SBC serves.
"""
from __future__ import annotations

import datetime as dt
import warnings

from cryptography import x509

from ..certs.gate import GatePolicy, load_roots, run_gate
from ..config import Config
from ..preflight import cert_command, config_hint
from .report import FAIL, PASS, WARN, Result

EXPIRY_WARN_DAYS = 30


def check(config: Config) -> list[Result]:
    t = config.teams
    c = "cert"
    issue, renew = (cert_command(config.certs_dir, f"{a} -c {config_hint(config)}") for a in ("issue", "renew"))
    try:
        chain_pem, key_pem = t.certificate.read_bytes(), t.private_key.read_bytes()
    except OSError as e:
        return [Result(FAIL, f"{c} files", f"cannot read {e.filename}: {e.strerror}",
                       f"check teams.certificate / teams.private_key ({issue} creates them)")]
    names = (config.sbc.fqdn, *config.teams.tenants)
    with warnings.catch_warnings():  # odd entries of a distribution bundle are not our finding
        warnings.simplefilter("ignore")
        sys_roots, sys_label = load_roots(None)
    report = run_gate(chain_pem, key_pem, GatePolicy(names, sys_roots, sys_label))
    by = {k.name: k for k in report.checks}
    if "parse" in by:
        return [Result(FAIL, f"{c} files", by["parse"].detail, "teams.certificate must be PEM: leaf first, then intermediates")]
    out: list[Result] = []

    chain = by["chain"]
    if chain.ok:
        out.append(Result(PASS, f"{c} chain", f"{chain.detail} ({sys_label})"))
    else:
        lab = None
        if t.trusted_ca is not None:
            lab_roots, lab_label = load_roots(t.trusted_ca)
            lab = run_gate(chain_pem, key_pem, GatePolicy(names, lab_roots, lab_label))
        lab_chain = next((k for k in lab.checks if k.name == "chain"), None) if lab else None
        if lab_chain is not None and lab_chain.ok:
            out.append(Result(PASS, f"{c} chain", f"{lab_chain.detail} in teams.trusted_ca "
                              "(lab: Teams itself trusts only CAs of the Microsoft Trusted Root Program)"))
        else:
            detail = chain.detail + (f"; with teams.trusted_ca: {lab_chain.detail}" if lab_chain else "")
            out.append(Result(FAIL, f"{c} chain", detail,
                              "serve the full chain (fullchain.pem: leaf + intermediates) from a public CA "
                              "in the Microsoft Trusted Root Program; Teams answers 504 (5690xx) otherwise"))
    n = by["names"]
    out.append(Result(PASS, f"{c} names", f"{', '.join(names)} covered ({n.detail})") if n.ok else
               Result(FAIL, f"{c} names", n.detail,
                      f"get a certificate for {', '.join(names)} (a wildcard covers one label): "
                      f"{issue}"))
    k = by["key"]
    out.append(Result(PASS, f"{c} key", k.detail) if k.ok else
               Result(FAIL, f"{c} key", k.detail, "issue an RSA 2048+ certificate (Teams' suites are ECDHE-RSA)"))
    sa = by["server_auth"]
    out.append(Result(PASS, f"{c} serverAuth", sa.detail) if sa.ok else
               Result(FAIL, f"{c} serverAuth", sa.detail, "get a TLS server certificate (EKU serverAuth)"))
    ca = by["client_auth"]
    out.append(Result(PASS, f"{c} clientAuth", ca.detail) if "present" in ca.detail else
               Result(WARN, f"{c} clientAuth", "clientAuth absent from the EKU: the SBC presents this certificate "
                      "as a TLS client to Teams, which required clientAuth from March 2024 (public CAs drop it in 2026)",
                      "if Teams refuses our connections (certificate_unknown), use a CA profile with clientAuth"))
    out.append(_validity(report.leaf, renew))
    km = next((x for x in report.checks if x.name == "key_match"), None)
    if km is not None:
        out.append(Result(PASS, f"{c} key match", km.detail) if km.ok else
                   Result(FAIL, f"{c} key match", km.detail,
                          "teams.private_key must be the key of teams.certificate (both from the same issuance)"))
    return out

def _validity(leaf: x509.Certificate, renew: str) -> Result:
    now = dt.datetime.now(dt.timezone.utc)
    nb, na = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    check = "cert validity"
    if now < nb:
        return Result(FAIL, check, f"not valid before {nb:%Y-%m-%d %H:%M:%S} UTC",
                      "check this host's clock (see the clock check), or wait")
    if now >= na:
        return Result(FAIL, check, f"expired at {na:%Y-%m-%d %H:%M:%S} UTC",
                      f"renew it now ({renew}), then systemctl reload teamsbc")
    left = (na - now).total_seconds() / 86400
    if left < EXPIRY_WARN_DAYS:
        return Result(WARN, check, f"{left:.1f} days left (until {na:%Y-%m-%d})",
                      f"renew it ({renew}; is teamsbc-renew.timer enabled?)")
    return Result(PASS, check, f"{left:.0f} days left (until {na:%Y-%m-%d})")
