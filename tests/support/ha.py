"""An HA pair of teamsbc boxes on one machine, built from the real parts (docs/ha.md):

    root namespace (the test)          box a (netns)                  box b (netns)
    Teams peer  root_ip:PEER    <-->   teamsbc  (SIP_VIP:5061/5060)   teamsbc  (same config file)
    PBX (sipp)  root_ip:PBX            rtpengine (MEDIA_VIP, NG a:2223) rtpengine (MEDIA_VIP, NG b:2223)
    Redis, PostgreSQL on root_ip       keepalived (VRRP unicast a<->b, both floating addresses)

Both boxes run ONE config file (sbc.secret, cdr.url, media.rtpengine = [a, b;weight=0]);
both rtpengines share call state through Redis (each writes its own database, subscribes to
the other's keyspace, --active-switchover), and keepalived renders deploy/ha/keepalived.conf
.example with the health check deploy/ha/teamsbc-ha-check. `kill_box("a")` is a dead box:
its link goes down, then kill -9 of everything it runs.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .netns import PREFIX, Lan
from .pki import TEAMS_NAMES
from .ports import free_port
from .postgres import PostgresCluster
from .procs import ManagedProcess, ProcessManager, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy" / "ha"
NG_PORT = 2223
MEDIA_PORTS = (30000, 30999)
SECRET = "ha-pair-secret-shared-by-both-boxes-0123456789"


def root_udp_port() -> int:
    """A UDP port for the test's own side outside 30000-40000 (where another test's nftables
    rules may sit in the root namespace of a shared machine)."""
    while True:
        p = free_port("udp")
        if not 30000 <= p <= 40000:
            return p


@dataclass
class Box:
    name: str
    ip: str
    dir: Path
    procs: dict[str, ManagedProcess] = field(default_factory=dict)

    def log(self, what: str) -> str:
        p = self.procs.get(what)
        return (p.stderr_text() + p.stdout_text()) if p is not None else ""


class HaPair:
    def __init__(self, tmp_path: Path, procs: ProcessManager, pki: Any):
        self.tmp, self.procs, self.pki = tmp_path, procs, pki
        self.lan: Lan | None = None
        self.pg: PostgresCluster | None = None
        self.boxes: dict[str, Box] = {}

    # ------------------------------------------------------------------ building
    def start(self) -> "HaPair":
        lan = self.lan = Lan.create(["a", "b"])
        self.sip_vip, self.media_vip = lan.vip(0), lan.vip(1)
        self.peer_port, self.pbx_port = free_port("tcp"), root_udp_port()
        self.redis_port = free_port("tcp")
        self.procs.start("redis", ["redis-server", "--port", str(self.redis_port), "--bind", lan.root_ip,
                                   "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                   "--notify-keyspace-events", "K$g"])
        self.pg = PostgresCluster.create(listen=lan.root_ip)
        for name in ("a", "b"):
            d = self.tmp / f"box-{name}"
            d.mkdir(parents=True, exist_ok=True)
            self.boxes[name] = Box(name, lan.ip(name), d)
        self.config_path = self.tmp / "teamsbc.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config()))
        for name in ("a", "b"):
            self.start_rtpengine(name)
            self.start_sbc(name)
        # A first: it takes both addresses; B then joins as the backup
        self.start_keepalived("a", 150)
        wait_for(lambda: lan.holder(self.sip_vip) == "a" and lan.holder(self.media_vip) == "a", 15,
                 what="box a to hold both floating addresses", alive=self.boxes["a"].procs["keepalived"])
        self.start_keepalived("b", 100)
        wait_for(lambda: "Entering BACKUP STATE" in self.boxes["b"].log("keepalived"), 15,
                 what="box b to be the backup", alive=self.boxes["b"].procs["keepalived"])
        return self

    def config(self) -> dict[str, Any]:
        lan = self.lan
        assert lan is not None and self.pg is not None
        return {
            "sbc": {"fqdn": self.pki.sbc_fqdn, "secret": SECRET},
            "teams": {"listen": f"{self.sip_vip}:5061", "certificate": str(self.pki.sbc_fullchain),
                      "private_key": str(self.pki.sbc_key), "trusted_ca": str(self.pki.ca_cert),
                      "resolve": {n: f"{lan.root_ip}:{self.peer_port}" for n in TEAMS_NAMES},
                      "options_interval": 0},
            "pbx": {"listen": f"{self.sip_vip}:5060", "transport": "udp",
                    "address": f"{lan.root_ip}:{self.pbx_port}", "options_interval": 0},
            "numbers": {"country_code": "44"},
            "media": {"rtpengine": [f"udp:{lan.ip('a')}:{NG_PORT}", f"udp:{lan.ip('b')}:{NG_PORT};weight=0"],
                      "timeout": 1.0, "ping_interval": 1.0, "down_after": 2},
            "cdr": {"url": self.pg.url},
            "admin": {"listen": "127.0.0.1:8089"},
            "log": {"level": "debug"},
        }

    def start_rtpengine(self, name: str) -> None:
        box, lan = self.boxes[name], self.lan
        db, other = (1, 2) if name == "a" else (2, 1)
        argv = ["rtpengine", "--config-file=none", "--foreground", "--log-stderr", "--table=-1",
                f"--interface={self.media_vip}", f"--listen-ng={box.ip}:{NG_PORT}",
                f"--port-min={MEDIA_PORTS[0]}", f"--port-max={MEDIA_PORTS[1]}", "--delete-delay=0",
                f"--redis={lan.root_ip}:{self.redis_port}/{db}", f"--subscribe-keyspace={other}",
                "--active-switchover", f"--pidfile={box.dir / 'rtpengine.pid'}"]
        box.procs["rtpengine"] = p = lan.run(self.procs, name, f"rtpengine-{name}", argv, logdir=box.dir)
        wait_for(lambda: "Startup complete" in box.log("rtpengine") and (box.dir / "rtpengine.pid").exists(),
                 15, what=f"rtpengine on box {name}", alive=p)

    def start_sbc(self, name: str) -> None:
        box = self.boxes[name]
        argv = [sys.executable, "-m", "teamsbc", "run", "-c", str(self.config_path)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        box.procs["teamsbc"] = p = self.lan.run(self.procs, name, f"teamsbc-{name}", argv, cwd=box.dir,
                                                logdir=box.dir, env=env)
        wait_for(lambda: "teamsbc ready" in box.log("teamsbc"), 20, what=f"teamsbc on box {name}", alive=p)
        (box.dir / "teamsbc.pid").write_text(f"{p.pid}\n")

    def start_keepalived(self, name: str, priority: int) -> None:
        box, lan = self.boxes[name], self.lan
        peer = lan.ip("b" if name == "a" else "a")
        text = (DEPLOY / "keepalived.conf.example").read_text()
        for token, value in {"@IFACE@": lan.ifaces[name], "@SELF@": box.ip, "@PEER@": peer,
                             "@SIP_VIP@": self.sip_vip, "@MEDIA_VIP@": self.media_vip,
                             "@PREFIX@": str(PREFIX), "@PRIORITY@": str(priority),
                             "@SIP_VRID@": "51", "@MEDIA_VRID@": "52",
                             "@CHECK@": str(DEPLOY / "teamsbc-ha-check"),
                             "@SIP_CHECK_ARG@": str(box.dir / "teamsbc.pid"),
                             "@MEDIA_CHECK_ARG@": str(box.dir / "rtpengine.pid")}.items():
            text = text.replace(token, value)
        assert "@" not in text, text
        conf = box.dir / "keepalived.conf"
        conf.write_text(text)
        argv = ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp",
                "--use-file", str(conf), f"--pid={box.dir / 'keepalived.pid'}",
                f"--vrrp_pid={box.dir / 'vrrp.pid'}", f"--checkers_pid={box.dir / 'checkers.pid'}"]
        box.procs["keepalived"] = self.lan.run(self.procs, name, f"keepalived-{name}", argv, logdir=box.dir)

    # ------------------------------------------------------------------ failures
    def kill(self, name: str, what: str) -> float:
        """kill -9 one process of a box; returns the monotonic time of the kill."""
        p = self.boxes[name].procs[what]
        t = time.monotonic()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=5)
        return t

    def kill_box(self, name: str) -> float:
        """A dead box: its link goes down first (nothing it says reaches anyone: no goodbye
        from keepalived's VRRP process, which a SIGKILL of its parent would still let out),
        then everything it runs is killed."""
        box = self.boxes[name]
        t = time.monotonic()
        self.lan.link_down(name)
        for p in box.procs.values():
            if p.running:
                os.kill(p.pid, signal.SIGKILL)
        for p in box.procs.values():
            p.wait(timeout=5)
        return t

    def diag(self) -> str:
        out = []
        for box in self.boxes.values():
            for what in ("teamsbc", "rtpengine", "keepalived"):
                out.append(f"--- box {box.name} {what} ---\n{box.log(what)[-6000:]}")
        if self.pg is not None:
            out.append(f"--- postgresql ---\n{self.pg.log()}")
        return "\n".join(out)

    def close(self) -> None:
        self.procs.stop_all()
        if self.pg is not None:
            self.pg.destroy()
        if self.lan is not None:
            self.lan.destroy()
