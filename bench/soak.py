#!/usr/bin/env python3
"""Soak: teamsbc at a steady call rate for a long time; event-loop pauses, latency, memory.

    .venv/bin/python bench/soak.py                       # 30 min, 100 calls/s, 2 s holds
    .venv/bin/python bench/soak.py --minutes 3 --stem try

Issue 12 (items 2 and 3): no collector pause above 20 ms, p99.9 INVITE->200 below 50 ms, RSS
flat. The topology is the bench's (bench/lab.py) `tls-udp+rtpengine`: a Teams sipp (TCP) ->
stunnel (mutual TLS) -> teamsbc -> PBX sipp (UDP), media anchored in a user-space rtpengine
(offer on the INVITE, answer on the 200, delete on the BYE). teamsbc runs from a snapshot of
the working tree (bench.py's) under bench/soak_probe.py, which times every cyclic collection
with gc.callbacks, reads RSS every minute and diffs two tracemalloc snapshots (5 and 25
minutes by default; tracemalloc runs from minute 4 to the second snapshot only).

Output: bench/results/<stem>.md and .json (the command line, the machine, the load average
each minute: the machine is shared). INVITE->200 comes from the timed sipp scenario
(gettimeofday around INVITE sent / 200 received).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from bench import snapshot  # noqa: E402


def say(*a) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}]", *a, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=100.0, help="new calls per second")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds each call is held")
    ap.add_argument("--scenario", default="tls-udp+rtpengine", help="a bench/lab.py scenario")
    ap.add_argument("--tracemalloc", default="240,300,1500",
                    help="start,snapshot A,snapshot B in seconds (default 4, 5 and 25 minutes)")
    ap.add_argument("--cycles-at", type=float, default=600.0,
                    help="seconds: one full collection with DEBUG_SAVEALL (what is in cycles)")
    ap.add_argument("--census", default="300,1500", help="seconds: objects by type (default 5 and 25 min)")
    ap.add_argument("--stem", help="results file name (default <date>-soak)")
    ap.add_argument("--out", default=str(BENCH / "results"))
    ap.add_argument("--scratch", default=str(BENCH / "scratch"))
    ap.add_argument("--rev", help="soak teamsbc as committed at this git revision")
    args = ap.parse_args()
    command = "bench/soak.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 65536):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    scratch = Path(args.scratch) / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    snap = snapshot(scratch / "src", args.rev)
    src = snap["path"]
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = src + os.pathsep + os.environ.get("PYTHONPATH", "")
    start_tm, tm_a, tm_b = (float(x) for x in args.tracemalloc.split(","))
    os.environ.update(SOAK_TM_START=str(start_tm), SOAK_TM_A=str(tm_a), SOAK_TM_B=str(tm_b),
                      SOAK_CYCLES=str(args.cycles_at), SOAK_CENSUS=args.census)

    import lab
    lab.TEAMSBC_SRC = Path(src)
    from lab import (Topology, cpu_seconds, log_problems, memory_kib, percentile, sbc_overrides,
                     setup_times, timed_uac, SippStats)
    from tests.support.pki import build_test_pki
    from tests.support.procs import ProcessManager

    pm = ProcessManager(scratch / "procs")
    pki = build_test_pki(scratch / "pki")
    uac_xml, timed = timed_uac(scratch)
    over, dropped = sbc_overrides(pki)
    probe_out = scratch / "probe.json"
    secs = args.minutes * 60.0
    calls = int(args.rate * secs)
    hold_ms = int(args.hold * 1000)
    limit = int(args.rate * (args.hold + 2.0)) + 50
    load = [{"t": 0.0, "loadavg": [round(x, 2) for x in os.getloadavg()]}]
    topo = Topology("teamsbc", args.scenario, scratch / "soak", pm, pki, uac_xml, sbc_overrides=over,
                    launcher=[str(BENCH / "soak_probe.py"), str(probe_out)])
    say(f"{args.scenario}: {calls} calls at {args.rate:g}/s, hold {args.hold:g} s, snapshot {snap['source']}")
    samples: list[dict] = []
    try:
        topo.start()
        pids = topo.pids()
        uas = topo.uas(calls, timeout_s=secs + 120, recv_timeout_ms=10_000)
        uas.start()
        uac = topo.uac(calls, args.rate, hold_ms=hold_ms, limit=limit, timeout_s=secs + 120,
                       recv_timeout_ms=10_000)
        t0 = time.monotonic()
        uac.start()
        cpu0 = cpu_seconds(pids)
        next_sample = 60.0
        while uac.process is not None and uac.process.poll() is None:
            time.sleep(1.0)
            t = time.monotonic() - t0
            if t >= next_sample:
                mem = memory_kib(pids)
                samples.append({"t": round(t, 1), "rss_kib": mem["rss_kib"],
                                "cpu_s": round(cpu_seconds(pids) - cpu0, 2),
                                "loadavg": [round(x, 2) for x in os.getloadavg()]})
                say(f"{t / 60:.0f} min: RSS {mem['rss_kib'] / 1024:.1f} MiB, load {samples[-1]['loadavg']}")
                next_sample += 60.0
            if t > secs + 180:
                say("sipp did not finish in time: stopping it")
                break
        ures = uac.wait(timeout=60)
        sres = uas.wait(timeout=30)
        wall = time.monotonic() - t0
        alive = topo.alive()
        log_n, log_examples, _ = log_problems(topo.proxy_log(), "teamsbc")
    finally:
        topo.stop()   # SIGTERM: teamsbc stops gracefully and the probe writes its file
        pm.stop_all()
    load.append({"t": round(wall, 1), "loadavg": [round(x, 2) for x in os.getloadavg()]})

    probe = json.loads(probe_out.read_text()) if probe_out.exists() else {}
    rows = Path(str(probe_out) + ".pauses")
    if "pauses" not in probe and rows.exists():
        probe["pauses"] = [json.loads(line) for line in rows.read_text().splitlines() if line.strip()]
    compare_snapshots(probe_out, probe.get("tracemalloc", {}))
    # the probe's times count from the SBC's process start; the calls began at t0 (both monotonic)
    serving_from = round(t0 - probe["t0_monotonic"], 3) if "t0_monotonic" in probe else 0.0
    a, b = SippStats.of(uac, ures), SippStats.of(uas, sres)
    times, starts, source = setup_times(uac)
    data = {
        "command": command, "date": dt.date.today().isoformat(), "scenario": args.scenario,
        "rate": args.rate, "hold_s": args.hold, "minutes": args.minutes, "calls": calls,
        "wall_s": round(wall, 1), "teamsbc": snap, "sbc_overrides": over, "sbc_overrides_dropped": dropped,
        "alive_at_end": alive, "log_problem_lines": log_n, "log_examples": log_examples,
        "uac": a.__dict__, "uas": b.__dict__, "latency_source": source,
        "latency": latency(times, starts, percentile), "rss_outside": samples, "load": load,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "probe": summarise_probe(probe, serving_from),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or f"{data['date']}-soak"
    (out / f"{stem}.json").write_text(json.dumps({**data, "pauses": probe.get("pauses", [])}, indent=1))
    (out / f"{stem}.md").write_text(render(data))
    say(f"wrote {out / (stem + '.md')}")
    return 0


def compare_snapshots(probe_out: Path, tm: dict) -> None:
    """What appeared between the probe's two tracemalloc snapshots, by file and by traceback
    (most recent frame first)."""
    import tracemalloc
    a, b = Path(str(probe_out) + ".a.snapshot"), Path(str(probe_out) + ".b.snapshot")
    if not (a.exists() and b.exists()):
        return
    sa, sb = tracemalloc.Snapshot.load(str(a)), tracemalloc.Snapshot.load(str(b))
    short = lambda f: f.filename.split("/src/", 1)[-1].rsplit("/site-packages/", 1)[-1]  # noqa: E731
    tm["by_file"] = [{"file": short(s.traceback[0]), "size_diff_kib": round(s.size_diff / 1024, 1)}
                     for s in sb.compare_to(sa, "filename")[:15]]
    tm["top_diff"] = [{"size_diff_kib": round(s.size_diff / 1024, 1), "size_kib": round(s.size / 1024, 1),
                       "count_diff": s.count_diff,
                       "where": [f"{short(f)}:{f.lineno}" for f in list(s.traceback)[::-1][:6]]}
                      for s in sb.compare_to(sa, "traceback")[:25]]


def latency(times: list[float], starts: list[float], percentile) -> dict:
    if not times:
        return {"n": 0}
    t0 = min(starts)
    per_minute: dict[int, list[float]] = {}
    for t, s in zip(times, starts):
        per_minute.setdefault(int((s - t0) // 60), []).append(t)
    return {"n": len(times), "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
            "p99_9_ms": percentile(times, 99.9), "max_ms": max(times),
            "over_50_ms": sum(1 for t in times if t > 50), "over_200_ms": sum(1 for t in times if t > 200),
            "per_minute": {m: {"n": len(v), "p99_9_ms": percentile(v, 99.9), "max_ms": max(v)}
                           for m, v in sorted(per_minute.items())}}


def summarise_probe(p: dict, serving_from: float = 0.0) -> dict:
    """Collections are split at `serving_from` (seconds after the SBC's start, when the first
    call went out): before it the SBC imports and freezes its start-up heap, with no call to stall."""
    pauses = [x for x in p.get("pauses", []) if not x[4]]   # not the probe's own forced one
    tm = p.get("tracemalloc", {})
    t_on, t_off = tm.get("started", 1e18), tm.get("stopped", 1e18)

    def stats(rows: list) -> dict:
        ms = sorted(r[2] for r in rows)
        if not ms:
            return {"n": 0}
        cpu = sorted(r[5] for r in rows if len(r) > 5)
        return {"n": len(ms), "max_ms": ms[-1], "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
                "over_10_ms": sum(1 for m in ms if m > 10), "over_20_ms": sum(1 for m in ms if m > 20),
                "collected": sum(r[3] for r in rows),
                "cpu_max_ms": cpu[-1] if cpu else None,
                "cpu_p99_ms": cpu[min(len(cpu) - 1, int(0.99 * len(cpu)))] if cpu else None,
                "cpu_over_20_ms": sum(1 for m in cpu if m > 20) if cpu else None}

    by_gen = {g: stats([r for r in pauses if r[1] == g]) for g in (0, 1, 2)}
    outside = [r for r in pauses if not (t_on <= r[0] <= t_off)]
    return {"all": stats(pauses), "by_generation": by_gen, "without_tracemalloc": stats(outside),
            "serving_from": serving_from,
            "serving": stats([r for r in pauses if r[0] >= serving_from]),
            "startup": stats([r for r in pauses if r[0] < serving_from]),
            "worst": sorted(pauses, key=lambda r: -r[2])[:10], "minutes": p.get("minutes", []),
            "tracemalloc": tm, "cycles": p.get("cycles", {}), "censuses": p.get("censuses", []),
            "gc_threshold": p.get("gc_threshold"),
            "gc_frozen": p.get("gc_frozen")}


def _mib(m: dict, key: str) -> str:
    return f"{m[key] / 1024:.1f}" if key in m else ""


def render(d: dict) -> str:
    pr, lat = d["probe"], d["latency"]
    a, b = d["uac"], d["uas"]
    L = [f"# teamsbc soak, {d['date']}", "",
         f"Command: `{d['command']}` (teamsbc from {d['teamsbc']['source']}, sha256 of its .py "
         f"{d['teamsbc']['sha256_teamsbc_py']}).", "",
         f"Scenario `{d['scenario']}`: {d['calls']} calls at {d['rate']:g} calls/s, each held "
         f"{d['hold_s']:g} s, over {d['wall_s'] / 60:.1f} min; {d['machine']['cpus']} CPUs, Python "
         f"{d['machine']['python']}. **The machine is shared**: other engineers' test suites ran "
         f"during the soak; load average at the start {d['load'][0]['loadavg']}, at the end "
         f"{d['load'][-1]['loadavg']}, each minute in the RSS table.", "",
         "## Against the targets", "",
         "| Target | Measured | Met |", "|---|---|---|"]
    allp = pr["all"]
    serv, boot = pr.get("serving", allp), pr.get("startup", {})
    L.append(f"| no collector pause above 20 ms while calls run | max {serv.get('max_ms', 0):.1f} ms over "
             f"{serv.get('n', 0)} collections ({serv.get('over_20_ms', 0)} above 20 ms) | "
             f"{'yes' if serv.get('n') and serv.get('over_20_ms') == 0 else '**no**'} |")
    p999 = lat.get("p99_9_ms")
    L.append(f"| p99.9 INVITE->200 below 50 ms | {p999 if p999 is None else round(p999, 1)} ms "
             f"(p50 {lat.get('p50_ms', 0):.1f}, p99 {lat.get('p99_ms', 0):.1f}, max {lat.get('max_ms', 0):.1f}; "
             f"{lat.get('over_50_ms', 0)} of {lat.get('n', 0)} above 50 ms) | "
             f"{'yes' if p999 is not None and p999 < 50 else '**no**'} |")
    rss = [m["rss_kib"] for m in pr["minutes"]] or [s["rss_kib"] for s in d["rss_outside"]]
    if len(rss) >= 10:
        first, last = rss[4], rss[-1]
        L.append(f"| RSS flat | minute 5: {first / 1024:.1f} MiB, last: {last / 1024:.1f} MiB "
                 f"({(last - first) / 1024:+.1f} MiB) | see the table |")
    L += ["", "## Calls", "",
          f"caller: {a['successful']} ok, {a['failed']} failed {a['failed_reasons'] or ''}, "
          f"{a['retrans']} retransmissions, {a['unexpected']} unexpected; callee: {b['successful']} ok, "
          f"{b['failed']} failed, {b['retrans']} retransmissions. teamsbc alive at the end: "
          f"{d['alive_at_end']}; warning/error log lines: {d['log_problem_lines']}.", ""]
    if d["log_examples"]:
        L += ["```", *d["log_examples"][:6], "```", ""]
    L += ["## Collector pauses (gc.callbacks, every collection)", "",
          f"Thresholds {pr.get('gc_threshold')}, frozen (never walked) at the end: {pr.get('gc_frozen')} objects.", "",
          "Wall: how long the event loop stood still. CPU: the time the collecting thread ran (a "
          "wall time far above it is the kernel running other processes meanwhile).", "",
          "| | collections | max ms | p99 ms | > 10 ms | > 20 ms | CPU max ms | CPU p99 ms | CPU > 20 ms | objects collected |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("all", allp), (f"while calls run (from {pr.get('serving_from', 0):.1f} s)", serv),
            ("start-up, before the first call", boot)] + [(f"generation {g}", s) for g, s in pr["by_generation"].items()] + \
        [("outside the tracemalloc window", pr["without_tracemalloc"])]
    for name, s in rows:
        if s.get("n"):
            cpu = (f"{s['cpu_max_ms']:.2f} | {s['cpu_p99_ms']:.2f} | {s['cpu_over_20_ms']}"
                   if s.get("cpu_max_ms") is not None else "| |")
            L.append(f"| {name} | {s['n']} | {s['max_ms']:.2f} | {s['p99_ms']:.2f} | {s['over_10_ms']} | "
                     f"{s['over_20_ms']} | {cpu} | {s['collected']} |")
        else:
            L.append(f"| {name} | 0 | | | | | | | | |")
    L += ["", "Longest: " + ", ".join(f"{r[2]:.1f} ms (gen {r[1]} at {r[0] / 60:.1f} min"
                                      + (f", CPU {r[5]:.1f} ms" if len(r) > 5 else "") + ")"
                                      for r in pr["worst"][:5]), ""]
    cyc = pr.get("cycles") or {}
    if cyc:
        L += [f"Objects in reference cycles, frozen ones included, one full collection with DEBUG_SAVEALL at minute "
              f"{cyc['at'] / 60:.1f} (not counted above; it took {cyc['ms']} ms): {cyc['objects_in_cycles']} "
              f"({', '.join(f'{k} {v}' for k, v in cyc['types'][:10]) or 'none'}).", ""]
    cens = pr.get("censuses") or []
    if cens:
        L += ["## What holds the memory: every object the collector knows, by type", "",
              "(frozen ones included; each census stalled the SBC " + ", ".join(f"{c['ms']} ms" for c in cens) + ")", "",
              "| type | " + " | ".join(f"minute {c['t'] / 60:.0f}" for c in cens) + " |",
              "|---|" + "---|" * len(cens)]
        names = [n for n, _ in cens[0]["types"][:20]]
        for n in names:
            L.append(f"| {n} | " + " | ".join(str(dict(c["types"]).get(n, "")) for c in cens) + " |")
        L.append("| **all objects** | " + " | ".join(str(c["objects"]) for c in cens) + " |")
        L.append("| allocated blocks | " + " | ".join(str(c["blocks"]) for c in cens) + " |")
        L.append("| RSS MiB | " + " | ".join(f"{c['rss_kib'] / 1024:.1f}" for c in cens) + " |")
        L.append("")
    L += ["## Memory, every minute", "",
          "Anon/file: the RSS's anonymous and file-backed pages; malloc: glibc's heap in every arena "
          "(in use / free but kept); blocks: pymalloc's allocated blocks; probe: what the probe's own "
          "records of every collection hold (part of the RSS, not the SBC's).", "",
          "| minute | RSS MiB (probe) | RSS MiB (outside) | anon / file MiB | malloc in use / free MiB | blocks | probe KiB | CPU s | load |",
          "|---|---|---|---|---|---|---|---|---|"]
    outside = {int(round(s["t"] / 60)): s for s in d["rss_outside"]}
    for m in pr["minutes"]:
        k = int(round(m["t"] / 60))
        o = outside.get(k, {})
        L.append(f"| {k} | {m['rss_kib'] / 1024:.1f}{' (tracemalloc on)' if m.get('tracemalloc_on') else ''} | "
                 f"{o.get('rss_kib', 0) / 1024:.1f} | {_mib(m, 'RssAnon')} / {_mib(m, 'RssFile')} | "
                 f"{_mib(m, 'malloc_in_use_kib')} / {_mib(m, 'malloc_free_kib')} | {m.get('blocks', '')} | "
                 f"{m.get('probe_kib', '')} | "
                 f"{o.get('cpu_s', '')} | {o.get('loadavg', '')} |")
    tm = pr.get("tracemalloc") or {}
    if tm.get("top_diff"):
        L += ["", f"## tracemalloc: what appeared between {tm['a_at'] / 60:.1f} and {tm['b_at'] / 60:.1f} min",
              "", f"Traced memory {tm['a_traced_kib'] / 1024:.1f} MiB -> {tm['b_traced_kib'] / 1024:.1f} MiB "
              "(allocations made since tracemalloc started at minute "
              f"{tm['started'] / 60:.1f}; taking the snapshots stalled the SBC {tm.get('a_ms')} and "
              f"{tm.get('b_ms')} ms). Largest differences by file:", ""]
        L += [f"- {x['file']}: {x['size_diff_kib']:+.1f} KiB" for x in tm.get("by_file", [])[:10]]
        L += ["", "Largest by traceback (innermost frame first):", ""]
        for x in tm["top_diff"][:12]:
            L.append(f"- {x['size_diff_kib']:+.1f} KiB ({x['count_diff']:+d} blocks, now {x['size_kib']:.1f} KiB): "
                     + " <- ".join(x["where"][:5]))
    L += ["", "## INVITE->200 per minute (p99.9 / max, ms)", "",
          " ".join(f"{m}: {v['p99_9_ms']:.0f}/{v['max_ms']:.0f}" for m, v in lat.get("per_minute", {}).items()), ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
