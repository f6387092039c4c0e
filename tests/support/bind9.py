"""bind9 (`named`) as a real RFC 2136 dynamic-DNS primary for DNS-01 tests.

    ns = start_bind9(procs, tmp_path, zone="example.com",
                     a_records={"sbc": "127.0.0.1"},
                     updatable=["_acme-challenge.sbc.example.com."])
    ns.address                      # "127.0.0.1:PORT": pebble -dnsserver, acme.rfc2136.server/port
    ns.key_name, ns.key_secret      # TSIG (hmac-sha256): acme.rfc2136.key_name/key_secret
    ns.txt("_acme-challenge.sbc.example.com.")   # what the zone holds now
    ns.serial()                     # SOA serial: each applied update increments it

Runs in the foreground (-g) from a directory of its own with no control channel, so parallel
runs do not collide; stopped by PID through the ProcessManager.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import dns.message
import dns.query
import dns.rdatatype

from .ports import free_port
from .procs import ManagedProcess, ProcessManager, wait_for, wait_port

__all__ = ["Bind9", "start_bind9", "bind9_available"]

START_TIMEOUT = 20.0


def bind9_available() -> bool:
    return bool(shutil.which("named") or Path("/usr/sbin/named").exists())


@dataclass
class Bind9:
    process: ManagedProcess
    port: int
    zone: str
    key_name: str
    key_secret: str
    key_algorithm: str = "hmac-sha256"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def query(self, name: str, rdtype: str):
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype))
        return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=5)

    def txt(self, name: str) -> set[str]:
        out = set()
        for rrset in self.query(name, "TXT").answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                out.update(b"".join(rd.strings).decode() for rd in rrset)
        return out

    def serial(self) -> int:
        for rrset in self.query(self.zone + ".", "SOA").answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return rrset[0].serial
        raise AssertionError(f"no SOA for {self.zone}")


def start_bind9(procs: ProcessManager, workdir: Path, *, zone: str = "example.com",
                a_records: Mapping[str, str] | None = None,
                updatable: Sequence[str] = (), key_name: str = "acme-test-key.") -> Bind9:
    """Primary for ``zone`` with A records (relative name -> IPv4) and a TSIG key allowed to
    change only TXT at the ``updatable`` names (update-policy), on a free loopback port."""
    named = shutil.which("named") or "/usr/sbin/named"
    d = Path(workdir) / "bind9"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    port = free_port("both")
    grants = "\n".join(f"    grant {key_name} name {n} TXT;" for n in updatable)
    (d / "named.conf").write_text(f"""\
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
controls {{ }};
options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  managed-keys-directory "{d}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  allow-query {{ any; }};
  notify no;
}};
zone "{zone}" {{
  type primary;
  file "{d}/{zone}.zone";
  update-policy {{
{grants}
  }};
}};
""")
    records = "\n".join(f"{name} IN A {ip}" for name, ip in (a_records or {}).items())
    (d / f"{zone}.zone").write_text(f"""\
$TTL 60
@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60
@ IN NS ns.{zone}.
ns IN A 127.0.0.1
{records}
""")
    # Run as whoever runs the tests: every file named touches is in this directory, so no
    # privileges are needed (`-u bind` would also need the tmp path traversable by bind).
    argv = [named, "-g", "-c", str(d / "named.conf")]
    p = procs.start("named", argv, cwd=d)
    wait_port("127.0.0.1", port, "tcp", timeout=START_TIMEOUT, process=p)
    ns = Bind9(p, port, zone, key_name, secret)
    wait_for(lambda: _serves(ns), START_TIMEOUT, what=f"named serving {zone}", alive=p)
    return ns


def _serves(ns: Bind9) -> bool:
    try:
        ns.serial()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False
