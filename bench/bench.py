#!/usr/bin/env python3
"""teamsbc vs Kamailio vs sipp->sipp: clean call rate, added latency, CPU and memory per call.

    bench/run                     # full run (< 15 min on 2 cores): bench/results/<date>.md
    bench/run --quick             # ~3 min smoke run: bench/results/<date>-quick.md
    bench/run --rev HEAD          # measure the committed teamsbc, not the working tree

teamsbc (and the tests/support harness the bench drives it with) is copied once at the start
into the scratch directory and run from that copy, so edits made while the bench runs cannot
mix two versions into one table. See bench/README.md for what is measured and how. Only ratios
taken in the same run count: the machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def snapshot(dest: Path, rev: str | None) -> dict:
    """Copy teamsbc/ and tests/{__init__.py,support,sipp} to dest (from the working tree, or
    from git REV) and describe what was copied."""
    dest.mkdir(parents=True, exist_ok=True)
    parts = ["teamsbc", "tests/__init__.py", "tests/support", "tests/sipp"]
    git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True)  # noqa: E731
    head = git("rev-parse", "--short", "HEAD").stdout.strip() or "?"
    if rev:
        sha = git("rev-parse", "--short", rev).stdout.strip()
        if not sha:
            raise SystemExit(f"bench: git cannot resolve {rev!r}")
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha, *parts],
                              capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=arch.stdout, check=True)
        source = f"git {rev} = {sha}"
    else:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for p in parts:
            s = ROOT / p
            if s.is_dir():
                shutil.copytree(s, dest / p, ignore=ignore, dirs_exist_ok=True)
            elif s.exists():
                (dest / p).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, dest / p)
        dirty = git("status", "--porcelain", "--", "teamsbc").stdout.strip()
        source = f"working tree at {head}" + (" with uncommitted changes in teamsbc/" if dirty else " (clean)")
    h = hashlib.sha256()
    for f in sorted((dest / "teamsbc").rglob("*.py")):
        h.update(f.relative_to(dest).as_posix().encode() + b"\0" + f.read_bytes())
    return {"source": source, "sha256_teamsbc_py": h.hexdigest()[:16], "path": str(dest)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~3 min smoke run (shorter steps, fewer rates)")
    ap.add_argument("--out", default=str(BENCH / "results"), help="results directory (default bench/results)")
    ap.add_argument("--scratch", default=str(BENCH / "scratch"), help="sipp/proxy work files (default bench/scratch)")
    ap.add_argument("--rev", help="measure teamsbc as committed at this git revision (default: the working tree)")
    ap.add_argument("--scenarios", help="comma list of udp-udp,tls-udp,udp-tls, each optionally +rtpengine (default all)")
    ap.add_argument("--ladder", help="comma list of call rates to step through")
    ap.add_argument("--date", help="results file name date (default today)")
    ap.add_argument("--stem", help="results file name without .md (default <date> or <date>-quick)")
    ap.add_argument("--phases", help="comma list of ladder,latency,hold,profile,events (default all; "
                    "latency needs ladder; events alone runs at 50/s)")
    ap.add_argument("--systems", help="comma list of the proxies to measure (default all: teamsbc, "
                    "teamsbc+VARIANT, kamailio); sipp->sipp direct always runs")
    ap.add_argument("--variants", help="also measure teamsbc what-ifs run by bench/launch_teamsbc.py "
                    "(comma list of words joined by '-': w2 = sbc.workers 2, cpu1 = taskset to one core, "
                    "gc-freeze, gc-off; e.g. w2,cpu1,w2-cpu1); not part of the default run")
    ap.add_argument("--events-rate", type=float, help="calls/s of the events phase (default: half of "
                    "teamsbc's clean rate from this run's ladder, 50 without one)")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # inherited by sipp, kamailio, teamsbc
    for tool in ("sipp", "kamailio", "stunnel4"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (bench/run installs it)", file=sys.stderr)
            return 2

    args.scratch_run = Path(args.scratch) / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    snap = snapshot(args.scratch_run / "src", args.rev)
    src = snap["path"]
    sys.path.insert(0, src)
    sys.path.insert(1, str(BENCH))
    os.environ["PYTHONPATH"] = src + os.pathsep + os.environ.get("PYTHONPATH", "")  # teamsbc processes
    check = subprocess.run([sys.executable, "-c", "import teamsbc.cli, teamsbc.app, sys; print(teamsbc.__file__)"],
                           capture_output=True, text=True, cwd=src)
    if check.returncode != 0 or not check.stdout.strip().startswith(src):
        print(f"bench: the teamsbc snapshot ({snap['source']}) does not import cleanly:\n"
              f"{check.stdout}{check.stderr}\n(try --rev HEAD)", file=sys.stderr)
        return 2
    import lab
    lab.TEAMSBC_SRC = Path(src)
    import runner
    return runner.Bench(args, snap).run()


if __name__ == "__main__":
    sys.exit(main())
