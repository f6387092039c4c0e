"""`teamsbc cdr`: print or export call detail records (table, CSV, JSON), read-only, also
while the SBC writes (WAL readers do not block the writer)."""
from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from ..timefmt import iso_utc
from .settings import CdrError, settings_from_config_file
from .store import COLUMNS, TIME_COLUMNS, open_readonly, query


def parse_time(text: str) -> float:
    """ISO 8601 date or date-time -> Unix time; without a zone it is UTC."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2024-05-01 or 2024-05-01T13:00:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def export_rows(rows: list[dict]) -> list[dict]:
    """Rows with ISO times and duration, as `teamsbc cdr` prints them."""
    out = []
    for r in rows:
        e = dict(r)
        for k in TIME_COLUMNS:
            e[k] = iso_utc(r[k])
        e["duration"] = (round(r["end_time"] - r["answer_time"], 3)
                         if r["answer_time"] is not None and r["end_time"] is not None else None)
        e["media"] = json.loads(r["media"]) if r["media"] else None
        out.append(e)
    return out


def format_rows(rows: list[dict], fmt: str) -> str:
    rows = export_rows(rows)
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        fields = [c for c in COLUMNS if c != "media"] + ["duration"]
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
        return buf.getvalue()
    head = ("setup (UTC)", "direction", "caller", "callee", "status", "answered", "duration",
            "ended by", "call-id")
    table = [head]
    for r in rows:
        table.append((r["setup_time"] or "", r["direction"], r["caller"] or "", r["callee"] or "",
                      f"{r['status'] or ''} {r['reason'] or ''}".strip(),
                      (r["answer_time"] or "")[11:23], "" if r["duration"] is None else f"{r['duration']:.1f}s",
                      r["ended_by"] or "", r["call_id"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    lines.append(f"{len(rows)} call(s)")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config (its cdr.path names the database)")
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
            path = settings_from_config_file(args.config).path
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
