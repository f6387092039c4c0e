"""The appliance as installed (issue 11): a Debian 12 root booted under real systemd, used the
way docs/operations.md tells an admin to, on the distribution's own python3 (3.11.2).

    release tarball -> deploy/install.sh -> config from the example -> first certificate from
    pebble (systemctl start teamsbc-renew.service, as the teamsbc user) -> firewall ->
    systemctl enable --now teamsbc teamsbc-renew.timer -> 100 TLS handshakes, calls both ways
    (sipp + stunnel on the host), CDRs, POST /trace -> forced renewal, served within 15 s by the
    same process -> restart keeps CDRs -> a config error is not restarted -> reboot: the SBC and
    the firewall table come back -> no permission error in the journal

The root is made once per run (mmdebstrap through the host's apt, under a minute) and copied;
the container shares the host's network, so its SBC listens on loopback ports chosen here and
the peers run on the host, all stopped by PID. Timings of each phase are printed (pytest -s shows them).
"""
from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.support.debroot import BootedRoot, copy_root
from tests.support.pebble import start_challtestsrv, start_pebble
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.procs import port_listening, wait_for
from tests.support.sipp import Sipp, teams_callee, teams_caller

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
CONF = "/etc/teamsbc/teamsbc.yaml"
PERMISSION = re.compile(r"permission denied|permissionerror|operation not permitted|eacces", re.I)


def serial_presented(port: int, pki, ca: Path) -> int:
    """One TLS handshake as Teams makes it (client certificate); the SBC's serial."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=pki.sbc_fqdn) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def admin(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class Phases:
    def __init__(self):
        self.t = time.monotonic()
        self.times: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times[name] = now - self.t
        self.t = now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.0f}s" for k, v in self.times.items()) + f"; total {sum(self.times.values()):.0f}s"


def test_debian_12_booted_appliance(tmp_path, procs, test_pki, bookworm_root, release):
    ph = Phases()
    root = copy_root(bookworm_root, tmp_path / "root")
    sdist = next(release.glob("teamsbc-*.tar.gz"))
    (root / "root" / sdist.name).write_bytes(sdist.read_bytes())
    ph.done("root")

    # ---- the peers on the host: pebble (ACME), stunnel + sipp (Teams), sipp (PBX)
    chall = start_challtestsrv(procs, tmp_path)
    pebble = start_pebble(procs, tmp_path, dns_server=chall.dns_address)
    pebble_root = pebble.write_root(tmp_path / "pebble-root.pem")
    teams_trust = tmp_path / "teams-trust.pem"       # what "Teams" trusts: pebble's root
    teams_trust.write_bytes(pebble_root.read_bytes())
    tls_port, pbx_listen, admin_port = free_port("tcp"), free_port("both"), free_port("tcp")
    teams_sipp, pbx_port = free_port("tcp"), free_port("both")
    client_port, server_port = free_port("tcp"), free_port("tcp")
    from tests.support.stunnel import Stunnel, TeamsClient, TeamsServer
    stunnel = Stunnel(tmp_path, [
        TeamsClient.for_pki(test_pki, accept_port=client_port, connect_port=tls_port, ca_file=teams_trust),
        TeamsServer.for_pki(test_pki, accept_port=server_port, connect_port=teams_sipp, ca_file=teams_trust),
    ], procs=procs).start()
    ph.done("peers")

    box = BootedRoot(root, procs)
    distro_python = "?"
    try:
        box.boot()
        ph.done("boot")
        distro_python = box.run("/usr/bin/python3", "-V").stdout.strip()

        # ---- install from the release, as docs/operations.md says
        box.run("tar", "-C", "/root", "-xzf", f"/root/{sdist.name}")
        unpacked = "/root/" + sdist.name.removesuffix(".tar.gz")
        inst = box.run("bash", f"{unpacked}/deploy/install.sh", timeout=900)
        assert "enabled: teamsbc-firewall.service" in inst.stdout, inst.stdout[-3000:]
        assert box.run("systemctl", "is-enabled", "teamsbc.service", check=False).stdout.strip() == "disabled"
        venv_python = box.run("/opt/teamsbc/venv/bin/python", "-V").stdout.strip()
        assert venv_python == distro_python, (venv_python, distro_python)
        ph.done("install.sh")

        # ---- the config: the installed example with lab values (the only file an admin edits)
        for name, src in (("teams-ca.pem", test_pki.ca_cert), ("pebble-https-ca.pem", pebble.https_ca),
                          ("pebble-root.pem", pebble_root)):
            (root / "etc/teamsbc" / name).write_bytes(Path(src).read_bytes())
        conf_path = box.path(CONF)
        conf = yaml.safe_load(conf_path.read_text())
        conf["sbc"]["fqdn"] = test_pki.sbc_fqdn
        conf["teams"].update({"listen": f"127.0.0.1:{tls_port}", "trusted_ca": "teams-ca.pem",
                              "resolve": {n: f"127.0.0.1:{server_port}" for n in TEAMS_NAMES},
                              "options_interval": 0})
        conf["pbx"].update({"listen": f"127.0.0.1:{pbx_listen}", "address": f"127.0.0.1:{pbx_port}",
                            "options_interval": 0})
        conf["admin"] = {"listen": f"127.0.0.1:{admin_port}"}
        conf["acme"] = {"directory": pebble.directory_url, "email": "ops@teamsbc.test",
                        "ca_bundle": "pebble-https-ca.pem", "trusted_roots": "pebble-root.pem",
                        "http01_listen": f"127.0.0.1:{pebble.http_port}"}
        conf_path.write_text(yaml.safe_dump(conf, sort_keys=False))   # same inode: root:teamsbc 0640 stays
        check = box.run("teamsbc", "check", "-c", CONF, check=False)
        assert check.returncode == 2 and "teams.certificate" in check.stdout and "teamsbc cert issue" in check.stdout, check.stdout
        ph.done("config")

        # ---- first certificate: as root the store would get a key the SBC cannot read: refused
        as_root = box.run("teamsbc", "cert", "issue", "-c", CONF, check=False)
        assert as_root.returncode == 1 and "belongs to teamsbc" in as_root.stdout, as_root.stdout
        box.run("systemctl", "start", "teamsbc-renew.service", timeout=300)
        assert box.show("teamsbc-renew.service", "Result")["Result"] == "success"
        live = box.path(f"/var/lib/teamsbc/certs/live/{test_pki.sbc_fqdn}")
        key_stat = (live / "privkey.pem").stat()
        teamsbc_uid = int(box.run("id", "-u", "teamsbc").stdout)
        assert (key_stat.st_uid, key_stat.st_mode & 0o777) == (teamsbc_uid, 0o600)
        first_serial = x509.load_pem_x509_certificate((live / "fullchain.pem").read_bytes()).serial_number
        assert box.run("teamsbc", "check", "-c", CONF).returncode == 0
        ph.done("first certificate")

        # ---- firewall, then the service and the timer
        fw = box.run("teamsbc", "teams-setup", "-c", CONF, "--firewall")
        assert "loaded" in fw.stdout
        # its boot unit was skipped at install (no file yet); now it says what is true
        assert box.show("teamsbc-firewall.service", "ActiveState")["ActiveState"] == "active", fw.stderr
        assert f"dport {tls_port}" in box.run("nft", "list", "table", "inet", "teamsbc").stdout.replace("$SBC_TLS_PORT", str(tls_port))
        box.run("systemctl", "enable", "--now", "teamsbc", "teamsbc-renew.timer")
        wait_for(lambda: port_listening("127.0.0.1", tls_port), 30, what="the installed SBC's TLS port")
        pid = box.show("teamsbc.service", "MainPID")["MainPID"]
        time.sleep(10)
        s = box.show("teamsbc.service", "ActiveState", "SubState", "MainPID", "NRestarts")
        assert (s["ActiveState"], s["SubState"], s["MainPID"], s["NRestarts"]) == ("active", "running", pid, "0"), s
        exe = box.run("readlink", f"/proc/{pid}/exe").stdout.strip()
        assert re.fullmatch(r"/usr/bin/python3(\.\d+)?", exe), exe
        ph.done("service up 10s")

        # ---- Debian's python3 and the Teams listener: every handshake completes
        ok = 0
        for _ in range(100):
            try:
                serial_presented(tls_port, test_pki, teams_trust)
                ok += 1
            except (OSError, ssl.SSLError):
                pass
        assert ok == 100, f"{ok}/100 TLS handshakes on {distro_python}"
        ph.done("100 handshakes")

        # ---- calls both ways through the installed service
        def teams_uac(calls):
            return Sipp("uac.xml", workdir=tmp_path, local_port=teams_sipp, remote=("127.0.0.1", client_port),
                        transport="t1", calls=calls, procs=procs, name="teams-uac",
                        **teams_caller(sbc_port=tls_port, callee="+14255550100"))

        def pbx_uac(calls):
            keys = {"ruri_user": "02071234567", "to_user": "02071234567", "from_user": "02079460000", "ruri_params": ""}
            return Sipp("uac.xml", workdir=tmp_path, local_port=free_port("both"), remote=("127.0.0.1", pbx_listen),
                        transport="u1", calls=calls, procs=procs, name="pbx-uac", keys=keys)

        pbx_uas = Sipp("uas.xml", workdir=tmp_path, local_port=pbx_port, transport="u1", calls=2, procs=procs,
                       name="pbx-uas").start()
        res_teams = teams_uac(2).run()
        res_pbx = pbx_uas.wait()
        assert res_teams.ok and res_pbx.ok, res_teams.describe() + res_pbx.describe()
        teams_uas = Sipp("uas.xml", workdir=tmp_path, local_port=teams_sipp, transport="t1", calls=2,
                         procs=procs, name="teams-uas", **teams_callee()).start()
        res_pbx2 = pbx_uac(2).run()
        res_teams2 = teams_uas.wait()
        assert res_pbx2.ok and res_teams2.ok, res_pbx2.describe() + res_teams2.describe()
        status, cdr = admin(admin_port, "/cdr")
        assert status == 200 and cdr["count"] == 4, cdr
        call_ids = {c["call_id"] for c in cdr["calls"]}
        ph.done("calls")

        # ---- POST /trace works (the trace directory is in the state directory)
        status, rule = admin(admin_port, "/trace", {"number": "+4420", "calls": 1})
        assert status == 201, rule
        teams_uas = Sipp("uas.xml", workdir=tmp_path, local_port=teams_sipp, transport="t1", calls=1,
                         procs=procs, name="teams-uas", **teams_callee()).start()
        res = pbx_uac(1).run()
        assert res.ok and teams_uas.wait().ok, res.describe()
        traces = box.path("/var/lib/teamsbc/traces")
        wait_for(lambda: any(traces.glob("*.pcap")), 10, what="a trace file in /var/lib/teamsbc/traces")
        ph.done("trace")

        # ---- renewal, forced with a drop-in: the running SBC serves the new serial, same process
        dropin = box.path("/etc/systemd/system/teamsbc-renew.service.d")
        dropin.mkdir(parents=True)
        (dropin / "force.conf").write_text("[Service]\nExecStart=\nExecStart=/usr/local/bin/teamsbc cert renew "
                                           f"--force -c {CONF}\n")
        box.run("systemctl", "daemon-reload")
        assert serial_presented(tls_port, test_pki, teams_trust) == first_serial
        started = time.monotonic()
        box.run("systemctl", "start", "teamsbc-renew.service", timeout=300)
        assert time.monotonic() - started < 60, "renew --force waited (jitter?)"
        assert box.show("teamsbc-renew.service", "Result")["Result"] == "success"
        new_serial = x509.load_pem_x509_certificate((live / "fullchain.pem").read_bytes()).serial_number
        assert new_serial != first_serial
        wait_for(lambda: serial_presented(tls_port, test_pki, teams_trust) == new_serial, 15,
                 what="the running SBC serving the renewed certificate")
        assert box.show("teamsbc.service", "MainPID")["MainPID"] == pid
        box.run("systemctl", "reload", "teamsbc")   # SIGHUP: the same certificate again, same process
        wait_for(lambda: "certificate reloaded (SIGHUP)" in box.run(
            "journalctl", "-u", "teamsbc", "--no-pager", "-o", "cat").stdout, 10, what="reload on SIGHUP")
        assert box.show("teamsbc.service", "MainPID")["MainPID"] == pid
        ph.done("renewal, reload")

        # ---- restart: the CDRs of the earlier calls are still there
        box.run("systemctl", "restart", "teamsbc")
        wait_for(lambda: admin(admin_port, "/cdr")[0] == 200 if port_listening("127.0.0.1", admin_port) else False,
                 30, what="the admin API after the restart")
        assert call_ids <= {c["call_id"] for c in admin(admin_port, "/cdr")[1]["calls"]}
        timer = box.show("teamsbc-renew.timer", "UnitFileState", "NextElapseUSecRealtime")
        assert timer["UnitFileState"] == "enabled" and timer["NextElapseUSecRealtime"] not in ("", "0", "n/a"), timer
        ph.done("restart, timer")

        # ---- a config error: exit 2, not restarted, the journal says what to fix
        good = conf_path.read_text()
        conf_path.write_text(yaml.safe_dump({**conf, "admin": {"listen": f"127.0.0.1:{tls_port}"}}, sort_keys=False))
        box.run("systemctl", "restart", "teamsbc", check=False)
        wait_for(lambda: box.show("teamsbc.service", "ActiveState")["ActiveState"] == "failed", 30,
                 what="teamsbc failing on the bad config")
        time.sleep(3)   # RestartSec=2: a restart would have happened by now
        s = box.show("teamsbc.service", "ExecMainStatus", "NRestarts", "ActiveState")
        assert (s["ExecMainStatus"], s["NRestarts"], s["ActiveState"]) == ("2", "0", "failed"), s
        log = box.run("journalctl", "-u", "teamsbc", "-n", "20", "--no-pager", "-o", "cat").stdout
        assert "admin.listen" in log and "fix:" in log, log
        conf_path.write_text(good)
        box.run("systemctl", "reset-failed", "teamsbc")
        box.run("systemctl", "start", "teamsbc")
        ph.done("config error")

        def no_permission_errors():
            j = box.run("journalctl", "-b", "--no-pager", "-o", "cat", "-u", "teamsbc", "-u", "teamsbc-renew",
                        "-u", "teamsbc-firewall").stdout
            bad = [line for line in j.splitlines() if PERMISSION.search(line)]
            assert not bad, "\n".join(bad)
        no_permission_errors()

        # ---- reboot: the SBC and the firewall table come back by themselves
        box.reboot()
        wait_for(lambda: box.show("teamsbc.service", "ActiveState")["ActiveState"] == "active"
                 and port_listening("127.0.0.1", tls_port), 60, what="teamsbc after the reboot")
        assert box.run("nft", "list", "table", "inet", "teamsbc").returncode == 0
        assert "table inet teamsbc" in box.run("nft", "list", "ruleset").stdout
        assert serial_presented(tls_port, test_pki, teams_trust) == new_serial
        no_permission_errors()
        ph.done("reboot")
    finally:
        box.poweroff()
        print(f"booted appliance ({distro_python}): {ph}", file=sys.stderr)
