"""The store: atomic swap, modes, archive, lock across processes, never a half-written file."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from teamsbc import labpki
from teamsbc.certs import store as store_mod
from teamsbc.certs.store import CertStore, LockTimeout, live_paths, read_live_pair
from tests.support.procs import wait_for

NAME = "sbc.example.com"


def pair(ca):
    cert, key = labpki.make_leaf(*ca, [NAME])
    from cryptography.hazmat.primitives import serialization
    chain = cert.public_bytes(serialization.Encoding.PEM) + \
        ca[0].public_bytes(serialization.Encoding.PEM)
    return chain, labpki._key_pem(key)


@pytest.fixture(scope="module")
def ca():
    return labpki.make_ca("store test CA")


def mode(p) -> int:
    return os.stat(p).st_mode & 0o777


def test_first_install_then_archive(tmp_path, ca):
    s = CertStore(tmp_path / "certs", NAME)
    assert s.read() is None
    c1, k1 = pair(ca)
    assert s.install(c1, k1) is None
    p = live_paths(tmp_path / "certs", NAME)
    assert p.fullchain.read_bytes() == c1 and p.privkey.read_bytes() == k1
    assert mode(p.privkey) == 0o600 and mode(p.fullchain) == 0o644
    c2, k2 = pair(ca)
    archived = s.install(c2, k2)
    assert archived is not None and archived.parent == tmp_path / "certs/archive" / NAME
    assert (archived / "fullchain.pem").read_bytes() == c1
    assert (archived / "privkey.pem").read_bytes() == k1
    assert mode(archived / "privkey.pem") == 0o600 and mode(archived) == 0o700
    assert s.read() == (c2, k2)
    assert sorted(x.name for x in p.directory.iterdir()) == ["fullchain.pem", "privkey.pem"]
    # two installs within one second get distinct archive directories
    c3, k3 = pair(ca)
    s.install(c3, k3)
    assert len(s.archives()) == 2


def test_umask_does_not_widen_the_key(tmp_path, ca):
    old = os.umask(0)
    try:
        CertStore(tmp_path, NAME).install(*pair(ca))
    finally:
        os.umask(old)
    assert mode(live_paths(tmp_path, NAME).privkey) == 0o600


def test_failed_write_leaves_live_untouched(tmp_path, ca, monkeypatch):
    s = CertStore(tmp_path, NAME)
    c1, k1 = pair(ca)
    s.install(c1, k1)
    real = store_mod._write_temp

    def boom(directory, final_name, data, mode):
        if final_name == "fullchain.pem":
            raise OSError(28, "No space left on device")
        return real(directory, final_name, data, mode)
    monkeypatch.setattr(store_mod, "_write_temp", boom)
    with pytest.raises(OSError):
        s.install(*pair(ca))
    assert s.read() == (c1, k1)
    assert sorted(x.name for x in s.paths.directory.iterdir()) == ["fullchain.pem", "privkey.pem"]


def test_read_live_pair_waits_out_a_mismatch(tmp_path, ca):
    s = CertStore(tmp_path, NAME)
    c1, k1 = pair(ca)
    c2, k2 = pair(ca)
    s.install(c1, k1)
    s.paths.privkey.write_bytes(k2)   # the instant between the two renames
    t = time.monotonic()
    got = read_live_pair(tmp_path, NAME, attempts=3, interval=0.01)
    assert got == (c1, k2) and time.monotonic() - t < 1


def test_lock_excludes_other_processes(tmp_path):
    s = CertStore(tmp_path, NAME)
    ready = tmp_path / "holding"
    code = (
        "import sys, time, pathlib\n"
        "from teamsbc.certs.store import CertStore\n"
        f"with CertStore(pathlib.Path({str(tmp_path)!r}), {NAME!r}).lock(5):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    sys.stdin.readline()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        wait_for(ready.exists, 10, what="child holding the lock")
        with pytest.raises(LockTimeout) as e:
            with s.lock(0.3):
                pass
        assert f"pid {p.pid}" in str(e.value) and "gave up after 0 s" in str(e.value)
        p.stdin.write(b"\n")
        p.stdin.flush()
        with s.lock(10):
            assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
