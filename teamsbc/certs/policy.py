"""When a certificate is due for renewal. Pure functions of a certificate, a clock and an
optional ARI answer: no I/O, so every rule is tested with plain calls.

- ARI (RFC 9773): when the CA publishes `renewalInfo`, renew at a uniformly random time inside
  its suggested window (section 4.2); a window already over means "now".
- Otherwise certbot's rule: at 2/3 of the lifetime, or 1/2 for lifetimes under 10 days
  (short-lived certificates need the larger margin to survive one failed attempt).
"""
from __future__ import annotations

import base64
import datetime as dt
import math
import random
from dataclasses import dataclass

from cryptography import x509

__all__ = ["RenewalWindow", "RenewalDecision", "lifetime_due_at", "ari_cert_id",
           "parse_renewal_info", "decide", "days_left", "WARN_DAYS", "SHORT_LIFETIME"]

SHORT_LIFETIME = dt.timedelta(days=10)
WARN_DAYS = 30          # status and the SBC's daily log warn from this many days left


def not_before(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def days_left(cert: x509.Certificate, now: dt.datetime) -> float:
    return (not_after(cert) - now).total_seconds() / 86400


def lifetime_due_at(cert: x509.Certificate) -> dt.datetime:
    """2/3 of the lifetime, 1/2 under 10 days."""
    start, end = not_before(cert), not_after(cert)
    life = end - start
    return start + (life / 2 if life < SHORT_LIFETIME else life * 2 / 3)


@dataclass(frozen=True, slots=True)
class RenewalWindow:
    """A parsed RenewalInfo object (RFC 9773 section 4.2)."""
    start: dt.datetime
    end: dt.datetime
    explanation_url: str | None = None


def parse_renewal_info(data: object) -> RenewalWindow:
    """JSON body of a renewalInfo response -> window; ValueError says what is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("suggestedWindow"), dict):
        raise ValueError("renewalInfo has no suggestedWindow object")
    w = data["suggestedWindow"]
    try:
        start = _rfc3339(w["start"])
        end = _rfc3339(w["end"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"renewalInfo suggestedWindow start/end not RFC 3339 times: {e}") from None
    if end <= start:  # section 4.2: such a window is invalid and must be ignored
        raise ValueError("renewalInfo suggestedWindow end is not after start")
    url = data.get("explanationURL")
    return RenewalWindow(start, end, url if isinstance(url, str) else None)


def _rfc3339(s: str) -> dt.datetime:
    if not isinstance(s, str):
        raise TypeError(f"{s!r} is not a string")
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"{s!r} has no time zone")
    return t.astimezone(dt.timezone.utc)


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(serial DER bytes)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    if aki.key_identifier is None:
        raise ValueError("certificate has no Authority Key Identifier keyIdentifier")
    serial = cert.serial_number
    der = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")
    return f"{b64(aki.key_identifier)}.{b64(der)}"


@dataclass(frozen=True, slots=True)
class RenewalDecision:
    due: bool
    at: dt.datetime          # when renewal is (or was) due
    source: str              # "ari", "lifetime", "expired", "names", "missing", "forced"
    reason: str              # one human line

    def describe(self, now: dt.datetime) -> str:
        when = self.at.strftime("%Y-%m-%d %H:%M UTC")
        if self.due:
            return f"due ({self.reason})"
        return f"due {when} (in {_span(self.at - now)}, {self.reason})"


def _span(d: dt.timedelta) -> str:
    s = d.total_seconds()
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.0f} hours"
    if s >= 120:
        return f"{s / 60:.0f} minutes"
    return f"{max(s, 0):.0f} s"


def decide(cert: x509.Certificate, now: dt.datetime, *, window: RenewalWindow | None = None,
           rng: random.Random | None = None, missing_names: tuple[str, ...] = ()
           ) -> RenewalDecision:
    """Is ``cert`` due at ``now``? ``window`` is the CA's ARI answer when it has one;
    ``missing_names`` are configured names the certificate does not cover (config grew)."""
    if now >= not_after(cert):
        return RenewalDecision(True, not_after(cert), "expired", "the certificate has expired")
    if missing_names:
        return RenewalDecision(True, now, "names",
                               f"configured names not in the certificate: {', '.join(missing_names)}")
    if window is not None:
        if now >= window.end:
            return RenewalDecision(True, window.end, "ari", "the CA's renewal window has passed")
        r = (rng or random.Random()).uniform(0, (window.end - window.start).total_seconds())
        at = window.start + dt.timedelta(seconds=r)
        return RenewalDecision(now >= at, at, "ari", "CA renewal window (ARI)")
    at = lifetime_due_at(cert)
    life = not_after(cert) - not_before(cert)
    frac = "1/2" if life < SHORT_LIFETIME else "2/3"
    return RenewalDecision(now >= at, at, "lifetime", f"{frac} of the lifetime")
