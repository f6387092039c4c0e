"""The `capture` section of the config: where HEP goes, and where and how traces are written.

    capture:
      hep: null | "host:port"      # a HEPv3 collector (Homer), e.g. 10.0.0.9:9060
      agent_id: 2001               # HEP capture agent id
      password: null               # HEP auth key, when the collector wants one
      trace_dir: traces            # relative to the config file
      trace_format: both           # both | pcap | text
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..addresses import AddressError, HostPort, parse_hostport
from ..settings import SettingsReader


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    hep: HostPort | None = None
    agent_id: int = 2001
    password: str | None = None
    trace_dir: Path = Path("traces")
    trace_format: str = "both"      # both | pcap | text


def parse_capture(r: SettingsReader, section: Any) -> CaptureSettings:
    """The `capture` section; trace_dir relative to the config file's directory."""
    if section is not None and not isinstance(section, dict):
        r.err("capture", "must be a mapping")
        return CaptureSettings(trace_dir=r.base / "traces")
    section = r.mapping(section, "capture", ("hep", "agent_id", "password", "trace_dir", "trace_format"))
    hep = None
    v = section.get("hep")
    if v is not None:
        try:
            hep = parse_hostport(v)
        except AddressError:
            r.err("capture.hep", f"{v!r} is not \"ip:port\" of a HEP collector (e.g. 10.0.0.9:9060)")
    agent = section.get("agent_id", 2001)
    if isinstance(agent, bool) or not isinstance(agent, int) or not 0 <= agent < 2**32:
        r.err("capture.agent_id", f"must be an integer 0-4294967295, got {agent!r}")
        agent = 2001
    pw = section.get("password")
    if pw is not None and (not isinstance(pw, str) or not pw):
        r.err("capture.password", "must be a non-empty string or null")
        pw = None
    td = section.get("trace_dir", "traces")
    if not isinstance(td, str) or not td.strip():
        r.err("capture.trace_dir", f"must be a directory path, got {td!r}")
        td = "traces"
    tdir = Path(td)
    if not tdir.is_absolute():
        tdir = r.base / tdir
    fmt = section.get("trace_format", "both")
    if fmt not in ("both", "pcap", "text"):
        r.err("capture.trace_format", f"{fmt!r} is not one of both, pcap, text")
        fmt = "both"
    return CaptureSettings(hep, agent, pw, tdir, fmt)
