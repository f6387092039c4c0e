"""`teamsbc cert issue|renew|status -c FILE`, behaving like certbot for operators:
one line per certificate, exit 0 unless something failed (renew with nothing due is success),
errors as one line (never a traceback), 2 for an invalid config file like `teamsbc check`.

Wire into teamsbc.cli.main with ``register(sub)`` on its subparsers; each sub-command sets
``func`` (args -> exit status) like `run` and `check`. ``python -m teamsbc.certs cert ...`` runs
the same parser on its own.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..settings import SettingsReader
from .acme_client import describe_error
from .manager import DEFAULT_JITTER, LOCK_TIMEOUT, CertManager, CertTarget, Outcome
from .settings import parse_acme

__all__ = ["register", "load_target", "main", "EXIT_OK", "EXIT_FAILED", "EXIT_CONFIG"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _is_missing_cert_file(error: str) -> bool:
    # The certificate files are what `cert issue` creates: their absence is not an error here.
    return ("teams.certificate: file " in error or "teams.private_key: file " in error) and \
        error.endswith("does not exist or is not a file")


def load_target(path: str | Path) -> CertTarget:
    """sbc.fqdn, certs_dir, teams.certificate and the acme section of a config file; raises
    teamsbc.config.ConfigError with every problem found."""
    import yaml
    from teamsbc import config as cfg
    p = Path(path)
    fqdn = certs_dir = teams_cert = acme = None
    try:
        c = cfg.load(p)
        fqdn, certs_dir, teams_cert = c.sbc.fqdn, c.certs_dir, c.teams.certificate
        acme = c.acme
    except cfg.ConfigError as e:
        rest = [x for x in e.errors if not _is_missing_cert_file(x)]
        if rest:
            raise cfg.ConfigError(rest) from None
    # cfg.load parsed this file already: this second read cannot fail in a new way
    data = yaml.safe_load(p.read_text()) or {}
    base = p.resolve().parent
    if fqdn is None:  # config.load failed only for the missing certificate files
        fqdn = str(data["sbc"]["fqdn"]).strip().lower()
        cd = Path(data.get("certs_dir") or "certs")
        certs_dir = cd if cd.is_absolute() else base / cd
    if acme is None:
        r = SettingsReader(str(p), base)
        acme = parse_acme(r, data.get("acme"), sbc_fqdn=fqdn)
        r.raise_errors()
    return CertTarget(fqdn, Path(certs_dir), acme, source=str(p), teams_certificate=teams_cert)


def _print_outcome(out: Outcome) -> int:
    stream = sys.stdout if out.ok else sys.stderr
    print(out.line, file=stream)
    for d in out.details:
        print(f"{out.name}: {d}", file=stream)
    for n in out.notes:
        print(n if n.startswith(out.name) else f"{out.name}: {n}", file=stream)
    stream.flush()
    return EXIT_OK if out.ok else EXIT_FAILED


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    if verbose < 2:
        logging.getLogger("acme").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.WARNING)


def _run(args: argparse.Namespace, action) -> int:
    from teamsbc.config import ConfigError
    _setup_logging(args.verbose)
    try:
        target = load_target(args.config)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    if args.cert_command in ("issue", "renew"):
        # a store this user cannot write fails now, also when nothing is due (not at the
        # first real renewal, weeks later)
        from teamsbc import preflight
        findings = preflight.store_findings(target.certs_dir, target.name)
        if findings:
            preflight.report(findings, target.source, lambda line: print(line, file=sys.stderr))
            return EXIT_FAILED
    try:
        return action(target)
    except KeyboardInterrupt:
        print(f"teamsbc cert {args.cert_command}: interrupted; live certificate unchanged",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - operators get one line, -vv gets the traceback
        logging.getLogger("teamsbc.certs").debug("unexpected failure", exc_info=True)
        print(f"{target.name}: {args.cert_command} failed: {describe_error(e)}", file=sys.stderr)
        return EXIT_FAILED


def cmd_issue(args: argparse.Namespace) -> int:
    def action(target: CertTarget) -> int:
        mgr = CertManager(target, lock_timeout=args.lock_timeout)
        return _print_outcome(mgr.issue(dry_run=args.dry_run))
    return _run(args, action)


def cmd_renew(args: argparse.Namespace) -> int:
    def action(target: CertTarget) -> int:
        if args.no_jitter:
            jitter = 0.0
        elif args.jitter is not None:
            jitter = args.jitter
        elif args.force:   # "renew now" means now, also from a unit or cron
            jitter = 0.0
        else:   # certbot: spread load on the CA when run from a timer, not when a human waits
            jitter = DEFAULT_JITTER if sys.stdin is None or not sys.stdin.isatty() else 0.0
        mgr = CertManager(target, lock_timeout=args.lock_timeout)
        return _print_outcome(mgr.renew(force=args.force, dry_run=args.dry_run, jitter=jitter,
                                        deploy_hook=args.deploy_hook))
    return _run(args, action)


def cmd_status(args: argparse.Namespace) -> int:
    def action(target: CertTarget) -> int:
        rep = CertManager(target).status()
        for line in rep.lines:
            print(line)
        for w in rep.warnings:
            print(w, file=sys.stderr)
        return EXIT_OK if rep.ok else EXIT_FAILED
    return _run(args, action)


def _seconds(s: str) -> float:
    v = float(s)
    if not 0 <= v <= 86400:
        raise argparse.ArgumentTypeError(f"{s} is not 0-86400 seconds")
    return v


def register(subparsers) -> argparse.ArgumentParser:
    """Add `cert` (issue, renew, status) to teamsbc's sub-command parsers."""
    cert = subparsers.add_parser(
        "cert", help="get, renew and inspect the SBC certificate (ACME)",
        description="Certificates from an ACME CA (Let's Encrypt or any RFC 8555 CA) for "
                    "sbc.fqdn + acme.names, stored in certs_dir/live/<sbc.fqdn>/.")
    sub = cert.add_subparsers(dest="cert_command", required=True, metavar="{issue,renew,status}")

    def common(p: argparse.ArgumentParser, dry_help: str) -> None:
        p.add_argument("-c", "--config", required=True, help="the SBC's YAML config file")
        p.add_argument("--dry-run", action="store_true", help=dry_help)
        p.add_argument("-v", "--verbose", action="count", default=0,
                       help="log progress (-v) or everything including ACME traffic (-vv)")

    i = sub.add_parser("issue", help="get a certificate (nothing done when a valid one that is "
                                     "not due is installed)")
    common(i, "order from the staging CA (for Let's Encrypt) and run the gate; install nothing")
    i.add_argument("--lock-timeout", type=_seconds, default=LOCK_TIMEOUT, metavar="SECONDS",
                   help=f"wait this long for another cert command (default {LOCK_TIMEOUT:.0f})")
    i.set_defaults(func=cmd_issue)

    r = sub.add_parser("renew", help="renew when due (ARI or 2/3 of the lifetime); safe to run "
                                     "from a timer twice a day")
    common(r, "test a renewal now against the staging CA (for Let's Encrypt); install nothing, "
              "no deploy hook")
    r.add_argument("--force", action="store_true", help="renew even if not due")
    j = r.add_mutually_exclusive_group()
    j.add_argument("--no-jitter", action="store_true", help="never sleep before renewing")
    j.add_argument("--jitter", type=_seconds, metavar="SECONDS",
                   help=f"sleep a random 0..SECONDS before a due renewal (default: "
                        f"{DEFAULT_JITTER:.0f} when stdin is not a terminal, else 0)")
    r.add_argument("--deploy-hook", metavar="CMD",
                   help="shell command run after a successful renewal, e.g. "
                        "\"systemctl reload teamsbc\" (env TEAMSBC_CERT_FULLCHAIN, ..._PRIVKEY, "
                        "RENEWED_LINEAGE)")
    r.add_argument("--lock-timeout", type=_seconds, default=LOCK_TIMEOUT, metavar="SECONDS",
                   help=f"wait this long for another cert command (default {LOCK_TIMEOUT:.0f})")
    r.set_defaults(func=cmd_renew)

    s = sub.add_parser("status", help="the installed certificate: serial, expiry, days left, "
                                      "EKUs, issuer, whether renewal is due")
    common(s, "accepted for symmetry; status never changes anything")
    s.set_defaults(func=cmd_status)
    return cert


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="teamsbc")
    sub = p.add_subparsers(dest="command", required=True)
    register(sub)
    args = p.parse_args(argv)
    return args.func(args)
