"""Digest authentication of the PBX (RFC 3261 22, RFC 7616 / 2617 MD5, qop=auth). Sans-IO.

Optional (`pbx.auth`): for PBXs configured to register with, or authenticate to, their SIP
trunk. Nonces are stateless (an HMAC of their issue time with a per-process secret), so a
challenge costs no memory; after a restart old nonces are answered with stale=true and the
PBX simply retries.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re

from .trunk_settings import DigestCredentials

NONCE_LIFETIME = 300.0  # seconds a nonce is accepted
# New requests that never carry credentials: ACK and CANCEL share their INVITE's fate (RFC 3261
# 22.1), OPTIONS is the keep-alive answered here. Everything else from the PBX authenticates.
AUTH_EXEMPT = frozenset({"ACK", "CANCEL", "OPTIONS"})

_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)\s*,?')


def parse_digest(value: str) -> dict[str, str] | None:
    """`Digest username="x", nonce="y", ...` -> {'username': 'x', ...}; None if not Digest."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    out: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM_RE.match(rest, pos)
        if not m or m.end() == pos:
            return None
        k, v = m.group(1).lower(), m.group(2)
        if v.startswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        out[k] = v
        pos = m.end()
    return out


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # RFC 7616 MD5: what PBXs implement


class DigestAuth:
    def __init__(self, creds: DigestCredentials, secret: bytes | None = None):
        self.creds = creds
        self._secret = secret or os.urandom(16)

    def nonce(self, now: float) -> str:
        stamp = f"{now:.3f}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp}.{mac}"

    def _nonce_state(self, nonce: str, now: float) -> str:
        stamp, _, mac = nonce.rpartition(".")
        good = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        if not hmac.compare_digest(mac, good):
            return "stale"  # not ours, or from before a restart: ask again, politely
        try:
            issued = float(stamp)
        except ValueError:
            return "bad"
        # the stamp is rounded to the ms: an answer within half a ms of its challenge can be
        # "earlier" than the stamp (seen as a flaky stale nonce in tests/test_e2e_pbx_auth.py)
        return "ok" if -0.001 <= now - issued <= NONCE_LIFETIME else "stale"

    def challenge(self, now: float, stale: bool = False) -> str:
        c = self.creds
        return (f'Digest realm="{c.realm}", nonce="{self.nonce(now)}", algorithm=MD5, qop="auth"'
                + (", stale=true" if stale else ""))

    def check(self, method: str, header: str | None, now: float) -> tuple[bool, bool, str]:
        """(authenticated, stale, why-not) for the Authorization/Proxy-Authorization value."""
        if not header:
            return False, False, "no credentials"
        p = parse_digest(header)
        if p is None:
            return False, False, "not Digest credentials"
        c = self.creds
        for k in ("username", "realm", "nonce", "uri", "response"):
            if k not in p:
                return False, False, f"credentials without {k}"
        if p["username"] != c.username or p["realm"] != c.realm:
            return False, False, f"unknown user {p['username']!r} in realm {p['realm']!r}"
        if p.get("algorithm", "MD5").upper() != "MD5":
            return False, False, f"algorithm {p.get('algorithm')} not offered"
        state = self._nonce_state(p["nonce"], now)
        if state == "bad":
            return False, False, "malformed nonce"
        ha1 = _md5(f"{c.username}:{c.realm}:{c.password}")
        ha2 = _md5(f"{method}:{p['uri']}")
        qop = p.get("qop")
        if qop == "auth":
            if "nc" not in p or "cnonce" not in p:
                return False, False, "qop=auth without nc/cnonce"
            expected = _md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        elif qop is None:
            expected = _md5(f"{ha1}:{p['nonce']}:{ha2}")
        else:
            return False, False, f"qop {qop} not offered"
        if not hmac.compare_digest(expected, p["response"].lower()):
            return False, False, "wrong password"
        if state == "stale":
            return False, True, "stale nonce"
        return True, False, ""
