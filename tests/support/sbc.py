"""Start the real SBC (`python -m teamsbc run -c FILE`) as a process on loopback ports.

    sbc = SbcProcess(tmp_path, procs, test_pki, teams_resolve={"sip.pstnhub.microsoft.com": b},
                     pbx_transport="udp", pbx_port=pbx).start()
    sbc.teams_port, sbc.pbx_listen_port      # where Teams / the PBX send to
    sbc.restart()                            # SIGTERM, wait for exit, start again on the same ports
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from .pki import TEAMS_NAMES
from .ports import free_port
from .procs import ManagedProcess, ProcessManager, wait_port

LOOPBACK = "127.0.0.1"


class SbcProcess:
    def __init__(self, tmp_path: Path, procs: ProcessManager, pki: Any, *,
                 teams_resolve: dict[str, int | str] | None = None,
                 teams_port: int | None = None,
                 pbx_transport: str = "udp",
                 pbx_port: int,
                 pbx_host: str = LOOPBACK,
                 pbx_listen_port: int | None = None,
                 proxies: list[str] | None = None,
                 extra: dict[str, Any] | None = None,
                 invite_timeout: float | None = None,
                 keepalive: bool = False,
                 host: str = LOOPBACK,
                 name: str = "sbc"):
        """`host`: the address both listeners bind (two boxes on one machine: two loopback
        addresses, same ports); `name`: the working directory under tmp_path."""
        self.host = host
        self.dir = Path(tmp_path) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = procs
        self.pki = pki
        self.teams_port = teams_port or free_port("tcp")
        self.pbx_transport = pbx_transport
        self.pbx_listen_port = pbx_listen_port or free_port("both")
        self.pbx_port = pbx_port
        resolve = {}
        for name, target in (teams_resolve or {}).items():
            resolve[name] = target if isinstance(target, str) else f"{LOOPBACK}:{target}"
        teams: dict[str, Any] = {
            "listen": f"{host}:{self.teams_port}",
            "certificate": str(pki.sbc_fullchain),
            "private_key": str(pki.sbc_key),
            "trusted_ca": str(pki.ca_cert),
            "resolve": resolve,
        }
        if proxies is not None:
            teams["proxies"] = proxies
        if invite_timeout is not None:
            teams["invite_timeout"] = invite_timeout
        if not keepalive:
            # sipp peers count an unexpected OPTIONS as a failed call: pings off unless asked
            teams["options_interval"] = 0
        self.config: dict[str, Any] = {
            "sbc": {"fqdn": pki.sbc_fqdn},
            "teams": teams,
            "pbx": {"listen": f"{host}:{self.pbx_listen_port}", "transport": pbx_transport,
                    "address": f"{pbx_host}:{pbx_port}", "options_interval": 30 if keepalive else 0},
            "numbers": {"country_code": "44"},
            "log": {"level": "debug"},
            "admin": {"listen": f"{LOOPBACK}:{free_port('tcp')}"},
            "cdr": {"path": str(self.dir / "cdr.sqlite")},
        }
        workers = os.environ.get("TEAMSBC_TEST_WORKERS")
        if workers:  # the whole suite with sbc.workers (docs/architecture.md, "Workers")
            self.config["sbc"]["workers"] = int(workers)
        for section, values in (extra or {}).items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:
                self.config[section] = values
        self.config_path = self.dir / "teamsbc.yaml"
        self.process: ManagedProcess | None = None
        self.generation = 0

    @property
    def fqdn(self) -> str:
        return self.pki.sbc_fqdn

    def start(self, timeout: float = 15.0) -> "SbcProcess":
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.generation += 1
        argv = [sys.executable, "-m", "teamsbc", "run", "-c", str(self.config_path)]
        self.process = self.procs.start(f"teamsbc-{self.dir.name}-{self.generation}", argv, cwd=self.dir,
                                        logdir=self.dir)
        wait_port(self.host, self.teams_port, "tcp", timeout=timeout, process=self.process)
        wait_port(self.host, self.pbx_listen_port, "udp" if self.pbx_transport == "udp" else "tcp",
                  timeout=timeout, process=self.process)
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        return self.process.stop()

    def restart(self) -> "SbcProcess":
        rc = self.stop()
        if rc != 0:
            raise AssertionError(f"SBC did not stop cleanly on SIGTERM (rc={rc}):\n{self.log()}")
        return self.start()

    def log(self) -> str:
        out = []
        for p in self.procs.processes:
            if p.name.startswith("teamsbc"):
                out.append(f"--- {p.name} ---\n{p.stderr_text()}{p.stdout_text()}")
        return "\n".join(out)


def loopback_config(pki: Any, tmp_path: Path, teams_port: int):
    """The config of an SBC served in the test's own process (`teamsbc.app.serve`): Teams TLS
    on `teams_port`, free loopback ports elsewhere, no pings, no admin API, no CDR."""
    from teamsbc import config as cfg
    return cfg.from_dict({
        "sbc": {"fqdn": pki.sbc_fqdn},
        "teams": {"listen": f"{LOOPBACK}:{teams_port}", "certificate": str(pki.sbc_fullchain),
                  "private_key": str(pki.sbc_key), "trusted_ca": str(pki.ca_cert),
                  "resolve": {n: f"{LOOPBACK}:{free_port('tcp')}" for n in TEAMS_NAMES},
                  "options_interval": 0},
        "pbx": {"listen": f"{LOOPBACK}:{free_port('both')}", "address": f"{LOOPBACK}:{free_port('both')}",
                "options_interval": 0},
        "admin": {"enabled": False},
        "cdr": {"enabled": False},
    }, source="<test>", base=tmp_path)
