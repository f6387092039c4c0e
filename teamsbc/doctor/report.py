"""The doctor's report: one line per finding, a fix under anything not PASS, a summary line,
and the exit code (the number of FAILs: 0 = nothing known to be broken).

    PASS  dns sbc.example.com: 203.0.113.10 (an address of this host)
    FAIL  cert validity: expired at 2025-01-01 00:00:00 UTC
      fix: renew it now (teamsbc cert renew -c FILE), then systemctl reload teamsbc

    12 passed, 1 warnings, 1 failed
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
MAX_EXIT_CODE = 125   # 126 and up mean "cannot execute" / "killed by a signal" to shells


@dataclass
class Result:
    status: str     # PASS | WARN | FAIL
    check: str
    finding: str
    fix: str | None = None

    def lines(self) -> list[str]:
        out = [f"{self.status}  {self.check}: {self.finding}"]
        if self.status != PASS and self.fix:
            out.append(f"  fix: {self.fix}")
        return out


def print_results(results: list[Result], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    for r in results:
        for line in r.lines():
            print(line, file=stream)
    counts = {s: sum(1 for r in results if r.status == s) for s in (PASS, WARN, FAIL)}
    print(f"\n{counts[PASS]} passed, {counts[WARN]} warnings, {counts[FAIL]} failed", file=stream)


def exit_code(results: list[Result]) -> int:
    return min(sum(1 for r in results if r.status == FAIL), MAX_EXIT_CODE)
