"""Answering ACME challenges.

HTTP-01 (RFC 8555 section 8.3): the CA fetches
``http://<name>/.well-known/acme-challenge/<token>`` (pebble three times: answers must be
idempotent). A `TokenStore` holds the answers and is an aiohttp handler, so either
- the running SBC mounts it on its own listener (``store.add_routes(app)``) and issuance runs
  in-process with that store, or serves the token files the CLI writes (``webroot``), or
- `StandaloneHttp01` serves it on ``acme.http01_listen`` for the duration of one order.

DNS-01 (section 8.4) through RFC 2136 UPDATE signed with TSIG: `Rfc2136Solver`. A wildcard and
its base name share one ``_acme-challenge`` name, so all values for a name go out in one
update; every record written is deleted again in ``cleanup()``, which the caller runs in a
``finally`` (also when the order fails).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web

from .settings import Rfc2136Settings

log = logging.getLogger("teamsbc.certs")

__all__ = ["ChallengeError", "TokenStore", "StandaloneHttp01", "Http01Solver", "Rfc2136Solver",
           "Solver", "ROUTE"]

ROUTE = "/.well-known/acme-challenge/{token}"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")   # base64url (section 8.1): no path tricks


class ChallengeError(Exception):
    """A challenge could not be published or cleaned up; the message is one operator line.
    ``rejected``: the server certainly did not apply the change (vs. a timeout: unknown)."""

    def __init__(self, message: str, *, rejected: bool = False):
        super().__init__(message)
        self.rejected = rejected


# ====================================================================== HTTP-01

class TokenStore:
    """token -> key authorization, shared by the ACME thread and an aiohttp loop.

    ``webroot``: a directory also looked up (file named after the token), so that a separate
    `teamsbc cert` process can publish tokens the running SBC serves. Writes to it are optional
    (``Http01Solver(write_webroot=True)``)."""

    def __init__(self, webroot: Path | None = None):
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self.webroot = Path(webroot) if webroot else None
        self.served = 0   # answers given (tests, logs)

    def put(self, token: str, key_authorization: str) -> None:
        if not _TOKEN_RE.match(token):
            raise ValueError(f"bad ACME token {token!r}")
        with self._lock:
            self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        if not _TOKEN_RE.match(token):
            return None
        with self._lock:
            v = self._tokens.get(token)
        if v is None and self.webroot is not None:
            try:
                v = (self.webroot / token).read_text().strip() or None
            except OSError:
                v = None
        return v

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)

    async def handle(self, request: web.Request) -> web.Response:
        """aiohttp handler for ROUTE: 200 + key authorization, else 404."""
        value = self.get(request.match_info.get("token", ""))
        if value is None:
            return web.Response(status=404, text="no such ACME token\n")
        self.served += 1
        return web.Response(text=value, content_type="application/octet-stream")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(ROUTE, self.handle)


class StandaloneHttp01:
    """A short-lived aiohttp server for one order, in its own thread and event loop (the ACME
    flow is synchronous). ``start()`` returns once listening, or raises ChallengeError."""

    def __init__(self, store: TokenStore, host: str, port: int):
        self.store, self.host, self.port = store, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self, timeout: float = 10.0) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                app = web.Application()
                self.store.add_routes(app)
                self._runner = web.AppRunner(app, access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
                loop.run_until_complete(site.start())
            except BaseException as e:  # noqa: BLE001 - reported to the starting thread
                failure.append(e)
                ready.set()
                if self._runner is not None:
                    loop.run_until_complete(self._runner.cleanup())
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._runner.cleanup())
                loop.close()

        self._thread = threading.Thread(target=run, name="acme-http01", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise ChallengeError(f"HTTP-01 responder did not start on {self.host}:{self.port} "
                                 f"within {timeout:.0f} s")
        if failure:
            e = failure[0]
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            hint = ""
            if isinstance(e, OSError) and e.errno in (13,):
                hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            elif isinstance(e, OSError) and e.errno == 98:
                hint = (" (something else listens there: if it is the running SBC, set "
                        "acme.http01_listen: null so it answers from its TokenStore)")
            raise ChallengeError(f"cannot listen on {self.host}:{self.port} for HTTP-01: "
                                 f"{why}{hint}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)


class Solver(Protocol):
    """What the ACME flow needs from a challenge type."""
    typ: str
    cleanup_error: str | None   # what cleanup() could not remove (reported, never raised)

    def add(self, domain: str, token: str, validation: str) -> None:
        """Record one answer (``domain`` without a leading "*.")."""

    def publish(self) -> None:
        """Make every recorded answer visible to the CA."""

    def cleanup(self) -> None:
        """Remove every answer published (runs in a finally: must not raise)."""


class Http01Solver:
    typ = "http-01"
    cleanup_error: str | None = None   # tokens live in memory or a webroot: nothing is left behind

    def __init__(self, store: TokenStore, *, listen: tuple[str, int] | None = None,
                 webroot: Path | None = None):
        """``listen``: start a StandaloneHttp01 there while the order runs. ``webroot``: also
        write token files there for a running SBC whose TokenStore reads that directory."""
        self.store = store
        self.listen = listen
        self.webroot = Path(webroot) if webroot else None
        self._tokens: list[str] = []
        self._server: StandaloneHttp01 | None = None

    def add(self, domain: str, token: str, validation: str) -> None:
        self.store.put(token, validation)
        self._tokens.append(token)
        if self.webroot is not None:
            self.webroot.mkdir(parents=True, exist_ok=True)
            tmp = self.webroot / f".{token}.tmp"
            tmp.write_text(validation)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.webroot / token)

    def publish(self) -> None:
        if self.listen is not None and self._server is None:
            self._server = StandaloneHttp01(self.store, *self.listen)
            self._server.start()

    def cleanup(self) -> None:
        for t in self._tokens:
            self.store.remove(t)
            if self.webroot is not None:
                try:
                    (self.webroot / t).unlink()
                except OSError:
                    pass
        self._tokens.clear()
        if self._server is not None:
            self._server.stop()
            self._server = None


# ====================================================================== DNS-01

_TSIG = {
    "hmac-sha256": "HMAC_SHA256", "hmac-sha384": "HMAC_SHA384", "hmac-sha512": "HMAC_SHA512",
    "hmac-sha224": "HMAC_SHA224", "hmac-sha1": "HMAC_SHA1", "hmac-md5": "HMAC_MD5",
}


@dataclass
class _Zone:
    name: str
    records: dict[str, list[str]] = field(default_factory=dict)   # fqdn. -> TXT values
    sent: bool = False


class Rfc2136Solver:
    """DNS-01 TXT records through RFC 2136 UPDATE with TSIG (dnspython).

    ``publish`` sends one UPDATE per zone adding every value (wildcard + base name: two values
    on one name), then waits until the primary answers with all of them.
    ``cleanup`` deletes exactly those values (other TXT data at the name stays), also when
    publish itself failed half-way or timed out (the update may have been applied)."""

    typ = "dns-01"

    def __init__(self, settings: Rfc2136Settings, *, timeout: float = 10.0,
                 visible_timeout: float = 30.0):
        import dns.name
        import dns.tsig
        import dns.tsigkeyring
        if not (settings.server and settings.key_name and settings.key_secret):
            raise ChallengeError("acme.rfc2136 needs server, key_name and key_secret for dns-01")
        self.s = settings
        self.timeout = timeout
        self.visible_timeout = visible_timeout
        self.keyname = dns.name.from_text(settings.key_name)
        self.keyring = dns.tsigkeyring.from_text({settings.key_name: settings.key_secret})
        self.algorithm = getattr(dns.tsig, _TSIG[settings.key_algorithm])
        self.server_ip = self._resolve_server(settings.server)
        self._zones: dict[str, _Zone] = {}
        self.updates_sent = 0

    @property
    def where(self) -> str:
        return f"{self.s.server}:{self.s.port}"

    @staticmethod
    def _resolve_server(server: str) -> str:
        import ipaddress
        import socket
        try:
            ipaddress.ip_address(server)
            return server
        except ValueError:
            pass
        try:
            return socket.getaddrinfo(server, None, type=socket.SOCK_STREAM)[0][4][0]
        except OSError as e:
            raise ChallengeError(f"acme.rfc2136.server {server!r} does not resolve: {e}") from None

    # ------------------------------------------------------------------ DNS plumbing
    def _send(self, msg, what: str):
        import dns.exception
        import dns.query
        import dns.rcode
        import dns.tsig
        try:
            resp = dns.query.tcp(msg, self.server_ip, port=self.s.port, timeout=self.timeout)
        except (dns.tsig.PeerBadKey, dns.tsig.PeerBadSignature, dns.tsig.PeerBadTime,
                dns.tsig.PeerBadTruncation) as e:
            raise ChallengeError(f"DNS server {self.where} refused our TSIG signature for {what} "
                                 f"({type(e).__name__}: check acme.rfc2136.key_name, key_secret, "
                                 f"key_algorithm and this host's clock)", rejected=True) from None
        except dns.exception.Timeout:
            raise ChallengeError(f"no answer from DNS server {self.where} within "
                                 f"{self.timeout:.0f} s ({what})") from None
        except (OSError, dns.exception.DNSException) as e:
            raise ChallengeError(f"DNS server {self.where}: {what}: "
                                 f"{getattr(e, 'strerror', None) or e}") from None
        return resp

    def _find_zone(self, record: str) -> str:
        """The zone holding ``record``: configured, or the SOA owner the server names when asked
        for ``record``'s SOA (answer when it is an apex, authority section otherwise)."""
        import dns.message
        import dns.rcode
        import dns.rdatatype
        if self.s.zone:
            return self.s.zone.rstrip(".") + "."
        q = dns.message.make_query(record, dns.rdatatype.SOA)
        resp = self._send(q, f"SOA query for {record}")
        for rrset in list(resp.answer) + list(resp.authority):
            if rrset.rdtype == dns.rdatatype.SOA:
                return rrset.name.to_text()
        raise ChallengeError(f"DNS server {self.where} is not authoritative for {record} (answer "
                             f"{dns.rcode.to_text(resp.rcode())}, no SOA): set acme.rfc2136.zone "
                             "or point acme.rfc2136.server at the zone's primary")

    def _update(self, zone: _Zone, add: bool) -> None:
        import dns.rcode
        import dns.update
        msg = dns.update.UpdateMessage(zone.name, keyring=self.keyring, keyname=self.keyname,
                                       keyalgorithm=self.algorithm)
        for name, values in zone.records.items():
            for v in values:
                if add:
                    msg.add(name, 60, "TXT", f'"{v}"')
                else:
                    msg.delete(name, "TXT", f'"{v}"')
        what = f"{'adding' if add else 'deleting'} TXT {', '.join(zone.records)}"
        resp = self._send(msg, what)
        self.updates_sent += 1
        rcode = resp.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = {dns.rcode.REFUSED: " (the TSIG key may not change these names: check the "
                                       "zone's update-policy)",
                    dns.rcode.NOTAUTH: " (server not authoritative for the zone, or the key is "
                                       "unknown to it)",
                    dns.rcode.NOTZONE: " (the name is outside the zone: set acme.rfc2136.zone)",
                    }.get(rcode, "")
            raise ChallengeError(f"DNS server {self.where} answered {dns.rcode.to_text(rcode)} "
                                 f"to {what} in zone {zone.name}{hint}", rejected=True)

    def txt_values(self, name: str) -> set[str]:
        """TXT strings the server holds at ``name`` now (empty when none or NXDOMAIN)."""
        import dns.message
        import dns.rdatatype
        q = dns.message.make_query(name, dns.rdatatype.TXT)
        resp = self._send(q, f"TXT query for {name}")
        out: set[str] = set()
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                for rd in rrset:
                    out.add(b"".join(rd.strings).decode())
        return out

    # ------------------------------------------------------------------ Solver
    def add(self, domain: str, token: str, validation: str) -> None:
        name = f"_acme-challenge.{domain.rstrip('.')}."
        zone_name = self._find_zone(name)
        zone = self._zones.setdefault(zone_name, _Zone(zone_name))
        values = zone.records.setdefault(name, [])
        if validation not in values:
            values.append(validation)

    def publish(self) -> None:
        for zone in self._zones.values():
            zone.sent = True   # before sending: a timed-out update may still have been applied
            try:
                self._update(zone, add=True)
            except ChallengeError as e:
                if e.rejected:
                    zone.sent = False   # nothing was written: nothing to clean up
                raise
        deadline = time.monotonic() + self.visible_timeout
        for zone in self._zones.values():
            for name, values in zone.records.items():
                while not set(values) <= self.txt_values(name):
                    if time.monotonic() >= deadline:
                        raise ChallengeError(f"DNS server {self.where} accepted the update but "
                                             f"does not serve TXT {name} after "
                                             f"{self.visible_timeout:.0f} s")
                    time.sleep(0.2)
        if self.s.propagation_seconds:
            log.info("waiting %.0f s for secondaries (acme.rfc2136.propagation_seconds)",
                     self.s.propagation_seconds)
            time.sleep(self.s.propagation_seconds)

    def cleanup(self) -> None:
        problems = []
        for zone in self._zones.values():
            if not zone.sent:
                continue
            try:
                self._update(zone, add=False)
            except ChallengeError as e:
                problems.append(str(e))
        self._zones.clear()
        if problems:
            self.cleanup_error = "; ".join(problems)
            log.debug("DNS-01 cleanup failed: %s", self.cleanup_error)

    cleanup_error: str | None = None
