"""Call events -> CDR rows, written off the event loop.

    writer = CdrWriter(CdrStore(path))        # a thread that owns the database writes
    observers.add(CdrObserver(writer))        # on the loop: one queue.put per event
    writer.flush()                            # wait until everything submitted is committed
    writer.close()                            # drain, commit, stop (graceful shutdown)

The observer only queues. The writer thread takes whatever has queued, applies it in ONE
transaction and commits (group commit): at a few calls per second every event is committed
alone within about a millisecond; under load a commit carries hundreds of events, so the
cost per event falls instead of the event loop waiting on SQLite.

Durability contract (tested with kill -9 in tests/test_cdr.py): an event is on disk (in the
WAL) once its batch is committed; a kill -9 or crash of the process loses only the events
queued and not yet committed at that moment, which is the last batch in progress (at most
`MAX_BATCH` events, in practice the last few milliseconds). Graceful stops (SIGTERM) lose
nothing. A database error (disk full, locked; with PostgreSQL a server that is down or a
lost connection, which the store reopens) does not lose events either: the batch is
rolled back and retried every `RETRY_INTERVAL` seconds, up to `MAX_BACKLOG` events waiting;
beyond that the oldest are dropped and counted (`stats["dropped"]`, logged).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Protocol

from ..events import MediaStats, Observer
from .settings import CdrError, CdrSettings
from .store import CdrStore, media_columns

log = logging.getLogger("teamsbc.cdr")

MAX_OPEN = 100_000       # calls remembered (call-id -> row); older ones are found by query
MAX_BATCH = 2_000        # events per transaction
MAX_BACKLOG = 200_000    # events held while the database refuses writes
RETRY_INTERVAL = 1.0     # s between attempts after a database error


class CdrBackend(Protocol):
    """Where rows go (CdrStore for SQLite, pg.PgStore for PostgreSQL). Called from the writer
    thread only. `errors`: what a database that refuses writes raises (the batch is kept and
    retried); anything else is a bug."""

    errors: tuple[type[BaseException], ...]

    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def insert(self, call_id: str, direction: str, tenant: str | None, caller: str, callee: str,
               setup: float) -> int: ...
    def answered(self, row: int, at: float) -> None: ...
    def failed(self, row: int, status: int, reason: str, at: float, ended_by: str | None) -> None: ...
    def ended(self, row: int | None, call_id: str, by: str, at: float) -> bool: ...
    def media(self, call_id: str, stats: dict) -> bool: ...
    def close(self) -> None: ...
    # reads, from any thread (their own connection)
    def query(self, since: float | None = None, until: float | None = None,
              limit: int | None = None, *, newest: bool = False) -> list[dict]: ...
    def search(self, **terms: object) -> list[dict]: ...


def open_store(settings: CdrSettings) -> CdrBackend:
    """The store `cdr` names: PostgreSQL with cdr.url (teamsbc.cdr.pg), else SQLite at cdr.path."""
    if settings.url is not None:
        from .pg import PgStore
        return PgStore(settings.url)
    return CdrStore(settings.path, synchronous=settings.synchronous)


_STOP = ("stop",)


class CdrWriter:
    def __init__(self, store: CdrBackend, *, max_open: int = MAX_OPEN,
                 on_commit: Callable[[int], None] | None = None):
        """`on_commit(total)`: called in the writer thread after each commit with the number
        of events committed so far (tests, monitoring)."""
        self.store = store
        self.max_open = max_open
        self.on_commit = on_commit
        self.open: dict[str, tuple[int, str]] = {}   # call-id -> (row id, direction)
        self.stats = {"submitted": 0, "committed": 0, "batches": 0, "errors": 0, "dropped": 0}
        self._queue: deque[tuple] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._inflight = 0
        self._thread = threading.Thread(target=self._run, name="cdr-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the loop's side
    def submit(self, op: tuple) -> None:
        with self._cond:
            if self._closed:
                return
            self._queue.append(op)
            self.stats["submitted"] += 1
            if len(self._queue) > MAX_BACKLOG:
                self._queue.popleft()
                self.stats["dropped"] += 1
                if self.stats["dropped"] % 10_000 == 1:
                    log.error("CDR backlog over %d events: dropping the oldest (%d so far)",
                              MAX_BACKLOG, self.stats["dropped"])
            self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is committed (or dropped). False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self.stats["submitted"]
            while self.stats["committed"] + self.stats["dropped"] < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the thread, close the database."""
        with self._cond:
            if self._closed:
                return
            self._queue.append(_STOP)
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("CDR writer did not finish within %.0fs: %d events not written", timeout,
                      len(self._queue))
        self.store.close()

    @property
    def backlog(self) -> int:
        """Events not yet committed: queued, plus the batch being written (or retried while
        the database refuses writes)."""
        return len(self._queue) + self._inflight

    # ---------------------------------------------------------------- the writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            stop = batch[-1] is _STOP
            if stop:
                batch.pop()
            if batch:
                self._inflight = len(batch)
                self._write(batch)
                self._inflight = 0
            if stop:
                return

    def _write(self, batch: list[tuple]) -> None:
        """Apply one batch in one transaction; on a database error roll back and retry (the
        row bookkeeping is restored too), so nothing is applied twice or lost."""
        while True:
            saved = dict(self.open)
            try:
                self.store.begin()
                for op in batch:
                    self._apply(op)
                self.store.commit()
            except (*self.store.errors, CdrError) as e:
                self.store.rollback()
                self.open = saved
                self.stats["errors"] += 1
                if self.stats["errors"] % 60 == 1:
                    log.error("CDR write failed (%s): %d events kept, retrying every %.0fs", e,
                              len(batch) + len(self._queue), RETRY_INTERVAL)
                time.sleep(RETRY_INTERVAL)
                continue
            break
        with self._cond:
            self.stats["committed"] += len(batch)
            self.stats["batches"] += 1
            committed = self.stats["committed"]
            self._cond.notify_all()
        if self.on_commit is not None:
            self.on_commit(committed)

    def _apply(self, op: tuple) -> None:
        kind = op[0]
        s = self.store
        if kind == "started":
            _, call_id, direction, tenant, caller, callee, wall = op
            if call_id in self.open:
                return
            row = s.insert(call_id, direction, tenant, caller, callee, wall)
            if len(self.open) >= self.max_open:
                del self.open[next(iter(self.open))]
            self.open[call_id] = (row, direction)
        elif kind == "answered":
            entry = self.open.get(op[1])
            if entry is not None:
                s.answered(entry[0], op[2])
        elif kind == "failed":
            _, call_id, status, reason, wall = op
            entry = self.open.pop(call_id, None)
            if entry is None:
                return
            row, direction = entry
            by = None
            if "(media)" in reason:
                by = "sbc"
            elif status == 487:
                by = direction.split("->", 1)[0]   # the caller cancelled
            s.failed(row, status, reason, wall, by)
        elif kind == "ended":
            _, call_id, by, wall = op
            entry = self.open.pop(call_id, None)
            s.ended(entry[0] if entry else None, call_id, by, wall)
        elif kind == "media":
            _, call_id, cols = op
            s.media(call_id, cols)


class CdrObserver(Observer):
    """The core's call events -> the writer's queue (nothing else happens on the loop)."""

    def __init__(self, writer: CdrWriter):
        self.writer = writer

    def call_started(self, call_id: str, direction: str, tenant: str | None, caller: str,
                     callee: str, wall: float) -> None:
        self.writer.submit(("started", call_id, direction, tenant, caller, callee, wall))

    def call_answered(self, call_id: str, wall: float) -> None:
        self.writer.submit(("answered", call_id, wall))

    def call_failed(self, call_id: str, status: int, reason: str, wall: float) -> None:
        self.writer.submit(("failed", call_id, status, reason, wall))

    def call_ended(self, call_id: str, by: str, wall: float) -> None:
        self.writer.submit(("ended", call_id, by, wall))

    def media_stats(self, stats: MediaStats, wall: float) -> None:
        cols = media_columns(stats)
        if cols:
            self.writer.submit(("media", stats.call_id, cols))
