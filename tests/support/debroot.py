"""Debian roots for the deployment tests: made once per test run with mmdebstrap through the
host's own apt, copied per test, booted under real systemd with systemd-nspawn.

    pristine = debian_root(cache_dir)               # mmdebstrap bookworm, once per run
    root = copy_root(pristine, tmp_path / "root")
    with BootedRoot(root, procs) as box:            # systemd-nspawn -b, waits for boot
        box.run("systemctl", "is-active", "dbus")   # nsenter -t INIT_PID -a ...
        box.reboot()
    # powered off here (by PID of the nspawn process if it does not go by itself)

Why mmdebstrap and not debootstrap: on a CI machine whose apt installed packages fine,
debootstrap failed three times on "Failed getting release file": it fetches with its own wget
and knows nothing of how the host's apt reaches the archive. mmdebstrap fetches with the host's
apt-get, but with APT_CONFIG pointing Dir at the new root, so the host's /etc/apt/apt.conf.d is
*not* read. What decides how the host's apt fetches is therefore carried over: `apt-config dump
Acquire` (proxies, retries, TLS, Check-Valid-Until for a snapshot archive; not what it fetches:
index targets, translations, changelogs) and the host's auth.conf paths, in a file that sits in
the root's apt.conf.d while mmdebstrap runs and is removed before it packs up; *_proxy from the
environment reach apt as they would from a shell. The root is debootstrap's minbase (Essential,
Priority: required, apt; merged /usr with usr-is-merged; a machine-id) plus INCLUDE, with the
host's archive for the suite in its sources.list. There is no debootstrap fallback: where it
failed, it failed three times in a row.

The container shares the host's network (no --private-network): its services listen on the
host's loopback, where the tests' peers (pebble, sipp, stunnel) run. It gets CAP_NET_ADMIN so
that its nftables table can be loaded, which is then the host's: BootedRoot deletes
`table inet teamsbc` from the host when it stops.
"""
from __future__ import annotations

import os
import re
import shlex
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


def _bounded(argv: list[str], timeout: float, *, grace: float = 0, **kw) -> subprocess.CompletedProcess:
    """Run to completion within ``timeout``; past it, the process group we started is killed
    (after SIGTERM and ``grace`` seconds, for a program that must clean up, like mmdebstrap its
    mounts)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, **kw)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the group of the process we started, by its PID
        os.killpg(p.pid, signal.SIGTERM if grace else signal.SIGKILL)
        try:
            out, _ = p.communicate(timeout=grace or 30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate(timeout=30)
        raise TimeoutError(f"{argv[:3]}... did not finish within {timeout:.0f}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(argv, p.returncode, out, "")


def _remove_root(root: Path) -> None:
    """Remove a root an interrupted build may have left, after unmounting what is mounted in it
    (mmdebstrap bind-mounts the host's /dev entries, /proc and /sys into it): rmtree must never
    walk into the host's."""
    def mounted() -> list[str]:   # /proc/self/mounts escapes a space as \040
        points = (line.split()[1].replace("\\040", " ") for line in Path("/proc/self/mounts").read_text().splitlines())
        return sorted((m for m in points if m.startswith(f"{root}/")), key=len, reverse=True)
    for point in mounted():
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=60)
    if mounted():
        raise RuntimeError(f"{root}: {mounted()} still mounted after umount; not removing it")
    shutil.rmtree(root, ignore_errors=True)


# what apt fetches is the root's own business, not how: index targets (a host's DEP-11
# AppStream add-on), translations (mmdebstrap sets "none"), changelogs, cdrom mounts
_NOT_HOW = ("Acquire::IndexTargets::", "Acquire::Languages", "Acquire::Changelogs::", "Acquire::cdrom::")
HOST_APT_CONF = "90teamsbc-host-apt"   # in the root's apt.conf.d while mmdebstrap runs
ATTEMPTS = 3
ATTEMPT_TIMEOUT = 900   # seconds: a busy mirror is slow, a hung one is not waited for


def host_apt_fetching() -> tuple[str, list[str]]:
    """The host apt's settings that decide how it fetches, as apt.conf text, and their names
    (for messages: values may hold a proxy's password). mmdebstrap's apt reads the new root's
    apt.conf.d, not the host's, so without these a host that needs a proxy, credentials or
    Check-Valid-Until "false" (a snapshot archive) fetches nothing."""
    def apt_config(*args: str) -> str:
        r = subprocess.run(["apt-config", *args], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"apt-config {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
        return r.stdout
    lines = [line for line in apt_config("dump", "--no-empty", "Acquire").splitlines()
             if line.startswith("Acquire::") and not line.startswith(_NOT_HOW)]
    # auth.conf: relative to Dir, which mmdebstrap points at the root; the host's, by absolute path
    shell = dict(re.findall(r"(\w+)='([^']*)'", apt_config(
        "shell", "NETRC", "Dir::Etc::netrc/f", "NETRCPARTS", "Dir::Etc::netrcparts/d")))
    if shell.get("NETRC") and Path(shell["NETRC"]).is_file():
        lines.append(f'Dir::Etc::netrc "{shell["NETRC"]}";')
    if shell.get("NETRCPARTS") and Path(shell["NETRCPARTS"]).is_dir():
        lines.append(f'Dir::Etc::netrcparts "{shell["NETRCPARTS"]}";')
    names = list(dict.fromkeys(re.sub(r"^(Acquire::CompressionTypes)::.*", r"\1", line.split(" ", 1)[0])
                               for line in lines))
    return "".join(line + "\n" for line in lines), names


def _keep_debs(archives: Path, debs: Path) -> None:
    """Hard-link what arrived into the cache (root and cache share the cache directory)."""
    for deb in archives.glob("*.deb"):
        if not (debs / deb.name).exists():
            os.link(deb, debs / deb.name)


def debian_root(cache_dir: Path, suite: str = "bookworm", include: str = INCLUDE) -> Path:
    """A pristine minbase root of ``suite`` in ``cache_dir`` (made on the first call, reused after),
    fetched by mmdebstrap with the host's apt and its fetching settings (module docstring)."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    root = Path(cache_dir).resolve() / f"{suite}-root"
    done = Path(cache_dir) / f"{suite}-root.done"
    if done.exists():
        return root
    started = time.monotonic()
    debs = (Path(cache_dir) / f"{suite}-debs").resolve()
    debs.mkdir(exist_ok=True)
    mirror = debian_mirror(suite)
    conf_text, carried = host_apt_fetching()
    conf = Path(cache_dir).resolve() / HOST_APT_CONF
    conf.touch(mode=0o600)
    conf.write_text(conf_text)
    inside = f'"$1/etc/apt/apt.conf.d/{HOST_APT_CONF}"'
    archives = '"$1/var/cache/apt/archives"'
    q_debs = shlex.quote(str(debs))
    argv = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={include}",
            # what earlier attempts (a busy mirror) or runs fetched is not fetched again
            "--skip=essential/unlink",
            # merged /usr as debootstrap makes it (symlinks, usr-is-merged), not usrmerge and perl
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            # a machine-id from the install, as debootstrap leaves it (mmdebstrap empties it:
            # every boot would be a first boot, and a reboot a new machine to journalctl)
            "--skip=cleanup/reproducible",
            f"--setup-hook=cp {shlex.quote(str(conf))} {inside}",
            f"--setup-hook=cp -al {q_debs}/. {archives}/",
            f"--customize-hook=rm {inside}",
            # (not cp -n: coreutils 9.2 made a skipped file an error)
            f"--customize-hook=for d in {archives}/*.deb; do [ -e {q_debs}/\"${{d##*/}}\" ] "
            f"|| ln \"$d\" {q_debs}/ || exit 1; done",
            suite, str(root), mirror]
    proxies = sorted(k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"))
    tried = (f"{' '.join(argv[:4])} {suite} ROOT {mirror}, with the host's apt and its "
             f"{', '.join(carried) or 'no Acquire settings'}"
             f"{'; environment: ' + ', '.join(proxies) if proxies else ''}")
    try:
        for attempt in range(1, ATTEMPTS + 1):
            _remove_root(root)
            try:
                r = _bounded(argv, ATTEMPT_TIMEOUT, grace=60)
            except TimeoutError as e:
                r = subprocess.CompletedProcess(argv, None, str(e), "")
            if r.returncode == 0:
                break
            if (root / "var/cache/apt/archives").is_dir():
                _keep_debs(root / "var/cache/apt/archives", debs)
            if attempt == ATTEMPTS:
                raise RuntimeError(f"making a Debian {suite} root failed {ATTEMPTS} times: {tried}. "
                                   f"The last time (mmdebstrap's and apt's output):\n{r.stdout[-4000:]}")
            time.sleep(10)
    finally:
        conf.unlink(missing_ok=True)
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
