"""Command line: `teamsbc run`, `teamsbc check`, `teamsbc status`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from . import __version__, config as cfg
from .tls import TlsConfigError

from .labdefault import LAB_FQDN, lab_config, lab_dir  # noqa: F401  (`teamsbc run` without -c)


def _load(path: str | None) -> cfg.Config:
    return lab_config() if path is None else cfg.load(path)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")


def cmd_check(args: argparse.Namespace) -> int:
    try:
        c = _load(args.config)
    except cfg.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    from . import preflight  # what run refuses at start, refused here too
    if preflight.report(preflight.run_checks(c), c.source, lambda line: print(line, file=sys.stderr)):
        return 2
    sealing = "sbc.secret" if c.sbc.secret is not None else f"this box's own secret in {c.sbc.secret_file}"
    print(f"{c.source}: ok (sbc {c.sbc.fqdn}, teams {c.teams.listen}, pbx {c.pbx.transport} "
          f"{c.pbx.listen} -> {c.pbx.address}; sealing with {sealing})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    try:
        c = _load(args.config)
    except cfg.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    _setup_logging(args.log_level or c.log.level)
    log = logging.getLogger("teamsbc")
    log.info("teamsbc %s starting with %s", __version__, c.source)
    from . import preflight  # the same checks as `teamsbc check`
    findings = preflight.run_checks(c)
    for f in findings:
        (log.error if f.error else log.warning)("%s: %s: %s%s (fix: %s)", c.source, f.key,
                                               "" if f.error else "warning: ", f.problem, f.fix)
    if any(f.error for f in findings):
        return 2
    import sqlite3

    from .admin import AdminConfigError
    from .app import serve
    from .cdr.settings import CdrError
    from .keyfile import SecretFileError
    try:
        if args.config is None:
            from .labdefault import serve_with_peers
            asyncio.run(serve_with_peers(c))   # the lab: simulated Teams and PBX too
        else:
            team = None
            if c.sbc.workers > 1:  # before any loop or thread: fork is only safe here
                from .addresses import bind_udp
                from .keyfile import keyring
                from .workers import fork_workers
                keyring(c.sbc)  # a first start creates the secret file once, not once per worker
                udp = bind_udp(c.pbx.listen.host, c.pbx.listen.port) if c.pbx.transport == "udp" else None
                team = fork_workers(c.sbc.workers, udp)
            asyncio.run(serve(c, team=team))
            if team is not None and not team.primary:
                logging.shutdown()
                os._exit(0)  # a forked worker: nothing of the parent's exit path is ours
    except SecretFileError as e:
        log.error("sealing secret unusable: %s", e)
        return 2
    except TlsConfigError as e:
        log.error("TLS setup failed: %s", e)
        return 2
    except (CdrError, sqlite3.Error) as e:
        log.error("%s: cdr.path: call detail records unusable: %s: %s", c.source, c.cdr.path, e)
        return 2
    except AdminConfigError as e:
        log.error("admin API refused: %s", e)
        return 2
    except OSError as e:
        log.error("cannot start: %s", f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or e))
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .console.term import run
    try:
        c = _load(args.config)
    except cfg.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 2
    return run(c, as_json=args.json, watch=args.watch, interval=args.interval)


def _interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.5 <= v <= 3600:
        raise argparse.ArgumentTypeError("must be 0.5-3600 seconds")
    return v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="teamsbc", description="Microsoft Teams Direct Routing SBC")
    p.add_argument("--version", action="version", version=f"teamsbc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the SBC in the foreground (SIGTERM = graceful stop)")
    r.add_argument("-c", "--config", help="YAML config; without it the embedded lab default on loopback")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    r.set_defaults(func=cmd_run)
    ch = sub.add_parser("check", help="validate a config file (exit 0 valid, 2 with the errors)")
    ch.add_argument("-c", "--config", required=True)
    ch.set_defaults(func=cmd_check)
    st = sub.add_parser("status", help="the running SBC at a glance: certificate, Teams proxies, PBX, "
                                       "rtpengine, calls, alarms (exit 3 when it is not running)")
    st.add_argument("-c", "--config", help="YAML config; without it the embedded lab default, like run")
    st.add_argument("--json", action="store_true", help="the admin API's GET /status answer, for scripts")
    st.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    st.add_argument("--interval", type=_interval, default=2.0, metavar="SECONDS",
                    help="seconds between refreshes with --watch (default 2)")
    st.set_defaults(func=cmd_status)
    from . import demo, doctor, teams_setup
    from .certs.cli import register as register_cert
    register_cert(sub)
    doctor.register(sub)
    teams_setup.register(sub)
    demo.register(sub)
    from .cdr.cli import register as register_cdr
    register_cdr(sub)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
