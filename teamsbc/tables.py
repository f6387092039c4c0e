"""The proxy's transaction tables and its timer heap (kamailio's `tm` tables), sans-IO.

    server  RFC 3261 17.2.3 key -> ServerEntry: the server transaction, where its responses go,
            and the Relay it feeds (None for requests answered here)
    client  RFC 3261 17.1.3 key -> (owner, transaction, destination); owner is the Relay of a
            proxied request, a result callback for a request we originated, or None (CANCEL)
    timers  one heap of everything with a deadline: transactions, relays, the guard, the pinger

Anything on the heap has `next_timer() -> float | None` and `terminated`; stale heap entries
are skipped when popped (no removal from the middle of the heap). A stale entry still holds its
object: a relay that ended keeps its Timer C entry for 180 s, and with it the requests and
transactions of the call. So the heap is compacted (stale entries dropped) whenever it has
doubled since the last compaction: O(1) amortised per push, and what the proxy holds follows
what is alive (bench/core.py --hold).
"""
from __future__ import annotations

import heapq
import itertools
import logging
from typing import Any, Iterator

from .decisions import Destination, Send, Source
from .sip.message import Request, Response
from .sip.transaction import ClientTransaction, ServerTransaction, TimedOut, Transmit

log = logging.getLogger("teamsbc.proxy")

COMPACT_MIN = 1024   # heap entries before the first compaction


class ServerEntry:
    """A server transaction, where its responses go (the connection or address it came from)
    and the relay it feeds."""

    __slots__ = ("st", "src", "key", "relay")

    def __init__(self, st: ServerTransaction, src: Source, key: tuple):
        self.st, self.src, self.key = st, src, key
        self.relay: Any = None   # relay.Relay while the request is being proxied

    @property
    def terminated(self) -> bool:
        return self.st.terminated

    def next_timer(self) -> float | None:
        return self.st.next_timer()


class Expire:
    """Forget a client transaction at `at` if it has not ended by itself (an INVITE we
    CANCELled whose final answer never came)."""

    __slots__ = ("table", "ctx", "at")

    def __init__(self, table: dict, ctx: ClientTransaction, at: float):
        self.table, self.ctx, self.at = table, ctx, at

    @property
    def terminated(self) -> bool:
        return self.ctx.terminated or self.ctx.key not in self.table

    def next_timer(self) -> float:
        return self.at

    def handle_timer(self, now: float) -> list:
        if self.table.get(self.ctx.key, (None, None))[1] is self.ctx:
            log.info("no final answer to a cancelled INVITE within 64*T1: transaction ended call_id=%s",
                     self.ctx.request.call_id)
            del self.table[self.ctx.key]
        self.at = float("inf")
        return []


class Tables:
    def __init__(self, stats: dict[str, int]):
        self.stats = stats   # the proxy's counters ("timeouts")
        self.server: dict[tuple, ServerEntry] = {}
        self.client: dict[tuple, tuple[Any, ClientTransaction, Destination]] = {}
        self._timers: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self._compact_at = COMPACT_MIN

    # --- server side
    def new_server(self, req: Request, src: Source, key: tuple, now: float) -> ServerEntry:
        sv = self.server[key] = ServerEntry(
            ServerTransaction(req, reliable=src.transport != "udp", now=now, keep_2xx=False), src, key)
        return sv

    def respond(self, sv: ServerEntry, resp: Response, now: float, out: list) -> None:
        """Send `resp` through the server transaction (retransmissions, ACK matching are its job)."""
        self.server_events(sv, sv.st.send_response(resp, now), out)

    def server_events(self, sv: ServerEntry, events: list, out: list) -> None:
        for ev in events:
            if isinstance(ev, Transmit):
                out.append(Send(ev.message.to_bytes(), sv.src))
            elif isinstance(ev, TimedOut):
                self.stats["timeouts"] += 1
                log.warning("no ACK for final response call_id=%s", sv.st.request.call_id)
        if sv.st.terminated:
            self.server.pop(sv.key, None)
        else:
            self.schedule(sv)

    def relay_of(self, key: tuple) -> Any:
        sv = self.server.get(key)
        return sv.relay if sv is not None else None

    def relays(self) -> Iterator[Any]:
        return (sv.relay for sv in self.server.values() if sv.relay is not None)

    # --- client side
    def add_client(self, owner: Any, ctx: ClientTransaction, dest: Destination) -> None:
        self.client[ctx.key] = (owner, ctx, dest)

    def expire_later(self, ctx: ClientTransaction, at: float) -> None:
        self.schedule(Expire(self.client, ctx, at))

    # --- the heap
    def schedule(self, obj: Any) -> None:
        t = obj.next_timer()
        if t is not None and not obj.terminated:
            heapq.heappush(self._timers, (t, next(self._seq), obj))
            if len(self._timers) > self._compact_at:
                self._compact()

    def _compact(self) -> None:
        """Keep one entry per live object, at its current deadline."""
        seen: set[int] = set()
        live = []
        for entry in self._timers:
            obj = entry[2]
            if obj.terminated or obj.next_timer() != entry[0] or id(obj) in seen:
                continue
            seen.add(id(obj))
            live.append(entry)
        heapq.heapify(live)
        self._timers = live
        self._compact_at = max(COMPACT_MIN, 2 * len(live))

    def next_timer(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def due(self, now: float) -> Iterator[Any]:
        """Pop every live object whose deadline has come (its owner handles it, then
        reschedules it with `schedule`)."""
        heap = self._timers
        while heap and heap[0][0] <= now:
            _, _, obj = heapq.heappop(heap)
            if obj.terminated:
                continue
            due = obj.next_timer()
            if due is None or due > now:
                continue
            yield obj

    def timer_objects(self) -> list[Any]:
        """What the heap holds (tests: nothing stale piles up)."""
        return [t[2] for t in self._timers]

    @property
    def active(self) -> int:
        return len(self.server) + len(self.client)
