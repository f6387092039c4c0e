"""24 hours of what the dashboard draws, in memory: each peer's health (every Teams proxy, the
PBX trunks, every rtpengine) as a strip of minutes, and calls per second and concurrent calls.

Sampled on the SBC's event loop every `STEP` seconds (a few dictionary reads); bounded by
construction (fixed-length deques): `FINE` samples of the last hour at `STEP` resolution and
`COARSE` one-minute buckets for the day. A peer that failed between two samples (a flap
shorter than `STEP`) is still seen: its `last_failure` moved, and the minute is marked
"failing" even if the peer is up again when sampled.

    history = History(metrics, health, media=pool)
    history.start(loop)          # the first sample now, then every STEP s
    history.as_dict(wall)        # what GET /history answers and the console draws
    history.stop()
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

STEP = 10.0
BUCKET = 60.0
FINE = 360                  # 1 hour of STEP samples
COARSE = 1440               # 24 hours of one-minute buckets

# the worst state wins in a minute
UNKNOWN, UP, FAILING, COOLING, DOWN = 0, 1, 2, 3, 4
STATE_NAMES = {UNKNOWN: "unknown", UP: "up", FAILING: "failing", COOLING: "cooling", DOWN: "down"}
_CODES = {"up": UP, "cooling": COOLING, "down": DOWN}


class History:
    def __init__(self, metrics: Any, health: Any, media: Any = None, *, step: float = STEP,
                 wall: Callable[[], float] = time.time):
        self.metrics, self.health, self.media = metrics, health, media
        self.step = step
        self.wall = wall
        self.fine: deque[tuple[float, float, int]] = deque(maxlen=FINE)        # (t, cps, concurrent)
        self.coarse: deque[list] = deque(maxlen=COARSE)                       # [minute, cps sum, n, max concurrent]
        self.peers: dict[str, deque[list]] = {}                               # name -> [[minute, code]]
        self._last: tuple[float, int] | None = None                           # (wall, calls_total)
        self._failures: dict[str, float | None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        self.sample(self.wall(), self._loop.time())
        self._handle = self._loop.call_later(self.step, self._tick)

    # ------------------------------------------------------------------ sampling
    def sample(self, wall: float, now: float) -> None:
        """One sample at wall-clock `wall`; `now` is the core's clock (peer health uses it)."""
        total = sum(self.metrics.calls_total.values())
        concurrent = len(self.metrics.calls)
        cps = 0.0
        if self._last is not None and wall > self._last[0]:
            cps = max(0, total - self._last[1]) / (wall - self._last[0])
        self._last = (wall, total)
        self.fine.append((wall, round(cps, 3), concurrent))
        minute = wall - wall % BUCKET
        if self.coarse and self.coarse[-1][0] == minute:
            b = self.coarse[-1]
            b[1] += cps
            b[2] += 1
            b[3] = max(b[3], concurrent)
        else:
            self.coarse.append([minute, cps, 1, concurrent])
        if self.health is not None:
            for name, p in list(self.health.peers.items()):
                code = _CODES.get(p.state, UNKNOWN)
                if code == COOLING and p.usable(now):
                    code = UP
                if (code == UP and p.last_failure is not None and name in self._failures
                        and p.last_failure != self._failures[name]):
                    code = FAILING      # failed and recovered between two samples
                self._failures[name] = p.last_failure
                self._mark(name, minute, code)
        if self.media is not None:
            try:
                instances = list(self.media.status())
            except Exception:  # noqa: BLE001 - a broken pool shows as unknown, never stops sampling
                instances = []
            for inst in instances:
                self._mark(f"rtpengine {inst.get('address')}", minute, UP if inst.get("healthy") else DOWN)

    def _mark(self, name: str, minute: float, code: int) -> None:
        strip = self.peers.get(name)
        if strip is None:
            strip = self.peers[name] = deque(maxlen=COARSE)
        if strip and strip[-1][0] == minute:
            strip[-1][1] = max(strip[-1][1], code)
        else:
            strip.append([minute, code])

    # ------------------------------------------------------------------ reading
    def as_dict(self, wall: float | None = None) -> dict:
        """Times are Unix seconds; `peers` maps a name to [[minute, state], ...] oldest first."""
        wall = self.wall() if wall is None else wall
        return {
            "now": wall, "step": self.step, "bucket": BUCKET,
            "fine": [list(s) for s in self.fine],
            "coarse": [[b[0], round(b[1] / b[2], 3), b[3]] for b in self.coarse],
            "peers": {name: [[m, STATE_NAMES[c]] for m, c in strip] for name, strip in sorted(self.peers.items())},
        }
