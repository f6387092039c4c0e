"""Workers: the SBC on every core (`sbc.workers`).

One Python process runs on one core. All the PBX's UDP arrives on one 4-tuple and Teams keeps a
few long TLS connections, so neither SO_REUSEPORT nor more listeners would spread the work.
Instead, calls are spread: every call belongs to one worker, chosen by a hash of its Call-ID
(`Team.owner`), and that worker alone holds its transactions, relays and rtpengine commands.

    worker 0 (the main process, systemd's MainPID)      workers 1..N-1 (forked before the loop)
      listens: Teams TLS, PBX UDP/TCP                      listen on nothing
      reads every inbound message, frames it, checks       get the messages of their calls
      the door (guard), hands a message of another           handed over, run the proxy core,
      worker's call to it as bytes                          send UDP on the shared PBX socket,
      writes that worker's answers on the connection        open their own TLS connections to
      the request came on                                    Teams, ask rtpengine themselves
      admin API, console, metrics, CDR writer (one),       forward call events, SIP observations
      OPTIONS keep-alive, health                             and counters to worker 0

A message arriving on a worker's own outbound connection (a Teams request on our connection,
allowed by reference section 2) is handed over the same way. The hand-over is one
`send` of the raw bytes on an AF_UNIX SOCK_SEQPACKET pair: parsing stays with the owner, so
each message is parsed once, by the process that needs it.

What stays correct across processes:
- In-dialog routing needs no state (sealed Contact/Route values; every worker has the keys).
- Rate limits and call limits of `security.*` that are checked after parsing are enforced by
  each worker for its share of the calls, so each worker gets 1/N of each rate, burst and
  call count (rounded up): the SBC as a whole never admits more than the configured limit.
  A source whose failures land on one worker is banned after ban_after/N of them; a ban is
  sent to every worker at once. Connection limits are checked by worker 0 alone (the only
  one that accepts).
- Call detail records, metrics, traces and the flight recorder are worker 0's: the others
  send their events there, batched once per loop iteration; their counters every second.
- SIGHUP / the admin API reload: worker 0 reloads and tells the others; each worker also
  watches the certificate file itself. SIGTERM: every worker drains its own transactions.
- A worker that dies: its share passes to the others (every worker sees its channel close);
  its calls' pending transactions are lost as in a restart, the calls themselves go on.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
import signal
import socket
import zlib
from typing import Any, Callable

from .events import CallEvent, Counters, Observers

log = logging.getLogger("teamsbc.workers")

# Call-ID (or its compact form i) at the start of a header line of the head (RFC 3261 7.3.3)
_CALL_ID_RE = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.I)
CHANNEL_BUFFER = 4 << 20
SNAPSHOT_INTERVAL = 1.0


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID of a raw message, from its head only (a body may quote one: sipfrag)."""
    end = data.find(b"\r\n\r\n")
    m = _CALL_ID_RE.search(data, 0, end if end >= 0 else len(data))
    return m.group(1).strip() if m else None


class Team:
    """The workers as one process sees them: its index, the channel to each other worker,
    and which are alive (a dead worker's share passes to the others, the same in every
    process: each sees the dead one's channel close)."""

    def __init__(self, index: int, count: int, channels: dict[int, socket.socket],
                 pids: dict[int, int] | None = None):
        self.index, self.count = index, count
        self.channels = channels
        self.pids = pids or {}
        self.alive = list(range(count))
        self.udp: socket.socket | None = None   # the PBX UDP socket, bound before the fork

    @property
    def primary(self) -> bool:
        return self.index == 0

    @property
    def share(self) -> float:
        return 1.0 / self.count

    def owner(self, call_id: bytes | str) -> int:
        """CRC-32 of the Call-ID modulo the workers started; a dead worker's calls go to the
        live ones by the same hash (the other calls keep their owner and their transactions)."""
        if isinstance(call_id, str):
            call_id = call_id.encode()
        h = zlib.crc32(call_id)
        k = h % self.count
        alive = self.alive
        if len(alive) == self.count or k in alive:
            return k
        return alive[h % len(alive)]

    def owns(self, call_id: str) -> bool:
        return self.owner(call_id) == self.index


def fork_workers(count: int, udp: socket.socket | None) -> Team:
    """Fork workers 1..count-1 (before any event loop or thread exists) and return this
    process's Team. Each pair of workers gets its own channel."""
    pairs: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
    for i in range(count):
        for j in range(i + 1, count):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            for s in (a, b):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BUFFER)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHANNEL_BUFFER)
            pairs[(i, j)] = (a, b)

    def ends(k: int) -> dict[int, socket.socket]:
        mine: dict[int, socket.socket] = {}
        for (i, j), (a, b) in pairs.items():
            if i == k:
                mine[j] = a
            elif j == k:
                mine[i] = b
        return mine

    def close_others(k: int) -> None:
        keep = {id(s) for s in ends(k).values()}
        for a, b in pairs.values():
            for s in (a, b):
                if id(s) not in keep:
                    s.close()

    pids: dict[int, int] = {}
    for k in range(1, count):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # worker 0 reloads and tells us
            close_others(k)
            team = Team(k, count, ends(k))
            team.udp = udp
            return team
        pids[k] = pid
    close_others(0)
    team = Team(0, count, ends(0), pids)
    team.udp = udp
    return team


class Forwarder(Observers):
    """A worker's observers: everything goes to worker 0, batched per loop iteration."""

    def __init__(self, mesh: "Mesh"):
        super().__init__()
        self.mesh = mesh

    def deliver(self, event: CallEvent, wall: float) -> None:
        self.mesh.observe(("deliver", (event, wall)))

    def sip(self, direction: str, leg: str, transport: str, local: tuple, remote: tuple,
            data: bytes, wall: float) -> None:
        self.mesh.observe(("sip", (direction, leg, transport, local, remote, data, wall)))

    def media_command(self, call_id: str, command: dict, reply: Any, sent: float, wall: float) -> None:
        if isinstance(reply, BaseException):
            reply = RuntimeError(f"{type(reply).__name__}: {reply}")  # any exception pickles
        self.mesh.observe(("media_command", (call_id, command, reply, sent, wall)))


class Mesh:
    """The channels of one worker on its event loop. What goes over them (pickled tuples
    between our own processes, never anything from the network unparsed by us):

        ("M", leg, transport, addr, conn_id, local, data)  a message of your call
        ("W", conn_id, data)                             write this on your connection
        ("O", [(method, args), ...])                     observer calls (to worker 0)
        ("S", snapshot)                                  counters (to worker 0)
        ("B", ip, until)                                 a ban
        ("H", {peer: state})                             peer health (from worker 0)
        ("R", why)                                       reload the certificate
        ("T",)                                           stop
    """

    def __init__(self, team: Team, loop: asyncio.AbstractEventLoop):
        self.team = team
        self.loop = loop
        self.handlers: dict[str, Callable[..., None]] = {}
        self.snapshots: dict[int, dict] = {}
        self._observed: list[tuple] = []
        self._outbox: dict[int, list[tuple]] = {}
        self._flush_armed = False
        self._backlog: dict[int, list[bytes]] = {}
        self.on_lost: Callable[[int], None] | None = None
        self.stats = {"handed_over": 0, "received": 0}
        # packets are read into one buffer and unpickled from it: recv(1 MiB) mapped and
        # unmapped a megabyte per packet (glibc), and kept what it read in a 4 KiB page
        self._inbox = memoryview(bytearray(1 << 20))

    def start(self) -> None:
        for k, sock in self.team.channels.items():
            sock.setblocking(False)
            self.loop.add_reader(sock.fileno(), self._readable, k)

    def close(self) -> None:
        for k, sock in list(self.team.channels.items()):
            try:
                self.loop.remove_reader(sock.fileno())
                self.loop.remove_writer(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()
        self.team.channels.clear()

    # ------------------------------------------------------------------ sending
    def send(self, k: int, obj: tuple) -> None:
        """Queue `obj` for worker k: what one loop turn queues for a worker leaves as one
        packet (one pickle, one send) after the turn's callbacks (`_flush`)."""
        if k not in self.team.channels:
            return
        box = self._outbox.get(k)
        if box is None:
            box = self._outbox[k] = []
            if not self._flush_armed:
                self._flush_armed = True
                self.loop.call_soon(self._flush)
        box.append(obj)

    def broadcast(self, obj: tuple) -> None:
        for k in list(self.team.channels):
            self.send(k, obj)

    def _flush(self) -> None:
        self._flush_armed = False
        boxes, self._outbox = self._outbox, {}
        self._observed = []
        for k, objs in boxes.items():
            self._send_now(k, pickle.dumps(objs, pickle.HIGHEST_PROTOCOL))

    def _send_now(self, k: int, data: bytes) -> None:
        sock = self.team.channels.get(k)
        if sock is None:
            return
        if k in self._backlog:
            self._backlog[k].append(data)
            return
        try:
            sock.send(data)
        except BlockingIOError:
            self._backlog[k] = [data]
            self.loop.add_writer(sock.fileno(), self._writable, k)
        except OSError:
            self._lost(k)

    def _writable(self, k: int) -> None:
        sock = self.team.channels.get(k)
        queue = self._backlog.get(k)
        if sock is None or queue is None:
            return
        try:
            while queue:
                sock.send(queue[0])
                queue.pop(0)
        except BlockingIOError:
            return
        except OSError:
            self._lost(k)
            return
        del self._backlog[k]
        self.loop.remove_writer(sock.fileno())

    def hand_over(self, k: int, leg: str, transport: str, addr: tuple, conn_id: int, local: tuple,
                  data: bytes) -> None:
        self.stats["handed_over"] += 1
        self.send(k, ("M", leg, transport, addr, conn_id, local, data))

    def observe(self, call: tuple) -> None:
        """An observer call for worker 0 (Forwarder)."""
        box = self._observed
        if not box:
            self.send(0, ("O", box))  # the list fills up until the flush pickles it
        box.append(call)

    # ------------------------------------------------------------------ receiving
    def _readable(self, k: int) -> None:
        sock = self.team.channels.get(k)
        if sock is None:
            return
        inbox = self._inbox
        for _ in range(256):
            try:
                n = sock.recv_into(inbox)
            except BlockingIOError:
                return
            except OSError:
                n = 0
            if not n:
                self._lost(k)
                return
            self.stats["received"] += 1
            for obj in pickle.loads(inbox[:n]):
                handler = self.handlers.get(obj[0])
                if handler is None:
                    continue
                try:
                    handler(k, *obj[1:])
                except Exception:
                    log.exception("worker %d: handling %r from worker %d failed", self.team.index, obj[0], k)

    def _lost(self, k: int) -> None:
        sock = self.team.channels.pop(k, None)
        if sock is None:
            return
        try:
            self.loop.remove_reader(sock.fileno())
            self.loop.remove_writer(sock.fileno())
        except (ValueError, OSError):
            pass
        sock.close()
        self._backlog.pop(k, None)
        self.snapshots.pop(k, None)
        if k in self.team.alive:
            self.team.alive.remove(k)
        if self.on_lost is not None:
            self.on_lost(k)


# ---------------------------------------------------------------------- the whole SBC, seen by worker 0
class WholeProxy:
    """What metrics reads of the proxy (`counters`, `stats`, `pending_requests`,
    `active_transactions`), summed over worker 0's proxy and the others' last snapshots."""

    def __init__(self, proxy: Any, mesh: Mesh):
        self.proxy, self.mesh = proxy, mesh

    @property
    def counters(self) -> Counters:
        total = Counters()
        parts = [(self.proxy.counters.requests, self.proxy.counters.responses, self.proxy.counters.timeouts)]
        parts += [s["counters"] for s in self.mesh.snapshots.values()]
        for requests, responses, timeouts in parts:
            for leg, d in requests.items():
                t = total.requests.setdefault(leg, {})
                for k, n in d.items():
                    t[k] = t.get(k, 0) + n
            for leg, d in responses.items():
                t2 = total.responses.setdefault(leg, {})
                for k2, n in d.items():
                    t2[k2] = t2.get(k2, 0) + n
            for k, n in timeouts.items():
                total.timeouts[k] = total.timeouts.get(k, 0) + n
        return total

    @property
    def stats(self) -> dict[str, int]:
        return _summed([self.proxy.stats] + [s["stats"] for s in self.mesh.snapshots.values()])

    @property
    def pending_requests(self) -> int:
        return self.proxy.pending_requests + sum(s["pending"] for s in self.mesh.snapshots.values())

    @property
    def active_transactions(self) -> int:
        return self.proxy.active_transactions + sum(s["active"] for s in self.mesh.snapshots.values())


class _ConnCount:
    __slots__ = ("leg", "proto", "closed")

    def __init__(self, leg: str, proto: str):
        self.leg, self.proto, self.closed = leg, proto, False


class WholeShell:
    """What metrics and the admin API use of the shell, for the whole SBC."""

    def __init__(self, shell: Any, mesh: Mesh):
        self.shell, self.mesh = shell, mesh

    @property
    def stats(self) -> dict[str, int]:
        mine = {**self.shell.stats, "worker_handovers": self.mesh.stats["handed_over"]}
        total = _summed([mine] + [s["shell"] for s in self.mesh.snapshots.values()])
        total["workers"] = len(self.mesh.team.alive)
        return total

    @property
    def conns(self) -> list:
        out: list = [c for c in self.shell.conns]
        for s in self.mesh.snapshots.values():
            for (leg, proto), n in s["conns"].items():
                out += [_ConnCount(leg, proto) for _ in range(n)]
        return out

    def is_listening(self) -> bool:
        return self.shell.is_listening()

    def reload_certificate(self, why: str) -> str | None:
        return self.shell.reload_certificate(why)


def summed_drops(guard: Any, mesh: Mesh) -> Callable[[], dict[str, int]]:
    return lambda: _summed([guard.drops] + [s["drops"] for s in mesh.snapshots.values()])


def _summed(parts: list[dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in parts:
        for k, n in d.items():
            total[k] = total.get(k, 0) + n
    return total


def snapshot(proxy: Any, shell: Any, guard: Any) -> dict:
    """A worker's counters for worker 0 (WholeProxy, WholeShell, summed_drops)."""
    conns: dict[tuple[str, str], int] = {}
    for c in shell.conns:
        if not c.closed:
            conns[(c.leg, c.proto)] = conns.get((c.leg, c.proto), 0) + 1
    c = proxy.counters
    return {"counters": (c.requests, c.responses, c.timeouts), "stats": dict(proxy.stats),
            "pending": proxy.pending_requests, "active": proxy.active_transactions,
            "drops": dict(guard.drops), "conns": conns,
            "shell": {**shell.stats, "worker_handovers": shell.mesh.stats["handed_over"]}}
