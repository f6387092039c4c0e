"""A real rtpengine (Debian 12 package, 10.5) for tests, in user space, stopped by PID.

    eng = RtpEngine(procs).start()      # waits until the NG port answers a ping
    eng.ng_udp, eng.ng_http, eng.ng_ws  # "udp:127.0.0.1:P", "http://127.0.0.1:H", "ws://..."
    eng.command({"command": "list"})    # blocking NG over UDP (for assertions)
    eng.kill()                          # SIGKILL by PID (a crash); eng.stop(): SIGTERM, then KILL
    eng.start()                         # again, on the same ports

Command line as in shared/reference/rtpengine.md: ``--config-file=none`` (no Debian config),
``--table=-1`` (no kernel module), interfaces ``pub/127.0.0.1`` (Teams side) and
``priv/127.0.0.2`` (PBX side), ``--delete-delay=0``.

Media ports: each instance gets its own window of ``window`` ports (default 200, ~50 two-leg
calls), taken at random from the ports ABOVE the kernel's ephemeral range (61000-65535 on a
default Linux): no outgoing connection and no ``free_port``/``free_port_range`` user lands there.
A window is whole 100-port slots, each reserved across processes with an flock (same directory
as tests.support.ports), so parallel test runs never share one; it is checked free for UDP on
both addresses, and given back when the RtpEngine object is garbage-collected.

Install: ``apt-get install -y --no-install-recommends rtpengine-daemon`` (NOT ``rtpengine``:
that metapackage pulls the kernel module).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import random
import secrets
import shutil
import signal
import socket
import threading
import weakref
from typing import Any, Sequence

from teamsbc.media.bencode import decode, encode, to_str_keys

from .ports import _LOCK_DIR, free_port, port_is_free
from .procs import ManagedProcess, ProcessManager, wait_for

__all__ = ["RtpEngine", "rtpengine_binary", "ng_command", "media_port_window", "release_port_window",
           "TEAMS_IP", "PBX_IP"]

TEAMS_IP = "127.0.0.1"   # interface "pub"
PBX_IP = "127.0.0.2"     # interface "priv"
START_TIMEOUT = 10.0

_windows_lock = threading.Lock()
_windows: dict[int, list[int]] = {}  # base -> fds of its slot lock files (kept open = reserved)


def rtpengine_binary() -> str:
    path = shutil.which("rtpengine")
    if not path:
        raise FileNotFoundError(
            "rtpengine not found: apt-get update && DEBIAN_FRONTEND=noninteractive "
            "apt-get install -y --no-install-recommends rtpengine-daemon")
    return path


def _above_ephemeral() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            _lo, hi = (int(x) for x in fh.read().split())
    except (OSError, ValueError):
        hi = 60999
    return hi + 1, 65535


SLOT = 100  # ports per lock slot; windows are whole slots


def media_port_window(size: int = 200) -> int:
    """First port of a window of ``size`` ports (rounded up to whole 100-port slots), free for
    UDP on both test addresses and reserved until :func:`release_port_window`.

    The ports above the ephemeral range hold only ~20 windows of 200, so windows are given
    back: RtpEngine releases its window when the object is garbage-collected (its process is
    stopped by then: the ``procs`` fixture stops it by PID at the end of the test).
    """
    for attempt in range(2):
        base = _try_window(size)
        if base is not None:
            return base
        gc.collect()  # finalizers of RtpEngine objects of finished tests give windows back
        _reclaim_exited()  # and windows of rtpengines whose process is gone, however referenced
    raise RuntimeError(f"no free window of {size} media ports above the ephemeral range")


_owners: dict[int, "weakref.ref"] = {}  # window base -> the RtpEngine using it


def _reclaim_exited() -> None:
    for base, ref in list(_owners.items()):
        eng = ref()
        proc = getattr(eng, "process", None)
        if eng is None or (proc is not None and proc.poll() is not None):
            _owners.pop(base, None)
            release_port_window(base)


def _try_window(size: int) -> int | None:
    lo, hi = _above_ephemeral()
    nslots = -(-size // SLOT)
    first, last = -(-lo // SLOT), (hi + 1) // SLOT - nslots   # slots fully inside [lo, hi]
    if last < first:
        raise RuntimeError(f"no room above the ephemeral port range for {size} ports")
    candidates = list(range(first, last + 1))
    random.SystemRandom().shuffle(candidates)
    _LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    with _windows_lock:
        for slot0 in candidates:
            fds = []
            for slot in range(slot0, slot0 + nslots):
                # flock locks belong to the open file: this process's own windows block too
                fd = os.open(_LOCK_DIR / f"rtp-slot-{slot}", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                        raise
                    break
                fds.append(fd)
            base = slot0 * SLOT
            if len(fds) == nslots and all(
                    port_is_free(p, "udp", TEAMS_IP) and port_is_free(p, "udp", PBX_IP)
                    for p in range(base, base + nslots * SLOT)):
                _windows[base] = fds
                return base
            for fd in fds:
                os.close(fd)
    return None


def release_port_window(base: int) -> None:
    with _windows_lock:
        for fd in _windows.pop(base, []):
            os.close(fd)


def ng_command(port: int, command: dict[str, Any], *, host: str = "127.0.0.1",
               timeout: float = 2.0) -> dict[str, Any]:
    """One NG command over UDP, blocking, no retransmission (test assertions only)."""
    cookie = secrets.token_hex(6).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(cookie + b" " + encode(command))
        while True:
            data = s.recv(65535)
            got, _, body = data.partition(b" ")
            if got == cookie:
                return to_str_keys(decode(body))


class RtpEngine:
    """One rtpengine process with its own NG/HTTP ports and media port window."""

    def __init__(
        self,
        procs: ProcessManager,
        *,
        name: str = "rtpengine",
        window: int = 200,
        interfaces: Sequence[str] = (f"pub/{TEAMS_IP}", f"priv/{PBX_IP}"),
        http: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.procs = procs
        self.name = name
        self.binary = rtpengine_binary()
        self.ng_port = free_port("udp")
        self.http_port = free_port("tcp") if http else None
        self.port_min = media_port_window(window)
        self.port_max = self.port_min + window - 1
        weakref.finalize(self, release_port_window, self.port_min)
        _owners[self.port_min] = weakref.ref(self)
        self.interfaces = list(interfaces)
        self.extra_args = list(extra_args)
        self.process: ManagedProcess | None = None

    # ---- addresses
    @property
    def ng_udp(self) -> str:
        return f"udp:127.0.0.1:{self.ng_port}"

    @property
    def ng_http(self) -> str:
        if self.http_port is None:
            raise RuntimeError("started without --listen-http")
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ng_ws(self) -> str:
        if self.http_port is None:
            raise RuntimeError("started without --listen-http")
        return f"ws://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.pid

    def argv(self) -> list[str]:
        args = [self.binary, "--config-file=none", "--foreground", "--log-stderr", "--table=-1"]
        args += [f"--interface={i}" for i in self.interfaces]
        args.append(f"--listen-ng=127.0.0.1:{self.ng_port}")
        if self.http_port is not None:
            args.append(f"--listen-http=127.0.0.1:{self.http_port}")
        args += [f"--port-min={self.port_min}", f"--port-max={self.port_max}", "--delete-delay=0"]
        return args + self.extra_args

    # ---- lifecycle
    def start(self, timeout: float = START_TIMEOUT) -> "RtpEngine":
        if self.process is not None and self.process.running:
            raise RuntimeError(f"{self.name} already running (pid {self.process.pid})")
        self.process = self.procs.start(self.name, self.argv())
        wait_for(self._answers_ping, timeout, what=f"{self.name} NG ping on {self.ng_port}",
                 alive=self.process)
        return self

    def _answers_ping(self) -> bool:
        try:
            return ng_command(self.ng_port, {"command": "ping"}, timeout=0.1).get("result") == "pong"
        except (OSError, ValueError):
            return False

    def stop(self) -> int | None:
        """SIGTERM by PID, wait, SIGKILL after a few seconds."""
        return self.process.stop() if self.process is not None else None

    def kill(self) -> int | None:
        """SIGKILL by PID (a crash) and reap it."""
        if self.process is None:
            return None
        if self.process.running:
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.process.wait(timeout=5)

    # ---- helpers for assertions
    def command(self, command: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
        return ng_command(self.ng_port, command, timeout=timeout)

    def calls(self) -> list[str]:
        return list(self.command({"command": "list"}).get("calls", []))

    def log(self) -> str:
        return self.process.stderr_text() if self.process is not None else ""

    def __repr__(self) -> str:
        return (f"<RtpEngine {self.name} ng={self.ng_port} http={self.http_port} "
                f"media={self.port_min}-{self.port_max} {self.process!r}>")
