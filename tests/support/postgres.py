"""A real PostgreSQL server for tests: its own cluster (initdb) on a free port, run by pg_ctl as
the unprivileged `postgres` user (the server refuses to run as root), stopped and started at
will (to take the database away from a running SBC), removed at the end.

    pg = PostgresCluster.create(listen="127.0.0.1")     # initdb + start
    pg.url                    # postgresql://teamsbc:PASSWORD@127.0.0.1:PORT/teamsbc
    pg.stop(); pg.start()     # pg_ctl stop -m fast / start, waiting for the port
    pg.rows("SELECT ...")     # psql as the superuser over the Unix socket
    pg.destroy()
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from .ports import free_port
from .procs import wait_port

USER = "postgres"
DB_USER, DB_NAME = "teamsbc", "teamsbc"


def pg_bin(name: str) -> str:
    """A server binary of Debian's package (/usr/lib/postgresql/N/bin is not on PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise RuntimeError(f"{name} not found: apt-get install postgresql (run-tests does)")


class PostgresCluster:
    def __init__(self, root: Path, port: int, listen: str, password: str):
        self.root, self.port, self.listen, self.password = root, port, listen, password
        self.data = root / "data"
        self.sock = root / "sock"

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}:{self.password}@{self.listen}:{self.port}/{DB_NAME}"

    @classmethod
    def create(cls, listen: str = "127.0.0.1") -> "PostgresCluster":
        pw = pwd.getpwnam(USER)
        root = Path(tempfile.mkdtemp(prefix="teamsbc-pg-"))
        os.chown(root, pw.pw_uid, pw.pw_gid)
        password = "pw-" + secrets.token_hex(12)
        c = cls(root, free_port("tcp"), listen, password)
        c.sock.mkdir()
        os.chown(c.sock, pw.pw_uid, pw.pw_gid)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        c._as_postgres([pg_bin("initdb"), "-D", str(c.data), "-U", DB_USER, "--pwfile", str(pwfile),
                        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                        "--no-instructions"], timeout=120)
        pwfile.unlink()
        with open(c.data / "pg_hba.conf", "a") as hba:   # boxes on the test's own LAN (netns)
            hba.write("host all all samenet scram-sha-256\n")
        c.start()
        c.psql(f"CREATE DATABASE {DB_NAME}", db="postgres")
        return c

    def _as_postgres(self, argv: list[str], timeout: float = 60) -> str:
        r = subprocess.run(["runuser", "-u", USER, "--", *argv], capture_output=True, text=True,
                           timeout=timeout, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r.stdout

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses={self.listen} -c fsync=off"
        self._as_postgres([pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                           "-o", opts, "-w", "-t", "60", "start"], timeout=90)
        wait_port(self.listen, self.port, "tcp", timeout=30)

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres([pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"],
                          timeout=90)

    def psql(self, sql: str, db: str = DB_NAME) -> str:
        return self._as_postgres(["psql", "-h", str(self.sock), "-p", str(self.port), "-U", DB_USER,
                                  "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-F", "|", "-c", sql])

    def rows(self, sql: str) -> list[list[str]]:
        return [line.split("|") for line in self.psql(sql).splitlines() if line]

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(self.root, ignore_errors=True)
