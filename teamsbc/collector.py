"""The cyclic garbage collector while the SBC serves calls: it walks only what is young.

Why (issue 12; numbers in bench/results/*-soak.md): CPython's collector pauses the event loop
for as long as it walks the objects of the generations it collects, and counts "young" objects
as allocations minus deallocations. A call lives for seconds, and its transactions for another
64*T1 = 32 s (RFC 3261 17, RFC 6026); at 100 calls/s ~4,000 calls are in that state, while
older calls die (each death lowers the count). So the young generations fill with tens of
thousands of call objects the collector walks again and again: 40-900 ms pauses.

What this does, on the loop, every `interval` seconds:
1. collect the two young generations: a reference cycle that became garbage since the last
   tick is freed here (per-call objects form none: tests/test_memory.py proves them freed by
   reference counting alone; this is for the rest, e.g. an exception kept with its traceback);
2. gc.freeze() what survived: the collector never walks it again; reference counting still
   frees each object when its call is over (freezing moves objects to a list, it keeps no
   reference to them).
A collection thus walks at most one interval of allocations. The interval is 0.1 s: the
deaths of frozen objects lower CPython's young count, so its own generation-0 trigger rarely
fires under steady load, and a 1 s tick walked a whole second of survivors (10-14 ms of CPU
at 100 calls/s, measured with gc.callbacks); at 0.1 s the longest was 1.2 ms, for the same
total work (each object is walked once while young). What escapes is a
cycle among objects older than one interval: asyncio leaves ~7 objects in cycles behind each
closed connection (transport, socket...). Such garbage makes the frozen set grow, so the
frozen set is walked in full (unfrozen, collected, frozen again; one log line) when it has
grown by `idle_grow` (25%, CPython's own rule for full collections) since the last walk and
the SBC is idle (no transaction, no call: the pause hurts nobody), or, under load that never
stops, when it has grown `grow` (4) times. Counting the frozen set walks it too (CPython's
gc.get_freeze_count is a list walk: 3-6% of the loop at 1,200 calls/s when it ran every tick),
so under load it is counted once every `check_every` ticks (30 s), when idle every tick.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Callable

log = logging.getLogger("teamsbc.collector")

INTERVAL = 0.1
CHECK_EVERY = 300
GROW = 4.0
IDLE_GROW = 1.25


class YoungOnly:
    def __init__(self, interval: float = INTERVAL, grow: float = GROW, idle_grow: float = IDLE_GROW,
                 busy: Callable[[], bool] | None = None, check_every: int = CHECK_EVERY):
        self.interval, self.grow, self.idle_grow, self.busy = interval, grow, idle_grow, busy
        self.check_every = check_every
        self.base = 0
        self.sweeps = 0
        self.ticks = 0
        self.counts = 0   # how often the frozen set was counted (a walk of it)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """At the end of start-up: the start-up heap is frozen for good (it lives as long as
        the process), then the ticks begin."""
        gc.collect()
        gc.freeze()
        self.base = gc.get_freeze_count()
        self._loop = loop
        self._handle = loop.call_later(self.interval, self.tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def tick(self) -> None:
        gc.collect(1)
        gc.freeze()
        self.ticks += 1
        idle = self.busy is not None and not self.busy()
        if idle or self.ticks % self.check_every == 0:
            self.counts += 1
            frozen = gc.get_freeze_count()
            if frozen > self.grow * self.base or (idle and frozen > self.idle_grow * self.base):
                self.sweep(frozen)
        if self._loop is not None:
            self._handle = self._loop.call_later(self.interval, self.tick)

    def sweep(self, frozen: int) -> None:
        started, before = time.perf_counter(), self.base
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.base = gc.get_freeze_count()
        self.sweeps += 1
        log.info("collector: long-lived objects grew from %d to %d: one full walk took %.0f ms and "
                 "freed %d objects in reference cycles; %d remain", before, frozen,
                 (time.perf_counter() - started) * 1e3, found, self.base)
