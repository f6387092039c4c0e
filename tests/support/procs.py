"""Subprocesses for tests: output to files, stopped by PID, never left behind.

    with ProcessManager(tmp_path) as pm:
        p = pm.start("stunnel", ["stunnel4", "conf"])
        wait_port("127.0.0.1", 5061, "tcp", pid=p.pid)
        ...
    # every process started through pm is stopped here, also when the block raised

The ``procs`` fixture in tests/conftest.py gives each test its own ProcessManager.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

__all__ = [
    "ManagedProcess",
    "ProcessManager",
    "ProcessExited",
    "wait_for",
    "wait_port",
    "port_listening",
    "STOP_TIMEOUT",
]

STOP_TIMEOUT = 5.0


class ProcessExited(RuntimeError):
    """A process died while we waited for it to become ready."""


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    *,
    interval: float = 0.02,
    what: str = "condition",
    alive: "ManagedProcess | None" = None,
) -> object:
    """Poll ``predicate`` until it returns a true value (returned) or ``timeout`` seconds pass.

    The interval grows up to 0.2 s. With ``alive``, raise ProcessExited as soon as that process
    has exited (no point waiting for a dead server).
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None and alive.poll() is not None:
            raise ProcessExited(
                f"{alive.name} (pid {alive.pid}) exited with {alive.returncode} while waiting for "
                f"{what}\n--- stderr ---\n{alive.stderr_text()[-3000:]}"
                f"\n--- stdout ---\n{alive.stdout_text()[-3000:]}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


# --------------------------------------------------------------------------- ports

_PROC_NET = {"tcp": ("tcp", "tcp6"), "udp": ("udp", "udp6")}
_TCP_LISTEN = "0A"


def _socket_inodes(pid: int) -> set[str] | None:
    """Inodes of the sockets ``pid`` holds open, or None if /proc cannot tell us."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return None
    return inodes


def _hex_addr_matches(hexaddr: str, host: str) -> bool:
    """Does a /proc/net address (little-endian hex IPv4, or IPv6) match ``host`` or a wildcard?"""
    if len(hexaddr) == 8:
        ip = socket.inet_ntoa(bytes.fromhex(hexaddr)[::-1])
        return ip in (host, "0.0.0.0")
    raw = bytes.fromhex(hexaddr)
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    ip6 = socket.inet_ntop(socket.AF_INET6, b"".join(words))
    return ip6 in ("::", f"::ffff:{host}") or (host == "::1" and ip6 == "::1")


def port_listening(
    host: str, port: int, proto: Literal["tcp", "udp"] = "tcp", pid: int | None = None
) -> bool:
    """Is something bound to ``host:port`` (TCP: listening) — without connecting to it.

    Reads /proc/net/{tcp,udp}[6], so probing does not open a connection the server would see
    (a probe connection to stunnel would start a TLS session). With ``pid``, only sockets that
    process holds count. Falls back to a TCP connect where /proc is unavailable.
    """
    if proto not in _PROC_NET:
        raise ValueError(f"proto must be 'tcp' or 'udp', not {proto!r}")
    owned = _socket_inodes(pid) if pid is not None else None
    found_proc = False
    for table in _PROC_NET[proto]:
        try:
            with open(f"/proc/net/{table}") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        found_proc = True
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, state, inode = parts[1], parts[3], parts[9]
            hexaddr, hexport = local.split(":")
            if int(hexport, 16) != port:
                continue
            if proto == "tcp" and state != _TCP_LISTEN:
                continue
            if not _hex_addr_matches(hexaddr, host):
                continue
            if owned is not None and inode not in owned:
                continue
            return True
    if not found_proc:
        if proto == "udp":
            raise RuntimeError("cannot check UDP ports without /proc/net/udp")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False
    return False


def wait_port(
    host: str,
    port: int,
    proto: Literal["tcp", "udp"] = "tcp",
    *,
    timeout: float = 10.0,
    pid: int | None = None,
    process: "ManagedProcess | None" = None,
) -> None:
    """Wait until ``host:port`` is bound (TCP: listening), polling, at most ``timeout`` s.

    Pass ``process`` (or ``pid``) to require that this process holds the socket and to fail
    early if it exits.
    """
    if process is not None and pid is None:
        pid = process.pid
    wait_for(
        lambda: port_listening(host, port, proto, pid),
        timeout,
        what=f"{proto} {host}:{port}" + (f" bound by pid {pid}" if pid else ""),
        alive=process,
    )


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Safety net: if the test runner itself is killed, its children get SIGTERM (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort, never block the start
        pass



class ManagedProcess:
    """A subprocess whose stdout/stderr go to files; stopped by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        logdir: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        logdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = logdir / f"{name}.stdout"
        self.stderr_path = logdir / f"{name}.stderr"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=str(cwd) if cwd else None,
                env=full_env,
                # Own session: a Ctrl-C to pytest does not hit it first, and it cannot grab
                # the terminal. It is still stopped by PID (never by group or by name).
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pid = self.popen.pid

    # ---- state
    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit; raise subprocess.TimeoutExpired after ``timeout`` seconds."""
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit status."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait()
        return self.popen.returncode

    # ---- output
    def stdout_text(self) -> str:
        return _read(self.stdout_path)

    def stderr_text(self) -> str:
        return _read(self.stderr_path)

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class ProcessManager:
    """Starts processes and stops every one of them (by PID) on ``stop_all``/exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = Path(logdir)
        self.processes: list[ManagedProcess] = []
        self._names: dict[str, int] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        logdir: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv``; output goes to ``<logdir>/<name>.stdout|stderr`` (name made unique;
        ``logdir`` defaults to the manager's)."""
        n = self._names.get(name, 0)
        self._names[name] = n + 1
        unique = name if n == 0 else f"{name}-{n}"
        proc = ManagedProcess(unique, argv, Path(logdir) if logdir else self.logdir, cwd=cwd, env=env)
        self.processes.append(proc)
        return proc

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop all still-running processes, newest first (clients before servers)."""
        errors = []
        for proc in reversed(self.processes):
            try:
                proc.stop(timeout)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                errors.append(f"{proc.name}: {exc!r}")
        if errors:
            raise RuntimeError("could not stop: " + "; ".join(errors))

    def describe(self, tail: int = 2000) -> str:
        """Exit status and the end of each process's output, for failure messages."""
        out = []
        for p in self.processes:
            out.append(f"=== {p!r} argv={p.argv}")
            for label, text in (("stderr", p.stderr_text()), ("stdout", p.stdout_text())):
                if text.strip():
                    out.append(f"--- {label} (last {tail} chars) ---\n{text[-tail:]}")
        return "\n".join(out)

    def __enter__(self) -> "ProcessManager":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
