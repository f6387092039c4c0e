"""Call detail records in SQLite: one row per call, written as the call happens.

    store = CdrStore(Path("/var/lib/teamsbc/cdr.sqlite"))     # WAL, schema migrated on open
    observers.add(CdrObserver(store))                          # the core's events -> rows
    store.query(since=t0, until=t1) -> [dict]                  # what `teamsbc cdr` prints

Durability: every event is its own committed transaction, written before the observer
returns (a row at call start, updated at answer, failure and end). With WAL and
`synchronous=NORMAL` a commit is in the WAL file before the call goes on, so a crash of the
process (kill -9, OOM) loses nothing committed; only a power loss or kernel crash can lose
the last commits (set `cdr.synchronous: full` to fsync every commit, at a cost: see
docs/operations.md for the measured numbers).

Schema (version in `PRAGMA user_version`, migrations applied on open, in a transaction):
    calls(id, call_id, direction, tenant, caller, callee, setup_time, answer_time, end_time,
          status, reason, ended_by, rtp_packets, rtp_bytes, rtp_errors, caller_packets,
          caller_bytes, callee_packets, callee_bytes, media)
Times are Unix seconds (UTC). `status` is the final status of the INVITE (200 once answered).
`ended_by`: for answered calls the leg whose BYE ended it ('teams' | 'pbx'), 'sbc' when the
SBC tore the call down (media failure); for unanswered calls the caller's leg when the caller
cancelled (487), otherwise NULL (the callee or the SBC refused: see status and reason).
Media columns come from rtpengine's delete reply when it carries statistics.

Config (proposed): `cdr: {enabled: true, path: cdr.sqlite, synchronous: normal}`; a relative
path is relative to the config file's directory.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sqlite3
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from .events import Observer

log = logging.getLogger("teamsbc.cdr")

SCHEMA_VERSION = 1
DEFAULT_PATH = "cdr.sqlite"
CHECKPOINT_INTERVAL = 1.0  # s between background WAL checkpoints
MAX_OPEN = 100_000  # calls remembered in memory (call-id -> row); older ones are found by query

# Each migration takes the database from version n-1 to n. Never edit a released one: add.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            call_id TEXT NOT NULL,
            direction TEXT NOT NULL,
            tenant TEXT,
            caller TEXT,
            callee TEXT,
            setup_time REAL NOT NULL,
            answer_time REAL,
            end_time REAL,
            status INTEGER,
            reason TEXT,
            ended_by TEXT,
            rtp_packets INTEGER,
            rtp_bytes INTEGER,
            rtp_errors INTEGER,
            caller_packets INTEGER,
            caller_bytes INTEGER,
            callee_packets INTEGER,
            callee_bytes INTEGER,
            media TEXT
        )""",
        "CREATE INDEX calls_setup_time ON calls(setup_time)",
        "CREATE INDEX calls_call_id ON calls(call_id)",
    ]),
]

COLUMNS = ("id", "call_id", "direction", "tenant", "caller", "callee", "setup_time", "answer_time",
           "end_time", "status", "reason", "ended_by", "rtp_packets", "rtp_bytes", "rtp_errors",
           "caller_packets", "caller_bytes", "callee_packets", "callee_bytes", "media")
TIME_COLUMNS = ("setup_time", "answer_time", "end_time")


class CdrError(Exception):
    pass


# ---------------------------------------------------------------------- settings

@dataclass(frozen=True, slots=True)
class CdrSettings:
    enabled: bool = True
    path: Path = Path(DEFAULT_PATH)
    synchronous: str = "normal"     # normal | full


def parse_settings(section: Any, base: Path) -> tuple[CdrSettings, list[tuple[str, str]]]:
    """The `cdr` section -> settings and [(key, problem)] (for config.py's error list)."""
    errors: list[tuple[str, str]] = []
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return CdrSettings(path=base / DEFAULT_PATH), [("cdr", "must be a mapping {enabled, path, synchronous}")]
    for k in section:
        if k not in ("enabled", "path", "synchronous"):
            errors.append((f"cdr.{k}", "unknown key (known: enabled, path, synchronous)"))
    enabled = section.get("enabled", True)
    if not isinstance(enabled, bool):
        errors.append(("cdr.enabled", f"must be true or false, got {enabled!r}"))
        enabled = True
    p = section.get("path", DEFAULT_PATH)
    if not isinstance(p, str) or not p.strip():
        errors.append(("cdr.path", f"must be a file path like /var/lib/teamsbc/cdr.sqlite, got {p!r}"))
        p = DEFAULT_PATH
    path = Path(p)
    if not path.is_absolute():
        path = base / path
    sync = section.get("synchronous", "normal")
    if sync not in ("normal", "full"):
        errors.append(("cdr.synchronous", f"{sync!r} is not one of normal, full"))
        sync = "normal"
    return CdrSettings(enabled, path, sync), errors


def settings_from_config_file(config_path: str | Path) -> CdrSettings:
    """Only the `cdr` section of a config file (the rest is not validated: `teamsbc cdr` must
    work on a box whose certificates are missing)."""
    import yaml
    p = Path(config_path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise CdrError(f"{p}: cannot read the config: {e}") from None
    if not isinstance(data, dict):
        raise CdrError(f"{p}: top level must be a mapping")
    settings, errors = parse_settings(data.get("cdr"), p.resolve().parent)
    if errors:
        raise CdrError("\n".join(f"{p}: {k}: {m}" for k, m in errors))
    return settings


# ---------------------------------------------------------------------- store

class CdrStore:
    def __init__(self, path: str | Path, *, synchronous: str = "normal",
                 migrations: Sequence[tuple[int, list[str]]] = MIGRATIONS,
                 checkpoint_interval: float | None = CHECKPOINT_INTERVAL):
        """`checkpoint_interval`: seconds between WAL checkpoints run by a background thread
        on its own connection (the checkpoint's fsyncs then never stall the event loop in
        the middle of a call); None leaves SQLite's automatic checkpoint in the commits."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if synchronous not in ("normal", "full"):
            raise CdrError(f"synchronous must be normal or full, not {synchronous!r}")
        # autocommit: each statement below is its own committed transaction
        self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise CdrError(f"{self.path}: cannot use WAL journaling (got {mode}); use a local file system")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.db.execute("PRAGMA busy_timeout=2000")
        self.version = migrate(self.db, migrations)
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if checkpoint_interval:
            self.db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, args=(checkpoint_interval,),
                                                  name="cdr-checkpoint", daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self, interval: float) -> None:
        db = sqlite3.connect(str(self.path), isolation_level=None)
        db.execute("PRAGMA busy_timeout=2000")
        try:
            while not self._stop.wait(interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as e:  # busy: next time
                    log.debug("CDR checkpoint skipped: %s", e)
        finally:
            db.close()

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=5)
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        try:
            self.db.close()
        except sqlite3.Error:
            pass

    # --- writes (each one committed before returning)
    def insert(self, call_id: str, direction: str, tenant: str | None, caller: str, callee: str,
               setup: float) -> int:
        cur = self.db.execute(
            "INSERT INTO calls (call_id, direction, tenant, caller, callee, setup_time) VALUES (?,?,?,?,?,?)",
            (call_id, direction, tenant, caller, callee, setup))
        return int(cur.lastrowid)  # type: ignore[arg-type]

    def answered(self, row: int, at: float) -> None:
        self.db.execute("UPDATE calls SET answer_time=?, status=200, reason='OK' WHERE id=? AND answer_time IS NULL",
                        (at, row))

    def failed(self, row: int, status: int, reason: str, at: float, ended_by: str | None) -> None:
        self.db.execute("UPDATE calls SET end_time=?, status=?, reason=?, ended_by=? WHERE id=? AND end_time IS NULL",
                        (at, status, reason, ended_by, row))

    def ended(self, row: int | None, call_id: str, by: str, at: float) -> bool:
        """A BYE ended the call. Without the row (a call older than this process, e.g. set up
        before a restart), the latest open answered row of that Call-ID is closed."""
        if row is None:
            row = self._latest(call_id, "answer_time IS NOT NULL AND end_time IS NULL")
            if row is None:
                return False
        cur = self.db.execute("UPDATE calls SET end_time=?, ended_by=? WHERE id=? AND end_time IS NULL",
                              (at, by, row))
        return cur.rowcount > 0

    def media(self, call_id: str, stats: dict) -> bool:
        row = self._latest(call_id, "1")
        if row is None:
            return False
        cols = ", ".join(f"{k}=?" for k in stats)
        self.db.execute(f"UPDATE calls SET {cols} WHERE id=?", (*stats.values(), row))
        return True

    def _latest(self, call_id: str, where: str) -> int | None:
        r = self.db.execute(f"SELECT id FROM calls WHERE call_id=? AND {where} ORDER BY id DESC LIMIT 1",
                            (call_id,)).fetchone()
        return r[0] if r else None

    # --- reads
    def query(self, since: float | None = None, until: float | None = None,
              limit: int | None = None, *, newest: bool = False) -> list[dict]:
        return query(self.db, since, until, limit, newest=newest)


def migrate(db: sqlite3.Connection, migrations: Sequence[tuple[int, list[str]]] = MIGRATIONS) -> int:
    """Bring the database to the newest version in `migrations`; returns that version.
    A database from a newer teamsbc is refused (never silently downgraded)."""
    current = db.execute("PRAGMA user_version").fetchone()[0]
    newest = max((v for v, _ in migrations), default=0)
    if current > newest:
        raise CdrError(f"CDR database schema version {current} is newer than this teamsbc knows "
                       f"({newest}): upgrade teamsbc or use another cdr.path")
    for version, statements in sorted(migrations):
        if version <= current:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in statements:
                db.execute(stmt)
            db.execute(f"PRAGMA user_version={int(version)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("CDR database %s: schema version %d", getattr(db, "path", ""), version)
        current = version
    return current


def query(db: sqlite3.Connection, since: float | None = None, until: float | None = None,
          limit: int | None = None, *, newest: bool = False) -> list[dict]:
    """Rows by setup time, oldest first; with `newest`, the last `limit` of them."""
    where, args = [], []
    if since is not None:
        where.append("setup_time >= ?")
        args.append(since)
    if until is not None:
        where.append("setup_time < ?")
        args.append(until)
    sql = f"SELECT {', '.join(COLUMNS)} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY setup_time DESC, id DESC" if newest else " ORDER BY setup_time, id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = [dict(zip(COLUMNS, r)) for r in db.execute(sql, args)]
    return rows[::-1] if newest else rows


def open_readonly(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.exists():
        raise CdrError(f"no CDR database at {p} (cdr.path; it is created when the SBC starts)")
    db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CdrError(f"CDR database schema version {version} is newer than this teamsbc knows ({SCHEMA_VERSION})")
    if version < 1:
        raise CdrError(f"{p} is not a teamsbc CDR database (schema version {version})")
    return db


# ---------------------------------------------------------------------- media statistics

def media_stats(reply: Any) -> dict | None:
    """Columns from rtpengine's delete (or query) reply, or None when it has no statistics
    (rtpengine 10.5 answers a delete with only a call-id with bare {"result": "ok"}; a
    delete with the from-tag carries the statistics).

    caller_* / callee_*: what rtpengine received FROM the caller's / callee's endpoints (RTP
    streams only). rtpengine lists a call's tags in creation order: the first one is the
    offerer of the initial INVITE, i.e. the caller."""
    if not isinstance(reply, dict):
        return None
    totals = reply.get("totals") if isinstance(reply.get("totals"), dict) else {}
    tags = reply.get("tags") if isinstance(reply.get("tags"), dict) else {}
    if not totals and not tags:
        return None
    out: dict[str, Any] = {}
    rtp = totals.get("RTP") if isinstance(totals.get("RTP"), dict) else {}
    for k in ("packets", "bytes", "errors"):
        if isinstance(rtp.get(k), int):
            out[f"rtp_{k}"] = rtp[k]
    per_tag = []
    for tag, t in tags.items():
        if not isinstance(t, dict):
            continue
        packets = bytes_ = errors = 0
        endpoint = local = None
        for m in t.get("medias") or []:
            for s in (m.get("streams") or []) if isinstance(m, dict) else []:
                if not isinstance(s, dict) or "RTCP" in (s.get("flags") or []):
                    continue
                st = s.get("stats") or {}
                packets += int(st.get("packets") or 0)
                bytes_ += int(st.get("bytes") or 0)
                errors += int(st.get("errors") or 0)
                ep = s.get("endpoint") or {}
                if endpoint is None and ep.get("address"):
                    endpoint = f"{ep.get('address')}:{ep.get('port')}"
                    local = f"{s.get('local address')}:{s.get('local port')}"
        per_tag.append({"tag": str(tag), "endpoint": endpoint, "local": local,
                        "packets": packets, "bytes": bytes_, "errors": errors})
    if per_tag:
        out["caller_packets"], out["caller_bytes"] = per_tag[0]["packets"], per_tag[0]["bytes"]
        if len(per_tag) > 1:
            out["callee_packets"] = sum(t["packets"] for t in per_tag[1:])
            out["callee_bytes"] = sum(t["bytes"] for t in per_tag[1:])
    out["media"] = json.dumps({"totals": totals, "tags": per_tag}, separators=(",", ":"))
    return out


# ---------------------------------------------------------------------- observer

class CdrObserver(Observer):
    """Writes one row per call from the core's events (committed before returning)."""

    def __init__(self, store: CdrStore, *, max_open: int = MAX_OPEN):
        self.store = store
        self.open: dict[str, tuple[int, str]] = {}   # call-id -> (row id, direction)
        self.max_open = max_open
        self.errors = 0

    def call_started(self, call_id: str, direction: str, tenant: str | None, caller: str,
                     callee: str, wall: float) -> None:
        if call_id in self.open:
            return
        row = self.store.insert(call_id, direction, tenant, caller, callee, wall)
        if len(self.open) >= self.max_open:
            del self.open[next(iter(self.open))]
        self.open[call_id] = (row, direction)

    def call_answered(self, call_id: str, wall: float) -> None:
        entry = self.open.get(call_id)
        if entry is not None:
            self.store.answered(entry[0], wall)

    def call_failed(self, call_id: str, status: int, reason: str, wall: float) -> None:
        entry = self.open.pop(call_id, None)
        if entry is None:
            return
        row, direction = entry
        by = None
        if "(media)" in reason:
            by = "sbc"
        elif status == 487:
            by = direction.split("->", 1)[0]   # the caller cancelled
        self.store.failed(row, status, reason, wall, by)

    def call_ended(self, call_id: str, by: str, wall: float) -> None:
        entry = self.open.pop(call_id, None)
        self.store.ended(entry[0] if entry else None, call_id, by, wall)

    def media_deleted(self, call_id: str, reply: dict) -> None:
        stats = media_stats(reply)
        if stats:
            self.store.media(call_id, stats)


# ---------------------------------------------------------------------- `teamsbc cdr`

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


def iso_utc(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def export_rows(rows: list[dict]) -> list[dict]:
    """Rows with ISO times and duration, as `teamsbc cdr` prints them."""
    out = []
    for r in rows:
        e = dict(r)
        for k in TIME_COLUMNS:
            e[k] = iso_utc(r[k]) or None
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
