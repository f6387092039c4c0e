"""The proxy's transaction tables and its timer heap (kamailio's `tm` tables), sans-IO.

    server  RFC 3261 17.2.3 key -> ServerEntry: the server transaction, where its responses go,
            and the Relay it feeds (None for requests answered here)
    client  RFC 3261 17.1.3 key -> (owner, transaction, destination); owner is the Relay of a
            proxied request, a result callback for a request we originated, or None (CANCEL)
    timers  one heap of everything with a deadline: transactions, relays, the guard, the pinger

Anything on the heap has `next_timer() -> float | None` and `terminated`. Each object has at
most one live heap entry; `schedule` moves it when the deadline changes and empties it when the
object has none left or is terminated (the heapq "mark as removed" recipe). An emptied entry
lets go of its object at once: a relay that finished is freed when its call is done, not
when its old Timer C (3 minutes) comes up (issue 12: 18,000 finished calls were held that
way at 100 calls/s). Emptied entries are dropped when popped, or all at once when they
outnumber the live ones.
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


COMPACT_AFTER = 1024  # emptied heap entries tolerated before a rebuild (when also > half)


class Tables:
    def __init__(self, stats: dict[str, int]):
        self.stats = stats   # the proxy's counters ("timeouts")
        self.server: dict[tuple, ServerEntry] = {}
        self.client: dict[tuple, tuple[Any, ClientTransaction, Destination]] = {}
        self._timers: list[list] = []            # [deadline, seq, object or None when emptied]
        self._entry: dict[Any, list] = {}        # object -> its live heap entry
        self._emptied = 0
        self._seq = itertools.count()

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
            if self.server.get(sv.key) is sv:
                del self.server[sv.key]
            # The relay keeps its server entry (late 2xx still go through it, RFC 6026); the
            # entry lets go of the relay, so the two never form a cycle that only the
            # cyclic collector could free.
            sv.relay = None
        self.schedule(sv)

    def relay_of(self, key: tuple) -> Any:
        sv = self.server.get(key)
        return sv.relay if sv is not None else None

    def serves(self, conn: Any) -> bool:
        """A server transaction in progress answers on this connection (the shell's idle rule)."""
        return any(sv.src.conn is conn for sv in self.server.values())

    def relays(self) -> Iterator[Any]:
        return (sv.relay for sv in self.server.values() if sv.relay is not None)

    # --- client side
    def add_client(self, owner: Any, ctx: ClientTransaction, dest: Destination) -> None:
        self.client[ctx.key] = (owner, ctx, dest)

    def expire_later(self, ctx: ClientTransaction, at: float) -> None:
        self.schedule(Expire(self.client, ctx, at))

    # --- the heap
    def advance(self, relay: Any, event: Any, now: float) -> None:
        """Apply an event to a relay (relay.Relay.on) and keep the heap true to its deadline:
        a finished relay leaves the heap at once."""
        relay.on(event, now)
        self.schedule(relay)

    def schedule(self, obj: Any) -> None:
        """Put `obj` on the heap at its next_timer(), move it there, or take it off (no
        deadline, terminated). Call it after anything that may change an object's deadline."""
        t = obj.next_timer()
        old = self._entry.get(obj)
        if old is not None:
            if t is not None and old[0] == t and not obj.terminated:
                return
            old[2] = None
            del self._entry[obj]
            self._emptied += 1
        if t is not None and not obj.terminated:
            entry = [t, next(self._seq), obj]
            self._entry[obj] = entry
            heapq.heappush(self._timers, entry)
        if self._emptied > COMPACT_AFTER and 2 * self._emptied > len(self._timers):
            self._timers = [e for e in self._timers if e[2] is not None]
            heapq.heapify(self._timers)
            self._emptied = 0

    def next_timer(self) -> float | None:
        heap = self._timers
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._emptied -= 1
        return heap[0][0] if heap else None

    def due(self, now: float) -> Iterator[Any]:
        """Pop every live object whose deadline has come (its owner handles it, then
        reschedules it with `schedule`)."""
        while True:
            heap = self._timers  # a schedule() by the owner may have rebuilt it
            if not heap or heap[0][0] > now:
                return
            _, _, obj = heapq.heappop(heap)
            if obj is None:
                self._emptied -= 1
                continue
            del self._entry[obj]
            if obj.terminated:
                continue
            due = obj.next_timer()
            if due is None:
                continue
            if due > now:
                self.schedule(obj)  # re-armed later without being rescheduled
                continue
            yield obj

    def timer_objects(self) -> list[Any]:
        """What the heap holds (tests: nothing stale piles up)."""
        return [t[2] for t in self._timers if t[2] is not None]

    @property
    def active(self) -> int:
        return len(self.server) + len(self.client)
