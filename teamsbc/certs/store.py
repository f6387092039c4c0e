"""The certificate store on disk:

    <certs_dir>/live/<name>/fullchain.pem     leaf + intermediates (0644)
    <certs_dir>/live/<name>/privkey.pem       RSA key (0600)
    <certs_dir>/archive/<name>/<UTC time>/    each previous generation, both files
    <certs_dir>/accounts/                     ACME account keys (acme_client.py)
    <certs_dir>/.lock                         flock: one writer at a time

A live file is never half-written: each new file is written to a temporary name in the same
directory, fsynced, renamed over the old one, and the directory fsynced. The two files cannot
change in one rename, so the key goes first and the chain last: a reload triggered by the change
of fullchain.pem always finds the matching key, and `read_live_pair` retries the short moment
in which the new key sits next to the old chain.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["CertStore", "LivePaths", "LockTimeout", "live_paths", "read_live_pair"]

FULLCHAIN = "fullchain.pem"
PRIVKEY = "privkey.pem"


class LockTimeout(Exception):
    """Another process holds the store lock for longer than we agreed to wait."""


@dataclass(frozen=True, slots=True)
class LivePaths:
    directory: Path
    fullchain: Path
    privkey: Path


def live_paths(certs_dir: Path, name: str) -> LivePaths:
    """Where the SBC finds its certificate: the default of teams.certificate/private_key."""
    d = Path(certs_dir) / "live" / name
    return LivePaths(d, d / FULLCHAIN, d / PRIVKEY)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, final_name: str, data: bytes, mode: int) -> Path:
    tmp = directory / f".{final_name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _keys_match(chain_pem: bytes, key_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificates(chain_pem)[0]
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, IndexError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        cert.public_key().public_bytes(serialization.Encoding.DER, spki)


def read_live_pair(certs_dir: Path, name: str, *, attempts: int = 20,
                   interval: float = 0.05) -> tuple[bytes, bytes] | None:
    """(fullchain, key) PEM bytes that belong together, or None when there is no live
    certificate. Retries while a swap is in progress; after ``attempts`` returns the pair as it
    is (the caller's own checks then report the mismatch)."""
    p = live_paths(certs_dir, name)
    pair = None
    for i in range(attempts):
        try:
            pair = (p.fullchain.read_bytes(), p.privkey.read_bytes())
        except FileNotFoundError:
            return None
        if _keys_match(*pair):
            return pair
        if i + 1 < attempts:
            time.sleep(interval)
    return pair


class CertStore:
    def __init__(self, certs_dir: Path, name: str):
        self.certs_dir = Path(certs_dir)
        self.name = name
        self.paths = live_paths(self.certs_dir, name)
        self.archive_root = self.certs_dir / "archive" / name
        self.lock_path = self.certs_dir / ".lock"

    # ------------------------------------------------------------------ reading
    def read(self) -> tuple[bytes, bytes] | None:
        return read_live_pair(self.certs_dir, self.name)

    def live_certificate(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificates(self.paths.fullchain.read_bytes())[0]
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def archives(self) -> list[Path]:
        if not self.archive_root.is_dir():
            return []
        return sorted(p for p in self.archive_root.iterdir() if p.is_dir())

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, timeout: float, *, poll: float = 0.1) -> Iterator[None]:
        """Exclusive across processes (flock). Waits at most ``timeout`` seconds, then raises
        LockTimeout naming the holder's pid. The kernel drops the lock when the holder dies."""
        self.certs_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise LockTimeout(
                        f"another teamsbc cert command (pid {holder}) holds {self.lock_path}; "
                        f"gave up after {timeout:.0f} s")
                time.sleep(poll)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writing
    def install(self, fullchain_pem: bytes, key_pem: bytes, *,
                now: dt.datetime | None = None) -> Path | None:
        """Make the pair live; return the archive directory of the previous generation (None
        when there was none). Call with the lock held."""
        live = self.paths.directory
        live.mkdir(parents=True, exist_ok=True)
        archived = self._archive_current(now or dt.datetime.now(dt.timezone.utc))
        tmp_key = _write_temp(live, PRIVKEY, key_pem, 0o600)
        try:
            tmp_chain = _write_temp(live, FULLCHAIN, fullchain_pem, 0o644)
        except BaseException:
            tmp_key.unlink(missing_ok=True)
            raise
        os.replace(tmp_key, self.paths.privkey)
        os.replace(tmp_chain, self.paths.fullchain)
        _fsync_dir(live)
        return archived

    def _archive_current(self, now: dt.datetime) -> Path | None:
        """Hard-link (copy across file systems) the current pair into archive/<name>/<time>/:
        the live files stay in place until the new ones are renamed over them."""
        cur = [p for p in (self.paths.fullchain, self.paths.privkey) if p.exists()]
        if not cur:
            return None
        self.archive_root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.archive_root.parent, 0o700)  # archived keys are secrets too
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        dest = self.archive_root / stamp
        n = 1
        while dest.exists():
            dest = self.archive_root / f"{stamp}-{n}"
            n += 1
        dest.mkdir(mode=0o700)
        for src in cur:
            try:
                os.link(src, dest / src.name)
            except OSError:
                shutil.copy2(src, dest / src.name)
        _fsync_dir(dest)
        _fsync_dir(self.archive_root)
        return dest
