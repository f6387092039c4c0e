"""Debian roots for the deployment tests: made once per test run with debootstrap, copied per
test, booted under real systemd with systemd-nspawn.

    pristine = debian_root(cache_dir)               # debootstrap bookworm, once per run
    root = copy_root(pristine, tmp_path / "root")
    with BootedRoot(root, procs) as box:            # systemd-nspawn -b, waits for boot
        box.run("systemctl", "is-active", "dbus")   # nsenter -t INIT_PID -a ...
        box.reboot()
    # powered off here (by PID of the nspawn process if it does not go by itself)

The container shares the host's network (no --private-network): its services listen on the
host's loopback, where the tests' peers (pebble, sipp, stunnel) run. It gets CAP_NET_ADMIN so
that its nftables table can be loaded, which is then the host's: BootedRoot deletes
`table inet teamsbc` from the host when it stops.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .procs import ManagedProcess, ProcessManager, wait_for

__all__ = ["debian_mirror", "debian_root", "copy_root", "BootedRoot", "INCLUDE"]

INCLUDE = "systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates"
ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
       "HOME=/root", "LANG=C.UTF-8"]


def debian_mirror(suite: str = "bookworm") -> str:
    """The Debian archive this host's apt uses for ``suite`` (deb822 .sources or sources.list):
    the tests use the same archive as the machine, never a hard-coded one."""
    found: list[str] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"(?m)^(\w[\w-]*):\s*(.*)$", stanza))
            if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                found += fields.get("URIs", "").split()
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if f.is_file():
            for m in re.finditer(rf"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{suite}\s", f.read_text()):
                found.append(m.group(1))
    for uri in found:
        if "security" not in uri:
            return uri
    raise RuntimeError(f"no Debian archive for {suite} in this host's apt sources "
                       "(/etc/apt/sources.list[.d]): the deployment tests install from it")


def _bounded(argv: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, **kw)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)   # the group of the process we started, by its PID
        out, _ = p.communicate(timeout=30)
        raise TimeoutError(f"{argv[:3]}... did not finish within {timeout:.0f}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(argv, p.returncode, out, "")


def debian_root(cache_dir: Path, suite: str = "bookworm", include: str = INCLUDE) -> Path:
    """A pristine debootstrap root in ``cache_dir`` (made on the first call, reused after)."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    root = Path(cache_dir) / f"{suite}-root"
    done = Path(cache_dir) / f"{suite}-root.done"
    if done.exists():
        return root
    started = time.monotonic()
    debs = (Path(cache_dir) / f"{suite}-debs").resolve()
    debs.mkdir(exist_ok=True)
    # a download that failed (a busy mirror) is tried again; what arrived is kept in the cache
    # directory, so a retry fetches only what is missing
    for attempt in (1, 2, 3):
        shutil.rmtree(root, ignore_errors=True)
        r = _bounded(["debootstrap", "--variant=minbase", f"--include={include}", f"--cache-dir={debs}",
                      suite, str(root), debian_mirror(suite)], 900)
        if r.returncode == 0:
            break
        if attempt == 3:
            raise RuntimeError(f"debootstrap {suite} failed 3 times; the last time:\n{r.stdout[-3000:]}")
        time.sleep(10)
    # a site's TLS-inspecting proxy CA, if the host has one, added the way an admin would
    local_cas = list(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    if local_cas:
        dest = root / "usr/local/share/ca-certificates"
        dest.mkdir(parents=True, exist_ok=True)
        for ca in local_cas:
            shutil.copy(ca, dest / ca.name)
        r = _bounded(["chroot", str(root), *ENV, "update-ca-certificates"], 120)
        if r.returncode != 0:
            raise RuntimeError(f"update-ca-certificates in the root failed:\n{r.stdout[-2000:]}")
    (root / "etc/hostname").write_text("sbc-test\n")
    done.write_text(f"{time.monotonic() - started:.0f}\n")
    return root


def copy_root(pristine: Path, dest: Path) -> Path:
    r = _bounded(["cp", "-a", "--reflink=auto", str(pristine), str(dest)], 300)
    if r.returncode != 0:
        raise RuntimeError(f"copying {pristine} failed: {r.stdout[-2000:]}")
    return dest


class BootedRoot:
    """A root booted under real systemd (systemd-nspawn -b), entered with nsenter."""

    def __init__(self, root: Path, procs: ProcessManager, *, name: str = "nspawn"):
        self.root = Path(root)
        self.procs = procs
        self.name = name
        self.process: ManagedProcess | None = None
        self.boots = 0

    # ---- life
    def boot(self, timeout: float = 120) -> "BootedRoot":
        self.boots += 1
        self.process = self.procs.start(f"{self.name}-{self.boots}", [
            "systemd-nspawn", "-q", "--register=no", "--keep-unit", "--capability=CAP_NET_ADMIN",
            # its own machine name: nspawn keeps per-name state in /run/systemd/nspawn/
            f"--machine=teamsbc-test-{os.getpid()}-{id(self) % 10000}", "-D", str(self.root), "-b"])
        self.wait_booted(timeout)
        return self

    @property
    def init_pid(self) -> int:
        """The container's systemd: the child of the nspawn process."""
        assert self.process is not None
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return int(child)
                except OSError:
                    continue
        raise RuntimeError(f"no systemd under nspawn pid {self.process.pid}")

    def wait_booted(self, timeout: float) -> str:
        def init():
            try:
                return self.init_pid
            except (RuntimeError, OSError):
                return None
        wait_for(init, timeout, what="the container's systemd", alive=self.process)

        def state():   # until its bus is up: "Failed to connect to bus"
            out = self.run("systemctl", "is-system-running", "--wait", timeout=timeout, check=False).stdout
            return out.strip().splitlines()[-1] if "bus" not in out and out.strip() else None
        final = wait_for(state, timeout, interval=0.2, what="the container's boot", alive=self.process)
        assert final in ("running", "degraded"), f"boot ended {final!r}:\n{self.run('systemctl', '--failed').stdout}"
        return final

    def reboot(self, timeout: float = 120) -> None:
        """`systemctl reboot` inside: nspawn exits with 133 ("the container asked for a
        reboot", as a supervisor like systemd-nspawn@.service sees it) and is started again."""
        assert self.process is not None
        self.run("systemctl", "reboot", check=False)
        rc = self.process.wait(timeout)
        assert rc == 133, f"nspawn exited {rc} on a reboot (133 expected)"
        self.boot(timeout)

    def poweroff(self, timeout: float = 60) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.run("systemctl", "poweroff", check=False, timeout=30)
            self.process.wait(timeout)
        except Exception:  # noqa: BLE001 - then by PID: nspawn powers off on SIGTERM
            self.process.stop(timeout=30)
        finally:
            # the container shared the host's network namespace: its firewall table is the host's
            subprocess.run(["nft", "delete", "table", "inet", "teamsbc"], capture_output=True, timeout=30)

    def __enter__(self) -> "BootedRoot":
        return self.boot()

    def __exit__(self, *exc) -> None:
        self.poweroff()

    # ---- inside
    def run(self, *argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside (all namespaces of its init), clean environment, bounded."""
        r = _bounded(["nsenter", "-t", str(self.init_pid), "-a", *ENV, *argv], timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {r.returncode} in the container:\n{r.stdout[-6000:]}")
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")
