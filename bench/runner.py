"""The benchmark's phases (imported by bench/bench.py once the teamsbc snapshot is on sys.path):
1 step the call rate up per system and scenario, 2 latency and CPU at 50% of each clean rate,
3 memory per concurrent call held open, 4 teamsbc under cProfile at its limit."""
from __future__ import annotations

import datetime as dt
import os
import platform
import pstats
import re
import signal
import shutil
import subprocess
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

import lab  # noqa: E402
from lab import (SCENARIOS, ProcessManager, SippStats, Topology, cpu_seconds, log_problems,  # noqa: E402
                 memory_kib, percentile, rtt_file_times, udp_drops, drops_delta, udp_rcvbuf_errors, sbc_overrides, setup_times,
                 summarise_times, timed_uac)
from tests.support.pki import build_test_pki  # noqa: E402

SYSTEMS = ("teamsbc", "kamailio", "direct")
PROXIES = ("teamsbc", "kamailio")
SCENARIO_TITLE = {
    "udp-udp": "UDP <-> UDP (PBX sipp UDP -> proxy -> sipp UDP)",
    "tls-udp": "TLS(Teams) -> UDP(PBX) (Teams sipp -> stunnel mTLS -> proxy -> PBX sipp UDP)",
    "udp-tls": "UDP(PBX) -> TLS(Teams) (PBX sipp UDP -> proxy -> stunnel mTLS -> Teams sipp)",
}
for _k in list(SCENARIO_TITLE):
    SCENARIO_TITLE[_k + "+rtpengine"] = SCENARIO_TITLE[_k] + " + rtpengine"
PLANS = {
    "full": dict(ladder=[100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1400, 1600, 1800, 2200], step_secs=4.0,
                 hold_ms=500, lat_secs=5.0, retry=True, hold_counts=(2000, 10000),
                 profile_secs=6.0, budget_s=12.5 * 60, reserve_after_ladder=270,
                 scenarios=SCENARIOS),
    "quick": dict(ladder=[100, 300, 700, 1400], step_secs=2.0, hold_ms=500, lat_secs=2.5,
                  retry=False, hold_counts=(1000,), profile_secs=2.5, budget_s=4.5 * 60,
                  reserve_after_ladder=100,
                  scenarios=("udp-udp", "tls-udp", "udp-tls", "tls-udp+rtpengine")),
}
# Kamailio's ladder starts here (the steps below are taken as clean when this one is): it is
# clean far above them, and the 15-minute budget is better spent near its limit.
KAMAILIO_START = 300
KAMAILIO_HALF = "teamsbc@kamailio-half"  # latency key: teamsbc at half of Kamailio's clean rate
P99_LIMIT_MS = 500.0     # the UDP retransmission timer T1: slower than this is not clean on TCP either
RATE_FRACTION = 0.95     # sipp must start calls at >= 95% of the asked rate
NOISE_FRACTION = 0.001   # retransmissions / unexpected messages allowed: 0.1% of calls (at least 1)


def say(*a) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *a, flush=True)


# =========================================================================== one sipp run

def run_calls(topo: Topology, rate: float, secs: float, hold_ms: int, *, measure_cpu: bool = False) -> dict:
    """One fixed-rate run: a fresh UAS, then a UAC placing rate*secs calls; judged clean or not."""
    calls = max(int(round(rate * secs)), 10)
    limit = int(rate * (hold_ms / 1000.0 + 2.0)) + 50
    timeout_s = secs + hold_ms / 1000.0 + 30.0
    uas = topo.uas(calls, timeout_s=timeout_s + 5)
    uas.start()
    uac = topo.uac(calls, rate, hold_ms=hold_ms, limit=limit, timeout_s=timeout_s)
    pids = topo.pids()
    rtp_pids = [topo.rtpengine.pid] if topo.rtpengine is not None else []
    drops0, rdrops0, rcvbuf0 = udp_drops(pids), udp_drops(rtp_pids), udp_rcvbuf_errors()
    cpu0 = cpu_seconds(pids) if measure_cpu else 0.0
    rcpu0 = cpu_seconds(rtp_pids)
    t0 = time.monotonic()
    ures = uac.run()
    wall = time.monotonic() - t0
    pids_after = sorted(set(pids) | set(topo.pids()))
    cpu1 = cpu_seconds(pids_after) if measure_cpu else 0.0
    rcpu1 = cpu_seconds(rtp_pids)
    sres = uas.wait(timeout=8)
    drops1 = udp_drops(pids_after)
    proxy_drops = drops_delta(drops0, drops1)
    proxy_drops_by_port = {k: v - drops0.get(k, 0) for k, v in drops1.items() if v - drops0.get(k, 0) > 0}
    rtp_drops = drops_delta(rdrops0, udp_drops(rtp_pids))
    all_drops = udp_rcvbuf_errors() - rcvbuf0
    a, b = SippStats.of(uac, ures), SippStats.of(uas, sres)
    times, starts, source = setup_times(uac)
    achieved = (len(starts) - 1) / (max(starts) - min(starts)) if len(starts) > 10 and max(starts) > min(starts) else None
    lat = summarise_times(times)
    reasons = []
    if not a.ok:
        reasons.append(f"caller: {a.successful}/{calls} ok, {a.failed} failed"
                       + (f" {a.failed_reasons}" if a.failed_reasons else "")
                       + (" (timed out)" if a.timed_out else "") + (f" rc={a.rc}" if a.rc else ""))
    if b.failed or b.timed_out:
        reasons.append(f"callee: {b.failed} failed" + (f" {b.failed_reasons}" if b.failed_reasons else "")
                       + (" (stopped)" if b.timed_out else ""))
    allowed = max(1, int(NOISE_FRACTION * calls))
    retrans = a.retrans + b.retrans
    unexpected = a.unexpected + b.unexpected
    if retrans > allowed:
        reasons.append(f"{retrans} retransmissions")
    if unexpected > allowed:
        reasons.append(f"{unexpected} unexpected messages")
    if achieved is not None and achieved < RATE_FRACTION * rate and a.successful == calls:
        reasons.append(f"sipp reached only {achieved:.0f} calls/s")
    if lat.get("p99_ms") is not None and lat["p99_ms"] > P99_LIMIT_MS:
        reasons.append(f"p99 INVITE->200 {lat['p99_ms']:.0f} ms")
    if not topo.alive():
        reasons.append("proxy process died")
    if reasons and (proxy_drops or all_drops):
        where = ", ".join(f"{n} on {_port_name(topo, int(p))}" for p, n in sorted(proxy_drops_by_port.items()))
        reasons.append(f"UDP datagrams dropped (receive buffer full): {proxy_drops} at the proxy"
                       + (f" ({where})" if where else "")
                       + (f", {rtp_drops} at rtpengine" if rtp_pids else "")
                       + f", {all_drops} machine-wide")
    rtt = rtt_file_times(uac)
    out = {
        "rate": rate, "calls": calls, "limit": limit, "hold_ms": hold_ms, "wall_s": round(wall, 2),
        "clean": not reasons, "reasons": reasons, "achieved_rate": round(achieved, 1) if achieved else None,
        "retrans": retrans, "unexpected": unexpected, "latency": lat, "latency_source": source,
        "udp_drops_proxy": proxy_drops, "udp_drops_proxy_by_port": proxy_drops_by_port,
        "udp_drops_rtpengine": rtp_drops, "udp_rcvbuf_errors_all": all_drops,
        "rtt_csv": summarise_times(rtt), "uac": asdict(a), "uas": asdict(b),
    }
    if measure_cpu:
        out["cpu_s"] = round(cpu1 - cpu0, 3)
        out["cpu_s_per_1000_calls"] = (cpu1 - cpu0) / max(a.successful, 1) * 1000.0 if pids else None
        out["proxy_processes"] = len(pids_after)
        if rtp_pids:
            out["rtpengine_cpu_s_per_1000_calls"] = (rcpu1 - rcpu0) / max(a.successful, 1) * 1000.0
    return out, times


def _port_name(topo: Topology, port: int) -> str:
    if port in topo.proxy_udp_ports():
        return "its PBX-side socket" if port == topo.proxy_udp_ports()[0] else "its UDP Teams-side socket"
    return f"its UDP socket {port}" + (" (rtpengine NG client)" if topo.rtpengine is not None else "")


# =========================================================================== the bench

class Bench:
    def __init__(self, args, snap: dict):
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.plan = dict(PLANS[self.mode])
        if args.ladder:
            self.plan["ladder"] = [int(x) for x in args.ladder.split(",")]
        self.t_start = time.monotonic()
        self.date = args.date or dt.date.today().isoformat()
        self.results_dir = Path(args.out)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.stem = args.stem or (self.date + ("-quick" if args.quick else ""))
        self.phases = set((args.phases or "ladder,latency,hold,profile,events").split(","))
        self.scratch = Path(args.scratch_run)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.scenarios = list(args.scenarios.split(",") if args.scenarios else self.plan["scenarios"])
        if not shutil.which("rtpengine"):
            skipped = [s for s in self.scenarios if s.endswith("+rtpengine")]
            self.scenarios = [s for s in self.scenarios if s not in skipped]
            self.rtpengine_missing = skipped
        self.variants = [v for v in (args.variants.split(",") if args.variants else []) if v]
        # each what-if runs the signalling-only ladders (and their latency runs) once more
        self.plan["budget_s"] += 150 * len(self.variants)
        if "events" in self.phases:  # three ~20 s runs after the profiles
            self.plan["budget_s"] += 75
        if "latency" in self.phases:  # teamsbc once more at half of Kamailio's clean rate
            self.plan["budget_s"] += 15 * len(self.scenarios)
        self.only = set(args.systems.split(",")) if args.systems else None
        self.pm = ProcessManager(self.scratch / "procs")
        self.pki = build_test_pki(self.scratch / "pki")
        self.uac_xml, self.timed = timed_uac(self.scratch)
        self.sbc_overrides, dropped = sbc_overrides(self.pki)
        self.data: dict = {"date": self.date, "mode": self.mode, "plan": self.plan, "steps": {},
                           "variants": self.variants, "teamsbc": snap,
                           "latency": {}, "hold": {}, "profile": {}, "events": {}, "problems": [], "skipped": [],
                           "timed_scenario": self.timed, "sbc_overrides": self.sbc_overrides,
                           "sbc_overrides_dropped": dropped}
        self.topo_n = 0
        self.load_start = [round(x, 2) for x in os.getloadavg()]

    # ---- helpers
    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def left(self) -> float:
        return self.plan["budget_s"] - self.elapsed()

    def topo(self, system: str, scenario: str, **kw) -> Topology:
        self.topo_n += 1
        t = Topology(system, scenario, self.scratch / f"{self.topo_n:02d}-{system}-{scenario}", self.pm,
                     self.pki, self.uac_xml, sbc_overrides=self.sbc_overrides, **kw)
        return t.start()

    def systems_for(self, scenario: str) -> list[str]:
        if scenario.startswith("udp-udp"):
            out = ["kamailio"]  # teamsbc has no UDP Teams leg
        else:
            # what-ifs: the signalling-only scenarios (the scaling table), not the media ones
            out = ["teamsbc"] + [f"teamsbc+{v}" for v in self.variants if "+" not in scenario] + ["kamailio"]
        return [s for s in out if self.only is None or s in self.only]

    def note_problems(self, topo: Topology, phase: str, died: bool = False) -> None:
        if topo.proxy is None:
            return
        text = topo.proxy_log()
        n, examples, benign = log_problems(text, topo.system)
        if n or died:
            self.data["problems"].append({
                "system": topo.system, "scenario": topo.scenario, "phase": phase, "log_lines": n,
                "examples": examples, "died": died, "benign_lines": benign,
                "exit": topo.proxy.process.returncode if topo.proxy.process else None,
                "stderr_tail": text[-1500:] if died else ""})

    def finish_topo(self, topo: Topology, phase: str, died: bool | None = None) -> None:
        if died is None:
            died = not topo.alive()  # before we stop it ourselves
        try:
            topo.stop()
        finally:
            self.note_problems(topo, phase, died)

    # ---- phase 1: step the rate up until calls fail
    def ladder(self, system: str, scenario: str, start_at: int | None = None,
               max_steps: int | None = None) -> dict:
        plan = self.plan
        rates = [r for r in plan["ladder"] if start_at is None or r >= start_at][:max_steps]
        assumed = [r for r in plan["ladder"] if start_at is not None and r < start_at]
        topo = self.topo(system, scenario)
        steps, best, first_fail = [], None, None
        try:
            for rate in rates:
                if self.left() < self.plan["reserve_after_ladder"] * (1 if self.variants == [] else 0.5):
                    self.data["skipped"].append(f"{system} {scenario}: ladder stopped at {rate} (time budget)")
                    break
                res, _ = run_calls(topo, rate, plan["step_secs"], plan["hold_ms"])
                say(f"  {system:8s} {scenario}: {rate:5d}/s {'clean' if res['clean'] else 'NOT clean: ' + '; '.join(res['reasons'])}"
                    f"  p99={res['latency'].get('p99_ms', float('nan')):.1f} ms")
                steps.append(res)
                if not res["clean"] and plan["retry"]:
                    # once more, on a fresh proxy (no leftovers of the failed step: transactions,
                    # rtpengine ports of calls that never got their BYE)
                    self.finish_topo(topo, "ladder")
                    topo = self.topo(system, scenario)
                    res2, _ = run_calls(topo, rate, plan["step_secs"], plan["hold_ms"])
                    res2["retry"] = True
                    steps.append(res2)
                    say(f"  {system:8s} {scenario}: {rate:5d}/s retry: {'clean' if res2['clean'] else 'NOT clean: ' + '; '.join(res2['reasons'])}")
                    res = res2
                if not res["clean"]:
                    first_fail = rate
                    break
                best = rate
                if not topo.alive():
                    break
        finally:
            self.finish_topo(topo, "ladder")
        capped = first_fail is None and (not rates or best == rates[-1])
        if best is None and start_at and first_fail is not None and first_fail == rates[0]:
            # the first step of a shortened ladder failed: start again from the bottom
            return self.ladder(system, scenario)
        return {"system": system, "scenario": scenario, "clean_rate": best or 0, "first_unclean": first_fail,
                "startup_options_answered": topo.startup_options,
                "capped": capped, "assumed_clean_below": assumed, "steps": steps}

    # ---- phase 2: latency and CPU at 50% of the clean rate
    def latency(self, scenario: str, clean: dict[str, int]) -> dict:
        out = {}
        direct_topo = None
        try:
            runs = []
            for system in self.systems_for(scenario):
                c = clean.get(system) or 0
                runs.append((system, system, max(c / 2.0, 25.0) if c else 25.0))
                k = clean.get("kamailio") or 0
                if system == "teamsbc" and k and k != c and "kamailio" in self.systems_for(scenario):
                    # issue 14's latency target is taken at half of *Kamailio's* clean rate
                    runs.append((system, KAMAILIO_HALF, max(k / 2.0, 25.0)))
            for system, key, rate in runs:
                if self.left() < 45:
                    self.data["skipped"].append(f"{key} {scenario}: latency at {rate:.0f}/s (time budget)")
                    continue
                first = None
                for attempt in (1, 2):
                    topo = self.topo(system, scenario)
                    try:
                        res, times = run_calls(topo, rate, self.plan["lat_secs"], self.plan["hold_ms"], measure_cpu=True)
                    finally:
                        self.finish_topo(topo, "latency")
                    if res["clean"] or attempt == 2 or self.left() < 45:
                        break
                    first = res  # noise (the machine is shared): once more on a fresh proxy
                    say(f"  {system:8s} {scenario}: at {rate:.0f}/s not clean ({'; '.join(res['reasons'])}), once more")
                if first is not None:
                    res["first_attempt"] = first
                if direct_topo is None:
                    direct_topo = self.topo("direct", scenario.split("+")[0])
                dres, dtimes = run_calls(direct_topo, rate, self.plan["lat_secs"], self.plan["hold_ms"])
                added = {}
                for q in (50, 99):
                    p, d = percentile(times, q), percentile(dtimes, q)
                    added[f"p{q}_added_ms"] = (p - d) if p is not None and d is not None else None
                    added[f"p{q}_ms"], added[f"p{q}_direct_ms"] = p, d
                added["mean_added_ms"] = (res["latency"].get("mean_ms", 0) - dres["latency"].get("mean_ms", 0)
                                          if times and dtimes else None)
                say(f"  {key:8s} {scenario}: at {rate:.0f}/s p50 {added['p50_ms']} direct {added['p50_direct_ms']}"
                    f" | p99 {added['p99_ms']} direct {added['p99_direct_ms']} | cpu/1000 {res.get('cpu_s_per_1000_calls')}")
                out[key] = {"rate": rate, "run": res, "direct_run": dres, **added,
                               "cpu_s_per_1000_calls": res.get("cpu_s_per_1000_calls"),
                               "rtpengine_cpu_s_per_1000_calls": res.get("rtpengine_cpu_s_per_1000_calls")}
        finally:
            if direct_topo is not None:
                direct_topo.stop()
        return out

    # ---- phase 3: memory per concurrent call held open
    def hold(self, system: str, clean_rate: int) -> dict:
        counts = sorted(self.plan["hold_counts"])
        rate = min(max(0.75 * clean_rate, 100.0), 1000.0)
        n_max = counts[-1]
        ramp = n_max / rate
        if self.left() < ramp + 60 and len(counts) > 1:
            counts = counts[:-1]
            n_max = counts[-1]
            ramp = n_max / rate
            self.data["skipped"].append(f"{system}: long hold stopped at {n_max} calls (time budget)")
        hold_ms = int((ramp + 15 + 5 * len(counts)) * 1000)
        recv_ms = hold_ms + 30000
        topo = self.topo(system, "tls-udp")
        points, uacs, uas, failed = [], [], None, []
        pids, idle = topo.pids(), {"rss_kib": 0, "pss_kib": 0}
        try:
            run_calls(topo, min(100.0, rate), 1.0, 100)  # warm up: TLS connection, code paths
            time.sleep(2.0)
            pids = topo.pids()
            idle = memory_kib(pids)
            uas = topo.uas(n_max, timeout_s=hold_ms / 1000 + 60, recv_timeout_ms=recv_ms)
            uas.start()
            prev = 0
            for n in counts:
                k = n - prev
                u = topo.uac(k, rate, hold_ms=hold_ms, limit=k + 10, timeout_s=hold_ms / 1000 + 60,
                             recv_timeout_ms=recv_ms)
                u.start()
                uacs.append(u)
                deadline = time.monotonic() + k / rate + 20
                while time.monotonic() < deadline:
                    time.sleep(0.5)
                    if sum(_established(x) for x in uacs) >= n:
                        break
                time.sleep(1.0)
                est = sum(_established(x) for x in uacs)
                mem = memory_kib(pids)
                point = {"target": n, "established": est, **mem,
                         "rss_kib_per_1000": (mem["rss_kib"] - idle["rss_kib"]) / max(est, 1) * 1000,
                         "pss_kib_per_1000": (mem["pss_kib"] - idle["pss_kib"]) / max(est, 1) * 1000,
                         "t_s": round(self.elapsed(), 1)}
                points.append(point)
                say(f"  {system:8s} hold: {est} calls up: RSS {mem['rss_kib']} KiB (idle {idle['rss_kib']}),"
                    f" PSS {mem['pss_kib']} KiB (idle {idle['pss_kib']}) -> "
                    f"{point['pss_kib_per_1000']:.0f} KiB PSS per 1000 calls")
                prev = n
            for x in uacs:
                st = lab._stat_last(x.stat_file)
                failed.append(lab._int(st, "FailedCall(C)"))
        finally:
            for x in uacs:
                if x.process and x.process.running:
                    x.stop()
            if uas is not None and uas.process and uas.process.running:
                uas.stop()
            self.finish_topo(topo, "hold")
        return {"system": system, "rate": rate, "hold_ms": hold_ms, "idle": idle, "points": points,
                "failed_calls": sum(failed), "processes": len(pids)}

    # ---- phase 4: teamsbc under cProfile at its limit
    def profile(self, scenario: str, rate: int) -> dict:
        prof = self.results_dir / f"{self.stem}-teamsbc-{scenario}.prof"
        txt = self.results_dir / f"{self.stem}-teamsbc-{scenario}-profile.txt"
        if prof.exists():
            prof.unlink()
        topo = self.topo("teamsbc", scenario, profile_to=prof)
        died = None
        try:
            res, _ = run_calls(topo, rate, self.plan["profile_secs"], self.plan["hold_ms"], measure_cpu=True)
            say(f"  teamsbc under cProfile {scenario} at {rate}/s: {'clean' if res['clean'] else '; '.join(res['reasons'])}")
            died = not topo.alive()
            rc = topo.proxy.process.stop(timeout=30)  # SIGTERM: graceful stop, then cProfile writes
        finally:
            self.finish_topo(topo, "profile", died=died)
        if not prof.exists() or prof.stat().st_size == 0:
            return {"scenario": scenario, "rate": rate, "error": f"no profile written (exit {rc})", "run": res}
        with open(txt, "w") as fh:
            fh.write(f"teamsbc under cProfile, {SCENARIO_TITLE[scenario]}, {rate} calls/s for "
                     f"{self.plan['profile_secs']:g} s (its clean rate without the profiler), stopped with SIGTERM.\n"
                     f"Run: {'clean' if res['clean'] else 'NOT clean: ' + '; '.join(res['reasons'])}\n\n")
            for key, title in (("cumulative", "cumulative time"), ("tottime", "total (own) time")):
                fh.write(f"==== top 25 by {title} ====\n")
                st = pstats.Stats(str(prof), stream=fh)
                st.strip_dirs().sort_stats(key).print_stats(25)
            fh.write("==== teamsbc's own functions: top 25 by cumulative time ====\n")
            pstats.Stats(str(prof), stream=fh).sort_stats("cumulative").print_stats("/teamsbc/", 25)
        st = pstats.Stats(str(prof))
        total = st.total_tt
        rows, idle = [], 0.0
        for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():
            own = "/teamsbc/" in file.replace("\\", "/")
            name = file.replace("\\", "/").split("/teamsbc/", 1)[1] if own else Path(file).name
            rows.append({"func": f"{name}:{line}({func})", "ncalls": nc, "tottime": tt, "cumtime": ct,
                         "teamsbc": own})
            if "epoll" in func and "poll" in func:
                idle += tt  # the event loop waiting for sockets: not work
        loop = max((r["cumtime"] for r in rows if r["func"].startswith("runners.py:") and r["func"].endswith("(run)")),
                   default=total)
        top_tt = sorted(rows, key=lambda r: -r["tottime"])[:25]
        top_ct = sorted(rows, key=lambda r: -r["cumtime"])[:25]
        top_own_ct = sorted([r for r in rows if r["teamsbc"] and not r["func"].endswith(("(<module>)", "(main)", "(cmd_run)"))],
                            key=lambda r: -r["cumtime"])[:25]
        return {"scenario": scenario, "rate": rate, "exit": rc, "total_s": total, "idle_s": idle,
                "busy_s": loop - idle, "startup_s": total - loop, "file": prof.name,
                "text": txt.name, "top_tottime": top_tt, "top_cumtime": top_ct,
                "top_teamsbc_cumtime": top_own_ct, "run": res}

    # ---- phase 5: a certificate reload and an rtpengine failover under 50% load
    def event(self, key: str, what: str, scenario: str, rate: float, act, log_pattern: str,
              **topo_kw) -> dict:
        """One run at `rate` with `act(topo)` half-way through; its failed calls, and what
        `act` found out (a dict it returns)."""
        secs = self.plan["lat_secs"] * 2
        topo = self.topo("teamsbc", scenario, **topo_kw)
        found: dict = {}

        def fire() -> None:
            try:
                found.update(act(topo) or {})
            except Exception as e:  # noqa: BLE001 - the event itself failed: say so in the table
                found["error"] = f"{type(e).__name__}: {e}"

        timer = threading.Timer(secs / 2, fire)
        try:
            timer.start()
            res, _ = run_calls(topo, rate, secs, self.plan["hold_ms"])
            timer.join()
            text = topo.proxy_log()
            lines = [ln for ln in text.splitlines() if re.search(log_pattern, ln)]
            if "after" in found:
                found.update(found.pop("after")(topo, text))
        finally:
            timer.cancel()
            self.finish_topo(topo, "events")
        failed = res["uac"]["failed"] + res["uas"]["failed"]
        say(f"  teamsbc {what} ({scenario} at {rate:.0f}/s): {failed} failed of {res['calls']}"
            f"{'' if res['clean'] else ' (' + '; '.join(res['reasons']) + ')'} {found}")
        return {"what": what, "scenario": scenario, "rate": rate, "calls": res["calls"], "failed": failed,
                "retrans": res["retrans"], "clean": res["clean"], "reasons": res["reasons"],
                "log_lines": len(lines), **found,
                "log": [re.sub(r"^\S+ \S+ ", "", ln)[:160] for ln in lines[:3]], "run": res}

    def events(self, clean: dict[str, dict[str, int]]) -> dict:
        out: dict = {}
        pki = self.pki

        def renew(topo: Topology) -> dict:
            """A renewal as `teamsbc cert renew` installs it (certs/store.py: new key first, the
            chain last, each by rename) -- a new key and a new serial from the test CA -- then
            SIGHUP (what `systemctl reload` sends)."""
            chain, key = topo.certificate
            before = presented_serial(pki, topo.proxy.teams_port)
            reloads0 = sbc_metric(topo, "teamsbc_certificate_reloads_total")
            new_chain, new_key = pki.issue(f"sbc-renewed-{topo.workdir.name}", [pki.sbc_fqdn])
            for src, dst in ((new_key, key), (new_chain, chain)):
                tmp = dst.with_name(dst.name + ".new")
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o600)
                os.replace(tmp, dst)
            os.kill(topo.proxy.process.pid, signal.SIGHUP)
            from cryptography import x509
            want = x509.load_pem_x509_certificate(new_chain.read_bytes()).serial_number

            def after(topo: Topology, _log: str) -> dict:
                now = presented_serial(pki, topo.proxy.teams_port)
                reloads = sbc_metric(topo, "teamsbc_certificate_reloads_total")
                return {"serial_before": f"{before:#x}" if before else None,
                        "serial_after": f"{now:#x}" if now else None, "serial_renewed": f"{want:#x}",
                        "renewed_presented": now == want and before != want,
                        "reloads": None if reloads is None or reloads0 is None else reloads - reloads0}
            return {"after": after}

        def kill_first_rtpengine(topo: Topology) -> dict:
            topo.rtpengine.kill()  # SIGKILL by PID, reaped: a crash

            def after(_topo: Topology, log: str) -> dict:
                # sipp checks signalling only: the calls whose media were on the killed instance
                # and had no other rtpengine (their answer or delete failed) are counted here
                lost = set(re.findall(r"call (\S+): rtpengine \S+ (?:is down|did not answer \w+)"
                                      r"[^\n]*no other rtpengine has the call", log))
                moved = set(re.findall(r"new call (\S+): \S+ did not answer[^\n]*trying the next instance", log))
                return {"media_lost_calls": len(lost), "retried_on_spare": len(moved)}
            return {"after": after}

        given = getattr(self.args, "events_rate", None)

        def half(scenario: str) -> float:
            # events are issue 14's targets: run even when the time budget is spent (~15 s each)
            return given or max((clean.get(scenario, {}).get("teamsbc") or 100) / 2.0, 25.0)

        for scenario in ("tls-udp", "udp-tls"):
            if scenario in self.scenarios:
                rate = half(scenario)
                cert_dir = self.scratch / f"cert-{scenario}"
                cert_dir.mkdir(parents=True, exist_ok=True)
                mine = (cert_dir / "fullchain.pem", cert_dir / "privkey.pem")
                shutil.copyfile(pki.sbc_fullchain, mine[0])
                shutil.copyfile(pki.sbc_key, mine[1])
                os.chmod(mine[1], 0o600)
                out[f"reload/{scenario}"] = self.event(
                    f"reload/{scenario}", "certificate renewal + reload (SIGHUP)", scenario, rate, renew,
                    r"certificate reload|renewing connection", certificate=mine)
        scenario = "tls-udp+rtpengine"
        if scenario in self.scenarios:
            rate = half(scenario)
            out[f"failover/{scenario}"] = self.event(
                f"failover/{scenario}", "rtpengine failover (first of two killed)", scenario, rate,
                kill_first_rtpengine, r"rtpengine .* is down|trying the next instance", rtpengines=2)
        return out

    # ---- all of it
    def run(self) -> int:
        plan = self.plan
        say(f"mode {self.mode}, scratch {self.scratch}, ladder {plan['ladder']}, {plan['step_secs']:g} s per step")
        for sc in getattr(self, "rtpengine_missing", []):
            self.data["skipped"].append(f"{sc}: rtpengine not installed (apt-get install rtpengine-daemon)")
        if self.data["sbc_overrides_dropped"]:
            self.data["skipped"].append("teamsbc config overrides this teamsbc does not know (left at its defaults): "
                                        + ", ".join(self.data["sbc_overrides_dropped"]))
        clean: dict[str, dict[str, int]] = {}
        try:
            say("phase 1: step the call rate up until calls fail")
            for scenario in (self.scenarios if "ladder" in self.phases else []):
                clean[scenario] = {}
                for system in self.systems_for(scenario):
                    r = self.ladder(system, scenario, start_at=KAMAILIO_START if system == "kamailio" else None)
                    self.data["steps"][f"{system}/{scenario}"] = r
                    clean[scenario][system] = r.get("clean_rate", 0)
                base = scenario.split("+")[0]
                if base != scenario and base in clean:
                    # sipp -> sipp has no media relay: its ceiling is the base scenario's
                    self.data["steps"][f"direct/{scenario}"] = dict(self.data["steps"].get(f"direct/{base}", {}),
                                                                  same_as=base)
                    clean[scenario]["direct"] = clean[base].get("direct", 0)
                    continue
                start = max([v for k, v in clean[scenario].items() if "+" not in k] + [plan["ladder"][0]])
                r = self.ladder("direct", scenario, start_at=start, max_steps=2)
                self.data["steps"][f"direct/{scenario}"] = r
                clean[scenario]["direct"] = r.get("clean_rate", 0)
            say("phase 2: latency and CPU at 50% of each clean rate")
            for scenario in (self.scenarios if "latency" in self.phases else []):
                self.data["latency"][scenario] = self.latency(scenario, clean.get(scenario, {}))
            say("phase 3: memory per concurrent call (long hold, TLS -> UDP)")
            if "tls-udp" in self.scenarios and "hold" in self.phases:
                for system in [p for p in PROXIES if self.only is None or p in self.only]:
                    if self.left() < 40:
                        self.data["skipped"].append(f"{system}: long hold (time budget)")
                        continue
                    self.data["hold"][system] = self.hold(system, clean.get("tls-udp", {}).get(system) or 100)
            say("phase 4: teamsbc profile at its limit")
            for scenario in ("tls-udp", "udp-tls", "tls-udp+rtpengine"):
                if scenario not in self.scenarios or "profile" not in self.phases:
                    continue
                if self.left() < plan["profile_secs"] + 25:
                    self.data["skipped"].append(f"teamsbc profile {scenario} (time budget)")
                    continue
                rate = clean.get(scenario, {}).get("teamsbc") or plan["ladder"][0]
                self.data["profile"][scenario] = self.profile(scenario, rate)
            if "events" in self.phases and (self.only is None or "teamsbc" in self.only):
                say("phase 5: a certificate reload and an rtpengine failover under 50% load")
                self.data["events"] = self.events(clean)
        except KeyboardInterrupt:
            self.data["skipped"].append("interrupted")
            say("interrupted: writing what there is")
        except Exception:  # noqa: BLE001 - keep what was measured
            tb = traceback.format_exc()
            self.data["problems"].append({"system": "bench", "phase": "bench", "examples": tb.splitlines()[-20:]})
            say("bench error:\n" + tb)
        finally:
            try:
                self.pm.stop_all()
            except Exception as e:  # noqa: BLE001
                say(f"stopping processes: {e}")
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.data["env"] = environment()
        self.data["env"]["loadavg_start"] = self.load_start
        from report import write_report
        md = write_report(self.data, self.results_dir, self.stem)
        print(md)
        say(f"wrote {self.results_dir / (self.stem + '.md')} and .json in {self.elapsed():.0f} s")
        return 0


def presented_serial(pki, port: int) -> int | None:
    """The serial of the certificate teamsbc presents in a new mutual-TLS handshake on its
    Teams port (as a Teams proxy: the Teams certificate, the test CA)."""
    import socket
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.teams_fullchain), str(pki.teams_key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=pki.sbc_fqdn) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def sbc_metric(topo: Topology, name: str) -> float | None:
    """One unlabelled counter from teamsbc's admin API (GET /metrics, loopback, no token)."""
    import urllib.request
    listen = (getattr(topo.proxy, "config", {}) or {}).get("admin", {}).get("listen")
    if not listen:
        return None
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _established(s) -> int:
    """Calls of this UAC that got their 200 (a retransmitted 200 logs its line again)."""
    p = s.dir / "log.log"
    try:
        with open(p, "rb") as fh:
            return len({line.split()[1] for line in fh if line.startswith(b"T ") and len(line.split()) > 1})
    except FileNotFoundError:
        return 0


def _version(argv: list[str], pick=lambda t: t.splitlines()[0] if t else "?") -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return pick((r.stdout + r.stderr).strip())
    except Exception:  # noqa: BLE001
        return "?"


def environment() -> dict:
    load = os.getloadavg()
    model = "?"
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(), "kernel": platform.release(),
        "kamailio": _version(["kamailio", "-v"]),
        "sipp": _version(["sipp", "-v"], lambda t: next((l.strip() for l in t.splitlines() if "SIPp" in l), "?")),
        "stunnel": _version(["stunnel4", "-version"], lambda t: next((l.strip() for l in t.splitlines() if l.startswith("stunnel")), "?")),
        "loadavg_end": [round(x, 2) for x in load],
    }


