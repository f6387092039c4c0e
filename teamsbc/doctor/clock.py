"""Check `clock`: NTP synchronised (timedatectl, chronyc or ntpq, whichever answers). TLS
certificate validity, on both sides of the Teams connection, is judged by the clocks.
"""
from __future__ import annotations

import re
import shutil
import subprocess

from .report import FAIL, PASS, WARN, Result


def check() -> list[Result]:
    check = "clock"
    fix = "enable NTP: timedatectl set-ntp true (or apt-get install chrony)"

    def run(argv: list[str]) -> str | None:
        if not shutil.which(argv[0]):
            return None
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    out = run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out is not None and out.strip() in ("yes", "no"):
        if out.strip() == "yes":
            return [Result(PASS, check, "NTP synchronized (timedatectl)")]
        return [Result(WARN, check, "not NTP synchronized (timedatectl): certificate validity and "
                                    "Teams' TLS need a correct clock", fix)]
    out = run(["chronyc", "-n", "tracking"])
    if out is not None:
        m = re.search(r"System time\s*:\s*([0-9.]+) seconds", out)
        offset = float(m.group(1)) if m else None
        if offset is not None and offset > 60:
            return [Result(FAIL, check, f"clock {offset:.0f} s off NTP time (chronyc)", "chronyc makestep")]
        if re.search(r"Leap status\s*:\s*Normal", out):
            return [Result(PASS, check, "NTP synchronized (chronyc)" +
                           (f", offset {offset * 1000:.1f} ms" if offset is not None else ""))]
        return [Result(WARN, check, "chrony is not synchronised", "check chronyc sources")]
    out = run(["ntpq", "-pn"])
    if out is not None:
        if any(line.startswith("*") for line in out.splitlines()):
            return [Result(PASS, check, "NTP synchronized (ntpq: a selected peer)")]
        return [Result(WARN, check, "ntpd has no selected peer", "check ntpq -p")]
    return [Result(WARN, check, "cannot tell: no timedatectl (with systemd), chronyc or ntpq answered", fix)]
