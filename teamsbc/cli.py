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

LAB_FQDN = "sbc.teamsbc.test"


def lab_dir() -> Path:
    env = os.environ.get("TEAMSBC_LAB_DIR")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "teamsbc" / "lab"


def lab_config() -> cfg.Config:
    """The embedded lab default: loopback listeners, a lab PKI generated on first use."""
    from .labpki import ensure_lab_pki
    d = lab_dir()
    proxies = list(cfg.TEAMS_PROXIES["commercial"])
    pki = ensure_lab_pki(d, LAB_FQDN, proxies)
    data = {
        "sbc": {"fqdn": LAB_FQDN},
        "teams": {
            "listen": "127.0.0.1:5061",
            "certificate": str(pki.sbc_fullchain),
            "private_key": str(pki.sbc_key),
            "trusted_ca": str(pki.ca_cert),
            "proxies": proxies,
            "resolve": {p: f"127.0.0.1:{15061 + i}" for i, p in enumerate(proxies)},
        },
        "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.1:5080"},
    }
    return cfg.from_dict(data, source=f"<embedded lab default, PKI in {d}>", base=d)


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
    print(f"{c.source}: ok (sbc {c.sbc.fqdn}, teams {c.teams.listen}, pbx {c.pbx.transport} "
          f"{c.pbx.listen} -> {c.pbx.address})")
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
    import sqlite3

    from .admin import AdminConfigError
    from .app import serve
    from .cdr.settings import CdrError
    try:
        asyncio.run(serve(c))
    except TlsConfigError as e:
        log.error("TLS setup failed: %s", e)
        return 2
    except (CdrError, sqlite3.Error) as e:
        log.error("call detail records unusable: %s", e)
        return 2
    except AdminConfigError as e:
        log.error("admin API refused: %s", e)
        return 2
    except OSError as e:
        log.error("cannot start: %s", e.strerror or e)
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
