"""A thin, synchronous wrapper around the `acme` library (certbot's): account kept on disk,
External Account Binding, profiles, ARI, badNonce retries, one-line errors.

    client = AcmeClient(settings.directory, accounts_dir=certs_dir / "accounts",
                        ca_bundle=settings.ca_bundle, email=settings.email, eab=settings.eab)
    fullchain_pem, key_pem = client.obtain(names, solver, key_bits=2048)

The library uses `requests` and sleeps while polling: from asyncio call it through
``asyncio.to_thread`` (see manager.renew_async).

Account storage: ``accounts/<sha256(directory URL)[:16]>/private_key.pem`` (0600, created
once) and ``account.json`` (directory URL, account URL, contact). A different directory (e.g.
staging for --dry-run) gets its own account.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import josepy as jose
import requests
from acme import client as acme_client
from acme import crypto_util
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .challenges import ChallengeError, Solver
from .policy import RenewalWindow, ari_cert_id, parse_renewal_info
from .settings import EabSettings

log = logging.getLogger("teamsbc.certs")

__all__ = ["AcmeClient", "AcmeError", "describe_error", "BAD_NONCE_ATTEMPTS"]

# RFC 8555 section 6.5: badNonce is retryable, and real CAs (Let's Encrypt, pebble by default
# for 5% of requests) do reject valid nonces. The library retries once; we retry harder.
BAD_NONCE_ATTEMPTS = 20
NETWORK_TIMEOUT = 30
ORDER_TIMEOUT = 90
USER_AGENT = "teamsbc (acme-python)"


class AcmeError(Exception):
    """Issuance failed; str() is one line for the operator."""


class _Network(acme_client.ClientNetwork):
    """ClientNetwork whose POSTs survive a run of badNonce answers (each retry fetches a fresh
    nonce: the failed response's nonce is never stored by _post_once)."""

    bad_nonce_retries = 0

    def post(self, *args, **kwargs):
        for attempt in range(BAD_NONCE_ATTEMPTS):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as e:
                if e.code != "badNonce" or attempt + 1 == BAD_NONCE_ATTEMPTS:
                    raise
                self.bad_nonce_retries += 1
                log.debug("badNonce, retrying (%d)", attempt + 1)
        raise AssertionError("unreachable")


class _NewOrder(messages.NewOrder):
    """newOrder with RFC 9773 section 5 `replaces` (the certificate this order renews), which
    acme 5.x's NewOrder lacks."""
    replaces: str | None = jose.field("replaces", omitempty=True)


class _Client(acme_client.ClientV2):
    def new_order(self, csr_pem: bytes, profile: str | None = None,
                  replaces: str | None = None) -> messages.OrderResource:
        """ClientV2.new_order plus `replaces`; the profile goes into the same JWS payload."""
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, ips = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        idents = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=n) for n in dns_names]
        idents += [messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(i)) for i in ips]
        order = _NewOrder(identifiers=tuple(idents), profile=profile or None, replaces=replaces)
        response = self._post(self.directory["newOrder"], order)
        body = messages.Order.from_json(response.json())
        authzs = [self._authzr_from_response(self._post_as_get(u), uri=u)
                  for u in body.authorizations]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authzs, csr_pem=csr_pem)


def _problem(e: messages.Error) -> str:
    code = e.code or str(e.typ).rsplit(":", 1)[-1]
    text = f"{code}: {e.detail or e.description or e.title or ''}".rstrip(": ")
    for sub in e.subproblems or ():
        ident = f" {sub.identifier.value}" if sub.identifier else ""
        text += f"; {sub.code or sub.typ}{ident}: {sub.detail}"
    return text


def describe_error(e: BaseException) -> str:
    """Any failure of the flow as one line."""
    if isinstance(e, (AcmeError, ChallengeError)):
        return str(e)
    if isinstance(e, acme_errors.ValidationError):
        parts = []
        for authzr in e.failed_authzrs:
            ident = authzr.body.identifier.value
            if authzr.body.wildcard:
                ident = "*." + ident
            for ch in authzr.body.challenges:
                if ch.error is not None:
                    parts.append(f"{ch.chall.typ} for {ident}: {_problem(ch.error)}")
        return "validation failed: " + ("; ".join(parts) or "no detail from the CA")
    if isinstance(e, acme_errors.IssuanceError):
        return f"the CA refused to issue: {_problem(e.error)}"
    if isinstance(e, acme_errors.TimeoutError):
        return "the CA did not finish the order in time"
    if isinstance(e, messages.Error):
        return f"the CA answered {_problem(e)}"
    if isinstance(e, acme_errors.ConflictError):
        return f"conflict (HTTP 409) at {e.location}"
    if isinstance(e, requests.exceptions.SSLError):
        return (f"TLS verification of the ACME server failed ({_short(e)}): set acme.ca_bundle to "
                "the CA of its HTTPS certificate, or check the directory URL")
    if isinstance(e, requests.exceptions.Timeout):
        return f"the ACME server did not answer within {NETWORK_TIMEOUT} s"
    if isinstance(e, requests.exceptions.ConnectionError):
        return f"cannot connect to the ACME server: {_short(e)}"
    if isinstance(e, acme_errors.ClientError):
        return f"unexpected answer from the ACME server: {_short(e)}"
    return f"{type(e).__name__}: {e}"


def _short(e: BaseException) -> str:
    # requests nests urllib3 errors; the innermost reason is the readable one
    while e.__context__ is not None and not str(e).strip():
        e = e.__context__
    s = str(e)
    if "Max retries exceeded" in s and "(Caused by" in s:
        s = s.split("(Caused by", 1)[1].rstrip(")")
    return s.replace("\n", " ")[:300]


@dataclass
class Obtained:
    fullchain_pem: bytes
    key_pem: bytes


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class AcmeClient:
    def __init__(self, directory_url: str, *, accounts_dir: Path, ca_bundle: Path | None = None,
                 email: str | None = None, eab: EabSettings | None = None,
                 timeout: int = NETWORK_TIMEOUT):
        self.directory_url = directory_url
        self.email = email
        self.eab = eab or EabSettings()
        digest = hashlib.sha256(directory_url.encode()).hexdigest()[:16]
        self.account_dir = Path(accounts_dir) / digest
        self._account_key: jose.JWKRSA | None = None   # created on first POST, not by lookups
        self.net = _Network(None, alg=jose.RS256,
                            verify_ssl=str(ca_bundle) if ca_bundle else True,
                            user_agent=USER_AGENT, timeout=timeout)
        self._client: _Client | None = None
        self.account_created = False

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _step(self, what: str) -> Iterator[None]:
        try:
            yield
        except (AcmeError, ChallengeError):
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes one operator line
            log.debug("%s failed", what, exc_info=True)
            raise AcmeError(f"{what}: {describe_error(e)}") from None

    @property
    def client(self) -> _Client:
        if self._client is None:
            with self._step(f"fetching the ACME directory {self.directory_url}"):
                directory = _Client.get_directory(self.directory_url, self.net)
            self._client = _Client(directory, self.net)
        return self._client

    @property
    def has_ari(self) -> bool:
        try:
            self.client.directory["renewalInfo"]
        except KeyError:
            return False
        return True

    @property
    def profiles(self) -> dict[str, str]:
        meta = getattr(self.client.directory, "meta", None)
        return dict(getattr(meta, "profiles", None) or {})

    @property
    def account_key(self) -> jose.JWKRSA:
        if self._account_key is None:
            self._account_key = self._load_or_create_key()
            self.net.key = self._account_key
        return self._account_key

    def _load_or_create_key(self) -> jose.JWKRSA:
        path = self.account_dir / "private_key.pem"
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            return jose.JWKRSA(key=key)
        self.account_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.account_dir, 0o700)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return jose.JWKRSA(key=key)

    @property
    def _account_file(self) -> Path:
        return self.account_dir / "account.json"

    def _saved_uri(self) -> str | None:
        try:
            data = json.loads(self._account_file.read_text())
        except (OSError, ValueError):
            return None
        if data.get("directory") == self.directory_url and isinstance(data.get("uri"), str):
            return data["uri"]
        return None

    # ------------------------------------------------------------------ account
    def ensure_account(self) -> str:
        """Account URL: the stored one, else registered now (agreeing to the CA's terms of
        service, with EAB when configured; an existing account for our key is reused)."""
        uri = self._saved_uri()
        self.net.key = self.account_key   # every POST from here on is signed with it
        c = self.client
        if uri:
            self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
            return uri
        eab = None
        if self.eab.enabled:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=self.account_key.public_key(), kid=self.eab.kid,
                hmac_key=self.eab.hmac_key, directory=c.directory)
        elif c.external_account_required():
            raise AcmeError(f"the ACME server {self.directory_url} requires External Account "
                            "Binding: set acme.eab.kid and acme.eab.hmac_key (from your CA's "
                            "account page)")
        reg = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True,
                                                 external_account_binding=eab)
        try:
            with self._step("registering the ACME account"):
                try:
                    uri = c.new_account(reg).uri
                    self.account_created = True
                except acme_errors.ConflictError as e:   # our key already has an account
                    uri = e.location
        except AcmeError as e:
            if self.eab.enabled and "unauthorized" in str(e):
                raise AcmeError(f"{e} (check acme.eab.kid and acme.eab.hmac_key)") from None
            raise
        self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        self._account_file.write_text(json.dumps({
            "directory": self.directory_url, "uri": uri,
            "contact": [f"mailto:{self.email}"] if self.email else [],
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }, indent=2) + "\n")
        return uri

    def _forget_account(self) -> None:
        self._account_file.unlink(missing_ok=True)
        self.net.account = None

    # ------------------------------------------------------------------ ARI
    def renewal_window(self, cert: x509.Certificate) -> RenewalWindow | None:
        """RFC 9773 renewal window, or None when the CA has no renewalInfo. Raises AcmeError
        when the CA has ARI but the fetch fails (the caller falls back to the lifetime rule)."""
        if not self.has_ari:
            return None
        base = self.client.directory["renewalInfo"].rstrip("/")
        with self._step("fetching renewal info (ARI)"):
            resp = self.net.get(f"{base}/{ari_cert_id(cert)}", content_type="application/json")
            return parse_renewal_info(resp.json())

    # ------------------------------------------------------------------ orders
    def _check_profile(self, profile: str | None) -> None:
        if not profile:
            return
        offered = self.profiles
        if not offered:
            raise AcmeError(f"acme.profile {profile!r} is set but {self.directory_url} offers no "
                            "profiles (no meta.profiles in its directory): remove acme.profile")
        if profile not in offered:
            raise AcmeError(f"acme.profile {profile!r} is not offered by {self.directory_url} "
                            f"(it offers: {', '.join(sorted(offered))})")

    def _new_order(self, csr_pem: bytes, profile: str | None, replaces: str | None):
        try:
            with self._step("creating the order"):
                return self.client.new_order(csr_pem, profile=profile, replaces=replaces)
        except AcmeError as e:
            if "accountDoesNotExist" in str(e):
                # the CA forgot us (pebble restarted, account deactivated): register again
                self._forget_account()
                self.ensure_account()
            elif replaces is None:
                raise
            else:
                log.info("new-order with replaces refused (%s); retrying without", e)
            with self._step("creating the order"):
                return self.client.new_order(csr_pem, profile=profile, replaces=None)

    def obtain(self, names: Sequence[str], solver: Solver, *, key_bits: int = 2048,
               profile: str | None = None, replaces: x509.Certificate | None = None,
               timeout: float = ORDER_TIMEOUT) -> Obtained:
        """New RSA key + CSR for ``names``, order, challenges through ``solver`` (always cleaned
        up), finalize. Returns the CA's fullchain and our key, both PEM; installs nothing."""
        self._check_profile(profile)
        self.ensure_account()
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr = crypto_util.make_csr(key_pem, list(names))
        replaces_id = None
        if replaces is not None and self.has_ari:
            try:
                replaces_id = ari_cert_id(replaces)
            except (ValueError, x509.ExtensionNotFound):
                replaces_id = None
        order = self._new_order(csr, profile, replaces_id)
        try:
            pending = []
            for authz in order.authorizations:
                body = authz.body
                label = ("*." if body.wildcard else "") + body.identifier.value
                if body.status == messages.STATUS_VALID:
                    continue       # authorization reuse: nothing to prove
                if body.status != messages.STATUS_PENDING:
                    raise AcmeError(f"authorization for {label} is {body.status.name}")
                challb = next((c for c in body.challenges
                               if getattr(c.chall, "typ", None) == solver.typ), None)
                if challb is None:
                    offered = ", ".join(str(getattr(c.chall, "typ", "?")) for c in body.challenges)
                    raise AcmeError(f"the CA offers no {solver.typ} challenge for {label} "
                                    f"(offered: {offered}); change acme.challenge")
                response, validation = challb.response_and_validation(self.account_key)
                solver.add(body.identifier.value, challb.chall.encode("token"), validation)
                pending.append((challb, response))
            if pending:
                solver.publish()
                with self._step("answering the challenges"):
                    for challb, response in pending:
                        self.client.answer_challenge(challb, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
            with self._step("order"):
                order = self.client.poll_and_finalize(order, deadline)
        finally:
            solver.cleanup()
        return Obtained(order.fullchain_pem.encode(), key_pem)
