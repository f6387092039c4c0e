"""teamsbc.cdr: schema and migrations, rows from the core's events, durability across a
SIGKILL, the cost of a call's writes, media statistics from a real rtpengine, `teamsbc cdr`."""
from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teamsbc.cdr.settings import CdrError, parse_cdr, settings_from_config_file
from teamsbc.cdr.store import COLUMNS, MIGRATIONS, SCHEMA_VERSION, CdrStore, media_columns
from teamsbc.cdr.writer import CdrObserver, CdrWriter
from teamsbc.settings import SettingsReader
from teamsbc.cdr.cli import main as cdr_main
from teamsbc.cdr.export import format_rows
from teamsbc.media.stats import parse_stats


def observer(store: CdrStore) -> CdrObserver:
    """The observer the SBC uses, on its own writer thread; `obs.writer.flush()` waits for the
    commits, `obs.writer.close()` also closes the store."""
    return CdrObserver(CdrWriter(store))

ROOT = Path(__file__).resolve().parent.parent


def rows(path: Path) -> list[dict]:
    db = sqlite3.connect(path)
    try:
        return [dict(zip(COLUMNS, r)) for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM calls ORDER BY id")]
    finally:
        db.close()


# --------------------------------------------------------------------------- schema

def test_new_database_is_wal_and_versioned(tmp_path):
    store = CdrStore(tmp_path / "sub" / "cdr.sqlite")
    try:
        db = store.db
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == store.version
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1           # NORMAL
        cols = [r[1] for r in db.execute("PRAGMA table_info(calls)")]
        assert tuple(cols) == COLUMNS
        idx = {r[1] for r in db.execute("PRAGMA index_list(calls)")}
        assert {"calls_setup_time", "calls_call_id"} <= idx
    finally:
        store.close()
    full = CdrStore(tmp_path / "full.sqlite", synchronous="full")
    assert full.db.execute("PRAGMA synchronous").fetchone()[0] == 2
    full.close()


def test_migrations_run_once_in_order_and_keep_rows(tmp_path):
    path = tmp_path / "cdr.sqlite"
    obs = observer(CdrStore(path))
    obs.call_started("a@x", "pbx->teams", None, "+441", "+442", 100.0)
    obs.writer.close()
    v2 = [(2, ["ALTER TABLE calls ADD COLUMN note TEXT", "UPDATE calls SET note = 'migrated'"])]
    store = CdrStore(path, migrations=MIGRATIONS + v2)
    assert store.version == 2
    assert store.db.execute("SELECT call_id, note FROM calls").fetchall() == [("a@x", "migrated")]
    store.close()
    store = CdrStore(path, migrations=MIGRATIONS + v2)      # already there: nothing runs again
    assert store.db.execute("SELECT count(*) FROM calls").fetchone()[0] == 1
    store.close()
    with pytest.raises(CdrError, match="schema version 2 is newer"):
        CdrStore(path)                                      # an older teamsbc refuses it


def test_failed_migration_leaves_the_database_as_it_was(tmp_path):
    path = tmp_path / "cdr.sqlite"
    CdrStore(path).close()
    bad = [(1, []), (2, ["ALTER TABLE calls ADD COLUMN ok TEXT", "THIS IS NOT SQL"])]
    with pytest.raises(sqlite3.OperationalError):
        CdrStore(path, migrations=bad)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "ok" not in [r[1] for r in db.execute("PRAGMA table_info(calls)")]
    db.close()


# --------------------------------------------------------------------------- rows

def test_rows_from_call_events(tmp_path):
    store = CdrStore(tmp_path / "cdr.sqlite")
    obs = observer(store)
    obs.call_started("ok@pbx", "pbx->teams", None, "+441632960123", "+442071234567", 1000.0)
    obs.call_answered("ok@pbx", 1002.5)
    obs.call_ended("ok@pbx", "teams", 1062.5)
    obs.call_started("busy@pbx", "pbx->teams", None, "+441632960123", "+442071234568", 1100.0)
    obs.call_failed("busy@pbx", 486, "Busy Here", 1101.0)
    obs.call_started("cancel@teams", "teams->pbx", "customer1.sbc.example.com", "+1206", "+4420", 1200.0)
    obs.call_failed("cancel@teams", 487, "Request Terminated", 1203.0)
    obs.call_started("media@pbx", "pbx->teams", None, "1", "2", 1300.0)
    obs.call_failed("media@pbx", 503, "Service Unavailable (media)", 1300.2)
    obs.call_started("open@pbx", "pbx->teams", None, "1", "2", 1400.0)
    obs.call_answered("open@pbx", 1401.0)
    obs.call_answered("ok@pbx", 9999.0)                      # late duplicate: ignored
    assert obs.writer.flush()
    got = {r["call_id"]: r for r in rows(store.path)}
    assert (got["ok@pbx"]["status"], got["ok@pbx"]["answer_time"], got["ok@pbx"]["end_time"],
            got["ok@pbx"]["ended_by"]) == (200, 1002.5, 1062.5, "teams")
    assert (got["busy@pbx"]["status"], got["busy@pbx"]["reason"], got["busy@pbx"]["answer_time"],
            got["busy@pbx"]["end_time"], got["busy@pbx"]["ended_by"]) == (486, "Busy Here", None, 1101.0, None)
    assert got["cancel@teams"]["ended_by"] == "teams" and got["cancel@teams"]["tenant"] == "customer1.sbc.example.com"
    assert got["media@pbx"]["ended_by"] == "sbc"
    assert got["open@pbx"]["end_time"] is None and got["open@pbx"]["answer_time"] == 1401.0
    obs.writer.close()

    # a new process (restart): the BYE of a call answered before it still closes its row
    store = CdrStore(tmp_path / "cdr.sqlite")
    obs = observer(store)
    obs.call_ended("open@pbx", "pbx", 1500.0)
    obs.call_ended("never-seen@x", "pbx", 1500.0)           # no row: nothing happens
    assert obs.writer.flush()
    got = {r["call_id"]: r for r in rows(store.path)}
    assert (got["open@pbx"]["end_time"], got["open@pbx"]["ended_by"]) == (1500.0, "pbx")
    assert len(got) == 5
    assert [r["call_id"] for r in store.query(since=1100.0, until=1300.0)] == ["busy@pbx", "cancel@teams"]
    assert [r["call_id"] for r in store.query(limit=2, newest=True)] == ["media@pbx", "open@pbx"]
    assert [r["call_id"] for r in store.query(limit=2)] == ["ok@pbx", "busy@pbx"]
    obs.writer.close()


def test_rows_survive_sigkill(tmp_path):
    """A child process writes calls through the observer, waits for the writer's commit
    (`flush`) and SIGKILLs itself: everything written before is in the database."""
    path = tmp_path / "cdr.sqlite"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from teamsbc.cdr.store import CdrStore
from teamsbc.cdr.writer import CdrObserver, CdrWriter
obs = CdrObserver(CdrWriter(CdrStore({str(path)!r})))
for i in range(51):
    obs.call_started(f"c{{i}}", "pbx->teams", None, "+441", "+442", 1000.0 + i)
    if i % 5 == 4:
        obs.call_failed(f"c{{i}}", 486, "Busy Here", 1000.5 + i)
        continue
    obs.call_answered(f"c{{i}}", 1000.5 + i)
    if i < 50:
        obs.call_ended(f"c{{i}}", "pbx", 1001.0 + i)
assert obs.writer.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""
    p = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    assert (tmp_path / "cdr.sqlite-wal").exists()            # not checkpointed: the WAL holds them
    store = CdrStore(path)                                   # reopen (recovery of the WAL)
    got = store.query()
    store.close()
    assert len(got) == 51
    answered = [r for r in got if r["answer_time"] is not None]
    assert len(answered) == 41 and all(r["status"] == 200 for r in answered)
    assert [r["call_id"] for r in got if r["status"] == 486] == [f"c{i}" for i in range(4, 51, 5)]
    assert all(r["end_time"] == float(r["call_id"][1:]) + 1001.0 for r in answered[:-1])
    last = got[-1]
    assert last["call_id"] == "c50" and last["answer_time"] == 1050.5 and last["end_time"] is None


def test_sigkill_mid_stream_loses_nothing_committed_and_at_most_the_last_batch(tmp_path):
    """The durability contract of cdr/writer.py: a child streams call events as fast as it
    can; after each commit the writer thread reports how many events are committed; the
    parent kills -9 the child mid-stream. Every event reported committed is in the database,
    and what is missing is at most the queue at the moment of the kill."""
    path = tmp_path / "cdr.sqlite"
    script = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from teamsbc.cdr.store import CdrStore
from teamsbc.cdr.writer import CdrObserver, CdrWriter
def report(n):
    sys.stdout.write(f"committed {{n}}\\n"); sys.stdout.flush()
obs = CdrObserver(CdrWriter(CdrStore({str(path)!r}), on_commit=report))
i = 0
while True:   # 3 events per call, started/answered/ended
    obs.call_started(f"c{{i}}", "pbx->teams", None, "+441", "+442", 1000.0 + i)
    obs.call_answered(f"c{{i}}", 1000.5 + i)
    obs.call_ended(f"c{{i}}", "pbx", 1001.0 + i)
    i += 1
    if i % 50 == 0:
        time.sleep(0.001)   # a busy SBC, not a tight loop: the writer gets the GIL too
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reported = 0
    try:
        while reported < 30_000:
            line = child.stdout.readline()
            assert line, child.stderr.read().decode()
            reported = int(line.split()[1])
        child.kill()                                     # SIGKILL, mid-stream
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    for line in child.stdout.read().splitlines():        # reports written just before the kill
        reported = max(reported, int(line.split()[1]))
    store = CdrStore(path)
    got = store.query()
    store.close()
    events = len(got) + sum(r["answer_time"] is not None for r in got) + sum(r["end_time"] is not None for r in got)
    assert events >= reported                           # nothing committed was lost
    # calls are complete in order: only the last few can be partial (the batch being written)
    complete = [r for r in got if r["end_time"] is not None]
    assert [r["call_id"] for r in complete] == [f"c{i}" for i in range(len(complete))]
    assert len(got) - len(complete) <= 1
    print(f"CDR kill -9: {reported} events reported committed, {events} in the database")


def test_write_cost_per_call(tmp_path):
    """What a call's three events cost the event loop (a queue append each) and how many calls
    per second the writer thread commits. Reported; bounded well above what 500 calls/s needs."""
    store = CdrStore(tmp_path / "cdr.sqlite")
    obs = observer(store)
    n = 3000
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        a = time.perf_counter()
        cid = f"bench-{i}@pbx"
        obs.call_started(cid, "pbx->teams", None, "+441632960123", "+442071234567", time.time())
        obs.call_answered(cid, time.time())
        obs.call_ended(cid, "pbx", time.time())
        lat.append(time.perf_counter() - a)
    on_loop = time.perf_counter() - t0
    assert obs.writer.flush(30)
    total = time.perf_counter() - t0
    batches = obs.writer.stats["batches"]
    obs.writer.close()
    assert len(rows(tmp_path / "cdr.sqlite")) == n
    lat.sort()
    print(f"CDR write cost on the loop: {on_loop / n * 1e6:.1f} us per call (3 events), p99 "
          f"{lat[int(n * 0.99)] * 1e6:.0f} us, max {lat[-1] * 1e3:.2f} ms; writer: {n / total:.0f} calls/s "
          f"committed in {batches} transactions")
    assert on_loop / n < 2e-3 and total / n < 2e-3


# --------------------------------------------------------------------------- media statistics

DELETE_REPLY = {
    "result": "ok",
    "totals": {"RTP": {"packets": 8, "bytes": 1376, "errors": 0}, "RTCP": {"packets": 0, "bytes": 0, "errors": 0}},
    # the sides by the labels the SBC's initial offer and answer set, whatever the tag order
    # (rtpengine listed the callee first in the replies of issue 12)
    "tags": {
        "calleetag": {"tag": "calleetag", "label": "callee", "medias": [{"streams": [
            {"local port": 61200, "local address": "127.0.0.2", "flags": ["RTP", "filled"],
             "endpoint": {"address": "127.0.0.2", "port": 59366}, "stats": {"packets": 3, "bytes": 516, "errors": 0}}]}]},
        "callertag": {"tag": "callertag", "label": "caller", "medias": [{"streams": [
            {"local port": 61200, "local address": "127.0.0.1", "flags": ["RTP", "filled"],
             "endpoint": {"address": "127.0.0.1", "port": 43301}, "stats": {"packets": 5, "bytes": 860, "errors": 0}},
            {"local port": 61201, "local address": "127.0.0.1", "flags": ["RTCP", "filled"],
             "endpoint": {"address": "127.0.0.1", "port": 43302}, "stats": {"packets": 1, "bytes": 80, "errors": 0}}]}]},
    },
}


def test_media_stats_columns():
    s = media_columns(parse_stats("c", DELETE_REPLY))
    assert {k: s[k] for k in s if k != "media"} == {
        "rtp_packets": 8, "rtp_bytes": 1376, "rtp_errors": 0, "caller_packets": 5, "caller_bytes": 860,
        "callee_packets": 3, "callee_bytes": 516}
    detail = json.loads(s["media"])
    assert detail["tags"][1] == {"tag": "callertag", "endpoint": "127.0.0.1:43301", "local": "127.0.0.1:61200",
                                 "packets": 5, "bytes": 860, "errors": 0}
    assert media_columns(parse_stats("c", {"result": "ok"})) is None
    assert media_columns(parse_stats("c", "junk")) is None


def test_media_stats_count_an_rtcp_muxed_stream_and_no_labels_means_no_sides():
    """Teams' stream (rtcp-mux) is flagged RTP, RTCP, filled, ICE: its packets count; the
    unused fallback RTCP stream beside it does not. Without labels nobody is called caller."""
    teams = {"tag": "t", "label": "caller", "medias": [{"streams": [
        {"flags": ["RTP", "RTCP", "filled", "ICE"], "stats": {"packets": 282, "bytes": 48504, "errors": 0},
         "endpoint": {"address": "127.0.0.1", "port": 30000}, "local address": "127.0.0.1", "local port": 64300},
        {"flags": ["RTCP", "fallback RTCP", "filled", "ICE"], "stats": {"packets": 0, "bytes": 0, "errors": 0}}]}]}
    pbx = {"tag": "p", "label": "callee", "medias": [{"streams": [
        {"flags": ["RTP", "filled"], "stats": {"packets": 333, "bytes": 57276, "errors": 0}},
        {"flags": ["RTCP", "filled"], "stats": {"packets": 7, "bytes": 560, "errors": 0}}]}]}
    st = parse_stats("c", {"result": "ok", "tags": {"p": pbx, "t": teams}})
    assert (st.caller.tag, st.caller.packets, st.callee.tag, st.callee.packets) == ("t", 282, "p", 333)
    unlabelled = {k: {x: y for x, y in v.items() if x != "label"} for k, v in (("p", pbx), ("t", teams))}
    st = parse_stats("c", {"result": "ok", "tags": unlabelled})
    assert st.caller is None and st.callee is None and [l.packets for l in st.legs] == [333, 282]


def test_media_stats_reach_the_row_after_the_end(tmp_path):
    store = CdrStore(tmp_path / "cdr.sqlite")
    obs = observer(store)
    obs.call_started("m@pbx", "pbx->teams", None, "1", "2", 1.0)
    obs.call_answered("m@pbx", 2.0)
    obs.call_ended("m@pbx", "pbx", 3.0)
    obs.media_stats(parse_stats("m@pbx", DELETE_REPLY), 3.1)  # the delete reply comes after the BYE
    assert obs.writer.flush()
    [r] = store.query()
    assert (r["rtp_packets"], r["caller_packets"], r["callee_bytes"]) == (8, 5, 516)
    obs.writer.close()


@pytest.mark.e2e
def test_media_stats_from_a_real_rtpengine_delete(procs, tmp_path):
    """rtpengine 10.5: the delete reply carries statistics only when the delete names a tag;
    a call-id-only delete (what MediaAnchor sends on BYE today) answers a bare "ok"."""
    from tests.support.rtpengine import RtpEngine
    eng = RtpEngine(procs).start()
    sdp = "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"

    def call(cid: str) -> tuple[socket.socket, socket.socket]:
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.bind(("127.0.0.2", 0))
        common = {"flags": ["trust-address"], "replace": ["origin", "session-connection"]}
        to_b = eng.command({"command": "offer", "call-id": cid, "from-tag": "caller", "label": "caller",
                            "sdp": sdp.format(ip="127.0.0.1", port=a.getsockname()[1]),
                            "direction": ["pub", "priv"], **common})["sdp"]
        to_a = eng.command({"command": "answer", "call-id": cid, "from-tag": "caller", "to-tag": "callee",
                            "label": "callee",
                            "sdp": sdp.format(ip="127.0.0.2", port=b.getsockname()[1]), **common})["sdp"]

        def target(s):
            return re.search(r"c=IN IP4 (\S+)", s).group(1), int(re.search(r"m=audio (\d+)", s).group(1))
        for i in range(5):
            a.sendto(struct.pack("!BBHII", 0x80, 8, i, i * 160, 1) + b"\xd5" * 160, target(to_a))
        for i in range(3):
            b.sendto(struct.pack("!BBHII", 0x80, 8, i, i * 160, 2) + b"\xd5" * 160, target(to_b))
        return a, b

    def counted(cid: str) -> bool:
        q = eng.command({"command": "query", "call-id": cid})
        return q["totals"]["RTP"]["packets"] == 8

    from tests.support.procs import wait_for
    socks = call("with-tag")
    wait_for(lambda: counted("with-tag"), 5, what="rtpengine to count 8 packets")
    store = CdrStore(tmp_path / "cdr.sqlite")
    obs = observer(store)
    obs.call_started("with-tag", "teams->pbx", None, "+1", "+44", 1.0)
    obs.call_answered("with-tag", 2.0)
    obs.call_ended("with-tag", "teams", 3.0)
    reply = eng.command({"command": "delete", "call-id": "with-tag", "from-tag": "caller"})
    obs.media_stats(parse_stats("with-tag", reply), 3.1)
    assert obs.writer.flush()
    [r] = store.query()
    assert (r["rtp_packets"], r["rtp_bytes"]) == (8, 8 * 172)
    assert (r["caller_packets"], r["caller_bytes"], r["callee_packets"], r["callee_bytes"]) == (5, 860, 3, 516)
    socks2 = call("call-id-only")
    wait_for(lambda: counted("call-id-only"), 5, what="rtpengine to count 8 packets")
    assert parse_stats("call-id-only", eng.command({"command": "delete", "call-id": "call-id-only"})).empty
    obs.writer.close()
    for s in (*socks, *socks2):
        s.close()


# --------------------------------------------------------------------------- settings and CLI

def test_settings(tmp_path):
    r = SettingsReader("teamsbc.yaml", tmp_path)
    s = parse_cdr(r, None)
    assert r.errors == [] and s.enabled and s.path == tmp_path / "cdr.sqlite" and s.synchronous == "normal"
    s = parse_cdr(r, {"path": "/var/lib/teamsbc/cdr.sqlite", "synchronous": "full"})
    assert r.errors == [] and s.path == Path("/var/lib/teamsbc/cdr.sqlite") and s.synchronous == "full"
    parse_cdr(r, {"path": 3, "synchronous": "sometimes", "enabled": "yes", "pth": "x"})
    assert [e.split(": ")[1] for e in r.errors] == ["cdr.pth", "cdr.enabled", "cdr.path", "cdr.synchronous"]


@pytest.fixture
def filled(tmp_path):
    cfgfile = tmp_path / "teamsbc.yaml"
    cfgfile.write_text("sbc: {fqdn: sbc.example.com}\ncdr: {path: data/calls.sqlite}\n")
    obs = observer(CdrStore(tmp_path / "data" / "calls.sqlite"))
    t = 1714564800.0   # 2024-05-01T12:00:00Z
    obs.call_started("a@pbx", "pbx->teams", None, "+441632960123", "+442071234567", t)
    obs.call_answered("a@pbx", t + 2)
    obs.call_ended("a@pbx", "teams", t + 62.5)
    obs.call_started("b@pbx", "pbx->teams", None, "+441632960123", "+442071234568", t + 3600)
    obs.call_failed("b@pbx", 486, "Busy Here", t + 3601)
    obs.call_started("c@teams", "teams->pbx", None, "+12065550123", "+441632960999", t + 86400)
    obs.call_answered("c@teams", t + 86401)
    obs.writer.close()
    return cfgfile


def test_cdr_command_formats_and_ranges(filled, capsys):
    assert settings_from_config_file(filled).path == filled.parent / "data" / "calls.sqlite"
    assert cdr_main(["-c", str(filled), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["call_id"] for r in out] == ["a@pbx", "b@pbx", "c@teams"]
    assert out[0]["setup_time"] == "2024-05-01T12:00:00.000Z" and out[0]["duration"] == 60.5
    assert out[1]["answer_time"] is None and out[1]["status"] == 486 and out[2]["end_time"] is None

    assert cdr_main(["-c", str(filled), "--since", "2024-05-01T12:30:00Z", "--until", "2024-05-02",
                     "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id,call_id,direction,") and len(lines) == 2
    assert ",b@pbx,pbx->teams,," in lines[1] and ",486,Busy Here," in lines[1]

    assert cdr_main(["--db", str(filled.parent / "data" / "calls.sqlite"), "--since", "2024-05-01"]) == 0
    table = capsys.readouterr().out
    assert "200 OK" in table and "486 Busy Here" in table and "60.5s" in table and table.endswith("3 call(s)\n")


def test_cdr_command_errors(tmp_path, capsys):
    assert cdr_main(["--db", str(tmp_path / "none.sqlite")]) == 1
    assert "no CDR database" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cdr_main(["--db", "x", "--since", "yesterday"])
    assert "not an ISO 8601 time" in capsys.readouterr().err


def test_cdr_command_runs_as_a_program_on_a_live_database(filled):
    """Read-only while the SBC has the database open for writing (WAL readers don't block)."""
    obs = observer(CdrStore(filled.parent / "data" / "calls.sqlite"))
    obs.call_started("live@pbx", "pbx->teams", None, "1", "2", time.time())
    assert obs.writer.flush()
    p = subprocess.run([sys.executable, "-m", "teamsbc.cdr", "-c", str(filled), "--format", "json"],
                       capture_output=True, timeout=60, cwd=ROOT)
    obs.writer.close()
    assert p.returncode == 0, p.stderr.decode()
    assert [r["call_id"] for r in json.loads(p.stdout)][-1] == "live@pbx"


def test_format_rows_table_without_rows():
    assert format_rows([], "table").endswith("0 call(s)\n")
