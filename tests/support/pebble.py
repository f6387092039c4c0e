"""pebble (a real RFC 8555 ACME server) and pebble-challtestsrv for tests, on loopback ports
picked at run time, started and stopped through a ProcessManager (by PID).

    dns = start_challtestsrv(procs, tmp_path)                   # every name -> 127.0.0.1
    pebble = start_pebble(procs, tmp_path, dns_server=dns.dns_address)
    pebble.directory_url, pebble.https_ca      # acme.directory, acme.ca_bundle
    pebble.write_root(tmp_path / "roots.pem")  # acme.trusted_roots (new root at every start)
    pebble.http_port                           # where its validator fetches HTTP-01

The Debian package ships no certificates for pebble's own HTTPS listener: a throw-away CA and
a localhost/127.0.0.1 certificate are made here with teamsbc.labpki.
Environment: PEBBLE_VA_NOSLEEP=1 (no random validation delay), PEBBLE_WFE_NONCEREJECT (0 unless
a test wants badNonce), PEBBLE_AUTHZREUSE=0 (every order proves control again: deterministic).
"""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from teamsbc import labpki

from .ports import free_port
from .procs import ManagedProcess, ProcessManager, wait_port

__all__ = ["Pebble", "Challtestsrv", "start_pebble", "start_challtestsrv", "pebble_available",
           "SBC_FQDN", "write_sbc_config", "pebble_acme", "cert_command", "run_cert"]

START_TIMEOUT = 20.0


def pebble_available() -> bool:
    return bool(shutil.which("pebble") and shutil.which("pebble-challtestsrv"))


@dataclass
class Challtestsrv:
    process: ManagedProcess
    dns_port: int
    management_port: int

    @property
    def dns_address(self) -> str:
        return f"127.0.0.1:{self.dns_port}"


@dataclass
class Pebble:
    process: ManagedProcess
    directory_url: str
    management_url: str
    https_ca: Path          # CA of pebble's HTTPS certificate: acme.ca_bundle
    http_port: int          # HTTP-01 validation port
    tls_port: int
    config_path: Path

    def _get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.https_ca))
        with urllib.request.urlopen(self.management_url + path, context=ctx, timeout=10) as r:
            return r.read()

    def root_pem(self) -> bytes:
        return self._get("/roots/0")

    def intermediate_pem(self) -> bytes:
        return self._get("/intermediates/0")

    def write_root(self, path: Path) -> Path:
        Path(path).write_bytes(self.root_pem())
        return Path(path)


def start_challtestsrv(procs: ProcessManager, workdir: Path) -> Challtestsrv:
    """Mock DNS answering 127.0.0.1 for every A query and nothing for AAAA (pebble's validator
    would try ::1 first, where no responder listens)."""
    dns_port, mgmt_port = free_port("udp"), free_port("tcp")
    p = procs.start("challtestsrv", [
        "pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-dns01", f"127.0.0.1:{dns_port}", "-management", f"127.0.0.1:{mgmt_port}",
        "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
    ], cwd=workdir)
    wait_port("127.0.0.1", dns_port, "udp", timeout=START_TIMEOUT, process=p)
    wait_port("127.0.0.1", mgmt_port, "tcp", timeout=START_TIMEOUT, process=p)
    return Challtestsrv(p, dns_port, mgmt_port)


def start_pebble(procs: ProcessManager, workdir: Path, *, dns_server: str,
                 validity_seconds: int | None = None, eab_keys: dict[str, str] | None = None,
                 nonce_reject: int = 0, authz_reuse: int = 0, name: str = "pebble") -> Pebble:
    """Start pebble with its validator resolving through ``dns_server`` ("ip:port").
    ``validity_seconds``: certificateValidityPeriod (short lifetimes test renewal).
    ``eab_keys``: {kid: base64url HMAC key} and externalAccountBindingRequired."""
    d = Path(workdir) / name
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = labpki.make_ca("pebble HTTPS test CA")
    leaf, leaf_key = labpki.make_leaf(ca, ca_key, ["localhost", "127.0.0.1"], client_auth=False)
    https_ca = labpki.write_cert_chain(d / "https-ca.pem", [ca])
    labpki.write_cert_chain(d / "https-cert.pem", [leaf])
    labpki.write_key(d / "https-key.pem", leaf_key)
    listen, mgmt, http_port, tls_port = (free_port("tcp") for _ in range(4))
    cfg: dict = {
        "listenAddress": f"127.0.0.1:{listen}",
        "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(d / "https-cert.pem"),
        "privateKey": str(d / "https-key.pem"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": bool(eab_keys),
    }
    if eab_keys:
        cfg["externalAccountMACKeys"] = dict(eab_keys)
    if validity_seconds is not None:
        cfg["certificateValidityPeriod"] = int(validity_seconds)
    config_path = d / "pebble-config.json"
    config_path.write_text(json.dumps({"pebble": cfg}, indent=2))
    env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": str(nonce_reject),
           "PEBBLE_AUTHZREUSE": str(authz_reuse)}
    p = procs.start(name, ["pebble", "-config", str(config_path), "-dnsserver", dns_server],
                    cwd=d, env=env)
    wait_port("127.0.0.1", mgmt, "tcp", timeout=START_TIMEOUT, process=p)
    wait_port("127.0.0.1", listen, "tcp", timeout=START_TIMEOUT, process=p)
    return Pebble(p, f"https://127.0.0.1:{listen}/dir", f"https://127.0.0.1:{mgmt}", https_ca,
                  http_port, tls_port, config_path)


# --------------------------------------------------------------------------- driving teamsbc cert

SBC_FQDN = "sbc.example.com"


def write_sbc_config(path: Path, acme: dict, *, fqdn: str = SBC_FQDN,
                     certs_dir: str | None = None) -> Path:
    """A complete SBC config file (sbc, teams, pbx) with the given acme section; the
    certificate files are left to their defaults under certs_dir/live/<fqdn>/."""
    import yaml
    data: dict = {
        "sbc": {"fqdn": fqdn},
        "teams": {"listen": "127.0.0.1:5061"},
        "pbx": {"listen": "127.0.0.1:5060", "address": "127.0.0.1:5080"},
        "acme": acme,
    }
    if certs_dir is not None:
        data["certs_dir"] = certs_dir
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
    return Path(path)


def pebble_acme(pebble: Pebble, roots: Path, **extra) -> dict:
    """The acme section pointing at ``pebble``: directory, its HTTPS CA, its root as the trust
    anchor of the gate, the standalone HTTP-01 responder on its validation port."""
    acme = {
        "directory": pebble.directory_url,
        "email": "ops@teamsbc.test",
        "http01_listen": f"127.0.0.1:{pebble.http_port}",
        "ca_bundle": str(pebble.https_ca),
        "trusted_roots": str(roots),
    }
    acme.update(extra)
    return acme


def cert_command(*args: str) -> list[str]:
    """argv for `teamsbc cert ...` through the real command line."""
    import sys
    return [sys.executable, "-m", "teamsbc", "cert", *args]


def run_cert(*args: str, timeout: float = 120.0):
    """Run `teamsbc cert ARGS` to completion (bounded); CompletedProcess with text output."""
    import os
    import subprocess
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(cert_command(*args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=repo, env=env)
