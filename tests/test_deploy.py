"""deploy/: the systemd units pass `systemd-analyze verify`, nftables / logrotate / rtpengine
accept their files, the example config is valid, and install.sh installs (into a --root
prefix, and, marked slow, in a clean Debian 12 root made by mmdebstrap).

`systemd-analyze verify` checks that every Exec*= binary exists, so the units are verified in
a root (--root) holding the host's system units, the units themselves and stand-ins for
/opt/teamsbc/venv/bin/teamsbc and /usr/local/bin/teamsbc (the slow test verifies them again in
the installed Debian root, with the real binaries).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from teamsbc import config as cfg
from teamsbc import labpki

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNITS = ["teamsbc.service", "teamsbc-renew.service", "teamsbc-renew.timer", "teamsbc-firewall.service"]
HOST_UNITS = Path("/usr/lib/systemd/system")
is_root = os.geteuid() == 0


def run_bounded(argv, timeout, **kw) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group; on timeout the whole group is killed by the
    PID of its leader (apt/pip children included), then the test fails."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, **kw)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
        pytest.fail(f"{argv[:3]}... did not finish within {timeout}s:\n{out[-5000:]}")
    return subprocess.CompletedProcess(argv, p.returncode, out, "")


# --------------------------------------------------------------------------- units
def exec_paths(unit_text: str) -> set[str]:
    out = set()
    for m in re.finditer(r"(?m)^Exec\w+=([-+@:!]*)(\S+)", unit_text):
        out.add(m.group(2))
    return out


def verify_root(tmp_path: Path, units: dict[str, str]) -> Path:
    root = tmp_path / "vroot"
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
        for path in exec_paths(text):
            stand_in = root / path.lstrip("/")
            if not stand_in.exists():
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("#!/bin/sh\n")
                stand_in.chmod(0o755)
    return root


def analyze(root: Path, names: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *names],
                          capture_output=True, text=True, timeout=60)


# ./run-tests installs systemd, nftables, logrotate and mmdebstrap: a missing tool fails, never skips
needs_analyze = pytest.mark.e2e


@needs_analyze
def test_units_pass_systemd_analyze_verify(tmp_path):
    units = {n: (DEPLOY / n).read_text() for n in UNITS if (DEPLOY / n).exists()}
    assert "teamsbc.service" in units
    r = analyze(verify_root(tmp_path, units), list(units))
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


@needs_analyze
def test_verify_would_catch_a_broken_unit(tmp_path):
    """Control: the same check flags a typo, so a clean pass above means something."""
    text = (DEPLOY / "teamsbc.service").read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    r = analyze(verify_root(tmp_path, {"teamsbc.service": text}), ["teamsbc.service"])
    assert "ProtectSystm" in r.stdout + r.stderr


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_service_unit_settings():
    s = unit_settings((DEPLOY / "teamsbc.service").read_text())
    assert s["User"] == ["teamsbc"] and s["Group"] == ["teamsbc"]
    assert s["ExecStart"] == ["/opt/teamsbc/venv/bin/teamsbc run -c /etc/teamsbc/teamsbc.yaml"]
    assert s["ExecReload"] == ["/bin/sh -c 'kill -HUP ${MAINPID}'"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]      # config errors: fix, do not retry
    assert "ExecStartPre" not in s                     # run does check's checks (exit 2, not retried)
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert s["SystemCallFilter"] == ["@system-service"]
    # writes only its state directory: no other writable path
    assert s["StateDirectory"] == ["teamsbc"] and "ReadWritePaths" not in s and "LogsDirectory" not in s
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("ProtectKernelTunables", "yes"),
                       ("ProtectKernelModules", "yes"), ("ProtectKernelLogs", "yes"),
                       ("ProtectControlGroups", "yes")):
        assert s.get(key) == [value], key
    assert s["WantedBy"] == ["multi-user.target"]


def test_renew_unit_writes_only_the_state_directory_as_the_sbc_user():
    s = unit_settings((DEPLOY / "teamsbc-renew.service").read_text())
    assert s["User"] == ["teamsbc"] and s["StateDirectory"] == ["teamsbc"] and s["ProtectSystem"] == ["strict"]
    assert s["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]   # HTTP-01 on port 80
    assert "ReadWritePaths" not in s and "ExecStartPost" not in s
    example = yaml.safe_load((DEPLOY / "teamsbc.yaml.example").read_text())
    # every place the installed SBC or renewal writes is inside that state directory
    for where in (example["certs_dir"], example["cdr"]["path"], example["capture"]["trace_dir"]):
        assert where.startswith("/var/lib/teamsbc/"), where
    text = (DEPLOY / "teamsbc.service").read_text() + (DEPLOY / "teamsbc-renew.service").read_text()
    assert "runs as root" not in text and "/etc/teamsbc/certs" not in text


def test_cron_log_is_the_one_logrotate_rotates():
    cron = (DEPLOY / "teamsbc-renew.cron").read_text()
    log = re.search(r">>\s*(\S+)", cron).group(1)
    rotated = re.findall(r"(?m)^(/\S+)", (DEPLOY / "logrotate-teamsbc").read_text())
    import fnmatch
    assert any(fnmatch.fnmatch(log, pattern) for pattern in rotated), (log, rotated)


def test_firewall_unit_loads_the_file_teams_setup_writes():
    from teamsbc.teams_setup import FIREWALL_FILE
    s = unit_settings((DEPLOY / "teamsbc-firewall.service").read_text())
    assert s["ExecStart"] == [f"/usr/sbin/nft -f {FIREWALL_FILE}"]
    assert s["ConditionPathExists"] == [FIREWALL_FILE] and s["WantedBy"] == ["sysinit.target"]


# --------------------------------------------------------------------------- other files
def test_nftables_template_is_accepted_by_nft():
    r = subprocess.run(["nft", "-c", "-f", str(DEPLOY / "nftables-teamsbc.nft")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    text = (DEPLOY / "nftables-teamsbc.nft").read_text()
    for rng in ("52.112.0.0/14", "52.120.0.0/14", "52.122.0.0/15"):
        assert rng in text


def test_logrotate_file_parses(tmp_path):
    # `su teamsbc teamsbc` needs the user: the slow test checks the file as installed; here
    # the same file with root, so that only the syntax is judged
    conf = tmp_path / "teamsbc"
    conf.write_text((DEPLOY / "logrotate-teamsbc").read_text().replace("su teamsbc teamsbc", "su root root"))
    r = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "error:" not in r.stdout + r.stderr, r.stdout + r.stderr


def rtpengine_options() -> set[str]:
    r = subprocess.run(["rtpengine", "--help"], capture_output=True, text=True, timeout=30)
    return set(re.findall(r"--([a-z0-9-]+)", r.stdout + r.stderr))


def test_rtpengine_conf_keys_exist_and_rtpengine_runs_with_it(tmp_path, procs):
    from tests.support.ports import free_port
    from tests.support.procs import wait_for
    from tests.support.rtpengine import media_port_window, ng_command, release_port_window
    text = (DEPLOY / "rtpengine.conf").read_text()
    assert "managed-by-teamsbc" in text   # install.sh's marker
    keys = [m.group(1) for m in re.finditer(r"(?m)^([a-z-]+)\s*=", text)]
    # rtpengine ignores unknown keys silently: every key must be one of its options
    assert set(keys) <= rtpengine_options(), set(keys) - rtpengine_options()
    assert re.search(r"(?m)^table = -1$", text) and re.search(r"(?m)^listen-ng = 127.0.0.1:22222$", text)
    assert re.search(r"(?m)^interface = pub/\S+;priv/\S+$", text)
    # the file as it is, addresses and ports moved to loopback, runs and answers NG
    ng, base = free_port("udp"), media_port_window(100)
    try:
        local = re.sub(r"(?m)^interface = .*$", "interface = pub/127.0.0.1;priv/127.0.0.2", text)
        local = re.sub(r"(?m)^listen-ng = .*$", f"listen-ng = 127.0.0.1:{ng}", local)
        local = re.sub(r"(?m)^port-min = .*$", f"port-min = {base}", local)
        local = re.sub(r"(?m)^port-max = .*$", f"port-max = {base + 99}", local)
        conf = tmp_path / "rtpengine.conf"
        conf.write_text(local)
        p = procs.start("rtpengine", ["rtpengine", f"--config-file={conf}", "--config-section=rtpengine",
                                      "--foreground", "--log-stderr", f"--pidfile={tmp_path / 'pid'}"])

        def pong():
            try:
                return ng_command(ng, {"command": "ping"}, timeout=0.2).get("result") == "pong"
            except OSError:
                return False
        wait_for(pong, 10, what="rtpengine NG ping", alive=p)
    finally:
        procs.stop_all()
        release_port_window(base)


def test_example_config_is_complete_and_valid(tmp_path):
    pki = labpki.ensure_lab_pki(tmp_path / "pki", "sbc.example.com", ["sip.pstnhub.microsoft.com"])
    data = yaml.safe_load((DEPLOY / "teamsbc.yaml.example").read_text())
    data["teams"]["certificate"], data["teams"]["private_key"] = str(pki.sbc_fullchain), str(pki.sbc_key)
    c = cfg.from_dict(data, source="teamsbc.yaml.example", base=tmp_path)
    assert c.sbc.fqdn == "sbc.example.com" and c.pbx.address.host == "10.0.0.10"
    # every teams/pbx/media key the config knows appears in the example (set or commented)
    text = (DEPLOY / "teamsbc.yaml.example").read_text()
    for section, obj in (("teams", c.teams), ("pbx", c.pbx), ("media", c.media), ("numbers", c.numbers)):
        for name in obj.__dataclass_fields__:
            key = {"certificate": "certificate", "private_key": "private_key"}.get(name, name)
            assert re.search(rf"(?m)^\s*#?\s*{key}:", text), f"{section}.{key} missing from the example"


# --------------------------------------------------------------------------- install.sh
def test_install_sh_shell_syntax():
    r = subprocess.run(["bash", "-n", str(DEPLOY / "install.sh")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    head = (DEPLOY / "install.sh").read_text().splitlines()[:30]
    assert any("set -euo pipefail" in line for line in head)


@pytest.mark.e2e
@pytest.mark.skipif(not is_root, reason="install.sh runs as root (useradd --root)")
def test_install_sh_into_a_root_prefix_is_idempotent(tmp_path, release):
    root = tmp_path / "target"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    started = time.monotonic()
    wheel = next(release.glob("teamsbc-*.whl"))   # install from the release file
    r = run_bounded(["bash", str(DEPLOY / "install.sh"), "--root", str(root), "--package", str(wheel)], 600)
    assert r.returncode == 0, r.stdout[-5000:]
    assert f"installing teamsbc from {wheel}" in r.stdout
    first = time.monotonic() - started
    venv_teamsbc = root / "opt/teamsbc/venv/bin/teamsbc"
    assert subprocess.run([str(venv_teamsbc), "--version"], capture_output=True, text=True,
                          timeout=60).stdout.startswith("teamsbc ")
    assert os.readlink(root / "usr/local/bin/teamsbc") == "/opt/teamsbc/venv/bin/teamsbc"
    user = [l for l in (root / "etc/passwd").read_text().splitlines() if l.startswith("teamsbc:")]
    assert user and user[0].endswith(":/var/lib/teamsbc:/usr/sbin/nologin")
    uid, gid = int(user[0].split(":")[2]), int(user[0].split(":")[3])
    for state in ("var/lib/teamsbc", "var/lib/teamsbc/certs"):
        st = (root / state).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o750), state
    st = (root / "etc/teamsbc").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o750)
    assert not (root / "etc/teamsbc/certs").exists()      # certificates live in the state directory
    conf = root / "etc/teamsbc/teamsbc.yaml"
    assert conf.stat().st_gid == gid and conf.stat().st_mode & 0o777 == 0o640
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_text() == (DEPLOY / unit).read_text()
    assert (root / "etc/logrotate.d/teamsbc").exists()
    assert (root / "usr/share/doc/teamsbc/configuration.md").exists()
    assert "--root: not running systemctl" in r.stdout
    # again: the operator's config stays, nothing else breaks
    conf.write_text(conf.read_text() + "# edited by the operator\n")
    r2 = run_bounded(["bash", str(DEPLOY / "install.sh"), "--root", str(root)], 600)
    assert r2.returncode == 0, r2.stdout[-5000:]
    assert "keeping /etc/teamsbc/teamsbc.yaml" in r2.stdout
    assert conf.read_text().endswith("# edited by the operator\n")
    assert sum(1 for l in (root / "etc/passwd").read_text().splitlines() if l.startswith("teamsbc:")) == 1
    print(f"install.sh --root: {first:.0f}s first run")


# --------------------------------------------------------------------------- Debian 12 root
def repo_copy(dest: Path) -> None:
    skip = {".venv", ".git", "__pycache__", ".pytest_cache", "teamsbc.egg-info", "bench"}
    shutil.copytree(REPO, dest, ignore=lambda d, names: [n for n in names if n in skip])


@pytest.mark.slow
@pytest.mark.e2e
def test_install_sh_in_a_clean_debian_12_root(tmp_path, bookworm_root):
    """The run's Debian 12 root (tests/support/debroot.py), copied, then `chroot DIR bash
    /root/teamsbc/deploy/install.sh --with-rtpengine` twice: a chroot, no systemd running
    (tests/test_booted_systemd.py boots one). Needs Debian's archive (apt) and PyPI (pip)."""
    from tests.support.debroot import copy_root
    root = copy_root(bookworm_root, tmp_path / "root")
    timings = {}
    try:
        # package scripts must not start daemons in a chroot
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        repo_copy(root / "root/teamsbc")
        env = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME=/root", "LANG=C.UTF-8"]
        chroot = ["chroot", str(root)]

        t = time.monotonic()
        r = run_bounded(chroot + env + ["bash", "/root/teamsbc/deploy/install.sh", "--with-rtpengine"], 1200)
        timings["install"] = time.monotonic() - t
        assert r.returncode == 0, r.stdout[-8000:]
        out = r.stdout
        assert "creating system user teamsbc" in out
        assert "systemd is not running here" in out   # a chroot: units installed, not enabled

        def inside(*argv):
            return run_bounded(chroot + env + list(argv), 120)
        assert inside("getent", "passwd", "teamsbc").stdout.startswith("teamsbc:x:")
        assert inside("/usr/local/bin/teamsbc", "--version").stdout.startswith("teamsbc ")
        check = inside("/usr/local/bin/teamsbc", "check", "-c", "/etc/teamsbc/teamsbc.yaml")
        assert check.returncode in (0, 2) and "/etc/teamsbc/teamsbc.yaml" in check.stdout
        lr = inside("logrotate", "-d", "/etc/logrotate.d/teamsbc")
        assert lr.returncode == 0 and "error:" not in lr.stdout, lr.stdout
        assert "managed-by-teamsbc" in (root / "etc/rtpengine/rtpengine.conf").read_text()
        assert "MANAGE_IPTABLES=no" in (root / "etc/default/rtpengine-daemon").read_text()
        for unit in UNITS:
            assert (root / "etc/systemd/system" / unit).exists(), unit

        t = time.monotonic()
        r2 = run_bounded(chroot + env + ["bash", "/root/teamsbc/deploy/install.sh", "--with-rtpengine"], 1200)
        timings["again"] = time.monotonic() - t
        assert r2.returncode == 0, r2.stdout[-8000:]
        assert "packages already installed" in r2.stdout and "keeping /etc/teamsbc/teamsbc.yaml" in r2.stdout

        if shutil.which("systemd-analyze") and HOST_UNITS.is_dir():
            # the installed units, with the real binaries of the installed root
            shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", dirs_exist_ok=True, symlinks=True,
                            ignore=lambda d, names: [n for n in names if (root / "usr/lib/systemd/system" / n).exists()])
            v = analyze(root, UNITS)
            assert v.returncode == 0 and not (v.stdout + v.stderr).strip(), v.stdout + v.stderr
        print("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
