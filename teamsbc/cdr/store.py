"""Call detail records in SQLite: the schema, its migrations, and the store that writes rows.

    store = CdrStore(Path("/var/lib/teamsbc/cdr.sqlite"))     # WAL, schema migrated on open
    store.begin(); store.insert(...); store.commit()           # the writer thread (writer.py)
    store.query(since=t0, until=t1) -> [dict]                  # its own read connection

Schema (version in `PRAGMA user_version`, migrations applied on open, in a transaction):
    calls(id, call_id, direction, tenant, caller, callee, setup_time, answer_time, end_time,
          status, reason, ended_by, rtp_packets, rtp_bytes, rtp_errors, caller_packets,
          caller_bytes, callee_packets, callee_bytes, media)
Times are Unix seconds (UTC). `status` is the final status of the INVITE (200 once answered).
`ended_by`: for answered calls the leg whose BYE ended it ('teams' | 'pbx'), 'sbc' when the
SBC tore the call down (media failure); for unanswered calls the caller's leg when the caller
cancelled (487), otherwise NULL (the callee or the SBC refused: see status and reason).
Media columns come from rtpengine's delete reply when it carries statistics; caller_* and
callee_* are what rtpengine received from each party's endpoint, told apart by the labels the
initial offer and its answer set (teamsbc.media.stats), RTP streams only (rtcp-mux included).

With WAL and `synchronous=NORMAL` a commit is in the WAL file when `commit()` returns, so a
crash of the process (kill -9, OOM) loses nothing committed; only a power loss or kernel crash
can lose the last commits (`cdr.synchronous: full` fsyncs every commit).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ..events import MediaStats
from .search import check_limit, where
from .settings import CdrError

log = logging.getLogger("teamsbc.cdr")

SCHEMA_VERSION = 1
CHECKPOINT_INTERVAL = 1.0  # s between background WAL checkpoints

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





# ---------------------------------------------------------------------- store

class CdrStore:
    """One SQLite database. Writes come from one thread (the CDR writer) and are grouped by
    begin()/commit(); reads (`query`) use a second connection, so the admin API and `teamsbc
    cdr` never wait for a write in progress."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, synchronous: str = "normal",
                 migrations: Sequence[tuple[int, list[str]]] = MIGRATIONS,
                 checkpoint_interval: float | None = CHECKPOINT_INTERVAL):
        """`checkpoint_interval`: seconds between WAL checkpoints run by a background thread
        on its own connection (the checkpoint's fsyncs then never stall the event loop in
        the middle of a call); None leaves SQLite's automatic checkpoint in the commits."""
        self.path = Path(path)
        if synchronous not in ("normal", "full"):
            raise CdrError(f"synchronous must be normal or full, not {synchronous!r}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit unless begin(): statements outside a batch commit on their own
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except (OSError, sqlite3.Error) as e:
            raise CdrError(f"{self.path}: cannot open the CDR database: {e} (cdr.path; the SBC's user "
                           f"must be able to write that directory)") from None
        if str(mode).lower() != "wal":
            raise CdrError(f"{self.path}: cannot use WAL journaling (got {mode}); use a local file system")
        self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.db.execute("PRAGMA busy_timeout=2000")
        self.version = migrate(self.db, migrations)
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
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
        for db in (self.db, self._reader):
            try:
                if db is not None:
                    db.close()
            except sqlite3.Error:
                pass

    # --- writes: between begin() and commit() they are one transaction
    def begin(self) -> None:
        self.db.execute("BEGIN")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction left to roll back
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

    # --- reads (their own connection: never inside the writer's transaction)
    def query(self, since: float | None = None, until: float | None = None,
              limit: int | None = None, *, newest: bool = False) -> list[dict]:
        with self._read_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._reader.execute("PRAGMA busy_timeout=2000")
            return query(self._reader, since, until, limit, newest=newest)

    def search(self, **terms: object) -> list[dict]:
        """`search` on this database (number, since, until, result, call_id, limit)."""
        return search(self.path, **terms)  # type: ignore[arg-type]


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
        log.info("CDR database: schema version %d", version)
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

def media_columns(stats: MediaStats) -> dict | None:
    """The calls columns of rtpengine's statistics (teamsbc.media.stats), None when empty."""
    if stats.empty:
        return None
    out: dict[str, Any] = {f"rtp_{k}": v for k, v in stats.rtp.items()}
    if stats.caller is not None:
        out["caller_packets"], out["caller_bytes"] = stats.caller.packets, stats.caller.bytes
    if stats.callee is not None:
        out["callee_packets"], out["callee_bytes"] = stats.callee.packets, stats.callee.bytes
    out["media"] = json.dumps({"totals": stats.totals, "tags": [asdict(t) for t in stats.legs]},
                              separators=(",", ":"))
    return out


def search(path: str | Path, *, since: float | None = None, until: float | None = None,
           number: str | None = None, result: str | None = None, call_id: str | None = None,
           limit: int = 1000) -> list[dict]:
    check_limit(limit)
    sql_where, args = where(since=since, until=until, number=number, result=result, call_id=call_id)
    try:
        db = open_readonly(path)
    except CdrError:
        return []       # no database yet: nothing was recorded
    try:
        db.execute("PRAGMA busy_timeout=2000")
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM calls{sql_where} "
                          f"ORDER BY setup_time DESC, id DESC LIMIT {int(limit)}", args).fetchall()
    finally:
        db.close()
    return [dict(zip(COLUMNS, r)) for r in reversed(rows)]
