"""Call detail records in PostgreSQL (`cdr.url`): one store for every box of a pair.

Same table and columns as the SQLite store (store.py), the same `CdrBackend` methods for the
writer thread (writer.py), the same rows for `teamsbc cdr` and the admin API's `GET /cdr`.

Driver: psycopg 3, synchronous. The writer is one thread that applies a batch in one
transaction and blocks on nothing else, so a blocking driver fits it exactly; an async driver
(asyncpg, psycopg's async mode) would need an event loop in that thread for no gain, or would
put database round trips on the SIP event loop, which is what the writer exists to avoid.

A box that loses the database keeps calling: a failed batch is rolled back and retried by the
writer (nothing lost, the backlog written once the server is back). The connection is opened
lazily and again after any connection error, so the SBC also starts while PostgreSQL is down.
A commit whose answer was lost may have been applied: the retry must not apply it twice, so
every write is idempotent (an insert finds the row a lost commit created, updates only fill
what is still empty).

Schema versions live in `cdr_schema`; migrations run in one transaction under an advisory
lock, so two boxes starting together do not both create the table.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from .search import check_limit, where
from .settings import CdrError, PgUrl
from .store import COLUMNS

log = logging.getLogger("teamsbc.cdr")

CONNECT_TIMEOUT = 3          # s; the writer retries every second after that
MIGRATION_LOCK = 0x7473_6263  # pg_advisory_xact_lock key ("tsbc")

MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE calls (
            id BIGSERIAL PRIMARY KEY,
            call_id TEXT NOT NULL,
            direction TEXT NOT NULL,
            tenant TEXT,
            caller TEXT,
            callee TEXT,
            setup_time DOUBLE PRECISION NOT NULL,
            answer_time DOUBLE PRECISION,
            end_time DOUBLE PRECISION,
            status INTEGER,
            reason TEXT,
            ended_by TEXT,
            rtp_packets BIGINT,
            rtp_bytes BIGINT,
            rtp_errors BIGINT,
            caller_packets BIGINT,
            caller_bytes BIGINT,
            callee_packets BIGINT,
            callee_bytes BIGINT,
            media TEXT
        )""",
        "CREATE INDEX calls_setup_time ON calls(setup_time)",
        # a commit whose answer was lost is retried: the same call start must not make two rows
        "CREATE UNIQUE INDEX calls_call_id_setup ON calls(call_id, setup_time)",
    ]),
]
MEDIA_COLUMNS = frozenset(COLUMNS) - {"id", "call_id", "direction", "tenant", "caller", "callee",
                                      "setup_time", "answer_time", "end_time", "status", "reason",
                                      "ended_by"}


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise CdrError("cdr.url needs the PostgreSQL driver psycopg 3: pip install 'teamsbc[postgresql]' "
                       "(or remove cdr.url to keep CDRs in SQLite)") from None
    return psycopg


def connect(url: PgUrl, *, timeout: float = CONNECT_TIMEOUT):
    psycopg = _psycopg()
    return psycopg.connect(**url.connect_kwargs(), connect_timeout=max(1, int(timeout)),
                           application_name="teamsbc")


def migrate(db) -> int:
    """Bring the database to the newest version; a newer one is refused."""
    newest = max(v for v, _ in MIGRATIONS)
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS cdr_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT max(version) FROM cdr_schema").fetchone()
        current = row[0] or 0
        if current > newest:
            raise CdrError(f"CDR database schema version {current} is newer than this teamsbc knows "
                           f"({newest}): upgrade teamsbc")
        for version, statements in MIGRATIONS:
            if version > current:
                for stmt in statements:
                    db.execute(stmt)
                db.execute("INSERT INTO cdr_schema (version) VALUES (%s)", (version,))
                log.info("CDR database (PostgreSQL): schema version %d", version)
                current = version
    return current


class PgStore:
    """The CdrBackend of writer.py over PostgreSQL; reads (`query`) on a connection of their own."""

    def __init__(self, url: PgUrl):
        self.url = url
        self.errors: tuple[type[BaseException], ...] = (_psycopg().Error,)
        self.db: Any = None
        self._reader: Any = None
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PgStore {self.url}>"

    def _connection(self):
        if self.db is None or self.db.closed or self.db.broken:
            self._drop()
            db = connect(self.url)
            migrate(db)
            self.db = db
        return self.db

    def _drop(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close
                pass
        self.db = None

    # --- writes: begin() .. commit() is one transaction (psycopg opens it on the first statement)
    def begin(self) -> None:
        self._connection()

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        try:
            if self.db is not None and not self.db.broken:
                self.db.rollback()
                return
        except Exception:  # noqa: BLE001
            pass
        self._drop()   # lost connection: the next begin() opens a new one

    def insert(self, call_id: str, direction: str, tenant: str | None, caller: str, callee: str,
               setup: float) -> int:
        row = self.db.execute(
            "INSERT INTO calls (call_id, direction, tenant, caller, callee, setup_time) "
            "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (call_id, setup_time) "
            "DO UPDATE SET call_id = EXCLUDED.call_id RETURNING id",
            (call_id, direction, tenant, caller, callee, setup)).fetchone()
        return int(row[0])

    def answered(self, row: int, at: float) -> None:
        self.db.execute("UPDATE calls SET answer_time=%s, status=200, reason='OK' "
                        "WHERE id=%s AND answer_time IS NULL", (at, row))

    def failed(self, row: int, status: int, reason: str, at: float, ended_by: str | None) -> None:
        self.db.execute("UPDATE calls SET end_time=%s, status=%s, reason=%s, ended_by=%s "
                        "WHERE id=%s AND end_time IS NULL", (at, status, reason, ended_by, row))

    def ended(self, row: int | None, call_id: str, by: str, at: float) -> bool:
        """A BYE ended the call. Without the row (set up by another box, or before a restart)
        the latest answered, open row of that Call-ID is closed."""
        if row is None:
            row = self._latest(call_id, "answer_time IS NOT NULL AND end_time IS NULL")
            if row is None:
                return False
        cur = self.db.execute("UPDATE calls SET end_time=%s, ended_by=%s WHERE id=%s AND end_time IS NULL",
                              (at, by, row))
        return cur.rowcount > 0

    def media(self, call_id: str, stats: dict) -> bool:
        row = self._latest(call_id, "TRUE")
        if row is None:
            return False
        unknown = set(stats) - MEDIA_COLUMNS
        if unknown:
            raise CdrError(f"not media columns: {sorted(unknown)}")
        cols = ", ".join(f"{k}=%s" for k in stats)
        self.db.execute(f"UPDATE calls SET {cols} WHERE id=%s", (*stats.values(), row))
        return True

    def _latest(self, call_id: str, where: str) -> int | None:
        r = self.db.execute(f"SELECT id FROM calls WHERE call_id=%s AND {where} ORDER BY id DESC LIMIT 1",
                            (call_id,)).fetchone()
        return r[0] if r else None

    def close(self) -> None:
        self._drop()
        with self._read_lock:
            if self._reader is not None:
                try:
                    self._reader.close()
                except Exception:  # noqa: BLE001
                    pass
                self._reader = None

    # --- reads
    def query(self, since: float | None = None, until: float | None = None,
              limit: int | None = None, *, newest: bool = False) -> list[dict]:
        with self._read_lock:
            if self._reader is None or self._reader.closed or self._reader.broken:
                self._reader = connect(self.url)
                self._reader.autocommit = True
            try:
                return query(self._reader, since, until, limit, newest=newest)
            except self.errors:
                self._reader.close()
                self._reader = None
                raise

    def search(self, *, since: float | None = None, until: float | None = None,
               number: str | None = None, result: str | None = None, call_id: str | None = None,
               limit: int = 1000) -> list[dict]:
        """cdr.search's terms on PostgreSQL (same WHERE clause, its dialect)."""
        check_limit(limit)
        sql_where, args = where(since=since, until=until, number=number, result=result,
                                call_id=call_id, dialect="postgresql")
        with self._read_lock:
            if self._reader is None or self._reader.closed or self._reader.broken:
                self._reader = connect(self.url)
                self._reader.autocommit = True
            try:
                rows = self._reader.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM calls{sql_where} "
                    f"ORDER BY setup_time DESC, id DESC LIMIT {int(limit)}", args).fetchall()
            except self.errors:
                self._reader.close()
                self._reader = None
                raise
        return [dict(zip(COLUMNS, r)) for r in reversed(rows)]


def query(db, since: float | None = None, until: float | None = None,
          limit: int | None = None, *, newest: bool = False) -> list[dict]:
    """Rows by setup time, oldest first; with `newest`, the last `limit` of them (store.query)."""
    where, args = [], []
    if since is not None:
        where.append("setup_time >= %s")
        args.append(since)
    if until is not None:
        where.append("setup_time < %s")
        args.append(until)
    sql = f"SELECT {', '.join(COLUMNS)} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY setup_time DESC, id DESC" if newest else " ORDER BY setup_time, id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = [dict(zip(COLUMNS, r)) for r in db.execute(sql, args)]
    return rows[::-1] if newest else rows


def read_rows(url: PgUrl, since: float | None, until: float | None, limit: int | None) -> list[dict]:
    """`teamsbc cdr` with cdr.url: read-only, errors as CdrError (password never shown)."""
    psycopg = _psycopg()
    try:
        with connect(url) as db:
            db.read_only = True
            row = db.execute("SELECT to_regclass('cdr_schema') IS NOT NULL").fetchone()
            if not row[0]:
                raise CdrError(f"{url}: no teamsbc CDR tables yet (they are created when the SBC starts)")
            return query(db, since, until, limit)
    except psycopg.Error as e:
        raise CdrError(f"{url}: {str(e).strip() or type(e).__name__}") from None
