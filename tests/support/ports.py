"""Free loopback ports for test servers.

A port is picked by binding to port 0 on 127.0.0.1 (the kernel chooses an unused one), checked
to be free for BOTH UDP and TCP, then released so that the server under test can bind it.

Between release and use another process could take the port. Two guards make that unlikely:
- every port handed out is also *reserved* for the life of this Python process with an
  exclusive flock on ``$TMPDIR/teamsbc-test-ports-<uid>/<port>``, and ports locked by another
  live process are skipped: parallel test runs (or pytest-xdist workers) never get the same port;
- a port handed out is never handed out again by this process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path
from typing import Literal

__all__ = ["free_port", "free_ports", "free_port_range", "port_is_free"]

HOST = "127.0.0.1"
Kind = Literal["udp", "tcp", "both"]

_lock = threading.Lock()
_reserved: dict[int, int] = {}  # port -> fd of its lock file (kept open = reservation held)
_given: set[int] = set()        # every port handed out: never handed out again by this process
# Open lock files are file descriptors: a long run must not pile up thousands of them (select()
# fails above 1024). The oldest reservations are released; their tests are long finished.
MAX_HELD = 256
_LOCK_DIR = Path(tempfile.gettempdir()) / f"teamsbc-test-ports-{os.getuid()}"
# Range for contiguous blocks: below Linux's default ephemeral range (32768-60999), so that
# outgoing connections of other processes do not land in it by chance.
_BLOCK_RANGE = (20000, 32000)


def _sock_type(kind: str) -> int:
    return socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM


def port_is_free(port: int, kind: Kind = "both", host: str = HOST) -> bool:
    """True when ``port`` can be bound on ``host`` for ``kind`` right now."""
    kinds = ("udp", "tcp") if kind == "both" else (kind,)
    for k in kinds:
        s = socket.socket(socket.AF_INET, _sock_type(k))
        try:
            if k == "tcp":
                # Servers set SO_REUSEADDR: do the same so TIME_WAIT leftovers do not count.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def _try_reserve(port: int) -> bool:
    """Take the cross-process reservation for ``port`` (caller holds _lock)."""
    if port in _reserved or port in _given:
        return False
    _LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(_LOCK_DIR / str(port), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    _reserved[port] = fd
    _given.add(port)
    while len(_reserved) > MAX_HELD:
        os.close(_reserved.pop(next(iter(_reserved))))  # dicts keep insertion order
    return True


def _bind_zero(kind: str) -> int:
    s = socket.socket(socket.AF_INET, _sock_type(kind))
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def free_port(kind: Kind = "udp", *, attempts: int = 200) -> int:
    """One port on 127.0.0.1, free for both UDP and TCP, reserved for this process.

    ``kind`` only chooses which protocol asks the kernel for the candidate; the port returned
    is always checked free for both, so any server (UDP, TCP or both, e.g. SIP) can use it.
    """
    if kind not in ("udp", "tcp", "both"):
        raise ValueError(f"kind must be 'udp', 'tcp' or 'both', not {kind!r}")
    ask = "tcp" if kind == "tcp" else "udp"
    with _lock:
        for _ in range(attempts):
            port = _bind_zero(ask)
            if port in _given or not port_is_free(port, "both"):
                continue
            if _try_reserve(port):
                return port
    raise RuntimeError("no free loopback port found")


def free_ports(n: int, kind: Kind = "udp") -> list[int]:
    """``n`` distinct ports, each free for both UDP and TCP (see :func:`free_port`)."""
    return [free_port(kind) for _ in range(n)]


def free_port_range(n: int, *, attempts: int = 500) -> int:
    """First port of ``n`` consecutive ports free for UDP and TCP, all reserved.

    For programs that take a base port and use the following ones (sipp's ``-mp`` binds the
    base port and base+2).
    """
    lo, hi = _BLOCK_RANGE
    rng = random.SystemRandom()
    with _lock:
        for _ in range(attempts):
            base = rng.randrange(lo, hi - n) & ~1  # even base, like RTP
            block = range(base, base + n)
            if any(p in _given for p in block):
                continue
            if not all(port_is_free(p, "both") for p in block):
                continue
            taken = []
            for p in block:
                if not _try_reserve(p):
                    break
                taken.append(p)
            if len(taken) == n:
                return base
            for p in taken:  # partial: give back
                os.close(_reserved.pop(p))
    raise RuntimeError(f"no block of {n} free loopback ports found")
