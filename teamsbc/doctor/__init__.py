"""`teamsbc doctor`: the Teams pairing checklist (the command and its checks: cli.py).

One module per check, named as the check is on the command line:
    dns.py  cert.py  tls.py  options.py  teams_ping.py  identity.py  media.py  clock.py
and around them:
    runner.py    Doctor (runs the checks, in order) and its Options
    report.py    Result, PASS/WARN/FAIL, the printed report and the exit code
    tlsprobe.py  a ClientHello and the server's first flight read in the clear (TLS records)
    samples.py   what the SBC's own code sends toward Teams (for identity), captured samples
    cli.py       `teamsbc doctor` / `python -m teamsbc.doctor`
"""
from .cli import cmd_doctor, main, register
from .report import FAIL, PASS, WARN, Result
from .runner import CHECKS, Doctor, Options

__all__ = ["Doctor", "Options", "Result", "PASS", "WARN", "FAIL", "CHECKS", "cmd_doctor", "register", "main"]
