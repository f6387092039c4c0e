"""A connection to Teams lives for an hour (teams.connection_max_age) and carries every call's
requests toward Teams; the shell notes on it which client transactions used it, so that a
retiring connection closes only when they are done. Ended transactions must not stay noted:
at 100 calls/s that was ~1M keys per connection-hour (found by the issue-12 soak review)."""
from __future__ import annotations

from types import SimpleNamespace

from teamsbc.connections import PRUNE_MIN, carried


def test_ended_transactions_are_dropped_as_the_set_doubles():
    conn = SimpleNamespace(tokens=set(), prune_at=PRUNE_MIN)
    active: set = set()
    for n in range(200_000):            # 200,000 requests; at most ~3,000 transactions alive at once
        key = ("z9hG4bK%d" % n, "INVITE")
        active.add(key)
        if n >= 3000:
            active.discard(("z9hG4bK%d" % (n - 3000), "INVITE"))
        carried(conn, key, active.__contains__)
        assert len(conn.tokens) < max(2 * PRUNE_MIN, 2 * len(active) + 1), n
    assert active <= conn.tokens        # every live one is still known: the retiring rule holds
    assert len(conn.tokens) < 4 * len(active)


def test_live_transactions_are_never_dropped():
    conn = SimpleNamespace(tokens=set(), prune_at=PRUNE_MIN)
    for n in range(5 * PRUNE_MIN):
        carried(conn, n, lambda t: True)
    assert conn.tokens == set(range(5 * PRUNE_MIN))
