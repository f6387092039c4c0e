"""Issue 17 item 3: one PostgreSQL CDR store (cdr.url) next to SQLite, behind the writer's
CdrBackend. A real server (tests/support/postgres.py: initdb + pg_ctl as the postgres user on
a free port) is stopped in the middle: the box keeps calling, events wait in the writer, the
backlog is written once the server is back, nothing lost and nothing twice.

1. cdr.url settings: precise errors, the password never shown.
2. The writer over PgStore: rows like SQLite's; PostgreSQL stopped and started again mid-stream.
3. The real SBC process with cdr.url: calls through sipp and the Teams peer while the server is
   stopped; every row complete once it is back; `teamsbc cdr -c` reads them from PostgreSQL.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from teamsbc.cdr.pg import PgStore
from teamsbc.cdr.settings import CdrError, parse_cdr, parse_pg_url
from teamsbc.cdr.writer import CdrObserver, CdrWriter
from teamsbc.settings import SettingsReader
from tests.support.pki import TEAMS_NAMES
from tests.support.ports import free_port
from tests.support.postgres import PostgresCluster
from tests.support.procs import wait_for
from tests.support.sbc import SbcProcess
from tests.support.sipp import Sipp
from tests.support.teams_peer import TeamsPeer

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture
def pg():
    cluster = PostgresCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.parametrize("url, expected", [
    ("mysql://u:secretpw@h:1/d", "cdr.url: must start with postgresql://"),
    ("postgresql://u@h:5432/d", "cdr.url: needs a user and a password"),
    ("postgresql://u:secretpw@h:5432/", "cdr.url: needs a database name"),
    ("postgresql://u:secretpw@h:70000/d", "cdr.url: is not a URL like postgresql://"),
    ("postgresql://u:secretpw@h:5432/d?sslmode=maybe", "cdr.url: only ?sslmode="),
    (42, "cdr.url: must be a string like postgresql://"),
])
def test_url_errors_are_precise_and_hide_the_password(tmp_path, url, expected):
    r = SettingsReader("t.yaml", tmp_path)
    parse_cdr(r, {"url": url})
    assert len(r.errors) == 1 and r.errors[0].startswith(f"t.yaml: {expected}"), r.errors
    assert "secretpw" not in r.errors[0]


def test_url_and_path_together_are_refused(tmp_path):
    r = SettingsReader("t.yaml", tmp_path)
    parse_cdr(r, {"url": "postgresql://u:secretpw@db.example.net:5432/cdr", "path": "x.sqlite"})
    assert r.errors == ["t.yaml: cdr.url: and cdr.path both given: CDRs go to one store (remove cdr.path)"]


def test_the_url_shows_without_its_password():
    u = parse_pg_url("postgresql://tsbc:s%40xyzzy-pw@db.example.net:6432/cdr?sslmode=require")
    assert str(u) == "postgresql://tsbc:***@db.example.net:6432/cdr"
    assert "xyzzy" not in repr(u)
    assert u.connect_kwargs()["password"] == "s@xyzzy-pw" and u.connect_kwargs()["sslmode"] == "require"


def test_writer_keeps_events_while_postgresql_is_down_and_writes_them_once(pg):
    store = PgStore(parse_pg_url(pg.url))
    obs = CdrObserver(CdrWriter(store))
    t0 = 1_800_000_000.0

    def call(n: int) -> None:
        cid = f"call-{n}@pbx"
        obs.call_started(cid, "pbx->teams", None, f"+4420{n}", "+4930123", t0 + n)
        obs.call_answered(cid, t0 + n + 1)
        obs.call_ended(cid, "pbx", t0 + n + 5)

    for n in range(3):
        call(n)
    assert obs.writer.flush(10)
    pg.stop()
    for n in range(3, 8):
        call(n)
    assert not obs.writer.flush(2.5)                   # nothing can commit: the server is gone
    assert obs.writer.backlog > 0 and obs.writer.stats["errors"] >= 1
    pg.start()
    assert obs.writer.flush(30), obs.writer.stats
    rows = pg.rows("SELECT call_id, status, answer_time - setup_time, end_time - setup_time, ended_by "
                   "FROM calls ORDER BY setup_time")
    assert rows == [[f"call-{n}@pbx", "200", "1", "5", "pbx"] for n in range(8)], rows
    obs.writer.close()


def test_a_lost_connection_is_reopened_without_a_restart_of_the_server(pg):
    """The server kills our backend (as a failover or an idle timeout would): the next batch
    reconnects."""
    store = PgStore(parse_pg_url(pg.url))
    obs = CdrObserver(CdrWriter(store))
    obs.call_started("c1", "teams->pbx", None, "+1", "+2", 1.0)
    assert obs.writer.flush(10)
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name='teamsbc'")
    obs.call_answered("c1", 2.0)
    obs.call_ended("c1", "teams", 3.0)
    assert obs.writer.flush(20), obs.writer.stats
    assert pg.rows("SELECT status, ended_by, end_time FROM calls") == [["200", "teams", "3"]]
    obs.writer.close()


# --------------------------------------------------------------------------- the real SBC
@pytest.mark.e2e
async def test_sbc_calls_on_while_postgresql_is_stopped_and_writes_the_backlog(procs, tmp_path, test_pki, pg):
    peer_port, pbx_port = free_port("tcp"), free_port("both")
    sbc = SbcProcess(tmp_path, procs, test_pki, pbx_port=pbx_port, teams_resolve={n: peer_port for n in TEAMS_NAMES},
                     extra={"cdr": {"url": pg.url}})
    del sbc.config["cdr"]["path"]
    peer = TeamsPeer(test_pki, sbc_port=sbc.teams_port)
    await peer.listen(peer_port)
    keys = {"ruri_user": "02071234567", "to_user": "02071234567", "from_user": "01632960123"}

    async def calls(n: int, name: str) -> None:
        uac = Sipp("uac.xml", workdir=tmp_path / name, local_port=pbx_port, transport="u1", procs=procs,
                   remote=("127.0.0.1", sbc.pbx_listen_port), keys=keys, calls=n, timeout_s=60,
                   duration_ms=200)
        await asyncio.to_thread(uac.start)
        res = await asyncio.to_thread(uac.wait)
        assert res.ok, res.describe() + sbc.log()

    try:
        await asyncio.to_thread(sbc.start)
        await calls(2, "before")
        await asyncio.to_thread(wait_for, lambda: len(pg.rows("SELECT id FROM calls WHERE end_time IS NOT NULL")) == 2,
                                15, what="2 rows in PostgreSQL")
        await asyncio.to_thread(pg.stop)
        await calls(3, "while-down")                 # the box keeps calling
        assert "CDR write failed" in sbc.log()
        assert pg.password not in sbc.log()
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(wait_for, lambda: len(pg.rows("SELECT id FROM calls WHERE end_time IS NOT NULL")) == 5,
                                30, what="the backlog in PostgreSQL")
    finally:
        await peer.close()
    rows = pg.rows("SELECT direction, caller, callee, status, ended_by, answer_time IS NOT NULL FROM calls")
    assert rows == [["pbx->teams", "+441632960123", "+442071234567", "200", "pbx", "t"]] * 5, rows
    out = subprocess.run([sys.executable, "-m", "teamsbc", "cdr", "-c", str(sbc.config_path), "--format", "json"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert len(listed) == 5 and all(r["duration"] is not None for r in listed), listed
    assert pg.password not in out.stdout + out.stderr
