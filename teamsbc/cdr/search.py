"""CDR search terms for people (the console's CDR page, `GET /cdr?number=&result=`): by number,
date range, result and Call-ID, as a WHERE clause for SQLite or PostgreSQL. The stores run it
(`CdrStore.search`, `PgStore.search`, `store.search(path)` on a file) on a read-only connection
of their own: the writer thread and the SBC never wait for a search. Blocking: run it off the
event loop.

    rows = store.search(number="+44207946", since=t0, until=t1, result="failed", limit=500)

`number` matches anywhere in the caller or the callee (digits, `+`, `*`, `#`; spaces and dashes
are ignored); `result` is `answered`, `failed` (no answer, not cancelled), `cancelled` (487) or
a status code. Rows come as `store.COLUMNS` dicts, oldest first, the newest `limit` of them.
"""
from __future__ import annotations

import re


RESULTS = {
    "answered": "answer_time IS NOT NULL",
    "failed": "answer_time IS NULL AND status >= 300 AND status != 487",
    "cancelled": "status = 487",
}
MAX_LIMIT = 100_000
_NUMBER = re.compile(r"[0-9+*#]{1,32}\Z")


class SearchError(ValueError):
    """A search term that cannot be used, with what would be right."""


def normalise_number(text: str) -> str:
    n = re.sub(r"[\s\-().]", "", text)
    if not _NUMBER.match(n):
        raise SearchError(f"number {text!r}: digits, + * # only, at most 32 (e.g. +4420794)")
    return n


def where(*, since: float | None = None, until: float | None = None, number: str | None = None,
          result: str | None = None, call_id: str | None = None,
          dialect: str = "sqlite") -> tuple[str, list]:
    """The WHERE clause and its arguments; `dialect` "sqlite" (`?`, instr) or "postgresql"
    (`%s`, strpos)."""
    clauses, args = [], []
    if since is not None:
        clauses.append("setup_time >= ?")
        args.append(since)
    if until is not None:
        clauses.append("setup_time < ?")
        args.append(until)
    if number:
        n = normalise_number(number)
        clauses.append("(instr(caller, ?) > 0 OR instr(callee, ?) > 0)" if dialect == "sqlite" else
                       "(strpos(caller, ?) > 0 OR strpos(callee, ?) > 0)")
        args += [n, n]
    if result:
        r = result.strip().lower()
        if r in RESULTS:
            clauses.append(RESULTS[r])
        elif r.isdigit() and len(r) == 3:
            clauses.append("status = ?")
            args.append(int(r))
        else:
            raise SearchError(f"result {result!r}: answered, failed, cancelled or a status code (e.g. 486)")
    if call_id is not None:
        clauses.append("call_id = ?")
        args.append(call_id)
    sql = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return (sql if dialect == "sqlite" else sql.replace("?", "%s")), args


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise SearchError(f"limit {limit}: 1-{MAX_LIMIT}")
