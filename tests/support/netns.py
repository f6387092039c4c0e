"""Boxes on one machine: a network namespace per box, joined by veth pairs to a bridge in the
root namespace, where the test itself (the Teams peer, the PBX, Redis, PostgreSQL) lives.

    lan = Lan.create(["a", "b"])           # 198.18.N.0/24 (RFC 2544 benchmarking range)
    lan.root_ip                            # the test's address on the bridge (.1)
    lan.ip("a"), lan.vip(0)                # a box's own address (.11, .12, ...), floating ones (.100+)
    lan.run(procs, "a", name, argv)        # a process inside box a (stopped by PID like any other)
    lan.link_down("a")                     # the box is gone from the network (a dead box)
    lan.destroy()

Addresses are private to the namespaces this test made: nothing leaves the machine. Each box
has net.ipv4.ip_nonlocal_bind=1 (per namespace), as deploy/sysctl asks of an HA pair: the
backup binds the floating addresses before it holds them.
"""
from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass, field
from typing import Sequence

from .procs import ManagedProcess, ProcessManager

PREFIX = 24


def sh(*argv: str, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def _used_subnets() -> set[int]:
    out = sh("ip", "-4", "-o", "addr", "show")
    return {int(w.split(".")[2]) for w in out.split() if w.startswith("198.18.")}


@dataclass
class Lan:
    tag: str
    net: int
    boxes: list[str]
    bridge: str = ""
    namespaces: dict[str, str] = field(default_factory=dict)
    ifaces: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, boxes: Sequence[str]) -> "Lan":
        tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
        used = _used_subnets()
        net = next(n for n in random.sample(range(1, 255), 254) if n not in used)
        lan = cls(tag, net, list(boxes), bridge=f"tsbr{tag}")
        try:
            sh("ip", "link", "add", lan.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{lan.root_ip}/{PREFIX}", "dev", lan.bridge)
            sh("ip", "link", "set", lan.bridge, "up")
            for i, box in enumerate(lan.boxes):
                ns, host_end, box_end = f"tsbc{tag}{box}", f"tsv{tag}{i}", "eth0"
                lan.namespaces[box], lan.ifaces[box] = ns, box_end
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", f"tsp{tag}{i}")
                sh("ip", "link", "set", f"tsp{tag}{i}", "netns", ns)
                lan.exec(box, "ip", "link", "set", f"tsp{tag}{i}", "name", box_end)
                sh("ip", "link", "set", host_end, "master", lan.bridge)
                sh("ip", "link", "set", host_end, "up")
                lan.exec(box, "ip", "addr", "add", f"{lan.ip(box)}/{PREFIX}", "dev", box_end)
                lan.exec(box, "ip", "link", "set", box_end, "up")
                lan.exec(box, "ip", "link", "set", "lo", "up")
                lan.exec(box, "sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1")
        except BaseException:
            lan.destroy()
            raise
        return lan

    @property
    def root_ip(self) -> str:
        return f"198.18.{self.net}.1"

    def ip(self, box: str) -> str:
        return f"198.18.{self.net}.{11 + self.boxes.index(box)}"

    def vip(self, n: int = 0) -> str:
        return f"198.18.{self.net}.{100 + n}"

    def exec(self, box: str, *argv: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.namespaces[box], *argv, check=check)

    def run(self, procs: ProcessManager, box: str, name: str, argv: Sequence[str], **kw) -> ManagedProcess:
        """`ip netns exec` execs the command: the PID the manager stops is the process itself."""
        return procs.start(name, ["ip", "netns", "exec", self.namespaces[box], *argv], **kw)

    def holder(self, vip: str) -> str | None:
        """The box whose interface carries `vip` now (keepalived put it there)."""
        for box in self.boxes:
            if f" {vip}/" in self.exec(box, "ip", "-4", "-o", "addr", "show", check=False):
                return box
        return None

    def link_down(self, box: str) -> None:
        self.exec(box, "ip", "link", "set", self.ifaces[box], "down")

    def destroy(self) -> None:
        for ns in self.namespaces.values():
            sh("ip", "netns", "del", ns, check=False)
        if self.bridge:
            sh("ip", "link", "del", self.bridge, check=False)
