"""sbc.workers: calls spread over worker processes by Call-ID, seen as one SBC (issue 14).

Real sipp on both sides, real mutual TLS (stunnel) on the Teams side, the SBC with two workers
(docs/architecture.md, "Workers"): every call in both directions completes, worker 0's
/metrics and CDR database count every call of both workers, messages were handed between
them, a certificate reload reaches every worker, and SIGTERM stops them all.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import urllib.request

import pytest

from tests.test_e2e_calls import Lab
from tests.test_metrics import parse_prometheus, sample

pytestmark = pytest.mark.e2e

CALLS = 40


def metrics(lab: Lab) -> dict:
    url = f"http://{lab.sbc.config['admin']['listen']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        return parse_prometheus(r.read().decode())[0]


def eventually(probe, what: str, timeout: float = 15.0):
    """Poll the admin API until `probe` returns something true (worker 0 learns the others'
    counters once a second: there is no event to wait for from outside the process)."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.fixture
def lab(tmp_path, procs, test_pki):
    return Lab(tmp_path, procs, test_pki, extra={"sbc": {"workers": 2}})


def test_calls_both_ways_over_two_workers_are_one_sbc(lab):
    pid = lab.sbc.process.pid
    workers = children(pid)
    assert len(workers) == 1, workers   # worker 0 is the main process, worker 1 its child
    pbx = lab.pbx_uas(calls=CALLS)
    teams = lab.teams_uac(calls=CALLS, rate=20).run()
    lab.check(teams, pbx.wait())
    teams_uas = lab.teams_uas(calls=CALLS)
    from_pbx = lab.pbx_uac(calls=CALLS, rate=20).run()
    lab.check(from_pbx, teams_uas.wait())

    s = metrics(lab)
    assert sample(s, "teamsbc_workers") == 2
    # both workers relayed calls: about half the messages were read by one, owned by the other
    assert sample(s, "teamsbc_worker_handovers_total") >= CALLS
    assert sample(s, "teamsbc_calls_total", direction="teams->pbx") == CALLS
    assert sample(s, "teamsbc_calls_total", direction="pbx->teams") == CALLS
    assert sample(s, "teamsbc_calls_ended_total", direction="pbx->teams", by="pbx") == CALLS
    # the proxies' counters of both workers, summed by worker 0 (each sends them every second)
    wanted = {("teams", "INVITE"): CALLS, ("pbx", "INVITE"): CALLS, ("pbx", "BYE"): CALLS,
              ("teams", "BYE"): CALLS}

    def counted():
        m = metrics(lab)
        return m if all(sample(m, "teamsbc_sip_requests_total", leg=leg, method=meth) == n
                        for (leg, meth), n in wanted.items()) else None
    eventually(counted, "request counters of both workers")

    url = f"http://{lab.sbc.config['admin']['listen']}/cdr?limit=1000"
    with urllib.request.urlopen(url, timeout=10) as r:
        rows = json.loads(r.read())["calls"]
    assert len(rows) == 2 * CALLS and all(r["status"] == 200 and r["end_time"] for r in rows)
    with sqlite3.connect(lab.sbc.config["cdr"]["path"]) as db:  # one writer, one database
        assert db.execute("select count(*) from calls").fetchone()[0] == 2 * CALLS

    # SIGHUP to the main process (systemctl reload): every worker reloads
    os.kill(pid, signal.SIGHUP)
    eventually(lambda: sample(metrics(lab), "teamsbc_certificate_reloads_total") == 2,
               "a certificate reload in both workers")

    assert lab.sbc.stop() == 0
    for w in workers:
        assert not os.path.exists(f"/proc/{w}") or open(f"/proc/{w}/stat").read().split()[2] == "Z"
