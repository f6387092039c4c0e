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


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    hep: HostPort | None = None
    agent_id: int = 2001
    password: str | None = None
    trace_dir: Path = Path("traces")
    trace_format: str = "both"      # both | pcap | text


def parse_settings(section: Any, base: Path) -> tuple[CaptureSettings, list[tuple[str, str]]]:
    """The `capture` section -> settings and [(key, problem)] (for config.py's error list)."""
    errors: list[tuple[str, str]] = []
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return CaptureSettings(trace_dir=base / "traces"), [("capture", "must be a mapping")]
    known = ("hep", "agent_id", "password", "trace_dir", "trace_format")
    for k in section:
        if k not in known:
            errors.append((f"capture.{k}", f"unknown key (known: {', '.join(sorted(known))})"))
    hep = None
    v = section.get("hep")
    if v is not None:
        try:
            hep = parse_hostport(v)
        except AddressError:
            errors.append(("capture.hep", f"{v!r} is not \"ip:port\" of a HEP collector (e.g. 10.0.0.9:9060)"))
    agent = section.get("agent_id", 2001)
    if isinstance(agent, bool) or not isinstance(agent, int) or not 0 <= agent < 2**32:
        errors.append(("capture.agent_id", f"must be an integer 0-4294967295, got {agent!r}"))
        agent = 2001
    pw = section.get("password")
    if pw is not None and (not isinstance(pw, str) or not pw):
        errors.append(("capture.password", "must be a non-empty string or null"))
        pw = None
    td = section.get("trace_dir", "traces")
    if not isinstance(td, str) or not td.strip():
        errors.append(("capture.trace_dir", f"must be a directory path, got {td!r}"))
        td = "traces"
    tdir = Path(td)
    if not tdir.is_absolute():
        tdir = base / tdir
    fmt = section.get("trace_format", "both")
    if fmt not in ("both", "pcap", "text"):
        errors.append(("capture.trace_format", f"{fmt!r} is not one of both, pcap, text"))
        fmt = "both"
    return CaptureSettings(hep, agent, pw, tdir, fmt), errors
