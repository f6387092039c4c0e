"""CDR rows as people read them: ISO times in UTC, the duration, a table, CSV or JSON
(`teamsbc cdr` and the admin API's `GET /cdr`)."""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
from datetime import datetime, timezone

from ..timefmt import iso_utc
from .store import COLUMNS, TIME_COLUMNS


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


_PLAIN_NUMBER = re.compile(r"[+-]?[0-9.]+\Z")


def csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run: caller and callee come from SIP headers, and a
    cell starting with = + - @ is a formula to Excel and LibreOffice (OWASP "CSV Injection").
    Such a cell gets a leading apostrophe, unless it is a plain number (+4420...)."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "@", "\t", "\r") or (text[:1] in ("+", "-") and not _PLAIN_NUMBER.match(text)):
        return "'" + text
    return text


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
            w.writerow({k: csv_cell(r.get(k)) for k in fields})
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
