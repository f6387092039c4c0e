"""Turn the bench data into bench/results/<stem>.md (+ <stem>.json with everything measured)."""
from __future__ import annotations

import json
from pathlib import Path

SCENARIO_NAME = {
    "udp-udp": "UDP <-> UDP",
    "tls-udp": "TLS(Teams) -> UDP(PBX)",
    "udp-tls": "UDP(PBX) -> TLS(Teams)",
    "tls-udp+rtpengine": "TLS(Teams) -> UDP(PBX) + rtpengine",
    "udp-tls+rtpengine": "UDP(PBX) -> TLS(Teams) + rtpengine",
}
ORDER = list(SCENARIO_NAME)
# issue 14's targets: against Kamailio in the same run
TARGET_RATIO = 1.0              # clean calls/s, teamsbc / kamailio
TARGET_CPU_MS = 1.0             # CPU ms per call without media (Kamailio 0.78 in 2026-11-23)
TARGET_P99_OVER_KAMAILIO_MS = 2.0
TARGET_KIB_PER_CALL = 6.0       # at 10,000 held calls (Kamailio's PSS)


def _f(v, nd=1, unit="") -> str:
    if v is None:
        return "—"
    if isinstance(v, (int, float)):
        return f"{v:.{nd}f}{unit}"
    return str(v)


def _ratio(a, b, nd=2) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.{nd}f}"


def _clean_text(st: dict | None) -> str:
    if not st:
        return "not run"
    r = st.get("clean_rate", 0)
    if not r:
        return f"< {st['steps'][0]['rate']}" if st.get("steps") else "—"
    if st.get("same_as"):
        return f"same as {SCENARIO_NAME[st['same_as']]} (no media relay): " + _clean_text({k: v for k, v in st.items() if k != "same_as"})
    return f"≥ {r} (highest step run)" if st.get("capped") else str(r)


KAMAILIO_HALF = "teamsbc@kamailio-half"  # runner.KAMAILIO_HALF


def _event_check(e: dict) -> str:
    if e.get("error"):
        return f"event failed: {e['error']}"
    if "renewed_presented" in e:
        return (f"serial {e.get('serial_before')} -> {e.get('serial_after')} (renewed {e.get('serial_renewed')}): "
                f"{'renewed one presented' if e['renewed_presented'] else '**not the renewed one**'}; "
                f"{_f(e.get('reloads'), 0)} reload(s) counted")
    if "media_lost_calls" in e:
        return (f"{e['media_lost_calls']} calls lost their media, {e.get('retried_on_spare', 0)} new calls "
                f"retried on the spare")
    return "—"


def rows(data: dict) -> list[dict]:
    out = []
    hold = data.get("hold", {})
    for scenario in ORDER:
        if not any(k.endswith("/" + scenario) for k in data["steps"]):
            continue
        variants = sorted({k.split("/")[0] for k in data["steps"] if k.startswith("teamsbc+")})
        for system in ["teamsbc", *variants, "kamailio", "direct"]:
            if system.startswith("teamsbc+") and f"{system}/{scenario}" not in data["steps"]:
                continue
            st = data["steps"].get(f"{system}/{scenario}")
            if st is None and not (system == "teamsbc" and scenario.startswith("udp-udp")):
                continue  # not measured in this run (--systems)
            lat = data.get("latency", {}).get(scenario, {}).get(system)
            row = {"scenario": scenario, "system": system, "steps": st, "clean": (st or {}).get("clean_rate"),
                   "capped": (st or {}).get("capped"), "lat": lat}
            if system == "teamsbc" and scenario.startswith("udp-udp"):
                row["na"] = "n/a: teamsbc has no UDP Teams leg (Teams is TLS-only)"
            if system != "direct" and scenario == "tls-udp" and system in hold and hold[system].get("points"):
                p = hold[system]["points"][-1]
                row["mem_per_1000"] = p["pss_kib_per_1000"]
                row["mem_n"] = p["established"]
            out.append(row)
    return out


def build_markdown(data: dict, stem: str) -> str:
    env = data.get("env", {})
    plan = data["plan"]
    L = []
    L.append(f"# teamsbc benchmark, {data['date']} ({data['mode']} run)\n")
    L.append(f"Same machine, same run: {env.get('cpus')} CPUs, {env.get('cpu_model', '?')}, Python {env.get('python')}, "
             f"{env.get('kamailio', '?')}, {env.get('sipp', '?')}, {env.get('stunnel', '?')}; "
             f"teamsbc: {data.get('teamsbc', {}).get('source')} (sha256 of its .py {data.get('teamsbc', {}).get('sha256_teamsbc_py')}); load average (1/5/15 min) "
             f"{env.get('loadavg_start')} at the start, {env.get('loadavg_end')} at the end; bench took {data.get('elapsed_s')} s. The machine is shared: only ratios within this run count.\n")
    L.append(f"Ladder {plan['ladder']} calls/s, {plan['step_secs']:g} s of calls per step, hold "
             f"{plan['hold_ms']} ms, `-l` = rate x (hold + 2 s) + 50. A step is clean when every call succeeds "
             f"on both sipps, retransmissions and unexpected messages stay within 0.1% of the calls, sipp starts "
             f"calls at >= 95% of the asked rate, and p99 INVITE->200 < 500 ms (the UDP T1: slower would be "
             f"retransmitted on UDP, so TCP gets the same bar). "
             + ("A failing step is run once more before it counts (noise). " if plan.get("retry") else "")
             + f"Latency/CPU: {plan['lat_secs']:g} s at 50% of each system's clean rate; \"added\" = that "
             f"system's percentile minus sipp->sipp direct's at the same rate, same scenario "
             f"(INVITE sent -> 200 received, microsecond timestamps from the scenario; sipp's _rtt.csv, whole ms, "
             f"kept in the JSON). CPU: utime+stime of all proxy processes. Memory: PSS summed over the proxy's "
             f"processes (= RSS for single-process teamsbc; kamailio's workers share one shm segment, so "
             f"summed VmRSS would count shared pages once per process: both are in the hold table).\n")

    ov = data.get("sbc_overrides") or {}
    if ov:
        L.append("teamsbc configuration for the bench (besides listeners, certificates and `teams.resolve` "
                 "to the stunnel ports): " + "; ".join(f"`{sec}.{k}: {v}`" for sec, d in ov.items() for k, v in d.items())
                 + ". Keep-alive OPTIONS off (a sipp does not answer them), the call-admission limits "
                 "of `security.*` lifted (they are policy: with the defaults, new calls from one Teams "
                 "address beyond 100/s, burst 200, are refused with 503, which is what the bench would "
                 "then measure).\n")

    # ---------------------------------------------------------------- main table
    L.append("## Results\n")
    L.append("| Scenario | System | Highest clean calls/s | p50 added ms @50% | p99 added ms @50% | "
             "CPU s / 1,000 calls | KiB / 1,000 concurrent calls |")
    L.append("|---|---|---|---|---|---|---|")
    rs = rows(data)
    by = {(r["scenario"], r["system"]): r for r in rs}
    for r in rs:
        if r.get("na"):
            L.append(f"| {SCENARIO_NAME[r['scenario']]} | {r['system']} | {r['na']} | | | | |")
            continue
        name = r["system"] if "+" not in r["system"] else f"{r['system']} (what-if)"
        lat = r["lat"] or {}
        mem = _f(r.get("mem_per_1000"), 0) + (f" (at {r['mem_n']})" if r.get("mem_n") else "") \
            if r.get("mem_per_1000") is not None else ("—" if r["system"] == "direct" else "see TLS->UDP" if r["scenario"] != "tls-udp" else "—")
        if r["system"] == "direct":
            p50 = p99 = "0 (baseline)"
            cpu = "—"
        else:
            p50, p99 = _f(lat.get("p50_added_ms"), 2), _f(lat.get("p99_added_ms"), 2)
            cpu = _f(lat.get("cpu_s_per_1000_calls"), 3)
        L.append(f"| {SCENARIO_NAME[r['scenario']]} | {name} | {_clean_text(r['steps'])} | {p50} | {p99} | {cpu} | {mem} |")
    for scenario in [o for o in ORDER if not o.startswith("udp-udp")]:
        t, k, d = by.get((scenario, "teamsbc")), by.get((scenario, "kamailio")), by.get((scenario, "direct"))
        if not t or t.get("na"):
            continue
        tl, kl = t["lat"] or {}, (k or {}).get("lat") or {}
        if k:
            L.append(f"| {SCENARIO_NAME[scenario]} | **teamsbc / kamailio** | {_ratio(t['clean'], k['clean'])} | "
                     f"{_ratio(tl.get('p50_added_ms'), kl.get('p50_added_ms'))} | {_ratio(tl.get('p99_added_ms'), kl.get('p99_added_ms'))} | "
                     f"{_ratio(tl.get('cpu_s_per_1000_calls'), kl.get('cpu_s_per_1000_calls'))} | "
                     f"{_ratio(t.get('mem_per_1000'), k.get('mem_per_1000'))} |")
        if d:
            L.append(f"| {SCENARIO_NAME[scenario]} | **teamsbc / direct** | {_ratio(t['clean'], d['clean'])}"
                     f"{' (direct capped)' if d.get('capped') else ''} | "
                     f"{_ratio(tl.get('p50_ms'), tl.get('p50_direct_ms'))} (absolute) | "
                     f"{_ratio(tl.get('p99_ms'), tl.get('p99_direct_ms'))} (absolute) | — | — |")
    for sc in [o for o in ORDER if o.endswith("+rtpengine")]:
        if not any(k.endswith("/" + sc) for k in data["steps"]):
            L.append(f"| {SCENARIO_NAME[sc]} | — | not part of this run | | | | |")
    L.append("")
    if any(k.endswith("+rtpengine") for k in data["steps"]):
        L.append("\"+ rtpengine\": both proxies anchor the media of every call in their own user-space rtpengine "
                 "(offer on the INVITE, answer on the 18x/200, delete on the BYE) with the same option sets: "
                 "SRTP (SDES) + ICE-lite toward Teams, plain RTP toward the PBX; teamsbc through its media "
                 "pool (NG over UDP), kamailio through its rtpengine module. No RTP flows (sipp sends none): "
                 "this is the signalling cost of media anchoring. rtpengine's own CPU is in the latency table.\n")

    if data.get("variants"):
        L.append("Variant rows (`teamsbc+X`) run the same teamsbc code: `w2` with `sbc.workers: 2`, `cpu1` "
                 "pinned to one core by `taskset -c 0` (the scaling table below); `gc-freeze` / `gc-off` "
                 "through `bench/launch_teamsbc.py`, which changes only the interpreter's garbage collector "
                 "(what-ifs, not the product).\n")

    # ---------------------------------------------------------------- targets
    L.append("## Against the targets (issue 14)\n")
    L.append("| Target | Measured (teamsbc) | Met |")
    L.append("|---|---|---|")
    for scenario in [o for o in ORDER if not o.startswith("udp-udp")]:
        t = by.get((scenario, "teamsbc"))
        if t and not t.get("na"):
            c = t["clean"] or 0
            k = (by.get((scenario, "kamailio")) or {}).get("clean")
            kcap = (by.get((scenario, "kamailio")) or {}).get("capped")
            ratio = c / k if k else None
            met = "—" if ratio is None else ("yes" if ratio >= TARGET_RATIO else
                                             f"**no** (short by {(TARGET_RATIO - ratio) * 100:.0f}%"
                                             + (", kamailio capped by the ladder" if kcap else "") + ")")
            L.append(f"| {SCENARIO_NAME[scenario]}: clean calls/s >= {TARGET_RATIO:g}x kamailio | {c} calls/s "
                     f"(kamailio {'≥ ' if kcap else ''}{k}, ratio {_ratio(c, k)}) | {met} |")
    for scenario in [o for o in ORDER if not o.startswith("udp-udp") and "+" not in o]:
        t = by.get((scenario, "teamsbc"))
        cpu = (t or {}).get("lat", {}) and t["lat"].get("cpu_s_per_1000_calls")
        if cpu is not None and cpu != {}:
            L.append(f"| {SCENARIO_NAME[scenario]}: CPU per call <= {TARGET_CPU_MS:g} ms | {cpu:.3f} ms | "
                     f"{'yes' if cpu <= TARGET_CPU_MS else f'**no** (over by {(cpu / TARGET_CPU_MS - 1) * 100:.0f}%)'} |")
    for scenario in [o for o in ORDER if not o.startswith("udp-udp")]:
        t, k = by.get((scenario, "teamsbc")), by.get((scenario, "kamailio"))
        # teamsbc at half of kamailio's clean rate (its own 50% run when the clean rates are equal)
        tl = data.get("latency", {}).get(scenario, {}).get(KAMAILIO_HALF) or (t or {}).get("lat")
        if tl and k and k.get("lat"):
            v, kv = tl.get("p99_added_ms"), k["lat"].get("p99_added_ms")
            if v is None or kv is None:
                continue
            bar = kv + TARGET_P99_OVER_KAMAILIO_MS
            run = tl.get("run") or {}
            unclean = "" if run.get("clean", True) else f"; that run not clean: {'; '.join(run.get('reasons') or [])}"
            L.append(f"| {SCENARIO_NAME[scenario]}: p99 added at 50% of kamailio's clean rate <= kamailio's + "
                     f"{TARGET_P99_OVER_KAMAILIO_MS:g} ms | {v:.2f} ms at {_f(tl.get('rate'), 0)} calls/s "
                     f"(kamailio {kv:.2f} ms at {_f(k['lat'].get('rate'), 0)}{unclean}) | "
                     f"{'yes' if v <= bar else f'**no** (over by {v - bar:.1f} ms)'} |")
    h = data.get("hold", {}).get("teamsbc")
    if h and h.get("points"):
        for p in h["points"]:
            kib = p["pss_kib_per_1000"] / 1000.0
            L.append(f"| <= {TARGET_KIB_PER_CALL:g} KiB per held call ({p['established']} calls held) | "
                     f"{kib:.2f} KiB (RSS {p['rss_kib_per_1000'] / 1000.0:.2f}) | "
                     f"{'yes' if kib <= TARGET_KIB_PER_CALL else f'**no** (over by {(kib / TARGET_KIB_PER_CALL - 1) * 100:.0f}%)'} |")
    for key, e in (data.get("events") or {}).items():
        failed, lost = e.get("failed"), e.get("media_lost_calls")
        extra = ""
        if e.get("error"):
            extra = f"; the event itself failed: {e['error']}"
        elif "renewed_presented" in e:
            extra = ("; the renewed certificate is presented after it" if e["renewed_presented"]
                     else f"; **the renewed certificate is not presented** (serial {e.get('serial_after')})")
        if lost:
            extra += f"; {lost} calls lost their media (no other rtpengine had them; sipp sends no RTP, so it does not notice)"
        met = "yes" if failed == 0 and not lost and not e.get("error") and e.get("renewed_presented", True) else \
            ("**no**" if failed else "signalling **yes**, media **no**" if lost else "**no**")
        L.append(f"| {e.get('what', key)}, {SCENARIO_NAME.get(e.get('scenario'), e.get('scenario'))}, under 50% load: "
                 f"0 failed calls | {failed} failed of {e.get('calls')} "
                 f"({'clean' if e.get('clean') else '; '.join(e.get('reasons') or [])}){extra} | {met} |")
    L.append("")
    for note in data.get("notes") or []:
        L.append(note + "\n")

    scaling = [r for r in rs if r["system"].startswith("teamsbc") and r["system"] != "teamsbc+gc-freeze"
               and r["system"] != "teamsbc+gc-off"]
    if any(r["system"] != "teamsbc" for r in scaling):
        L.append("## Scaling: workers and cores (`taskset`)\n")
        L.append("`teamsbc` is the default (`sbc.workers: 1`) on both cores; `+cpu1` pins every process of "
                 "the SBC to core 0 (`taskset -c 0`); `+w2` runs `sbc.workers: 2`. The sipps, stunnels and "
                 "Kamailio share the same two cores in every row.\n")
        L.append("| Scenario | teamsbc as run | workers | cores | Highest clean calls/s | CPU s / 1,000 calls | vs 1 worker, 1 core |")
        L.append("|---|---|---|---|---|---|---|")
        for scenario in ORDER:
            group = [r for r in scaling if r["scenario"] == scenario and not r.get("na")]
            base = next((r for r in group if r["system"] == "teamsbc+cpu1"), None)
            for r in group:
                v = r["system"].partition("+")[2]
                w = next((int(x[1:]) for x in v.split("-") if x[:1] == "w" and x[1:].isdigit()), 1)
                cores = next((x[3:] for x in v.split("-") if x.startswith("cpu")), "2")
                cpu = (r.get("lat") or {}).get("cpu_s_per_1000_calls")
                L.append(f"| {SCENARIO_NAME[scenario]} | {r['system']} | {w} | {cores} | {_clean_text(r['steps'])} | "
                         f"{_f(cpu, 3)} | {_ratio(r['clean'], base['clean']) if base else '—'} |")
        L.append("")

    if data.get("events"):
        L.append("## A certificate reload and an rtpengine failover under load\n")
        L.append("teamsbc at 50% of its clean rate; in the middle of the run either a **certificate renewal**: "
                 "a new certificate (new key, new serial, same name, the test CA) installed over the SBC's "
                 "files as `teamsbc cert renew` does (key first, then the chain, each by rename), then SIGHUP "
                 "(what `systemctl reload` sends; teamsbc's file watch may notice the new chain first); "
                 "new TLS handshakes present it, our own connections to Teams are renewed once their "
                 "transactions end; checked afterwards by a new mutual-TLS handshake on the SBC's Teams port "
                 "(the serial it presents) and `teamsbc_certificate_reloads_total`. Or SIGKILL of the first "
                 "of two rtpengines in `media.rtpengine` (new calls go to the other; calls whose media were "
                 "on the killed one lose it: their answer or delete fails; counted from the SBC's log "
                 "because sipp sends no RTP).\n")
        L.append("| Event | Scenario | Rate | Calls | Failed | Retransmissions | Clean | Checked after | What the SBC logged |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for key, e in data["events"].items():
            L.append(f"| {e.get('what')} | {SCENARIO_NAME.get(e.get('scenario'), e.get('scenario'))} | "
                     f"{_f(e.get('rate'), 0)} | {e.get('calls')} | {e.get('failed')} | {e.get('retrans')} | "
                     f"{'yes' if e.get('clean') else 'no: ' + '; '.join(e.get('reasons') or [])} | "
                     f"{_event_check(e)} | {'; '.join(e.get('log') or []) or '—'} |")
        L.append("")

    # ---------------------------------------------------------------- details
    L.append("## Rate steps\n")
    for key, st in data["steps"].items():
        if not st or not st.get("steps") or st.get("same_as"):
            continue
        parts = []
        if st.get("assumed_clean_below"):
            parts.append(f"{'/'.join(map(str, st['assumed_clean_below']))} assumed clean (cleaner at a higher rate)")
        for s in st["steps"]:
            lat = s.get("latency", {})
            tag = "retry " if s.get("retry") else ""
            if s["clean"]:
                parts.append(f"{tag}{s['rate']} ok (p99 {_f(lat.get('p99_ms'), 1)} ms)")
            else:
                parts.append(f"{tag}{s['rate']} **not clean**: {'; '.join(s['reasons'])}")
        L.append(f"- **{key}**: " + ", ".join(parts))
    L.append("")

    L.append("## Latency and CPU at 50% of the clean rate\n")
    L.append("| Scenario | System | Rate | p50 ms | p99 ms | direct p50 | direct p99 | p50 added | p99 added | mean added | CPU s | CPU s/1,000 | rtpengine CPU s/1,000 | run clean |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario, per in data.get("latency", {}).items():
        for system, v in per.items():
            run = v.get("run", {})
            L.append(f"| {SCENARIO_NAME[scenario]} | {system} | {_f(v.get('rate'), 0)} | {_f(v.get('p50_ms'), 2)} | "
                     f"{_f(v.get('p99_ms'), 2)} | {_f(v.get('p50_direct_ms'), 2)} | {_f(v.get('p99_direct_ms'), 2)} | "
                     f"{_f(v.get('p50_added_ms'), 2)} | {_f(v.get('p99_added_ms'), 2)} | {_f(v.get('mean_added_ms'), 2)} | "
                     f"{_f(run.get('cpu_s'), 2)} | {_f(v.get('cpu_s_per_1000_calls'), 3)} | "
                     f"{_f(v.get('rtpengine_cpu_s_per_1000_calls'), 3)} | "
                     f"{'yes' if run.get('clean') else 'no: ' + '; '.join(run.get('reasons', []))} |")
    L.append("")

    if data.get("hold"):
        L.append("## Long hold: memory per concurrent call (TLS -> UDP)\n")
        L.append("| System | Ramp calls/s | Idle RSS KiB | Idle PSS KiB | Calls held | RSS KiB | PSS KiB | RSS KiB/1,000 | PSS KiB/1,000 |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for system, h in data["hold"].items():
            for p in h.get("points", []):
                L.append(f"| {system} ({h.get('processes')} proc) | {h['rate']:.0f} | {h['idle']['rss_kib']} | {h['idle']['pss_kib']} | "
                         f"{p['established']} / {p['target']} | {p['rss_kib']} | {p['pss_kib']} | "
                         f"{p['rss_kib_per_1000']:.0f} | {p['pss_kib_per_1000']:.0f} |")
            pts = h.get("points", [])
            if len(pts) >= 2 and pts[-1]["established"] > pts[0]["established"]:
                d_n = pts[-1]["established"] - pts[0]["established"]
                L.append(f"| {system}: marginal from {pts[0]['established']} to {pts[-1]['established']} calls | | | | | | | "
                         f"{(pts[-1]['rss_kib'] - pts[0]['rss_kib']) / d_n * 1000:.0f} | "
                         f"{(pts[-1]['pss_kib'] - pts[0]['pss_kib']) / d_n * 1000:.0f} |")
            if h.get("failed_calls"):
                L.append(f"| {system}: {h['failed_calls']} calls failed during the ramp | | | | | | | | |")
        L.append("\nCalls are held by the scenario's pause (`-d`), one TLS connection per caller sipp (a first "
                 "caller ramps to the first count, a second adds the rest), so 10,000 calls need 2 connections "
                 "and file descriptors are not a limit. Memory is read once all calls of a step are up. "
                 "It includes the transactions of the calls set up in the last 32 s (teamsbc keeps "
                 "INVITE transactions 64*T1 after the 2xx, RFC 6026; kamailio frees its own ~5 s after), "
                 "so it depends on the ramp rate; Python's and kamailio's allocators keep their high-water "
                 "mark, so none of it shrinks back. The marginal row (between the two counts) is the cost "
                 "of one more held call at that ramp rate.\n")

    if data.get("profile"):
        L.append("## teamsbc profile at its limit (cProfile)\n")
        for scenario, p in data["profile"].items():
            if p.get("error"):
                L.append(f"- {SCENARIO_NAME[scenario]}: {p['error']}")
                continue
            L.append(f"**{SCENARIO_NAME[scenario]}** at {p['rate']} calls/s: `{p['file']}`, top 25 both ways in "
                     f"`{p['text']}`. Run under the profiler: "
                     f"{'clean' if p['run'].get('clean') else 'not clean (' + '; '.join(p['run'].get('reasons', [])) + ')'}.\n")
            tot = p.get("busy_s") or p.get("total_s") or 1
            L.append(f"Profiled process: {p.get('total_s', 0):.1f} s: {p.get('startup_s', 0):.1f} s imports and start-up, "
                     f"{p.get('idle_s', 0):.1f} s waiting in epoll, {tot:.1f} s busy in the event loop (the percentages). "
                     f"cProfile slows Python code down more than C (sockets, TLS), so the Python share is "
                     f"overstated by maybe 1.5-2x.\n")
            L.append("| Own time (tottime) s | % busy | calls | function |")
            L.append("|---|---|---|---|")
            for r in [r for r in p["top_tottime"] if "epoll" not in r["func"]][:15]:
                L.append(f"| {r['tottime']:.2f} | {100 * r['tottime'] / tot:.1f} | {r['ncalls']} | `{r['func']}` |")
            L.append("")
            L.append("| Cumulative s (teamsbc's own functions) | % busy | calls | function |")
            L.append("|---|---|---|---|")
            for r in (p.get("top_teamsbc_cumtime") or p["top_cumtime"])[:15]:
                L.append(f"| {r['cumtime']:.2f} | {100 * r['cumtime'] / tot:.1f} | {r['ncalls']} | `{r['func']}` |")
            L.append("")

    if data.get("problems"):
        L.append("## Problems seen\n")
        for p in data["problems"]:
            died = p.get("died") and p.get("exit") not in (0, None)  # exit 0: our own SIGTERM
            if not died and not p.get("log_lines") and p.get("system") != "bench":
                continue
            head = f"- {p.get('system')} {p.get('scenario', '')} ({p.get('phase')}): "
            if died:
                head += f"**process died** (exit {p.get('exit')}); "
            if p.get("log_lines"):
                head += f"{p['log_lines']} warning/error log lines"
            L.append(head)
            for e in p.get("examples", [])[:8]:
                L.append(f"    - `{e.strip()[:300]}`")
        L.append("")
    if data.get("skipped"):
        L.append("## Skipped\n")
        for s in data["skipped"]:
            L.append(f"- {s}")
        L.append("")
    L.append("Raw data: `" + stem + ".json` (every step of every system, both sipps' counters, per-run latency "
             "summaries from the microsecond timestamps and from sipp's _rtt.csv).\n")
    return "\n".join(L)


def write_report(data: dict, results_dir: Path, stem: str) -> str:
    md = build_markdown(data, stem)
    (results_dir / f"{stem}.md").write_text(md)
    (results_dir / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    return md


if __name__ == "__main__":
    # re-render the markdown of a run from its JSON: python bench/report.py bench/results/<stem>.json
    import sys
    for arg in sys.argv[1:]:
        path = Path(arg)
        data = json.loads(path.read_text())
        write_report(data, path.parent, path.stem)
        print(f"wrote {path.with_suffix('.md')}")
