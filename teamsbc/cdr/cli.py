"""`teamsbc cdr`: print or export call detail records (table, CSV, JSON), read-only, also
while the SBC writes (WAL readers do not block the writer)."""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable

from .export import format_rows, parse_time
from .settings import CdrError, settings_from_config_file
from .store import open_readonly, query


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (its cdr.url or cdr.path names the database)")
    p.add_argument("--db", help="the CDR database itself (instead of -c)")
    p.add_argument("--since", type=parse_time, help="calls set up at or after this time (ISO 8601; UTC without zone)")
    p.add_argument("--until", type=parse_time, help="calls set up before this time (ISO 8601; UTC without zone)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds `teamsbc cdr` to the CLI's subparsers."""
    p = subparsers.add_parser("cdr", help="print or export call detail records (table, CSV, JSON)")
    add_arguments(p)
    p.set_defaults(func=cmd_cdr)
    return p


def cmd_cdr(args: argparse.Namespace) -> int:
    try:
        if args.db:
            path = Path(args.db)
        elif args.config:
            settings = settings_from_config_file(args.config)
            if settings.url is not None:   # one PostgreSQL store for every box (docs/ha.md)
                from .pg import read_rows
                rows = read_rows(settings.url, args.since, args.until, args.limit)
                sys.stdout.write(format_rows(rows, args.format))
                return 0
            path = settings.path
        else:
            print("teamsbc cdr: give -c CONFIG or --db FILE", file=sys.stderr)
            return 2
        db = open_readonly(path)
        try:
            rows = query(db, args.since, args.until, args.limit)
        finally:
            db.close()
    except (CdrError, sqlite3.Error) as e:
        print(f"teamsbc cdr: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(format_rows(rows, args.format))
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="teamsbc cdr", description="print or export call detail records")
    add_arguments(p)
    return cmd_cdr(p.parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    sys.exit(main())
