"""Topologies for the benchmark: teamsbc, Kamailio or nothing (sipp -> sipp) between two sipps.

Everything runs on 127.0.0.1 with ports picked at run time (tests.support.ports), every process
is started and stopped by PID through a tests.support.procs.ProcessManager, and TLS legs go
through the test harness' stunnel wrappers (tests.support.stunnel: TeamsClient / TeamsServer)
whichever system is under test.

Scenarios (what the caller -> proxy -> callee legs are):
    udp-udp  PBX sipp (UAC, UDP) -> proxy -> "Teams" sipp (UAS, UDP)        kamailio, direct
    tls-udp  Teams sipp (UAC, TCP) -> stunnel (mutual TLS) -> proxy -> PBX sipp (UAS, UDP)
    udp-tls  PBX sipp (UAC, UDP) -> proxy -> stunnel (mutual TLS) -> Teams sipp (UAS, TCP)
teamsbc has no UDP Teams leg, so it has no udp-udp topology. The direct (ceiling) topology of
the two TLS scenarios is sipp (TCP) -> stunnel TeamsClient -> TLS -> stunnel TeamsServer ->
sipp (TCP): the same two TLS ends, encrypted and decrypted once, with no proxy.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after bench.py's teamsbc/tests snapshot, when there is one
TEAMSBC_SRC: Path | None = None  # set by bench.py: where the teamsbc snapshot lives

from tests.support.pki import TEAMS_NAMES  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.procs import ManagedProcess, ProcessManager, wait_port  # noqa: E402
from tests.support.sbc import SbcProcess  # noqa: E402
from tests.support.sipp import SCENARIO_DIR, Sipp, teams_callee, teams_caller  # noqa: E402
from tests.support.stunnel import Stunnel, TeamsClient, TeamsServer  # noqa: E402

LOOPBACK = "127.0.0.1"
SCENARIOS = ("udp-udp", "tls-udp", "udp-tls", "tls-udp+rtpengine", "udp-tls+rtpengine")
PBX_DIALLED, PBX_CALLER = "02071234567", "02079460000"  # national UK numbers, as a PBX sends them
TEAMS_CALLEE = "+14255550100"
KAMAILIO_MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")


# --------------------------------------------------------------------------- the sipp scenario

_SEND_INVITE = '<send retrans="500" start_rtd="setup">'
_RECV_200 = '<recv response="200" rrs="true" rtd="setup" />'
_REFERENCE = '<Reference variables="route_m,peer_to_m" />'


def timed_uac(workdir: Path) -> tuple[Path, bool]:
    """tests/sipp/uac.xml with microsecond timestamps of the INVITE sent and the 200 received,
    written by a <log> action ("T call_number s0 us0 s1 us1"). What goes on the wire is
    unchanged. sipp's own -trace_rtt only has whole milliseconds (and is taken from a clock
    that ticks once per sipp loop), too coarse for a proxy that adds well under 1 ms.
    Returns (path, timed): when uac.xml no longer has the expected anchors the untouched
    file is used and latency falls back to the _rtt.csv values."""
    src = (SCENARIO_DIR / "uac.xml").read_text()
    if src.count(_SEND_INVITE) != 1 or src.count(_RECV_200) != 1 or src.count(_REFERENCE) != 1:
        return SCENARIO_DIR / "uac.xml", False
    src = src.replace(_SEND_INVITE, '<nop hide="true"><action><gettimeofday assign_to="bt0s,bt0us" />'
                      '</action></nop>\n  ' + _SEND_INVITE)
    src = src.replace(_RECV_200, '<recv response="200" rrs="true" rtd="setup">\n'
                      '    <action>\n      <gettimeofday assign_to="bt1s,bt1us" />\n'
                      '      <log message="T [call_number] [$bt0s] [$bt0us] [$bt1s] [$bt1us]" />\n'
                      '    </action>\n  </recv>')
    src = src.replace(_REFERENCE, '<Reference variables="route_m,peer_to_m,bt0s,bt0us,bt1s,bt1us" />')
    out = workdir / "uac_timed.xml"
    out.write_text(src)
    return out, True


def lighten(s: Sipp) -> Sipp:
    """Drop the per-message trace the test harness always turns on (at 1,000+ calls/s it is
    megabytes a second and slows sipp down); keep errors, stats, screen and <log> actions."""
    a = s.argv
    for opt, n in (("-trace_msg", 1), ("-message_file", 2)):
        if opt in a:
            i = a.index(opt)
            del a[i:i + n]
    return s


# --------------------------------------------------------------------------- results of one run

def _stat_last(path: Path) -> dict[str, str]:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except FileNotFoundError:
        return {}
    if len(lines) < 2:
        return {}
    head = lines[0].split(";")
    for line in reversed(lines[1:]):
        cols = line.split(";")
        if len(cols) >= len(head) - 1:
            return dict(zip(head, cols))
    return {}


def _int(d: dict, k: str) -> int:
    try:
        return int(d.get(k, "0") or 0)
    except ValueError:
        return 0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values, None when there are none."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


@dataclass
class SippStats:
    name: str
    ok: bool
    rc: int | None
    timed_out: bool
    calls: int
    successful: int
    failed: int
    retrans: int
    unexpected: int  # out-of-call + dead-call messages + failed on unexpected message
    failed_reasons: dict[str, int]
    workdir: str

    @classmethod
    def of(cls, s: Sipp, res) -> "SippStats":
        st = _stat_last(s.stat_file)
        reasons = {k[len("Failed"):-3]: _int(st, k) for k in st
                   if k.startswith("Failed") and k.endswith("(C)") and k != "FailedCall(C)" and _int(st, k)}
        return cls(
            name=s.name, ok=bool(res.ok), rc=res.returncode, timed_out=res.timed_out, calls=s.calls,
            successful=res.successful or 0, failed=res.failed or 0,
            retrans=_int(st, "Retransmissions(C)"),
            unexpected=_int(st, "OutOfCallMsgs(C)") + _int(st, "DeadCallMsgs(C)")
            + _int(st, "FailedUnexpectedMessage(C)"),
            failed_reasons=reasons, workdir=str(s.dir))


def setup_times(s: Sipp) -> tuple[list[float], list[float], str]:
    """Per-call INVITE -> 200 times in ms and the INVITE send times (s), with their source:
    'us' (gettimeofday in the scenario) or 'rtt' (sipp -trace_rtt, whole ms)."""
    log = s.dir / "log.log"
    times, starts = [], []
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            p = line.split()
            if len(p) == 6 and p[0] == "T":
                try:
                    t0 = float(p[2]) + float(p[3]) / 1e6
                    t1 = float(p[4]) + float(p[5]) / 1e6
                except ValueError:
                    continue
                starts.append(t0)
                times.append((t1 - t0) * 1000.0)
    if times:
        return times, starts, "us"
    for f in s.dir.glob("*_rtt.csv"):
        for line in f.read_text(errors="replace").splitlines()[1:]:
            p = line.split(";")
            if len(p) >= 3 and p[2].strip() == "setup":
                try:
                    times.append(float(p[1]))
                    starts.append(float(p[0]) / 1000.0)
                except ValueError:
                    pass
    return times, starts, "rtt"


def rtt_file_times(s: Sipp) -> list[float]:
    out = []
    for f in s.dir.glob("*_rtt.csv"):
        for line in f.read_text(errors="replace").splitlines()[1:]:
            p = line.split(";")
            if len(p) >= 3 and p[2].strip() == "setup":
                try:
                    out.append(float(p[1]))
                except ValueError:
                    pass
    return out


# --------------------------------------------------------------------------- /proc readings

_CLK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces
    return raw[raw.rindex(")") + 2:].split()


def group_pids(leader: int) -> list[int]:
    """The leader and every process in its process group (kamailio's children; the leader
    was started in its own session, so its group is exactly its processes)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat_fields(int(d))
        if f and int(f[2]) == leader:  # field 5 (pgrp), index 2 after the name
            out.append(int(d))
    if leader not in out and _stat_fields(leader):
        out.append(leader)
    return sorted(out)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        f = _stat_fields(pid)
        if f:
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
    return total / _CLK


def memory_kib(pids: list[int]) -> dict[str, int]:
    """Summed VmRSS and Pss (proportional set size, shared pages divided among the processes
    that map them) in KiB. For kamailio, whose workers share a 512 MB shm segment, summing
    VmRSS counts every shared page once per process that touched it; Pss does not."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        except OSError:
            pass
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return {"rss_kib": rss, "pss_kib": pss}


def udp_drops(pids: list[int]) -> dict[str, int]:
    """Datagrams the kernel dropped (receive buffer full) on every UDP socket these processes
    hold, by local port: the last column of /proc/net/udp, matched by socket inode."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if t.startswith("socket:["):
                    inodes.add(t[8:-1])
        except OSError:
            continue
    out: dict[str, int] = {}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 13 or parts[9] not in inodes:
            continue
        port = str(int(parts[1].split(":")[1], 16))
        out[port] = out.get(port, 0) + int(parts[-1])
    return out


def drops_delta(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(max(0, v - before.get(k, 0)) for k, v in after.items())


def udp_rcvbuf_errors() -> int:
    """System-wide UDP RcvbufErrors (/proc/net/snmp): also counts sipp's sockets (and anything
    else on the machine), so it is only a hint."""
    try:
        lines = [l.split() for l in Path("/proc/net/snmp").read_text().splitlines() if l.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return 0


# --------------------------------------------------------------------------- kamailio

KAMAILIO_CFG = r"""#!KAMAILIO
# Generated by bench/lab.py: the stateful-proxy equivalent of teamsbc for the benchmark.
# Leg "teams": {teams_listen}; leg "pbx": udp:127.0.0.1:{pbx_port}.
debug=0
log_stderror=yes
fork=yes
children=2
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
dns_try_ipv6=no
tcp_connection_lifetime=3605
tcp_max_connections=4096
{tls_globals}
listen=udp:127.0.0.1:{pbx_port}
listen={teams_listen}

mpath="{mpath}"
{tls_load}
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
loadmodule "siputils.so"
loadmodule "textops.so"
{tls_modparam}
{rtp_load}
modparam("rr", "enable_double_rr", 1)
modparam("rr", "append_fromtag", 0)

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        # in-dialog: follow the route set we record-routed (both of our entries are popped)
        if (loose_route()) {{
            {rtp_in_dialog}
            route(IN_DIALOG_DEST);
            if (!t_relay()) sl_reply_error();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) t_relay();
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    if (is_method("ACK")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    t_check_trans();
    if (!is_method("INVITE")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    record_route();
    {rtp_offer}
    if ($Rp == {pbx_port}) {{
        # new call from the PBX -> the Teams side (fixed address, like teamsbc's teams.resolve)
        $ru = "sip:" + $rU + "@{teams_ruri_host}";
        $du = "{teams_du}";
        force_send_socket({teams_socket});
    }} else {{
        # new call from Teams -> the PBX trunk
        $ru = "sip:" + $rU + "@127.0.0.1:{pbx_uas_port}";
        $du = "sip:127.0.0.1:{pbx_uas_port}";
        force_send_socket(udp:127.0.0.1:{pbx_port});
    }}
    if (!t_relay()) sl_reply_error();
    exit;
}}

{rtp_routes}
route[IN_DIALOG_DEST] {{
    if ($Rp == {pbx_port}) {{
        # PBX -> Teams: only to the Teams side (the route set's next hop is a Teams FQDN)
        $du = "{teams_du}";
        force_send_socket({teams_socket});
    }} else {{
        force_send_socket(udp:127.0.0.1:{pbx_port});
    }}
}}
"""

KAMAILIO_TLS_CFG = """# Generated by bench/lab.py (kamailio tls module): the test PKI, client certificates required.
[server:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
private_key = {key}
certificate = {cert}
ca_list = {ca}

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
private_key = {key}
certificate = {cert}
ca_list = {ca}
"""


# rtpengine option sets as teamsbc.media.sdp_policy builds them (rtpengine 10.5, SDES <-> RTP):
# the options of the side that RECEIVES the SDP, plus the interfaces on the initial offer.
_RTP_COMMON = "replace-origin replace-session-connection trust-address port-latching"
_TEAMS_SUITE = "AES_CM_128_HMAC_SHA1_80"
_SDES_NO = " ".join("SDES-no-" + x for x in (
    "AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_256_CM_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_32",
    "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32", "AES_CM_128_HMAC_SHA1_32",
    "F8_128_HMAC_SHA1_80", "F8_128_HMAC_SHA1_32", "NULL_HMAC_SHA1_80", "NULL_HMAC_SHA1_32"))
RTP_TOWARD_TEAMS = f"{_RTP_COMMON} RTP/SAVP DTLS=off {_SDES_NO} rtcp-mux-offer ICE=force"
RTP_TOWARD_PBX = f"{_RTP_COMMON} RTP/AVP ICE=remove DTLS=off SDES-off rtcp-mux-demux"
RTP_CODECS_TO_PBX = ("codec-strip-all codec-except-PCMA codec-except-PCMU codec-except-G722 "
                     "codec-except-telephone-event")

KAMAILIO_RTP_ROUTES = r"""
route[RTP_OFFER] {{
    if (!has_body("application/sdp")) return;
    if ($Rp == {pbx_port}) {{
        setflag(1);  # call from the PBX: the answer goes back toward the PBX
        rtpengine_offer("{toward_teams} ICE-lite=forward direction=priv direction=pub");
    }} else {{
        rtpengine_offer("{toward_pbx} {codecs} ICE-lite=backward direction=pub direction=priv");
    }}
    t_on_reply("RTP_ANSWER");
}}

onreply_route[RTP_ANSWER] {{
    if (!has_body("application/sdp")) return;
    if (isflagset(1)) {{
        rtpengine_answer("{toward_pbx}");
    }} else {{
        rtpengine_answer("{toward_teams}");
    }}
}}
"""


class Kamailio:
    """Debian's kamailio as a stateful proxy (tm, sl, rr double record-route, maxfwd, tls),
    in the foreground (-DD -E) with -m 512 -M 32, 2 children per listener."""

    def __init__(self, workdir: Path, procs: ProcessManager, pki: Any, *, teams_tls: bool,
                 pbx_uas_port: int, teams_target_port: int, rtpengine_ng: str | None = None):
        self.dir = workdir / "kamailio"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = procs
        self.pbx_port = free_port("both")
        self.teams_port = free_port("both")
        self.teams_tls = teams_tls
        if teams_tls:
            teams_listen = f"tls:127.0.0.1:{self.teams_port}"
            teams_du = f"sip:127.0.0.1:{teams_target_port};transport=tls"
            ruri_host = "sip.pstnhub.microsoft.com:5061;user=phone;transport=tls"
            tls_cfg = self.dir / "tls.cfg"
            tls_cfg.write_text(KAMAILIO_TLS_CFG.format(key=pki.sbc_key, cert=pki.sbc_fullchain,
                                                       ca=pki.ca_cert))
            tls_globals = "enable_tls=yes\ntls_max_connections=4096"
            tls_load = 'loadmodule "tls.so"'
            tls_modparam = f'modparam("tls", "config", "{tls_cfg}")'
        else:
            teams_listen = f"udp:127.0.0.1:{self.teams_port}"
            teams_du = f"sip:127.0.0.1:{teams_target_port}"
            ruri_host = f"127.0.0.1:{teams_target_port}"
            tls_globals = tls_load = tls_modparam = ""
        rtp = dict(rtp_load="", rtp_in_dialog="", rtp_offer="", rtp_routes="")
        if rtpengine_ng:
            rtp = dict(
                rtp_load=f'loadmodule "rtpengine.so"\nmodparam("rtpengine", "rtpengine_sock", "{rtpengine_ng}")',
                rtp_in_dialog='if (is_method("BYE")) rtpengine_delete();',
                rtp_offer="route(RTP_OFFER);",
                rtp_routes=KAMAILIO_RTP_ROUTES.format(pbx_port=self.pbx_port, toward_teams=RTP_TOWARD_TEAMS,
                                                      toward_pbx=RTP_TOWARD_PBX, codecs=RTP_CODECS_TO_PBX))
        self.cfg = self.dir / "kamailio.cfg"
        self.cfg.write_text(KAMAILIO_CFG.format(**rtp,
            teams_listen=teams_listen, pbx_port=self.pbx_port, mpath=KAMAILIO_MODULES,
            tls_globals=tls_globals, tls_load=tls_load, tls_modparam=tls_modparam,
            teams_ruri_host=ruri_host, teams_du=teams_du, teams_socket=teams_listen,
            pbx_uas_port=pbx_uas_port))
        self.process: ManagedProcess | None = None

    def start(self, timeout: float = 20.0) -> "Kamailio":
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        argv = [binary, "-f", str(self.cfg), "-DD", "-E", "-m", "512", "-M", "32",
                "-w", str(self.dir), "-Y", str(self.dir)]
        self.process = self.procs.start("kamailio", argv, cwd=self.dir, logdir=self.dir)
        wait_port(LOOPBACK, self.pbx_port, "udp", timeout=timeout, process=self.process)
        wait_port(LOOPBACK, self.teams_port, "tcp" if self.teams_tls else "udp", timeout=timeout)
        # the workers are forked after the main process binds (and after TLS set-up): wait until
        # the process group stops growing, so CPU and memory readings cover all of them
        deadline, last, stable = time.monotonic() + 15, -1, 0
        while time.monotonic() < deadline and stable < 6:
            n = len(self.pids())
            stable = stable + 1 if n == last and n > 1 else 0
            last = n
            time.sleep(0.1)
        return self

    def pids(self) -> list[int]:
        return group_pids(self.process.pid) if self.process else []

    def stop(self) -> int | None:
        return self.process.stop(timeout=10) if self.process else None

    def log_text(self) -> str:
        return self.process.stderr_text() + self.process.stdout_text() if self.process else ""


# --------------------------------------------------------------------------- teamsbc

class ProfiledSbc(SbcProcess):
    """SbcProcess, optionally run under cProfile (python -m cProfile -o FILE -m teamsbc run)."""

    def __init__(self, *a, profile_to: Path | None = None, launcher: list[str] | None = None,
                 cpus: str | None = None, **kw):
        super().__init__(*a, **kw)
        self.profile_to = profile_to
        self.launcher = launcher  # python arguments that run teamsbc instead of "-m teamsbc"
        self.cpus = cpus          # taskset -c CPUS: the cores every worker may run on

    def start(self, timeout: float = 20.0) -> "ProfiledSbc":
        import yaml
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.generation += 1
        argv = (["taskset", "-c", self.cpus] if self.cpus else []) + [sys.executable]
        if self.profile_to is not None:
            argv += ["-m", "cProfile", "-o", str(self.profile_to)]
        argv += (self.launcher or ["-m", "teamsbc"]) + ["run", "-c", str(self.config_path)]
        self.process = self.procs.start(f"teamsbc-{self.generation}", argv, cwd=TEAMSBC_SRC or ROOT,
                                        logdir=self.dir)
        wait_port(LOOPBACK, self.teams_port, "tcp", timeout=timeout, process=self.process)
        wait_port(LOOPBACK, self.pbx_listen_port, "udp" if self.pbx_transport == "udp" else "tcp",
                  timeout=timeout, process=self.process)
        return self

    def pids(self) -> list[int]:
        """The main process and its workers (sbc.workers: forked, same process group)."""
        return group_pids(self.process.pid) if self.process and self.process.running else []

    def log_text(self) -> str:
        return self.process.stderr_text() + self.process.stdout_text() if self.process else ""


def teamsbc_variant(variant: str) -> tuple[int | None, str | None, str | None]:
    """teamsbc+VARIANT: (sbc.workers, taskset cores, launch_teamsbc.py what-if). VARIANT is
    words joined by "-": `w2` (sbc.workers: 2), `cpu1` (taskset -c 0: one core for all its
    processes; `cpu2` = cores 0-1), `gc-freeze` / `gc-off` (bench/launch_teamsbc.py)."""
    workers = cpus = None
    rest = []
    for word in variant.split("-") if variant else []:
        if re.fullmatch(r"w[0-9]+", word):
            workers = int(word[1:])
        elif re.fullmatch(r"cpu[0-9]+", word):
            n = int(word[3:])
            cpus = "0" if n == 1 else f"0-{n - 1}"
        else:
            rest.append(word)
    return workers, cpus, "-".join(rest) or None


# What the bench changes in teamsbc's configuration, and why. Keys this teamsbc does not know
# (its config.py changes over time) are dropped and listed in the results.
SBC_OVERRIDES: dict[str, dict[str, Any]] = {
    "log": {"level": "warning"},
    # no OPTIONS keep-alive during a run: a sipp never answers them (they would be out-of-call
    # messages eating its call count, and the PBX would be marked down)
    "teams": {"options_interval": 600},
    "pbx": {"options_interval": 0},
    # the call-admission limits of teamsbc.guard are policy, not capacity: the bench measures
    # what the proxy can carry, from one Teams address and one PBX address
    "security": {"teams_rate": 0, "pbx_rate": 0, "teams_connect_rate": 0, "max_calls": 1_000_000},
}


def sbc_overrides(pki: Any) -> tuple[dict, list[str]]:
    """SBC_OVERRIDES less the keys this teamsbc's config refuses: (overrides, dropped keys)."""
    from teamsbc import config as cfg
    over = {sec: dict(v) for sec, v in SBC_OVERRIDES.items()}
    dropped: list[str] = []
    for _ in range(20):
        data = {
            "sbc": {"fqdn": pki.sbc_fqdn},
            "teams": {"listen": "127.0.0.1:5061", "certificate": str(pki.sbc_fullchain),
                      "private_key": str(pki.sbc_key), "trusted_ca": str(pki.ca_cert),
                      "resolve": {n: "127.0.0.1:5062" for n in TEAMS_NAMES}},
            "pbx": {"listen": "127.0.0.1:5060", "transport": "udp", "address": "127.0.0.1:5080"},
        }
        for sec, values in over.items():
            data.setdefault(sec, {}).update(values)
        try:
            cfg.from_dict(data)
            return over, dropped
        except cfg.ConfigError as e:
            progress = False
            for line in e.errors:
                for sec in list(over):
                    for key in list(over[sec]):
                        if re.search(rf"(?<![\w.]){sec}\.{key}\b|(?<![\w.]){sec}: unknown section", line):
                            over[sec].pop(key)
                            dropped.append(f"{sec}.{key}")
                            progress = True
                    if not over[sec]:
                        over.pop(sec)
            if not progress:
                raise
    return over, dropped


# --------------------------------------------------------------------------- start-up OPTIONS

class OptionsResponder:
    """A stand-in "Teams" on a TCP port while teamsbc starts: teamsbc sends OPTIONS to sip,
    sip2 and sip3 at once when it starts (keep-alive cannot be turned off on the Teams side).
    Behind the stunnel TeamsServer they would reach the Teams sipp, which takes them for new
    calls (eating its -m count) and never answers them (the peers are then marked down).
    This answers them 200 OK, then goes away before any sipp binds the port."""

    def __init__(self, port: int):
        import socket
        import threading
        self.port = port
        self.answered = 0
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket
        import threading
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn) -> None:
        buf = b""
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError as e:
                    if "timed out" in str(e):
                        continue
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    m = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
                    clen = int(m.group(1)) if m else 0
                    if len(rest) < clen:
                        break
                    buf = rest[clen:]
                    lines = head.decode(errors="replace").split("\r\n")
                    if not lines[0].startswith("OPTIONS "):
                        continue
                    keep = [l for l in lines[1:] if l.split(":", 1)[0].strip().lower()
                            in ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")]
                    keep = [l + ";tag=bench" if l.lower().startswith(("to:", "t:")) else l for l in keep]
                    resp = "SIP/2.0 200 OK\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
                    try:
                        conn.sendall(resp.encode())
                        self.answered += 1
                    except OSError:
                        return

    def wait(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.answered < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.answered

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(timeout=2)


# --------------------------------------------------------------------------- topologies

@dataclass
class Topology:
    """One system under test in one scenario, with its stunnel, ready for sipp runs."""
    system: str           # teamsbc | kamailio | direct (teamsbc+VARIANT: a what-if launcher)
    scenario: str         # udp-udp | tls-udp | udp-tls, optionally +rtpengine
    workdir: Path
    procs: ProcessManager
    pki: Any
    uac_xml: Path
    profile_to: Path | None = None
    launcher: list[str] | None = None
    sbc_overrides: dict = field(default_factory=dict)
    proxy: Any = None
    stunnel: Stunnel | None = None
    uac_target: tuple[str, int] = ("127.0.0.1", 0)
    uac_transport: str = "u1"
    uas_transport: str = "u1"
    uas_port: int = 0
    uac_args: dict = field(default_factory=dict)
    uas_args: dict = field(default_factory=dict)
    runs: int = 0
    startup_options: int | None = None  # teamsbc's start-up OPTIONS the responder answered
    rtpengine: Any = None
    rtpengines: int = 1          # teamsbc with media: 2 = a spare instance in media.rtpengine too
    rtpengine_spare: Any = None
    certificate: tuple[Path, Path] | None = None  # teamsbc: (fullchain, key) of its own, not the PKI's
    _uacs: dict = field(default_factory=dict)

    def start(self) -> "Topology":
        s, _, media = self.scenario.partition("+")  # tls-udp+rtpengine: media anchored by rtpengine
        pki = self.pki
        sysname, _, variant = self.system.partition("+")  # teamsbc+gc-off: a what-if launcher
        if media and sysname != "direct":
            two = self.rtpengines > 1 and sysname == "teamsbc"
            self.rtpengine = start_rtpengine(self.procs, largest=1600 if two else None)
            if two:  # half the port range each
                self.rtpengine_spare = start_rtpengine(self.procs, largest=1600)
        self.workdir.mkdir(parents=True, exist_ok=True)
        teams_in = s == "tls-udp"
        teams_out = s == "udp-tls"
        self.uas_port = free_port("both")
        if sysname == "direct":
            if s == "udp-udp":
                self.uac_target = (LOOPBACK, self.uas_port)
                self.uac_transport = self.uas_transport = "u1"
            else:
                c, srv = free_port("tcp"), free_port("tcp")
                self.stunnel = Stunnel(self.workdir, [
                    TeamsClient.for_pki(pki, accept_port=c, connect_port=srv,
                                        check_host=TEAMS_NAMES[0]),
                    TeamsServer.for_pki(pki, accept_port=srv, connect_port=self.uas_port),
                ], procs=self.procs, debug="warning").start()
                self.uac_target = (LOOPBACK, c)
                self.uac_transport = self.uas_transport = "t1"
        else:
            client_port, server_port = free_port("tcp"), free_port("tcp")
            if sysname == "kamailio":
                target = server_port if teams_out else self.uas_port
                self.proxy = Kamailio(self.workdir, self.procs, pki, teams_tls=s != "udp-udp",
                                      pbx_uas_port=self.uas_port, teams_target_port=target,
                                      rtpengine_ng=self.rtpengine.ng_udp if self.rtpengine else None)
                proxy_teams_port, proxy_pbx_port = self.proxy.teams_port, self.proxy.pbx_port
            elif sysname == "teamsbc":
                if s == "udp-udp":
                    raise ValueError("teamsbc has no UDP Teams leg")
                extra = {sec: dict(v) for sec, v in self.sbc_overrides.items()}
                workers, cpus, launch = teamsbc_variant(variant)
                if workers:
                    extra.setdefault("sbc", {})["workers"] = workers
                if self.certificate:
                    extra.setdefault("teams", {}).update(certificate=str(self.certificate[0]),
                                                         private_key=str(self.certificate[1]))
                if self.rtpengine:
                    extra["media"] = {"rtpengine": [self.rtpengine.ng_udp] + (
                                          [self.rtpengine_spare.ng_udp] if self.rtpengine_spare else []),
                                      "interfaces": {"teams": "pub", "pbx": "priv"}}
                self.proxy = ProfiledSbc(self.workdir, self.procs, pki,
                                         teams_resolve={n: server_port for n in TEAMS_NAMES},
                                         pbx_transport="udp", pbx_port=self.uas_port,
                                         extra=extra,
                                         profile_to=self.profile_to,
                                         launcher=self.launcher or ([str(Path(__file__).parent / "launch_teamsbc.py"), launch]
                                                                    if launch else None),
                                         cpus=cpus)
                proxy_teams_port, proxy_pbx_port = self.proxy.teams_port, self.proxy.pbx_listen_port
            else:
                raise ValueError(sysname)
            if s != "udp-udp":
                self.stunnel = Stunnel(self.workdir, [
                    TeamsClient.for_pki(pki, accept_port=client_port, connect_port=proxy_teams_port),
                    TeamsServer.for_pki(pki, accept_port=server_port, connect_port=self.uas_port),
                ], procs=self.procs, debug="warning").start()
            responder = OptionsResponder(self.uas_port) if sysname == "teamsbc" else None
            try:
                self.proxy.start()
                if responder is not None:
                    self.startup_options = responder.wait(3, 5.0)
            finally:
                if responder is not None:
                    responder.close()
                    time.sleep(0.3)  # let stunnel close its side before a sipp binds the port
            if teams_in:
                self.uac_target, self.uac_transport, self.uas_transport = (LOOPBACK, client_port), "t1", "u1"
                self.uac_args = teams_caller(sbc_fqdn=pki.sbc_fqdn, sbc_port=proxy_teams_port,
                                             callee=TEAMS_CALLEE)
            else:
                self.uac_target = (LOOPBACK, proxy_pbx_port)
                self.uac_transport = "u1"
                self.uas_transport = "t1" if teams_out else "u1"
        # caller / callee identities: the same for every system of a scenario
        if teams_in and not self.uac_args:
            self.uac_args = teams_caller(sbc_fqdn=pki.sbc_fqdn, sbc_port=self.uac_target[1],
                                         callee=TEAMS_CALLEE)
        if not teams_in:
            self.uac_args = {"keys": {"ruri_user": PBX_DIALLED, "to_user": PBX_DIALLED,
                                      "from_user": PBX_CALLER, "ruri_params": ""}}
        self.uas_args = teams_callee() if teams_out else {}
        return self

    # ---- sipp runs
    def uas(self, calls: int, *, timeout_s: float, recv_timeout_ms: int = 3000) -> Sipp:
        self.runs += 1
        s = Sipp("uas.xml", workdir=self.workdir, local_port=self.uas_port,
                 transport=self.uas_transport, calls=calls, procs=self.procs,
                 name=f"r{self.runs:02d}-uas", timeout_s=timeout_s,
                 recv_timeout_ms=recv_timeout_ms, outer_timeout_s=timeout_s + 10,
                 **self.uas_args)
        return lighten(s)

    def uac(self, calls: int, rate: float, *, hold_ms: int, limit: int, timeout_s: float,
            recv_timeout_ms: int = 3000) -> Sipp:
        s = Sipp(self.uac_xml, workdir=self.workdir, local_port=free_port("both"),
                 remote=self.uac_target, transport=self.uac_transport, calls=calls, rate=rate,
                 limit=limit, duration_ms=hold_ms, procs=self.procs, name=self._uac_name(),
                 timeout_s=timeout_s, recv_timeout_ms=recv_timeout_ms,
                 outer_timeout_s=timeout_s + 10,
                 extra_args=["-trace_rtt", "-rtt_freq", "1"], **self.uac_args)
        return lighten(s)

    def _uac_name(self) -> str:
        """r07-uac, then r07-uac2, ... when several callers share one callee (long hold)."""
        self._uacs[self.runs] = self._uacs.get(self.runs, 0) + 1
        n = self._uacs[self.runs]
        return f"r{self.runs:02d}-uac" + (str(n) if n > 1 else "")

    # ---- the proxy
    def proxy_udp_ports(self) -> list[int]:
        if isinstance(self.proxy, Kamailio):
            return [self.proxy.pbx_port] + ([] if self.proxy.teams_tls else [self.proxy.teams_port])
        if isinstance(self.proxy, ProfiledSbc):
            return [self.proxy.pbx_listen_port]
        return []

    def pids(self) -> list[int]:
        return self.proxy.pids() if self.proxy is not None else []

    def alive(self) -> bool:
        return self.proxy is None or (self.proxy.process is not None and self.proxy.process.running)

    def proxy_log(self) -> str:
        return self.proxy.log_text() if self.proxy is not None else ""

    def stop(self) -> None:
        if self.proxy is not None:
            try:
                self.proxy.stop()
            except Exception:  # noqa: BLE001
                pass
        if self.stunnel is not None:
            self.stunnel.stop()
        for engine in (self.rtpengine, self.rtpengine_spare):
            if engine is not None:
                engine.stop()
                from tests.support.rtpengine import release_port_window
                release_port_window(engine.port_min)  # now, not when the object is collected


def start_rtpengine(procs: ProcessManager, largest: int | None = None):
    """A user-space rtpengine (tests.support.rtpengine: interfaces pub/127.0.0.1 toward Teams,
    priv/127.0.0.2 toward the PBX) with a media port window as large as the machine allows:
    every call holds 4 ports (2 legs x RTP/RTCP) until its BYE (or rtpengine's own timeout for
    a call that failed before it), so the window bounds the calls in flight."""
    from tests.support.rtpengine import RtpEngine
    last: Exception | None = None
    for window in [w for w in (4400, 4000, 3200, 2400, 1600, 800, 400) if largest is None or w <= largest]:
        try:
            return RtpEngine(procs, window=window, http=False).start()
        except RuntimeError as e:
            last = e
    raise RuntimeError(f"no media port window for rtpengine: {last}")


# Lines every start prints, not caused by the load: kamailio's note about an OpenSSL workaround;
# teamsbc's first OPTIONS to the Teams proxies, sent at start-up when no Teams sipp is there yet
# (keep-alive is otherwise off for the bench), and the peers it marks down because of them.
BENIGN = [
    re.compile(r"openssl bug #1491"),
    re.compile(r"peer sip\d?\.pstnhub\.microsoft\.com is now down \(was up\): OPTIONS"),
]


def log_problems(text: str, system: str, limit: int = 12) -> tuple[int, list[str], int]:
    """Warning/error lines of a proxy log: (count, a few distinct examples, benign count)."""
    if system.startswith("teamsbc"):
        pat = re.compile(r"level=(WARNING|ERROR|CRITICAL)|Traceback")
    else:
        pat = re.compile(r"\b(WARNING|ERROR|CRITICAL|BUG|ALERT)\b|: (ERROR|WARNING):")
    lines = [l for l in text.splitlines() if pat.search(l)]
    benign = [l for l in lines if any(b.search(l) for b in BENIGN)]
    lines = [l for l in lines if not any(b.search(l) for b in BENIGN)]
    seen, examples = set(), []
    for l in lines:
        key = re.sub(r"\d+", "#", l)[-160:]
        if key not in seen:
            seen.add(key)
            examples.append(l[:400])
            if len(examples) >= limit:
                break
    return len(lines), examples, len(benign)


def summarise_times(times: list[float]) -> dict:
    if not times:
        return {"n": 0}
    return {"n": len(times), "p50_ms": percentile(times, 50), "p90_ms": percentile(times, 90),
            "p99_ms": percentile(times, 99), "max_ms": max(times), "mean_ms": statistics.fmean(times)}
