"""The certificate's life in the running SBC: notice new files, load them into the live TLS
contexts, and say every day how long the certificate has left.

`teamsbc cert issue|renew` (or any tool) replaces the files atomically: the key first, the
chain last (certs/store.py), so the chain is the file to watch. A new pair goes live on:
- SIGHUP, or `POST /reload` on the admin API (the shell's `reload_certificate`),
- the chain file changing (new inode, mtime or size), noticed by `tick` (the shell's upkeep
  timer, every few seconds).
A pair that does not load is refused and the old certificate stays. After a reload every new
handshake, in both directions, presents the new certificate; existing connections keep theirs
(Teams keeps the old certificate on a connection), so the shell retires its own connections to
Teams through `on_reloaded`. Teams refuses an expired certificate (reference section 2): the days
left are logged at start and daily, as a warning from 30 days.

    watch = CertificateWatch(cert, key, [server_ctx, client_ctx], on_reloaded=shell_callback)
    watch.reload("SIGHUP")          # -> None, or the problem (logged, old certificate kept)
    watch.tick(loop.time())         # file changed? expiry line due?
"""
from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

from .tls import days_left, describe_certificate, reload_contexts

# The lines keep the logger they were always written with: operators' filters match on it.
log = logging.getLogger("teamsbc.transport")

EXPIRY_LOG_INTERVAL = 86400.0
EXPIRY_WARN_DAYS = 30


class FileWatch:
    """Notices when certificate files are replaced (atomic rename: new inode, or new mtime)."""

    def __init__(self, *paths: Path):
        self.paths = paths
        self._seen = self._stat()

    def _stat(self) -> tuple:
        out = []
        for p in self.paths:
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def changed(self) -> bool:
        now = self._stat()
        if now != self._seen and None not in now:
            self._seen = now
            return True
        return False


class CertificateWatch:
    def __init__(self, certificate: Path, private_key: Path, contexts: Sequence[ssl.SSLContext],
                 on_reloaded: Callable[[], None]):
        self.certificate, self.private_key = certificate, private_key
        self.contexts = list(contexts)
        self.on_reloaded = on_reloaded
        self._files = FileWatch(certificate)
        self._next_expiry_log = 0.0

    def tick(self, now: float) -> None:
        """Upkeep: reload when the files changed; the expiry line at start and daily."""
        if self._files.changed():
            self.reload("certificate files changed")
        if now >= self._next_expiry_log:
            self._next_expiry_log = now + EXPIRY_LOG_INTERVAL
            self.log_expiry()

    def reload(self, why: str) -> str | None:
        """New TLS handshakes (both directions) use the certificate on disk from now on; calls
        are untouched. Returns the problem, if any (then nothing changed)."""
        problem = reload_contexts(self.contexts, self.certificate, self.private_key)
        if problem:
            log.error("certificate reload (%s) refused, the current one stays: %s", why, problem)
            return problem
        log.info("certificate reloaded (%s): %s", why, describe_certificate(self.certificate))
        self.on_reloaded()
        return None

    def log_expiry(self) -> None:
        """Days left; a warning from EXPIRY_WARN_DAYS (Teams refuses expired ones)."""
        left = days_left(self.certificate)
        if left is None:
            log.error("certificate %s unreadable", self.certificate)
        elif left < EXPIRY_WARN_DAYS:
            log.warning("certificate expires in %.1f days: renew it (teamsbc cert renew)", left)
        else:
            log.info("certificate valid for %.0f more days", left)
