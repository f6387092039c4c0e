"""stunnel4 as the TLS half of a stand-in "Teams" (sipp has no TLS).

Two kinds of services:

- ``TeamsClient``: Teams connecting to the SBC. Accepts plain TCP on 127.0.0.1:accept_port
  (a Teams-side sipp connects here) and opens TLS to the SBC's Teams listener
  127.0.0.1:connect_port, presenting the Teams certificate, verifying the SBC's chain against
  the test CA and its name (checkHost, default sbc.example.com), TLS 1.2 or later.
- ``TeamsServer``: the SBC connecting to Teams. Accepts TLS on 127.0.0.1:accept_port with the
  Teams certificate, REQUIRES a client certificate that chains to the test CA, and forwards
  plain TCP to 127.0.0.1:connect_port (a Teams-side sipp listening there).

    st = Stunnel(tmp_path, [TeamsClient.for_pki(pki, accept_port=a, connect_port=sbc_tls),
                            TeamsServer.for_pki(pki, accept_port=b, connect_port=sipp_port)],
                 procs=procs).start()
    ...
    st.stop()        # or let procs stop it at the end of the test

Each TLS connection corresponds to exactly one plain TCP connection on the other side, so
"which connection carried what" is preserved through the tunnel.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from .procs import ManagedProcess, ProcessManager, wait_port

__all__ = ["TeamsClient", "TeamsServer", "Stunnel", "TEAMS_TLS12_CIPHERS", "stunnel_binary"]

# The TLS 1.2 suites Microsoft lists for Direct Routing (all ECDHE-RSA).
TEAMS_TLS12_CIPHERS = (
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256"
)
LOOPBACK = "127.0.0.1"
_counter = itertools.count(1)


def stunnel_binary() -> str:
    for name in ("stunnel4", "stunnel"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("stunnel4 not found (apt-get install stunnel4)")


@dataclass
class TeamsClient:
    """Plain TCP in on accept_port -> TLS client (Teams cert) to the SBC on connect_port."""

    accept_port: int
    connect_port: int
    ca_file: Path
    cert: Path | None = None  # None: present no client certificate (negative tests)
    key: Path | None = None
    check_host: str | None = "sbc.example.com"
    sni: str | None = None  # default: check_host
    verify: bool = True  # verifyChain of the SBC's certificate
    ciphers: str | None = TEAMS_TLS12_CIPHERS
    tls_min: str = "TLSv1.2"
    tls_max: str | None = None
    connect_host: str = LOOPBACK
    name: str = ""

    @classmethod
    def for_pki(cls, pki, *, accept_port: int, connect_port: int, **kw) -> "TeamsClient":
        """Teams' certificate, trusting the test CA, expecting the SBC name (overridable)."""
        kw.setdefault("check_host", pki.sbc_fqdn)
        kw.setdefault("ca_file", pki.ca_cert)
        kw.setdefault("cert", pki.teams_fullchain)
        kw.setdefault("key", pki.teams_key)
        return cls(accept_port=accept_port, connect_port=connect_port, **kw)

    def config(self) -> list[str]:
        lines = [
            "client = yes",
            f"accept = {LOOPBACK}:{self.accept_port}",
            f"connect = {self.connect_host}:{self.connect_port}",
            f"CAfile = {self.ca_file}",
            f"sslVersionMin = {self.tls_min}",
        ]
        if self.tls_max:
            lines.append(f"sslVersionMax = {self.tls_max}")
        if self.cert:
            lines.append(f"cert = {self.cert}")
            lines.append(f"key = {self.key or self.cert}")
        if self.verify:
            lines.append("verifyChain = yes")
            if self.check_host:
                lines.append(f"checkHost = {self.check_host}")
        else:
            lines.append("verifyChain = no")
        sni = self.sni if self.sni is not None else self.check_host
        if sni:
            lines.append(f"sni = {sni}")
        if self.ciphers:
            lines.append(f"ciphers = {self.ciphers}")
        return lines


@dataclass
class TeamsServer:
    """TLS server (Teams cert, client cert REQUIRED) on accept_port -> plain TCP to connect_port."""

    accept_port: int
    connect_port: int
    ca_file: Path
    cert: Path
    key: Path
    require_cert: bool = True
    check_host: str | None = None  # e.g. "sbc.example.com": also check the client cert's name
    ciphers: str | None = TEAMS_TLS12_CIPHERS
    tls_min: str = "TLSv1.2"
    tls_max: str | None = None
    connect_host: str = LOOPBACK
    name: str = ""

    @classmethod
    def for_pki(cls, pki, *, accept_port: int, connect_port: int, **kw) -> "TeamsServer":
        """Teams' certificate, client certificates must chain to the test CA (overridable)."""
        kw.setdefault("ca_file", pki.ca_cert)
        kw.setdefault("cert", pki.teams_fullchain)
        kw.setdefault("key", pki.teams_key)
        return cls(accept_port=accept_port, connect_port=connect_port, **kw)

    def config(self) -> list[str]:
        lines = [
            f"accept = {LOOPBACK}:{self.accept_port}",
            f"connect = {self.connect_host}:{self.connect_port}",
            f"cert = {self.cert}",
            f"key = {self.key}",
            f"CAfile = {self.ca_file}",
            f"sslVersionMin = {self.tls_min}",
        ]
        if self.tls_max:
            lines.append(f"sslVersionMax = {self.tls_max}")
        if self.require_cert:
            lines += ["verifyChain = yes", "requireCert = yes"]
            if self.check_host:
                lines.append(f"checkHost = {self.check_host}")
        else:
            lines += ["verifyChain = no", "requireCert = no"]
        if self.ciphers:
            lines.append(f"ciphers = {self.ciphers}")
        return lines


Service = Union[TeamsClient, TeamsServer]


class Stunnel:
    """One stunnel4 process (foreground, no pid file) running the given services."""

    def __init__(
        self,
        tmpdir: Path,
        services: Sequence[Service],
        *,
        procs: ProcessManager | None = None,
        name: str = "stunnel",
        debug: str = "info",
    ) -> None:
        if not services:
            raise ValueError("Stunnel needs at least one service")
        self.n = next(_counter)
        self.name = f"{name}{self.n}"
        self.dir = Path(tmpdir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.services = list(services)
        self.procs = procs
        self.debug = debug
        self.process: ManagedProcess | None = None
        self.config_path = self.dir / "stunnel.conf"

    def config_text(self) -> str:
        out = [
            "; generated by tests/support/stunnel.py",
            "foreground = yes",
            "pid =",
            "syslog = no",
            f"debug = {self.debug}",
            "",
        ]
        for i, svc in enumerate(self.services, 1):
            kind = "teams-client" if isinstance(svc, TeamsClient) else "teams-server"
            out.append(f"[{svc.name or f'{kind}-{i}'}]")
            out += svc.config()
            out += [
                "delay = no",
                "TIMEOUTclose = 0",
                "socket = l:TCP_NODELAY=1",
                "socket = r:TCP_NODELAY=1",
                "",
            ]
        return "\n".join(out)

    def start(self, timeout: float = 10.0) -> "Stunnel":
        if self.process is not None:
            raise RuntimeError("already started")
        self.config_path.write_text(self.config_text())
        argv = [stunnel_binary(), str(self.config_path)]
        if self.procs is not None:
            self.process = self.procs.start(self.name, argv, cwd=self.dir, logdir=self.dir)
        else:
            self.process = ManagedProcess(self.name, argv, self.dir, cwd=self.dir)
        try:
            for svc in self.services:
                wait_port(LOOPBACK, svc.accept_port, "tcp", timeout=timeout, process=self.process)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        if self.process is None:
            return None
        return self.process.stop()

    def log_text(self) -> str:
        """stunnel's log (it logs to stderr in foreground mode)."""
        if self.process is None:
            return ""
        return self.process.stderr_text() + self.process.stdout_text()

    def __enter__(self) -> "Stunnel":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
