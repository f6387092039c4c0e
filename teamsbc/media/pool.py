"""Several rtpengine instances: weights, ping-based health, call ownership, failover.

    pool = MediaPool(["udp:127.0.0.1:22222;weight=2", "http://10.0.0.7:8080"])
    await pool.start()                       # first health check, then a ping task
    reply = await pool.request(sdp_policy.offer(sdp, call_id, from_tag, "pbx"))
    ...
    await pool.request(sdp_policy.delete(call_id))   # forgets the call's owner
    await pool.close()

Instance syntax (the ``media.rtpengine`` list): ``ADDRESS[;weight=N]`` with ADDRESS one of
``udp:HOST:PORT``, ``http://HOST:PORT``, ``ws://HOST:PORT`` (see :mod:`teamsbc.media.ng`), or a
mapping ``{address: ..., weight: N}``. Weight defaults to 1; weight 0 marks a backup that takes
new calls only while no weighted instance is healthy.

Rules:
- A NEW call (an ``offer`` without ``to-tag`` for a call-id the pool does not know) goes to a
  healthy instance chosen by smooth weighted round-robin. If that instance does not answer
  (timeout, refused), the next healthy one is tried with the same command (the client makes a
  fresh cookie). If none is healthy: :class:`NoMediaAvailable`.
- Every later command of that call-id goes to the instance that owns it. ``delete`` forgets
  the owner.
- When the owner is down (marked by pings, or it fails this very command and the ping that
  follows), the call moves to a healthy instance that has it: rtpengines sharing call state
  through Redis (``redis``, ``subscribe-keyspace``, ``active-switchover``; docs/ha.md) each
  hold the others' calls as "foreign" calls on the same ports, so ``query`` finds it there and
  that instance takes it over. Without shared state no other instance has it and the command
  fails as before.
- A call-id the pool does not know in a later command (the SBC restarted; calls survive a
  restart) is looked up with ``query`` on every healthy instance.
- Health: every ``ping_interval`` s each instance is pinged; ``down_after`` failures in a row
  mark it down; one successful ping marks it up again. A command that gets no answer is not a
  failed ping (issue 12: one offer whose reply was too large for UDP took a healthy rtpengine
  down for every call): it is counted apart (``command_failures``) and the instance is pinged
  at once; only when that ping fails too is the instance marked down (a crashed rtpengine
  within one round trip, a lost or oversized reply never).

A call whose first offer timed out on an instance may still exist there (only the reply was
lost); rtpengine drops it after its own media timeout, as it never gets media.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from .ng import DEFAULT_TIMEOUT, NgClient, NgError, NgException, NgUnavailable
from .settings import InstanceSpec, parse_address, parse_instance

__all__ = [
    "Instance",
    "MediaPool",
    "NoMediaAvailable",
    "UnknownCall",
    "PING_INTERVAL",
    "DOWN_AFTER",
    "OWNER_TTL",
]

log = logging.getLogger("teamsbc.media.pool")

PING_INTERVAL = 5.0
DOWN_AFTER = 2
OWNER_TTL = 12 * 3600.0  # an owner entry untouched this long is dropped (query finds it again)


class NoMediaAvailable(NgException):
    """No healthy rtpengine can take a new call (the proxy answers 503)."""


class UnknownCall(NgError):
    """A command for a call-id that no healthy instance knows."""


# --------------------------------------------------------------------------- configuration

# --------------------------------------------------------------------------- instances

@dataclass(eq=False)
class Instance:
    """One rtpengine and what the pool knows of it."""

    spec: InstanceSpec
    client: NgClient
    healthy: bool = True
    failures: int = 0                # failed pings in a row
    command_failures: int = 0        # commands that got no answer (each checked with a ping)
    last_error: str | None = None
    verifying: asyncio.Task | None = field(default=None, repr=False)  # the ping after a failed command
    changed_at: float = 0.0          # monotonic time of the last up/down change
    current: int = field(default=0, repr=False)   # smooth weighted round-robin state

    @property
    def address(self) -> str:
        return str(self.spec.address)

    @property
    def weight(self) -> int:
        return self.spec.weight

    def __repr__(self) -> str:
        return f"<Instance {self.spec} {'up' if self.healthy else 'down'}>"


class MediaPool:
    def __init__(
        self,
        instances: Iterable[str | Mapping[str, Any] | InstanceSpec],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float | None = None,
        down_after: int = DOWN_AFTER,
        owner_ttl: float = OWNER_TTL,
        client_factory: Callable[..., NgClient] = NgClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        specs = [parse_instance(s) for s in instances]
        if not specs:
            raise ValueError("a media pool needs at least one rtpengine instance")
        seen = set()
        for s in specs:
            if s.address in seen:
                raise ValueError(f"{s.address} listed twice")
            seen.add(s.address)
        if down_after < 1:
            raise ValueError("down_after must be >= 1")
        self.clock = clock
        self.instances = [Instance(s, client_factory(s.address, timeout=timeout), changed_at=clock())
                          for s in specs]
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout if ping_timeout is not None else min(timeout, ping_interval)
        self.down_after = down_after
        self.owner_ttl = owner_ttl
        self._owners: dict[str, tuple[Instance, float]] = {}
        self._placing: dict[str, asyncio.Future[None]] = {}
        self.moved = 0   # calls moved to another instance after their owner went down
        self._ping_task: asyncio.Task | None = None

    # ---- lifecycle
    async def start(self) -> None:
        """One health check of every instance (bounded by the ping timeout), then the ping task."""
        await self.check_all()
        if self._ping_task is None:
            self._ping_task = asyncio.create_task(self._ping_loop(), name="rtpengine-ping")

    async def close(self) -> None:
        for inst in self.instances:
            if inst.verifying is not None:
                inst.verifying.cancel()
        if self._ping_task is not None:
            self._ping_task.cancel()
            try:
                await self._ping_task
            except asyncio.CancelledError:
                pass
            self._ping_task = None
        await asyncio.gather(*(i.client.close() for i in self.instances), return_exceptions=True)

    async def __aenter__(self) -> "MediaPool":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---- health
    async def check_all(self) -> None:
        """Ping every instance once, concurrently, and update health."""
        await asyncio.gather(*(self._check(i) for i in self.instances))
        self._expire_owners()

    async def _check(self, inst: Instance) -> None:
        try:
            await inst.client.ping(timeout=self.ping_timeout)
        except NgException as exc:
            inst.failures += 1
            inst.last_error = str(exc)
            if inst.healthy and inst.failures >= self.down_after:
                self._set_health(inst, False, f"{inst.failures} pings failed, last: {exc}")
            return
        inst.failures = 0
        if not inst.healthy:
            self._set_health(inst, True, "ping answered")

    def _set_health(self, inst: Instance, healthy: bool, why: str) -> None:
        inst.healthy = healthy
        inst.changed_at = self.clock()
        if healthy:
            log.warning("rtpengine %s is up again (%s)", inst.address, why)
        else:
            log.error("rtpengine %s is down: %s", inst.address, why)

    def _request_failed(self, inst: Instance, exc: NgUnavailable) -> None:
        """A command got no answer: count it, and let a ping decide whether the instance is down."""
        inst.command_failures += 1
        inst.last_error = str(exc)
        if inst.healthy and inst.verifying is None:
            inst.verifying = asyncio.get_running_loop().create_task(self._verify(inst, exc))

    async def _verify(self, inst: Instance, exc: NgUnavailable) -> None:
        try:
            try:
                await inst.client.ping(timeout=self.ping_timeout)
            except NgException as ping_exc:
                inst.failures += 1
                inst.last_error = str(ping_exc)
                if inst.healthy:
                    self._set_health(inst, False, f"a command got no answer ({exc}) and the ping "
                                                  f"that checked it failed too ({ping_exc})")
                return
            log.warning("rtpengine %s: a command got no answer (%s); it answers pings, so it stays up "
                        "(%d such commands so far)", inst.address, exc, inst.command_failures)
        finally:
            inst.verifying = None

    async def settle(self) -> None:
        """Wait for the pings that check instances after failed commands (tests, shutdown)."""
        await asyncio.gather(*(i.verifying for i in self.instances if i.verifying is not None),
                             return_exceptions=True)

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self.check_all()
            except Exception:  # noqa: BLE001 - the health task must never die
                log.exception("rtpengine health check failed")

    def healthy(self) -> list[Instance]:
        return [i for i in self.instances if i.healthy]

    # ---- ownership
    def owner(self, call_id: str) -> Instance | None:
        entry = self._owners.get(call_id)
        return entry[0] if entry else None

    @property
    def calls(self) -> dict[str, Instance]:
        """call-id -> owning instance (a copy)."""
        return {cid: inst for cid, (inst, _) in self._owners.items()}

    def forget(self, call_id: str) -> None:
        self._owners.pop(call_id, None)

    def _own(self, call_id: str, inst: Instance) -> None:
        self._owners[call_id] = (inst, self.clock())

    def _expire_owners(self) -> None:
        limit = self.clock() - self.owner_ttl
        for cid in [c for c, (_, used) in self._owners.items() if used < limit]:
            del self._owners[cid]

    # ---- choosing
    def choose(self, exclude: Sequence[Instance] = ()) -> Instance | None:
        """Next instance for a new call: smooth weighted round-robin (nginx) over healthy
        instances with weight > 0; backups (weight 0) only when none of those is healthy."""
        candidates = [i for i in self.instances if i.healthy and i not in exclude]
        weighted = [i for i in candidates if i.weight > 0]
        if not weighted:
            return candidates[0] if candidates else None
        total = sum(i.weight for i in weighted)
        for i in weighted:
            i.current += i.weight
        best = max(weighted, key=lambda i: i.current)
        best.current -= total
        return best

    # ---- requests
    async def request(self, command: Mapping[str, Any], *, keep_owner: bool = False) -> dict[str, Any]:
        """Send a call command (it must carry ``call-id``) to the right instance.

        ``keep_owner``: for a ``delete`` of one forked branch (with ``to-tag``) while the call
        goes on; otherwise a ``delete`` forgets the owner, whatever its outcome. A ``delete`` of
        a call no healthy instance knows returns ``{"result": "ok", "warning": ...}`` like
        rtpengine itself does.
        Raises NoMediaAvailable (new call, no instance), NgUnavailable (the owner did not
        answer), UnknownCall, NgError, NgProtocolError.
        """
        name = command.get("command")
        call_id = command.get("call-id")
        if not call_id:
            raise ValueError(f"{name}: pool.request needs a call-id; use request_to() for {name}")
        call_id = str(call_id)
        placing = self._placing.get(call_id)
        if placing is not None:  # the first offer of this call is still being placed
            await asyncio.shield(placing)
        try:
            inst = self.owner(call_id)
            if inst is not None and not inst.healthy:
                inst = await self._move(call_id, inst, "is down") or inst
            if inst is None:
                if name == "offer" and not command.get("to-tag"):
                    return await self._new_call(call_id, command)
                inst = await self._find_owner(call_id)
                if inst is None:
                    if name == "delete":
                        return {"result": "ok", "warning": "Call-ID not found on any healthy rtpengine"}
                    if name == "offer":  # a re-offer of a call no instance has any more
                        return await self._new_call(call_id, command)
                    raise UnknownCall("Unknown call-id", command=str(name))
            self._own(call_id, inst)
            try:
                return await inst.client.request(command)
            except NgUnavailable as exc:
                self._request_failed(inst, exc)
                heir = await self._move(call_id, inst, f"did not answer {name} ({exc})")
                if heir is None:
                    raise
                return await heir.client.request(command)
        finally:
            if name == "delete" and not keep_owner:
                self.forget(call_id)

    async def _new_call(self, call_id: str, command: Mapping[str, Any]) -> dict[str, Any]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._placing[call_id] = done
        tried: list[Instance] = []
        errors: list[str] = []
        try:
            while True:
                inst = self.choose(exclude=tried)
                if inst is None:
                    why = "; ".join(errors) if errors else "no healthy rtpengine"
                    raise NoMediaAvailable(f"no rtpengine for call {call_id}: {why}")
                tried.append(inst)
                try:
                    reply = await inst.client.request(command)
                except NgUnavailable as exc:
                    self._request_failed(inst, exc)
                    errors.append(str(exc))
                    log.warning("new call %s: %s did not answer (%s), trying the next instance",
                                call_id, inst.address, exc)
                    continue
                self._own(call_id, inst)
                return reply
        finally:
            del self._placing[call_id]
            done.set_result(None)

    async def _find_owner(self, call_id: str) -> Instance | None:
        """Ask every healthy instance whether it has the call (after an SBC restart)."""
        async def probe(inst: Instance) -> Instance | None:
            try:
                await inst.client.request({"command": "query", "call-id": call_id})
            except NgError:
                return None          # "Unknown call-id"
            except NgUnavailable as exc:
                self._request_failed(inst, exc)
                return None
            except NgException:
                return None
            return inst

        found = [i for i in await asyncio.gather(*(probe(i) for i in self.healthy())) if i]
        if found:
            log.info("call %s found on %s", call_id, found[0].address)
            return found[0]
        return None

    async def _move(self, call_id: str, dead: Instance, why: str) -> Instance | None:
        """The call's owner `dead` is gone: a healthy instance that has the call (shared state)
        becomes its owner. None when none has it."""
        heir = await self._find_owner(call_id)
        if heir is None:
            log.error("call %s: rtpengine %s %s and no other rtpengine has the call", call_id,
                      dead.address, why)
            return None
        self._own(call_id, heir)
        self.moved += 1
        log.warning("call %s: rtpengine %s %s: moved to %s (it holds the call's state from Redis)",
                    call_id, dead.address, why, heir.address)
        return heir

    async def request_to(self, instance: Instance | str, command: Mapping[str, Any]) -> dict[str, Any]:
        """Send a command to one instance (``list``, ``statistics``, ``ping``), by Instance or
        address string."""
        inst = instance if isinstance(instance, Instance) else self.instance(instance)
        try:
            return await inst.client.request(command)
        except NgUnavailable as exc:
            self._request_failed(inst, exc)
            raise

    def instance(self, address: str) -> Instance:
        wanted = str(parse_address(address))
        for inst in self.instances:
            if inst.address == wanted:
                return inst
        raise KeyError(address)

    # ---- reporting
    def status(self) -> list[dict[str, Any]]:
        """Per instance: address, weight, up/down, calls owned, NG round-trip times (s)."""
        owned: dict[int, int] = {}
        for inst, _ in self._owners.values():
            owned[id(inst)] = owned.get(id(inst), 0) + 1
        return [
            {
                "address": i.address,
                "weight": i.weight,
                "healthy": i.healthy,
                "failures": i.failures,
                "command_failures": i.command_failures,
                "last_error": i.last_error,
                "calls": owned.get(id(i), 0),
                "rtt": i.client.rtt.summary(),
            }
            for i in self.instances
        ]
