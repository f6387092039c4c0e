"""What `teamsbc cert issue|renew|status` do, as functions returning results (the CLI only
prints them; the running SBC can call the same through ``renew_async`` with its TokenStore).

issue/renew: lock the store -> decide -> order from the CA -> gate -> install -> (renew) deploy
hook. A certificate failing the gate is never installed; nothing is written before it passed.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography import x509

from .acme_client import AcmeClient, AcmeError
from .challenges import ChallengeError, Http01Solver, Rfc2136Solver, Solver, TokenStore
from .gate import GatePolicy, GateReport, cert_names, eku_names, name_covered, run_gate
from .policy import WARN_DAYS, RenewalDecision, days_left, decide
from .settings import STAGING_OF, AcmeSettings
from .store import CertStore, LockTimeout

log = logging.getLogger("teamsbc.certs")

__all__ = ["CertTarget", "CertManager", "Outcome", "StatusReport", "renew_async", "issue_async",
           "summary", "expiry_line", "DEFAULT_JITTER", "LOCK_TIMEOUT", "HOOK_TIMEOUT"]

DEFAULT_JITTER = 480.0      # s, like certbot's random sleep when run from a timer
LOCK_TIMEOUT = 300.0        # s a second process waits for the first one
HOOK_TIMEOUT = 300.0        # s a deploy hook may take


@dataclass(frozen=True)
class CertTarget:
    """One certificate to manage: the SBC's."""
    name: str                       # sbc.fqdn: live/<name>/
    certs_dir: Path
    acme: AcmeSettings
    source: str = "<config>"
    teams_certificate: Path | None = None   # what the SBC serves, to warn when it is elsewhere

    @property
    def names(self) -> tuple[str, ...]:
        return self.acme.order_names(self.name)


@dataclass
class Outcome:
    name: str
    ok: bool
    action: str                 # issued, renewed, not-due, exists, dry-run, failed
    line: str                   # the one line to print
    details: list[str] = field(default_factory=list)   # gate failures, one per check
    notes: list[str] = field(default_factory=list)
    serial: str | None = None
    archived: Path | None = None
    report: GateReport | None = None
    bad_nonce_retries: int = 0


@dataclass
class StatusReport:
    ok: bool
    lines: list[str]
    warnings: list[str] = field(default_factory=list)
    decision: RenewalDecision | None = None


def _utc(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def _left(cert: x509.Certificate, now: dt.datetime) -> str:
    s = (cert.not_valid_after_utc - now).total_seconds()
    if s <= 0:
        return "EXPIRED"
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= 2 * size:
            return f"{s / size:.0f} {unit} left"
    return f"{s:.0f} s left"


def summary(cert: x509.Certificate, now: dt.datetime) -> str:
    """serial, not-after, days left, EKUs, issuer, names: the body of a status line."""
    return (f"serial {_serial(cert)}, not after {_utc(cert.not_valid_after_utc)} "
            f"({_left(cert, now)}), "
            f"EKU {'+'.join(eku_names(cert)) or 'none'}, issuer {cert.issuer.rfc4514_string()}, "
            f"names {' '.join(cert_names(cert))}")


def expiry_line(certs_dir: Path, name: str, now: dt.datetime | None = None
                ) -> tuple[str, bool]:
    """For the running SBC's start-up and daily log: (message, warn) where warn is True from
    WARN_DAYS days left (log it as a warning then)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    cert = CertStore(certs_dir, name).live_certificate()
    if cert is None:
        return f"certificate {name}: none installed in {certs_dir}/live/{name}", True
    left = days_left(cert, now)
    return (f"certificate {name}: {left:.1f} days left (not after "
            f"{_utc(cert.not_valid_after_utc)}, serial {_serial(cert)})", left <= WARN_DAYS)


class CertManager:
    def __init__(self, target: CertTarget, *, token_store: TokenStore | None = None,
                 lock_timeout: float = LOCK_TIMEOUT,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
                 gate_policy: GatePolicy | None = None):
        """``token_store``: HTTP-01 answers go there (the running SBC serves it) and no
        standalone responder starts. ``gate_policy`` overrides the one built from settings."""
        self.t = target
        self.store = CertStore(target.certs_dir, target.name)
        self.token_store = token_store
        self.lock_timeout = lock_timeout
        self.clock = clock
        self._gate_policy = gate_policy

    # ------------------------------------------------------------------ pieces
    @property
    def gate_policy(self) -> GatePolicy:
        if self._gate_policy is None:
            self._gate_policy = GatePolicy.build(self.t.acme, self.t.name)
        return self._gate_policy

    def _client(self, directory: str | None = None) -> AcmeClient:
        a = self.t.acme
        return AcmeClient(directory or a.directory, accounts_dir=self.t.certs_dir / "accounts",
                          ca_bundle=a.ca_bundle, email=a.email, eab=a.eab)

    def _solver(self) -> Solver:
        a = self.t.acme
        if a.challenge == "dns-01":
            return Rfc2136Solver(a.rfc2136)
        if self.token_store is not None:
            return Http01Solver(self.token_store)
        if a.http01_listen is not None:
            return Http01Solver(TokenStore(), listen=(a.http01_listen.host, a.http01_listen.port))
        # no responder of our own: a running SBC serving <certs_dir>/acme-challenge answers
        return Http01Solver(TokenStore(), webroot=self.t.certs_dir / "acme-challenge")

    def decide(self, pair: tuple[bytes, bytes] | None, *, use_ari: bool = True
               ) -> tuple[RenewalDecision, list[str]]:
        """Renewal decision for the live pair, and notes (e.g. ARI unavailable)."""
        now = self.clock()
        if pair is None:
            return RenewalDecision(True, now, "missing", "no certificate installed"), []
        notes: list[str] = []
        try:
            cert = x509.load_pem_x509_certificates(pair[0])[0]
        except (ValueError, IndexError):
            return RenewalDecision(True, now, "broken", "the live fullchain.pem does not "
                                                        "parse"), []
        report = run_gate(pair[0], pair[1], self.gate_policy, now)
        if not report.ok:
            broken = [c for c in report.failures if c.name in ("key_match", "key", "server_auth",
                                                                 "chain", "client_auth")]
            if broken:
                return RenewalDecision(True, now, "gate", "the live certificate fails the gate: "
                                       + "; ".join(f"{c.name}: {c.detail}" for c in broken)), []
        missing = tuple(n for n in self.t.names if not name_covered(n, cert_names(cert)))
        window = None
        if use_ari and now < cert.not_valid_after_utc and not missing:
            try:
                window = self._client().renewal_window(cert)
            except AcmeError as e:
                notes.append(f"ARI unavailable ({e}); using the lifetime rule")
        return decide(cert, now, window=window, missing_names=missing), notes

    def _order(self, *, action: str, dry_run: bool, replaces: x509.Certificate | None
               ) -> Outcome:
        """Order, gate, install (not in a dry run). Call with the lock held."""
        name, a = self.t.name, self.t.acme
        directory = STAGING_OF.get(a.directory, a.directory) if dry_run else a.directory
        staging = directory != a.directory
        t0 = time.monotonic()
        client = self._client(directory)
        solver: Solver | None = None
        try:
            solver = self._solver()
            got = client.obtain(self.t.names, solver, key_bits=a.key_bits,
                                profile=a.profile, replaces=replaces)
        except (AcmeError, ChallengeError) as e:
            out = self._failed(action, str(e), client)
            out.notes += self._cleanup_notes(solver)
            return out
        notes = self._cleanup_notes(solver)
        if client.account_created:
            notes.append(f"ACME account registered at {client.net.account.uri} (terms of service "
                         "agreed)")
        report = run_gate(got.fullchain_pem, got.key_pem, self.gate_policy, self.clock())
        failures = report.failures
        if staging and [c.name for c in failures] == ["chain"]:
            notes.append(f"gate: chain: not checked against {directory} (staging roots are not "
                         "trusted)")
            failures = ()
        leaf = report.leaf
        if failures:
            out = self._failed(action, "the new certificate failed the gate and was NOT installed",
                               client)
            out.details = [f"gate: {c.name}: {c.detail}" for c in failures]
            out.report = report
            return out
        elapsed = time.monotonic() - t0
        if dry_run:
            if not staging:
                notes.append(f"note: {directory} has no known staging twin: the dry run used it "
                             "(the certificate it issued was discarded)")
            return Outcome(name, True, "dry-run",
                           f"{name}: dry run OK: {directory} issued serial {_serial(leaf)} in "
                           f"{elapsed:.1f} s and it passed the gate; nothing installed",
                           notes=notes, serial=_serial(leaf), report=report,
                           bad_nonce_retries=client.net.bad_nonce_retries)
        archived = self.store.install(got.fullchain_pem, got.key_pem, now=self.clock())
        verb = "renewed" if action == "renewal" else "issued"
        line = (f"{name}: {verb} in {elapsed:.1f} s: {summary(leaf, self.clock())} -> "
                f"{self.store.paths.fullchain}")
        if archived is not None:
            line += f" (previous in {archived})"
        tc = self.t.teams_certificate
        if tc is not None and Path(tc).resolve() != self.store.paths.fullchain.resolve():
            notes.append(f"note: teams.certificate is {tc}, not {self.store.paths.fullchain}: the "
                         "SBC will not serve this certificate until it points there")
        return Outcome(name, True, verb, line, notes=notes, serial=_serial(leaf),
                       archived=archived, report=report,
                       bad_nonce_retries=client.net.bad_nonce_retries)

    @staticmethod
    def _cleanup_notes(solver: Solver | None) -> list[str]:
        err = solver.cleanup_error if solver is not None else None
        return [f"warning: challenge records may be left behind: {err}"] if err else []

    def _failed(self, action: str, why: str, client: AcmeClient | None = None) -> Outcome:
        live = self.store.live_certificate()
        keep = (f"; live certificate unchanged (serial {_serial(live)}, not after "
                f"{_utc(live.not_valid_after_utc)})" if live is not None else
                "; no certificate installed")
        return Outcome(self.t.name, False, "failed", f"{self.t.name}: {action} failed: {why}{keep}",
                       bad_nonce_retries=client.net.bad_nonce_retries if client else 0)

    # ------------------------------------------------------------------ commands
    def issue(self, *, dry_run: bool = False) -> Outcome:
        """Get a certificate unless a good one that is not due is already live."""
        try:
            with self.store.lock(self.lock_timeout):
                pair = self.store.read()
                replaces = None
                if pair is not None and not dry_run:
                    decision, _ = self.decide(pair)
                    cert = x509.load_pem_x509_certificates(pair[0])[0] \
                        if decision.source != "broken" else None
                    if not decision.due and cert is not None:
                        return Outcome(self.t.name, True, "exists",
                                       f"{self.t.name}: already installed: "
                                       f"{summary(cert, self.clock())}; renewal "
                                       f"{decision.describe(self.clock())}; nothing done "
                                       "(`teamsbc cert renew --force` replaces it)",
                                       serial=_serial(cert))
                    replaces = cert
                return self._order(action="issuance", dry_run=dry_run, replaces=replaces)
        except LockTimeout as e:
            return self._failed("issuance", str(e))

    def renew(self, *, force: bool = False, dry_run: bool = False, jitter: float = 0.0,
              deploy_hook: str | None = None, sleep: Callable[[float], None] = time.sleep,
              rng: random.Random | None = None) -> Outcome:
        """No-op until due (or --force / --dry-run); sleeps up to ``jitter`` s before ordering;
        runs ``deploy_hook`` after a successful installation."""
        name = self.t.name
        notes: list[str] = []
        if not force and not dry_run:
            try:
                # the lock also when nothing is due: a store we cannot lock fails today
                with self.store.lock(self.lock_timeout):
                    decision, notes = self.decide(self.store.read())
            except LockTimeout as e:
                return self._failed("renewal", str(e))
            if not decision.due:
                return self._not_due(decision, notes)
            if decision.source == "missing":
                jitter = 0.0   # the first certificate: someone is waiting for it
        if jitter > 0 and not dry_run:
            delay = (rng or random.Random()).uniform(0, jitter)
            log.info("%s: renewal due; waiting %.0f s first (jitter)", name, delay)
            sleep(delay)
        try:
            with self.store.lock(self.lock_timeout):
                pair = self.store.read()
                if not force and not dry_run:
                    # another process may have renewed while we waited for the lock
                    decision, notes = self.decide(pair)
                    if not decision.due:
                        return self._not_due(decision, notes)
                replaces = None
                if pair is not None:
                    try:
                        replaces = x509.load_pem_x509_certificates(pair[0])[0]
                    except (ValueError, IndexError):
                        replaces = None
                out = self._order(action="renewal", dry_run=dry_run, replaces=replaces)
        except LockTimeout as e:
            return self._failed("renewal", str(e))
        out.notes[:0] = notes
        if out.ok and out.action == "renewed" and deploy_hook:
            hook_err = self.run_deploy_hook(deploy_hook)
            if hook_err:
                out.ok = False
                out.notes.append(f"{name}: deploy hook failed: {hook_err} (the new certificate "
                                 "IS installed)")
            else:
                out.notes.append(f"{name}: deploy hook ran: {deploy_hook}")
        return out

    def _not_due(self, decision: RenewalDecision, notes: list[str]) -> Outcome:
        cert = self.store.live_certificate()
        left = f", {_left(cert, self.clock())}" if cert is not None else ""
        return Outcome(self.t.name, True, "not-due",
                       f"{self.t.name}: not due for renewal{left}; renewal "
                       f"{decision.describe(self.clock())}",
                       notes=notes, serial=_serial(cert) if cert is not None else None)

    def run_deploy_hook(self, command: str) -> str | None:
        """Run ``command`` with /bin/sh; None on success, else why it failed. Environment:
        TEAMSBC_CERT_NAME/_FULLCHAIN/_PRIVKEY/_LIVE_DIR, and certbot's RENEWED_LINEAGE and
        RENEWED_DOMAINS so existing certbot hooks work unchanged."""
        p = self.store.paths
        env = dict(os.environ,
                   TEAMSBC_CERT_NAME=self.t.name,
                   TEAMSBC_CERT_FULLCHAIN=str(p.fullchain.resolve()),
                   TEAMSBC_CERT_PRIVKEY=str(p.privkey.resolve()),
                   TEAMSBC_CERT_LIVE_DIR=str(p.directory.resolve()),
                   RENEWED_LINEAGE=str(p.directory.resolve()),
                   RENEWED_DOMAINS=" ".join(self.t.names))
        try:
            r = subprocess.run(["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=HOOK_TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"`{command}` did not finish within {HOOK_TIMEOUT:.0f} s"
        except OSError as e:
            return f"`{command}`: {e.strerror or e}"
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).decode(errors="replace").strip().splitlines()
            return f"`{command}` exited {r.returncode}" + (f": {tail[-1]}" if tail else "")
        return None

    def status(self) -> StatusReport:
        name, now = self.t.name, self.clock()
        pair = self.store.read()
        if pair is None:
            return StatusReport(False, [f"{name}: no certificate in {self.store.paths.directory} "
                                        "(run `teamsbc cert issue -c FILE`)"])
        try:
            cert = x509.load_pem_x509_certificates(pair[0])[0]
        except (ValueError, IndexError):
            return StatusReport(False, [f"{name}: {self.store.paths.fullchain} does not parse"])
        decision, notes = self.decide(pair)
        report = run_gate(pair[0], pair[1], self.gate_policy, now)
        lines = [f"{name}: {summary(cert, now)}; renewal {decision.describe(now)}"]
        lines += [f"{name}: {c}" for c in report.lines()]
        lines += [f"{name}: {n}" for n in notes]
        warnings = []
        left = days_left(cert, now)
        if left <= WARN_DAYS:
            warnings.append(f"WARNING {name}: expires in {left:.1f} days "
                            f"({_utc(cert.not_valid_after_utc)})")
        return StatusReport(report.ok, lines, warnings, decision)


async def renew_async(target: CertTarget, *, token_store: TokenStore | None = None,
                      **kwargs) -> Outcome:
    """From the running SBC: the same renewal in a worker thread (the acme library blocks),
    answering HTTP-01 from the SBC's own TokenStore."""
    mgr = CertManager(target, token_store=token_store)
    return await asyncio.to_thread(mgr.renew, **kwargs)


async def issue_async(target: CertTarget, *, token_store: TokenStore | None = None,
                      dry_run: bool = False) -> Outcome:
    mgr = CertManager(target, token_store=token_store)
    return await asyncio.to_thread(mgr.issue, dry_run=dry_run)
